#!/usr/bin/env bash
# The quality board on the full MNIST, as run on one H200 for tools/RESULTS.md: every method with a
# preset in configs/ (plus the 50-step flow-matching baseline and torchcfm's OT-CFM), trained together
# for MINUTES minutes each, scored every MARKS minutes and at the end against all 10,000 held-out digits.
# One device call is limited to 10 minutes: start-up (~1.3 min), training, the marks (1.5-3 min of wall
# clock each with five runs on the GPU, measured 2026-11-30) and the final scoring (~1.5 min, alone on
# the device) must fit; DEADLINE (wall-clock minutes) stops runs still training then, and the table
# marks them. The 2026-11-30 board ran without a deadline and over the 10 minutes (tools/RESULTS.md).
#   bash tools/board_mnist.sh [MINUTES] [OUT] [board flags/overrides...]
set -euo pipefail
MINUTES=${1:-6}
OUT=${2:-runs/board-mnist}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m onestep.cli board --data mnist-full --minutes "$MINUTES" --marks "${MARKS:-3}" --deadline "${DEADLINE:-7.5}" \
  --out "$OUT" "$@"

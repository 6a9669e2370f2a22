#!/usr/bin/env bash
# The quality board on the full MNIST, as run on one H200 for tools/RESULTS.md: every method with a
# preset in configs/ (plus the 50-step flow-matching baseline and torchcfm's OT-CFM), trained together
# for MINUTES minutes each, scored every MARKS minutes and at the end against all 10,000 held-out digits.
# One device call is limited to 10 minutes: start-up (~1.5 min), training, marks and the final scoring
# must fit, so MINUTES=6 MARKS=3 is the largest board of five methods that does.
#   bash tools/board_mnist.sh [MINUTES] [OUT] [board flags/overrides...]
set -euo pipefail
MINUTES=${1:-6}
OUT=${2:-runs/board-mnist}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m onestep.cli board --data mnist-full --minutes "$MINUTES" --marks "${MARKS:-3}" --out "$OUT" "$@"

#!/usr/bin/env bash
# The quality board on the full MNIST, as run on one H200 for tools/RESULTS.md: every method with a
# preset in configs/ (plus the 50-step flow-matching baseline and torchcfm's OT-CFM), trained together
# for MINUTES minutes each, checkpointed every MARKS minutes and at the end; after training every
# checkpoint is scored alone on the device against all 10,000 held-out digits (MARK_SAMPLES samples for the
# curve's marks). One device call is limited to 10 minutes: start-up, training and the scoring must fit;
# DEADLINE (wall-clock minutes from launch) stops runs still training then, and the table marks them.
#   bash tools/board_mnist.sh [MINUTES] [OUT] [board flags/overrides...]
set -euo pipefail
MINUTES=${1:-6}
OUT=${2:-runs/board-mnist}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m onestep.cli board --data mnist-full --minutes "$MINUTES" --marks "${MARKS:-2}" --deadline "${DEADLINE:-7.2}" \
  ${MARK_SAMPLES:+--mark-samples "$MARK_SAMPLES"} \
  --out "$OUT" "$@"

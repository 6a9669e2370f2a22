#!/usr/bin/env bash
# The quality board on the full MNIST, as run on one H200 for tools/RESULTS.md: every method with a
# preset in configs/ (plus the 50-step flow-matching baseline and torchcfm's OT-CFM), trained together
# for MINUTES minutes each, checkpointed every MARKS minutes and at the end; after training every
# checkpoint is scored alone on the device against all 10,000 held-out digits (MARK_SAMPLES samples for the
# curve's marks), with the table: FID, KID, precision/recall, class accuracy.
# One device call is limited to 10 minutes: start-up, training and the scoring must fit. Measured
# 2026-12-01 (tools/RESULTS.md): start-up ~45 s (install, classifier; to skip the classifier, make it
# with tools/feature_classifier.py, carry .onestep-cache and set ONESTEP_CACHE to it), 6.5 min of wall
# clock for 6 training minutes, ~70 s for the table (one-step rows first) and ~30 s for the curves. DEADLINE (wall-clock minutes from launch, default
# MINUTES + 0.6) stops runs still training then, and the table marks them.
# The latent board (every method in the 16-D latent of an MNIST autoencoder, trained once and cached,
# scored on decoded samples against the same real digits with the same classifier):
# DATA=autoencoded PRESETS=configs/mnist-latent bash tools/board_mnist.sh 6 OUT --methods flow-matching,wflow,ot-nfm,adversarial-flow
#   bash tools/board_mnist.sh [MINUTES] [OUT] [board flags/overrides...]
set -euo pipefail
MINUTES=${1:-6}
OUT=${2:-runs/board-mnist}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
DEADLINE=${DEADLINE:-$(python3 -c "print($MINUTES + 0.6)")}
python3 -m onestep.cli board --data "${DATA:-mnist-full}" --presets "${PRESETS:-configs}" --minutes "$MINUTES" --marks "${MARKS:-2}" --deadline "$DEADLINE" \
  --mark-samples "${MARK_SAMPLES:-1000}" --speed-samples 500 --metrics fid,kid,precision-recall,class-accuracy \
  --out "$OUT" "$@"

#!/usr/bin/env bash
# The DiT latent board (issue 30): every method with a DiT-XS/1 (and the deep-recursive DiT of equal
# parameters for AF and W-Flow) in the spatial latent of a diffusers AutoencoderKL trained once on the
# 60,000 MNIST training digits (data autoencoded-kl, 4 x 7 x 7), trained together for MINUTES minutes
# each on one GPU, 10,000 decoded samples per row scored against the 10,000 real test digits with the
# pixel board's classifier. Presets: configs/mnist-dit/ (recursive variants in configs/mnist-dit/recursive/).
#   bash tools/board_dit_latent.sh MINUTES OUT [--methods ...] [board flags/overrides...]
# Default methods: flow-matching (50 steps, also scored at 1), adversarial-flow, adversarial-flow@rec,
# wflow, wflow@rec, ot-nfm. Same environment variables as tools/board_mnist.sh (MARKS, DEADLINE, ...).
# Cost: the runs share the GPU compute-bound, ~3 steps/s each with six runs at batch 512 on an H100
# (tools/RESULTS.md, DiT latent board), so for more steps split --methods over calls (flow-matching in each).
set -euo pipefail
MINUTES=${1:-6}
OUT=${2:-runs/board-dit-latent}
shift $(( $# < 2 ? $# : 2 ))
METHODS=flow-matching,adversarial-flow,adversarial-flow@rec,wflow,wflow@rec,ot-nfm
if [[ ${1:-} == --methods ]]; then METHODS=$2; shift 2; fi
VARIANTS=()
for m in ${METHODS//,/ }; do
  case $m in
    adversarial-flow@rec*) VARIANTS+=(--config "$m=configs/mnist-dit/recursive/af.yaml") ;;
    wflow@rec*) VARIANTS+=(--config "$m=configs/mnist-dit/recursive/wflow.yaml") ;;
  esac
done
DATA=autoencoded-kl PRESETS=configs/mnist-dit MARKS=${MARKS:-0} exec bash "$(dirname "$0")/board_mnist.sh" "$MINUTES" "$OUT" \
  --few-steps 1 --methods "$METHODS" "${VARIANTS[@]}" "$@"

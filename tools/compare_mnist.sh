#!/usr/bin/env bash
# The issue-6 comparison on MNIST: wflow, adversarial-flow, ot-nfm and the 50-step flow-matching
# baseline, same DiT backbone, data and wall-clock budget each, plus torchcfm's OT-CFM at 50 and
# 100 NFE as the external reference row. Writes OUT/compare.{md,json,png} and one run folder per
# objective. Quality numbers use a classifier trained on MNIST (cached under $ONESTEP_CACHE) unless
# FEATURE_WEIGHTS names a local copy of torch-fidelity's inception-v3-compat weights.
#
#   bash tools/compare_mnist.sh [BUDGET_MINUTES] [OUT] [compare flags...] [overrides...]
# (flags such as --metrics before overrides such as train.batch_size=256 or wflow:objective.eta=0.5)
#   e.g. on the GPU machine (one device call is limited to 10 minutes: 5 runs x 1.2 min + building and evaluation):
#   bash tools/compare_mnist.sh 1.2 runs/compare-mnist-dit train.batch_size=256
#   FEATURE_WEIGHTS=/path/weights-inception-2015-12-05-6726825d.pth bash tools/compare_mnist.sh 1.2
# The first table in tools/RESULTS.md (H100) used: bash tools/compare_mnist.sh 0.9 runs/cmp backbone.size=S/4
#   train.batch_size=256 train.precision=bf16 train.warmup_steps=50 wflow:objective.class_conditional=false
#   wflow:objective.lr=3e-4 adversarial-flow:objective.lr=3e-4 ot-nfm:objective.class_conditional=false
# The toy version: DATA=gmm8 BACKBONE=mlp bash tools/compare_mnist.sh 1 runs/compare-gmm8-mlp
set -euo pipefail
BUDGET=${1:-1.2}
OUT=${2:-runs/compare-${DATA:-mnist}-${BACKBONE:-dit}}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -c "import onestep, torchcfm" || { echo "compare_mnist.sh: needs onestep (with its plugins) and torchcfm installed" >&2; exit 2; }
if [ "${DATA:-mnist}" = mnist ] || [ "${DATA:-mnist}" = digits ]; then
  python3 -c "import torch_fidelity" || { echo "compare_mnist.sh: image metrics need torch-fidelity with a torchvision built for this torch" >&2; exit 2; }
fi
OBJECTIVES=${OBJECTIVES:-wflow,adversarial-flow,ot-nfm,flow-matching}
SCOPED=()
case ",$OBJECTIVES," in *,ot-nfm,*) SCOPED+=("ot-nfm:coupler=${OTNFM_COUPLER:-minibatch-ot}");; esac  # OT-NFM needs a coupler
python3 -m onestep.cli compare --objectives "$OBJECTIVES" \
  --data "${DATA:-mnist}" --backbone "${BACKBONE:-dit}" --budget-minutes "$BUDGET" --out "$OUT" \
  --num-samples "${NUM_SAMPLES:-2000}" ${FEATURE_WEIGHTS:+--feature-weights "$FEATURE_WEIGHTS"} \
  "$@" train.progress=false "${SCOPED[@]}"

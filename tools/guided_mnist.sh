#!/usr/bin/env bash
# Classifier guidance on the full MNIST in the paper's three stages (docs/guided-fine-tuning.md),
# in one device call: (1) unguided AF (configs/af-mnist.yaml) and (2) the noised classifier
# (configs/guidance/classifier-mnist.yaml) train side by side; then (3) from the unguided run's EMA,
# guided fine-tuning at each scale of SCALES and, for a fair comparison, an unguided continuation of
# the same length, side by side, all holding AF's OT weight where the unguided run left it. Every AF
# run ends with FID, precision/recall and class accuracy on 2,000 samples (metrics.jsonl, last "eval"
# record); the table compares them.
#   bash tools/guided_mnist.sh [UNGUIDED_MINUTES] [FINE_TUNE_MINUTES] [OUT]
#   e.g. on one H200 (a device call is limited to 10 minutes): bash tools/guided_mnist.sh 4 1.5 runs/guided
# AF, CLASSIFIER and GUIDED name the three presets (default: the pixel ones under configs/); the latent
# board's: AF=configs/mnist-latent/af.yaml CLASSIFIER=configs/mnist-latent/guidance/classifier.yaml
# GUIDED=configs/mnist-latent/guidance/af-guided.yaml.
# EXTRA adds overrides to every run, e.g. a CPU smoke run: EXTRA="data=mnist backbone.size=P/7 train.steps=3
#   train.batch_size=16 train.precision=fp32 eval.num_samples=100" bash tools/guided_mnist.sh 1 1 /tmp/guided
set -euo pipefail
MINUTES=${1:-4}
FINE=${2:-1.5}
OUT=${3:-runs/guided-mnist}
SCALES=${SCALES:-0.03 0.1 0.3}
AF=${AF:-configs/af-mnist.yaml}
CLASSIFIER=${CLASSIFIER:-configs/guidance/classifier-mnist.yaml}
GUIDED=${GUIDED:-configs/guidance/af-mnist-guided.yaml}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
run() { python3 -m onestep.cli run train.progress=false "$@" ${EXTRA:-}; }
mkdir -p "$OUT"
run --config "$AF" --out "$OUT/unguided" train.max_minutes="$MINUTES" > "$OUT/unguided.log" 2>&1 &
run --config "$CLASSIFIER" --out "$OUT/classifier" train.max_minutes="$MINUTES" \
  > "$OUT/classifier.log" 2>&1 &
wait
# the fine-tuning runs start at step 0: hold AF's OT weight where the unguided run left it
LAMBDA=$(python3 -c "import json, sys; print([r for r in map(json.loads, open(sys.argv[1])) if 'generator/lambda_ot' in r][-1]['generator/lambda_ot'])" "$OUT/unguided/metrics.jsonl")
OT=(objective.lambda_ot="$LAMBDA" objective.lambda_ot_end="$LAMBDA")
run --config "$AF" --init-from "$OUT/unguided" --out "$OUT/continued" train.max_minutes="$FINE" \
  "${OT[@]}" > "$OUT/continued.log" 2>&1 &
for s in $SCALES; do
  run --config "$AF" --config "$GUIDED" --out "$OUT/guided-$s" \
    --init-from "$OUT/unguided" guidance.weights="$OUT/classifier" guidance.scale="$s" train.max_minutes="$FINE" \
    "${OT[@]}" > "$OUT/guided-$s.log" 2>&1 &
done
wait
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| run | steps | FID | recall | class accuracy |\n|---|---|---|---|---|")
for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").is_file() and p.name != "classifier"):
    evals = [r for r in map(json.loads, open(run / "metrics.jsonl")) if "eval" in r]
    if evals:
        e, step = evals[-1]["eval"], evals[-1]["step"]
        pick = lambda key: next((f"{v:.3f}" for k, v in e.items() if k.startswith(key)), "-")
        print(f"| {run.name} | {step} | {pick('fid')} | {pick('recall')} | {pick('class_accuracy[')} |")
PY

#!/usr/bin/env bash
# W-Flow ablations on MNIST (issue 14): the preset configs/wflow-mnist.yaml and one change at a
# time, each trained for the same wall-clock budget, then one table (markdown) of the final
# evaluation of every run. The feature network is trained once (before the first run's clock) and
# cached under $ONESTEP_CACHE; later runs reload it.
#
#   bash tools/wflow_ablations.sh [MINUTES] [OUT] [overrides for every run...]
#   e.g. on the GPU machine: bash tools/wflow_ablations.sh 1.5 runs/wflow-ablations data=mnist-full
#
# Rows (name: overrides on top of the preset: pixel space, R = [0.05, 0.01], normalised, MLP):
#   preset          -
#   features        features=conv-mae objective.bank_per_class=128      (the authors' per-location
#                   conv features; the masked autoencoder is trained once and cached)
#   features-flat   features=conv-mae features.flatten=true features.maps=[1,2] objective.with_input=true
#   one-eps         objective.relative_temperatures=[0.05]
#   no-norm         objective.normalize_velocity=false                  (raw velocity, eta = 1)
#   unconditional   objective.class_conditional=false                   (one plan per batch, as the old preset)
#   dit             backbone=dit backbone.size=S/4 objective.lr=5e-4 train.precision=bf16
# VARIANTS="preset features" limits the rows.
set -euo pipefail -f  # -f: no globbing of overrides such as features.maps=[1,2]
MINUTES=${1:-1.5}
OUT=${2:-runs/wflow-ablations}
shift $(( $# < 2 ? $# : 2 ))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
declare -A ROWS=(
  [preset]=""
  [features]="features=conv-mae objective.bank_per_class=128"
  [features-flat]="features=conv-mae features.flatten=true features.maps=[1,2] objective.with_input=true"
  [one-eps]="objective.relative_temperatures=[0.05]"
  [no-norm]="objective.normalize_velocity=false"
  [unconditional]="objective.class_conditional=false"
  [dit]="backbone=dit backbone.size=S/4 objective.lr=5e-4 train.precision=bf16"
)
VARIANTS=${VARIANTS:-preset features features-flat one-eps no-norm unconditional dit}
mkdir -p "$OUT"
for name in $VARIANTS; do
  [ -n "${ROWS[$name]+set}" ] || { echo "wflow_ablations.sh: unknown variant $name; valid: ${!ROWS[*]}" >&2; exit 2; }
  # shellcheck disable=SC2086
  python3 -m onestep.cli run --config configs/wflow-mnist.yaml --out "$OUT/$name" train.max_minutes="$MINUTES" \
    train.steps=1000000 train.progress=false ${ROWS[$name]} "$@" 2>&1 | grep -E "^metrics|error" || true
done
python3 - "$OUT" $VARIANTS <<'EOF'
import json, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
rows, keys = [], []
for name in names:
    lines = (out / name / "metrics.jsonl").read_text().splitlines() if (out / name / "metrics.jsonl").is_file() else []
    evals = [json.loads(l) for l in lines if '"eval"' in l]
    steps = [json.loads(l) for l in lines if '"generator/loss"' in l]
    m = evals[-1]["eval"] if evals else {}
    keys += [k for k in m if k not in keys]
    rows.append((name, evals[-1]["step"] if evals else 0, steps[-1]["samples_per_s"] if steps else float("nan"), m))
print("| variant | steps | samples/s | " + " | ".join(keys) + " |")
print("|---|---|---|" + "---|" * len(keys))
for name, step, rate, m in rows:
    print(f"| {name} | {step} | {rate:.0f} | " + " | ".join(f"{m[k]:.4g}" if k in m else "-" for k in keys) + " |")
EOF

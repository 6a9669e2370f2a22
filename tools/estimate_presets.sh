#!/usr/bin/env bash
# `onestep estimate` for every ImageNet-256 preset (configs/imagenet256/) on the local GPU, each
# GPU holding its share of the paper's batch on GPUS GPUs, then one table: measured step time,
# samples/s and peak memory per GPU, and the projected wall-clock and GPU-hours of the preset's
# full length on GPUS GPUs, next to the paper's FID. Synthetic 4 x 32 x 32 latents (no dataset).
# Built to fit one 10-minute device call with room to spare (~4 minutes on one H200: start-up and
# network build ~15-25 s per preset, WARMUP + STEPS steps each); a preset that fails or runs past
# LIMIT seconds becomes a row with its error. Records go to OUT/estimate-presets.jsonl.
#   source tools/gpu_env.sh && bash tools/estimate_presets.sh [GPUS] [OUT] [estimate flags/overrides...]
set -uo pipefail
GPUS=${1:-8}
OUT=${2:-${OUT:-tools/results}}
shift $(( $# < 2 ? $# : 2 ))
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-2}
LIMIT=${LIMIT:-75}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
mkdir -p "$OUT"
RECORDS="$OUT/estimate-presets.jsonl"
: > "$RECORDS"
for preset in configs/imagenet256/*.yaml; do
  start=$SECONDS
  if line=$(timeout "$LIMIT" python3 -m onestep.cli estimate --config "$preset" --gpus "$GPUS" --steps "$STEPS" \
              --warmup "$WARMUP" --json "$@" 2>"$OUT/estimate-$(basename "$preset" .yaml).err" | tail -n 1); then
    echo "$line" >> "$RECORDS"
  else
    err=$(grep -v '^\s*$' "$OUT/estimate-$(basename "$preset" .yaml).err" | tail -n 1)
    python3 -c 'import json, sys; print(json.dumps({"recipe": sys.argv[1], "error": sys.argv[2] or "timed out"}))' \
      "$preset" "${err:0:300}" >> "$RECORDS"
  fi
  echo "$preset: $((SECONDS - start)) s" >&2
done
python3 - "$RECORDS" "$GPUS" <<'PY'
import json, sys
# the papers' FID-50k at the preset's NFE (AF arXiv 2511.22475, W-Flow arXiv 2605.11755)
PAPER = {"af-b2": "see paper", "af-xl2": "2.38 (guided)", "af-xl2-2nfe": "2.11 (2 NFE)", "af-xl2-deep56": "2.08",
         "wflow-b2": "1.52", "wflow-l2": "1.35", "wflow-xl2": "1.29"}
gpus = sys.argv[2]
print(f"| preset | params (G) | batch/GPU | step s | samples/s/GPU | peak GiB/GPU | {gpus} GPUs: wall-clock | GPU-hours | paper FID |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = r["recipe"].rsplit("/", 1)[-1].removesuffix(".yaml")
    if "error" in r:
        print(f"| {name} | failed: {r['error']} | | | | | | | {PAPER.get(name, '')} |")
        continue
    wall = r["wall_hours"]
    wall = f"{wall / 24:.1f} days" if wall >= 48 else f"{wall:.1f} h"
    peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
    print(f"| {name} | {r['parameters']['generator'] / 1e6:.0f}M | {r['batch_per_gpu']} | {r['step_s']:.3f} | "
          f"{r['samples_per_s_per_gpu']:.0f} | {peak} | {wall} | {r['gpu_hours']:,.0f} | {PAPER.get(name, '')} |")
print(f"\nscaling per doubling of GPUs: {r.get('scaling_per_doubling', '?')} (measured 1 -> 2 H200s; "
      f"{'extrapolated to ' + gpus + ' GPUs' if int(gpus) > 2 else 'within the measurement'})")
PY

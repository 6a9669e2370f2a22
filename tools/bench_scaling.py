"""Data-parallel scaling of the onestep trainer: training samples/s on 1 GPU against N GPUs.

Each configuration is a separate ``torchrun`` launch of the real trainer (``compose`` ->
``Trainer`` -> ``Trainer.train_step``; DeepSpeed engines, bf16 autocast) on synthetic
32x32x4 latents (the papers' latent shape for 256 px images), timed after warm-up steps. Two
regimes, both printed:

- strong: the same global batch on every GPU count (the "same run"); per-GPU batch shrinks;
- weak: the same per-GPU batch; the global batch grows with the GPU count.

Ratio = samples/s of the row / samples/s of 1 GPU at the same ZeRO stage and regime.

    python tools/bench_scaling.py --gpus 1,2 --zero 2,3 --objective flow-matching --size B/2
    python tools/bench_scaling.py --small          # CPU smoke run (2 processes, tiny DiT)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def worker(args: argparse.Namespace) -> None:
    import torch

    from onestep.api import compose
    from onestep.trainer import Trainer

    overrides = [
        f"data.path={args.data}", "data.kind=latents", "data.test_fraction=0.01",
        f"backbone.size={args.size}", f"train.zero_stage={args.zero_stage}", f"train.batch_size={args.batch}",
        f"train.precision={args.precision}", "train.progress=false", "train.steps=100000", f"output_dir={args.out}",
        "eval.metrics=[]", f"train.compile={str(args.compile).lower()}",
    ]
    run = Trainer(compose(objective=args.objective, backbone="dit", data="npz", overrides=overrides), console=False)
    cuda = run.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
        if run.world > 1:
            torch.distributed.barrier()

    for _ in range(args.warmup):
        run.train_step()
        run.step += 1
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        run.train_step()
        run.step += 1
    sync()
    seconds = time.perf_counter() - start
    if run.rank == 0:
        print("RESULT " + json.dumps({
            "samples_per_s": args.steps * args.batch / seconds, "step_ms": 1000 * seconds / args.steps,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
            "world": run.world, "device": torch.cuda.get_device_name() if cuda else "cpu",
        }), flush=True)


def launch(args: argparse.Namespace, gpus: int, zero: int, batch: int, data: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", __file__,
           "--worker", f"--data={data}", f"--out={out}", f"--zero-stage={zero}", f"--batch={batch}",
           f"--objective={args.objective}", f"--size={args.size}", f"--precision={args.precision}",
           f"--steps={args.steps}", f"--warmup={args.warmup}"] + (["--compile"] if args.compile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    raise RuntimeError(f"{gpus} process(es), ZeRO-{zero}, batch {batch} failed (rc {proc.returncode}):\n{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--zero-stage", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=256, help="global batch of the 1-GPU run")
    p.add_argument("--gpus", default="1,2", help="process counts, e.g. 1,2")
    p.add_argument("--zero", default="2,3", help="ZeRO stages, e.g. 2,3")
    p.add_argument("--objective", default="flow-matching")
    p.add_argument("--size", default="B/2", help="DiT size (backbone.size)")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--small", action="store_true", help="CPU smoke run: 2 processes, tiny DiT, 8x8 latents")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    shape = (4, 32, 32)
    if args.small:
        args.size, args.precision, args.steps, args.warmup, args.batch, shape = "T/2", "fp32", 3, 1, 16, (4, 8, 8)
    gpus = [int(g) for g in args.gpus.split(",")]
    stages = [int(z) for z in args.zero.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "latents.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.standard_normal((8192, *shape), dtype=np.float32), y=rng.integers(0, 10, 8192))
        rows = []
        for zero in stages:
            for regime in ("strong", "weak"):
                for g in gpus:
                    if regime == "weak" and g == 1:
                        continue
                    batch = args.batch if regime == "strong" else args.batch * g
                    r = launch(args, g, zero, batch, data, Path(tmp) / f"run-{zero}-{regime}-{g}")
                    rows.append({"zero": zero, "regime": regime, "gpus": g, "batch": batch, **r})
                    print(json.dumps(rows[-1]), flush=True)
    base = {r["zero"]: r["samples_per_s"] for r in rows if r["gpus"] == 1}
    print(f"\nDiT-{args.size} {args.objective}, {args.precision}, latents {shape}, device {rows[0]['device']}")
    print(f"{'ZeRO':>4} {'regime':>6} {'GPUs':>4} {'batch':>6} {'samples/s':>10} {'step ms':>8} {'mem GiB':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['zero']:>4} {r['regime']:>6} {r['gpus']:>4} {r['batch']:>6} {r['samples_per_s']:>10.1f} "
              f"{r['step_ms']:>8.1f} {r['peak_mem_gib']:>8.2f} {r['samples_per_s'] / base[r['zero']]:>6.2f}")


if __name__ == "__main__":
    main()

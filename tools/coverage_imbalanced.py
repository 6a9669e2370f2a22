"""The W-Flow paper's mode-coverage experiment (arXiv 2605.11755, Fig. 6a): a 2-D Gaussian mixture of
six dominant modes on a ring and two distant minority modes (``gmm-imbalanced``: 2% of the mass each,
at distance 10), learnt by W-Flow, AF and OT-NFM (one step) and flow matching (50 Euler steps), every
method with its own default settings (OT-NFM with minibatch-OT pairs), the same MLP and the same number
of training steps.

    python tools/coverage_imbalanced.py                        # CPU, a few minutes
    python tools/coverage_imbalanced.py --steps 2000 --out docs/figures/wflow-imbalanced.png

Prints a markdown table (per-mode mass of each minority mode against its true weight, off-mode
fraction, modes covered, training seconds) and writes one figure: each method's samples over the
data, the minority modes circled.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from onestep.api import compose
from onestep.registry import Registry
from onestep.trainer import Trainer

METHODS = ("wflow", "adversarial-flow", "ot-nfm", "flow-matching")
LABELS = {"wflow": "W-Flow (1 NFE)", "adversarial-flow": "AF (1 NFE)", "ot-nfm": "OT-NFM (1 NFE)",
          "flow-matching": "flow matching (50 NFE)"}


def train(method: str, args, registry: Registry, out: Path) -> tuple[dict, torch.Tensor, float]:
    overrides = [f"output_dir={out / method}", "train.progress=false", f"train.log_every={args.steps}",
                 f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.warmup_steps=20",
                 f"backbone.width={args.width}", "backbone.depth=2", f"eval.num_samples={args.samples}",
                 "sample.num=10", f"seed={args.seed}"]
    coupler = "minibatch-ot" if method == "ot-nfm" else None  # OT-NFM needs a coupling: exact OT within the batch
    cfg = compose(objective=method, backbone="mlp", data="gmm-imbalanced", coupler=coupler, registry=registry,
                  overrides=overrides)
    run = Trainer(cfg, registry=registry, console=False)
    start = time.perf_counter()
    metrics = run.fit()["metrics"]
    seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    return metrics, run.sample(args.samples).reshape(-1, 2), seconds


def figure(results: dict, data: torch.Tensor, modes: torch.Tensor, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4.3), sharex=True, sharey=True)
    for ax, (method, (m, samples, _)) in zip(axes, results.items()):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", alpha=0.5, label="samples")
        for k in (6, 7):
            ax.add_patch(plt.Circle(modes[k].tolist(), 0.9, fill=False, ec="tab:red", lw=1.5))
        ax.set_title(f"{LABELS[method]}\nminority {m['mode_mass_6']:.3f} / {m['mode_mass_7']:.3f} (true 0.020)\n"
                     f"off-mode {m['off_mode_fraction']:.2f}", fontsize=9)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_aspect("equal")
    fig.suptitle(f"gmm-imbalanced (six dominant modes, two 2% modes at distance 10), {steps} training steps each, "
                 "default settings", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="docs/figures/wflow-imbalanced.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    registry = Registry.discover()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            results[method] = train(method, args, registry, Path(tmp))
            m, _, seconds = results[method]
            print(json.dumps({"method": method, "seconds": round(seconds, 1),
                              **{k: round(v, 4) for k, v in m.items() if k.startswith(("mode", "off"))}}), flush=True)
        run_source = Trainer(compose(objective="flow-matching", backbone="mlp", data="gmm-imbalanced",
                                     registry=registry, overrides=[f"output_dir={tmp}/src"]),
                             registry=registry, console=False).source
        data = run_source.dataset("test").tensors[0][:args.samples]
        modes = run_source.modes()
    figure(results, data, modes, Path(args.out), args.steps)
    print()
    print(f"gmm-imbalanced, {args.steps} steps, batch {args.batch}, MLP {args.width} x 2, default settings, "
          f"{args.samples} samples, seed {args.seed}")
    print()
    print("| method | minority mode 6 (true 0.02) | minority mode 7 (true 0.02) | off-mode fraction | modes covered | "
          "train s |")
    print("|---|---|---|---|---|---|")
    for method, (m, _, seconds) in results.items():
        print(f"| {LABELS[method]} | {m['mode_mass_6']:.4f} | {m['mode_mass_7']:.4f} | {m['off_mode_fraction']:.3f} | "
              f"{m['modes_covered']:.0f}/8 | {seconds:.0f} |")
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()

"""The ``onestep`` command: run, sample, eval, plugins, plus the subcommands that modules in
:mod:`onestep.commands` add (each exposes ``register(subparsers)``)."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import attrs
import torch

from . import checkpoint as ckpt
from .config import COMPONENT_SECTIONS, assemble, build_config, read_file, unstructure
from .errors import OnestepError
from .interfaces import KINDS
from .registry import Registry


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. train.steps=500")


def cmd_run(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    reg = Registry.discover()
    choices = {s: getattr(args, s) for s in COMPONENT_SECTIONS}
    overrides = list(args.overrides) + ([f"output_dir={args.out}"] if args.out else [])
    config = build_config(assemble(args.config, choices, overrides), reg)
    trainer = Trainer(config, registry=reg)
    resume = None
    if args.resume is not None:
        resume = args.resume if args.resume != "latest" else str(trainer.out_dir)
    summary = trainer.fit(resume=resume)
    print(f"outputs: {summary['out_dir']} (samples: {summary['samples_png']}, checkpoint: {summary['checkpoint']})")
    return 0


def trainer_from_checkpoint(path: str, overrides: list[str]):
    """Rebuild the run that wrote checkpoint ``path`` (with overrides) and load its weights."""
    from .trainer import Trainer

    folder = ckpt.resolve(path)
    reg = Registry.discover()
    raw = read_file(folder / "config.yaml")
    raw["output_dir"] = str(folder.parent.parent)
    config = build_config(assemble(base=raw, overrides=overrides), reg)
    trainer = Trainer(config, registry=reg)
    trainer.load(folder, weights_only=True)
    return trainer


def cmd_sample(args: argparse.Namespace) -> int:
    trainer = trainer_from_checkpoint(args.checkpoint, args.overrides)
    n = args.num
    y = None
    if args.label is not None:
        if trainer.spec.num_classes == 0:
            raise OnestepError("--label: this model is unconditional (the data has no classes)")
        if not 0 <= args.label < trainer.spec.num_classes:
            raise OnestepError(f"--label: expected 0..{trainer.spec.num_classes - 1}, got {args.label}")
        y = torch.full((n,), args.label, dtype=torch.long)
    x = trainer.sample(n, nfe=args.nfe, y=y, seed=args.seed)
    out = Path(args.out or trainer.out_dir / "samples" / f"sample-step-{trainer.step:07d}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        import numpy as np

        np.savez(out, x=x.numpy())
    elif out.suffix == ".png":
        from .plotting import save_samples

        save_samples(trainer.source.decode(x), out, title=f"{trainer.objective.name} step {trainer.step}")
    else:
        raise OnestepError(f"--out {str(out)!r}: expected a .png or .npz path")
    print(f"wrote {n} samples to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    weights = [f"eval.feature_weights={args.feature_weights}"] if args.feature_weights else []
    trainer = trainer_from_checkpoint(args.checkpoint, list(args.overrides) + weights)
    if args.nfe:
        trainer.config = attrs.evolve(trainer.config, sample=attrs.evolve(trainer.config.sample, nfe=args.nfe))
    metrics = trainer.evaluate(args.metrics.split(",") if args.metrics else None, args.num)
    print(json.dumps({"step": trainer.step, **metrics}))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    reg = Registry.discover()
    kinds = [args.kind] if args.kind else list(KINDS)
    listing = {}
    for kind in kinds:
        listing[kind] = [
            {"name": c.name, "package": c.package, "summary": c.summary,
             "config": unstructure(c.cls.Config())}
            for c in reg.components(kind)
        ]
    if args.json:
        print(json.dumps({"components": listing, "broken": reg.broken}, indent=1, default=str))
        return 0
    for kind, comps in listing.items():
        print(f"{kind}:")
        for c in comps:
            print(f"  {c['name']:<18} [{c['package']}] {c['summary']}")
            for k, v in c["config"].items():
                print(f"      {k} = {v!r}")
    for name, why in reg.broken.items():
        print(f"broken plugin {name}: {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestep", description="Train and use one-step generative models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a model")
    for s in COMPONENT_SECTIONS:
        p.add_argument(f"--{s}", metavar="NAME", help=f"{s} plugin name (see `onestep plugins`)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML/TOML config (repeatable)")
    p.add_argument("--out", metavar="DIR", help="output folder (sets output_dir)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue from a checkpoint (default: the latest in the output folder)")
    add_override_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sample", help="draw samples from a checkpoint")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--nfe", type=int, default=None, help="network evaluations (default: the objective's)")
    p.add_argument("--label", type=int, default=None, help="class label for all samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output .png (picture) or .npz (array x)")
    add_override_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a checkpoint against held-out data")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--metrics", help="comma-separated metric names (default: all that apply)")
    p.add_argument("--num", type=int, default=None, help="number of samples")
    p.add_argument("--nfe", type=int, default=None)
    p.add_argument("--feature-weights", metavar="PATH",
                   help="local Inception weights (torch-fidelity's inception-v3-compat .pth) for FID/KID/IS/PR; "
                        "default: a classifier trained on the data")
    add_override_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="list components, their packages and config fields")
    p.add_argument("--kind", choices=list(KINDS))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    from . import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OnestepError as exc:
        print(f"onestep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

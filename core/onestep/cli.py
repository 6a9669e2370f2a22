"""The ``onestep`` command: run, sample, eval, plugins, config, plus the subcommands plugins add
through the hook ``onestep_commands`` (the core's own, in :mod:`onestep.commands`, included).

``key.path=value`` overrides may stand anywhere among the options. Errors the user can act on
(:class:`OnestepError`) end the command with one line on stderr and exit code 2 (130 for Ctrl-C)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import attrs
import torch

from . import __version__
from . import checkpoint as ckpt
from .config import COMPONENT_SECTIONS, RunConfig, assemble, build_config, read_file, unstructure
from .errors import OnestepError
from .fielddocs import describe, field_docs
from .interfaces import KINDS
from .registry import Registry


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. train.steps=500")


def cmd_run(args: argparse.Namespace) -> int:
    from .compare.gate import StartGate
    from .trainer import Trainer

    if args.resume and args.resume_from:
        raise OnestepError("--resume and --resume-from: give one (--resume continues the output folder's newest checkpoint)")
    reg = Registry.discover()
    choices = {s: getattr(args, s) for s in COMPONENT_SECTIONS}
    overrides = list(args.overrides) + ([f"output_dir={args.out}"] if args.out else []) + \
        ([f"train.init_from={args.init_from}"] if args.init_from else [])
    raw = assemble(args.config, choices, overrides)
    resume = args.resume_from or (resumed_folder(raw, reg) if args.resume else None)
    if resume is not None:  # continue the run as it was configured; files, names and overrides amend it
        saved = read_file(ckpt.resolve(resume) / "config.yaml")
        raw = assemble(args.config, choices, overrides, base=saved)
    config = build_config(raw, reg)
    trainer = Trainer(config, registry=reg)
    ready = StartGate(args.start_gate).arrive if args.start_gate else None
    summary = trainer.fit(resume=resume, overwrite=args.overwrite, ready=ready)
    print(f"outputs: {summary['out_dir']} (samples: {summary['samples_png']}, checkpoint: {summary['checkpoint']})")
    return 0


def resumed_folder(raw: dict, registry: Registry) -> str:
    """The output folder ``--resume`` continues: ``output_dir`` as given (``--out``), or the
    folder its template names for the chosen components."""
    out = raw.get("output_dir")
    if isinstance(out, str) and "{" not in out:
        return out
    return str(build_config(raw, registry).resolved_output_dir())


def pipeline_from_checkpoint(path: str, overrides: list[str], registry: Registry):
    """The generator of checkpoint ``path`` (its run's config amended by ``overrides``), loaded the
    light way (:meth:`OneStepPipeline.from_checkpoint`: no engines, optimizers or data streams)."""
    from .export import OneStepPipeline

    folder, skipped = ckpt.newest_intact(path)
    for _, reason in skipped:
        print(f"onestep: warning: {reason}; using {folder}", file=sys.stderr)
    return OneStepPipeline.from_checkpoint(folder, device=None, overrides=overrides, registry=registry)


def cmd_sample(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise OnestepError(f"--num: expected >= 1 samples, got {args.num}")
    if args.nfe is not None and args.nfe < 1:
        raise OnestepError(f"--nfe: expected >= 1 network evaluations, got {args.nfe}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".png", ".npz"):
        raise OnestepError(f"--out {str(out)!r}: expected a .png or .npz path")
    pipe = pipeline_from_checkpoint(args.checkpoint, args.overrides, Registry.discover())
    classes, step = pipe.spec.num_classes, pipe.meta["step"]
    if args.label is not None and classes == 0:
        raise OnestepError("--label: this model is unconditional (the data has no classes)")
    if args.label is not None and not 0 <= args.label < classes:
        raise OnestepError(f"--label: expected 0..{classes - 1}, got {args.label}")
    labels, _ = pipe.labels(args.label, args.num)
    x = pipe(class_labels=labels, num_images=args.num, seed=args.seed, nfe=args.nfe, output_type="model")
    out = out or Path(pipe.meta["checkpoint"]).parent.parent / "samples" / f"sample-step-{step:07d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        save_npz(out, x if args.latents else pipe.source.decode(x), labels)
    else:
        from .plotting import save_samples

        save_samples(pipe.source.decode(x), out, title=f"{pipe.objective.name} step {step}")
    print(f"wrote {args.num} samples to {out}")
    return 0


def save_npz(path: Path, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    """``x`` (the samples) and, for a class-conditional model, ``labels`` (int64, one per sample),
    written atomically; read back with ``numpy.load`` (nothing pickled)."""
    import numpy as np

    from .files import write_atomic

    arrays = {"x": x.numpy()} | ({"labels": labels.numpy().astype(np.int64)} if labels is not None else {})
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics.evaluate import EVAL_SEED_OFFSET, applicable_metrics, evaluate

    if args.num is not None and args.num < 1:
        raise OnestepError(f"--num: expected >= 1 samples, got {args.num}")
    weights = [f"eval.feature_weights={args.feature_weights}"] if args.feature_weights else []
    registry = Registry.discover()
    pipe = pipeline_from_checkpoint(args.checkpoint, list(args.overrides) + weights, registry)
    config = build_config(pipe.meta["run"], registry)
    names = args.metrics.split(",") if args.metrics else applicable_metrics(registry, pipe.spec)
    seed = config.seed + EVAL_SEED_OFFSET

    def sample(n: int, y: torch.Tensor | None) -> torch.Tensor:
        return pipe(class_labels=y, num_images=n, seed=seed, nfe=args.nfe, output_type="model")

    metrics = evaluate(sample, pipe.source, args.num or config.eval.num_samples, names, config.eval, registry,
                       pipe.objective.generator_conditional())
    print(json.dumps({"step": pipe.meta["step"], **metrics}))
    return 0


def _field_rows(cls: type, prefix: str = "") -> list[dict]:
    return [{"field": path, "default": default, "doc": doc} for path, default, doc in describe(cls, prefix)]


def _print_fields(rows: list[dict], indent: str) -> None:
    width = max((len(f"{r['field']} = {r['default']!r}") for r in rows), default=0)
    for r in rows:
        left = f"{r['field']} = {r['default']!r}"
        print(f"{indent}{left:<{width}}  {r['doc']}".rstrip())


def cmd_plugins(args: argparse.Namespace) -> int:
    reg = Registry.discover()
    kinds = [args.kind] if args.kind else list(KINDS)
    listing = {}
    for kind in kinds:
        listing[kind] = [
            {"name": c.name, "package": c.package, "summary": c.summary, "config": unstructure(c.cls.Config()),
             "docs": field_docs(c.cls.Config)}
            for c in reg.components(kind)
        ]
    if args.json:
        print(json.dumps({"components": listing, "broken": reg.broken}, indent=1, default=str))
        return 0
    for kind, comps in listing.items():
        print(f"{kind}:")
        for c in comps:
            print(f"  {c['name']:<18} [{c['package']}] {c['summary']}")
            _print_fields([{"field": k, "default": v, "doc": c["docs"].get(k, "")} for k, v in c["config"].items()],
                          "      ")
    for name, why in reg.broken.items():
        print(f"broken plugin {name}: {why}")
    print("run settings (train.*, sample.*, eval.*, seed, output_dir, device): onestep config")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The run's own settings (everything but the component sections) with defaults and docs."""
    sections = {}
    for f in attrs.fields(RunConfig):
        if f.name in COMPONENT_SECTIONS:
            continue
        default = getattr(RunConfig(), f.name)
        if attrs.has(type(default)):
            sections[f.name] = _field_rows(type(default), f"{f.name}.")
        else:
            sections.setdefault("run", []).append(
                {"field": f.name, "default": default, "doc": field_docs(RunConfig).get(f.name, "")})
    if args.json:
        print(json.dumps(sections, indent=1, default=str))
        return 0
    for name, rows in sections.items():
        print(f"{name}:")
        _print_fields(rows, "  ")
    print("component sections (" + ", ".join(COMPONENT_SECTIONS) + "): {name: ..., <fields>}; see onestep plugins")
    return 0


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    """The ``onestep`` parser: the core's commands and those plugins add (hook ``onestep_commands``)."""
    parser = argparse.ArgumentParser(prog="onestep", description="Train and use one-step generative models.")
    parser.add_argument("--version", action="version", version=f"onestep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a model")
    for s in COMPONENT_SECTIONS:
        p.add_argument(f"--{s}", metavar="NAME", help=f"{s} plugin name (see `onestep plugins`)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML/TOML config (repeatable)")
    p.add_argument("--out", metavar="DIR", help="output folder (sets output_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in the output folder, with its saved config "
                        "(amended by --config, names and overrides)")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue from this checkpoint (a step-N or run folder), with its saved config")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start the networks from this checkpoint's weights (the generator from its EMA), a new run "
                        "otherwise (sets train.init_from): a fine-tuning stage such as guidance")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run left in the output folder (its checkpoints, metrics, config)")
    p.add_argument("--start-gate", metavar="DIR",
                   help="once built and prepared, write DIR/<pid>.ready and wait for DIR/go before training "
                        "(the board starts its runs' training clocks together)")
    add_override_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sample", help="draw samples from a checkpoint")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--nfe", type=int, default=None, help="network evaluations (default: the objective's)")
    p.add_argument("--label", type=int, default=None, help="class label for all samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output .png (picture) or .npz: array x (images in [-1, 1] as [N, C, H, W], or "
                                 "points) and, for class-conditional models, labels")
    p.add_argument("--latents", action="store_true",
                   help="latent runs: store the generator's latent codes in the .npz instead of the decoded images "
                        "(the default)")
    add_override_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a checkpoint against held-out data")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--metrics", help="comma-separated metric names (default: every installed metric that applies to the data)")
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

    p = sub.add_parser("config", help="list the train.*, sample.*, eval.* and other run settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)

    (registry or Registry.discover()).add_commands(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, letting ``key=value`` overrides stand anywhere among the options."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def run_command(argv: list[str] | None) -> int:
    args = parse(build_parser(), argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for records such as the board's
    try:
        return args.func(args)
    except OnestepError as exc:
        print(f"onestep: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("onestep: interrupted; nothing was saved at the interruption", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run one command. A reader that closes early (``onestep plugins | head``) ends it quietly
    with exit code 0, as ``head`` asked for no more: output goes to /dev/null from there on, so
    neither the command nor Python's final flush reports the broken pipe."""
    try:
        try:
            code = run_command(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

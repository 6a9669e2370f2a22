"""``onestep compare``: several objectives, same backbone, data and wall-clock budget; one table
(markdown + JSON) and one figure of samples side by side, with torchcfm's OT-CFM as the external
reference row."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..errors import ConfigError


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def presets_folder(value: str | None) -> str | None:
    """``--presets``: a folder, ``none``, or unset (``configs/`` where it exists)."""
    from ..compare.presets import DEFAULT_FOLDER

    if value == "none":
        return None
    if value is None:
        return DEFAULT_FOLDER if os.path.isdir(DEFAULT_FOLDER) else None
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare.comparison import run_comparison
    from ..compare.report import markdown_table, save_figure, write_table

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("onestep compare runs in one process (start it without torchrun); "
                          "multi-GPU throughput is tools/bench_scaling.py's job")
    objectives = [o for o in args.objectives.split(",") if o]
    out = args.out or f"runs/compare-{args.data or 'data'}-{args.backbone or 'backbone'}"
    comparison = run_comparison(
        objectives, data=args.data, backbone=args.backbone, budget_minutes=args.budget_minutes, out_dir=out,
        files=args.config, overrides=args.overrides, peer=not args.no_peer, peer_nfes=args.peer_nfe,
        metrics=args.metrics.split(",") if args.metrics else None, num_samples=args.num_samples,
        feature_weights=args.feature_weights, speed_samples=args.speed_samples, presets=presets_folder(args.presets),
        overwrite=args.overwrite,
    )
    comparison.meta["command"] = "onestep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md, js = write_table(comparison, out)
    png = save_figure(comparison, f"{out}/compare.png")
    print(markdown_table(comparison))
    print(f"wrote {md}, {js} and {png}")
    return 0


def add_preset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="[NAME=]FILE",
                   help="YAML/TOML config for every run, or NAME=FILE for method NAME instead of its preset (repeatable)")
    p.add_argument("--presets", metavar="DIR", help="folder of method presets (default: ./configs where it exists; "
                                                    "'none': the objectives' bare defaults)")


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="train several objectives on the same budget; one table and one figure")
    p.add_argument("--objectives", required=True, metavar="A,B,...", help="objective names, comma-separated")
    p.add_argument("--data", metavar="NAME", help="data source (default: the config's)")
    p.add_argument("--backbone", metavar="NAME", help="backbone for every objective (default: the config's)")
    p.add_argument("--budget-minutes", type=float, required=True, metavar="M",
                   help="wall-clock training time of each objective (train.max_minutes)")
    add_preset_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/compare-DATA-BACKBONE)")
    p.add_argument("--metrics", help="comma-separated metric names (default: all that apply to the data)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per evaluation (default: eval.num_samples)")
    p.add_argument("--feature-weights", metavar="PATH",
                   help="local Inception weights (torch-fidelity's inception-v3-compat .pth) for image metrics; "
                        "default: a classifier trained on the data")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier comparison in --out")
    p.add_argument("--no-peer", action="store_true", help="leave out the external reference rows (objectives whose plugins declare comparison_role 'peer')")
    p.add_argument("--peer-nfe", type=_ints, default=[50, 100], metavar="N,M", help="Euler steps of the peer rows (default 50,100)")
    p.add_argument("--speed-samples", type=int, default=1000, help="samples per throughput timing")
    p.add_argument("overrides", nargs="*", metavar="[NAME:]key.path=value",
                   help="config overrides for every run, or for objective NAME only")
    p.set_defaults(func=cmd_compare)

"""``onestep board``: the quality board (methods trained together from their presets, FID against
minutes); see :mod:`onestep.compare.board`."""
from __future__ import annotations

import argparse
import os
import shlex

from ..errors import ConfigError
from .compare import _ints, add_preset_args, presets_folder


def cmd_board(args: argparse.Namespace) -> int:
    from ..compare.board import run_board
    from ..compare.plan import BoardSettings, default_methods
    from ..registry import Registry

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("onestep board starts its own processes (start it without torchrun)")
    registry = Registry.discover()
    registry.get("data", args.data)
    presets = presets_folder(args.presets)
    methods = [m for m in args.methods.split(",") if m] if args.methods else default_methods(registry, args.data, presets)
    settings = BoardSettings(
        data=args.data, minutes=args.minutes, marks=args.marks, methods=methods, out_dir=args.out or f"runs/board-{args.data}",
        backbone=args.backbone, files=args.config, overrides=args.overrides, presets=presets,
        eval_samples=args.eval_samples, mark_samples=args.mark_samples, metrics=args.metrics.split(",") if args.metrics else None,
        few_steps=args.few_steps, deadline=args.deadline, speed_samples=args.speed_samples, feature_weights=args.feature_weights,
        command="onestep " + shlex.join(args.argv))
    rows = run_board(settings, registry)
    print((settings.out_dir / "board.md").read_text())
    print(f"wrote {settings.out_dir}: board.md, board.json, fid_vs_minutes.png, grids.png, one grid per row, runs/")
    return 1 if any(r.error for r in rows) else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("board", help="train methods together from their presets; FID against minutes, table, grids")
    p.add_argument("--data", default="mnist-full", metavar="NAME", help="data source (default: mnist-full)")
    p.add_argument("--minutes", type=float, required=True, metavar="M", help="training minutes of every method")
    p.add_argument("--marks", type=float, default=2.0, metavar="M",
                   help="checkpoint every M training minutes; each is scored after training (default 2; 0: only the end)")
    p.add_argument("--methods", metavar="A,B,...",
                   help="objective names, or variants NAME@LABEL (own row, same preset, NAME@LABEL:key=value overrides); default: "
                        "the baseline and peer objectives (their plugins declare the role) and every objective with a preset for the data")
    p.add_argument("--backbone", metavar="NAME", help="backbone for every method (default: each preset's)")
    add_preset_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder, new or empty (default: runs/board-DATA)")
    p.add_argument("--eval-samples", type=int, default=None, metavar="N",
                   help="held-out images to score against, and samples drawn (default: the whole held-out split)")
    p.add_argument("--mark-samples", type=int, default=None, metavar="N",
                   help="samples scored at each mark, for the curve (default: as many as at the end)")
    p.add_argument("--metrics", help="comma-separated metric names (default: every installed metric for the data)")
    p.add_argument("--few-steps", type=_ints, default=[1, 2, 4], metavar="N,M",
                   help="extra NFE rows of the multi-step baseline, flow matching (default 1,2,4)")
    p.add_argument("--deadline", type=float, default=None, metavar="M",
                   help="wall-clock minutes after which runs still training are stopped (they checkpoint; rows say so)")
    p.add_argument("--speed-samples", type=int, default=1000, help="samples per throughput timing")
    p.add_argument("--feature-weights", metavar="PATH",
                   help="local Inception weights for the image metrics (default: a classifier trained on the data)")
    p.add_argument("overrides", nargs="*", metavar="[NAME:]key.path=value",
                   help="config overrides for every method, or for method NAME only; they win over presets")
    p.set_defaults(func=cmd_board)

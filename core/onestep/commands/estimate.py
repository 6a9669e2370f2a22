"""``onestep estimate``: time a few real training steps of a recipe on the local GPU(s) and project
its full length on N GPUs (hours or weeks?); see :mod:`onestep.estimate`. One process measures one
GPU; ``torchrun --nproc_per_node W -m onestep.cli estimate ...`` measures W GPUs together (their
gradient all-reduce included), and only the GPUs beyond W are projected."""
from __future__ import annotations

import argparse
import json
import os
import tempfile

# what the timed steps leave out: chores of a real run (they pause the training clock there too)
QUIET = ["train.progress=false", "train.checkpoint_every=0", "train.sample_every=0", "train.eval_every=0",
         "train.eval_every_minutes=0", "train.max_minutes=0", "train.log_every=1000000", "eval.at_end=false"]


def cmd_estimate(args: argparse.Namespace) -> int:
    from ..config import assemble, build_config
    from ..errors import ConfigError
    from ..estimate import measure, per_gpu_batch, project, report, summary
    from ..registry import Registry

    if not args.config:
        raise ConfigError("--config: give the recipe to estimate (e.g. configs/imagenet256/af-xl2.yaml)")
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError(f"--steps/--warmup: expected >= 1 timed and >= 0 warm-up steps, got {args.steps}, {args.warmup}")
    reg = Registry.discover()
    swap = [] if args.real_data else ["data.name=synthetic-latents"]
    recipe = swap + list(args.overrides)
    plan = build_config(assemble(args.config, overrides=recipe), reg)  # the recipe as it would run
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.gpus < world:
        raise ConfigError(f"--gpus: {args.gpus} is fewer than the {world} processes measuring; project to >= {world} GPUs")
    share = per_gpu_batch(plan.train, args.gpus)
    with tempfile.TemporaryDirectory(prefix="onestep-estimate-") as tmp:
        forced = QUIET + [f"train.batch_size={share * world}", f"output_dir={args.out or tmp}"]
        if not args.real_data and not any(o.startswith("data.size=") for o in args.overrides):
            forced.append(f"data.size={max(4096, 2 * share * world)}")
        config = build_config(assemble(args.config, overrides=recipe + forced), reg)
        m = measure(config, reg, args.steps, args.warmup, plan.train.steps)
    p = project(m, args.gpus, plan.train.steps, plan.train.zero_stage, args.scaling)
    if int(os.environ.get("RANK", "0")) == 0:
        name = " + ".join(args.config)
        if args.json:
            print(json.dumps(summary(name, plan, m, p)))
        else:
            data_note = ("the recipe's own data" if args.real_data
                         else f"synthetic latents of shape {config.data.config.shape}, {config.data.config.num_classes} classes")
            print(report(name, plan, m, p, args.warmup, data_note))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("estimate", help="time a few training steps of a recipe and project its cost on N GPUs",
                              description="Time a few real training steps of a recipe (one GPU per process; under "
                                          "torchrun, several) and project its full length on --gpus GPUs.")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML/TOML recipe (repeatable)")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="GPUs of the projected run; each local GPU runs its share of the batch (default 1)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first: allocation, autotuning, compilation (default 3)")
    p.add_argument("--scaling", type=float, default=None, metavar="E",
                   help="efficiency per doubling of GPUs for the projection (default: the measured value of the ZeRO stage)")
    p.add_argument("--real-data", action="store_true",
                   help="time on the recipe's own data instead of synthetic latents (default shape 4 x 32 x 32, "
                        "1000 classes: ImageNet-256's; set data.shape=[C,H,W] data.num_classes=K for other recipes)")
    p.add_argument("--out", metavar="DIR", help="run folder for the timed steps' logs (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON record instead of the summary")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="amend the recipe, e.g. train.grad_accum=2 (applied to the projection's recipe too)")
    p.set_defaults(func=cmd_estimate)

"""Side-by-side comparison (``onestep compare``): each objective trains from its preset
(:mod:`.presets`) with the same backbone, data and wall-clock budget (``train.max_minutes``),
one after another in this process, then is evaluated with the same metrics and timed at its own
number of network evaluations. torchcfm's OT-CFM (the ``torchcfm-peer`` plugin), trained the
same way, is the external reference row (at several NFE). Writing the table and figure is
:mod:`.report`'s job; the concurrent, curve-drawing version is :mod:`.board`.

Config precedence for a run: its preset < ``--config FILE`` (every run) < ``--config NAME=FILE``
< overrides for every run < ``NAME:key=value`` overrides for objective NAME only (e.g.
``wflow:objective.eta=0.5``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import attrs
import torch

from ..api import compose
from ..components import build_components
from ..errors import ConfigError
from ..metrics.evaluate import applicable_metrics
from ..registry import Registry
from .presets import find_preset
from ..trainer import Trainer
from .speed import sampling_throughput

def objectives_with_role(registry: Registry, role: str) -> list[str]:
    """The installed objectives whose plugin declares ``comparison_role == role`` (``baseline``,
    ``peer``; see :class:`onestep.interfaces.Objective`), by name."""
    return [n for n in registry.names("objective") if role_of(registry, n) == role]


def role_of(registry: Registry, method: str) -> str:
    """The comparison role of a method label's objective (``""`` for an ordinary method)."""
    return registry.get("objective", objective_of(method)).cls.comparison_role

UNLIMITED_STEPS = 10**9  # the budget stops training; train.steps=N still caps it


@attrs.define
class Row:
    """One line of the table: a method at one NFE."""

    method: str
    nfe: int
    metrics: dict[str, float]
    samples_per_s: float
    train_steps_per_s: float
    steps: int
    train_seconds: float
    out_dir: str
    reference: bool = False  # the external peer


@attrs.define
class Comparison:
    rows: list[Row]
    samples: dict[str, torch.Tensor]  # row label -> viewable samples for the figure
    reference: torch.Tensor | None  # held-out data drawn behind point samples
    meta: dict


def row_label(row: Row) -> str:
    return f"{row.method} ({row.nfe} NFE)"


def objective_of(method: str) -> str:
    """The objective of a method label: ``wflow`` or a variant of it such as ``wflow@pixels``
    (its own row, run folder and ``wflow@pixels:key=value`` overrides, same preset)."""
    return method.split("@", 1)[0]


def split_scoped(values: Iterable[str], names: Sequence[str], scope_of, what: str,
                 noun: str) -> tuple[list[str], dict[str, list[str]]]:
    """Values for every run, and those that ``scope_of(value)`` gives as ``(NAME, rest)`` for run
    NAME only; an unknown NAME is an error naming ``what`` and the ``noun`` compared."""
    common: list[str] = []
    scoped: dict[str, list[str]] = {n: [] for n in names}
    for v in values:
        found = scope_of(v)
        if found is None:
            common.append(v)
            continue
        name, rest = found
        if name not in scoped:
            raise ConfigError(f"{what} {v!r}: {name!r} is not one of the compared {noun} ({', '.join(names)})")
        scoped[name].append(rest)
    return common, scoped


def split_files(files: Iterable[str], names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--config`` values: plain files for every run, ``NAME=FILE`` for method NAME only."""
    return split_scoped(files, names, lambda f: f.split("=", 1) if "=" in f else None, "--config", "methods")


def method_files(names: Sequence[str], data: str | None, files: Sequence[str], presets: str | None,
                 required: bool = False) -> dict[str, list[str]]:
    """Config files of every method: its preset (unless ``NAME=FILE`` gives one), then the common
    files. ``required``: a method without a preset is an error (the board's rule)."""
    common, scoped = split_files(files, names)
    out = {}
    for n in names:
        preset = None if scoped[n] else find_preset(objective_of(n), data, presets, required)
        out[n] = ([str(preset)] if preset else []) + common + scoped[n]
    return out


def split_overrides(overrides: Iterable[str], names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Common overrides and ``NAME:key=value`` ones per objective."""
    return split_scoped(overrides, names, lambda o: o.split(":", 1) if ":" in o.split("=", 1)[0] else None,
                        "override", "objectives")


def peer_jobs(registry: Registry, objectives: Sequence[str], nfes: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The external reference rows: each installed peer objective not already compared, at ``nfes``."""
    peers = [p for p in objectives_with_role(registry, "peer") if p not in objectives]
    if not peers and not any(role_of(registry, o) == "peer" for o in objectives):
        raise ConfigError("the external reference row needs an installed objective whose plugin declares comparison_role "
                          "'peer' (an external implementation shown as reference rows); install such a plugin or pass --no-peer")
    return [(p, list(nfes)) for p in peers]


def run_comparison(
    objectives: Sequence[str], *, data: str | None, backbone: str | None, budget_minutes: float,
    out_dir: str | Path, files: Sequence[str] = (), overrides: Sequence[str] = (), peer: bool = True,
    peer_nfes: Sequence[int] = (50, 100), metrics: Sequence[str] | None = None, num_samples: int | None = None,
    feature_weights: str | None = None, speed_samples: int = 1000, presets: str | None = None, overwrite: bool = False,
    log=print,
) -> Comparison:
    """Train and evaluate each objective (then the peer) under the same budget; see module doc."""
    if budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes: expected > 0, got {budget_minutes}")
    if not objectives:
        raise ConfigError("--objectives: expected at least one objective name")
    registry = Registry.discover()
    jobs = [(o, None) for o in objectives] + (peer_jobs(registry, objectives, peer_nfes) if peer else [])
    names = [n for n, _ in jobs]
    common, scoped = split_overrides(overrides, names)
    configs_of = method_files(names, data, files, presets)
    out_dir = Path(out_dir)
    extra = [f"eval.feature_weights={feature_weights}"] if feature_weights else []
    configs = [compose(objective=name, backbone=backbone, data=data, files=configs_of[name], registry=registry,
                       overrides=[f"train.steps={UNLIMITED_STEPS}", *common, *scoped[name], *extra,
                                  f"train.max_minutes={budget_minutes}", "eval.metrics=[]",
                                  f"output_dir={out_dir / name}"])
               for name, _ in jobs]
    for cfg in configs:  # every config and component first: a bad one fails before any training
        check_components(cfg, registry)
    comparison = Comparison([], {}, None, {})
    for (name, nfes), cfg in zip(jobs, configs):
        log(f"compare: training {name} for {budget_minutes} min")
        train_and_score(comparison, name, nfes, Trainer(cfg, registry=registry, console=False), overwrite,
                        metrics, num_samples, speed_samples, log)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return comparison


def train_and_score(comparison: Comparison, name: str, nfes: list[int] | None, trainer: Trainer, overwrite: bool,
                    metrics: Sequence[str] | None, num_samples: int | None, speed_samples: int, log) -> None:
    """Train one method's run and add its rows to ``comparison``: one per NFE of ``nfes`` (None:
    the run's default; a list marks the external reference rows), each with metrics, sampling and
    training speed and the figure's samples."""
    summary = trainer.fit(overwrite=overwrite)
    metric_names = list(metrics) if metrics is not None else applicable_metrics(trainer.registry, trainer.spec)
    for nfe in nfes or [trainer.objective.default_nfe()]:
        values = trainer.evaluate(metric_names, num_samples, nfe=nfe)
        row = Row(name, nfe, values, sampling_throughput(trainer, nfe, num=speed_samples),
                  summary["steps_run"] / max(summary["train_seconds"], 1e-9), summary["steps_run"],
                  summary["train_seconds"], summary["out_dir"], reference=nfes is not None)
        comparison.rows.append(row)
        comparison.samples[row_label(row)] = figure_samples(trainer, nfe)
        log(f"compare: {row_label(row)} steps={row.steps} " + " ".join(
            f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("mode_mass_")))
    if comparison.reference is None and len(trainer.spec.shape) == 1:
        comparison.reference = trainer.reference(trainer.config.sample.num)[0]
    comparison.meta = comparison.meta or run_meta(trainer, trainer.config.train.max_minutes, num_samples)


def check_components(cfg, registry: Registry) -> None:
    """Build the run's components (no networks), so that their own checks (e.g. an objective that
    needs a coupler) speak before any run trains."""
    build_components(cfg, registry)


def figure_samples(trainer, nfe: int) -> torch.Tensor:
    """Samples for the figure: a class-ordered grid for images (and latents, decoded), a point
    cloud for points."""
    spec, s = trainer.spec, trainer.config.sample
    if spec.kind == "points":
        return trainer.sample(s.num, nfe=nfe, seed=0)
    k = grid_columns(spec)
    return trainer.source.decode(trainer.sample(k * -(-s.grid // k), nfe=nfe, seed=0))


def grid_columns(spec) -> int:
    """One column per class (samples cycle through the labels), else 8."""
    return spec.num_classes if 0 < spec.num_classes <= 16 else 8


def run_meta(trainer, budget_minutes: float, num_samples: int | None) -> dict:
    import datetime
    import platform

    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    c = trainer.config
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{device.type}: {name}", "world": trainer.world, "torch": torch.__version__,
        "data": c.data.name, "backbone": c.backbone.name, "budget_minutes": budget_minutes,
        "batch_size": c.train.batch_size, "precision": c.train.precision, "eval_samples": num_samples or c.eval.num_samples,
        "grid_columns": grid_columns(trainer.spec), "num_classes": trainer.spec.num_classes,
    }

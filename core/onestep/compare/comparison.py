"""Side-by-side comparison (``onestep compare``): each objective trains from its preset
(:mod:`.presets`) with the same backbone, data and wall-clock budget (``train.max_minutes``),
one after another in this process, then is scored with the same metrics and timed at its own
number of network evaluations. The external peer (an objective whose plugin declares
``comparison_role = "peer"``), trained the same way, gives the reference rows (at several NFE).

The same pieces as the board's: :mod:`.plan` assembles and checks every run's config before any
trains, :mod:`.launch` trains (here, in this process), :mod:`.score` loads each run's EMA generator
from its final checkpoint and scores it; :mod:`.report` writes the table and the figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import attrs
import torch

from ..errors import ConfigError
from ..metrics.evaluate import applicable_metrics
from ..registry import Registry
from .launch import train_here
from .plan import checked_config, method_files, method_overrides, peer_jobs
from .rows import UNLIMITED_STEPS, Row, table_meta
from .score import Scorer, load_pipeline, score_pipeline


@attrs.define
class Comparison:
    rows: list[Row]
    samples: dict[str, torch.Tensor]  # row label -> viewable samples for the figure
    reference: torch.Tensor | None  # held-out data drawn behind point samples
    meta: dict


def run_comparison(
    objectives: Sequence[str], *, data: str | None, backbone: str | None, budget_minutes: float,
    out_dir: str | Path, files: Sequence[str] = (), overrides: Sequence[str] = (), peer: bool = True,
    peer_nfes: Sequence[int] = (50, 100), metrics: Sequence[str] | None = None, num_samples: int | None = None,
    feature_weights: str | None = None, speed_samples: int = 1000, presets: str | None = None, overwrite: bool = False,
    log=print,
) -> Comparison:
    """Train and score each objective (then the peer) under the same budget; see module doc."""
    if budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes: expected > 0, got {budget_minutes}")
    if not objectives:
        raise ConfigError("--objectives: expected at least one objective name")
    registry = Registry.discover()
    jobs = [(o, None) for o in objectives] + (peer_jobs(registry, objectives, peer_nfes) if peer else [])
    names = [n for n, _ in jobs]
    files_of = method_files(names, data, files, presets)
    out_dir = Path(out_dir)
    last = ([f"eval.feature_weights={feature_weights}"] if feature_weights else []) + [
        f"train.max_minutes={budget_minutes}", "eval.metrics=[]"]
    overrides_of = method_overrides(names, overrides, first=[f"train.steps={UNLIMITED_STEPS}"], last=last)
    configs = [checked_config(name, backbone=backbone, data=data, files=files_of[name], registry=registry,
                              overrides=[*overrides_of[name], f"output_dir={out_dir / name}"])
               for name in names]  # every config and component first: a bad one fails before any training
    comparison = Comparison([], {}, None, {})
    for (name, nfes), cfg in zip(jobs, configs):
        log(f"compare: training {name} for {budget_minutes} min")
        summary = train_here(cfg, registry, overwrite)
        score_run(comparison, name, nfes, summary, files_of[name], registry, metrics, num_samples, speed_samples, log)
    return comparison


def score_run(comparison: Comparison, name: str, nfes: list[int] | None, summary: dict, files: list[str],
              registry: Registry, metrics: Sequence[str] | None, num_samples: int | None, speed_samples: int, log) -> None:
    """Add the rows of one trained run to ``comparison``: one per NFE of ``nfes`` (None: the run's
    default; a list marks the external reference rows), each with metrics, sampling speed and the
    figure's samples, scored from the run's final checkpoint."""
    pipe = load_pipeline(Path(summary["out_dir"]), registry)
    source, run = pipe.source, pipe.meta["run"]
    n = num_samples or int(run["eval"]["num_samples"])
    scorer = Scorer.of(source, n, list(metrics) if metrics is not None else applicable_metrics(registry, source.spec()),
                       registry)
    template = Row(name, 0, {}, 0.0, summary["steps_run"], summary["train_seconds"] / 60.0, summary["out_dir"], files,
                   reference=nfes is not None)
    comparison.rows += score_pipeline(pipe, nfes or [pipe.default_nfe], template, scorer, n, speed_samples,
                                      comparison.samples, log, "compare")
    if comparison.reference is None and source.spec().kind == "points":
        comparison.reference = scorer.reference
    comparison.meta = comparison.meta or table_meta(
        source, world=1, data=run["data"]["name"], backbone=run["backbone"]["name"], budget_minutes=run["train"]["max_minutes"],
        batch_size=run["train"]["batch_size"], precision=run["train"]["precision"], eval_samples=n)

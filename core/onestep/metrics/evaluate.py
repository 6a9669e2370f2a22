"""Scoring samples: the metrics a run asks for (or every installed one that applies to its data)
against held-out data. Used by the trainer during and after training and by the quality board
for runs it loads back, so both compute the same numbers the same way."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..config import EvalConfig, metric_config
from ..errors import ConfigError
from ..interfaces import DataSource, DataSpec, EvalContext


EVAL_SEED_OFFSET = 7919
"""Samples for plots and metrics draw from the run's seed + this, apart from training's streams."""


def applicable_metrics(registry, spec: DataSpec) -> list[str]:
    """Every installed metric that applies to data of ``spec.kind``."""
    return [m.name for m in registry.components("metric") if spec.kind in m.cls.applies_to]


def check_applicable(registry, names: Iterable[str], spec: DataSpec, data: str, field: str = "eval.metrics") -> None:
    """One-line error, naming ``field``, for a metric of ``names`` that does not apply to data
    ``data`` of ``spec``."""
    for name in names:
        kinds = registry.get("metric", name).cls.applies_to
        if spec.kind not in kinds:
            raise ConfigError(f"{field}: {name!r} applies to {', '.join(kinds)} data; data {data!r} is {spec.kind}")


def held_out(source: DataSource, n: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` held-out items in a fixed random order (None or more than there are: all of them),
    with labels for labelled data."""
    ds = source.dataset("test")
    count = len(ds) if n is None else min(n, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:count]
    items = [ds[int(i)] for i in idx]
    x = torch.stack([a for a, _ in items])
    y = torch.as_tensor([int(b) for _, b in items], dtype=torch.long)
    return x, (y if source.spec().num_classes > 0 else None)


def score(samples: torch.Tensor, sample_labels: torch.Tensor | None, reference: torch.Tensor,
          reference_labels: torch.Tensor | None, source: DataSource, names: Iterable[str] | None,
          eval_config: EvalConfig, registry, reference_cache: dict | None = None) -> dict[str, float]:
    """Every metric of ``names`` (None: all that apply) on ``samples`` against ``reference``.
    ``reference_cache``: a dict kept by the caller across evaluations against the same reference
    (its features are then computed once per run)."""
    spec = source.spec()
    names = applicable_metrics(registry, spec) if names is None else list(names)
    check_applicable(registry, names, spec, source.name)
    cache = reference_cache if reference_cache is not None else {}
    ctx = EvalContext(samples, sample_labels, reference, reference_labels, source, spec, eval_config.feature_weights,
                      cache)
    out: dict[str, float] = {}
    try:
        for name in names:
            info = registry.get("metric", name)
            out.update(info.cls(metric_config(eval_config, name, registry)).compute(ctx))
    finally:
        for key in [k for k in cache if not (isinstance(k, tuple) and k and k[0] == "reference")]:
            del cache[key]
    return out


def evaluate(sample: Callable[[int, torch.Tensor | None], torch.Tensor], source: DataSource, n: int,
             names: Iterable[str] | None, eval_config: EvalConfig, registry, conditional: bool,
             reference_cache: dict | None = None) -> dict[str, float]:
    """Score ``n`` generated samples against ``n`` held-out items: ``sample(n, y)`` draws them
    (model space) for the held-out labels ``y`` in turn (None for unlabelled data); the metrics
    see those labels only when the generator is ``conditional`` (samples that ignore their labels
    are not judged by them). The trainer, ``onestep eval`` and the board all score this way."""
    reference, reference_labels = held_out(source, n)
    y = reference_labels[torch.arange(n) % len(reference_labels)] if reference_labels is not None else None
    samples = sample(n, y)
    return score(samples, y if conditional else None, reference, reference_labels, source, names, eval_config,
                 registry, reference_cache)

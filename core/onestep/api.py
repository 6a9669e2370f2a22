"""Programmatic composition: the same run as the CLI, from Python.

>>> from onestep.api import compose
>>> from onestep.trainer import Trainer
>>> cfg = compose(objective="wflow", backbone="mlp", data="gmm8", overrides=["train.steps=500"])
>>> run = Trainer(cfg)
>>> summary = run.fit()
>>> x = run.sample(1000)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .config import RunConfig, assemble, build_config
from .registry import Registry


def compose(
    objective: str | None = None, backbone: str | None = None, data: str | None = None,
    coupler: str | None = None, guidance: str | None = None, files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (), base: dict[str, Any] | None = None, registry: Registry | None = None,
    features: str | None = None,
) -> RunConfig:
    """A :class:`RunConfig` from component names, config files and ``key.path=value`` overrides
    (in that order of precedence: base < files < names < overrides)."""
    raw = assemble(files, {"objective": objective, "backbone": backbone, "data": data, "coupler": coupler,
                           "guidance": guidance, "features": features}, overrides, base)
    return build_config(raw, registry or Registry.discover())

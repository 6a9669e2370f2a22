"""The one row model of ``onestep compare`` and ``onestep board``: a method at one NFE with its
metrics, its sampling speed and its training clock; the row's label; and the metadata of a table
(when, on what, against which data)."""
from __future__ import annotations

import datetime
import platform

import attrs
import torch

from ..plotting import grid_columns

UNLIMITED_STEPS = 10**9  # the time budget stops training; train.steps=N still caps it


@attrs.define
class Row:
    """One line of a table: a method at one NFE. A run that failed has an ``error`` and no numbers."""

    method: str
    nfe: int
    metrics: dict[str, float]
    samples_per_s: float
    steps: int
    train_minutes: float  # the run's training clock
    out_dir: str
    configs: list[str] = attrs.Factory(list)  # the preset (first) and config files the run was assembled from
    reference: bool = False  # the external peer
    curve: list[dict] = attrs.Factory(list)  # [{"minutes", "step", "metrics"}] at the marks and the end
    error: str | None = None
    cut: bool = False  # the run was stopped at the board's deadline, before its minutes were up

    @property
    def train_seconds(self) -> float:
        return 60.0 * self.train_minutes

    @property
    def train_steps_per_s(self) -> float:
        return self.steps / max(self.train_seconds, 1e-9)


def row_label(row: Row) -> str:
    return f"{row.method} ({row.nfe} NFE)"


def row_record(row: Row) -> dict:
    """The row as the JSON tables hold it: its fields and its training clock in seconds and steps/s."""
    return {**attrs.asdict(row), "train_seconds": row.train_seconds, "train_steps_per_s": row.train_steps_per_s}


def table_meta(source, **fields) -> dict:
    """What every table records besides its rows: the date, the device and torch, the data's shape,
    classes and grid columns (and the real images that decoded samples are scored on, where the
    data is a latent view of them), then the caller's ``fields``."""
    spec = source.spec()
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    images = source.image_source()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{'cuda' if cuda else 'cpu'}: {name}", "torch": torch.__version__,
        "shape": list(spec.shape), "num_classes": spec.num_classes, "grid_columns": grid_columns(spec.num_classes),
        **({"scored_on": images.name} if images is not source else {}), **fields,
    }

"""Logging: structlog to the console for people and to a JSONL file for machines, and a
metrics JSONL writer."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import structlog


def configure(log_file: Path | None, console: bool = True, level: int = logging.INFO) -> structlog.BoundLogger:
    """A logger writing human lines to stderr and JSON lines to ``log_file``."""
    file_handle = open(log_file, "a", buffering=1) if log_file is not None else None

    def tee(_logger, _name, event: dict[str, Any]) -> dict[str, Any]:
        if file_handle is not None:
            file_handle.write(json.dumps(event, default=str) + "\n")
        return event

    renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        tee,
        renderer if console else structlog.processors.JSONRenderer(),
    ]
    logger_factory = structlog.PrintLoggerFactory(sys.stderr if console else open("/dev/null", "w"))
    return structlog.wrap_logger(
        logger_factory(), processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (the machine record) and, with
    ``tensorboard``, writes the same numbers as TensorBoard scalars into event files beside it:
    every number of a record under its key (``generator/loss``, ``lr/generator``,
    ``samples_per_s``, ...) and an evaluation's under ``eval/<metric>``, at the record's step.
    Pictures go to TensorBoard only (:meth:`image`); ``tensorboard --logdir runs/`` then shows
    every run folder side by side."""

    def __init__(self, path: Path | None, tensorboard: bool = False) -> None:
        self.path = path
        self.tensorboard = tensorboard and path is not None
        self.events = None

    def start(self, step: int) -> None:
        """Open the event files for a run starting at ``step``: a resumed run's first event tells
        TensorBoard to drop what an earlier file recorded after that step (as ``metrics.jsonl`` is
        truncated), so a curve is never drawn twice."""
        if self.tensorboard and self.events is None:
            from torch.utils.tensorboard import SummaryWriter

            self.events = SummaryWriter(str(self.path.parent), purge_step=step + 1 if step else None)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        if self.events is not None:
            for tag, value in scalars(record):
                self.events.add_scalar(tag, value, int(record["step"]))
            self.events.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """The picture ``png`` (a sample grid or scatter plot the run wrote) as TensorBoard image ``tag``."""
        if self.events is None or png is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.events.add_image(tag, pixels, step, dataformats="HWC")
        self.events.flush()


def scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numbers of a metrics record as ``(tag, value)``; nested mappings (``eval``) prefix
    their keys (``eval/fid``). The step itself and text (a checkpoint's name) are left out."""
    out = []
    for key, value in record.items():
        if isinstance(value, dict):
            out.extend(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (prefix or key != "step"):
            out.append((f"{prefix}{key}", float(value)))
    return out


def write_curve(folder: Path, tag_prefix: str, points: list[dict[str, Any]]) -> None:
    """TensorBoard scalars ``<tag_prefix>/<metric>`` of ``points`` (``{"step", "metrics"}`` each)
    into event files of ``folder``: a curve computed after the run (the board's scores at its
    marks) beside the run's own."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as events:
        for point in points:
            for tag, value in scalars(point["metrics"], f"{tag_prefix}/"):
                events.add_scalar(tag, value, int(point["step"]))

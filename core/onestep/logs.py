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
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

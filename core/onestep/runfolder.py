"""What a run may do with its output folder: start in an empty one, continue its own checkpoints,
or (asked to overwrite) discard what an earlier run left there. Only files this library writes
are ever removed; the log (``log.jsonl``) is kept as the folder's history.

A run that starts at step k (0 for a new run) must not mix with records of steps after k: a
checkpoint rotation would delete its new checkpoints in favour of the older, higher-numbered
ones, ``--resume`` would pick the other run's, and ``metrics.jsonl`` would hold two curves.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from . import checkpoint as ckpt
from .errors import ConfigError
from .files import write_atomic

WRITTEN = ("config.yaml", "metrics.jsonl", "losses.png")  # files of a run besides checkpoints and samples
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files of the run


def _names(dirs: list[Path]) -> str:
    return ", ".join(d.name for d in dirs[:3]) + (f" and {len(dirs) - 3} more" if len(dirs) > 3 else "")


def make(out_dir: Path) -> None:
    """Create the run folder ``out_dir``; a one-line error naming ``output_dir`` when it cannot
    be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot create {str(out_dir)!r} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: {str(out_dir)!r} is not writable")


def same_run(out_dir: Path, resumed_from: Path | None) -> bool:
    """Whether the checkpoint resumed from is one of ``out_dir``'s own."""
    return resumed_from is not None and resumed_from.resolve().parent == (out_dir / "checkpoints").resolve()


def check(out_dir: Path, start_step: int, resumed_from: Path | None, overwrite: bool,
          damaged: Iterable[Path] = ()) -> list[Path]:
    """Raise a one-line :class:`ConfigError` if starting at ``start_step`` in ``out_dir`` would
    mix with an earlier run's outputs (unless ``overwrite``); returns the checkpoints that
    ``overwrite`` discards. ``resumed_from``: the checkpoint this run was loaded from;
    ``damaged``: checkpoints that failed their checksums (set aside, not in the way)."""
    skip = {p.resolve() for p in damaged}
    kept = [(s, p) for s, p in ckpt.step_dirs(out_dir / "checkpoints") if p.resolve() not in skip]
    if same_run(out_dir, resumed_from):
        later = [p for s, p in kept if s > start_step]
        if later and not overwrite:
            raise ConfigError(
                f"output_dir {str(out_dir)!r}: holds checkpoints after step {start_step} ({_names(later)}); "
                "resume from the latest with --resume, or pass --overwrite to discard the later ones")
        return later
    other = [p for _, p in kept]  # every checkpoint here belongs to another run
    started = (out_dir / "config.yaml").exists()  # written when a run starts, before its first step
    if (other or started) and not overwrite:
        what = f"checkpoints {_names(other)}" if other else "config.yaml and metrics, no checkpoint"
        raise ConfigError(
            f"output_dir {str(out_dir)!r}: holds an earlier run ({what}); continue it with --resume, "
            "write to another --out, or pass --overwrite to replace it")
    return other


def clean(out_dir: Path, start_step: int, discard: list[Path], replace: bool, damaged: Iterable[Path] = ()) -> None:
    """Remove ``discard`` (checkpoints), half-written checkpoint folders and, when this run
    ``replace``s an earlier one, that run's config, metrics, curves and sample pictures; keep
    only the metric records up to ``start_step``. ``damaged`` checkpoints of this folder are
    renamed ``damaged-step-N`` (kept for inspection, out of the way of rotation and resume)."""
    for p in discard:
        shutil.rmtree(p, ignore_errors=True)
    root = out_dir / "checkpoints"
    for p in damaged:
        if p.is_dir() and p.parent.resolve() == root.resolve():
            target, n = p.with_name(f"damaged-{p.name}"), 1
            while target.exists():
                n += 1
                target = p.with_name(f"damaged-{p.name}.{n}")
            os.replace(p, target)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-step-", ".old-step-")):
                shutil.rmtree(p, ignore_errors=True)
    if replace:
        for name in WRITTEN:
            (out_dir / name).unlink(missing_ok=True)
        for png in (out_dir / "samples").glob("step-*.png"):
            png.unlink()
        for events in out_dir.glob(EVENTS):
            events.unlink()
    truncate_metrics(out_dir / "metrics.jsonl", start_step)


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the records of steps after ``last_step`` (written by a run that was stopped after
    its last checkpoint, and about to be written again) and torn lines; returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_atomic(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))
    return dropped

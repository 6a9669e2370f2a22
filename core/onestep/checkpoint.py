"""Atomic, pickle-free checkpoints.

Layout of ``<run>/checkpoints/step-0000100/``::

    config.yaml                      the run's config
    <net>.safetensors                full weights of each trained network
    <net>.ema.safetensors            EMA weights
    <net>.optim.rank<r>.pt           optimizer state of rank r (tensors and plain values only)
    trainer.pt                       step, process count, network names, LR-scheduler states
    trainer.rank<r>.pt               rank r's data-stream, RNG and component states (e.g. an
                                     online coupling: each rank keeps its own)
    checksums.json                   SHA-256 of every file above

A checkpoint is written into a temporary folder and renamed into place once complete, then the
oldest ones beyond ``keep`` are removed (never the one just written), so a crash never leaves a
half-written checkpoint under a final name. The checksums catch damage that happens later (a
flipped bit, a truncated copy): :func:`verify` checks them before anything is loaded, and
:func:`newest_intact` steps back to the newest checkpoint that passes. Everything is read with
``weights_only=True`` or safetensors: loading never runs pickled code. Objects that a DeepSpeed optimizer keeps in its state (its loss scaler, slice
maps) are not saved; they are taken from the freshly built optimizer on load, which holds the
same static values.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"
_PLAIN = (int, float, bool, str, type(None))
_OPAQUE = "__onestep_opaque__"


def to_plain(obj: Any) -> Any:
    """Keep tensors and plain containers; mark anything else as opaque (restored from a template)."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return obj
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return {_OPAQUE: type(obj).__name__}  # includes subclasses of int/str such as enums


def fill_opaque(loaded: Any, template: Any) -> Any:
    """Replace opaque markers in ``loaded`` by the values at the same place in ``template``."""
    if isinstance(loaded, dict) and _OPAQUE in loaded and len(loaded) == 1:
        return template
    if isinstance(loaded, dict) and isinstance(template, dict):
        return {k: fill_opaque(v, template.get(k)) for k, v in loaded.items()}
    if isinstance(loaded, (list, tuple)) and isinstance(template, (list, tuple)) and len(loaded) == len(template):
        out = [fill_opaque(a, b) for a, b in zip(loaded, template)]
        return out if isinstance(loaded, list) else tuple(out)
    return loaded


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest(root: Path) -> Path | None:
    dirs = [p for _, p in step_dirs(root) if (p / "trainer.pt").is_file()]
    return dirs[-1] if dirs else None


def resolve(path: str | Path) -> Path:
    """A run folder, its ``checkpoints`` folder or one ``step-N`` folder -> the checkpoint folder."""
    p = Path(path)
    if (p / "trainer.pt").is_file():
        return p
    for root in (p / "checkpoints", p):
        found = latest(root)
        if found is not None:
            return found
    raise CheckpointError(f"checkpoint {str(p)!r}: no complete checkpoint (a step-N folder with trainer.pt) found")


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify(folder: Path) -> None:
    """Raise :class:`CheckpointError` if a file of checkpoint ``folder`` is missing or differs
    from the checksum written with it. Checkpoints from before checksums pass unchecked."""
    listing = Path(folder) / CHECKSUMS
    if not listing.is_file():
        return
    try:
        expected = json.loads(listing.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint file {str(listing)!r}: unreadable ({exc})") from None
    for name, digest in expected.items():
        f = Path(folder) / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r}: missing")
        if sha256(f) != digest:
            raise CheckpointError(f"checkpoint file {str(f)!r}: damaged (its SHA-256 differs from the one written with it)")


def newest_intact(path: str | Path) -> tuple[Path, list[tuple[Path, str]]]:
    """The checkpoint to resume from: ``path`` itself if it is one step folder (verified, no
    fallback), else the newest checkpoint under the run folder ``path`` whose files verify.
    Returns it with the newer checkpoints skipped as damaged, each with the reason."""
    p = Path(path)
    if (p / "trainer.pt").is_file() or STEP_DIR.match(p.name):
        folder = resolve(p)
        verify(folder)
        return folder, []
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    candidates = [d for _, d in reversed(step_dirs(root)) if (d / "trainer.pt").is_file()]
    if not candidates:
        resolve(p)  # raises the "no complete checkpoint" error
    skipped = []
    for folder in candidates:
        try:
            verify(folder)
        except CheckpointError as exc:
            skipped.append((folder, str(exc)))
            continue
        return folder, skipped
    raise CheckpointError(f"checkpoint {str(p)!r}: every checkpoint is damaged; the newest: {skipped[0][1]}")


class CheckpointWriter:
    """Writes checkpoint folders atomically under ``root`` and keeps the last ``keep``."""

    def __init__(self, root: Path, keep: int, rank: int) -> None:
        self.root, self.keep, self.rank = Path(root), keep, rank

    def tmp_dir(self, step: int) -> Path:
        return self.root / f".tmp-step-{step:07d}"

    def begin(self, step: int) -> Path:
        tmp = self.tmp_dir(step)
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        return tmp

    def commit(self, step: int) -> Path:
        """Rename the finished temporary folder into place (rank 0; call after a barrier)."""
        final = self.root / f"step-{step:07d}"
        if self.rank != 0:
            return final
        tmp = self.tmp_dir(step)
        digests = {}
        for f in sorted(tmp.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            digests[f.name] = sha256(f)
        with open(tmp / CHECKSUMS, "w") as fh:
            json.dump({"sha256": digests}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            old = self.root / f".old-step-{step:07d}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        older = [p for _, p in step_dirs(self.root) if p != final]
        for p in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r}: missing")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r}: unreadable ({exc})") from None


def save_state(obj: Any, path: Path) -> None:
    torch.save(to_plain(obj), path)


def load_state(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r}: missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r}: unreadable ({' '.join(str(exc).split())[:200]})") from None

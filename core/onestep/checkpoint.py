"""The checkpoint folder store: where checkpoints live, how one is written whole or not at all,
how damage is caught, and which one a run folder stands for.

Layout of ``<run>/checkpoints/step-0000100/`` (what the files hold: :mod:`onestep.statecodec`)::

    config.yaml                      the run's config
    <net>.safetensors                full weights of each trained network
    <net>.ema.safetensors            EMA weights
    <net>.optim.rank<r>.pt           optimizer state of rank r (tensors and plain values only)
    trainer.pt                       step, process count, network names, LR-scheduler states
    trainer.rank<r>.pt               rank r's data-stream, RNG and component states (e.g. an
                                     online coupling: each rank keeps its own)
    checksums.json                   SHA-256 of every file above

A checkpoint is written into a temporary folder and renamed into place once complete
(:func:`onestep.files.replace_atomic`), then the oldest ones beyond ``keep`` are removed (never
the one just written), so a crash never leaves a half-written checkpoint under a final name. The
checksums catch damage that happens later (a flipped bit, a truncated copy): :func:`verify` checks
them before anything is loaded, and :func:`newest_intact` steps back to the newest checkpoint that
passes.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from .errors import CheckpointError
from .files import replace_atomic

STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"


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
            raise CheckpointError(f"checkpoint file {str(f)!r}: damaged (its SHA-256 differs from the one written "
                                  "with it)")


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
        digests = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps({"sha256": digests}, indent=1))
        replace_atomic(tmp, final, sync=True)
        older = [p for _, p in step_dirs(self.root) if p != final]
        for p in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

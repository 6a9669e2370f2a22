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
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
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


# --------------------------------------------------------------------------- a training run's checkpoint
RESUME_FIXED = ("objective.name", "coupler.name", "guidance.name", "data", "backbone", "seed",
                "train.batch_size", "train.grad_accum", "train.zero_stage")
"""What a resumed run must share with the run that wrote its checkpoint (other settings, such as
learning rates, clipping or ``train.steps``, may change on resume)."""


@attrs.define
class TrainingState:
    """What a training checkpoint carries besides the config: each trained network's DeepSpeed
    engine (weights, optimizer, LR scheduler), the EMA copies, the data streams and the components'
    own state (e.g. an online coupling), for process ``rank`` of ``world``."""

    engines: dict[str, Any]
    ema: dict[str, Any]
    streams: dict[str, Any]
    components: dict[str, Any]
    zero_stage: int
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1


def optimizer_file(network: str, rank: int) -> str:
    """The checkpoint file of ``network``'s optimizer state on process ``rank``."""
    return f"{network}.optim.rank{rank}.pt"


def save_training(root: Path, keep: int, step: int, state: TrainingState, config_yaml: str) -> Path:
    """Write checkpoint ``step`` of a training run under ``root`` atomically (every rank calls it)."""
    from .distributed import barrier
    from .engine import full_state_dict

    writer = CheckpointWriter(root, keep, state.rank)
    tmp = writer.begin(step)
    barrier()
    for name, e in state.engines.items():
        weights = full_state_dict(e.module, state.zero_stage)
        if state.rank == 0:
            save_tensors(weights, tmp / f"{name}.safetensors")
        save_state(e.optimizer.state_dict(), tmp / optimizer_file(name, state.rank))
    save_state({"streams": {k: s.state_dict() for k, s in state.streams.items()}, "rng": rng_state(state.device),
                "components": {k: c.state_dict() for k, c in state.components.items()}},
               tmp / f"trainer.rank{state.rank}.pt")
    if state.rank == 0:
        for name, ema in state.ema.items():
            save_tensors({k: v.detach().clone() for k, v in ema.module.state_dict().items()}, tmp / f"{name}.ema.safetensors")
        (tmp / "config.yaml").write_text(config_yaml)
        save_state({"step": step, "world": state.world, "networks": sorted(state.engines),
                    "schedulers": {n: e.lr_scheduler.state_dict() for n, e in state.engines.items()}}, tmp / "trainer.pt")
    barrier()
    final = writer.commit(step)
    barrier()
    return final


def load_weights(folder: Path, state: TrainingState) -> int:
    """Load checkpoint ``folder``'s network and EMA weights into ``state``; returns its step."""
    saved = load_state(folder / "trainer.pt")
    if sorted(state.engines) != saved["networks"]:
        raise CheckpointError(f"checkpoint {str(folder)!r}: networks {saved['networks']} do not match this run's "
                              f"{sorted(state.engines)}")
    for name, e in state.engines.items():
        weights = load_tensors(folder / f"{name}.safetensors")
        try:
            load_full_state_dict(e.module, weights, state.zero_stage)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint file {str(folder / (name + '.safetensors'))!r}: does not fit network "
                                  f"{name!r} ({' '.join(str(exc).split())[:160]})") from None
    for name, ema in state.ema.items():
        ema.module.load_state_dict(load_tensors(folder / f"{name}.ema.safetensors"))
    return int(saved["step"])


def load_initial_weights(folder: Path, state: TrainingState, from_ema: bool) -> dict[str, str]:
    """Start the networks of ``state`` from checkpoint ``folder``'s weights (a fine-tuning stage):
    each live network from the checkpoint's EMA copy where ``from_ema`` and the checkpoint has one,
    else from its live weights; each EMA from the checkpoint's EMA (else the same start). Nothing
    else is read. Returns, per network, the file it started from."""
    from .errors import ConfigError

    saved = load_state(folder / "trainer.pt")["networks"]
    missing = sorted(set(state.engines) - set(saved))
    if missing:
        raise ConfigError(f"train.init_from: checkpoint {str(folder)!r} has no network {missing[0]!r} (it holds "
                          f"{', '.join(saved)}); start from a run of the same objective")
    used = {}
    for name, e in state.engines.items():
        ema_file = folder / f"{name}.ema.safetensors"
        file = ema_file if from_ema and ema_file.is_file() else folder / f"{name}.safetensors"
        weights = load_tensors(file)
        try:
            load_full_state_dict(e.module, weights, state.zero_stage)
            if name in state.ema:
                state.ema[name].module.load_state_dict(load_tensors(ema_file) if ema_file.is_file() else weights)
        except RuntimeError as exc:
            raise ConfigError(f"train.init_from: {str(file)!r} does not fit network {name!r} of this run "
                              f"({' '.join(str(exc).split())[:160]})") from None
        used[name] = file.name
    return used


def load_full_state_dict(module: Any, weights: dict[str, torch.Tensor], zero_stage: int) -> None:
    """``module.load_state_dict(weights)``, gathering ZeRO-3's partitioned parameters around it."""
    if zero_stage != 3:
        module.load_state_dict(weights)
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
        module.load_state_dict(weights)


def load_training(folder: Path, state: TrainingState) -> list[str]:
    """Load the rest of checkpoint ``folder`` (after :func:`load_weights`): optimizers, LR
    schedulers, the components' and data streams' state and this rank's RNG state. Returns the
    optimizer files this process read (under ZeRO, its own rank's alone: :class:`RankStates`)."""
    saved = load_state(folder / "trainer.pt")
    files_read: list[str] = []
    for name, e in state.engines.items():
        every_rank = RankStates(folder, name, state.world, e.optimizer.state_dict())
        if state.zero_stage == 0:
            e.optimizer.load_state_dict(every_rank[state.rank])
        else:
            e.optimizer.load_state_dict(every_rank, load_optimizer_states=True, load_from_fp32_weights=True)
        files_read += every_rank.read
        e.lr_scheduler.load_state_dict(saved["schedulers"][name])
    local = load_state(folder / f"trainer.rank{state.rank}.pt")
    for k, c in state.components.items():
        c.load_state_dict(local["components"].get(k, {}))
    for k, s in state.streams.items():
        s.load_state_dict(local["streams"][k])
    set_rng_state(local["rng"], state.device)
    return files_read


class RankStates(Sequence):
    """Every rank's saved optimizer state of network ``name``, each file read on first access.

    ZeRO's ``load_state_dict`` takes the list of all ranks' states (it can merge partitions when
    the world size changes), but at the world size that wrote the checkpoint, the only one
    :func:`check_resumable` admits, it reads its own rank's entry alone. Reading every file made
    each of N processes load N files: the run's whole optimizer state in every process's memory and
    N^2 file reads (12 bytes per parameter: ~8 GB per process for two DiT-XL/2 on 8 GPUs)."""

    def __init__(self, folder: Path, name: str, world: int, template: Any) -> None:
        self.folder, self.name, self.world, self.template = folder, name, world, template
        self.loaded: dict[int, Any] = {}

    @property
    def read(self) -> list[str]:
        """The files read so far, in order."""
        return [optimizer_file(self.name, rank) for rank in self.loaded]

    def __len__(self) -> int:
        return self.world

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[r] for r in range(*index.indices(self.world))]
        if not -self.world <= index < self.world:
            raise IndexError(f"rank {index} of {self.world}")
        rank = index % self.world
        if rank not in self.loaded:
            self.loaded[rank] = fill_opaque(load_state(self.folder / optimizer_file(self.name, rank)), self.template)
        return self.loaded[rank]


def check_resumable(folder: Path, config_now: dict[str, Any], world: int) -> None:
    """Refuse to continue checkpoint ``folder`` with another process count, or under settings
    (:data:`RESUME_FIXED`) of the unstructured config ``config_now`` that change what is trained."""
    from .config import read_file
    from .errors import ConfigError

    saved_world = load_state(folder / "trainer.pt")["world"]
    if saved_world != world:
        raise CheckpointError(f"checkpoint {str(folder)!r}: written by {saved_world} processes, resumed with {world}")
    saved = read_file(folder / "config.yaml")
    for path in RESUME_FIXED:
        found = _first_difference(_at(saved, path), _at(config_now, path), path)
        if found:
            field, old, new = found
            raise ConfigError(f"{field}: {old!r} in checkpoint {str(folder)!r}, {new!r} now; a resumed run keeps it "
                              "(start a new run with another --out to change it)")


def _at(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _first_difference(saved: Any, now: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first leaf where two unstructured configs differ (keys missing on either side, e.g.
    a field added to a plugin since, are not differences)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in saved.keys() & now.keys():
            found = _first_difference(saved[k], now[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return None if saved == now else (path, saved, now)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's torch, numpy and Python RNG states (and the CUDA one on a CUDA device), as
    tensors and plain values (no pickled objects)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

"""The state codec of a training checkpoint: what each file of a checkpoint folder holds
(:mod:`onestep.checkpoint` lays them out), and how a run's networks, EMA copies, optimizers,
LR schedulers, data streams, components and RNGs are written to them and read back.

Tensors go to safetensors files; every other state is reduced to tensors and plain values
(:func:`to_plain`) and read with ``weights_only=True``: loading never runs pickled code. Objects
that a DeepSpeed optimizer keeps in its state (its loss scaler, slice maps) are not saved; they
are taken from the freshly built optimizer on load (:func:`fill_opaque`), which holds the same
static values.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointWriter
from .distributed import barrier
from .engine import full_state_dict
from .errors import CheckpointError, ConfigError

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
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint file {str(path)!r}: unreadable ({detail})") from None


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
            weights = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
            save_tensors(weights, tmp / f"{name}.ema.safetensors")
        (tmp / "config.yaml").write_text(config_yaml)
        schedulers = {n: e.lr_scheduler.state_dict() for n, e in state.engines.items()}
        save_state({"step": step, "world": state.world, "networks": sorted(state.engines), "schedulers": schedulers},
                   tmp / "trainer.pt")
    barrier()
    final = writer.commit(step)
    barrier()
    return final


def saved_step(folder: Path) -> int:
    """The training step checkpoint ``folder`` was written at."""
    return int(load_state(folder / "trainer.pt")["step"])


def load_networks(folder: Path, state: TrainingState, init_from_ema: bool | None = None) -> dict[str, str]:
    """Load checkpoint ``folder``'s weights into the networks and EMA copies of ``state``; returns,
    per network, the file its live weights came from.

    To resume (``init_from_ema`` None) the checkpoint holds exactly this run's networks, each
    loaded from its own files. To start a fine-tuning stage (``train.init_from``) every network of
    this run must be in the checkpoint (extra ones are ignored): each live network starts from the
    checkpoint's EMA copy where ``init_from_ema`` and it has one, else from its live weights, and
    each EMA from the checkpoint's EMA, else the same start; errors then name ``train.init_from``."""
    saved = load_state(folder / "trainer.pt")["networks"]
    init = init_from_ema is not None
    missing = sorted(set(state.engines) - set(saved))
    if init and missing:
        raise ConfigError(f"train.init_from: checkpoint {str(folder)!r} has no network {missing[0]!r} (it holds "
                          f"{', '.join(saved)}); start from a run of the same objective")
    if not init and sorted(state.engines) != saved:
        raise CheckpointError(f"checkpoint {str(folder)!r}: networks {saved} do not match this run's "
                              f"{sorted(state.engines)}")
    used = {}
    for name, e in state.engines.items():
        ema_file, live_file = folder / f"{name}.ema.safetensors", folder / f"{name}.safetensors"
        start = ema_file if init_from_ema and ema_file.is_file() else live_file
        targets = [(start, e.module, state.zero_stage)]
        if name in state.ema:
            targets.append((ema_file if ema_file.is_file() or not init else start, state.ema[name].module, 0))
        for file, module, zero_stage in targets:
            try:
                load_full_state_dict(module, load_tensors(file), zero_stage)
            except RuntimeError as exc:
                detail = " ".join(str(exc).split())[:160]
                if init:
                    raise ConfigError(f"train.init_from: {str(file)!r} does not fit network {name!r} of this run "
                                      f"({detail})") from None
                raise CheckpointError(f"checkpoint file {str(file)!r}: does not fit network {name!r} "
                                      f"({detail})") from None
        used[name] = start.name
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
    """Load the rest of checkpoint ``folder`` (after :func:`load_networks`): optimizers, LR
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
    :func:`onestep.resume.check_resumable` admits, it reads its own rank's entry alone. Reading every file made
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



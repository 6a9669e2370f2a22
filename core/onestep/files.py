"""Files written whole or not at all, and the weights file of a frozen helper network (a feature
encoder, an autoencoder) that plugins train once and cache.

A weights file is a safetensors file (no pickle) of the network's state dict whose metadata carry
its ``format``, the format's ``version``, the architecture as JSON (so a loader rebuilds the
network from the file alone) and free ``meta`` as JSON.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError


def cache_root(kind: str) -> Path:
    """Where frozen helper networks of ``kind`` (``features``, ``autoencoders``, ...) are cached:
    ``$ONESTEP_CACHE/<kind>`` when the variable is set, else ``~/.cache/onestep/<kind>``. The one
    rule every cache of the core and the plugins follows."""
    base = os.environ.get("ONESTEP_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "onestep") / kind


def replace_atomic(tmp: str | Path, path: str | Path, sync: bool = False) -> Path:
    """Rename the finished file or folder ``tmp`` to ``path``: a reader sees the previous ``path``
    or the new one, never a mix. A folder already at ``path`` is first renamed aside (a hidden
    ``.old-<name>-<pid>`` beside it) and removed once the new one is in place. ``sync``: flush
    ``tmp``'s files to disk before the rename and the parent folder's entry after it, so the
    result survives a power loss (checkpoints). The one atomic replace of the core and plugins."""
    tmp, path = Path(tmp), Path(path)
    if sync:
        for f in sorted(tmp.iterdir()) if tmp.is_dir() else [tmp]:
            _fsync(f)
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    if sync:
        _fsync(path.parent)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], Any], sync: bool = False) -> Path:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix, so writers that infer the
    format still do), then :func:`replace_atomic`: a process stopped while writing leaves the
    previous file (or none), never a truncated one, and no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        replace_atomic(tmp, path, sync)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_partial(path: str | Path, step: int, generator: torch.Generator, **stateful) -> None:
    """The state of an interrupted helper-network training (each named object's ``state_dict``,
    the data generator's state and the ``step``), written atomically; plain tensors and containers
    only, so :func:`load_partial` reads it with ``weights_only=True``."""
    state = {name: obj.state_dict() for name, obj in stateful.items()}
    state.update(generator=generator.get_state(), step=int(step))
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_partial(path: str | Path, generator: torch.Generator, **stateful) -> int:
    """Restore what :func:`save_partial` wrote at ``path`` into ``generator`` and the named objects;
    the step it reached (0 when there is no such file: a fresh start)."""
    if not Path(path).is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    generator.set_state(state["generator"])
    return int(state["step"])


def save_weights_file(tensors: dict[str, torch.Tensor], path: str | Path, format: str, version: str,
                      arch: dict, meta: dict | None = None) -> Path:
    """Write ``tensors`` with their format, version, ``arch`` and ``meta`` to ``path``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": format, "version": version, "arch": json.dumps(arch),
                "meta": json.dumps(meta or {}, default=str)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata))


def read_weights_file(path: str | Path, field: str, format: str, version: str, what: str, missing: str = "",
                      unreadable: str = "") -> tuple[dict[str, torch.Tensor], dict, dict]:
    """``(tensors, arch, meta)`` of the weights file at ``path``; a missing file, a file that is not
    safetensors, or one of another format or version is a one-line ``ConfigError`` naming
    ``field``, the file and ``what`` it should hold; ``missing`` and ``unreadable`` are appended
    to those two messages (where such a file comes from, what to do)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field}: file {str(path)!r} not found{missing}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ConfigError(f"{field}: file {str(path)!r} is not a safetensors file "
                          f"({' '.join(str(exc).split())[:120]}){unreadable}") from None
    if metadata.get("format") != format:
        raise ConfigError(f"{field}: file {str(path)!r} is not a {what} (metadata format "
                          f"{metadata.get('format')!r}, expected {format!r})")
    if metadata.get("version") != version:
        raise ConfigError(f"{field}: file {str(path)!r} has version {metadata.get('version')!r}; this onestep reads {version}")
    try:
        arch = json.loads(metadata["arch"])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{field}: file {str(path)!r} does not hold a valid {what} (no architecture: {exc})") from None
    return tensors, arch, json.loads(metadata.get("meta", "{}"))

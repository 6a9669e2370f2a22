"""The resume policy: what a resumed run must share with the run that wrote its checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import read_file
from .errors import CheckpointError, ConfigError
from .statecodec import load_state

RESUME_FIXED = ("objective.name", "coupler.name", "guidance.name", "data", "backbone", "seed",
                "train.batch_size", "train.grad_accum", "train.zero_stage")
"""What a resumed run must share with the run that wrote its checkpoint (other settings, such as
learning rates, clipping or ``train.steps``, may change on resume)."""


def check_resumable(folder: Path, config_now: dict[str, Any], world: int) -> None:
    """Refuse to continue checkpoint ``folder`` with another process count, or under settings
    (:data:`RESUME_FIXED`) of the unstructured config ``config_now`` that change what is trained."""
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



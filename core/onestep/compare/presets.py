"""Finding a method's preset: the config file in a presets folder (``configs/`` by default, its
top level only: sub-folders such as ``configs/demo/`` hold other jobs) that trains that objective. ``compare`` and ``board`` start every method from its preset, so a
comparison measures each method as its authors' recipe sets it, not with the objective's bare
defaults; explicit overrides still win.

The rule, in order: the one preset whose ``objective.name`` and ``data.name`` are the ones
asked for; else the objective's only preset (its data section is then replaced by the data
asked for); else no preset when the objective has none. Several candidates without an exact data
match is an error that lists them, so the choice is never silent.
"""
from __future__ import annotations

from pathlib import Path

from ..config import read_file
from ..errors import ConfigError

DEFAULT_FOLDER = "configs"


def _names(raw: dict) -> tuple[str | None, str | None]:
    def name(section):
        sec = raw.get(section)
        return sec if isinstance(sec, str) else (sec.get("name") if isinstance(sec, dict) else None)

    return name("objective"), name("data")


def presets_by_objective(folder: str | Path) -> dict[str, list[tuple[Path, str | None]]]:
    """Objective name -> [(preset file, its data name)], for every YAML/TOML file in ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--presets: folder {str(root)!r} not found (give a folder of config files, or 'none')")
    found: dict[str, list[tuple[Path, str | None]]] = {}
    for path in sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml", ".toml")):
        objective, data = _names(read_file(path))
        if objective:
            found.setdefault(objective, []).append((path, data))
    return found


def find_preset(objective: str, data: str | None, folder: str | Path | None, required: bool = False) -> Path | None:
    """The preset of ``objective`` for ``data`` in ``folder`` (None: presets are not used); see
    the module docstring for the rule. ``required``: no preset at all is an error too."""
    if folder is None:
        return None
    candidates = presets_by_objective(folder).get(objective, [])
    if not candidates and required:
        raise ConfigError(f"--methods: no preset of {objective!r} in {str(folder)!r}; give one with "
                          f"--config {objective}=FILE, or --presets none for the objectives' bare defaults")
    exact = [p for p, d in candidates if data is None or d == data]
    if len(exact) == 1:
        return exact[0]
    if len(candidates) == 1 and not exact:
        return candidates[0][0]
    if not candidates:
        return None
    listed = ", ".join(str(p) for p, _ in candidates)
    raise ConfigError(f"--config: {len(exact) or len(candidates)} presets of {objective!r} fit data {data!r} "
                      f"({listed}); choose one with --config {objective}=FILE")

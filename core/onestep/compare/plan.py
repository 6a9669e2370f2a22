"""What ``onestep compare`` and ``onestep board`` work out before anything trains: which methods
(a method label is an objective, or a variant ``NAME@LABEL`` of one), their config files (each
from its preset, :mod:`.presets`), their overrides, and every run's config, assembled and checked
so that a bad one fails before any training.

Config precedence for a run: its preset < ``--config FILE`` (every run) < ``--config NAME=FILE``
< what the command sets before the user's overrides < overrides for every run < ``NAME:key=value``
overrides for method NAME only (e.g. ``wflow:objective.eta=0.5``) < what the command sets last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import attrs

from ..api import compose
from ..components import build_components
from ..errors import ConfigError
from ..metrics.evaluate import applicable_metrics, check_applicable
from ..registry import Registry
from .presets import find_preset, presets_by_objective
from .rows import UNLIMITED_STEPS

LOG_EVERY = 100  # steps between a board run's loss records (what its status lines read)


# --------------------------------------------------------------------------- methods and roles
def objective_of(method: str) -> str:
    """The objective of a method label: ``wflow`` or a variant of it such as ``wflow@pixels``
    (its own row, run folder and ``wflow@pixels:key=value`` overrides, same preset)."""
    return method.split("@", 1)[0]


def role_of(registry: Registry, method: str) -> str:
    """The comparison role of a method label's objective (``""`` for an ordinary method)."""
    return registry.get("objective", objective_of(method)).cls.comparison_role


def objectives_with_role(registry: Registry, role: str) -> list[str]:
    """The installed objectives whose plugin declares ``comparison_role == role`` (``baseline``,
    ``peer``; see :class:`onestep.interfaces.Objective`), by name."""
    return [n for n in registry.names("objective") if role_of(registry, n) == role]


def peer_jobs(registry: Registry, objectives: Sequence[str], nfes: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The external reference rows: each installed peer objective not already compared, at ``nfes``."""
    peers = [p for p in objectives_with_role(registry, "peer") if p not in objectives]
    if not peers and not any(role_of(registry, o) == "peer" for o in objectives):
        raise ConfigError("the external reference row needs an installed objective whose plugin declares comparison_role "
                          "'peer' (an external implementation shown as reference rows); install such a plugin or pass --no-peer")
    return [(p, list(nfes)) for p in peers]


def default_methods(registry: Registry, data: str, presets: str | None) -> list[str]:
    """The baseline, the external peer (the installed objectives whose plugins declare those roles)
    and every installed objective with a preset for exactly this data."""
    found = presets_by_objective(presets) if presets else {}
    with_preset = [o for o, files in found.items() if any(d == data for _, d in files)]
    installed = set(registry.names("objective"))
    roles = objectives_with_role(registry, "baseline") + objectives_with_role(registry, "peer")
    chosen = roles + sorted(o for o in with_preset if o not in roles)
    return [m for m in chosen if m in installed]


# --------------------------------------------------------------------------- files and overrides
def split_scoped(values: Iterable[str], names: Sequence[str], scope_of, what: str,
                 noun: str) -> tuple[list[str], dict[str, list[str]]]:
    """Values for every run, and those that ``scope_of(value)`` gives as ``(NAME, rest)`` for run
    NAME only; an unknown NAME is an error naming ``what`` and the ``noun`` compared."""
    common: list[str] = []
    scoped: dict[str, list[str]] = {n: [] for n in names}
    for v in values:
        found = scope_of(v)
        if found is None:
            common.append(v)
            continue
        name, rest = found
        if name not in scoped:
            raise ConfigError(f"{what} {v!r}: {name!r} is not one of the compared {noun} ({', '.join(names)})")
        scoped[name].append(rest)
    return common, scoped


def split_files(files: Iterable[str], names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--config`` values: plain files for every run, ``NAME=FILE`` for method NAME only."""
    return split_scoped(files, names, lambda f: f.split("=", 1) if "=" in f else None, "--config", "methods")


def method_files(names: Sequence[str], data: str | None, files: Sequence[str], presets: str | None,
                 required: bool = False) -> dict[str, list[str]]:
    """Config files of every method: its preset (unless ``NAME=FILE`` gives one), then the common
    files. ``required``: a method without a preset is an error (the board's rule)."""
    common, scoped = split_files(files, names)
    out = {}
    for n in names:
        preset = None if scoped[n] else find_preset(objective_of(n), data, presets, required)
        out[n] = ([str(preset)] if preset else []) + common + scoped[n]
    return out


def split_overrides(overrides: Iterable[str], names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Common overrides and ``NAME:key=value`` ones per objective."""
    return split_scoped(overrides, names, lambda o: o.split(":", 1) if ":" in o.split("=", 1)[0] else None,
                        "override", "objectives")


def method_overrides(names: Sequence[str], overrides: Iterable[str], first: Sequence[str] = (),
                     last: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every method's overrides in order of precedence: ``first`` (what the command sets and the
    user may change), the user's common ones, the user's ``NAME:`` ones, then ``last`` (what the
    command sets for every run, whatever the user gave)."""
    common, scoped = split_overrides(overrides, names)
    return {n: [*first, *common, *scoped[n], *last] for n in names}


def checked_config(method: str, *, backbone: str | None, data: str | None, files: Sequence[str],
                   overrides: Sequence[str], registry: Registry):
    """A method's run config, its components built once (no networks) so that their own checks
    (e.g. an objective that needs a coupler) speak before any run trains."""
    cfg = compose(objective=objective_of(method), backbone=backbone, data=data, files=list(files), registry=registry,
                  overrides=list(overrides))
    build_components(cfg, registry)
    return cfg


# --------------------------------------------------------------------------- the board's plan
@attrs.define
class BoardSettings:
    data: str
    minutes: float
    marks: float
    methods: list[str]
    out_dir: Path = attrs.field(converter=Path)
    backbone: str | None = None
    files: list[str] = attrs.Factory(list)
    overrides: list[str] = attrs.Factory(list)
    presets: str | None = None
    eval_samples: int | None = None  # None: every held-out image
    metrics: list[str] | None = None  # None: every installed metric for the data
    few_steps: list[int] = attrs.Factory(lambda: [1, 2, 4])
    deadline: float | None = None  # wall-clock minutes after which training runs are interrupted
    mark_samples: int | None = None  # samples scored at each mark (the curve); None: as many as at the end
    speed_samples: int = 1000
    feature_weights: str | None = None
    command: str | None = None  # as typed, for the record

    def __attrs_post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f"--minutes: expected > 0, got {self.minutes}")
        if self.marks < 0:
            raise ConfigError(f"--marks: expected >= 0 minutes (0: only at the end), got {self.marks}")
        if not self.methods:
            raise ConfigError("--methods: expected at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods: a method is listed twice ({', '.join(self.methods)})")
        if self.deadline is not None and self.deadline <= self.minutes:
            raise ConfigError(f"--deadline: expected more than --minutes ({self.minutes}), got {self.deadline}")
        for name in ("eval_samples", "mark_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")


def child_overrides(s: BoardSettings, n_eval: int, metrics: list[str]) -> list[str]:
    """What the board sets in every run (before the user's overrides, which win): the runs train and
    checkpoint at the marks; the board scores the checkpoints afterwards. Losses are recorded every
    :data:`LOG_EVERY` steps (the presets' 1,000 can take minutes), for the status lines."""
    marks = int(s.minutes // s.marks) if s.marks else 0
    return [f"train.steps={UNLIMITED_STEPS}", f"train.max_minutes={s.minutes}", "train.eval_every_minutes=0",
            f"train.log_every={LOG_EVERY}",
            f"train.checkpoint_every_minutes={s.marks}", f"train.keep_checkpoints={marks + 2}",
            "train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=0", "train.progress=false",
            f"eval.num_samples={n_eval}", f"eval.metrics=[{','.join(metrics)}]", "eval.at_end=false"] + (
        [f"eval.feature_weights={s.feature_weights}"] if s.feature_weights else [])


@attrs.define
class BoardPlan:
    """What the board works out before training: the data (source, spec, held-out size), the
    metrics, each method's config files and the ``onestep run`` arguments of its child process."""

    source: object
    spec: object
    metrics: list[str]
    n_eval: int
    n_test: int
    files_of: dict[str, list[str]]
    argv: dict[str, list[str]]


def plan_board(s: BoardSettings, registry: Registry) -> BoardPlan:
    """Check every method, config and metric of ``s`` before anything trains, and plan the runs."""
    for m in s.methods:
        registry.get("objective", objective_of(m))  # unknown names fail here, with the valid ones listed
    out = Path(s.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {str(out)!r}: folder exists and is not empty; give a new folder")
    files_of = method_files(s.methods, s.data, s.files, s.presets, required=True)
    source = board_source(s, files_of, method_overrides(s.methods, s.overrides), registry)
    spec = source.spec()
    metrics = applicable_metrics(registry, spec) if s.metrics is None else list(s.metrics)
    check_applicable(registry, metrics, spec, s.data, "--metrics")
    n_test = len(source.dataset("test"))
    n_eval = min(s.eval_samples or n_test, n_test)
    overrides = method_overrides(s.methods, s.overrides, first=child_overrides(s, n_eval, metrics))
    argv: dict[str, list[str]] = {}
    for m in s.methods:
        cfg = checked_config(m, backbone=s.backbone, data=s.data, files=files_of[m], registry=registry,
                             overrides=[*overrides[m], f"output_dir={out / 'runs' / m}"])
        prepare_feature_network(source, cfg.eval, registry, metrics)
        argv[m] = (["run", "--objective", objective_of(m), "--data", s.data] + (["--backbone", s.backbone] if s.backbone else [])
                   + [a for f in files_of[m] for a in ("--config", f)] + ["--out", str(out / "runs" / m)]
                   + ["--start-gate", str(out / "start")] + overrides[m])
    return BoardPlan(source, spec, metrics, n_eval, n_test, files_of, argv)


def board_source(s: BoardSettings, files_of: dict[str, list[str]], overrides: dict[str, list[str]], registry: Registry):
    """The data every row trains on and is scored against: the data section the methods' configs
    assemble to (presets and overrides included, e.g. ``data.path=...``), the same for all rows."""
    from ..config import unstructure

    sections = {m: compose(objective=objective_of(m), backbone=s.backbone, data=s.data, files=files_of[m], registry=registry,
                           overrides=overrides[m]).data for m in s.methods}
    first = s.methods[0]
    for m, section in sections.items():
        if unstructure(section) != unstructure(sections[first]):
            raise ConfigError(f"board: method {m!r} would train on data {unstructure(section)} but {first!r} on "
                              f"{unstructure(sections[first])}; every row must share one data section (give data options "
                              "as overrides for all methods)")
    return registry.build("data", sections[first].name, sections[first].config)


def prepare_feature_network(source, eval_config, registry: Registry, metrics: Sequence[str]) -> None:
    """Train (or read from its cache) the feature network of a run's image metrics before the
    methods start, so no method pays for it and none trains it concurrently."""
    from ..config import metric_config
    from ..metrics.fidelity import FeatureConfig, resolve_extractor

    for name in metrics:
        config = metric_config(eval_config, name, registry)
        if isinstance(config, FeatureConfig) and source.spec().kind in ("images", "latents"):
            resolve_extractor(source, eval_config.feature_weights, config.classifier, config.cache_dir)

"""Run configuration: attrs classes, structured by cattrs from YAML/TOML files and CLI overrides.

The raw form is a nested dict. Component sections (``objective``, ``backbone``, ``data``,
``coupler``, ``guidance``, ``features``) are ``{name: ..., <that component's Config fields>}``;
the name picks the plugin class whose ``Config`` structures the rest. Every error names the full
field path::

    objective.sinkhorn.epsilon: expected float, got 'abc'
"""
from __future__ import annotations

import copy
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import attrs
import cattrs
import yaml
from cattrs.cols import list_structure_factory
from cattrs.errors import (AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError,
                           IterableValidationError, IterableValidationNote)

from .errors import ConfigError

COMPONENT_SECTIONS = ("objective", "backbone", "data", "coupler", "guidance", "features")
"""The component sections of a run; each is named after the kind of component it chooses."""
REQUIRED_SECTIONS = ("objective", "backbone", "data")
"""Sections every run names (the core defaults to no plugin); the others are optional."""


@attrs.define
class ComponentChoice:
    """A chosen component: its registered ``name`` and its structured ``config``."""

    name: str
    config: Any = None


class FieldError(ConfigError):
    """A value that a config class's validator refuses: ``field`` (the attribute's name) and what
    is wrong; :func:`structure` prefixes the field's full path (``train.optim.lr: ...``)."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field, self.what = field, what


def check(ok: Callable[[Any], bool], expected: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An attrs validator: ``ok(value)`` must hold, else ``<field>: expected <expected>, got <value>``."""

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not ok(value):
            raise FieldError(attribute.name, f"expected {expected}, got {value!r}")

    return validate


def at_least(low: float, zero: str | None = None) -> Callable[[Any, attrs.Attribute, Any], None]:
    """``value >= low`` (``zero``: what 0 means, shown in the error)."""
    return check(lambda v: v >= low, f">= {low:g}" + (f" (0: {zero})" if zero else ""))


POSITIVE = check(lambda v: v > 0, "> 0")
LR_DECAYS = ("none", "linear", "cosine")


@attrs.define
class OptimConfig:
    """AdamW settings; ``None`` means "the objective's default, else the built-in default"."""

    lr: Optional[float] = attrs.field(default=None, validator=attrs.validators.optional(POSITIVE))  # learning rate (None: the objective's, else 1e-3)
    betas: Optional[tuple[float, float]] = attrs.field(default=None, validator=attrs.validators.optional(check(lambda b: all(0.0 <= x < 1.0 for x in b), "two values in [0, 1)")))  # Adam's (beta1, beta2) (None: the objective's, else (0.9, 0.999))
    weight_decay: Optional[float] = attrs.field(default=None, validator=attrs.validators.optional(at_least(0)))  # decoupled weight decay (None: the objective's, else 0)
    eps: Optional[float] = attrs.field(default=None, validator=attrs.validators.optional(POSITIVE))  # Adam's epsilon (None: the objective's, else 1e-8)


@attrs.define
class TrainConfig:
    steps: int = attrs.field(default=2000, validator=at_least(1))  # training iterations (each runs every phase of the objective once)
    batch_size: int = attrs.field(default=256, validator=at_least(1))  # global batch per phase, summed over processes and grad_accum
    grad_accum: int = attrs.field(default=1, validator=at_least(1))  # micro-batches accumulated per optimizer step
    optim: OptimConfig = attrs.Factory(OptimConfig)  # AdamW settings of every network
    networks: dict[str, OptimConfig] = attrs.Factory(dict)  # per-network overrides of ``optim``, e.g. networks.critic.lr
    warmup_steps: int = attrs.field(default=0, validator=at_least(0, "no warmup"))  # linear learning-rate warmup steps
    lr_decay: str = attrs.field(default="none", validator=check(lambda v: v in LR_DECAYS, "one of " + ", ".join(LR_DECAYS)))
    """Learning-rate decay after the warm-up, to 0 at the run's planned end: ``none`` (constant),
    ``linear`` or ``cosine``. The end is ``train.steps``, or under ``train.max_minutes`` the step
    count the measured rate reaches when the training clock runs out (re-estimated every step), so
    a wall-clock budget ends at lr 0 whatever the device's speed (budgeted training: a decay to
    zero within the budget beats a constant rate stopped early)."""
    grad_clip: float = attrs.field(default=0.0, validator=at_least(0, "no clipping"))  # clip the global gradient norm to this; 0 disables clipping
    ema_decay: float = attrs.field(default=0.999, validator=check(lambda v: 0.0 <= v < 1.0, "in [0, 1)"))  # decay of the EMA weights used for sampling
    ema_start: int = attrs.field(default=0, validator=at_least(0, "from the first step"))  # steps before the EMA starts tracking (copies weights until then)
    zero_stage: int = attrs.field(default=0, validator=check(lambda v: v in (0, 1, 2, 3), "0, 1, 2 or 3"))  # DeepSpeed ZeRO stage 0-3 (partitions optimizer state, gradients, weights)
    precision: str = attrs.field(default="fp32", validator=check(lambda v: v in ("fp32", "bf16"), "'fp32' or 'bf16'"))  # fp32 | bf16 (autocast)
    tf32: bool = False
    """On CUDA, compute the run's fp32 matmuls in TF32 (tensor cores, 10-bit mantissa; PyTorch
    already does so for convolutions): all of them under ``precision: fp32``, and under bf16 the
    calls that leave autocast on purpose (AF's finite-difference R1/R2, ``gp_precision: fp32``). The
    AF authors train in fp32 with TF32 matmuls. A process-wide switch, set when the trainer is built."""
    log_every: int = attrs.field(default=50, validator=at_least(1))  # steps between loss records in metrics.jsonl
    sample_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))  # steps between sample pictures; 0: only at the end
    eval_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))  # steps between evaluations; 0: only at the end
    checkpoint_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = attrs.field(default=2, validator=at_least(1))  # newest checkpoints kept on disk
    num_workers: int = attrs.field(default=0, validator=at_least(0, "load in the main process"))  # data-loader worker processes
    progress: bool = True  # show a progress bar
    tensorboard: bool = True  # also write TensorBoard event files (every logged number, sample pictures) beside metrics.jsonl
    compile: bool = False  # torch.compile the networks; the backbone picks the regions (DiT: each block)
    max_minutes: float = attrs.field(default=0.0, validator=at_least(0, "no limit"))  # training-clock limit in minutes (evaluations, samples and checkpoints pause the clock); 0: none
    eval_every_minutes: float = attrs.field(default=0.0, validator=at_least(0, "never"))  # evaluate each time the training clock passes a multiple of this; 0: never
    checkpoint_every_minutes: float = attrs.field(default=0.0, validator=at_least(0, "never"))  # checkpoint each time the training clock passes a multiple of this; 0: never
    init_from: Optional[str] = None
    """A checkpoint (run or step folder) whose network weights start this run (``onestep run
    --init-from``): a fine-tuning stage, e.g. guidance from an unguided run. Only weights are
    read: step, optimizers, schedules, data order and component state start afresh. Every network
    of this run must be in it (extra ones are ignored). Ignored when resuming."""
    init_from_ema: bool = True
    """With ``init_from``: start a network the checkpoint keeps an EMA of (the generator) from that
    EMA, as the paper's guided fine-tuning does; false: from its live weights. Others start live."""


@attrs.define
class SampleConfig:
    num: int = attrs.field(default=2000, validator=at_least(1))  # points in a sample plot (2D/1D data)
    nfe: Optional[int] = attrs.field(default=None, validator=attrs.validators.optional(check(lambda v: v >= 1, ">= 1 or null (the objective's)")))  # network evaluations per sample; None: the objective's default
    grid: int = attrs.field(default=64, validator=at_least(1))  # images in a sample grid


def _local_weights(_instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise FieldError(attribute.name, f"file {value!r} not found (give a local copy of torch-fidelity's "
                         "inception-v3-compat weights, e.g. weights-inception-2015-12-05-6726825d.pth; onestep never "
                         "downloads them; leave it unset to use a classifier trained on the data)")


@attrs.define
class EvalConfig:
    metrics: Optional[list[str]] = None  # None: every installed metric that applies to the data; []: none
    num_samples: int = attrs.field(default=2000, validator=at_least(1))  # generated samples (and held-out ones) per evaluation
    feature_weights: Optional[str] = attrs.field(default=None, validator=_local_weights)  # local torch-fidelity Inception weights for image metrics; None: a classifier trained on the data
    options: dict[str, dict[str, Any]] = attrs.Factory(dict)  # per-metric settings by name, e.g. {sinkhorn: {blur: 0.1}}
    at_end: bool = True  # evaluate once more when training ends (the board scores its runs itself)


@attrs.define
class RunConfig:
    objective: Optional[ComponentChoice] = None  # required: the training method (onestep plugins --kind objective)
    backbone: Optional[ComponentChoice] = None  # required: the network family
    data: Optional[ComponentChoice] = None  # required: the data source
    coupler: Optional[ComponentChoice] = None
    guidance: Optional[ComponentChoice] = None
    features: Optional[ComponentChoice] = None  # a frozen feature network for the objective (e.g. W-Flow's phi)
    train: TrainConfig = attrs.Factory(TrainConfig)
    sample: SampleConfig = attrs.Factory(SampleConfig)
    eval: EvalConfig = attrs.Factory(EvalConfig)
    seed: int = 0  # seeds the networks, noise and data order
    output_dir: str = "runs/{objective}-{backbone}-{data}"  # run folder; {section} is that component's name
    device: str = "auto"  # auto | cpu | cuda

    def __attrs_post_init__(self) -> None:
        self.resolved_output_dir()

    def resolved_output_dir(self) -> Path:
        names = {s: getattr(self, s).name if getattr(self, s) else "none" for s in COMPONENT_SECTIONS}
        try:
            return Path(self.output_dir.format(**names))
        except KeyError as exc:
            raise ConfigError(f"output_dir: {self.output_dir!r} names {{{exc.args[0]}}}; valid: "
                              + ", ".join(f"{{{s}}}" for s in COMPONENT_SECTIONS)) from None
        except (ValueError, IndexError, AttributeError) as exc:
            raise ConfigError(f"output_dir: {self.output_dir!r} is not a valid template ({exc}); write {{ and }} "
                              "as {{ and }}, and name components as {objective}") from None


# --------------------------------------------------------------------------- strict converter
def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _strict_int(v: Any, _t: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected int, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise ValueError(f"expected int, got {v!r}")


def _strict_float(v: Any, _t: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected float, got {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise ValueError(f"expected float, got {v!r}")


def _strict_bool(v: Any, _t: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off"):
        return v.lower() in ("true", "yes", "on")
    raise ValueError(f"expected bool, got {v!r}")


def _strict_str(v: Any, _t: Any) -> str:
    if isinstance(v, str):
        return v
    raise ValueError(f"expected str, got {v!r}")


def _is_fixed_tuple(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is tuple and bool(args) and Ellipsis not in args


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)

    def fixed_tuple(v: Any, t: Any) -> tuple:
        args = typing.get_args(t)
        if len(args) == 1 and _is_scalar(v):
            v = [v]
        if not isinstance(v, (list, tuple)) or len(v) != len(args):
            example = f", e.g. {_list_example(v, len(args))}" if _is_scalar(v) else ""
            raise ValueError(f"expected a list of {len(args)} values ({', '.join(map(_type_name, args))}){example}, "
                             f"got {v!r}")
        return tuple(conv.structure(x, a) for x, a in zip(v, args))

    def list_hook(t: Any) -> Callable[[Any, Any], list]:
        """A list field takes a list, or one value where one is meant (``objective.epsilon=0.05``
        is ``[0.05]``; a field that needs more says so through its validator)."""
        items = list_structure_factory(t, conv)

        def structure_list(v: Any, cl: Any) -> list:
            if _is_scalar(v):
                v = [v]
            elif not isinstance(v, (list, tuple)):
                raise ValueError(f"expected a list, e.g. [{_item_example(typing.get_args(t))}], got {v!r}")
            return items(v, cl)

        return structure_list

    conv.register_structure_hook_func(_is_fixed_tuple, fixed_tuple)
    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, list_hook)
    return conv


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _list_example(v: Any, n: int) -> str:
    return "[" + ", ".join([repr(v) if isinstance(v, str) else str(v)] * n) + "]"


def _item_example(args: tuple) -> str:
    return {int: "1", float: "0.05", str: "'name'", bool: "true"}.get(args[0] if args else None, "...")


CONVERTER = make_converter()


def _leaf_messages(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' exception groups into ``path: message`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        valid = ", ".join(f.name for f in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        return [f"{_join(path, k)}: unknown field; valid: {valid}" for k in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError, ExceptionGroup)):
        out = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = _join(path, str(note.name))
                elif isinstance(note, IterableValidationNote):
                    sub_path = _join(path, str(note.index))
            out.extend(_leaf_messages(sub, sub_path))
        return out
    if isinstance(exc, FieldError):
        return [f"{_join(path, exc.field)}: {exc.what}"]
    if isinstance(exc, ConfigError):
        return [str(exc)]
    if isinstance(exc, KeyError):
        return [f"{_join(path, str(exc.args[0]))}: missing required field"]
    msg = str(exc)
    if isinstance(exc, TypeError) and "argument" in msg:
        msg = "expected a mapping of fields, got a value of the wrong shape"
    return [f"{path}: {msg}" if path else msg]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def structure(raw: Any, cls: type, path: str) -> Any:
    """Structure ``raw`` into ``cls``; errors become one :class:`ConfigError` naming the path."""
    if raw is None:
        raw = {}
    if attrs.has(cls) and not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    try:
        return CONVERTER.structure(raw, cls)
    except ConfigError:
        raise
    except Exception as exc:  # cattrs raises groups; flatten to lines
        lines = _leaf_messages(exc, path)
        raise ConfigError("; ".join(lines)) from None


def unstructure(obj: Any) -> Any:
    if isinstance(obj, ComponentChoice):
        return {"name": obj.name, **(CONVERTER.unstructure(obj.config) if obj.config is not None else {})}
    if attrs.has(type(obj)):
        return {f.name: unstructure(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- raw dict assembly
def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r}: not found")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text())
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(p.read_text())
        else:
            raise ConfigError(f"config file {str(p)!r}: expected a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r}: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a component section whose ``name`` changes drops the old section's fields."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if k in COMPONENT_SECTIONS and "name" in v and v["name"] != out[k].get("name"):
                out[k] = copy.deepcopy(v)
            else:
                out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> nested dict; the value is parsed as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = parsed
    # ``objective=wflow`` is shorthand for ``objective.name=wflow``
    if len(parts) == 1 and parts[0] in COMPONENT_SECTIONS and isinstance(parsed, str):
        node = {parts[0]: {"name": parsed}}
    return node


def assemble(
    files: Iterable[str | Path] = (), choices: dict[str, str | None] | None = None,
    overrides: Iterable[str] = (), base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Raw config: ``base``, then each file, then ``--objective``-style choices, then overrides."""
    raw: dict[str, Any] = copy.deepcopy(base or {})
    for f in files:
        raw = merge(raw, read_file(f))
    for section, name in (choices or {}).items():
        if name is not None:
            raw = merge(raw, {section: {"name": name}})
    for o in overrides:
        raw = merge(raw, parse_override(o))
    return raw


def build_config(raw: dict[str, Any], registry) -> RunConfig:
    """Structure a raw dict into a :class:`RunConfig`, resolving component configs by name."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping at the top level")
    valid = [f.name for f in attrs.fields(RunConfig)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; valid: {', '.join(valid)}")
    kwargs: dict[str, Any] = {f.name: structure(raw[f.name], f.type, f.name) for f in attrs.fields(RunConfig)
                              if f.name in raw and f.name not in COMPONENT_SECTIONS}
    for section in COMPONENT_SECTIONS:
        kwargs[section] = component_choice(section, raw.get(section), registry, section in REQUIRED_SECTIONS)
    config = RunConfig(**kwargs)
    for name in config.eval.options:
        metric_config(config.eval, name, registry)  # fail at build time, not at the first evaluation
    return config


def component_choice(section: str, raw: Any, registry, required: bool) -> ComponentChoice | None:
    """Component section ``section`` (``{name: ..., <fields>}``, a bare name, or None) structured
    by the ``Config`` of the component it names; None for an optional section left out (or named
    ``none``). A ``required`` section without a name is a one-line error listing the valid ones."""
    kind = section
    sec = {"name": raw} if isinstance(raw, str) else ({} if raw is None else raw)
    if not isinstance(sec, dict):
        raise ConfigError(f"{section}: expected a mapping with 'name', got {raw!r}")
    sec = dict(sec)
    name = sec.pop("name", None)
    if name is None and required:
        raise ConfigError(f"{section}.name: missing; choose {'an' if kind[0] in 'aeiou' else 'a'} {kind} (--{section} NAME, or {section}: {{name: NAME}} "
                          f"in a config file); valid: {', '.join(registry.names(kind)) or '(none installed)'}")
    if name is None:
        if sec:
            raise ConfigError(f"{section}.name: missing; set {section}.name to choose a {kind}")
        return None
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name: expected str, got {name!r}")
    if name in ("none", "null", ""):
        if required:
            raise ConfigError(f"{section}.name: a {kind} is required")
        return None
    info = registry.get(kind, name)
    return ComponentChoice(name, structure(sec, info.cls.Config, section))


@attrs.define
class SamplerConfig:
    """What sampling from a trained generator needs of its run's config: the objective, backbone
    and feature-network sections. An export carries these alone, so loading it needs no coupler
    or guidance plugin and no path of the training machine."""

    objective: ComponentChoice
    backbone: ComponentChoice
    features: Optional[ComponentChoice] = None

    @classmethod
    def of(cls, config: RunConfig) -> "SamplerConfig":
        return cls(config.objective, config.backbone, config.features)


SAMPLER_SECTIONS = tuple(f.name for f in attrs.fields(SamplerConfig))


def build_sampler_config(raw: dict[str, Any], registry) -> SamplerConfig:
    """A :class:`SamplerConfig` from the raw sections ``objective``, ``backbone``, ``features``."""
    return SamplerConfig(**{s: component_choice(s, raw.get(s), registry, s in REQUIRED_SECTIONS)
                            for s in SAMPLER_SECTIONS})


def metric_config(eval_config: EvalConfig, name: str, registry) -> Any:
    """The config of metric ``name``: its defaults updated by ``eval.options[name]``."""
    info = registry.get("metric", name)
    return structure(eval_config.options.get(name), info.cls.Config, f"eval.options.{name}")


for _cls in (ComponentChoice, OptimConfig, TrainConfig, SampleConfig, EvalConfig, RunConfig, SamplerConfig):
    attrs.resolve_types(_cls)

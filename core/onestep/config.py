"""Run configuration assembly: YAML/TOML files, ``--objective``-style choices and CLI overrides
merged into a raw nested dict, then structured by cattrs into the classes of
:mod:`onestep.schema` (re-exported here, the public import path).

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
from typing import Any, Callable, Iterable

import attrs
import cattrs
import yaml
from cattrs.cols import list_structure_factory
from cattrs.errors import (AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError,
                           IterableValidationError, IterableValidationNote)

from .errors import ConfigError
from .schema import (COMPONENT_SECTIONS, DEVICE, LR_DECAYS, POSITIVE, REQUIRED_SECTIONS, SAMPLER_SECTIONS,
                     ComponentChoice, EvalConfig, FieldError, OptimConfig, RunConfig, SampleConfig, SamplerConfig,
                     TrainConfig, at_least, check, one_of)

__all__ = [  # the schema's names are re-exported: ``onestep.config`` is the public import path of both
    "COMPONENT_SECTIONS", "DEVICE", "LR_DECAYS", "POSITIVE", "REQUIRED_SECTIONS", "SAMPLER_SECTIONS", "ComponentChoice",
    "EvalConfig", "FieldError", "OptimConfig", "RunConfig", "SampleConfig", "SamplerConfig", "TrainConfig",
    "at_least", "check", "one_of", "CONVERTER", "make_converter", "structure", "unstructure", "read_file", "merge",
    "parse_override", "assemble", "build_config", "component_choice", "build_sampler_config", "metric_config",
]

# --------------------------------------------------------------------------- strict converter
def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _strict_number(kind: type) -> Callable[[Any, Any], Any]:
    """The structure hook of ``int`` or ``float``: a number or a numeric string of that kind (a
    whole float counts as an int; a bool is neither)."""

    def structure_number(v: Any, _t: Any) -> Any:
        whole = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        if not isinstance(v, bool) and (isinstance(v, (int, float)) if kind is float else whole):
            return kind(v)
        if isinstance(v, str):
            try:
                return kind(v)
            except ValueError:
                pass
        raise ValueError(f"expected {kind.__name__}, got {v!r}")

    return structure_number


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
    conv.register_structure_hook(int, _strict_number(int))
    conv.register_structure_hook(float, _strict_number(float))
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
        """A list field takes a list, or one value where one is meant (``objective.relative_temperatures=0.05``
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
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(f"{section}.name: missing; choose {article} {kind} (--{section} NAME, or "
                          f"{section}: {{name: NAME}} in a config file); valid: "
                          f"{', '.join(registry.names(kind)) or '(none installed)'}")
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


def build_sampler_config(raw: dict[str, Any], registry) -> SamplerConfig:
    """A :class:`SamplerConfig` from the raw sections ``objective``, ``backbone``, ``features``."""
    return SamplerConfig(**{s: component_choice(s, raw.get(s), registry, s in REQUIRED_SECTIONS)
                            for s in SAMPLER_SECTIONS})


def metric_config(eval_config: EvalConfig, name: str, registry) -> Any:
    """The config of metric ``name``: its defaults updated by ``eval.options[name]``."""
    info = registry.get("metric", name)
    return structure(eval_config.options.get(name), info.cls.Config, f"eval.options.{name}")

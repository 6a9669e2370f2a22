"""Finds components through pluggy and the entry-point group ``onestep``.

Every component (the core's own data sources and metrics included) comes from a plugin found by
its entry point, so a third-party package is a peer of the bundled ones. A plugin that fails to
import is recorded, not fatal: the others stay usable and a lookup that may have needed it says
which plugin broke and why.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .interfaces import KINDS, Component

ENTRY_POINT_GROUP = "onestep"


@attrs.frozen
class ComponentInfo:
    kind: str
    name: str
    cls: type
    plugin: str  # the plugin's registered name (entry-point name or given name)
    package: str  # the distribution that ships it, or the module for unpackaged plugins

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Name -> component class, per kind. Build with :meth:`discover`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._by_kind: dict[str, dict[str, ComponentInfo]] = {k: {} for k in KINDS}
        self.broken: dict[str, str] = {}

    @classmethod
    def discover(cls, extra: Iterable[tuple[str, Any]] = (), entry_points: bool = True) -> "Registry":
        """Load every ``onestep`` entry point, then ``extra`` (name, plugin-object) pairs."""
        reg = cls()
        if entry_points:
            for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                package = ep.dist.name if ep.dist is not None else ep.module
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must not take the others down
                    reg.broken[ep.name] = f"{package}: {type(exc).__name__}: {exc}"
                    continue
                reg.add(plugin, name=ep.name, package=package)
        for name, plugin in extra:
            reg.add(plugin, name=name, package=getattr(plugin, "__name__", name))
        return reg

    def add(self, plugin: Any, *, name: str, package: str) -> None:
        """Register one plugin object and collect its components."""
        if self.pm.has_plugin(name):
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.broken[name] = f"{package}: {type(exc).__name__}: {exc}"
            return
        for impl_name, kind in hookspecs.HOOK_KIND.items():
            impl = getattr(plugin, impl_name, None)
            if impl is None:
                continue
            try:
                classes = list(impl() or ())
            except Exception as exc:
                self.broken[name] = f"{package}: {impl_name}() raised {type(exc).__name__}: {exc}"
                continue
            for c in classes:
                self._add_component(kind, c, plugin=name, package=package)

    def _add_component(self, kind: str, cls: type, *, plugin: str, package: str) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin {plugin} ({package}): {cls!r} from onestep_{kind} hook is not a subclass of {base.__name__}"
            )
        cname = getattr(cls, "name", None)
        if not isinstance(cname, str) or not cname:
            raise PluginError(f"plugin {plugin} ({package}): {cls.__name__} has no string attribute 'name'")
        if not attrs.has(getattr(cls, "Config", None)):
            raise PluginError(f"plugin {plugin} ({package}): {kind} {cname!r} has no attrs class 'Config'")
        have = self._by_kind[kind].get(cname)
        if have is not None and have.cls is not cls:
            raise PluginError(
                f"{kind} {cname!r} is provided by two plugins: {have.package} ({have.plugin}) and {package} ({plugin}); uninstall one"
            )
        self._by_kind[kind][cname] = ComponentInfo(kind, cname, cls, plugin, package)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def components(self, kind: str) -> list[ComponentInfo]:
        return [self._by_kind[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> ComponentInfo:
        if kind not in self._by_kind:
            raise PluginError(f"unknown component kind {kind!r}; valid: {', '.join(KINDS)}")
        try:
            return self._by_kind[kind][name]
        except KeyError:
            valid = ", ".join(self.names(kind)) or "(none installed)"
            msg = f"unknown {kind} {name!r}; valid: {valid}"
            if self.broken:
                msg += "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in self.broken.items())
            raise PluginError(msg) from None

    def build(self, kind: str, name: str, config: Any, **context: Any) -> Component:
        return self.get(kind, name).cls(config, **context)

    def build_objective(self, config: Any, spec: Any) -> Component:
        """A run's objective with the coupler, guidance and feature network its ``RunConfig``
        names (reachable as ``objective.coupler`` / ``objective.guidance``). The feature network
        is passed as the keyword ``features`` only when the run configures one, and only to an
        objective whose ``__init__`` takes it (else a ``ConfigError`` naming both)."""
        coupler = self.build("coupler", config.coupler.name, config.coupler.config) if config.coupler else None
        guidance = self.build("guidance", config.guidance.name, config.guidance.config, spec=spec) if config.guidance else None
        extra: dict[str, Any] = {}
        features = config.features
        if features is not None:
            objective = self.get("objective", config.objective.name)
            params = inspect.signature(objective.cls.__init__).parameters
            if "features" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ConfigError(f"features {features.name!r}: objective {objective.name!r} ({objective.package}) "
                                  "does not use a feature network; remove the features section (features=none)")
            extra["features"] = self.build("features", features.name, features.config, spec=spec)
        return self.build("objective", config.objective.name, config.objective.config, spec=spec, coupler=coupler,
                          guidance=guidance, **extra)

"""Finds components through pluggy and the entry-point group ``onestep``.

Every component (the core's own data sources and metrics included) comes from a plugin found by
its entry point, so a third-party package is a peer of the bundled ones. A plugin that fails to
import, or a component that breaks the contract (no ``name``, a ``Config`` without defaults),
is recorded in :attr:`Registry.broken`, not fatal: the others stay usable and a lookup that may
have needed it says which plugin broke and why. Two components claiming one name are both
disabled (and named), the rest stay usable.
"""
from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .interfaces import KINDS, Component

ENTRY_POINT_GROUP = "onestep"
HOOKS = tuple(sorted(n for n in dir(hookspecs) if n.startswith("onestep_")))


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
        self._clashes: dict[tuple[str, str], list[ComponentInfo]] = {}
        self.broken: dict[str, str] = {}
        self.packages: dict[str, str] = {}  # registered plugin name -> the distribution (or module) that ships it

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
        """Register one plugin object and collect its components. A plugin whose ``onestep_*``
        functions are not all hooks of :mod:`onestep.hookspecs` marked ``@hookimpl`` (a misspelt
        hook name would otherwise register silently and provide nothing) is refused whole and
        recorded in :attr:`broken`, named with the function at fault."""
        if self.pm.has_plugin(name):
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.broken[name] = f"{package}: {type(exc).__name__}: {' '.join(str(exc).split())}"
            return
        fault = self._hook_fault(plugin)
        if fault:
            self.pm.unregister(plugin, name=name)
            self.broken[name] = f"{package}: {fault}"
            return
        self.pm.check_pending()
        self.packages[name] = package
        for kind, base in KINDS.items():
            for impl in getattr(self.pm.hook, base.hook).get_hookimpls():
                if impl.plugin_name == name:
                    self._collect(kind, impl, package)

    def _hook_fault(self, plugin: Any) -> str | None:
        """What is wrong with ``plugin``'s hook functions: a name that is no hook, or a hook
        function without ``@hookimpl``; None when nothing is."""
        unknown = [c.name for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()]
        if unknown:
            guess = difflib.get_close_matches(unknown[0], HOOKS, n=1)
            return (f"function {unknown[0]!r} is not an onestep hook"
                    + (f"; did you mean {guess[0]!r}?" if guess else f"; hooks: {', '.join(HOOKS)}"))
        for hook in HOOKS:
            impl = getattr(plugin, hook, None)
            if callable(impl) and self.pm.parse_hookimpl_opts(plugin, hook) is None:
                return f"function {hook!r} is not marked @hookimpl (from onestep.hookspecs import hookimpl)"
        return None

    def _collect(self, kind: str, impl: Any, package: str) -> None:
        """The classes that one plugin's implementation of ``kind``'s hook returns. Each
        implementation is called on its own, so a failing plugin is named and the others stay."""
        name = impl.plugin_name
        try:
            classes = list(impl.function() or ())
        except Exception as exc:
            self.broken[name] = f"{package}: {KINDS[kind].hook}() raised {type(exc).__name__}: {exc}"
            return
        for c in classes:
            try:
                self._add_component(kind, c, plugin=name, package=package)
            except PluginError as exc:
                self.broken[f"{name}/{getattr(c, 'name', getattr(c, '__name__', c))}"] = str(exc)

    def add_commands(self, subparsers: Any) -> None:
        """Let every plugin add its subcommands (hook ``onestep_commands``); a plugin whose hook
        fails is recorded in :attr:`broken` and the others' commands stay."""
        for impl in self.pm.hook.onestep_commands.get_hookimpls():
            try:
                impl.function(subparsers=subparsers)
            except Exception as exc:
                package = self.packages.get(impl.plugin_name, impl.plugin_name)
                self.broken[impl.plugin_name] = (f"{package}: onestep_commands() raised {type(exc).__name__}: "
                                                 f"{' '.join(str(exc).split())}")

    def _add_component(self, kind: str, cls: type, *, plugin: str, package: str) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin {plugin} ({package}): {cls!r} from hook {base.hook} is not a subclass of {base.__name__}"
            )
        cname = getattr(cls, "name", None)
        if not isinstance(cname, str) or not cname:
            raise PluginError(f"plugin {plugin} ({package}): {cls.__name__} has no string attribute 'name'")
        if not attrs.has(getattr(cls, "Config", None)):
            raise PluginError(f"plugin {plugin} ({package}): {kind} {cname!r} has no attrs class 'Config'")
        try:
            cls.Config()
        except Exception as exc:
            raise PluginError(f"plugin {plugin} ({package}): {kind} {cname!r}: Config() fails without arguments "
                              f"({type(exc).__name__}: {exc}); give every field a default") from None
        info = ComponentInfo(kind, cname, cls, plugin, package)
        clash = self._clashes.get((kind, cname))
        have = self._by_kind[kind].get(cname)
        if clash is not None or (have is not None and have.cls is not cls):
            clash = clash if clash is not None else [have]
            clash.append(info)
            self._clashes[(kind, cname)] = clash
            self._by_kind[kind].pop(cname, None)
            self.broken[f"{kind} {cname}"] = (
                f"{kind} {cname!r} is provided by two plugins: "
                + " and ".join(f"{c.package} ({c.plugin})" for c in clash) + "; uninstall one")
            return
        self._by_kind[kind][cname] = info

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def components(self, kind: str) -> list[ComponentInfo]:
        return [self._by_kind[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> ComponentInfo:
        if kind not in self._by_kind:
            raise PluginError(f"unknown component kind {kind!r}; valid: {', '.join(KINDS)}")
        if (kind, name) in self._clashes:
            raise PluginError(self.broken[f"{kind} {name}"])
        try:
            return self._by_kind[kind][name]
        except KeyError:
            valid = ", ".join(self.names(kind)) or "(none installed)"
            msg = f"unknown {kind} {name!r}; valid: {valid}"
            if self.broken:
                msg += "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in self.broken.items())
            raise PluginError(msg) from None

    def build(self, kind: str, name: str, config: Any, **context: Any) -> Component:
        """Construct component ``name``; a ValueError it raises over its settings (the contract
        for "this config cannot work") becomes a one-line :class:`ConfigError` naming it."""
        cls = self.get(kind, name).cls
        try:
            return cls(config, **context)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{kind} {name!r}: {' '.join(str(exc).split())}") from None

    def build_objective(self, config: Any, spec: Any, sampling: bool = False) -> Component:
        """A run's objective with the coupler, guidance and feature network its ``RunConfig``
        names (reachable as ``objective.coupler`` / ``objective.guidance``), after checking them
        against what the objective declares (``uses_coupler``, ``requires_coupler``,
        ``uses_guidance``, a ``features`` keyword). ``sampling``: build it to sample only, with
        neither coupler nor guidance (their plugins need not be installed)."""
        info = self.get("objective", config.objective.name)
        extra: dict[str, Any] = {}
        if not sampling:
            self.check_accepts(info, config)
            if config.coupler:
                extra["coupler"] = self.build("coupler", config.coupler.name, config.coupler.config)
            if config.guidance:
                extra["guidance"] = self.build("guidance", config.guidance.name, config.guidance.config, spec=spec)
        features = config.features
        if features is not None:
            params = inspect.signature(info.cls.__init__).parameters
            if "features" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ConfigError(f"features {features.name!r}: objective {info.name!r} ({info.package}) "
                                  "does not use a feature network; remove the features section (features=none)")
            extra["features"] = self.build("features", features.name, features.config, spec=spec)
        return self.build("objective", info.name, config.objective.config, spec=spec, **extra)

    def check_accepts(self, info: ComponentInfo, config: Any) -> None:
        """Refuse a coupler or guidance that objective ``info`` does not declare it uses, and a
        missing coupler it requires."""
        objective, cls = info.name, info.cls
        if config.coupler and not cls.uses_coupler:
            raise ConfigError(f"coupler {config.coupler.name!r}: objective {objective} uses no coupler; "
                              "remove the coupler section (coupler=none)")
        if config.coupler is None and cls.requires_coupler:
            raise ConfigError(f"coupler: objective {objective} needs a coupler; valid: "
                              + (", ".join(self.names("coupler")) or "(none installed)"))
        if config.guidance and not cls.uses_guidance:
            raise ConfigError(f"guidance {config.guidance.name!r}: objective {objective} takes no guidance plugin; "
                              "remove the guidance section (guidance=none)")

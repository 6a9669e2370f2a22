"""The core's own plugin: built-in data sources, metrics and subcommands, registered through the
same entry point group as every third-party plugin."""
import importlib
import pkgutil

from .hookspecs import hookimpl


@hookimpl
def onestep_data_sources():
    from .data.idx import IDX_SOURCES
    from .data.images import IMAGE_SOURCES
    from .data.synthetic import SyntheticLatents
    from .data.toy import TOY_SOURCES

    return [*TOY_SOURCES, *IMAGE_SOURCES, *IDX_SOURCES, SyntheticLatents]


@hookimpl
def onestep_metrics():
    from .metrics.conditional import ClassAccuracy
    from .metrics.fidelity import FIDELITY_METRICS
    from .metrics.toy import ModeCoverage, SinkhornDivergence

    return [SinkhornDivergence, ModeCoverage, *FIDELITY_METRICS, ClassAccuracy]


@hookimpl
def onestep_commands(subparsers):
    """Each module of :mod:`onestep.commands` adds its subcommand with ``register(subparsers)``."""
    from . import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(subparsers)

"""The plugin hooks: the whole contract a plugin author implements.

A plugin is a module (or object) with ``@hookimpl`` functions below, exposed by its package
through the entry-point group ``onestep``::

    [project.entry-points.onestep]
    my-plugin = "my_package.plugin"

Each ``onestep_<kind>`` hook returns a list of component classes of one kind (see
:mod:`onestep.interfaces`, where each kind's base names its hook); :func:`onestep_commands` adds
subcommands to the ``onestep`` command. Implement only the hooks you need, each marked
``@hookimpl``: a plugin that defines a function named ``onestep_...`` that is not one of these
hooks (a misspelt name), or one not marked ``@hookimpl``, is refused with an error naming the
plugin and the function.
"""
from __future__ import annotations

import pluggy

PROJECT = "onestep"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def onestep_backbones() -> list[type]:
    """Backbone classes (subclasses of :class:`onestep.interfaces.Backbone`)."""


@hookspec
def onestep_objectives() -> list[type]:
    """Objective classes (subclasses of :class:`onestep.interfaces.Objective`)."""


@hookspec
def onestep_couplers() -> list[type]:
    """Coupler classes (subclasses of :class:`onestep.interfaces.Coupler`)."""


@hookspec
def onestep_guidance() -> list[type]:
    """Guidance classes (subclasses of :class:`onestep.interfaces.Guidance`)."""


@hookspec
def onestep_data_sources() -> list[type]:
    """Data source classes (subclasses of :class:`onestep.interfaces.DataSource`)."""


@hookspec
def onestep_metrics() -> list[type]:
    """Metric classes (subclasses of :class:`onestep.interfaces.Metric`)."""


@hookspec
def onestep_feature_networks() -> list[type]:
    """Feature network classes (subclasses of :class:`onestep.interfaces.FeatureNetwork`): frozen
    maps in which an objective measures distances, chosen by the run's ``features`` section."""


@hookspec
def onestep_commands(subparsers) -> None:
    """Add subcommands to ``onestep``: call ``subparsers.add_parser(NAME, help=...)`` (an
    :mod:`argparse` sub-parsers object) and set the parser's ``func`` default to a function
    ``func(args) -> int`` (the exit code). Raise :class:`onestep.errors.OnestepError` for errors
    the user can act on: the command prints it on one line and exits with code 2. A hook that
    raises (e.g. argparse refusing a command name already taken) is recorded as a broken plugin,
    named by ``onestep plugins``; the other commands stay."""

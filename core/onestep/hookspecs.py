"""The plugin hooks: the whole contract a plugin author implements.

A plugin is a module (or object) with ``@hookimpl`` functions below, exposed by its package
through the entry-point group ``onestep``::

    [project.entry-points.onestep]
    my-plugin = "my_package.plugin"

Each hook returns a list of component classes of one kind (see :mod:`onestep.interfaces`).
Implement only the hooks you need.
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


HOOK_KIND = {
    "onestep_backbones": "backbone",
    "onestep_objectives": "objective",
    "onestep_couplers": "coupler",
    "onestep_guidance": "guidance",
    "onestep_data_sources": "data",
    "onestep_metrics": "metric",
    "onestep_feature_networks": "features",
}

"""The one place that builds a run's components from its config: data source -> data spec ->
objective (with its coupler, guidance and feature network) and backbone. The trainer, ``compare``,
``board``, ``export`` and :class:`onestep.export.OneStepPipeline` all call :func:`build_components`."""
from __future__ import annotations

import attrs

from .interfaces import Backbone, DataSource, DataSpec, Objective
from .registry import Registry


@attrs.frozen
class Components:
    """A run's components. ``source`` is None when built from a known ``spec`` (an export)."""

    source: DataSource | None
    spec: DataSpec
    objective: Objective
    backbone: Backbone


def build_components(config, registry: Registry, *, spec: DataSpec | None = None,
                     sampling: bool = False) -> Components:
    """Build the components ``config`` (a :class:`onestep.config.RunConfig`) names. Given
    ``spec``, the data source is not built (an export samples without its training data).
    ``sampling`` builds the objective without coupler or guidance (see
    :meth:`Registry.build_objective`)."""
    source = None
    if spec is None:
        source = registry.build("data", config.data.name, config.data.config)
        spec = source.spec()
    objective = registry.build_objective(config, spec, sampling=sampling)
    backbone = registry.build("backbone", config.backbone.name, config.backbone.config)
    return Components(source, spec, objective, backbone)

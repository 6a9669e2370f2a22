"""The core's own plugin: built-in data sources and metrics, registered through the same entry
point group as every third-party plugin."""
from .hookspecs import hookimpl


@hookimpl
def onestep_data_sources():
    from .data.idx import IDX_SOURCES
    from .data.images import IMAGE_SOURCES
    from .data.latents import Latents
    from .data.synthetic import SyntheticLatents
    from .data.toy import TOY_SOURCES

    return [*TOY_SOURCES, *IMAGE_SOURCES, *IDX_SOURCES, Latents, SyntheticLatents]


@hookimpl
def onestep_metrics():
    from .metrics.conditional import ClassAccuracy
    from .metrics.fidelity import FIDELITY_METRICS
    from .metrics.toy import ModeCoverage, SinkhornDivergence

    return [SinkhornDivergence, ModeCoverage, *FIDELITY_METRICS, ClassAccuracy]

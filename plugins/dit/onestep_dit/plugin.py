from onestep.hookspecs import hookimpl


@hookimpl
def onestep_backbones():
    from .dit import DiTBackbone, RecursiveDiTBackbone

    return [DiTBackbone, RecursiveDiTBackbone]

from onestep.hookspecs import hookimpl


@hookimpl
def onestep_backbones():
    from .network import MLPBackbone

    return [MLPBackbone]

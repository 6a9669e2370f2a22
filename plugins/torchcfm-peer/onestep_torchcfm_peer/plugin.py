from onestep.hookspecs import hookimpl


@hookimpl
def onestep_objectives():
    from .objective import TorchCFMOTCFM

    return [TorchCFMOTCFM]

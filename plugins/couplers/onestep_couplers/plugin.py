from onestep.hookspecs import hookimpl


@hookimpl
def onestep_couplers():
    from .couplers import Independent, MinibatchOT
    from .online import OnlineOT

    return [Independent, MinibatchOT, OnlineOT]

from onestep.hookspecs import hookimpl


@hookimpl
def onestep_couplers():
    from .couplers import Independent, MinibatchOT
    from .online import OnlineOT
    from .semidiscrete import SemiDiscreteOT

    return [Independent, MinibatchOT, OnlineOT, SemiDiscreteOT]

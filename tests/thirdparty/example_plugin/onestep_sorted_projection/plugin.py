from onestep.hookspecs import hookimpl


@hookimpl
def onestep_couplers():
    from .coupler import SortedProjection

    return [SortedProjection]

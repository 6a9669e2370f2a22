from onestep.hookspecs import hookimpl


@hookimpl
def onestep_objectives():
    from .objective import AdversarialFlow

    return [AdversarialFlow]

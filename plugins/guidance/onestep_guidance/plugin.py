from onestep.hookspecs import hookimpl


@hookimpl
def onestep_guidance():
    from .classifier import ClassifierGuidance

    return [ClassifierGuidance]

from onestep.hookspecs import hookimpl


@hookimpl
def onestep_guidance():
    from .classifier import ClassifierGuidance

    return [ClassifierGuidance]


@hookimpl
def onestep_objectives():
    from .classifier import NoisedClassifier

    return [NoisedClassifier]

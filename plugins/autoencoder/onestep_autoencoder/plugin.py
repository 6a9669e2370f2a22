from onestep.hookspecs import hookimpl


@hookimpl
def onestep_data_sources():
    from .source import Autoencoded

    return [Autoencoded]

from onestep.hookspecs import hookimpl


@hookimpl
def onestep_data_sources():
    from .latents import Latents
    from .source import Autoencoded, AutoencodedKL

    return [Autoencoded, AutoencodedKL, Latents]


@hookimpl
def onestep_commands(subparsers):
    from .encode_command import register

    register(subparsers)

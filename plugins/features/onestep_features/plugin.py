from onestep.hookspecs import hookimpl


@hookimpl
def onestep_feature_networks():
    from .conv_mae import ConvMAEFeatures
    from .identity import IdentityFeatures
    from .latent_mae import LatentMAEFeatures

    return [IdentityFeatures, ConvMAEFeatures, LatentMAEFeatures]

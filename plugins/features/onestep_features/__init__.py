"""onestep feature networks (frozen maps phi in which an objective measures distances): the
identity (pixel space), a masked convolutional autoencoder trained once on the data and cached,
and a loader of local encoder weights (latent space at ImageNet scale)."""
from .encoder import ConvEncoder, EncoderArch, load_encoder, save_encoder

__all__ = ["ConvEncoder", "EncoderArch", "load_encoder", "save_encoder"]

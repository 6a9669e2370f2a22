"""onestep's latent data sources: ``autoencoded`` (an MLP autoencoder's flat code) and
``autoencoded-kl`` (a diffusers ``AutoencoderKL``'s spatial latent), both trained once on an image
source and cached, and ``latents`` (images encoded with a pre-trained diffusers VAE by
``onestep encode``); every one decodes its samples back to images."""
from .network import Autoencoder, AutoencoderArch, load_autoencoder, save_autoencoder

__all__ = ["Autoencoder", "AutoencoderArch", "load_autoencoder", "save_autoencoder"]

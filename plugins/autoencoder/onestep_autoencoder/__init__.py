"""onestep data source ``autoencoded``: train a one-step generator in the small latent of an
autoencoder of any image source (trained once, cached), and judge it on that source's pixels."""
from .network import Autoencoder, AutoencoderArch, load_autoencoder, save_autoencoder

__all__ = ["Autoencoder", "AutoencoderArch", "load_autoencoder", "save_autoencoder"]

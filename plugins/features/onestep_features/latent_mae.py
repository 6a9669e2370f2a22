"""``latent-mae``: a feature encoder loaded from a local weights file, for latent-space training
at ImageNet scale (e.g. 4 x 32 x 32 SD-VAE latents), where the encoder is trained elsewhere once
(longer and larger than a run's preparation should take) and shipped as a file.

The file is the safetensors layout of :mod:`onestep_features.encoder` (architecture in its
metadata): ``conv-mae``'s cache file trained on the same latent data is one, and weights of
another MAE encoder of this architecture can be written with ``save_encoder``. Nothing is
downloaded, nothing is unpickled.
"""
from __future__ import annotations

import attrs
import torch

from onestep.errors import ConfigError, OnestepError
from onestep.interfaces import DataSource, FeatureNetwork

from .encoder import ConvEncoder, load_encoder


@attrs.define
class LatentMAEConfig:
    path: str = ""
    """Local .safetensors file of the encoder (required; read when training starts)."""


class LatentMAEFeatures(FeatureNetwork):
    """Stage maps of a conv encoder loaded from a local weights file (latent space, any scale)."""

    name = "latent-mae"
    Config = LatentMAEConfig

    def __init__(self, config: LatentMAEConfig, *, spec) -> None:
        super().__init__(config, spec=spec)
        if len(spec.shape) != 3:
            raise ConfigError(f"features 'latent-mae': needs image or latent data [C, H, W], got samples of shape "
                              f"{tuple(spec.shape)}")
        self.encoder: ConvEncoder | None = None
        self.meta: dict = {}

    def prepare(self, source: DataSource, device: torch.device) -> None:
        if self.encoder is None:
            if not self.config.path:
                raise ConfigError("features.path: required for features 'latent-mae' (a local .safetensors encoder "
                                  "file, e.g. conv-mae's cache file trained on the same latents)")
            encoder, meta = load_encoder(self.config.path)
            channels = self.spec.shape[0]
            if encoder.arch.in_channels not in (channels, channels + 1):
                raise ConfigError(f"features.path: file {self.config.path!r} holds an encoder of "
                                  f"{encoder.arch.in_channels} input channels; the data have {channels}")
            self.encoder, self.meta = encoder, meta
        self.encoder.to(device)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.encoder is None:
            raise OnestepError("features 'latent-mae' used before prepare(): the objective must prepare its feature "
                               "network (the trainer does so in fit)")
        return self.encoder.encode(x)

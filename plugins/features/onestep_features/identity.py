"""Pixel space as a feature network: phi(x) = x, one vector per sample."""
from __future__ import annotations

import attrs
import torch

from onestep.interfaces import FeatureNetwork


@attrs.define
class IdentityConfig:
    pass


class IdentityFeatures(FeatureNetwork):
    """The identity map: distances in the data's own space (points, pixels or latents), each
    sample one flat vector. The same as configuring no feature network."""

    name = "identity"
    Config = IdentityConfig

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.flatten(1)]

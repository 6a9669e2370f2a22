"""Pair noise with data by sorting both along one direction: the exact optimal transport
coupling in 1D, and a cheap sliced approximation of it in more dimensions."""
import attrs
import torch

from onestep.interfaces import Coupler


@attrs.define
class SortedProjectionConfig:
    random_direction: bool = True  # False: sort along the first coordinate


class SortedProjection(Coupler):
    """Sorts noise and data along a (random) unit direction and pairs them rank by rank."""

    name = "sorted-projection"
    Config = SortedProjectionConfig

    def pair(self, noise, data, y=None):
        d = noise[0].numel()
        u = torch.randn(d, device=noise.device) if self.config.random_direction else torch.eye(d, device=noise.device)[0]
        i = (noise.reshape(len(noise), -1) @ u).argsort()
        j = (data.reshape(len(data), -1) @ u).argsort()
        return noise[i], data[j], None if y is None else y[j]

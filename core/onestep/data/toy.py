"""Low-dimensional toy distributions with known structure (modes and weights where they exist).

Each source draws a fixed, seeded set of points per split, so a held-out ``test`` split is a
second independent sample of the same distribution.
"""
from __future__ import annotations

import math

import attrs
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..interfaces import DataSource, DataSpec
from ..schema import FieldError, check

SPLIT_SEED = {"train": 0, "test": 1}


def _generator(seed: int, split: str) -> torch.Generator:
    if split not in SPLIT_SEED:
        raise ConfigError(f"data split {split!r}: expected one of {', '.join(SPLIT_SEED)}")
    return torch.Generator().manual_seed(1_000_003 * seed + SPLIT_SEED[split])


SIZE = check(lambda v: v >= 1, ">= 1 points per split")


def _mixture_weights(instance, attribute: attrs.Attribute, value: list[float]) -> None:
    """GMM1D's weights: one per mean, each positive."""
    if len(value) != len(instance.means) or not value:
        raise FieldError(attribute.name, "expected as many weights as means (and at least one)")
    if any(w <= 0 for w in value):
        raise FieldError(attribute.name, f"expected positive weights, got {value}")


class _PointSource(DataSource):
    """Shared plumbing: ``_draw(n, gen) -> (x, y)``; datasets are cached per split."""

    dim = 2

    def __init__(self, config) -> None:
        super().__init__(config)
        self._cache: dict[str, TensorDataset] = {}

    def spec(self) -> DataSpec:
        return DataSpec(shape=(self.dim,), num_classes=0, kind="points")

    def dataset(self, split: str) -> TensorDataset:
        if split not in self._cache:
            x, y = self._draw(self.config.size, _generator(self.config.seed, split))
            self._cache[split] = TensorDataset(x.float(), y.long())
        return self._cache[split]

    def _draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _Mixture(_PointSource):
    """A Gaussian mixture given by ``means`` [K, d], ``weights`` [K] and one ``std``."""

    def means(self) -> torch.Tensor:
        raise NotImplementedError

    def weights(self) -> torch.Tensor:
        return torch.full((self.means().shape[0],), 1.0 / self.means().shape[0])

    def modes(self) -> torch.Tensor:
        return self.means()

    def mode_weights(self) -> torch.Tensor:
        return self.weights()

    def spec(self) -> DataSpec:
        k = self.means().shape[0] if self.config.labelled else 0
        return DataSpec(shape=(self.dim,), num_classes=k, kind="points")

    def _draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        comp = torch.multinomial(self.weights(), n, replacement=True, generator=gen)
        noise = torch.randn(n, self.dim, generator=gen) * self.config.std
        y = comp if self.config.labelled else torch.zeros_like(comp)
        return self.means()[comp] + noise, y


@attrs.define
class GMM8Config:
    radius: float = 4.0
    std: float = 0.3
    size: int = attrs.field(default=20000, validator=SIZE)
    seed: int = 0
    labelled: bool = False  # expose the mode index as a class label



class GMM8(_Mixture):
    """Eight equal Gaussians on a circle."""

    name = "gmm8"
    Config = GMM8Config

    def means(self) -> torch.Tensor:
        a = torch.arange(8) * (2 * math.pi / 8)
        return self.config.radius * torch.stack([a.cos(), a.sin()], 1)


@attrs.define
class GMMImbalancedConfig:
    std: float = 0.3
    minority_weight: float = attrs.field(default=0.02, validator=check(lambda v: 0 < v < 0.5, "in (0, 0.5)"))
    """weight of EACH of the two rare modes"""
    minority_distance: float = 10.0  # distance of the rare modes from the origin
    size: int = attrs.field(default=20000, validator=SIZE)
    seed: int = 0
    labelled: bool = False



class GMMImbalanced(_Mixture):
    """Six dominant Gaussians on a ring of radius 3 plus two distant minority modes (the
    W-Flow paper's mode-coverage toy: rare modes far from the bulk)."""

    name = "gmm-imbalanced"
    Config = GMMImbalancedConfig

    def means(self) -> torch.Tensor:
        a = torch.arange(6) * (2 * math.pi / 6)
        ring = 3.0 * torch.stack([a.cos(), a.sin()], 1)
        d = self.config.minority_distance
        rare = torch.tensor([[d, d], [-d, -d]]) / math.sqrt(2)
        return torch.cat([ring, rare])

    def weights(self) -> torch.Tensor:
        m = self.config.minority_weight
        return torch.tensor([(1 - 2 * m) / 6] * 6 + [m, m])


@attrs.define
class GMM1DConfig:
    means: list[float] = attrs.Factory(lambda: [-2.0, 1.0, 3.0])
    weights: list[float] = attrs.field(factory=lambda: [0.5, 0.3, 0.2], validator=_mixture_weights)
    std: float = 0.25
    size: int = attrs.field(default=20000, validator=SIZE)
    seed: int = 0
    labelled: bool = False



class GMM1D(_Mixture):
    """A 1D Gaussian mixture (for checking that a learned map is the monotone OT map)."""

    name = "gmm1d"
    Config = GMM1DConfig
    dim = 1

    def means(self) -> torch.Tensor:
        return torch.tensor(self.config.means).unsqueeze(1)

    def weights(self) -> torch.Tensor:
        w = torch.tensor(self.config.weights)
        return w / w.sum()


@attrs.define
class ShapeConfig:
    noise: float = 0.05
    size: int = attrs.field(default=20000, validator=SIZE)
    seed: int = 0



class Moons(_PointSource):
    """Two interleaving half circles (centred, scaled to about unit variance)."""

    name = "moons"
    Config = ShapeConfig

    def _draw(self, n, gen):
        half = torch.randint(0, 2, (n,), generator=gen)
        a = torch.rand(n, generator=gen) * math.pi
        x = torch.stack([a.cos(), a.sin()], 1)
        x[half == 1] = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)[half == 1]
        x = x + self.config.noise * torch.randn(n, 2, generator=gen)
        return (x - torch.tensor([0.5, 0.25])) * 2.0, torch.zeros(n, dtype=torch.long)


class Checkerboard(_PointSource):
    """A 4x4 checkerboard on [-4, 4]^2 with uniform density on the dark squares."""

    name = "checkerboard"
    Config = ShapeConfig

    def _draw(self, n, gen):
        cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
        pick = cells[torch.randint(0, len(cells), (n,), generator=gen)]
        x = -4 + 2 * pick.float() + 2 * torch.rand(n, 2, generator=gen)
        return x, torch.zeros(n, dtype=torch.long)


class Rings(_PointSource):
    """Three concentric rings of radii 1, 2 and 3, mass proportional to circumference."""

    name = "rings"
    Config = ShapeConfig

    def _draw(self, n, gen):
        radii = torch.tensor([1.0, 2.0, 3.0])
        r = radii[torch.multinomial(radii / radii.sum(), n, replacement=True, generator=gen)]
        a = torch.rand(n, generator=gen) * 2 * math.pi
        x = r.unsqueeze(1) * torch.stack([a.cos(), a.sin()], 1)
        return x + self.config.noise * torch.randn(n, 2, generator=gen), torch.zeros(n, dtype=torch.long)


TOY_SOURCES = [GMM8, GMMImbalanced, GMM1D, Moons, Checkerboard, Rings]

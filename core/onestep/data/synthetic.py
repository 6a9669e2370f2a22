"""``synthetic-latents``: random class-labelled latents of a chosen shape, drawn in memory.

What it is for: running a recipe written for real latents (the ImageNet-256 presets expect a
``.npz`` from ``onestep encode``, 1.28M latents of 4 x 32 x 32) without that file, to measure
its speed and memory (``onestep estimate``) or to check that it runs end to end, checkpoints and
resumes. Each class k has a fixed random mean m_k and samples are ``x = m_k + noise``, scaled so
every coordinate has unit variance (like VAE latents after their scaling factor); nothing about
the data is meant to be learned from it. ``decode`` is the identity: a sample grid shows the
first three latent channels.
"""
from __future__ import annotations

import math
from typing import Optional

import attrs
import numpy as np

from ..errors import ConfigError
from .images import _ArraySource


@attrs.define
class SyntheticLatentsConfig:
    shape: list[int] = attrs.Factory(lambda: [4, 32, 32])  # per-sample shape [C, H, W] (SD-VAE latents of 256 px images)
    num_classes: int = 1000  # labels 0..num_classes-1, in turn (ImageNet's 1000)
    size: int = 4096  # samples drawn (train and test together)
    class_spread: float = 0.5  # share of each coordinate's variance that the class means carry
    test_fraction: float = 0.05
    seed: int = 0


class SyntheticLatents(_ArraySource):
    """Random labelled latents (class mean + noise, unit variance) for speed and smoke runs."""

    name = "synthetic-latents"
    Config = SyntheticLatentsConfig
    kind = "latents"

    def __init__(self, config) -> None:
        super().__init__(config)
        if len(config.shape) != 3 or any(d < 1 for d in config.shape):
            raise ConfigError(f"data.shape: expected [C, H, W] with every size >= 1, got {config.shape}")
        if config.num_classes < 0:
            raise ConfigError(f"data.num_classes: expected >= 0 (0: unlabelled), got {config.num_classes}")
        if config.size < 2 or config.size < config.num_classes:
            raise ConfigError(f"data.size: expected >= 2 and >= num_classes ({config.num_classes}) so every class "
                              f"has a sample, got {config.size}")
        if not 0.0 <= config.class_spread < 1.0:
            raise ConfigError(f"data.class_spread: expected in [0, 1), got {config.class_spread}")

    def _load(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        c = self.config
        rng = np.random.default_rng(c.seed)
        x = rng.standard_normal((c.size, *c.shape), dtype=np.float32)
        if c.num_classes == 0:
            return x, None
        y = np.arange(c.size, dtype=np.int64) % c.num_classes
        means = rng.standard_normal((c.num_classes, *c.shape), dtype=np.float32)
        x *= np.float32(math.sqrt(1.0 - c.class_spread))
        x += np.float32(math.sqrt(c.class_spread)) * means[y]
        return x, y

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

from ..schema import FieldError, at_least, check
from .images import TEST_FRACTION, _ArraySource


def _every_class_drawn(instance, attribute: attrs.Attribute, value: int) -> None:
    if value < 2 or value < instance.num_classes:
        raise FieldError(attribute.name, f"expected >= 2 and >= num_classes ({instance.num_classes}) so every class "
                         f"has a sample, got {value}")


@attrs.define
class SyntheticLatentsConfig:
    shape: list[int] = attrs.field(factory=lambda: [4, 32, 32], validator=check(
        lambda v: len(v) == 3 and all(d >= 1 for d in v), "[C, H, W] with every size >= 1"))
    """per-sample shape [C, H, W] (SD-VAE latents of 256 px images)"""
    num_classes: int = attrs.field(default=1000, validator=at_least(0, "unlabelled"))
    """labels 0..num_classes-1, in turn (ImageNet's 1000)"""
    size: int = attrs.field(default=4096, validator=_every_class_drawn)  # samples drawn (train and test together)
    class_spread: float = attrs.field(default=0.5, validator=check(lambda v: 0.0 <= v < 1.0, "in [0, 1)"))
    """share of each coordinate's variance that the class means carry"""
    test_fraction: float = attrs.field(default=0.05, validator=TEST_FRACTION)
    seed: int = 0


class SyntheticLatents(_ArraySource):
    """Random labelled latents (class mean + noise, unit variance) for speed and smoke runs."""

    name = "synthetic-latents"
    Config = SyntheticLatentsConfig
    kind = "latents"

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

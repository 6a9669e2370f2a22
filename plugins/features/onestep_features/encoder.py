"""The convolutional encoder shared by ``conv-mae`` and ``latent-mae``, and its weights file.

The encoder is a stem convolution followed by ``stages`` stages, each a stride-2 convolution that
doubles the channels and ``blocks`` residual blocks (GroupNorm, so every row depends on its own
sample only). Its features are the output map of every stage: for 28x28 MNIST at width 32,
maps of 32 x 14 x 14, 64 x 7 x 7 and 128 x 4 x 4; for 4 x 32 x 32 VAE latents at width 128,
128 x 16 x 16, 256 x 8 x 8 and 512 x 4 x 4.

A weights file is a safetensors file (no pickle) of the encoder's state dict whose metadata
carry ``format = onestep-feature-encoder``, the file ``version`` and the architecture as JSON,
so a loader rebuilds the network from the file alone.
"""
from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import nn

from onestep.errors import ConfigError
from onestep.files import read_weights_file, save_weights_file

FORMAT = "onestep-feature-encoder"
VERSION = "1"


@attrs.frozen
class EncoderArch:
    in_channels: int
    width: int = 32
    stages: int = 3
    blocks: int = 1

    def channels(self, stage: int) -> int:
        return self.width * 2 ** stage


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class ConvEncoder(nn.Module):
    """``forward(x)`` [B, C, H, W] -> the list of stage maps, finest first. ``in_channels`` may
    exceed the data's channels by one: the MAE's mask indicator (zero when encoding whole
    samples)."""

    def __init__(self, arch: EncoderArch) -> None:
        super().__init__()
        self.arch = arch
        self.stem = nn.Conv2d(arch.in_channels, arch.width, 3, padding=1)
        stages = []
        c_in = arch.width
        for s in range(arch.stages):
            c = arch.channels(s)
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                                        *[ResBlock(c) for _ in range(arch.blocks)]))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps of whole samples ``x`` [B, C, H, W]: with an all-zero mask channel appended when
        the encoder was trained as a masked autoencoder (``in_channels == C + 1``)."""
        c = self.arch.in_channels
        if x.shape[1] == c - 1:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)
        elif x.shape[1] != c:
            raise ValueError(f"feature encoder: built for {c} input channels (or {c - 1} plus a mask), "
                             f"got samples of {x.shape[1]}")
        return self(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps


def save_encoder(encoder: ConvEncoder, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``encoder`` to ``path`` (safetensors with its architecture), atomically."""
    return save_weights_file(encoder.state_dict(), path, FORMAT, VERSION, attrs.asdict(encoder.arch), meta)


def load_encoder(path: str | Path, field: str = "features.path") -> tuple[ConvEncoder, dict]:
    """The encoder stored at ``path`` (eval mode, frozen, CPU) and its ``meta``; every problem
    with the file is a one-line ``ConfigError`` naming ``field`` and the file."""
    tensors, arch, meta = read_weights_file(
        path, field, FORMAT, VERSION, "onestep feature encoder",
        missing=" (a local weights file written by onestep's conv-mae or save_encoder; feature weights are never downloaded)")
    try:
        with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the run's RNG alone
            encoder = ConvEncoder(EncoderArch(**arch))
        encoder.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{field}: file {str(path)!r} does not hold a valid encoder ({' '.join(str(exc).split())[:160]})") from None
    return encoder.eval().requires_grad_(False), meta

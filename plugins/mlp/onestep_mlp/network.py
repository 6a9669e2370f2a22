"""A residual MLP that serves every role on flattened inputs: small enough for toy data and
8x8/28x28 digits on a CPU, and the reference backbone for tests."""
from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from onestep.interfaces import Backbone, DataSpec, NetworkRequest


@attrs.define
class MLPConfig:
    width: int = 256
    depth: int = 4  # residual blocks
    time_features: int = 32  # sinusoidal features per time input
    class_embedding: int = 64
    generator_out_norm: bool = False
    """LayerNorm before a generator's output layer. Off by default: a normalised hidden state
    carries its direction but not its size, so on low-dimensional data the generator's output
    becomes a function of the direction of its input and its samples lie on a closed curve (a
    thin ring through the modes of a 2-D mixture, whatever the objective). Critic and classifier
    heads always keep it. The MNIST-latent presets and the demo pin ``true``: their numbers
    were measured with it."""


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] sin/cos features at log-spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=t.device))
    ang = t.float().unsqueeze(1) * freqs * math.pi
    return torch.cat([ang.sin(), ang.cos()], 1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class MLP(nn.Module):
    """forward(x, s=None, t=None, y=None): input, times and label embedding are concatenated."""

    def __init__(self, cfg: MLPConfig, request: NetworkRequest, spec: DataSpec) -> None:
        super().__init__()
        self.shape = spec.shape
        self.request = request
        self.time_features = cfg.time_features
        n_in = spec.numel + request.time_inputs * cfg.time_features
        self.label = None
        if request.class_conditional:
            if spec.num_classes < 1:
                raise ValueError("backbone mlp: a class-conditional network needs data with num_classes > 0")
            self.label = nn.Embedding(spec.num_classes + 1, cfg.class_embedding)
            n_in += cfg.class_embedding
        n_out = {"generator": spec.numel, "critic": 1, "classifier": max(spec.num_classes, 1)}[request.role]
        self.inp = nn.Linear(n_in, cfg.width)
        self.blocks = nn.Sequential(*[ResidualBlock(cfg.width) for _ in range(cfg.depth)])
        self.out_norm = request.role != "generator" or cfg.generator_out_norm
        norm = nn.LayerNorm(cfg.width) if self.out_norm else nn.Identity()  # keeps the head's key names
        self.out = nn.Sequential(norm, nn.SiLU(), nn.Linear(cfg.width, n_out))
        self._register_load_state_dict_pre_hook(self._check_out_norm)

    def _check_out_norm(self, state_dict, prefix, *args) -> None:
        """Weights saved with the other ``generator_out_norm`` fail with a one-line error naming
        the setting (instead of torch's list of missing and unexpected keys)."""
        saved = f"{prefix}out.0.weight" in state_dict
        if saved != self.out_norm:
            raise ValueError(f"backbone mlp: these weights were trained with backbone.generator_out_norm={str(saved).lower()}; "
                             f"set it (this run has {str(self.out_norm).lower()})")

    def forward(self, x, s=None, t=None, y=None):
        parts = [x.reshape(len(x), -1)]
        times = [v for v in (s, t) if v is not None]
        if len(times) != self.request.time_inputs:
            raise ValueError(f"backbone mlp: built for {self.request.time_inputs} time inputs, got {len(times)}")
        parts += [sinusoidal(v.reshape(-1).expand(len(x)), self.time_features).to(x.dtype) for v in times]
        if self.label is not None:
            if y is None:
                raise ValueError("backbone mlp: class-conditional network called without labels y")
            parts.append(self.label(y).to(x.dtype))
        h = self.out(self.blocks(self.inp(torch.cat(parts, 1))))
        if self.request.role == "generator":
            return h.reshape(len(x), *self.shape)
        if self.request.role == "critic":
            return h.squeeze(1)
        return h


class MLPBackbone(Backbone):
    """Residual MLP on flattened inputs with sinusoidal time features and a label embedding."""

    name = "mlp"
    Config = MLPConfig

    def build(self, request: NetworkRequest, spec: DataSpec) -> nn.Module:
        return MLP(self.config, request, spec)

"""The autoencoder behind the ``autoencoded`` data source: an MLP from a flattened image to a
``dim``-vector and back, its training recipe, and its weights file.

Why a small flat latent: a one-step generator maps N(0, I) onto the data in one evaluation, and
how hard that map is depends on the space. In 784 MNIST pixels the optimal-transport map from a
Gaussian onto 60,000 digits is a quantiser of a 784-dimensional Gaussian with 6,000 levels per
class (OT-NFM's pairs keep almost nothing of their noise); in 16 dimensions the same data quantise
the Gaussian finely and the map is nearly smooth. The latent diffusion recipe (Rombach et al. 2022)
makes the same trade at ImageNet scale with a VAE; this is its MNIST-sized counterpart, trained in
seconds on a GPU and a few minutes on a CPU, and cached.

Recipe: MSE reconstruction through ``tanh`` (images live in [-1, 1]), Gaussian noise of standard
deviation ``latent_noise`` on the code while training (a decoder that is smooth around each code,
so a generated latent a little off the data still decodes to a clean image) and a small L2 penalty
on the code (keeps its scale fixed against that noise). Model space is the code standardised per
dimension with the training split's mean and standard deviation, stored with the weights.
"""
from __future__ import annotations

from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from onestep.errors import ConfigError
from onestep.files import read_weights_file, save_weights_file

from .training import fit

FORMAT = "onestep-autoencoder"
VERSION = "1"


@attrs.define
class AutoencoderArch:
    """The shape of the network (stored in its weights file)."""

    shape: tuple[int, ...]
    dim: int
    width: int
    depth: int

    def __attrs_post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)


def _mlp(n_in: int, n_out: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width if depth else n_in, n_out))


class Autoencoder(nn.Module):
    """``encode``: images [B, *shape] -> standardised codes [B, dim]; ``decode``: back to images
    in [-1, 1]. ``mean`` and ``std`` (buffers) standardise the raw code."""

    def __init__(self, arch: AutoencoderArch) -> None:
        super().__init__()
        self.arch = arch
        numel = 1
        for s in arch.shape:
            numel *= s
        self.encoder = _mlp(numel, arch.dim, arch.width, arch.depth)
        self.decoder = _mlp(arch.dim, numel, arch.width, arch.depth)
        self.register_buffer("mean", torch.zeros(arch.dim))
        self.register_buffer("std", torch.ones(arch.dim))

    def raw_code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(len(x), -1))

    def raw_decode(self, code: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(code)).reshape(len(code), *self.arch.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw_code(x) - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.raw_decode(z * self.std + self.mean)


@attrs.define
class TrainRecipe:
    steps: int
    batch_size: int
    lr: float
    latent_noise: float
    code_penalty: float
    seed: int
    checkpoint_every: int = 1000


def train_autoencoder(x: torch.Tensor, arch: AutoencoderArch, recipe: TrainRecipe, device: torch.device,
                      partial: Path, log=None) -> tuple[Autoencoder, dict]:
    """Train on images ``x`` [N, *shape]; returns the network (CPU, eval, frozen, standardisation
    set from ``x``) and numbers. Resumes from ``partial`` when it exists and checkpoints there every
    ``recipe.checkpoint_every`` steps, so an interrupted training continues where it stopped. Uses
    its own RNG streams: a run's randomness is the same with or without a cache hit."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)
        net = Autoencoder(arch).to(device)

    def step_loss(xb: torch.Tensor, noise: torch.Tensor):
        code = net.raw_code(xb)
        loss = F.mse_loss(net.raw_decode(code + recipe.latent_noise * noise), xb) + recipe.code_penalty * code.pow(2).mean()
        return loss, {"loss": loss}

    last = fit(net, [*net.encoder.parameters(), *net.decoder.parameters()], x, (arch.dim,), recipe, device, partial,
               step_loss, log)
    data = x.to(device)
    with torch.no_grad():
        codes = torch.cat([net.raw_code(data[i:i + 4096]) for i in range(0, len(data), 4096)])
        net.mean.copy_(codes.mean(0))
        net.std.copy_(codes.std(0).clamp_min(1e-6))
    return net.cpu(), {"final_loss": float(last.get("loss", 0.0)), "steps": recipe.steps}


def save_autoencoder(net: Autoencoder, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``net`` (weights, standardisation, arch, ``meta``) to a safetensors file, atomically."""
    return save_weights_file(net.state_dict(), path, FORMAT, VERSION, attrs.asdict(net.arch), meta)


def load_autoencoder(path: str | Path, field: str = "data.cache_dir") -> tuple[Autoencoder, dict]:
    """The autoencoder stored at ``path`` (CPU, eval, frozen) and its ``meta``; every problem with
    the file is a one-line ``ConfigError`` naming ``field`` and the file. Never unpickles."""
    tensors, arch, meta = read_weights_file(path, field, FORMAT, VERSION, "onestep autoencoder",
                                            unreadable="; delete it to train the autoencoder again")
    try:
        with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the run's RNG alone
            net = Autoencoder(AutoencoderArch(**arch))
        net.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{field}: {str(path)!r} does not hold a valid autoencoder ({' '.join(str(exc).split())[:160]})") from None
    return net.eval().requires_grad_(False), meta

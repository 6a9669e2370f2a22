"""The spatial autoencoder behind the ``autoencoded-kl`` data source: diffusers' ``AutoencoderKL``
(the SD-VAE class of latent diffusion, Rombach et al. 2022) at the widths of a small image set,
its training recipe and its weights file.

Why spatial: the papers train DiTs on a VAE latent that keeps the image's layout (ImageNet-256 ->
4 x 32 x 32, patch 2). The ``autoencoded`` source's flat code is easier for a one-step generator
but says nothing about a DiT on latent patches; this is the same setting at MNIST size
(28 x 28 -> ``latent_channels`` x 7 x 7 with two down-samplings).

Recipe: the SD-VAE objective without its perceptual and adversarial terms (MNIST needs neither):
mean squared reconstruction error of a posterior sample ``mean + std * noise`` plus
``kl_weight`` times the mean KL divergence per latent element from N(0, I). The sampled latent
is what makes the decoder smooth around each code, so a generated latent a little off the data
still decodes to a clean digit. Model space is the posterior mean mapped by
``(latent - shift_factor) * scaling_factor`` with the mean and the inverse standard deviation of
the training latents: the diffusers convention (SD3 and FLUX store both factors in the VAE's
config), so the same decoder serves this network and any diffusers VAE of ``onestep encode``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from onestep.errors import ConfigError
from onestep.files import read_weights_file, save_weights_file

from .diffusers_vae import import_diffusers
from .training import fit

FORMAT = "onestep-autoencoder-kl"
VERSION = "1"


@attrs.define
class KLArch:
    """The network's shape: image ``shape`` [C, H, W], ``widths`` per resolution (one
    down-sampling between neighbours), ``layers_per_block`` residual blocks at each."""

    shape: tuple[int, ...]
    latent_channels: int
    widths: tuple[int, ...]
    layers_per_block: int

    def __attrs_post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.widths = tuple(int(w) for w in self.widths)

    def factor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def latent_shape(self) -> tuple[int, int, int]:
        _, h, w = self.shape
        f = self.factor()
        return (self.latent_channels, -(-h // f), -(-w // f))

    def diffusers_config(self) -> dict[str, Any]:
        """``AutoencoderKL``'s constructor arguments for this shape."""
        n = len(self.widths)
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in self.widths))
        return {"in_channels": self.shape[0], "out_channels": self.shape[0], "latent_channels": self.latent_channels,
                "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
                "block_out_channels": list(self.widths), "layers_per_block": self.layers_per_block,
                "norm_num_groups": groups, "sample_size": self.shape[1]}


def build_network(arch: KLArch) -> nn.Module:
    """A fresh ``AutoencoderKL`` of ``arch``; its latent factors are set once training ends."""
    return import_diffusers().AutoencoderKL(**arch.diffusers_config(), scaling_factor=1.0, shift_factor=0.0)


@attrs.define
class KLRecipe:
    steps: int
    batch_size: int
    lr: float
    kl_weight: float
    seed: int
    checkpoint_every: int = 1000


def posterior(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's posterior mean and log-variance for images ``x``."""
    dist = net.encode(x).latent_dist
    return dist.mean, dist.logvar


def train_kl(x: torch.Tensor, arch: KLArch, recipe: KLRecipe, device: torch.device, partial: Path,
             log=None) -> tuple[nn.Module, dict]:
    """Train on images ``x`` [N, C, H, W] in [-1, 1]; returns the network (CPU, eval, frozen, its
    scaling and shift factors set from the training latents) and numbers. Resumes from ``partial``
    when it exists and checkpoints there every ``recipe.checkpoint_every`` steps. Uses its own RNG
    streams, so a run's randomness is the same with or without a cache hit."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)
        net = build_network(arch).to(device)

    def step_loss(xb: torch.Tensor, noise: torch.Tensor):
        mean, logvar = posterior(net, xb)
        rec = F.mse_loss(net.decode(mean + (0.5 * logvar).exp() * noise).sample, xb)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return rec + recipe.kl_weight * kl, {"mse": rec, "kl": kl}

    last = fit(net, net.parameters(), x, arch.latent_shape(), recipe, device, partial, step_loss, log)
    data = x.to(device)
    with torch.no_grad():
        means, stds = [], []
        for chunk in data.split(1024):
            mean, logvar = posterior(net, chunk)
            means.append(mean)
            stds.append((0.5 * logvar).exp().mean())
        means = torch.cat(means)
        shift, spread = float(means.mean()), float(means.std())
    net.register_to_config(scaling_factor=1.0 / max(spread, 1e-6), shift_factor=shift)
    numbers = {"final_mse": float(last.get("mse", 0.0)), "final_kl": float(last.get("kl", 0.0)), "steps": recipe.steps,
               "posterior_std_over_latent_std": float(torch.stack(stds).mean()) / max(spread, 1e-6)}
    return net.cpu(), numbers


def save_kl(net: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``net`` (weights, and its diffusers config with the latent factors) to a safetensors
    file, atomically."""
    return save_weights_file(net.state_dict(), path, FORMAT, VERSION, dict(net.config), meta)


def load_kl(path: str | Path, field: str = "data.cache_dir") -> tuple[nn.Module, dict]:
    """The ``AutoencoderKL`` stored at ``path`` (CPU, eval, frozen) and its ``meta``; every problem
    with the file is a one-line ``ConfigError`` naming ``field`` and the file. Never unpickles."""
    tensors, config, meta = read_weights_file(path, field, FORMAT, VERSION, "onestep spatial autoencoder",
                                              unreadable="; delete it to train the autoencoder again")
    AutoencoderKL = import_diffusers().AutoencoderKL
    try:
        with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the run's RNG alone
            net = AutoencoderKL.from_config(config)
        net.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"{field}: {str(path)!r} does not hold a valid AutoencoderKL ({' '.join(str(exc).split())[:160]})") from None
    return net.eval().requires_grad_(False), meta

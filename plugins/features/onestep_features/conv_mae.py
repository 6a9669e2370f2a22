"""``conv-mae``: a masked convolutional autoencoder trained once on the data's ``train`` split;
its encoder's stage maps are the features.

Why this network: the feature space must make distances between samples mean something about
their content (strokes, parts, shape), which raw pixels do poorly (an entropic plan in pixel
space spreads each row over most digits of the batch, so every Sinkhorn target is a blur). A
masked autoencoder learns such features without labels: it sees each image with a random
fraction of ``mask_patch``-sized squares hidden (drawn per image in ``[0, mask_ratio]``, plus
an indicator channel of what is hidden) and must reconstruct the whole image, so its deeper maps
encode how parts go together rather than copy pixels. It is unsupervised on purpose: a
label-trained network would share its notion of similarity with the classifier that FID uses,
and it is never that classifier (its own class, recipe and cache). Convolutional, so the same
recipe serves 8x8 digits, 28x28 MNIST and 4 x 32 x 32 VAE latents.

Cache: ``$ONESTEP_CACHE/feature-networks/<data>-conv-mae-<key>.safetensors`` (or ``cache_dir``),
key = hash of the data source's name and config, the data shape and this recipe. The file is
written atomically once training ends and is a ``latent-mae`` weights file too. Training
checkpoints itself after every epoch next to it (``.partial.pt``), so an interrupted run
resumes where it stopped; a finished file is reloaded without training. Offline throughout.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from onestep.config import unstructure
from onestep.errors import ConfigError, OnestepError
from onestep.config import FieldError, at_least, check
from onestep.files import cache_root, load_partial, save_partial
from onestep.interfaces import DataSource, FeatureNetwork

from .encoder import ConvEncoder, EncoderArch, ResBlock, _norm, load_encoder, save_encoder

RECIPE_VERSION = 1


def _stage_indices(instance, attribute: attrs.Attribute, value: list[int]) -> None:
    if any(not 0 <= m < instance.stages for m in value) or len(set(value)) != len(value):
        raise FieldError(attribute.name, f"expected distinct stage indices in 0..{instance.stages - 1}, got {value}")


@attrs.define
class ConvMAEConfig:
    width: int = attrs.field(default=32, validator=at_least(1))
    """Channels of the first stage; each further stage doubles them."""
    stages: int = attrs.field(default=3, validator=at_least(1))
    """Stride-2 stages; each gives one feature map (28x28 -> 14, 7, 4)."""
    blocks: int = attrs.field(default=1, validator=at_least(1))
    """Residual blocks per stage."""
    mask_ratio: float = attrs.field(default=0.75, validator=check(lambda v: 0.0 <= v < 1.0, "in [0, 1)"))
    """Largest fraction of squares hidden; each training image draws its fraction in [0, this]."""
    mask_patch: int = attrs.field(default=4, validator=at_least(1))
    """Side of a hidden square, in pixels (or latent cells)."""
    epochs: int = attrs.field(default=10, validator=at_least(1))
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    lr: float = 2e-3
    seed: int = 0
    maps: list[int] = attrs.field(factory=list, validator=_stage_indices)
    """Stages whose maps are the features (0 = the finest); empty: all. Not part of the cache key."""
    flatten: bool = False
    """Give each map as one vector per sample ([B, C H W]): whole-sample plans in feature space
    instead of one plan per location. Not part of the cache key."""
    cache_dir: str = ""
    """Folder of the cached weights; "": $ONESTEP_CACHE/feature-networks (else ~/.cache/onestep/...)."""


class ConvDecoder(nn.Module):
    """The encoder's last map back to a sample: per stage a residual block, 2x nearest upsampling
    and a convolution; the output is resized to the sample's size (stride-2 rounding)."""

    def __init__(self, arch: EncoderArch, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for s in reversed(range(arch.stages)):
            c, c_out = arch.channels(s), arch.channels(s - 1) if s > 0 else arch.width
            layers += [ResBlock(c), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1)]
        layers += [_norm(arch.width), nn.SiLU(), nn.Conv2d(arch.width, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.size = tuple(size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.net(h)
        return out if tuple(out.shape[-2:]) == self.size else F.interpolate(out, self.size, mode="bilinear")




def recipe(config: ConvMAEConfig) -> dict:
    """The fields that decide the trained network (all but where it is cached)."""
    return {k: v for k, v in attrs.asdict(config).items() if k not in ("cache_dir", "maps", "flatten")}


def cache_path(source: DataSource, config: ConvMAEConfig) -> Path:
    key = json.dumps({"source": source.name, "config": unstructure(source.config), "shape": list(source.spec().shape),
                      "recipe": recipe(config), "version": RECIPE_VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (Path(config.cache_dir) if config.cache_dir else cache_root("feature-networks")) / f"{source.name}-conv-mae-{digest}.safetensors"


def train_images(source: DataSource, split: str = "train") -> torch.Tensor:
    ds = source.dataset(split)
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[0].float()
    return torch.stack([ds[i][0] for i in range(len(ds))]).float()


def random_mask(n: int, shape: tuple[int, int], patch: int, max_ratio: float, g: torch.Generator) -> torch.Tensor:
    """[n, 1, H, W] with 1 on hidden squares: each sample hides a fraction U(0, max_ratio) of its
    ``patch`` x ``patch`` squares."""
    rows, cols = -(-shape[0] // patch), -(-shape[1] // patch)
    ratio = torch.rand(n, 1, 1, generator=g) * max_ratio
    hidden = (torch.rand(n, rows, cols, generator=g) < ratio).float()
    return hidden.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None, :shape[0], :shape[1]]


def train_mae(x: torch.Tensor, config: ConvMAEConfig, device: torch.device, partial: Path,
              log=None) -> tuple[ConvEncoder, dict]:
    """Train the masked autoencoder on ``x`` [N, C, H, W]; the encoder (CPU, frozen) and numbers.
    Resumes from ``partial`` when it exists and checkpoints there after every epoch. Uses its
    own RNG streams, so a run's randomness is the same with or without a cache hit."""
    n, c, h, w = x.shape
    arch = EncoderArch(in_channels=c + 1, width=config.width, stages=config.stages, blocks=config.blocks)
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        encoder, decoder = ConvEncoder(arch).to(device), ConvDecoder(arch, c, (h, w)).to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    start = load_partial(partial, g, encoder=encoder, decoder=decoder, optimizer=opt, scheduler=sched)
    loss = torch.zeros(())
    for epoch in range(start, config.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(steps_per_epoch):
            xb = x[perm[i * batch:(i + 1) * batch]].to(device)
            mask = random_mask(len(xb), (h, w), config.mask_patch, config.mask_ratio, g).to(device)
            rec = decoder(encoder(torch.cat([xb * (1 - mask), mask], 1))[-1])
            loss = F.mse_loss(rec, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        save_partial(partial, epoch + 1, g, encoder=encoder, decoder=decoder, optimizer=opt, scheduler=sched)
        if log is not None:
            log(epoch=epoch + 1, loss=float(loss))
    return encoder.cpu().eval().requires_grad_(False), {"final_loss": float(loss.detach()), "epochs": config.epochs}


def ensure_mae(source: DataSource, config: ConvMAEConfig, device: torch.device, log=None) -> Path:
    """Path of the cached encoder for ``source`` and ``config``; trains and writes it on a miss
    (resuming an interrupted training). With several processes, rank 0 trains, the rest wait."""
    from onestep.distributed import barrier

    path = cache_path(source, config)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if not path.is_file() and rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.pt")
        encoder, numbers = train_mae(train_images(source), config, device, partial, log)
        save_encoder(encoder, path, {"source": source.name, "recipe": recipe(config), **numbers})
        partial.unlink(missing_ok=True)
    barrier()
    return path


class ConvMAEFeatures(FeatureNetwork):
    """Stage maps of a masked conv autoencoder trained once on the train split (cached)."""

    name = "conv-mae"
    Config = ConvMAEConfig

    def __init__(self, config: ConvMAEConfig, *, spec) -> None:
        super().__init__(config, spec=spec)
        if len(spec.shape) != 3:
            raise ConfigError(f"features 'conv-mae': needs image or latent data [C, H, W], got samples of shape "
                              f"{tuple(spec.shape)} (use features=identity, or none, for points)")
        self.encoder: ConvEncoder | None = None
        self.meta: dict = {}

    def prepare(self, source: DataSource, device: torch.device) -> None:
        if self.encoder is None:
            self.encoder, self.meta = load_encoder(ensure_mae(source, self.config, device), "features.cache_dir")
        self.encoder.to(device)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.encoder is None:
            raise OnestepError("features 'conv-mae' used before prepare(): the objective must prepare its feature "
                               "network (the trainer does so in fit)")
        maps = self.encoder.encode(x)
        maps = [maps[i] for i in sorted(self.config.maps)] if self.config.maps else maps
        return [m.flatten(1) for m in maps] if self.config.flatten else maps

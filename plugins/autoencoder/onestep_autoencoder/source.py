"""The latent sources of trained autoencoders: any installed image source (``data.source``, its
config in ``data.source_options``) seen through an autoencoder trained once on that source's
``train`` split and cached. Methods train and sample in the autoencoder's standardised latent;
``decode`` turns samples back into the source's images for grids, exports and image metrics.

- ``autoencoded``: a small MLP autoencoder to a flat ``dim``-vector (:mod:`.network`);
- ``autoencoded-kl``: diffusers' ``AutoencoderKL`` to a spatial latent ``[C, h, w]``
  (:mod:`.kl`), the papers' setting (a DiT on latent patches) at the size of the data.

Scoring is in the source's own pixels: ``image_source()`` is the wrapped source, so FID, KID,
precision/recall and class accuracy use its held-out images (the real test digits, not their
reconstructions) and its cached classifier: a latent run's numbers sit in the same table as a
pixel run's on the same source. The test split here is the source's test split encoded item by
item in order, which is what lets the metrics pair the two.

Cache: ``$ONESTEP_CACHE/autoencoders/<source>-<ae|kl>-<key>.safetensors`` (or ``cache_dir``), key =
hash of the source's name and config, the network and the recipe. Written atomically once
training ends; an interrupted training resumes from ``.partial.pt`` beside it. Offline.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
from torch.utils.data import TensorDataset

from onestep.config import DEVICE, POSITIVE, at_least, check, structure, unstructure
from onestep.errors import ConfigError
from onestep.files import cache_root
from onestep.interfaces import DataSource, DataSpec

from .diffusers_vae import LatentDecoder, decoder_from_export, encode, export_vae, latent_factors
from .kl import KLArch, KLRecipe, load_kl, save_kl, train_kl
from .network import AutoencoderArch, TrainRecipe, load_autoencoder, save_autoencoder, train_autoencoder

RECIPE_VERSION = 1




class TrainedAutoencoderSource(DataSource):
    """What both autoencoder sources share: the wrapped image source, the cache (trained on a miss,
    by rank 0 only), the encoded splits and the scoring on the wrapped source's images. A subclass
    says which network (``arch``, ``recipe``, ``train_network``, ``load_network``) and how it
    encodes and decodes (``encode_images``, ``decoder``)."""

    tag = ""  # in the cache file's name

    def __init__(self, config) -> None:
        super().__init__(config)
        if config.source == self.name:
            raise ConfigError(f"data.source: {self.name!r} cannot encode itself; name an image source (e.g. mnist-full)")
        self._base: DataSource | None = None
        self._net = None
        self._splits: dict[str, TensorDataset] = {}

    def base(self) -> DataSource:
        """The wrapped image source, built from ``data.source`` and ``data.source_options``."""
        if self._base is None:
            from onestep.registry import Registry

            registry = Registry.discover()
            names = registry.names("data")
            if self.config.source not in names:
                raise ConfigError(f"data.source: unknown data source {self.config.source!r}; installed: {', '.join(names)}")
            info = registry.get("data", self.config.source)
            base = registry.build("data", self.config.source,
                                  structure(self.config.source_options, info.cls.Config, "data.source_options"))
            kind = base.spec().kind
            if kind != "images":
                raise ConfigError(f"data.source: {self.config.source!r} holds {kind}, not images; the autoencoder "
                                  "encodes image sources (mnist-full, mnist, digits, image-folder, npz with kind images)")
            self._base = base
        return self._base

    def image_source(self) -> DataSource:
        return self.base()

    def arch(self):
        raise NotImplementedError

    def recipe(self):
        raise NotImplementedError

    def cache_path(self) -> Path:
        base = self.base()
        key = json.dumps({"source": base.name, "config": unstructure(base.config), "arch": attrs.asdict(self.arch()),
                          "recipe": attrs.asdict(self.recipe(), filter=lambda a, _: a.name != "checkpoint_every"),
                          "version": RECIPE_VERSION}, sort_keys=True, default=str)
        root = Path(self.config.cache_dir) if self.config.cache_dir else cache_root("autoencoders")
        return root / f"{base.name}-{self.tag}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"

    def train_network(self, x: torch.Tensor, device: torch.device, partial: Path) -> tuple[torch.nn.Module, dict]:
        raise NotImplementedError

    def save_network(self, net, path: Path, meta: dict) -> None:
        raise NotImplementedError

    def load_network(self, path: Path):
        raise NotImplementedError

    def autoencoder(self):
        """The cached autoencoder (trained and written on a miss; with several processes, rank 0
        trains and the others wait)."""
        if self._net is None:
            from onestep.distributed import barrier

            path = self.cache_path()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if not path.is_file() and rank == 0:
                device = self.device()
                train = self.base().dataset("train")
                x = torch.stack([train[i][0] for i in range(len(train))]).float()
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial.pt")
                net, numbers = self.train_network(x, device, partial)
                self.save_network(net, path, {"source": self.base().name, "recipe": attrs.asdict(self.recipe()), **numbers})
                partial.unlink(missing_ok=True)
            barrier()
            self._net = self.load_network(path)
        return self._net

    def device(self) -> torch.device:
        """Where the autoencoder trains (on a cache miss) and encodes the splits: ``data.device``."""
        name = self.config.device
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, *image shape] -> model-space latents [B, *spec().shape], on ``x``'s device."""
        raise NotImplementedError

    @torch.no_grad()
    def dataset(self, split: str) -> TensorDataset:
        """A split's latents (on the CPU), encoded once per process on :meth:`device`: every board
        run encodes the whole source at start-up, which on a shared CPU took minutes for the KL
        encoder (tools/RESULTS.md, DiT latent board) and takes seconds on the GPU."""
        if split not in self._splits:
            items = self.base().dataset(split)
            x = torch.stack([items[i][0] for i in range(len(items))]).float()
            y = torch.as_tensor([int(items[i][1]) for i in range(len(items))], dtype=torch.long)
            device, net = self.device(), self.autoencoder()
            net.to(device)
            try:
                codes = torch.cat([self.encode_images(c.to(device)).cpu() for c in x.split(1024)])
            finally:
                net.to("cpu")
            self._splits[split] = TensorDataset(codes, y)
        return self._splits[split]


@attrs.define
class AutoencodedConfig:
    source: str = "mnist-full"
    """The image data source to encode (any installed one: mnist-full, mnist, digits, image-folder...)."""
    source_options: dict[str, Any] = attrs.Factory(dict)
    """That source's config (its defaults where empty)."""
    dim: int = attrs.field(default=16, validator=at_least(1))
    """Latent dimensions."""
    width: int = attrs.field(default=1024, validator=at_least(1))
    depth: int = attrs.field(default=3, validator=at_least(0))
    """Hidden layers of width ``width`` in the encoder and again in the decoder."""
    steps: int = attrs.field(default=20000, validator=at_least(1))
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    lr: float = attrs.field(default=1.0e-3, validator=POSITIVE)
    """Adam, cosine-decayed to 0 over ``steps``."""
    latent_noise: float = attrs.field(default=0.05, validator=at_least(0))
    """Standard deviation of the noise on the code while training (a decoder smooth around codes)."""
    code_penalty: float = attrs.field(default=1.0e-3, validator=at_least(0))
    seed: int = 0
    device: str = attrs.field(default="auto", validator=DEVICE)
    """Where the autoencoder trains on a cache miss and encodes the data: auto (CUDA when available), cpu, cuda[:N]."""
    cache_dir: str = ""
    """Folder of the cached weights; "": $ONESTEP_CACHE/autoencoders (else ~/.cache/onestep/autoencoders)."""


class Autoencoded(TrainedAutoencoderSource):
    """An image source's samples as standardised codes of a cached MLP autoencoder."""

    name = "autoencoded"
    Config = AutoencodedConfig
    tag = "ae"

    def arch(self) -> AutoencoderArch:
        c = self.config
        return AutoencoderArch(self.base().spec().shape, c.dim, c.width, c.depth)

    def recipe(self) -> TrainRecipe:
        c = self.config
        return TrainRecipe(c.steps, c.batch_size, c.lr, c.latent_noise, c.code_penalty, c.seed)

    def train_network(self, x, device, partial):
        return train_autoencoder(x, self.arch(), self.recipe(), device, partial)

    def save_network(self, net, path, meta) -> None:
        save_autoencoder(net, path, meta)

    def load_network(self, path):
        return load_autoencoder(path)[0]

    def spec(self) -> DataSpec:
        return DataSpec(shape=(self.config.dim,), num_classes=self.base().spec().num_classes, kind="latents")

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder().encode(x)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised codes [B, dim] -> the source's images [B, C, H, W] in [-1, 1], on ``x``'s device."""
        net = self.autoencoder().to(x.device)
        return torch.cat([net.decode(c.float()) for c in x.split(4096)]) if len(x) else x.new_zeros(0, *net.arch.shape)

    def export_decoder(self, folder: Path, copy: bool = True) -> dict:
        """Copy the autoencoder (its standardisation included) into an export, so the exported
        generator's samples decode to images without the data or the cache."""
        self.autoencoder()
        shutil.copyfile(self.cache_path(), Path(folder) / "autoencoder.safetensors")
        return {"file": "autoencoder.safetensors"}

    @classmethod
    def decoder_from_export(cls, folder: Path, description: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        path = Path(folder) / str(description.get("file", "autoencoder.safetensors"))
        net, _ = load_autoencoder(path, field=f"export {str(folder)!r}")

        @torch.no_grad()
        def decode(x: torch.Tensor) -> torch.Tensor:
            return net.to(x.device).decode(x.float())

        return decode


@attrs.define
class AutoencodedKLConfig:
    source: str = "mnist-full"
    """The image data source to encode (any installed one: mnist-full, mnist, digits, image-folder...)."""
    source_options: dict[str, Any] = attrs.Factory(dict)
    """That source's config (its defaults where empty)."""
    latent_channels: int = attrs.field(default=4, validator=at_least(1))
    """Channels of the latent (SD-VAE: 4)."""
    widths: list[int] = attrs.field(factory=lambda: [64, 128, 128], validator=check(
        lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of positive channel counts, e.g. [64, 128, 128]"))
    """Channels per resolution; one 2x down-sampling between neighbours (3 widths: 28x28 -> 7x7)."""
    layers_per_block: int = attrs.field(default=1, validator=at_least(1))
    steps: int = attrs.field(default=6000, validator=at_least(1))
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    lr: float = attrs.field(default=5.0e-4, validator=POSITIVE)
    """Adam, cosine-decayed to 0 over ``steps``."""
    kl_weight: float = attrs.field(default=1.0e-4, validator=at_least(0))
    """Weight of the mean KL divergence per latent element beside the mean squared error per pixel."""
    seed: int = 0
    device: str = attrs.field(default="auto", validator=DEVICE)
    """Where the autoencoder trains on a cache miss and encodes the data: auto (CUDA when available), cpu, cuda[:N]."""
    cache_dir: str = ""
    """Folder of the cached weights; "": $ONESTEP_CACHE/autoencoders (else ~/.cache/onestep/autoencoders)."""
    decode_batch: int = attrs.field(default=1024, validator=at_least(1))


class AutoencodedKL(TrainedAutoencoderSource):
    """An image source's samples as spatial latents ``[C, h, w]`` of a cached diffusers
    ``AutoencoderKL``, normalised by its scaling and shift factors."""

    name = "autoencoded-kl"
    Config = AutoencodedKLConfig
    tag = "kl"

    def __init__(self, config: AutoencodedKLConfig) -> None:
        super().__init__(config)
        self._decoder: LatentDecoder | None = None

    def arch(self) -> KLArch:
        c = self.config
        return KLArch(self.base().spec().shape, c.latent_channels, tuple(c.widths), c.layers_per_block)

    def recipe(self) -> KLRecipe:
        c = self.config
        return KLRecipe(c.steps, c.batch_size, c.lr, c.kl_weight, c.seed)

    def train_network(self, x, device, partial):
        return train_kl(x, self.arch(), self.recipe(), device, partial)

    def save_network(self, net, path, meta) -> None:
        save_kl(net, path, meta)

    def load_network(self, path):
        return load_kl(path)[0]

    def spec(self) -> DataSpec:
        return DataSpec(shape=self.arch().latent_shape(), num_classes=self.base().spec().num_classes, kind="latents")

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        net = self.autoencoder()
        scale, shift = latent_factors(net)
        return (encode(net, x) - shift) * scale

    def decoder(self) -> LatentDecoder:
        if self._decoder is None:
            net = self.autoencoder()
            self._decoder = LatentDecoder(lambda: net, *latent_factors(net), batch_size=self.config.decode_batch)
        return self._decoder

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B, C, h, w] -> the source's images [B, C, H, W] in [-1, 1], on ``x``'s device."""
        if not len(x):
            return x.new_zeros(0, *self.base().spec().shape)
        return self.decoder()(x.float())

    def export_decoder(self, folder: Path, copy: bool = True) -> dict:
        """The network as a diffusers VAE folder (``vae/``, its factors in its config): the export
        decodes like one of ``onestep encode``'s, and any diffusers user can load it. Always copied
        (the cache is no diffusers folder to reference)."""
        return export_vae(folder, self.decoder(), copy=True)

    @classmethod
    def decoder_from_export(cls, folder: Path, description: dict) -> LatentDecoder:
        return decoder_from_export(folder, description)

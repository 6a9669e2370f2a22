"""The ``autoencoded`` data source: any installed image source (``data.source``, its config in
``data.source_options``) seen through a small autoencoder trained once on that source's ``train``
split and cached. Methods train and sample in the autoencoder's standardised latent; ``decode``
turns samples back into the source's images for grids, exports and image metrics.

Scoring is in the source's own pixels: ``image_source()`` is the wrapped source, so FID, KID,
precision/recall and class accuracy use its held-out images (the real test digits, not their
reconstructions) and its cached classifier: a latent run's numbers sit in the same table as a
pixel run's on the same source. The test split here is the source's test split encoded item by
item in order, which is what lets the metrics pair the two.

Cache: ``$ONESTEP_CACHE/autoencoders/<source>-ae-<key>.safetensors`` (or ``cache_dir``), key =
hash of the source's name and config, the network and the recipe. Written atomically once
training ends; an interrupted training resumes from ``.partial.pt`` beside it. Offline.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import TensorDataset

from onestep.config import structure, unstructure
from onestep.errors import ConfigError
from onestep.interfaces import DataSource, DataSpec

from .network import AutoencoderArch, TrainRecipe, load_autoencoder, save_autoencoder, train_autoencoder

RECIPE_VERSION = 1


@attrs.define
class AutoencodedConfig:
    source: str = "mnist-full"
    """The image data source to encode (any installed one: mnist-full, mnist, digits, image-folder...)."""
    source_options: dict[str, Any] = attrs.Factory(dict)
    """That source's config (its defaults where empty)."""
    dim: int = 16
    """Latent dimensions."""
    width: int = 1024
    depth: int = 3
    """Hidden layers of width ``width`` in the encoder and again in the decoder."""
    steps: int = 20000
    batch_size: int = 256
    lr: float = 1.0e-3
    """Adam, cosine-decayed to 0 over ``steps``."""
    latent_noise: float = 0.05
    """Standard deviation of the noise on the code while training (a decoder smooth around codes)."""
    code_penalty: float = 1.0e-3
    seed: int = 0
    device: str = "auto"
    """Where the autoencoder trains on a cache miss: auto (CUDA when available), cpu, cuda[:N]."""
    cache_dir: str = ""
    """Folder of the cached weights; "": $ONESTEP_CACHE/autoencoders (else ~/.cache/onestep/autoencoders)."""


def cache_root() -> Path:
    base = os.environ.get("ONESTEP_CACHE")
    return Path(base) / "autoencoders" if base else Path.home() / ".cache" / "onestep" / "autoencoders"


class Autoencoded(DataSource):
    """An image source's samples as standardised codes of a cached MLP autoencoder."""

    name = "autoencoded"
    Config = AutoencodedConfig

    def __init__(self, config: AutoencodedConfig) -> None:
        super().__init__(config)
        for field in ("dim", "width", "steps", "batch_size"):
            if getattr(config, field) < 1:
                raise ConfigError(f"data.{field}: expected >= 1, got {getattr(config, field)}")
        if config.depth < 0 or config.lr <= 0 or config.latent_noise < 0 or config.code_penalty < 0:
            raise ConfigError("data.depth, data.lr, data.latent_noise, data.code_penalty: expected depth >= 0, lr > 0, "
                              f"the others >= 0; got {config.depth}, {config.lr}, {config.latent_noise}, {config.code_penalty}")
        if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
            raise ConfigError(f"data.device: expected auto, cpu or cuda[:N], got {config.device!r}")
        if config.source == self.name:
            raise ConfigError("data.source: 'autoencoded' cannot encode itself; name an image source (e.g. mnist-full)")
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

    def arch(self) -> AutoencoderArch:
        c = self.config
        return AutoencoderArch(self.base().spec().shape, c.dim, c.width, c.depth)

    def recipe(self) -> TrainRecipe:
        c = self.config
        return TrainRecipe(c.steps, c.batch_size, c.lr, c.latent_noise, c.code_penalty, c.seed)

    def cache_path(self) -> Path:
        base = self.base()
        key = json.dumps({"source": base.name, "config": unstructure(base.config), "arch": attrs.asdict(self.arch()),
                          "recipe": attrs.asdict(self.recipe(), filter=lambda a, _: a.name != "checkpoint_every"),
                          "version": RECIPE_VERSION}, sort_keys=True, default=str)
        root = Path(self.config.cache_dir) if self.config.cache_dir else cache_root()
        return root / f"{base.name}-ae-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"

    def autoencoder(self):
        """The cached autoencoder (trained and written on a miss; with several processes, rank 0
        trains and the others wait)."""
        if self._net is None:
            from onestep.distributed import barrier

            path = self.cache_path()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if not path.is_file() and rank == 0:
                c = self.config
                device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device)
                train = self.base().dataset("train")
                x = torch.stack([train[i][0] for i in range(len(train))]).float()
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial.pt")
                net, numbers = train_autoencoder(x, self.arch(), self.recipe(), device, partial)
                save_autoencoder(net, path, {"source": self.base().name, "recipe": attrs.asdict(self.recipe()), **numbers})
                partial.unlink(missing_ok=True)
            barrier()
            self._net, _ = load_autoencoder(path)
        return self._net

    def spec(self) -> DataSpec:
        return DataSpec(shape=(self.config.dim,), num_classes=self.base().spec().num_classes, kind="latents")

    @torch.no_grad()
    def dataset(self, split: str) -> TensorDataset:
        if split not in self._splits:
            items = self.base().dataset(split)
            x = torch.stack([items[i][0] for i in range(len(items))]).float()
            y = torch.as_tensor([int(items[i][1]) for i in range(len(items))], dtype=torch.long)
            net = self.autoencoder()
            self._splits[split] = TensorDataset(torch.cat([net.encode(c) for c in x.split(4096)]), y)
        return self._splits[split]

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised codes [B, dim] -> the source's images [B, C, H, W] in [-1, 1], on ``x``'s device."""
        net = self.autoencoder().to(x.device)
        return torch.cat([net.decode(c.float()) for c in x.split(4096)]) if len(x) else x.new_zeros(0, *net.arch.shape)

    def export_decoder(self, folder: Path) -> dict:
        """Copy the autoencoder (its standardisation included) into an export, so the exported
        generator's samples decode to images without the data or the cache."""
        self.autoencoder()
        shutil.copyfile(self.cache_path(), Path(folder) / "autoencoder.safetensors")
        return {"file": "autoencoder.safetensors"}

    @classmethod
    def decoder_from_export(cls, folder: Path, description: dict):
        path = Path(folder) / str(description.get("file", "autoencoder.safetensors"))
        net, _ = load_autoencoder(path, field=f"export {str(folder)!r}")

        @torch.no_grad()
        def decode(x: torch.Tensor) -> torch.Tensor:
            return net.to(x.device).decode(x.float())

        return decode

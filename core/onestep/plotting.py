"""Pictures of samples: scatter plots for 2D points, histograms for 1D, grids for images."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .files import write_atomic  # noqa: E402


def savefig_atomic(fig, path: str | Path) -> Path:
    return write_atomic(path, fig.savefig)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


GRID_MAX_CLASSES = 16
GRID_COLUMNS = 10


def grid_columns(num_classes: int) -> int:
    """Columns of a sample grid: one per class for labelled data of at most
    :data:`GRID_MAX_CLASSES` classes (the samples cycle through the labels), else
    :data:`GRID_COLUMNS`. The one rule of every grid: the trainer's, compare's and the board's."""
    return num_classes if 0 < num_classes <= GRID_MAX_CLASSES else GRID_COLUMNS


def image_grid(x: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 image [rows*H, cols*W, C or nothing]."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * (h + 1) + 1, cols * (w + 1) + 1, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr[..., :3]


def label_grid_axes(ax, columns: int | None, classes: int) -> None:
    """Axis labels of an image-grid panel drawn with ``imshow`` (no ticks: pixels are not a
    quantity): what a column and a row hold."""
    ax.set_xticks([])
    ax.set_yticks([])
    if classes and columns == classes:
        ax.set_xlabel(f"class label 0 to {classes - 1}, one column each", fontsize=7)
        ax.set_ylabel("samples of each class", fontsize=7)
    else:
        ax.set_xlabel("samples", fontsize=7)


def label_point_axes(ax, dims: int) -> None:
    """Axis labels of a panel of points: coordinates in the data's own units."""
    if dims >= 2:
        ax.set_xlabel("x1 (data units)", fontsize=7)
        ax.set_ylabel("x2 (data units)", fontsize=7)
    else:
        ax.set_xlabel("x (data units)", fontsize=7)
        ax.set_ylabel("density (per data unit)", fontsize=7)


def save_samples(samples: torch.Tensor, path: Path, reference: torch.Tensor | None = None,
                 title: str = "", nrow: int | None = None) -> Path:
    """Write a PNG of ``samples``: scatter (2D), histogram (1D) or image grid (C, H, W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = samples.detach().float().cpu()
    if s.dim() == 4:
        grid = image_grid(s, nrow)
        return write_atomic(path, lambda tmp: plt.imsave(tmp, grid, cmap="gray" if s.shape[1] == 1 else None, vmin=0, vmax=255))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if s.shape[1] == 1:
        bins = 100
        if reference is not None:
            ax.hist(reference[:, 0].cpu().numpy(), bins=bins, density=True, alpha=0.5, label="data")
        ax.hist(s[:, 0].numpy(), bins=bins, density=True, alpha=0.5, label="samples")
        ax.set_xlabel("x (data units)")
        ax.set_ylabel("density (per data unit)")
    else:
        if reference is not None:
            r = reference.detach().float().cpu()
            ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, c="tab:blue", label="samples")
        ax.set_aspect("equal")
        ax.set_xlabel("x1 (data units)")
        ax.set_ylabel("x2 (data units)")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path


def save_loss_curves(metrics_jsonl: Path, path: Path, title: str = "") -> Path | None:
    """Plot every ``*/loss`` logged in ``metrics_jsonl`` against the step, one panel per loss
    (losses of different phases live on different scales); None when nothing was logged."""
    import json

    curves: dict[str, tuple[list[int], list[float]]] = {}
    metrics_jsonl = Path(metrics_jsonl)
    lines = metrics_jsonl.read_text().splitlines() if metrics_jsonl.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        for key, value in record.items():
            if key.endswith("/loss") and isinstance(value, (int, float)):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    if not curves:
        return None
    path = Path(path)
    fig, axes = plt.subplots(len(curves), 1, figsize=(6, 2.2 * len(curves) + 0.4), dpi=100, sharex=True, squeeze=False)
    for ax, (key, (steps, values)) in zip(axes[:, 0], sorted(curves.items())):
        ax.plot(steps, values, lw=1)
        ax.set_ylabel(f"{key}\n(unitless)", fontsize=8)
        ax.set_xlabel("training step (optimizer steps of every phase)", fontsize=8)
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path

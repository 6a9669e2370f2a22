"""The outputs of ``onestep compare``: one table (markdown for people, JSON for tools) and one
figure with every row's samples side by side."""
from __future__ import annotations

import json
import math
from pathlib import Path

import attrs

from ..plotting import image_grid
from .comparison import Comparison, row_label

LOWER_IS_BETTER = ("fid", "kid", "sinkhorn", "mode_weight_tv", "off_mode_fraction")


def metric_columns(comparison: Comparison) -> list[str]:
    """Metric keys in first-seen order (per-mode masses and standard deviations left to the JSON)."""
    keys: dict[str, None] = {}
    for row in comparison.rows:
        keys.update({k: None for k in row.metrics
                     if not k.startswith("mode_mass_") and not k.split("[")[0].endswith("_std")})
    return list(keys)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def markdown_table(comparison: Comparison) -> str:
    cols = metric_columns(comparison)
    arrow = {c: (" (lower better)" if c.split("[")[0] in LOWER_IS_BETTER else "") for c in cols}
    head = ["method", "NFE", *[c + arrow[c] for c in cols], "samples/s", "train steps/s", "steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison.rows:
        name = f"{r.method} (external reference)" if r.reference else r.method
        cells = [name, str(r.nfe), *[_fmt(r.metrics.get(c)) for c in cols], _fmt(r.samples_per_s),
                 _fmt(r.train_steps_per_s), str(r.steps), _fmt(r.train_seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    m = comparison.meta
    caption = (f"{m.get('data')} / {m.get('backbone')}, {m.get('budget_minutes')} min of training each, "
               f"batch {m.get('batch_size')}, {m.get('precision')}, {m.get('eval_samples')} eval samples; "
               f"{m.get('device')} x{m.get('world')}, torch {m.get('torch')}, {m.get('date')}")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def write_table(comparison: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "compare.md", out_dir / "compare.json"
    md.write_text(markdown_table(comparison))
    js.write_text(json.dumps({"meta": comparison.meta, "rows": [attrs.asdict(r) for r in comparison.rows]}, indent=1))
    return md, js


def save_figure(comparison: Comparison, path: str | Path) -> Path:
    """One panel per row: an image grid, or a scatter over held-out data for points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [row_label(r) for r in comparison.rows]
    grids = {k: image_grid(x, comparison.meta.get("grid_columns")) for k, x in comparison.samples.items() if x.dim() == 4}
    aspect = next((g.shape[0] / g.shape[1] for g in grids.values()), 1.0)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.2 * aspect + 0.6), dpi=120, squeeze=False)
    for ax, row, label in zip(axes[0], comparison.rows, labels):
        x = comparison.samples[label].float()
        if label in grids:
            ax.imshow(grids[label], cmap="gray" if grids[label].ndim == 2 else None, vmin=0, vmax=255)
            ax.axis("off")
        elif x.shape[1] >= 2:
            r = comparison.reference
            if r is not None:  # same window for every panel: the data's extent, padded
                r = r.float()
                lo, hi = r[:, :2].min(0).values, r[:, :2].max(0).values
                pad = 0.25 * (hi - lo)
                ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75")
                ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
                ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue")
            ax.set_box_aspect(1)
        else:
            if comparison.reference is not None:
                ax.hist(comparison.reference[:, 0].float().numpy(), bins=80, density=True, color="0.75")
            ax.hist(x[:, 0].numpy(), bins=80, density=True, alpha=0.7)
        if x.dim() != 4:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(f"{label}\n{row.steps} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

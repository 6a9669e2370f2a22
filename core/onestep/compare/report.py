"""The outputs of ``onestep compare`` (one table, markdown for people and JSON for tools, and one
figure with every row's samples side by side) and of ``onestep board`` (the same, plus the figure
of FID against training minutes and one grid per row)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..plotting import image_grid, label_grid_axes, label_point_axes, savefig_atomic, write_text_atomic
from .comparison import Comparison
from .rows import row_label, row_record

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


def rows_markdown(rows, cols: list[str], clock: list[tuple[str, object]]) -> list[str]:
    """The markdown table of ``rows``: method (marked as the external reference, or cut short at the
    deadline), NFE, the metric columns ``cols`` (each saying when lower is better), samples/s, then
    the ``clock`` columns (header, ``row -> cell``); a failed run's row says why."""
    arrow = {c: (" (lower better)" if c.split("[")[0] in LOWER_IS_BETTER else "") for c in cols}
    head = ["method", "NFE", *[c + arrow[c] for c in cols], "samples/s", *[h for h, _ in clock]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = (f"{r.method} (external reference)" if r.reference else r.method) + (
            " (stopped at the deadline)" if r.cut else "")
        if r.error:
            lines.append("| " + " | ".join([name, "-", f"failed: {r.error}"] + [""] * (len(head) - 3)) + " |")
            continue
        cells = [name, str(r.nfe), *[_fmt(r.metrics.get(c)) for c in cols], _fmt(r.samples_per_s), *[f(r) for _, f in clock]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(comparison: Comparison) -> str:
    lines = rows_markdown(comparison.rows, metric_columns(comparison), [
        ("train steps/s", lambda r: _fmt(r.train_steps_per_s)), ("steps", lambda r: str(r.steps)),
        ("train s", lambda r: _fmt(r.train_seconds))])
    m = comparison.meta
    caption = (f"{m.get('data')} / {m.get('backbone')}, {m.get('budget_minutes')} min of training each, "
               f"batch {m.get('batch_size')}, {m.get('precision')}, {m.get('eval_samples')} eval samples; "
               f"{m.get('device')} x{m.get('world')}, torch {m.get('torch')}, {m.get('date')}")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def write_table(comparison: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "compare.md", out_dir / "compare.json"
    write_text_atomic(md, markdown_table(comparison))
    write_json(js, comparison.meta, comparison.rows)
    return md, js


def write_json(path: Path, meta: dict, rows) -> Path:
    """The table for tools: its metadata and every row's record (:func:`.rows.row_record`)."""
    return write_text_atomic(path, json.dumps({"meta": meta, "rows": [row_record(r) for r in rows]}, indent=1))


def draw_panel(ax, x: torch.Tensor, grid, reference: torch.Tensor | None, columns: int | None = None,
               classes: int = 0) -> None:
    """One method's samples: its image ``grid`` (``columns`` wide; one per class of ``classes``
    when they match), else a 2D scatter over the held-out ``reference`` (the data's extent,
    padded: the same window for every panel), else 1D histograms of both."""
    if grid is not None:
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
        label_grid_axes(ax, columns, classes)
        return
    if x.shape[1] >= 2:
        if reference is not None:
            r = reference.float()
            lo, hi = r[:, :2].min(0).values, r[:, :2].max(0).values
            pad = 0.25 * (hi - lo)
            ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75")
            ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
            ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
        ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue")
        ax.set_box_aspect(1)
    else:
        if reference is not None:
            ax.hist(reference[:, 0].float().numpy(), bins=80, density=True, color="0.75")
        ax.hist(x[:, 0].numpy(), bins=80, density=True, alpha=0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    label_point_axes(ax, x.shape[1])


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
        draw_panel(ax, comparison.samples[label].float(), grids.get(label), comparison.reference,
                   comparison.meta.get("grid_columns"), comparison.meta.get("num_classes", 0))
        ax.set_title(f"{label}\n{row.steps} steps", fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the quality board
BOARD_COLUMNS = ("fid", "kid", "precision", "recall", "class_accuracy", "inception_score", "sinkhorn", "modes_covered")


def board_columns(rows) -> list[str]:
    """Metric keys shown in the board's table, in :data:`BOARD_COLUMNS` order (the rest is in the JSON)."""
    keys = {k for r in rows for k in r.metrics}
    return [k for base in BOARD_COLUMNS for k in sorted(keys) if k.split("[")[0] == base]


def board_table(rows, meta: dict) -> str:
    lines = rows_markdown(rows, board_columns(rows), [("train steps", lambda r: str(r.steps)),
                                                      ("train min", lambda r: f"{r.train_minutes:.2f}")])
    m = meta
    scored = f"; decoded samples scored against the real held-out images of {m['scored_on']}" if m.get("scored_on") else ""
    marks = (f"checkpointed every {m['marks_minutes']} min and at the end, each checkpoint scored after training"
             if m['marks_minutes'] else "checkpointed at the end only, scored after training")
    curve = f" (the curve's marks with {m.get('mark_samples', m['eval_samples'])})" if m['marks_minutes'] else ""
    caption = (f"Quality board: {m['data']} ({m['num_classes']} classes{scored}), {m['minutes']} min of training per method, "
               f"all methods together on one {m['device']}, {marks}, alone on the device, against {m['eval_samples']} of "
               f"{m['held_out']} held-out images with as many samples{curve}; "
               f"torch {m['torch']}, {m['date']}.")
    if m.get("command"):
        caption += f"\n\nCommand: `{m['command']}`"
    return caption + "\n\n" + "\n".join(lines) + "\n"


def curve_key(rows) -> str | None:
    """The metric drawn against minutes: FID where there is one, else the Sinkhorn divergence."""
    keys = {k for r in rows for p in r.curve for k in p["metrics"]}
    for base in ("fid", "sinkhorn"):
        found = sorted(k for k in keys if k.split("[")[0] == base)
        if found:
            return found[0]
    return None


def save_curves(rows, path: Path) -> Path | None:
    """One figure: the curve metric of every method against its training minutes (log scale), and
    the extra-NFE rows of multi-step methods as points at their end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = curve_key(rows)
    if key is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        pts = [(p["minutes"], p["metrics"][key]) for p in r.curve if key in p["metrics"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=row_label(r), linestyle="--" if r.reference else "-")
        elif key in r.metrics and not r.error:
            ax.scatter([r.train_minutes], [r.metrics[key]], marker="x", label=row_label(r))
    ax.set_xlabel("training time (minutes of each run's training clock; same device, all methods together)")
    ax.set_ylabel(key + " (unitless, log scale; lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path


def save_grids(grids: dict, columns: int, path: Path, classes: int = 0) -> Path:
    """Every row's grid side by side (same noise and labels in each; one column per class of
    ``classes`` when ``columns`` matches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(grids)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 3.4), dpi=120, squeeze=False)
    for ax, label in zip(axes[0], labels):
        x = grids[label].float()
        if x.dim() == 4:
            g = image_grid(x, columns)
            ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=255)
            label_grid_axes(ax, columns, classes)
        else:
            ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else torch.zeros(len(x)), s=1)
            label_point_axes(ax, 2)
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path


def write_board(rows, grids: dict, meta: dict, out_dir: Path, source) -> dict[str, Path]:
    """board.md, board.json, fid_vs_minutes.png, grids.png and one grid-METHOD-NFE.png per row."""
    from ..plotting import save_samples

    out_dir = Path(out_dir)
    written = {"table": out_dir / "board.md", "json": out_dir / "board.json"}
    write_text_atomic(written["table"], board_table(rows, meta))
    write_json(written["json"], meta, rows)
    curves = save_curves(rows, out_dir / "fid_vs_minutes.png")
    if curves:
        written["curves"] = curves
    if grids:
        written["grids"] = save_grids(grids, meta["grid_columns"], out_dir / "grids.png", meta["num_classes"])
    for label, x in grids.items():
        name = re.sub(r"[^A-Za-z0-9._-]", "_", label.replace(" (", "-").replace(" NFE)", "nfe"))
        nrow = meta["grid_columns"] if x.dim() == 4 else None
        save_samples(x, out_dir / f"grid-{name}.png", nrow=nrow, title=label)
    return written

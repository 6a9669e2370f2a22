"""Scoring trained runs, for ``onestep compare`` and ``onestep board`` alike: a run's EMA generator
is loaded back from its checkpoint (no trainer), alone on the device, and scored there against the
held-out split (the reference features extracted once for all rows), at its own NFE and at any
extra NFE asked for; its sampling speed is timed at every NFE, and every row draws its grid from
the same noise and labels. The board also scores the checkpoints at its marks (the curve)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import attrs
import torch

from ..api import compose
from ..errors import ConfigError
from ..export import OneStepPipeline
from ..logs import write_curve
from ..metrics.evaluate import EVAL_SEED_OFFSET, held_out, score
from ..plotting import grid_columns
from ..progress import bar as progress_bar
from ..registry import Registry
from .rows import Row, row_label
from .speed import pipeline_throughput

GRID_SEED = 0
GRID_ROWS = 10  # rows of every image grid (one sample per class per row in class columns)
GRID_POINTS = 2000  # samples of a points panel


@attrs.define
class Scorer:
    """Scores a pipeline's samples (the same labels and seed rule for every row) against the
    held-out reference; the reference features are extracted once for all rows."""

    labels: torch.Tensor | None
    reference: torch.Tensor
    reference_labels: torch.Tensor | None
    source: object
    metrics: list[str]
    registry: Registry
    cache: dict
    device: str = attrs.field(factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")

    @classmethod
    def of(cls, source, n: int, metrics: Sequence[str], registry: Registry) -> "Scorer":
        """Against ``n`` held-out items of ``source``; conditional samples cycle through their labels."""
        reference, reference_labels = held_out(source, n)
        labels = reference_labels[torch.arange(n) % len(reference_labels)] if reference_labels is not None else None
        return cls(labels, reference, reference_labels, source, list(metrics), registry, {})

    def load(self, checkpoint: Path, device: str | None = None) -> OneStepPipeline:
        return load_pipeline(checkpoint, self.registry, device or self.device)

    def __call__(self, pipe: OneStepPipeline, nfe: int, n: int) -> dict[str, float]:
        labels = self.labels[:n] if self.labels is not None else None
        y = labels if pipe.objective.generator_conditional() else None
        eval_config = compose(base=pipe.meta["run"], registry=self.registry).eval
        seed = int(pipe.meta["run"].get("seed", 0)) + EVAL_SEED_OFFSET
        samples = pipe(class_labels=labels, num_images=n, seed=seed, nfe=nfe, output_type="model")
        return score(samples, y, self.reference, self.reference_labels, self.source, self.metrics, eval_config,
                     self.registry, self.cache)


def load_pipeline(checkpoint: Path, registry: Registry, device: str = "cpu") -> OneStepPipeline:
    """The EMA generator of a run or step folder, without its trainer."""
    return OneStepPipeline.from_checkpoint(checkpoint, device=device, registry=registry)


def score_pipeline(pipe: OneStepPipeline, nfes: Sequence[int], template: Row, scorer: Scorer, n: int, speed_samples: int,
                   grids: dict, log, who: str) -> list[Row]:
    """One row per NFE of ``nfes``: ``template`` with the metrics of ``n`` samples, the sampling
    speed and, into ``grids``, the row's grid; one line per row to ``log``, prefixed ``who``."""
    pipe.to(scorer.device)
    rows = []
    for nfe in nfes:
        values = scorer(pipe, nfe, n)
        row = attrs.evolve(template, nfe=nfe, metrics=values, samples_per_s=pipeline_throughput(pipe, nfe, speed_samples),
                           curve=list(template.curve))
        rows.append(row)
        grids[row_label(row)] = grid_samples(pipe, nfe)
        log(f"{who}: {row_label(row)} steps={row.steps} " + " ".join(
            f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("mode_mass_")))
    release(pipe)
    return rows


def grid_samples(pipe: OneStepPipeline, nfe: int) -> torch.Tensor:
    """The same noise and labels for every row: :data:`GRID_ROWS` rows of
    :func:`onestep.plotting.grid_columns` (images, and latents decoded to images), or
    :data:`GRID_POINTS` points."""
    if pipe.spec.kind == "points":
        return pipe(num_images=GRID_POINTS, seed=GRID_SEED, nfe=nfe)
    k = pipe.spec.num_classes
    columns = grid_columns(k)
    labels = (torch.arange(columns * GRID_ROWS) % columns) if k > 0 else None
    return pipe(class_labels=labels, num_images=columns * GRID_ROWS, seed=GRID_SEED, nfe=nfe)


def release(pipe: OneStepPipeline) -> None:
    pipe.generator.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the board's curves
def score_curves(rows: list[Row], scorer: Scorer, n: int, written, log) -> None:
    """Score every row's checkpoints at the marks (``n`` samples each), cheap rows first; after
    each row, ``written()`` rewrites the board's files and the curve joins the run's TensorBoard
    events (``board/<metric>``)."""
    curves = sorted((r for r in rows if r.curve), key=lambda r: r.nfe)
    with progress_bar(len(curves), "board: scoring the marks", "run") as bar:
        for row in curves:
            score_marks(row, Path(row.out_dir), scorer, n, log)
            written()
            if tensorboard_on(Path(row.out_dir)):
                write_curve(Path(row.out_dir), "board", row.curve)
            bar.update()


def score_marks(row: Row, run_dir: Path, scorer: Scorer, n: int, log) -> None:
    """Put the scores of the run's checkpoints at the marks in front of the row's end point."""
    marks, _ = checkpoint_records(run_dir)
    points = []
    for mark in marks:
        pipe = scorer.load(run_dir / "checkpoints" / mark["checkpoint"])
        values = scorer(pipe, row.nfe, n)
        points.append({"minutes": mark["train_minutes"], "step": mark["step"], "metrics": values})
        log(f"board: {row.method} at {mark['train_minutes']:.1f} min (step {mark['step']}): fid={fid_of(values):.4g}")
        release(pipe)
    row.curve[:0] = points


def checkpoint_records(run_dir: Path) -> tuple[list[dict], dict]:
    """The run's checkpoints at the marks (``step``, ``train_minutes``, ``checkpoint``: its folder
    name), in order, and its last record (where training ended, at its final checkpoint)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    training = [r for r in records if "eval" not in r and "train_minutes" in r]
    if not training:
        raise ConfigError(f"run {str(run_dir)!r}: metrics.jsonl holds no training record")
    end = training[-1]
    marks = [r for r in training if "checkpoint" in r and r["step"] < end["step"]
             and (run_dir / "checkpoints" / r["checkpoint"]).is_dir()]
    return marks, end


def tensorboard_on(run_dir: Path) -> bool:
    """Whether the run wrote TensorBoard events (``train.tensorboard``), so the board's curve joins them."""
    from ..config import read_file

    return bool(read_file(run_dir / "config.yaml").get("train", {}).get("tensorboard", True))


def fid_of(values: dict[str, float]) -> float:
    return next((v for k, v in values.items() if k.split("[")[0] == "fid"), float("nan"))

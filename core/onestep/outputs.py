"""What a run shows besides its checkpoints: samples drawn through its pipeline, sample pictures,
loss records and curves, and evaluations, each recorded in ``metrics.jsonl``. The trainer calls these during
and after training; ``Trainer.sample``/``evaluate`` hand them out."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import attrs
import torch

from .export import GENERATOR, OneStepPipeline
from .interfaces import DataSource, DataSpec, Networks, Objective
from .logs import MetricsWriter
from .metrics.evaluate import EVAL_SEED_OFFSET, evaluate
from .plotting import grid_columns, save_loss_curves, save_samples
from .registry import Registry
from .schema import RunConfig


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


@attrs.define
class RunOutputs:
    """The samples, pictures and scores of the run configured by ``config``: its data ``source``
    (``spec``), ``objective`` and ``backbone`` name, its networks ``nets`` (EMA copies where kept),
    ``out_dir`` and the metrics ``writer`` and ``log`` of process ``rank`` (rank 0 alone writes)."""

    config: RunConfig
    registry: Registry
    source: DataSource
    spec: DataSpec
    objective: Objective
    backbone: str
    nets: Networks
    out_dir: Path
    writer: MetricsWriter
    log: Any
    rank: int
    reference_features: dict = attrs.Factory(dict)  # the metrics' features of held-out sets, kept across evaluations
    _pipeline: OneStepPipeline | None = attrs.field(default=None, init=False)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: ``sample.nfe``, else the objective's default."""
        return self.config.sample.nfe or self.objective.default_nfe()

    @property
    def pipeline(self) -> OneStepPipeline:
        """The run's networks as a :class:`OneStepPipeline`, in the precision it trains in: the
        trainer draws every sample through it, as an export of the run would."""
        if self._pipeline is None:
            generator = self.nets.ema(GENERATOR if GENERATOR in self.nets else next(iter(self.nets)))
            self._pipeline = OneStepPipeline(self.objective, generator, self.spec, self.nfe, nets=self.nets,
                                             precision=self.config.train.precision)
        return self._pipeline

    def sample(self, n: int, nfe: int | None = None, y: torch.Tensor | None = None, seed: int | None = None,
               batch_size: int = 1000) -> torch.Tensor:
        """``n`` samples (model space, on CPU) with ``nfe`` evaluations, labels ``y`` (default:
        classes in turn), drawn on their own RNG from ``seed`` (default: the run's seed +
        :data:`EVAL_SEED_OFFSET`), so training randomness is untouched."""
        seed = self.config.seed + EVAL_SEED_OFFSET if seed is None else seed
        return self.pipeline(class_labels=y, num_images=n, seed=seed, nfe=nfe, output_type="model",
                             batch_size=batch_size)

    def sample_plot(self, step: int) -> Path | None:
        """``samples/step-N.png``: a grid of images, or points over held-out ones (None: not rank 0,
        or an objective that draws no samples)."""
        if self.rank != 0 or not self.objective.draws_samples:
            return None
        s = self.config.sample
        images = self.spec.kind != "points"  # images, and latents that decode to images
        samples = self.source.decode(self.sample(s.grid if images else s.num))
        reference = None
        if len(self.spec.shape) == 1 and not images:
            ref_ds = self.source.dataset("test")
            reference = torch.stack([ref_ds[i][0] for i in range(min(len(ref_ds), s.num))])
        nrow = grid_columns(self.spec.num_classes) if samples.dim() == 4 else None
        title = f"{self.objective.name} / {self.backbone} / step {step}"
        path = save_samples(samples, self.out_dir / "samples" / f"step-{step:07d}.png", reference, title, nrow)
        self.writer.image("samples", path, step)
        return path

    def loss_curves(self) -> Path | None:
        """``losses.png`` beside ``metrics.jsonl``: every logged loss against the step (rank 0)."""
        if self.rank != 0:
            return None
        return save_loss_curves(self.out_dir / "metrics.jsonl", self.out_dir / "losses.png",
                                title=f"{self.objective.name} / {self.backbone} / {self.config.data.name}")

    def record_losses(self, step: int, logs: dict[str, Any], rate: float, train_seconds: float,
                      lrs: dict[str, float]) -> dict[str, float]:
        """One metrics.jsonl record of a step's logged numbers, the samples/s ``rate``, the training
        minutes and each network's learning rate; returns it."""
        record = {"step": step, **{k: _scalar(v) for k, v in logs.items()}, "samples_per_s": rate,
                  "train_minutes": train_seconds / 60.0, **{f"lr/{n}": lr for n, lr in lrs.items()}}
        self.writer.write(record)
        return record

    def at_end(self, step: int, train_seconds: float) -> tuple[Path | None, dict[str, float]]:
        """After training: the last sample picture and, under ``eval.at_end``, an evaluation, its
        numbers printed on one line (rank 0)."""
        plot = self.sample_plot(step)
        if not self.config.eval.at_end:
            return plot, {}
        metrics = self.evaluate(step, train_seconds)
        if self.rank == 0 and self.objective.draws_samples:
            line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("mode_mass_"))
            print(f"metrics step={step} {line}", flush=True)
        return plot, metrics

    def evaluate(self, step: int, train_seconds: float, metrics: Iterable[str] | None = None,
                 num_samples: int | None = None, nfe: int | None = None) -> dict[str, float]:
        """Metrics of samples drawn with ``nfe`` evaluations (None: :attr:`nfe`) against held-out
        data, recorded at ``step``. ``metrics`` None: the run's ``eval.metrics``, and when that is
        unset every installed metric for the data. Nothing for an objective that draws no samples
        (or on a rank other than 0)."""
        if self.rank != 0 or not self.objective.draws_samples:
            return {}
        nfe = nfe or self.nfe
        e = self.config.eval
        out = evaluate(lambda n, y: self.sample(n, nfe=nfe, y=y), self.source, num_samples or e.num_samples,
                       metrics if metrics is not None else e.metrics, e, self.registry,
                       self.objective.generator_conditional(), self.reference_features)
        self.writer.write({"step": step, "train_minutes": train_seconds / 60.0, "nfe": nfe, "eval": out})
        self.log.info("eval", step=step, **{k: round(v, 5) for k, v in out.items() if not k.startswith("mode_mass_")})
        return out

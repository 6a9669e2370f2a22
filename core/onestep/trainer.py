"""The training loop: builds the chosen components, wraps each network in a DeepSpeed engine
(:func:`onestep.engine.build_networks`), runs the phases the objective (and guidance) declare, and
writes metrics, samples and evaluations (:mod:`onestep.outputs`) and atomic checkpoints
(:mod:`onestep.statecodec`) on the clock of :mod:`onestep.budget`. It knows no method: every loss
comes from a component. :meth:`Trainer._train` is the loop, top to bottom."""
from __future__ import annotations

import random
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import yaml

from . import checkpoint as ckpt
from . import runfolder
from .budget import TrainingClock
from .components import build_components
from .config import RunConfig, unstructure
from .data.loader import BatchStream
from .divergence import DivergenceCheck
from .distributed import barrier, init_process_group, resolve_device
from .engine import build_networks
from .errors import CheckpointError, Interrupted
from .interfaces import StepInfo
from .interrupt import DeferredSigint
from .logs import MetricsWriter, configure
from .metrics.evaluate import held_out
from .outputs import RunOutputs
from .registry import Registry
from .resume import check_resumable
from .statecodec import TrainingState, load_networks, load_training, save_training, saved_step


class Trainer:
    """One run: ``Trainer(config).fit()``; then ``sample``/``evaluate``; ``load`` to resume."""

    def __init__(self, config: RunConfig, registry: Registry | None = None, console: bool = True) -> None:
        self.config = config
        self.registry = registry or Registry.discover()
        self.out_dir = config.resolved_output_dir()
        runfolder.make(self.out_dir)
        self.device = resolve_device(config.device)
        self.rank, self.world = init_process_group(self.device)
        main = self.rank == 0
        self.log = configure(self.out_dir / "log.jsonl" if main else None, console=console and main)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if main else None, config.train.tensorboard)
        self._seed_everything(config.seed)
        torch.backends.cuda.matmul.allow_tf32 = config.train.tf32
        self.planned_steps = config.train.steps  # the LR schedule's horizon (re-planned under max_minutes)
        self._build_components()
        self._build_networks()
        self._build_streams()
        self.outputs = RunOutputs(config, self.registry, self.source, self.spec, self.objective, self.backbone.name,
                                  self.nets, self.out_dir, self.metrics, self.log, self.rank)
        self.step = 0
        self.train_seconds = 0.0  # the training clock of the current fit (chores excluded)
        self.damaged: list[Path] = []  # checkpoints skipped by the last load for failing their checksums

    # ----------------------------------------------------------------------------- building
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed + self.rank)
        np.random.seed((seed + self.rank) % 2**32)
        random.seed(seed + self.rank)

    def _build_components(self) -> None:
        built = build_components(self.config, self.registry)
        self.source, self.spec = built.source, built.spec
        self.objective, self.backbone = built.objective, built.backbone
        self.coupler, self.guidance = self.objective.coupler, self.objective.guidance

    def _build_networks(self) -> None:
        built = build_networks(self.objective, self.guidance, self.backbone, self.spec, self.config.train, self.world,
                               self.device, horizon=lambda: self.planned_steps)
        self.engines, self.ema, self.nets, self.owner_of, self.phases = (built.engines, built.ema, built.nets,
                                                                         built.owner_of, built.phases)
        self.divergence = DivergenceCheck(self.config, self.source, self.objective, self.owner_of, self.engines,
                                          [p for _, p in self.phases], self.out_dir / "checkpoints")

    def _build_streams(self) -> None:
        t = self.config.train
        micro = t.batch_size // (t.grad_accum * self.world)
        data = self.source.dataset("train")
        labelled = self.spec.num_classes > 0
        self.streams = {
            name: BatchStream(data, micro, self.config.seed * 1_000_003 + zlib.crc32(name.encode()), self.device,
                              labelled, self.rank, self.world, t.num_workers)
            for name in sorted({p.stream for _, p in self.phases})
        }

    # ----------------------------------------------------------------------------- training
    def train_step(self) -> dict[str, Any]:
        """One iteration: every phase once (each with ``grad_accum`` micro-batches)."""
        t = self.config.train
        info = StepInfo(self.step, self.planned_steps)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if t.precision == "bf16" else nullcontext())
        logs: dict[str, Any] = {}
        for owner, phase in self.phases:
            engine = self.engines[phase.network]
            for name, e in self.engines.items():
                e.module.requires_grad_(name == phase.network)
            for _ in range(t.grad_accum):
                batches = [self.streams[phase.stream].next() for _ in range(phase.repeats)]
                with autocast:
                    try:
                        loss, extra = owner.loss(phase.name, self.nets.training(phase.network), batches, info)
                    except Exception as exc:
                        diverged = self.divergence.failed_on_nonfinite(phase, batches, exc, self.step + 1)
                        if diverged is None:
                            raise
                        raise diverged from exc
                engine.backward(loss)
                engine.step()
            logs[f"{phase.name}/loss"] = loss.detach()
            logs.update({f"{phase.name}/{k}": v for k, v in extra.items()})
        for e in self.engines.values():
            e.module.requires_grad_(True)
        for name, ema in self.ema.items():
            ema.update(self.engines[name].module, self.step)
        return logs

    def fit(self, resume: str | Path | None = None, overwrite: bool = False,
            ready: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (continuing from checkpoint ``resume`` if given: a step folder,
        or a run folder for its newest intact checkpoint), then sample and evaluate.

        Refuses an output folder that holds another run's outputs, or checkpoints after the
        resumed step, unless ``overwrite`` (which discards them). Ctrl-C ends training after the
        current step, writes a checkpoint and raises :class:`Interrupted`. ``ready`` is called once
        everything is built and prepared, just before the training clock starts (the board uses it
        to start all its runs' clocks together)."""
        self._start(resume, overwrite)
        start_step = self.step
        if ready is not None:
            ready()
        with DeferredSigint() as sigint:
            try:
                train_seconds, path = self._train(sigint)
            except KeyboardInterrupt:
                last = ckpt.latest(self.out_dir / "checkpoints")
                raise Interrupted(f"interrupted at step {self.step} before a checkpoint of it was written; "
                                  + (f"the last checkpoint is {last} (continue from it with --resume)" if last
                                     else "no checkpoint was written")) from None
        self.outputs.loss_curves()
        if sigint.requested:
            raise Interrupted(f"interrupted: training stopped at step {self.step}, checkpoint {path} written; "
                              "continue with --resume")
        plot, metrics = self.outputs.at_end(self.step, self.train_seconds)
        return {"step": self.step, "steps_run": self.step - start_step, "train_seconds": train_seconds,
                "metrics": metrics, "out_dir": str(self.out_dir), "checkpoint": str(path),
                "samples_png": str(plot) if plot else None}

    def _start(self, resume: str | Path | None, overwrite: bool) -> None:
        """Before the training clock: load the resumed checkpoint, check and clean the output
        folder (see :mod:`onestep.runfolder`), prepare the components, write the run's config."""
        resumed_from = self.load(resume) if resume is not None else None
        if resumed_from is None and self.config.train.init_from:
            self.init_from(self.config.train.init_from)
        discard = runfolder.check(self.out_dir, self.step, resumed_from, overwrite, damaged=self.damaged)
        barrier()  # every rank has looked before rank 0 changes anything
        if self.rank == 0:
            runfolder.clean(self.out_dir, self.step, discard, replace=overwrite and not runfolder.same_run(
                self.out_dir, resumed_from), damaged=self.damaged)
        barrier()
        for component in self._components().values():
            component.prepare(self.source, self.device)
        if self.rank == 0:
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(unstructure(self.config), sort_keys=False))
            self.metrics.start(self.step)
        self.log.info("run", out_dir=str(self.out_dir), objective=self.objective.name, backbone=self.backbone.name,
                      data=self.config.data.name, device=str(self.device), world=self.world, start_step=self.step,
                      parameters={n: sum(p.numel() for p in e.module.parameters()) for n, e in self.engines.items()})

    def _train(self, sigint: DeferredSigint) -> tuple[float, Path]:
        """The training loop, from ``self.step`` to ``train.steps`` (or the end of the time budget
        ``train.max_minutes``, or a Ctrl-C); returns the training seconds and the final checkpoint.

        After each step, off the training clock and in this order: the finiteness check (before
        any log or checkpoint), the loss record, a Ctrl-C stop, the sample picture, an evaluation
        and a checkpoint, each when its step or minute mark is due. One function on purpose, read
        top to bottom (exempt from the 40-line rule of tests/test_layout.py)."""
        from tqdm.auto import tqdm

        t = self.config.train
        bar = tqdm(total=None if t.max_minutes else t.steps, initial=self.step,
                   disable=not t.progress or self.rank != 0, dynamic_ncols=True)
        clock = TrainingClock.of(t, self.step)
        done = self.step >= t.steps
        while not done:
            logs = self.train_step()
            self.step += 1
            bar.update(1)
            self.train_seconds = elapsed = clock.elapsed()
            with clock.chores():
                done = self.step >= t.steps or clock.out_of_time(elapsed, self.world, self.device)
                if clock.budget_s:  # the LR schedule's horizon follows the share of the budget spent
                    self.planned_steps = clock.planned_steps(self.step, elapsed, t.steps)
                log_due = self.step % t.log_every == 0 or done
                checkpoint_due = (bool(t.checkpoint_every) and self.step % t.checkpoint_every == 0) or \
                    clock.checkpoint_marks.passed(elapsed)
                if log_due or checkpoint_due:
                    self.divergence.check_finite(logs, self.step)
                if log_due:
                    rate = clock.samples_per_s(self.step, t.batch_size)
                    record = self.outputs.record_losses(self.step, logs, rate, elapsed,
                                                        {n: e.get_lr()[0] for n, e in self.engines.items()})
                    bar.set_postfix({k.split("/")[0]: f"{v:.4g}" for k, v in record.items() if k.endswith("/loss")}
                                    | {"samples/s": f"{rate:.0f}"})
                if sigint.agreed(self.world, self.device, exchange=log_due):
                    done = True
                    self.divergence.check_finite(logs, self.step)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.outputs.sample_plot(self.step)
                eval_due = (bool(t.eval_every) and self.step % t.eval_every == 0) or clock.eval_marks.passed(elapsed)
                if eval_due and not done:
                    self.evaluate()
                if checkpoint_due:
                    self.save_checkpoint()
                    clock.saved_at = self.step
        bar.close()
        if clock.saved_at != self.step:
            return self.train_seconds, self.save_checkpoint()
        return self.train_seconds, self.out_dir / "checkpoints" / f"step-{self.step:07d}"

    # ----------------------------------------------------------------------------- samples and scores
    def sample_nfe(self) -> int:
        """Network evaluations per sample: ``sample.nfe``, else the objective's default."""
        return self.outputs.nfe

    def sample(self, n: int, nfe: int | None = None, y: torch.Tensor | None = None, seed: int | None = None,
               batch_size: int = 1000) -> torch.Tensor:
        """``n`` samples of the EMA networks (model space, on CPU), drawn through the run's
        :class:`~onestep.export.OneStepPipeline` (see :meth:`RunOutputs.sample`)."""
        return self.outputs.sample(n, nfe, y, seed, batch_size)

    def evaluate(self, metrics: Iterable[str] | None = None, num_samples: int | None = None,
                 nfe: int | None = None) -> dict[str, float]:
        """Metrics of EMA samples against held-out data, logged at this step (see
        :meth:`RunOutputs.evaluate`)."""
        return self.outputs.evaluate(self.step, self.train_seconds, metrics, num_samples, nfe)

    def reference(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` held-out items (None: all) and their labels, in a fixed order."""
        return held_out(self.source, n)

    # ----------------------------------------------------------------------------- checkpoints
    def _components(self) -> dict[str, Any]:
        named = (("objective", self.objective), ("guidance", self.guidance), ("coupler", self.coupler))
        return {k: c for k, c in named if c}

    def _state(self) -> TrainingState:
        return TrainingState(self.engines, self.ema, self.streams, self._components(),
                             self.config.train.zero_stage, self.device, self.rank, self.world)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (see :mod:`onestep.checkpoint`) and record it in metrics.jsonl."""
        config_yaml = yaml.safe_dump(unstructure(self.config), sort_keys=False)
        final = save_training(self.out_dir / "checkpoints", self.config.train.keep_checkpoints, self.step,
                              self._state(), config_yaml)
        self.log.info("checkpoint", step=self.step, path=str(final))
        self.metrics.write({"step": self.step, "train_minutes": self.train_seconds / 60.0, "checkpoint": final.name})
        return final

    def init_from(self, path: str | Path) -> Path:
        """Start this run's networks from checkpoint ``path``'s weights (``train.init_from``; see
        :func:`onestep.statecodec.load_networks`); the step stays 0. Returns the folder read."""
        try:
            folder, skipped = ckpt.newest_intact(path)
        except CheckpointError as exc:
            raise CheckpointError(f"train.init_from: {exc}") from None
        for _, reason in skipped:
            self.log.warning("damaged checkpoint skipped", reason=reason, using=str(folder))
        used = load_networks(folder, self._state(), init_from_ema=self.config.train.init_from_ema)
        self.log.info("initialised", path=str(folder), **used)
        return folder

    def load(self, path: str | Path, weights_only: bool = False) -> Path:
        """Restore a checkpoint (a run folder or a step folder). ``weights_only`` restores the
        networks and EMA but not the optimizer, data or RNG state. A run folder stands for its
        newest checkpoint whose checksums verify; a damaged newer one is skipped with a warning.
        Returns the checkpoint folder loaded."""
        folder, skipped = ckpt.newest_intact(path)
        for damaged, reason in skipped:
            self.log.warning("damaged checkpoint skipped", reason=reason, using=str(folder))
        self.damaged = [damaged for damaged, _ in skipped]
        if not weights_only:
            check_resumable(folder, unstructure(self.config), self.world)
        state = self._state()
        load_networks(folder, state)
        self.step = saved_step(folder)
        if not weights_only:
            read = load_training(folder, state)
            self.log.info("resumed", step=self.step, path=str(folder), optimizer_files=read)
        return folder

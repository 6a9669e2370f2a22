"""The training loop: builds the chosen components, wraps each network in a DeepSpeed engine,
runs the phases the objective (and guidance) declare, and writes samples, metrics and atomic
checkpoints. It knows no method: every loss comes from a component."""
from __future__ import annotations

import os
import random
import time
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import numpy as np
import torch
import yaml

from . import checkpoint as ckpt
from . import runfolder
from .components import build_components
from .config import RunConfig, unstructure
from .data.loader import BatchStream
from .divergence import DivergenceCheck
from .distributed import barrier, init_process_group, resolve_device
from .engine import EMA, make_engine, resolve_optim, sampling_autocast
from .errors import CheckpointError, ConfigError, Interrupted
from .interfaces import Networks, StepInfo
from .interrupt import DeferredSigint
from .logs import MetricsWriter, configure
from .metrics.evaluate import EVAL_SEED_OFFSET, evaluate, held_out
from .plotting import save_loss_curves, save_samples
from .registry import Registry


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


def _make_output_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot create {str(out_dir)!r} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: {str(out_dir)!r} is not writable")


class MinuteMarks:
    """Multiples of ``every`` minutes of the training clock; :meth:`passed` is true once per
    multiple reached (0: never)."""

    def __init__(self, every: float) -> None:
        self.every_s = 60.0 * every
        self.next_s = self.every_s

    def passed(self, elapsed_s: float) -> bool:
        if not self.every_s or elapsed_s < self.next_s:
            return False
        while self.next_s <= elapsed_s:
            self.next_s += self.every_s
        return True


@attrs.define
class LoopClock:
    """The training clock of one ``fit``: seconds spent training since ``start`` (chores such as
    logging, samples, evaluations and checkpoints are ``paused`` off it), the step it started
    at, the last logging point (for samples/s) and the minute marks of evaluations and
    checkpoints."""

    start_step: int
    budget_s: float
    eval_marks: MinuteMarks
    checkpoint_marks: MinuteMarks
    start: float = attrs.Factory(time.perf_counter)
    paused: float = 0.0
    saved_at: int = -1  # the step of the last checkpoint written by this fit
    last_time: float = attrs.Factory(time.perf_counter)
    last_step: int = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused


class Trainer:
    """One run: ``Trainer(config).fit()``; then ``sample``/``evaluate``; ``load`` to resume."""

    def __init__(self, config: RunConfig, registry: Registry | None = None, console: bool = True) -> None:
        self.config = config
        self.registry = registry or Registry.discover()
        self.out_dir = config.resolved_output_dir()
        _make_output_dir(self.out_dir)
        self.device = resolve_device(config.device)
        self.rank, self.world = init_process_group(self.device)
        self.log = configure(self.out_dir / "log.jsonl" if self.rank == 0 else None, console=console and self.rank == 0)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if self.rank == 0 else None, config.train.tensorboard)
        self._seed_everything(config.seed)
        torch.backends.cuda.matmul.allow_tf32 = config.train.tf32
        self.planned_steps = config.train.steps  # the LR schedule's horizon (re-planned under max_minutes)
        self._build_components()
        self._build_networks()
        self._build_streams()
        self.step = 0
        self.train_seconds = 0.0  # the training clock of the current fit (chores excluded)
        self._reference_features: dict = {}  # the metrics' reference features (keyed by set size), kept across evaluations
        self.damaged: list[Path] = []  # checkpoints skipped by the last load for failing their checksums

    # ----------------------------------------------------------------------------- building
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed + self.rank)
        np.random.seed((seed + self.rank) % 2**32)
        random.seed(seed + self.rank)

    def _build_components(self) -> None:
        built = build_components(self.config, self.registry)
        self.source, self.spec, self.objective, self.backbone = built.source, built.spec, built.objective, built.backbone
        self.coupler, self.guidance = self.objective.coupler, self.objective.guidance

    def _build_networks(self) -> None:
        t = self.config.train
        owners = [self.objective] + ([self.guidance] if self.guidance else [])
        self.owner_of: dict[str, Any] = {}
        engines: dict[str, Any] = {}
        ema: dict[str, EMA] = {}
        for owner in owners:
            for name, request in owner.networks().items():
                if name in self.owner_of:
                    raise ConfigError(
                        f"network {name!r} is declared by both {self.owner_of[name].name} and {owner.name}"
                    )
                self.owner_of[name] = owner
                module = self.backbone.build(request, self.spec)
                if name in self.objective.ema_networks:  # copied before DeepSpeed partitions or hooks it
                    ema[name] = EMA(module, t.ema_decay, t.ema_start, t.zero_stage)
                if t.compile:
                    self.backbone.compile(module)
                optim = resolve_optim(name, owner.optim_defaults(name), t)
                engines[name] = make_engine(module, optim, t, self.world, horizon=lambda: self.planned_steps)
        self.engines = engines
        self.ema = ema
        for e in self.ema.values():
            e.module.to(self.device)
        self.nets = Networks(engines, {n: e.module for n, e in self.ema.items()}, {n: e.module for n, e in engines.items()})
        self.phases = [(g, p) for g in owners[1:] for p in g.phases()] + [(self.objective, p) for p in self.objective.phases()]
        if not self.phases:
            raise ConfigError(f"objective {self.objective.name!r} declares no training phases")
        self.divergence = DivergenceCheck(self.config, self.source, self.objective, self.owner_of, engines,
                                          [p for _, p in self.phases], self.out_dir / "checkpoints")
        for owner, p in self.phases:
            if p.network not in engines:
                raise ConfigError(f"{owner.name} phase {p.name!r} trains unknown network {p.network!r}")

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
        self.save_loss_curves()
        if sigint.requested:
            raise Interrupted(f"interrupted: training stopped at step {self.step}, checkpoint {path} written; "
                              "continue with --resume")
        plot = self.save_sample_plot()
        metrics = self.evaluate() if self.config.eval.at_end else {}
        if self.rank == 0 and self.config.eval.at_end and self.objective.draws_samples:
            line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("mode_mass_"))
            print(f"metrics step={self.step} {line}", flush=True)
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
        """The loop from ``self.step`` to ``train.steps`` (or the time budget, or a Ctrl-C);
        returns the training seconds and the final checkpoint."""
        from tqdm.auto import tqdm

        t = self.config.train
        bar = tqdm(total=None if t.max_minutes else t.steps, initial=self.step,
                   disable=not t.progress or self.rank != 0, dynamic_ncols=True)
        clock = LoopClock(self.step, 60.0 * t.max_minutes, MinuteMarks(t.eval_every_minutes),
                          MinuteMarks(t.checkpoint_every_minutes), last_step=self.step)
        done = self.step >= t.steps
        while not done:
            logs = self.train_step()
            self.step += 1
            bar.update(1)
            self.train_seconds = clock.elapsed()
            chores_from = time.perf_counter()
            done = self.step >= t.steps or self._out_of_time(self.train_seconds, clock.budget_s)
            self._plan_steps(clock)
            done = self._chores(clock, logs, done, sigint, bar)
            clock.paused += time.perf_counter() - chores_from
        bar.close()
        path = self.out_dir / "checkpoints" / f"step-{self.step:07d}"
        if clock.saved_at != self.step:
            path = self.save_checkpoint()
        return self.train_seconds, path

    def _plan_steps(self, clock: LoopClock) -> None:
        """Under ``train.max_minutes``, schedules (``info.progress``) follow the share of the
        budget spent: the planned step count is extrapolated from the rate so far."""
        if clock.budget_s:
            expected = clock.start_step + round((self.step - clock.start_step) * clock.budget_s / self.train_seconds)
            self.planned_steps = min(self.config.train.steps, max(self.step + 1, expected))

    def _chores(self, clock: LoopClock, logs: dict[str, Any], done: bool, sigint: DeferredSigint, bar) -> bool:
        """The periodic chores after a step, off the training clock, in order: the finiteness check
        (before any log or checkpoint), the loss record, a Ctrl-C stop, the sample picture, an
        evaluation and a checkpoint, each when its step or minute mark is due. Returns whether
        training stops after this step."""
        t, elapsed = self.config.train, self.train_seconds
        log_due = self.step % t.log_every == 0 or done
        checkpoint_due = (bool(t.checkpoint_every) and self.step % t.checkpoint_every == 0) or \
            clock.checkpoint_marks.passed(elapsed)
        if log_due or checkpoint_due:
            self.divergence.check_finite(logs, self.step)
        if log_due:
            self._log_losses(clock, logs, bar)
        if self._stop_requested(sigint, log_due):
            done = True
            self.divergence.check_finite(logs, self.step)
        if t.sample_every and self.step % t.sample_every == 0:
            self.save_sample_plot()
        eval_due = (bool(t.eval_every) and self.step % t.eval_every == 0) or clock.eval_marks.passed(elapsed)
        if eval_due and not done:
            self.evaluate()
        if checkpoint_due:
            self.save_checkpoint()
            clock.saved_at = self.step
        return done

    def _log_losses(self, clock: LoopClock, logs: dict[str, Any], bar) -> None:
        """One metrics.jsonl record of the step's logged numbers, samples/s since the last one and
        the training minutes; the progress bar shows the losses."""
        now = time.perf_counter()
        rate = (self.step - clock.last_step) * self.config.train.batch_size / max(now - clock.last_time, 1e-9)
        clock.last_time, clock.last_step = now, self.step
        record = {"step": self.step, **{k: _scalar(v) for k, v in logs.items()}, "samples_per_s": rate,
                  "train_minutes": self.train_seconds / 60.0, **{f"lr/{n}": e.get_lr()[0] for n, e in self.engines.items()}}
        self.metrics.write(record)
        bar.set_postfix({k.split("/")[0]: f"{v:.4g}" for k, v in record.items() if k.endswith("/loss")}
                        | {"samples/s": f"{rate:.0f}"})

    def _stop_requested(self, sigint: DeferredSigint, log_due: bool) -> bool:
        """Whether a Ctrl-C asks to stop after this step. One process checks every step; several
        agree at logging steps (one small all-reduce), so they all stop at the same step."""
        if self.world == 1:
            return sigint.requested
        if not log_due:
            return False
        flag = torch.tensor([float(sigint.requested)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _out_of_time(self, elapsed: float, budget_s: float) -> bool:
        """Whether ``train.max_minutes`` is spent; every rank follows rank 0's clock so all stop
        at the same step."""
        if not budget_s:
            return False
        if self.world == 1:
            return elapsed >= budget_s
        over = torch.tensor([float(elapsed >= budget_s)], device=self.device)
        torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    # ----------------------------------------------------------------------------- sampling
    def _labels(self, n: int) -> torch.Tensor | None:
        return torch.arange(n) % self.spec.num_classes if self.spec.num_classes > 0 else None

    def sample_nfe(self) -> int:
        """Network evaluations per sample: ``sample.nfe``, else the objective's default."""
        return self.config.sample.nfe or self.objective.default_nfe()

    @torch.no_grad()
    def sample(self, n: int, nfe: int | None = None, y: torch.Tensor | None = None, seed: int | None = None,
               batch_size: int = 1000) -> torch.Tensor:
        """``n`` samples (model space, on CPU) with ``nfe`` evaluations, labels ``y`` (default:
        classes in turn). Uses its own RNG so training randomness is untouched."""
        nfe = nfe or self.sample_nfe()
        if y is None:
            y = self._labels(n)
        devices = [self.device] if self.device.type == "cuda" else []
        out = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + EVAL_SEED_OFFSET if seed is None else seed)
            for i in range(0, n, batch_size):
                m = min(batch_size, n - i)
                noise = torch.randn(m, *self.spec.shape, device=self.device)
                yy = y[i:i + m].to(self.device) if y is not None else None
                with sampling_autocast(self.config.train.precision, self.device):
                    out.append(self.objective.sample(self.nets, noise, yy, nfe).float().cpu())
        return torch.cat(out)

    def save_loss_curves(self) -> Path | None:
        """``losses.png`` beside ``metrics.jsonl``: every logged loss against the step."""
        if self.rank != 0:
            return None
        return save_loss_curves(self.out_dir / "metrics.jsonl", self.out_dir / "losses.png",
                                title=f"{self.objective.name} / {self.backbone.name} / {self.config.data.name}")

    def save_sample_plot(self) -> Path | None:
        if self.rank != 0 or not self.objective.draws_samples:
            return None
        s = self.config.sample
        images = self.spec.kind != "points"  # images, and latents that decode to images
        samples = self.source.decode(self.sample(s.grid if images else s.num))
        reference = None
        if len(self.spec.shape) == 1 and not images:
            ref_ds = self.source.dataset("test")
            reference = torch.stack([ref_ds[i][0] for i in range(min(len(ref_ds), s.num))])
        nrow = self.spec.num_classes if 0 < self.spec.num_classes <= 16 and samples.dim() == 4 else None
        title = f"{self.objective.name} / {self.backbone.name} / step {self.step}"
        path = save_samples(samples, self.out_dir / "samples" / f"step-{self.step:07d}.png", reference, title, nrow)
        self.metrics.image("samples", path, self.step)
        return path

    def reference(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` held-out items (None: all) and their labels, in a fixed order."""
        return held_out(self.source, n)

    def evaluate(self, metrics: Iterable[str] | None = None, num_samples: int | None = None,
                 nfe: int | None = None) -> dict[str, float]:
        """Metrics of EMA samples drawn with ``nfe`` evaluations (None: :meth:`sample_nfe`) against
        held-out data; logged to metrics.jsonl. ``metrics`` None: the run's ``eval.metrics``, and
        when that is unset every installed metric for the data. Nothing for an objective that
        draws no samples."""
        if self.rank != 0 or not self.objective.draws_samples:
            return {}
        nfe = nfe or self.sample_nfe()
        out = evaluate(lambda n, y: self.sample(n, nfe=nfe, y=y), self.source, num_samples or self.config.eval.num_samples,
                       metrics if metrics is not None else self.config.eval.metrics, self.config.eval, self.registry,
                       self.objective.generator_conditional(), self._reference_features)
        self.metrics.write({"step": self.step, "train_minutes": self.train_seconds / 60.0, "nfe": nfe, "eval": out})
        self.log.info("eval", step=self.step, **{k: round(v, 5) for k, v in out.items() if not k.startswith("mode_mass_")})
        return out

    # ----------------------------------------------------------------------------- checkpoints
    def _components(self) -> dict[str, Any]:
        return {k: c for k, c in (("objective", self.objective), ("guidance", self.guidance), ("coupler", self.coupler)) if c}

    def _state(self) -> ckpt.TrainingState:
        return ckpt.TrainingState(self.engines, self.ema, self.streams, self._components(),
                                  self.config.train.zero_stage, self.device, self.rank, self.world)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (see :mod:`onestep.checkpoint`) and record it in metrics.jsonl."""
        config_yaml = yaml.safe_dump(unstructure(self.config), sort_keys=False)
        final = ckpt.save_training(self.out_dir / "checkpoints", self.config.train.keep_checkpoints, self.step,
                                   self._state(), config_yaml)
        self.log.info("checkpoint", step=self.step, path=str(final))
        self.metrics.write({"step": self.step, "train_minutes": self.train_seconds / 60.0, "checkpoint": final.name})
        return final

    def init_from(self, path: str | Path) -> Path:
        """Start this run's networks from checkpoint ``path``'s weights (``train.init_from``; see
        :func:`onestep.checkpoint.load_initial_weights`); the step stays 0. Returns the folder read."""
        try:
            folder, skipped = ckpt.newest_intact(path)
        except CheckpointError as exc:
            raise CheckpointError(f"train.init_from: {exc}") from None
        for _, reason in skipped:
            self.log.warning("damaged checkpoint skipped", reason=reason, using=str(folder))
        used = ckpt.load_initial_weights(folder, self._state(), self.config.train.init_from_ema)
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
            ckpt.check_resumable(folder, unstructure(self.config), self.world)
        state = self._state()
        self.step = ckpt.load_weights(folder, state)
        if not weights_only:
            read = ckpt.load_training(folder, state)
            self.log.info("resumed", step=self.step, path=str(folder), optimizer_files=read)
        return folder

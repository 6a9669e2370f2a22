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
from .config import RunConfig, read_file, unstructure
from .data.loader import BatchStream
from .distributed import barrier, init_process_group, resolve_device
from .engine import EMA, full_state_dict, make_engine, resolve_optim, sampling_autocast
from .errors import CheckpointError, ConfigError, DivergenceError, Interrupted
from .interfaces import Networks, StepInfo
from .interrupt import DeferredSigint
from .logs import MetricsWriter, configure
from .metrics.evaluate import held_out, score
from .plotting import save_loss_curves, save_samples
from .registry import Registry


# what a resumed run must share with the run that wrote its checkpoint (other settings, such as
# learning rates, clipping or train.steps, may change on resume)
RESUME_FIXED = ("objective.name", "coupler.name", "guidance.name", "data", "backbone", "seed",
                "train.batch_size", "train.grad_accum", "train.zero_stage")


EVAL_SEED_OFFSET = 7919  # samples for plots and metrics draw from seed + this, apart from training's streams


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


def _at(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _first_difference(saved: Any, now: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first leaf where two unstructured configs differ (keys missing on either side, e.g.
    a field added to a plugin since, are not differences)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in saved.keys() & now.keys():
            found = _first_difference(saved[k], now[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return None if saved == now else (path, saved, now)


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
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if self.rank == 0 else None)
        self._seed_everything(config.seed)
        self._build_components()
        self._build_networks()
        self._build_streams()
        self.step = 0
        self.planned_steps = config.train.steps
        self.train_seconds = 0.0  # the training clock of the current fit (chores excluded)
        self._reference_features: dict = {}  # the metrics' reference features (keyed by set size), kept across evaluations
        self.damaged: list[Path] = []  # checkpoints skipped by the last load for failing their checksums

    # ----------------------------------------------------------------------------- building
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed + self.rank)
        np.random.seed((seed + self.rank) % 2**32)
        random.seed(seed + self.rank)

    def _build_components(self) -> None:
        c, reg = self.config, self.registry
        self.source = reg.build("data", c.data.name, c.data.config)
        self.spec = self.source.spec()
        self.objective = reg.build_objective(c, self.spec)
        self.coupler, self.guidance = self.objective.coupler, self.objective.guidance
        self.backbone = reg.build("backbone", c.backbone.name, c.backbone.config)

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
                engines[name] = make_engine(module, optim, t, self.world)
        self.engines = engines
        self.ema = ema
        for e in self.ema.values():
            e.module.to(self.device)
        self.nets = Networks(engines, {n: e.module for n, e in self.ema.items()})
        self.phases = [(g, p) for g in owners[1:] for p in g.phases()] + [(self.objective, p) for p in self.objective.phases()]
        if not self.phases:
            raise ConfigError(f"objective {self.objective.name!r} declares no training phases")
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
                        loss, extra = owner.loss(phase.name, self.nets, batches, info)
                    except Exception as exc:
                        diverged = self._failed_on_nonfinite(phase, batches, exc)
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
        resumed_from = self.load(resume) if resume is not None else None
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
        self.log.info("run", out_dir=str(self.out_dir), objective=self.objective.name, backbone=self.backbone.name,
                      data=self.config.data.name, device=str(self.device), world=self.world, start_step=self.step,
                      parameters={n: sum(p.numel() for p in e.module.parameters()) for n, e in self.engines.items()})
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
        if self.rank == 0 and self.config.eval.at_end:
            line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("mode_mass_"))
            print(f"metrics step={self.step} {line}", flush=True)
        return {"step": self.step, "steps_run": self.step - start_step, "train_seconds": train_seconds,
                "metrics": metrics, "out_dir": str(self.out_dir), "checkpoint": str(path),
                "samples_png": str(plot) if plot else None}

    def _train(self, sigint: DeferredSigint) -> tuple[float, Path]:
        """The loop from ``self.step`` to ``train.steps`` (or the time budget, or a Ctrl-C);
        returns the training seconds and the final checkpoint."""
        from tqdm.auto import tqdm

        t = self.config.train
        bar = tqdm(total=None if t.max_minutes else t.steps, initial=self.step,
                   disable=not t.progress or self.rank != 0, dynamic_ncols=True)
        last_time, last_step = time.perf_counter(), self.step
        start_time, start_step = last_time, self.step
        budget_s = 60.0 * t.max_minutes
        saved_at = -1
        paused = 0.0  # seconds of chores (logging, samples, evaluations, checkpoints): off the training clock
        eval_marks = MinuteMarks(t.eval_every_minutes)
        checkpoint_marks = MinuteMarks(t.checkpoint_every_minutes)
        done = self.step >= t.steps
        while not done:
            logs = self.train_step()
            self.step += 1
            bar.update(1)
            elapsed = time.perf_counter() - start_time - paused
            self.train_seconds = elapsed
            chores_from = time.perf_counter()
            done = self.step >= t.steps or self._out_of_time(elapsed, budget_s)
            if budget_s:  # schedules (info.progress) follow the share of the budget spent
                expected = start_step + round((self.step - start_step) * budget_s / elapsed)
                self.planned_steps = min(t.steps, max(self.step + 1, expected))
            log_due = self.step % t.log_every == 0 or done
            checkpoint_due = (bool(t.checkpoint_every) and self.step % t.checkpoint_every == 0) or checkpoint_marks.passed(elapsed)
            if log_due or checkpoint_due:
                self._check_finite(logs)
            if log_due:
                now = time.perf_counter()
                rate = (self.step - last_step) * t.batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, self.step
                record = {"step": self.step, **{k: _scalar(v) for k, v in logs.items()}, "samples_per_s": rate,
                          "train_minutes": elapsed / 60.0}
                self.metrics.write(record)
                bar.set_postfix({k.split("/")[0] if k.endswith("/loss") else k: f"{v:.4g}"
                                 for k, v in record.items() if k.endswith("/loss")} | {"samples/s": f"{rate:.0f}"})
            if self._stop_requested(sigint, log_due):
                done = True
                self._check_finite(logs)
            if t.sample_every and self.step % t.sample_every == 0:
                self.save_sample_plot()
            eval_due = (bool(t.eval_every) and self.step % t.eval_every == 0) or eval_marks.passed(elapsed)
            if eval_due and not done:
                self.evaluate()
            if checkpoint_due:
                self.save_checkpoint()
                saved_at = self.step
            paused += time.perf_counter() - chores_from
        bar.close()
        train_seconds = self.train_seconds
        path = self.out_dir / "checkpoints" / f"step-{self.step:07d}"
        if saved_at != self.step:
            path = self.save_checkpoint()
        return train_seconds, path

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

    def _check_finite(self, logs: dict[str, Any]) -> None:
        """Stop before logging or checkpointing a diverged step. Checked every ``log_every``
        steps and before each checkpoint (one host synchronisation each), since DeepSpeed skips
        non-finite steps only when it computes the gradient norm (``train.grad_clip > 0``)."""
        bad = [k for k, v in logs.items()
               if k.endswith("/loss") and not torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all()]
        if bad:
            phases = {k.rsplit("/", 1)[0] for k in bad}
            networks = [p.network for _, p in self.phases if p.name in phases]
            raise self._diverged(f"training diverged at step {self.step}: {', '.join(bad)} is not finite", networks,
                                 data_bad=self._training_data_nonfinite())

    def _failed_on_nonfinite(self, phase, batches, exc: Exception) -> DivergenceError | None:
        """A loss that raised on NaN inputs (e.g. a solver that cannot schedule a NaN cost) is a
        divergence, reported as one; None when its inputs were finite (a genuine bug)."""
        data_bad = any(not torch.isfinite(b.x).all() for b in batches)
        weights_bad = [n for n, e in self.engines.items() if any(not torch.isfinite(p).all() for p in e.module.parameters())]
        if not data_bad and not weights_bad:
            return None
        what = "the training batch holds NaN or inf" if data_bad else f"network {weights_bad[0]!r} has non-finite weights"
        detail = " ".join(str(exc).split())[:120]
        return self._diverged(f"training diverged at step {self.step + 1}: phase {phase.name!r} failed "
                              f"({type(exc).__name__}: {detail}) because {what}", weights_bad or [phase.network],
                              data_bad=data_bad or self._training_data_nonfinite())

    def _training_data_nonfinite(self) -> bool:
        """Whether the training set holds NaN or inf (checked where it is one tensor)."""
        tensors = getattr(self.source.dataset("train"), "tensors", None)
        return bool(tensors) and tensors[0].is_floating_point() and not bool(torch.isfinite(tensors[0]).all())

    def _diverged(self, what: str, networks: list[str], data_bad: bool) -> DivergenceError:
        last = ckpt.latest(self.out_dir / "checkpoints")
        saved = f"nothing after the last checkpoint{f' ({last})' if last else ''} was saved"
        if data_bad:
            advice = f"the training data ({self.config.data.name}) holds NaN or inf values: fix or filter them"
        else:
            t = self.config.train
            fields = dict.fromkeys(f"{self._lr_field(n)}={resolve_optim(n, self.owner_of[n].optim_defaults(n), t)['lr']:g}"
                                   for n in networks)
            advice = f"lower {' / '.join(fields)}" + (" or set train.grad_clip > 0" if not t.grad_clip else "")
        return DivergenceError(f"{what}; {saved}; {advice}")

    def _lr_field(self, network: str) -> str:
        """The config field that sets ``network``'s learning rate now (the most specific set one)."""
        t = self.config.train
        per_network = t.networks.get(network)
        if per_network is not None and per_network.lr is not None:
            return f"train.networks.{network}.lr"
        if t.optim.lr is not None:
            return "train.optim.lr"
        owner = self.owner_of[network]
        section = "objective" if owner is self.objective else "guidance"
        return f"{section}.lr" if "lr" in attrs.fields_dict(type(owner.config)) else "train.optim.lr"

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
        return self.config.sample.nfe or self.objective.default_nfe

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
        if self.rank != 0:
            return None
        s = self.config.sample
        n = s.grid if len(self.spec.shape) == 3 else s.num
        samples = self.source.decode(self.sample(n))
        reference = None
        if len(self.spec.shape) == 1:
            ref_ds = self.source.dataset("test")
            reference = torch.stack([ref_ds[i][0] for i in range(min(len(ref_ds), s.num))])
        nrow = self.spec.num_classes if 0 < self.spec.num_classes <= 16 and len(self.spec.shape) == 3 else None
        title = f"{self.objective.name} / {self.backbone.name} / step {self.step}"
        return save_samples(samples, self.out_dir / "samples" / f"step-{self.step:07d}.png", reference, title, nrow)

    def reference(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` held-out items (None: all) and their labels, in a fixed order."""
        return held_out(self.source, n)

    def evaluate(self, metrics: Iterable[str] | None = None, num_samples: int | None = None) -> dict[str, float]:
        """Metrics of EMA samples against held-out data; logged to metrics.jsonl. ``metrics`` None:
        the run's ``eval.metrics``, and when that is unset every installed metric for the data."""
        if self.rank != 0:
            return {}
        n = num_samples or self.config.eval.num_samples
        ref, ref_y = self.reference(n)
        y = ref_y[torch.arange(n) % len(ref_y)] if ref_y is not None else None
        samples = self.sample(n, y=y)
        if not self.objective.generator_conditional():
            y = None  # the samples ignored the labels
        out = score(samples, y, ref, ref_y, self.source, metrics if metrics is not None else self.config.eval.metrics,
                    self.config.eval, self.registry, self._reference_features)
        self.metrics.write({"step": self.step, "train_minutes": self.train_seconds / 60.0, "nfe": self.sample_nfe(),
                            "eval": out})
        self.log.info("eval", step=self.step, **{k: round(v, 5) for k, v in out.items() if not k.startswith("mode_mass_")})
        return out

    # ----------------------------------------------------------------------------- checkpoints
    def _components(self) -> dict[str, Any]:
        return {k: c for k, c in (("objective", self.objective), ("guidance", self.guidance), ("coupler", self.coupler)) if c}

    def save_checkpoint(self) -> Path:
        t = self.config.train
        writer = ckpt.CheckpointWriter(self.out_dir / "checkpoints", t.keep_checkpoints, self.rank)
        tmp = writer.begin(self.step)
        barrier()
        for name, e in self.engines.items():
            weights = full_state_dict(e.module, t.zero_stage)
            if self.rank == 0:
                ckpt.save_tensors(weights, tmp / f"{name}.safetensors")
            ckpt.save_state(e.optimizer.state_dict(), tmp / f"{name}.optim.rank{self.rank}.pt")
        ckpt.save_state(
            {"streams": {k: s.state_dict() for k, s in self.streams.items()}, "rng": self._rng_state(),
             "components": {k: c.state_dict() for k, c in self._components().items()}},  # per rank: e.g. online couplings
            tmp / f"trainer.rank{self.rank}.pt",
        )
        if self.rank == 0:
            for name, ema in self.ema.items():
                ckpt.save_tensors({k: v.detach().clone() for k, v in ema.module.state_dict().items()},
                                  tmp / f"{name}.ema.safetensors")
            (tmp / "config.yaml").write_text(yaml.safe_dump(unstructure(self.config), sort_keys=False))
            ckpt.save_state({
                "step": self.step, "world": self.world, "networks": sorted(self.engines),
                "schedulers": {n: e.lr_scheduler.state_dict() for n, e in self.engines.items()},
            }, tmp / "trainer.pt")
        barrier()
        final = writer.commit(self.step)
        barrier()
        self.log.info("checkpoint", step=self.step, path=str(final))
        self.metrics.write({"step": self.step, "train_minutes": self.train_seconds / 60.0, "checkpoint": final.name})
        return final

    def load(self, path: str | Path, weights_only: bool = False) -> Path:
        """Restore a checkpoint (a run folder or a step folder). ``weights_only`` restores the
        networks and EMA but not the optimizer, data or RNG state (for sampling/evaluation).
        A run folder stands for its newest checkpoint whose checksums verify; a damaged newer
        one is skipped with a warning. Returns the checkpoint folder loaded."""
        folder, skipped = ckpt.newest_intact(path)
        for damaged, reason in skipped:
            self.log.warning("damaged checkpoint skipped", reason=reason, using=str(folder))
        self.damaged = [damaged for damaged, _ in skipped]
        state = ckpt.load_state(folder / "trainer.pt")
        if not weights_only:
            self._check_resumable(folder, state)
        if sorted(self.engines) != state["networks"]:
            raise CheckpointError(f"checkpoint {str(folder)!r}: networks {state['networks']} do not match this run's {sorted(self.engines)}")
        stage = self.config.train.zero_stage
        for name, e in self.engines.items():
            weights = ckpt.load_tensors(folder / f"{name}.safetensors")
            try:
                if stage == 3:
                    import deepspeed

                    with deepspeed.zero.GatheredParameters(list(e.module.parameters()), modifier_rank=0):
                        e.module.load_state_dict(weights)
                else:
                    e.module.load_state_dict(weights)
            except RuntimeError as exc:
                raise CheckpointError(f"checkpoint file {str(folder / (name + '.safetensors'))!r}: does not fit network {name!r} "
                                      f"({' '.join(str(exc).split())[:160]})") from None
        for name, ema in self.ema.items():
            ema.module.load_state_dict(ckpt.load_tensors(folder / f"{name}.ema.safetensors"))
        self.step = int(state["step"])
        if weights_only:
            return folder
        for name, e in self.engines.items():
            template = e.optimizer.state_dict()
            if stage == 0:
                opt_state = ckpt.load_state(folder / f"{name}.optim.rank{self.rank}.pt")
                e.optimizer.load_state_dict(ckpt.fill_opaque(opt_state, template))
            else:  # ZeRO indexes the list by data-parallel rank (and may merge partitions)
                every_rank = [ckpt.fill_opaque(ckpt.load_state(folder / f"{name}.optim.rank{r}.pt"), template)
                              for r in range(self.world)]
                e.optimizer.load_state_dict(every_rank, load_optimizer_states=True, load_from_fp32_weights=True)
            e.lr_scheduler.load_state_dict(state["schedulers"][name])
        local = ckpt.load_state(folder / f"trainer.rank{self.rank}.pt")
        for k, c in self._components().items():
            c.load_state_dict(local["components"].get(k, {}))
        for k, s in self.streams.items():
            s.load_state_dict(local["streams"][k])
        self._set_rng_state(local["rng"])
        self.log.info("resumed", step=self.step, path=str(folder))
        return folder

    def _check_resumable(self, folder: Path, state: dict[str, Any]) -> None:
        """Refuse to continue a run under settings that change what is being trained."""
        if state["world"] != self.world:
            raise CheckpointError(f"checkpoint {str(folder)!r}: written by {state['world']} processes, resumed with {self.world}")
        saved, now = read_file(folder / "config.yaml"), unstructure(self.config)
        for path in RESUME_FIXED:
            found = _first_difference(_at(saved, path), _at(now, path), path)
            if found:
                field, old, new = found
                raise ConfigError(f"{field}: {old!r} in checkpoint {str(folder)!r}, {new!r} now; a resumed run keeps it "
                                  "(start a new run with another --out to change it)")

    def _rng_state(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

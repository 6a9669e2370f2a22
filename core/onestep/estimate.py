"""What a recipe costs before it is started: a few real training steps, timed, and the projection
to the recipe's full length on N GPUs.

The steps run through the trainer's own path (``Trainer`` builds the engines, streams and
components from the config; ``Trainer.train_step`` runs every phase) with each GPU holding the
share of the global batch it would hold in the N-GPU run (``batch_size / N``, with the recipe's
``grad_accum``). By default the data section is replaced by ``synthetic-latents`` (4 x 32 x 32,
1000 classes: ImageNet-256's SD-VAE latents; ``data.shape=[C,H,W] data.num_classes=K`` for other
recipes), so no dataset is needed; the step time does not depend on the values of the data.

Projection. One GPU of an N-GPU data-parallel run does the same work as the measured GPU plus
the gradient all-reduce. That cost is taken from a measurement shipped with the package,
``measured_scaling.json`` (samples/s on 1 and 2 GPUs by ZeRO stage with the per-GPU batch held,
with its device, date and command; the numbers: tools/RESULTS.md, "Scaling"). As an efficiency per doubling
of the GPU count, e, the projected throughput is ``N * (per-GPU samples/s) * e^log2(N) / e^log2(W)``
when W GPUs were measured. Beyond the measured GPU count this is an extrapolation (stated in the
output); ``scaling`` overrides e.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from .errors import ConfigError, OnestepError
from .schema import RunConfig

SCALING_FILE = Path(__file__).with_name("measured_scaling.json")


@attrs.frozen
class MeasuredScaling:
    """Weak-scaling efficiency per doubling of GPUs, by ZeRO stage, derived from a measurement file."""

    per_doubling: dict[int, float]  # ZeRO stage -> e
    gpus: int  # the most GPUs measured: beyond them a projection is an extrapolation
    source: str  # what the output names as the numbers' origin


def read_scaling(path: Path = SCALING_FILE) -> MeasuredScaling:
    """Efficiencies from ``path``'s samples/s: between the fewest (a) and most (b) GPUs measured of a
    stage, e = (s_b / s_a / (b / a)) ^ (1 / log2(b / a)). A stage without its own measurement takes the
    stage its ``stand_ins`` names."""
    try:
        record = json.loads(path.read_text())
        per_doubling, most = {}, 1
        for stage, by_gpus in record["samples_per_s"].items():
            a, b = min(by_gpus, key=int), max(by_gpus, key=int)
            doublings = math.log2(int(b) / int(a))
            per_doubling[int(stage)] = (by_gpus[b] / by_gpus[a] / 2 ** doublings) ** (1 / doublings)
            most = max(most, int(b))
        for stage, measured in record.get("stand_ins", {}).items():
            per_doubling[int(stage)] = per_doubling[int(measured)]
        source = f"measured {record['date']} on {record['device']}, {record['record']}"
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise OnestepError(f"{path}: not a scaling measurement ({type(e).__name__}: {e}); expected samples_per_s "
                           "by ZeRO stage and GPU count (at least two counts), date, device, record") from None
    return MeasuredScaling(per_doubling, most, source)


@attrs.define
class Measurement:
    """Timed steps of one configuration on the local device(s)."""

    step_seconds: list[float]  # wall time of each timed step (all processes synchronised)
    batch_per_gpu: int  # samples per GPU per step (all micro-batches)
    world: int  # processes that ran the steps
    device: str  # what ran them, e.g. "1 x NVIDIA H200" or "cpu"
    peak_memory_gib: float | None  # largest allocated memory of one GPU (None on CPU)
    reserved_memory_gib: float | None  # the allocator's largest reservation on one GPU
    parameters: dict[str, int]  # trained parameters per network

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def samples_per_s_per_gpu(self) -> float:
        return self.batch_per_gpu / self.step_s


@attrs.define
class Projection:
    """The recipe's full length on ``gpus`` GPUs, from a :class:`Measurement`."""

    gpus: int
    steps: int
    scaling_per_doubling: float
    step_s: float
    samples_per_s: float
    wall_hours: float
    gpu_hours: float
    extrapolated: bool  # the GPU count is beyond the measured scaling's and the local count
    scaling_source: str  # where scaling_per_doubling comes from


def per_gpu_batch(train, gpus: int) -> int:
    """The samples one GPU processes per step when ``train.batch_size`` is split over ``gpus``."""
    if gpus < 1:
        raise ConfigError(f"--gpus: expected >= 1, got {gpus}")
    if train.batch_size % (gpus * train.grad_accum):
        raise ConfigError(f"--gpus: train.batch_size {train.batch_size} does not split over {gpus} GPUs x "
                          f"train.grad_accum {train.grad_accum} micro-batches; choose a GPU count that divides "
                          f"{train.batch_size // train.grad_accum}")
    return train.batch_size // gpus


def train_step(trainer, config: RunConfig) -> None:
    """One training step of ``trainer``; running out of GPU memory is a one-line error saying
    what to change."""
    try:
        trainer.train_step()
    except torch.OutOfMemoryError:
        raise OnestepError(
            f"out of GPU memory at {config.train.batch_size // trainer.world} samples per GPU per step "
            f"({config.train.batch_size // (trainer.world * config.train.grad_accum)} per micro-batch): raise "
            "train.grad_accum or --gpus") from None
    trainer.step += 1


def peak_memory(trainer) -> tuple[float, float]:
    """The most GPU memory allocated and reserved (GiB) by any process since the last reset."""
    mem = torch.tensor([torch.cuda.max_memory_allocated(trainer.device), torch.cuda.max_memory_reserved(trainer.device)],
                       dtype=torch.float64, device=trainer.device)
    if trainer.world > 1:
        torch.distributed.all_reduce(mem, op=torch.distributed.ReduceOp.MAX)
    peak, reserved = (float(v) / 2**30 for v in mem.tolist())
    return peak, reserved


def measure(config: RunConfig, registry, steps: int, warmup: int, planned_steps: int) -> Measurement:
    """Build the run of ``config`` and time ``steps`` training steps after ``warmup`` untimed
    ones. ``planned_steps`` is the recipe's length, so schedules sit where a real run starts."""
    from .trainer import Trainer

    trainer = Trainer(config, registry=registry, console=False)
    for component in (trainer.objective, trainer.guidance, trainer.coupler):
        if component is not None:
            component.prepare(trainer.source, trainer.device)
    trainer.planned_steps = planned_steps
    cuda = trainer.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(trainer.device)
        if trainer.world > 1:
            torch.distributed.barrier()

    def step() -> None:
        train_step(trainer, config)

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak, reserved = peak_memory(trainer) if cuda else (None, None)
    device = f"{trainer.world} x {torch.cuda.get_device_name(trainer.device)}" if cuda else f"cpu ({trainer.world} process{'es' if trainer.world > 1 else ''})"
    return Measurement(times, config.train.batch_size // trainer.world, trainer.world, device, peak, reserved,
                       {n: sum(p.numel() for p in e.module.parameters()) for n, e in trainer.engines.items()})


def project(m: Measurement, gpus: int, steps: int, zero_stage: int, scaling: float | None = None,
            measured: MeasuredScaling | None = None) -> Projection:
    """Throughput and cost of ``steps`` steps on ``gpus`` GPUs (see the module docstring); ``measured``
    defaults to the shipped measurement."""
    measured = read_scaling() if measured is None else measured
    e = measured.per_doubling[zero_stage] if scaling is None else scaling
    if not 0 < e <= 1:
        raise ConfigError(f"--scaling: expected an efficiency per doubling of GPUs in (0, 1], got {e}")
    relative = e ** (math.log2(gpus) - math.log2(m.world))
    samples_per_s = gpus * m.samples_per_s_per_gpu * relative
    step_s = m.batch_per_gpu * gpus / samples_per_s
    wall_hours = steps * step_s / 3600
    return Projection(gpus, steps, e, step_s, samples_per_s, wall_hours, wall_hours * gpus,
                      extrapolated=gpus > max(measured.gpus, m.world),
                      scaling_source=measured.source if scaling is None else "set by --scaling")


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days ({hours:.0f} h)"


def report(name: str, plan: RunConfig, m: Measurement, p: Projection, warmup: int, data_note: str) -> str:
    """The human-readable summary that ``onestep estimate`` prints."""
    t = plan.train
    params = ", ".join(f"{k} {v / 1e6:.1f}M" if v >= 100_000 else f"{k} {v:,}" for k, v in sorted(m.parameters.items()))
    lines = [
        f"recipe: {name} ({plan.objective.name}, {plan.backbone.name}; {params} parameters)",
        f"  global batch {t.batch_size} x {t.steps:,} steps, grad_accum {t.grad_accum}, ZeRO-{t.zero_stage}, {t.precision}",
        f"measured on {m.device}: {m.batch_per_gpu} samples per GPU per step (the share of {p.gpus} GPUs), "
        f"{len(m.step_seconds)} timed steps after {warmup} warm-up, {data_note}",
        f"  step time      {m.step_s:.3f} s (median; min {min(m.step_seconds):.3f}, max {max(m.step_seconds):.3f})",
        f"  samples/s      {m.samples_per_s_per_gpu:,.1f} per GPU",
        "  peak memory    " + (f"{m.peak_memory_gib:.1f} GiB per GPU allocated ({m.reserved_memory_gib:.1f} GiB reserved)"
                             if m.peak_memory_gib is not None else "n/a (CPU)"),
        f"projected on {p.gpus} GPU{'s' if p.gpus > 1 else ''} (scaling {p.scaling_per_doubling:.3f} per doubling of GPUs, "
        + p.scaling_source + ("; extrapolated beyond the measured GPU count" if p.extrapolated else "") + "):",
        f"  step time      {p.step_s:.3f} s",
        f"  samples/s      {p.samples_per_s:,.1f}",
        f"  wall-clock     {_duration(p.wall_hours)} for {p.steps:,} steps",
        f"  GPU-hours      {p.gpu_hours:,.0f}",
    ]
    return "\n".join(lines)


def summary(name: str, plan: RunConfig, m: Measurement, p: Projection) -> dict[str, Any]:
    """The same numbers as one JSON-ready record (``onestep estimate --json``)."""
    return {
        "recipe": name, "objective": plan.objective.name, "backbone": plan.backbone.name,
        "parameters": m.parameters, "batch_size": plan.train.batch_size, "steps": plan.train.steps,
        "device": m.device, "batch_per_gpu": m.batch_per_gpu, "step_s": m.step_s, "step_seconds": m.step_seconds,
        "samples_per_s_per_gpu": m.samples_per_s_per_gpu, "peak_memory_gib": m.peak_memory_gib,
        "reserved_memory_gib": m.reserved_memory_gib, "gpus": p.gpus, "scaling_per_doubling": p.scaling_per_doubling,
        "extrapolated": p.extrapolated, "projected_step_s": p.step_s, "projected_samples_per_s": p.samples_per_s,
        "wall_hours": p.wall_hours, "gpu_hours": p.gpu_hours,
    }

"""Wall-clock timing: :func:`median_ms`, the one timing function of onestep (the benchmarks in
tools/ use it too), and sampling throughput built on it: samples per second of a trained
generator at a given number of network evaluations, timed through its
:class:`~onestep.export.OneStepPipeline` (noise, the objective's sampler, the copy of the samples
to the CPU), so a one-step generator and a k-step sampler on the same backbone, in the trainer or
loaded back, are measured the same way."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time (ms) of ``fn()`` over ``repeats`` calls after ``warmup`` calls, the device
    synchronised around each timed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def pipeline_throughput(pipe, nfe: int | None, num: int = 1000, batch_size: int = 500, repeats: int = 3) -> float:
    """Median samples/s over ``repeats`` draws of ``num`` samples (model space) at ``nfe``
    evaluations (None: the pipeline's default), after one warm-up draw of a batch."""
    pipe(num_images=min(num, batch_size), nfe=nfe, seed=0, batch_size=batch_size, output_type="model")
    ms = median_ms(lambda: pipe(num_images=num, nfe=nfe, seed=1, batch_size=batch_size, output_type="model"),
                   repeats, pipe.device, warmup=0)
    return num / max(ms / 1e3, 1e-9)


def sampling_throughput(trainer, nfe: int | None = None, num: int = 1000, batch_size: int = 500,
                        repeats: int = 3) -> float:
    """:func:`pipeline_throughput` of a trainer's run (its EMA networks; ``nfe`` None: the run's)."""
    return pipeline_throughput(trainer.outputs.pipeline, nfe, num, batch_size, repeats)

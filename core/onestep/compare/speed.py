"""Sampling throughput: samples per second of a trained run at a given number of network
evaluations, timed through :meth:`Trainer.sample` (noise, the objective's sampler, the copy of
the samples to the CPU), so a one-step generator and a k-step sampler on the same backbone are
measured the same way."""
from __future__ import annotations

import statistics
import time

import torch


def sampling_throughput(trainer, nfe: int | None = None, num: int = 1000, batch_size: int = 500,
                        repeats: int = 3) -> float:
    """Median samples/s over ``repeats`` draws of ``num`` samples at ``nfe`` evaluations (None:
    the objective's default), after one warm-up batch."""
    trainer.sample(min(num, batch_size), nfe=nfe, batch_size=batch_size, seed=0)
    rates = []
    for r in range(repeats):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        trainer.sample(num, nfe=nfe, batch_size=batch_size, seed=r + 1)
        rates.append(num / max(time.perf_counter() - start, 1e-9))
    return statistics.median(rates)


def pipeline_throughput(pipe, nfe: int, num: int = 1000, batch_size: int = 500, repeats: int = 3) -> float:
    """The same timing for a generator loaded back without its trainer (:class:`OneStepPipeline`),
    samples in model space."""
    pipe(num_images=min(num, batch_size), nfe=nfe, seed=0, batch_size=batch_size, output_type="model")
    rates = []
    for r in range(repeats):
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        start = time.perf_counter()
        pipe(num_images=num, nfe=nfe, seed=r + 1, batch_size=batch_size, output_type="model")
        rates.append(num / max(time.perf_counter() - start, 1e-9))
    return statistics.median(rates)

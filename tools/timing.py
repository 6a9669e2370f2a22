"""Wall-clock timing shared by the benchmarks in tools/ (run as scripts, so they import it as a
sibling module)."""
from __future__ import annotations

import statistics
import time

import torch


def median_ms(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time (ms) of ``fn()`` over ``repeats`` calls after ``warmup`` calls, the device
    synchronised around each timed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)

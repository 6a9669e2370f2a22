"""The training clock of one ``Trainer.fit``: seconds spent training (chores such as logging,
sample pictures, evaluations and checkpoints are paused off it), the time budget
``train.max_minutes``, the minute marks of evaluations and checkpoints, and the samples/s
between two loss records."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import attrs
import torch

from .schema import TrainConfig


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
class TrainingClock:
    """Seconds spent training since ``start`` (``paused`` excluded) from step ``start_step``, the
    budget ``budget_s`` (0: none), the minute marks of evaluations and checkpoints, the step of
    the last checkpoint written (``saved_at``) and the last loss record (for samples/s)."""

    start_step: int
    budget_s: float
    eval_marks: MinuteMarks
    checkpoint_marks: MinuteMarks
    start: float = attrs.Factory(time.perf_counter)
    paused: float = 0.0
    saved_at: int = -1
    last_time: float = attrs.Factory(time.perf_counter)
    last_step: int = 0

    @classmethod
    def of(cls, train: TrainConfig, step: int) -> "TrainingClock":
        """A clock started now, at ``step``, on ``train``'s budget and minute marks."""
        return cls(step, 60.0 * train.max_minutes, MinuteMarks(train.eval_every_minutes),
                   MinuteMarks(train.checkpoint_every_minutes), last_step=step)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    @contextmanager
    def chores(self) -> Iterator[None]:
        """What runs inside is off the training clock."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - begin

    def out_of_time(self, elapsed: float, world: int, device: torch.device) -> bool:
        """Whether the budget is spent; every process follows rank 0's clock, so all stop at the
        same step."""
        if not self.budget_s:
            return False
        if world == 1:
            return elapsed >= self.budget_s
        over = torch.tensor([float(elapsed >= self.budget_s)], device=device)
        torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    def planned_steps(self, step: int, elapsed: float, steps: int) -> int:
        """Under a budget, the step count the rate so far reaches when it is spent (at least one
        more step, at most ``steps``): the horizon of the LR schedule (``info.progress``)."""
        expected = self.start_step + round((step - self.start_step) * self.budget_s / elapsed)
        return min(steps, max(step + 1, expected))

    def samples_per_s(self, step: int, batch_size: int) -> float:
        """Samples per second since the previous call (or the start)."""
        now = time.perf_counter()
        rate = (step - self.last_step) * batch_size / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return rate

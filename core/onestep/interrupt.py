"""Ctrl-C during training: finish the current step, write a checkpoint, then stop."""
from __future__ import annotations

import signal
import threading

import torch


class DeferredSigint:
    """While active, the first SIGINT (Ctrl-C) only sets :attr:`requested`, so the training
    loop can end after the step in progress and checkpoint it; a second SIGINT raises
    ``KeyboardInterrupt`` at once. Outside the main thread (where Python cannot install signal
    handlers) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> "DeferredSigint":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            self._previous = signal.default_int_handler if previous is None else previous
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def agreed(self, world: int, device: torch.device, exchange: bool) -> bool:
        """Whether a Ctrl-C asks every process to stop after this step. One process decides alone
        at every step; several agree only when ``exchange`` (the logging steps: one small
        all-reduce), so they all stop at the same step."""
        if world == 1:
            return self.requested
        if not exchange:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

"""The board's start line: every run builds its networks and prepares its components (an OT-NFM
coupler fits its potentials, for instance) before the training clocks start, and all clocks start
together. Otherwise a run with a long preparation would train while the others prepare, and its
preparation would be slowed by their training; rows would not share the device alike.

A folder is the whole protocol, so the runs stay plain ``onestep run`` processes: each run writes
``<pid>.ready`` and waits for ``go``; the board writes ``go`` once every run is ready (or has died).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import OnestepError

POLL_S = 0.1


class StartGate:
    def __init__(self, folder: str | Path, timeout_s: float = 1800.0) -> None:
        self.folder = Path(folder)
        self.timeout_s = timeout_s

    def arrive(self) -> None:
        """Called by a run when it is ready to train: announce it, then wait for the start."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{os.getpid()}.ready").touch()
        waited = time.perf_counter()
        while not (self.folder / "go").exists():
            if time.perf_counter() - waited > self.timeout_s:
                raise OnestepError(f"--start-gate {str(self.folder)!r}: no start signal ('go') after "
                                   f"{self.timeout_s:.0f} s; is the board that started this run still alive?")
            time.sleep(POLL_S)

    def ready_count(self) -> int:
        return len(self.ready_pids())

    def ready_pids(self) -> set[int]:
        """The process ids of the runs waiting at the line."""
        return {int(p.stem) for p in self.folder.glob("*.ready")} if self.folder.is_dir() else set()

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "go").touch()

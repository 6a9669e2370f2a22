"""Training the planned runs. ``onestep board`` starts one ``onestep run`` process per method, all
together (they share the device as users share a GPU, and the CPU cores evenly); each waits at a
start line (:mod:`.gate`) so that all training clocks start together, and a deadline interrupts
the runs still going. ``onestep compare`` trains its runs one after another in its own process
(:func:`train_here`). Either way a run ends with its final checkpoint, which :mod:`.score` reads."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from .gate import StartGate

INTERRUPTED = 130  # exit code of a run stopped by Ctrl-C after writing its checkpoint
STATUS_EVERY_S = 30.0  # seconds between the status lines of the runs while they train


def train_here(cfg, registry, overwrite: bool = False) -> dict:
    """Train one run in this process (``Trainer.fit``); its summary. The trainer is let go and the
    device's cache emptied before the next run."""
    from ..trainer import Trainer

    summary = Trainer(cfg, registry=registry, console=False).fit(overwrite=overwrite)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def train_together(argv: dict[str, list[str]], out: Path, deadline: float | None = None,
                   gate: StartGate | None = None, log=print, status_every: float | None = None) -> dict[str, int]:
    """Start one ``onestep run`` per method at once, wait for all; return codes by method. Each
    process's output goes to ``out/METHOD.log``; each gets an equal share of the CPU threads.
    ``gate`` (the runs' ``--start-gate``) opens once every run is ready or has stopped. At
    ``deadline`` (a ``time.perf_counter`` value) the runs still going get a Ctrl-C (they write a
    checkpoint and stop: code :data:`INTERRUPTED`), and a termination a minute later. Every
    ``status_every`` seconds (None: :data:`STATUS_EVERY_S`) of training, one line per run still
    going; before the start, the runs still preparing (:func:`log_progress`)."""
    status_every = status_every or STATUS_EVERY_S
    procs = launch(argv, out)
    codes = {}
    opened, begun = gate is None, time.perf_counter()
    next_status = begun + status_every
    try:
        stage = 0  # 1: interrupted, 2: terminated
        while len(codes) < len(procs):
            for m, (proc, logfile) in procs.items():
                if m not in codes and proc.poll() is not None:
                    codes[m] = proc.returncode
                    logfile.close()
            if gate is not None and not opened and gate.ready_count() + len(codes) >= len(procs):
                gate.open()
                opened = True
                log(f"board: every run is ready; training clocks start ({time.perf_counter() - begun:.0f} s after launch)")
            now = time.perf_counter()
            if now >= next_status:
                next_status = now + status_every
                log_progress(procs, codes, None if opened else gate, out, now - begun, log)
            if deadline is not None and stage < 2 and now > deadline + 60.0 * stage:
                for m, (proc, _) in procs.items():
                    if m not in codes:
                        proc.send_signal(signal.SIGINT if stage == 0 else signal.SIGTERM)
                stage += 1
            time.sleep(0.5)
    except BaseException:
        for proc, _ in procs.values():
            proc.terminate()
        raise
    return codes


def launch(argv: dict[str, list[str]], out: Path) -> dict[str, tuple[subprocess.Popen, object]]:
    """One ``onestep run`` process per method (``argv``), each with an equal share of the CPU
    threads, its output to ``out/METHOD.log`` and its command line in ``out/METHOD.command``."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, len(argv))))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    procs = {}
    for m, args in argv.items():
        logfile = open(out / f"{m}.log", "w")
        (out / f"{m}.command").write_text(shlex.join([sys.executable, "-m", "onestep.cli", *args]) + "\n")
        procs[m] = (subprocess.Popen([sys.executable, "-m", "onestep.cli", *args], stdout=logfile,
                                     stderr=subprocess.STDOUT, env=env), logfile)
    return procs


def finished(run_dir: Path, code: int) -> bool:
    """Whether a run ended with a checkpoint to score (done, or stopped at the deadline)."""
    return code in (0, INTERRUPTED) and (run_dir / "checkpoints").is_dir()


def log_progress(procs: dict, codes: dict, waiting: StartGate | None, out: Path, seconds: float, log) -> None:
    """One line per run still training (:func:`log_status`), or, while the runs gather at the start
    line ``waiting``, one line naming those still preparing: a slow start-up (a data source encoding
    on the CPU, a coupler's fit) shows whose it is."""
    going = [m for m in procs if m not in codes]
    if waiting is None:
        log_status(going, out, log)
        return
    ready = waiting.ready_pids()
    preparing = [m for m in going if procs[m][0].pid not in ready]
    log(f"board: {seconds:.0f} s after launch, still preparing: {', '.join(preparing)}")


def log_status(methods: list[str], out: Path, log) -> None:
    for m in methods:
        log(f"board: {m}: {run_status(out / 'runs' / m)}")


def run_status(run_dir: Path) -> str:
    """Where a training run is, from the newest loss record of its metrics.jsonl: steps, training
    minutes and its losses (``starting`` before the first record)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return "starting"
    with open(path, "rb") as fh:  # the records near the end are enough
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
        lines = fh.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        losses = {k: v for k, v in record.items() if k.endswith("/loss") and isinstance(v, (int, float))}
        if losses and "step" in record:
            return (f"step {record['step']}, {record.get('train_minutes', 0.0):.1f} min, "
                    + " ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    return "starting"


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1][:300] if lines else "no output"

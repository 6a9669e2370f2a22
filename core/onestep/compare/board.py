"""The quality board (``onestep board``): every method trained at the same time on one device,
each from its preset, for the same training time, scored at fixed marks of its training clock
and at the end; one table, one figure of FID against minutes and one sample grid per row.

How it runs (the pieces are ``onestep compare``'s too):

1. :mod:`.plan`: every method's config is assembled and checked first (preset < ``--config`` <
   board settings < overrides), so a bad one fails before anything trains; the data's feature
   network for the image metrics is trained once (or read from its cache) before any method starts.
2. :mod:`.launch`: one ``onestep run`` process per method, all started together (they share the
   device as users share a GPU, and the CPU cores evenly). Each builds and prepares itself, then
   waits at a start line (:mod:`.gate`) so that all training clocks start together. Each trains for
   ``train.max_minutes`` of its training clock and writes a checkpoint each time the clock passes a
   mark (``train.checkpoint_every_minutes``): checkpoints pause the clock, so every row gets the
   same training minutes. With ``deadline`` (wall-clock minutes from the start of the board), runs
   still training then are interrupted (they checkpoint and stop), so a board always ends in time
   and says which runs were cut short.
3. :mod:`.score`: when all have stopped, every checkpoint's EMA generator is loaded back (no
   trainer), alone on the device, and scored there: the marks' checkpoints give the curve, the
   last one the table, at its own NFE and, for the multi-step baseline (the objective whose plugin
   declares ``comparison_role = "baseline"``), at ``few_steps`` NFE: what a one-step model buys.
   Scoring after training, not inside the runs, keeps every evaluation off the other runs' device
   time and makes its cost the same for every row.

Every metric is computed against the held-out split (all of it by default; the table says how
many images).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..export import OneStepPipeline
from ..progress import bar as progress_bar
from ..registry import Registry
from .gate import StartGate
from .launch import INTERRUPTED, finished, last_line, train_together
from .plan import BoardSettings, plan_board, role_of
from .rows import Row, table_meta
from .score import Scorer, checkpoint_records, score_curves, score_pipeline


def run_board(s: BoardSettings, registry: Registry | None = None, log=print) -> list[Row]:
    """Train, score and draw every method of ``s``; writes the outputs into ``s.out_dir``."""
    registry = registry or Registry.discover()
    launched, say = time.perf_counter(), log

    def log(message: str) -> None:  # every line with the seconds since the board started
        say(f"[{time.perf_counter() - launched:6.0f} s] {message}")

    plan = plan_board(s, registry)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"board: training {', '.join(s.methods)} for {s.minutes} min each, together")
    deadline = started + 60.0 * s.deadline if s.deadline else None
    codes = train_together(plan.argv, out, deadline, StartGate(out / "start"), log)
    log(f"board: training done in {(time.perf_counter() - started) / 60:.1f} min (wall clock, with start-up and checkpoints)")
    n_eval, source = plan.n_eval, plan.source
    scorer = Scorer.of(source, n_eval, plan.metrics, registry)
    meta = table_meta(source, command=s.command, data=s.data, minutes=s.minutes, marks_minutes=s.marks, methods=s.methods,
                      eval_samples=n_eval, mark_samples=min(s.mark_samples or n_eval, n_eval), held_out=plan.n_test,
                      presets=s.presets, overrides=s.overrides)
    ends = {m: scorer.load(out / "runs" / m, "cpu") if finished(out / "runs" / m, codes[m]) else None for m in s.methods}
    rows_of: dict[str, list[Row]] = {}
    grids: dict = {}
    # The table before the curves, and the cheap one-step rows before the multi-step ones (a 50-step
    # row costs as much as a dozen one-step rows): a board cut short by its caller keeps the most.
    with progress_bar(len(s.methods), "board: scoring the ends", "run") as bar:
        for m in sorted(s.methods, key=lambda m: ends[m].default_nfe if ends[m] else 0):
            rows_of[m] = score_end(s, m, ends.pop(m), codes[m], out, plan.files_of[m], scorer, n_eval, grids, log)
            write_outputs([r for k in s.methods for r in rows_of.get(k, [])], grids, meta, out, source)
            bar.update()
    rows = [r for m in s.methods for r in rows_of[m]]
    score_curves(rows, scorer, min(s.mark_samples or n_eval, n_eval), lambda: write_outputs(rows, grids, meta, out, source),
                 log)
    return rows


def write_outputs(rows, grids, meta, out: Path, source) -> None:
    from .report import write_board

    write_board(rows, grids, meta, out, source)


def score_end(s: BoardSettings, m: str, pipe: OneStepPipeline | None, code: int, out: Path, files: list[str],
              scorer: Scorer, n_eval: int, grids: dict, log) -> list[Row]:
    """The rows of method ``m`` from its last checkpoint (``pipe``; None: the run failed): at its NFE
    (whose curve starts with this end point) and, for the multi-step baseline, at the few-step NFEs;
    their grids go into ``grids``."""
    run_dir = out / "runs" / m
    reference = role_of(scorer.registry, m) == "peer"
    if pipe is None:
        log(f"board: {m} failed: {last_line(out / f'{m}.log')}")
        return [Row(m, 0, {}, 0.0, 0, 0.0, str(run_dir), files, reference, error=last_line(out / f"{m}.log"))]
    _, end = checkpoint_records(run_dir)
    baseline = pipe.default_nfe > 1 and role_of(scorer.registry, m) == "baseline"
    nfes = [pipe.default_nfe] + ([k for k in s.few_steps if k != pipe.default_nfe] if baseline else [])
    template = Row(m, 0, {}, 0.0, end["step"], end["train_minutes"], str(run_dir), files, reference, cut=code == INTERRUPTED)
    rows = score_pipeline(pipe, nfes, template, scorer, n_eval, s.speed_samples, grids, log, "board")
    rows[0].curve = [{"minutes": end["train_minutes"], "step": end["step"], "metrics": rows[0].metrics}]
    return rows

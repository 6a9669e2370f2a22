"""The quality board (``onestep board``): every method trained at the same time on one device,
each from its preset, for the same training time, scored at fixed marks of its training clock
and at the end; one table, one figure of FID against minutes and one sample grid per row.

How it runs:

1. Every method's config is assembled and checked first (preset < ``--config`` < board settings <
   overrides), so a bad one fails before anything trains; the data's feature network for the
   image metrics is trained once (or read from its cache) before any method starts.
2. One ``onestep run`` process per method, all started together (they share the device as users
   share a GPU, and the CPU cores evenly). Each builds and prepares itself, then waits at a start
   line (:mod:`.gate`) so that all training clocks start together. Each trains for
   ``train.max_minutes`` of its training clock and writes a checkpoint each time the clock passes a
   mark (``train.checkpoint_every_minutes``): checkpoints pause the clock, so every row gets the
   same training minutes. With ``deadline`` (wall-clock minutes from the start of the board), runs
   still training then are interrupted (they checkpoint and stop), so a board always ends in time
   and says which runs were cut short.
3. When all have stopped, every checkpoint's EMA generator is loaded back (no trainer), alone on
   the device, and scored there: the marks' checkpoints give the curve, the last one the table, at
   its own NFE and, for the multi-step baseline (flow matching), at ``few_steps`` NFE: what a one-step
   model buys. Scoring after training, not inside
   the runs, keeps every evaluation off the other runs' device time and makes its cost the same
   for every row. Sampling speed is timed at every row's NFE, and every row draws its grid from the
   same noise and labels. The reference features are extracted once for all rows.

Every metric is computed against the held-out split (all of it by default; the table says how
many images).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import attrs
import torch

from ..api import compose
from ..errors import ConfigError
from ..export import OneStepPipeline
from ..logs import write_curve
from ..progress import bar as progress_bar
from ..metrics.evaluate import EVAL_SEED_OFFSET, applicable_metrics, check_applicable, held_out, score
from ..registry import Registry
from .comparison import check_components, method_files, objective_of, objectives_with_role, role_of, split_overrides
from .gate import StartGate
from .presets import presets_by_objective
from .speed import pipeline_throughput

UNLIMITED_STEPS = 10**9
INTERRUPTED = 130  # exit code of a run stopped by Ctrl-C after writing its checkpoint
GRID_SEED = 0
STATUS_EVERY_S = 30.0  # seconds between the status lines of the runs while they train
LOG_EVERY = 100  # steps between the runs' loss records (what the status lines read)


@attrs.define
class BoardRow:
    """One line of the table: a method at one NFE, with its marks (the curve) for its default NFE."""

    method: str
    nfe: int
    metrics: dict[str, float]
    samples_per_s: float
    steps: int
    train_minutes: float
    out_dir: str
    configs: list[str]  # the preset (first) and config files the run was assembled from
    reference: bool = False
    curve: list[dict] = attrs.Factory(list)  # [{"minutes", "step", "metrics"}] at the marks and the end
    error: str | None = None  # the run failed: no numbers
    cut: bool = False  # the run was stopped at the board's deadline, before its minutes were up


@attrs.define
class BoardSettings:
    data: str
    minutes: float
    marks: float
    methods: list[str]
    out_dir: Path = attrs.field(converter=Path)
    backbone: str | None = None
    files: list[str] = attrs.Factory(list)
    overrides: list[str] = attrs.Factory(list)
    presets: str | None = None
    eval_samples: int | None = None  # None: every held-out image
    metrics: list[str] | None = None  # None: every installed metric for the data
    few_steps: list[int] = attrs.Factory(lambda: [1, 2, 4])
    deadline: float | None = None  # wall-clock minutes after which training runs are interrupted
    mark_samples: int | None = None  # samples scored at each mark (the curve); None: as many as at the end
    speed_samples: int = 1000
    feature_weights: str | None = None
    command: str | None = None  # as typed, for the record

    def __attrs_post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f"--minutes: expected > 0, got {self.minutes}")
        if self.marks < 0:
            raise ConfigError(f"--marks: expected >= 0 minutes (0: only at the end), got {self.marks}")
        if not self.methods:
            raise ConfigError("--methods: expected at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods: a method is listed twice ({', '.join(self.methods)})")
        if self.deadline is not None and self.deadline <= self.minutes:
            raise ConfigError(f"--deadline: expected more than --minutes ({self.minutes}), got {self.deadline}")
        for name in ("eval_samples", "mark_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")


def default_methods(registry: Registry, data: str, presets: str | None) -> list[str]:
    """The baseline, the external peer (the installed objectives whose plugins declare those roles)
    and every installed objective with a preset for exactly this data."""
    found = presets_by_objective(presets) if presets else {}
    with_preset = [o for o, files in found.items() if any(d == data for _, d in files)]
    installed = set(registry.names("objective"))
    roles = objectives_with_role(registry, "baseline") + objectives_with_role(registry, "peer")
    chosen = roles + sorted(o for o in with_preset if o not in roles)
    return [m for m in chosen if m in installed]


def child_overrides(s: BoardSettings, n_eval: int, metrics: list[str]) -> list[str]:
    """What the board sets in every run (before the user's overrides, which win): the runs train and
    checkpoint at the marks; the board scores the checkpoints afterwards. Losses are recorded every
    :data:`LOG_EVERY` steps (the presets' 1,000 can take minutes), for the status lines."""
    marks = int(s.minutes // s.marks) if s.marks else 0
    return [f"train.steps={UNLIMITED_STEPS}", f"train.max_minutes={s.minutes}", "train.eval_every_minutes=0",
            f"train.log_every={LOG_EVERY}",
            f"train.checkpoint_every_minutes={s.marks}", f"train.keep_checkpoints={marks + 2}",
            "train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=0", "train.progress=false",
            f"eval.num_samples={n_eval}", f"eval.metrics=[{','.join(metrics)}]", "eval.at_end=false"] + (
        [f"eval.feature_weights={s.feature_weights}"] if s.feature_weights else [])


@attrs.define
class BoardPlan:
    """What the board works out before training: the data (source, spec, held-out size), the
    metrics, each method's config files and the ``onestep run`` arguments of its child process."""

    source: object
    spec: object
    metrics: list[str]
    n_eval: int
    n_test: int
    files_of: dict[str, list[str]]
    argv: dict[str, list[str]]


def plan_board(s: BoardSettings, registry: Registry) -> BoardPlan:
    """Check every method, config and metric of ``s`` before anything trains, and plan the runs."""
    for m in s.methods:
        registry.get("objective", objective_of(m))  # unknown names fail here, with the valid ones listed
    out = Path(s.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {str(out)!r}: folder exists and is not empty; give a new folder")
    common, scoped = split_overrides(s.overrides, s.methods)
    files_of = method_files(s.methods, s.data, s.files, s.presets, required=True)
    source = board_source(s, files_of, common, scoped, registry)
    spec = source.spec()
    metrics = applicable_metrics(registry, spec) if s.metrics is None else list(s.metrics)
    check_applicable(registry, metrics, spec, s.data, "--metrics")
    n_test = len(source.dataset("test"))
    n_eval = min(s.eval_samples or n_test, n_test)
    base = child_overrides(s, n_eval, metrics)
    argv: dict[str, list[str]] = {}
    for m in s.methods:
        cfg = compose(objective=objective_of(m), backbone=s.backbone, data=s.data, files=files_of[m], registry=registry,
                      overrides=[*base, *common, *scoped[m], f"output_dir={out / 'runs' / m}"])
        check_components(cfg, registry)
        prepare_feature_network(source, cfg.eval, registry, metrics)
        argv[m] = (["run", "--objective", objective_of(m), "--data", s.data] + (["--backbone", s.backbone] if s.backbone else [])
                   + [a for f in files_of[m] for a in ("--config", f)] + ["--out", str(out / "runs" / m)]
                   + ["--start-gate", str(out / "start")] + [*base, *common, *scoped[m]])
    return BoardPlan(source, spec, metrics, n_eval, n_test, files_of, argv)


def board_source(s: BoardSettings, files_of: dict[str, list[str]], common: list[str], scoped: dict[str, list[str]],
                 registry: Registry):
    """The data every row trains on and is scored against: the data section the methods' configs
    assemble to (presets and overrides included, e.g. ``data.path=...``), the same for all rows."""
    from ..config import unstructure

    sections = {m: compose(objective=objective_of(m), backbone=s.backbone, data=s.data, files=files_of[m], registry=registry,
                           overrides=[*common, *scoped[m]]).data for m in s.methods}
    first = s.methods[0]
    for m, section in sections.items():
        if unstructure(section) != unstructure(sections[first]):
            raise ConfigError(f"board: method {m!r} would train on data {unstructure(section)} but {first!r} on "
                              f"{unstructure(sections[first])}; every row must share one data section (give data options "
                              "as overrides for all methods)")
    return registry.build("data", sections[first].name, sections[first].config)


def run_board(s: BoardSettings, registry: Registry | None = None, log=print) -> list[BoardRow]:
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
    reference, reference_labels = held_out(source, n_eval)
    labels = reference_labels[torch.arange(n_eval) % len(reference_labels)] if reference_labels is not None else None
    scorer = Scorer(labels, reference, reference_labels, source, plan.metrics, registry, {})
    meta = board_meta(s, source, plan.spec, n_eval, plan.n_test)
    ends = {m: scorer.load(out / "runs" / m, "cpu") if finished(out / "runs" / m, codes[m]) else None for m in s.methods}
    rows_of: dict[str, list[BoardRow]] = {}
    grids: dict[str, torch.Tensor] = {}
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


def score_curves(rows: list[BoardRow], scorer: "Scorer", n: int, written, log) -> None:
    """Score every row's checkpoints at the marks (``n`` samples each), cheap rows first; after
    each row, ``written()`` rewrites the board's files and the curve joins the run's TensorBoard
    events (``board/<metric>``)."""
    curves = sorted((r for r in rows if r.curve), key=lambda r: r.nfe)
    with progress_bar(len(curves), "board: scoring the marks", "run") as bar:
        for row in curves:
            score_marks(row, Path(row.out_dir), scorer, n, log)
            written()
            if tensorboard_on(Path(row.out_dir)):
                write_curve(Path(row.out_dir), "board", row.curve)
            bar.update()


def tensorboard_on(run_dir: Path) -> bool:
    """Whether the run wrote TensorBoard events (``train.tensorboard``), so the board's curve joins them."""
    from ..config import read_file

    return bool(read_file(run_dir / "config.yaml").get("train", {}).get("tensorboard", True))


def finished(run_dir: Path, code: int) -> bool:
    """Whether a run ended with a checkpoint to score (done, or stopped at the deadline)."""
    return code in (0, INTERRUPTED) and (run_dir / "checkpoints").is_dir()


def write_outputs(rows, grids, meta, out: Path, source) -> None:
    from .report import write_board

    write_board(rows, grids, meta, out, source)


def score_end(s: BoardSettings, m: str, pipe: OneStepPipeline | None, code: int, out: Path, files: list[str],
              scorer: "Scorer", n_eval: int, grids: dict, log) -> list[BoardRow]:
    """The rows of method ``m`` from its last checkpoint (``pipe``; None: the run failed): at its NFE
    (whose curve starts with this end point) and, for the multi-step baseline, at the few-step NFEs;
    their grids go into ``grids``."""
    run_dir = out / "runs" / m
    reference = role_of(scorer.registry, m) == "peer"
    if pipe is None:
        log(f"board: {m} failed: {last_line(out / f'{m}.log')}")
        return [BoardRow(m, 0, {}, 0.0, 0, 0.0, str(run_dir), files, reference, error=last_line(out / f"{m}.log"))]
    _, end = checkpoint_records(run_dir)
    pipe.to(scorer.device)
    few = [k for k in s.few_steps if k != pipe.default_nfe] if pipe.default_nfe > 1 and role_of(scorer.registry, m) == "baseline" else []
    nfes = [pipe.default_nfe] + few
    rows = []
    for nfe in nfes:
        values = scorer(pipe, nfe, n_eval)
        curve = [{"minutes": end["train_minutes"], "step": end["step"], "metrics": values}] if nfe == pipe.default_nfe else []
        row = BoardRow(m, nfe, values, pipeline_throughput(pipe, nfe, s.speed_samples), end["step"], end["train_minutes"],
                       str(run_dir), files, reference, curve, cut=code == INTERRUPTED)
        rows.append(row)
        grids[row_label(row)] = grid_samples(pipe, nfe)
        log(f"board: {row_label(row)} steps={row.steps} " + " ".join(
            f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("mode_mass_")))
    release(pipe)
    return rows


def score_marks(row: BoardRow, run_dir: Path, scorer: "Scorer", n: int, log) -> None:
    """Put the scores of the run's checkpoints at the marks in front of the row's end point."""
    marks, _ = checkpoint_records(run_dir)
    points = []
    for mark in marks:
        pipe = scorer.load(run_dir / "checkpoints" / mark["checkpoint"])
        values = scorer(pipe, row.nfe, n)
        points.append({"minutes": mark["train_minutes"], "step": mark["step"], "metrics": values})
        log(f"board: {row.method} at {mark['train_minutes']:.1f} min (step {mark['step']}): fid={fid_of(values):.4g}")
        release(pipe)
    row.curve[:0] = points


def release(pipe: OneStepPipeline) -> None:
    pipe.generator.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prepare_feature_network(source, eval_config, registry: Registry, metrics: Sequence[str]) -> None:
    """Train (or read from its cache) the feature network of a run's image metrics before the
    methods start, so no method pays for it and none trains it concurrently."""
    from ..config import metric_config
    from ..metrics.fidelity import FeatureConfig, resolve_extractor

    for name in metrics:
        config = metric_config(eval_config, name, registry)
        if isinstance(config, FeatureConfig) and source.spec().kind in ("images", "latents"):
            resolve_extractor(source, eval_config.feature_weights, config.classifier, config.cache_dir)


def train_together(argv: dict[str, list[str]], out: Path, deadline: float | None = None,
                   gate: StartGate | None = None, log=print, status_every: float | None = None) -> dict[str, int]:
    """Start one ``onestep run`` per method at once, wait for all; return codes by method. Each
    process's output goes to ``out/METHOD.log``; each gets an equal share of the CPU threads.
    ``gate`` (the runs' ``--start-gate``) opens once every run is ready or has stopped. At
    ``deadline`` (a ``time.perf_counter`` value) the runs still going get a Ctrl-C (they write a
    checkpoint and stop: code :data:`INTERRUPTED`), and a termination a minute later. Every
    ``status_every`` seconds (None: :data:`STATUS_EVERY_S`) of training, one line per run still
    going (:func:`run_status`)."""
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
            if opened and now >= next_status:
                next_status = now + status_every
                log_status([m for m in procs if m not in codes], out, log)
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


def checkpoint_records(run_dir: Path) -> tuple[list[dict], dict]:
    """The run's checkpoints at the marks (``step``, ``train_minutes``, ``checkpoint``: its folder
    name), in order, and its last record (where training ended, at its final checkpoint)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    training = [r for r in records if "eval" not in r and "train_minutes" in r]
    if not training:
        raise ConfigError(f"run {str(run_dir)!r}: metrics.jsonl holds no training record")
    end = training[-1]
    marks = [r for r in training if "checkpoint" in r and r["step"] < end["step"]
             and (run_dir / "checkpoints" / r["checkpoint"]).is_dir()]
    return marks, end


@attrs.define
class Scorer:
    """Scores a pipeline's samples (the same labels and seed rule for every row) against the
    held-out reference; the reference features are extracted once for all rows."""

    labels: torch.Tensor | None
    reference: torch.Tensor
    reference_labels: torch.Tensor | None
    source: object
    metrics: list[str]
    registry: Registry
    cache: dict
    device: str = attrs.field(factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")

    def load(self, checkpoint: Path, device: str | None = None) -> OneStepPipeline:
        """The EMA generator of a run or step folder, without its trainer."""
        return OneStepPipeline.from_checkpoint(checkpoint, device=device or self.device, registry=self.registry)

    def __call__(self, pipe: OneStepPipeline, nfe: int, n: int) -> dict[str, float]:
        labels = self.labels[:n] if self.labels is not None else None
        y = labels if pipe.objective.generator_conditional() else None
        eval_config = compose(base=pipe.meta["run"], registry=self.registry).eval
        seed = int(pipe.meta["run"].get("seed", 0)) + EVAL_SEED_OFFSET
        samples = pipe(class_labels=labels, num_images=n, seed=seed, nfe=nfe, output_type="model")
        return score(samples, y, self.reference, self.reference_labels, self.source, self.metrics, eval_config,
                     self.registry, self.cache)


def fid_of(values: dict[str, float]) -> float:
    return next((v for k, v in values.items() if k.split("[")[0] == "fid"), float("nan"))


def row_label(row: BoardRow) -> str:
    return f"{row.method} ({row.nfe} NFE)"


def grid_samples(pipe: OneStepPipeline, nfe: int) -> torch.Tensor:
    """The same noise and labels for every row: 10 per class in class columns, else 100 (images
and latents, which the pipeline decodes to images); 2,000 for points."""
    k = pipe.spec.num_classes
    if pipe.spec.kind == "points":
        return pipe(num_images=2000, seed=GRID_SEED, nfe=nfe)
    columns = k if 0 < k <= 16 else 10
    labels = (torch.arange(columns * 10) % columns) if k > 0 else None
    return pipe(class_labels=labels, num_images=columns * 10, seed=GRID_SEED, nfe=nfe)


def board_meta(s: BoardSettings, source, spec, n_eval: int, n_test: int) -> dict:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "cpu")
    images = source.image_source()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{'cuda' if torch.cuda.is_available() else 'cpu'}: {name}", "torch": torch.__version__,
        "command": s.command,
        "data": s.data, "minutes": s.minutes, "marks_minutes": s.marks, "methods": s.methods,
        "eval_samples": n_eval, "mark_samples": min(s.mark_samples or n_eval, n_eval), "held_out": n_test, "shape": list(spec.shape), "num_classes": spec.num_classes,
        "presets": s.presets, "overrides": s.overrides, "grid_columns": spec.num_classes if 0 < spec.num_classes <= 16 else 10,
        **({"scored_on": images.name} if images is not source else {}),
    }

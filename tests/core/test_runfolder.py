"""A run never mixes with what an earlier run left in its output folder: a second run there is
refused (or, asked to overwrite, replaces it), and a resumed run leaves one record per step."""
import json

import pytest

from onestep import checkpoint as ckpt
from onestep.api import compose
from onestep.trainer import Trainer
from onestep.cli import main
from onestep.errors import ConfigError

TINY = ["train.progress=false", "train.batch_size=32", "backbone.width=16", "backbone.depth=1", "objective.nfe=2",
        "eval.metrics=[]", "sample.num=50", "train.log_every=1"]


def _run(registry, out, *overrides, resume=None, overwrite=False):
    cfg = compose(objective="flow-matching", backbone="mlp", data="moons", registry=registry,
                  overrides=[f"output_dir={out}", *TINY, *overrides])
    trainer = Trainer(cfg, registry=registry, console=False)
    trainer.fit(resume=resume, overwrite=overwrite)
    return trainer


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_into_a_used_folder_is_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "moons", "--out", str(out), *TINY, "train.steps=6", "train.checkpoint_every=3"]
    assert main(args) == 0
    before = (out / "metrics.jsonl").read_text(), sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(args[:-2] + ["train.steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"onestep: error: output_dir '{out}': holds an earlier run (checkpoints step-0000003, "
                          "step-0000006)") and "--resume" in err and "--overwrite" in err and "\n" not in err
    assert ((out / "metrics.jsonl").read_text(), sorted(p.name for p in (out / "checkpoints").iterdir())) == before


def test_overwrite_replaces_the_earlier_run_and_keeps_the_new_checkpoints(registry, tmp_path):
    out = tmp_path / "run"
    _run(registry, out, "train.steps=8", "train.checkpoint_every=4")
    _run(registry, out, "train.steps=3", "seed=1", overwrite=True)
    assert [s for s, _ in ckpt.step_dirs(out / "checkpoints")] == [3]  # not rotated away by step-8
    assert [r["step"] for r in _records(out) if "velocity/loss" in r] == [1, 2, 3]
    assert "seed: 1" in (out / "config.yaml").read_text()


def test_rotation_never_deletes_the_checkpoint_just_written(registry, tmp_path):
    t = _run(registry, tmp_path, "train.steps=1", "train.keep_checkpoints=2")
    for step in (9, 8):
        t.step = step
        t.save_checkpoint()
    t.step = 2
    written = t.save_checkpoint()
    assert written.is_dir() and [s for s, _ in ckpt.step_dirs(tmp_path / "checkpoints")] == [2, 9]


def test_resume_after_a_crash_leaves_one_metrics_record_per_step(registry, tmp_path):
    out = tmp_path / "run"
    _run(registry, out, "train.steps=8", "train.checkpoint_every=4")
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-0000008")  # as if killed after step 8 was logged, before it was saved
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 8, "velocity/lo')  # and killed in the middle of a line
    resumed = _run(registry, out, "train.steps=8", "train.checkpoint_every=4", resume=out)
    assert resumed.step == 8
    records = _records(out)
    assert [r["step"] for r in records if "velocity/loss" in r] == list(range(1, 9))
    assert [r["step"] for r in records if "eval" in r] == [8]


def test_resuming_from_an_earlier_checkpoint_does_not_mix_with_later_ones(registry, tmp_path):
    out = tmp_path / "run"
    _run(registry, out, "train.steps=8", "train.checkpoint_every=4")
    with pytest.raises(ConfigError, match=r"holds checkpoints after step 4 \(step-0000008\); .*--overwrite"):
        _run(registry, out, "train.steps=8", "train.checkpoint_every=4", resume=out / "checkpoints" / "step-0000004")
    assert (out / "checkpoints" / "step-0000008").is_dir()

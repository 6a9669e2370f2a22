"""The `onestep` command: plugins listing, a run, sampling and evaluation from its checkpoint,
and one-line errors."""
import json

import numpy as np
import pytest

from onestep.cli import main


def test_plugins_lists_components_packages_and_fields(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "flow-matching" in out and "[onestep-flow-matching]" in out
    assert "nfe = 50" in out and "gmm8" in out and "sinkhorn" in out
    assert main(["plugins", "--json", "--kind", "backbone"]) == 0
    listing = json.loads(capsys.readouterr().out)
    mlp = next(c for c in listing["components"]["backbone"] if c["name"] == "mlp")
    assert mlp["config"]["width"] == 256 and mlp["package"] == "onestep-mlp"


def test_every_setting_is_listed_with_its_description(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for field in ("train.log_every = 50", "train.optim.lr = None", "sample.num = 2000", "eval.num_samples = 2000",
                  "output_dir = 'runs/{objective}-{backbone}-{data}'"):
        assert field in out
    assert "steps between loss records in metrics.jsonl" in out
    assert main(["plugins", "--kind", "objective"]) == 0
    out = capsys.readouterr().out
    assert "Step of the particle flow in the target u + eta V" in out  # wflow's field docstring
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("onestep 0.")


def test_run_then_sample_and_eval_from_the_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "r"
    rc = main(["run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "moons", "--out", str(run_dir),
               "train.steps=30", "train.batch_size=64", "train.progress=false", "backbone.width=32",
               "objective.nfe=4", "eval.num_samples=300", "sample.num=300"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "metrics step=30 sinkhorn=" in out
    assert list((run_dir / "samples").glob("*.png"))
    assert main(["sample", str(run_dir), "--num", "50", "--nfe", "2", "--out", str(tmp_path / "s.npz")]) == 0
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (50, 2) and np.isfinite(x).all()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--metrics", "sinkhorn", "--num", "200"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 30 and result["sinkhorn"] > 0


def test_a_reader_that_closes_early_ends_the_command_quietly():
    """``onestep plugins | head``: the reader is gone before the output is written; exit 0, no
    traceback (Python's own flush at exit included: a real process)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "onestep.cli", "plugins"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == ""


def test_help_into_a_closed_pipe_is_quiet_too(monkeypatch, capsys):
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = open(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["--help"]) == 0
    closed.close()
    assert capsys.readouterr().err == ""


def test_sample_npz_holds_the_labels_of_its_samples(tmp_path, capsys):
    """The .npz carries each sample's class label: classes in turn, or the one --label asked for,
    and x is what the pipeline draws for those labels (decoded: here the points themselves)."""
    from onestep.export import OneStepPipeline

    run_dir = tmp_path / "r"
    assert main(["run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "gmm8", "--out", str(run_dir),
                 "data.labelled=true", "train.steps=5", "train.batch_size=32", "train.progress=false",
                 "backbone.width=16", "objective.nfe=2", "eval.metrics=[]", "sample.num=50"]) == 0
    assert main(["sample", str(run_dir), "--num", "12", "--out", str(tmp_path / "turn.npz")]) == 0
    assert main(["sample", str(run_dir), "--num", "5", "--label", "3", "--seed", "1", "--out", str(tmp_path / "3.npz")]) == 0
    turn, three = np.load(tmp_path / "turn.npz"), np.load(tmp_path / "3.npz")
    assert turn["labels"].tolist() == [i % 8 for i in range(12)] and turn["x"].shape == (12, 2)
    assert three["labels"].tolist() == [3] * 5
    pipe = OneStepPipeline.from_checkpoint(run_dir)
    assert np.array_equal(three["x"], pipe(class_labels=3, num_images=5, seed=1).numpy())
    assert not np.array_equal(three["x"], pipe(class_labels=4, num_images=5, seed=1).numpy())


TOY = ["--objective", "flow-matching", "--backbone", "mlp", "--data", "gmm8"]


@pytest.mark.parametrize("args, message", [
    (["run", "--objective", "nope"], "onestep: error: unknown objective 'nope'; valid:"),
    (["run", "train.steps=abc"], "onestep: error: train.steps: expected int, got 'abc'"),
    (["sample", "/nonexistent/run"], "onestep: error: checkpoint '/nonexistent/run': no complete checkpoint"),
    (["sample", "/nonexistent/run", "--num", "0"], "onestep: error: --num: expected >= 1 samples, got 0"),
    (["sample", "/nonexistent/run", "--num", "-3"], "onestep: error: --num: expected >= 1 samples, got -3"),
    (["run", "train.log_every=0"], "onestep: error: train.log_every: expected >= 1, got 0"),
    (["run", "train.optim.betas=[0.9]"], "onestep: error: train.optim.betas: expected a list of 2 values"),
    (["run", "train.optim.betas=0.9"], "onestep: error: train.optim.betas: expected a list of 2 values (float, float), "
                                       "e.g. [0.9, 0.9], got 0.9"),
    (["run", *TOY, "--out", "/proc/onestep-here/run"], "onestep: error: output_dir: cannot create '/proc/onestep-here/run'"),
    (["run", *TOY, "--out", "/dev/null/run"], "onestep: error: output_dir: cannot create '/dev/null/run'"),
    (["run", "--backbone", "mlp", "--data", "gmm8"], "onestep: error: objective.name: missing; choose an objective"),
])
def test_bad_input_is_one_line_on_stderr(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that wrongly starts writes under tmp_path, not the checkout
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_overrides_may_stand_between_options_and_resume_takes_no_value(tmp_path, capsys):
    out = tmp_path / "r"
    small = ["train.progress=false", "backbone.width=16", "objective.nfe=2", "eval.metrics=[]", "sample.num=50"]
    assert main(["run", "train.steps=4", "--objective", "flow-matching", "--backbone", "mlp", "--data", "moons",
                 "train.batch_size=32", "--out", str(out), *small]) == 0
    saved = (out / "config.yaml").read_text()
    assert "steps: 4" in saved and "batch_size: 32" in saved and "name: moons" in saved
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--resume", "train.steps=6"]) == 0  # an override, not the checkpoint
    assert "metrics step=6" in capsys.readouterr().out  # and the rest of the config came from the checkpoint


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--bogus", "train.steps=1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err

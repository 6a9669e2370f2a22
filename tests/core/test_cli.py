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


@pytest.mark.parametrize("args, message", [
    (["run", "--objective", "nope"], "onestep: error: unknown objective 'nope'; valid:"),
    (["run", "train.steps=abc"], "onestep: error: train.steps: expected int, got 'abc'"),
    (["sample", "/nonexistent/run"], "onestep: error: checkpoint '/nonexistent/run': no complete checkpoint"),
])
def test_bad_input_is_one_line_on_stderr(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err

"""`onestep compare` end to end on the 8-mode toy, the wall-clock budget, and early errors."""
import json
import sys

import matplotlib.image
import pytest
import torch

from onestep.api import compose
from onestep.cli import main
from onestep.errors import ConfigError
from onestep.interfaces import StepInfo
from onestep.metrics.evaluate import held_out
from onestep.metrics.toy import sinkhorn_divergence
from onestep.trainer import Trainer

BUDGET_S = 3.0


SMALL = ["train.progress=false", "train.batch_size=128", "backbone.width=64", "backbone.depth=2", "sample.num=500"]


def test_compare_trains_each_objective_on_the_budget_and_writes_table_and_figure(tmp_path, capsys, registry):
    out = tmp_path / "cmp"
    rc = main(["compare", "--objectives", "flow-matching,wflow", "--data", "gmm8", "--backbone", "mlp",
               "--budget-minutes", str(BUDGET_S / 60), "--out", str(out), "--num-samples", "200",
               "--speed-samples", "50", "--peer-nfe", "4,8", *SMALL, "flow-matching:objective.nfe=4"])
    assert rc == 0, capsys.readouterr().err
    table = json.loads((out / "compare.json").read_text())
    rows = table["rows"]
    assert [(r["method"], r["nfe"], r["reference"]) for r in rows] == [
        ("flow-matching", 4, False), ("wflow", 1, False), ("torchcfm-ot-cfm", 4, True), ("torchcfm-ot-cfm", 8, True)]
    # the untrained one-step flow draws the noise itself: its divergence (~3.7) is what a model
    # that learnt nothing scores; the rows measured 0.4-0.6 after their 3 s (37-211 steps)
    reference, _ = held_out(registry.build("data", "gmm8", registry.get("data", "gmm8").cls.Config()), 200)
    noise = sinkhorn_divergence(torch.randn(200, 2, generator=torch.Generator().manual_seed(0)), reference)
    for r in rows:
        assert r["steps"] >= 1 and BUDGET_S <= r["train_seconds"] < BUDGET_S + 60, r
        assert r["train_steps_per_s"] == pytest.approx(r["steps"] / r["train_seconds"])
        assert r["samples_per_s"] > 0 and r["metrics"]["modes_total"] == 8, r
        assert r["metrics"]["sinkhorn"] < noise / 2, (noise, r)
    assert table["meta"]["data"] == "gmm8" and table["meta"]["budget_minutes"] == pytest.approx(BUDGET_S / 60)
    md = (out / "compare.md").read_text()
    assert "| method | NFE |" in md and "sinkhorn (lower better)" in md and md.count("(external reference)") == 2
    picture = matplotlib.image.imread(out / "compare.png")
    assert picture.shape[1] > 3 * picture.shape[0]  # four panels side by side

    capsys.readouterr()  # drop what training printed
    rc = main(["eval", str(out / "flow-matching"), "--feature-weights", str(tmp_path / "no-such.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("onestep: error: eval.feature_weights: file") and "\n" not in err


@pytest.mark.parametrize("args, message", [
    (["--feature-weights", "/no/such/inception.pth"], "eval.feature_weights: file '/no/such/inception.pth' not found"),
    (["--budget-minutes", "0"], "--budget-minutes: expected > 0"),
    (["nope:objective.nfe=3"], "'nope' is not one of the compared objectives"),
    (["--objectives", "flow-matching,no-such-objective"], "unknown objective 'no-such-objective'"),
])
def test_compare_rejects_bad_input_before_training(tmp_path, capsys, args, message):
    argv = ["compare", "--objectives", "flow-matching", "--budget-minutes", "0.01", "--data", "gmm8",
            "--out", str(tmp_path / "c"), *args]  # a repeated flag: the last one wins
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_train_max_minutes_stops_on_the_clock_and_drives_progress(registry, quiet):
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
                  overrides=quiet + ["train.steps=1000000", "train.max_minutes=0.02", "train.batch_size=64",
                                     "train.checkpoint_every_minutes=0.008", "train.keep_checkpoints=4",
                                     "backbone.width=32", "backbone.depth=1", "eval.metrics=[]"])
    run = Trainer(cfg, registry=registry, console=False)
    summary = run.fit()
    assert 1.2 <= summary["train_seconds"] < 1.2 + 30
    assert 1 <= summary["steps_run"] == summary["step"] < 1000000
    assert StepInfo(summary["step"] - 1, run.planned_steps).progress > 0.5
    records = [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "samples_per_s" in r][-1]["step"] == summary["step"]
    # a checkpoint each time the training clock passed 0.008 and 0.016 minutes, then the final one
    saved = [r for r in records if "checkpoint" in r]
    assert [round(r["train_minutes"] / 0.008 - 0.5) for r in saved[:-1]] == [1, 2]
    assert saved[-1]["step"] == summary["step"] and all((run.out_dir / "checkpoints" / r["checkpoint"]).is_dir() for r in saved)


def test_train_max_minutes_must_not_be_negative(registry):
    with pytest.raises(ConfigError, match=r"^train.max_minutes: expected >= 0"):
        compose(data="gmm8", overrides=["train.max_minutes=-1"], registry=registry)

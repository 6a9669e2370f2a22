"""`onestep board`: methods trained together from their presets, scored at marks, one table, one
figure of FID against minutes, one grid per row; and its one-line errors."""
import json
import re

import matplotlib.image
import pytest
import yaml

from onestep.cli import main

PRESET_FM = {"objective": {"name": "flow-matching", "nfe": 4}, "backbone": {"name": "mlp", "width": 48, "depth": 1},
             "data": {"name": "digits"}, "train": {"batch_size": 64, "optim": {"lr": 2.0e-3}}}
PRESET_OTNFM = {"objective": {"name": "ot-nfm", "lr": 2.0e-3}, "backbone": {"name": "mlp", "width": 40, "depth": 1},
                "coupler": {"name": "minibatch-ot"}, "data": {"name": "digits"}, "train": {"batch_size": 64}}


def write_presets(folder, *presets):
    folder.mkdir()
    for i, p in enumerate(presets):
        (folder / f"preset{i}.yaml").write_text(yaml.safe_dump(p))
    return folder


@pytest.mark.slow
def test_board_trains_two_methods_together_from_presets(tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr("onestep.compare.launch.STATUS_EVERY_S", 2.0)
    presets = write_presets(tmp_path / "presets", PRESET_FM, PRESET_OTNFM)
    out = tmp_path / "board"
    rc = main(["board", "--data", "digits", "--minutes", "0.12", "--marks", "0.05", "--methods", "flow-matching,ot-nfm@deep",
               "--presets", str(presets), "--out", str(out), "--eval-samples", "100", "--mark-samples", "60", "--speed-samples", "50",
               "--few-steps", "1", "--metrics", "fid,precision-recall,class-accuracy", "ot-nfm@deep:backbone.depth=2"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert re.search(r"board: flow-matching: step \d+, \d+\.\d min, velocity/loss=", printed.out), printed.out
    board = json.loads((out / "board.json").read_text())
    rows = board["rows"]
    assert [(r["method"], r["nfe"]) for r in rows] == [("flow-matching", 4), ("flow-matching", 1), ("ot-nfm@deep", 1)]
    for r in rows:
        fid = next(v for k, v in r["metrics"].items() if k.startswith("fid["))
        assert fid > 0 and r["samples_per_s"] > 0 and r["steps"] >= 1
        assert r["train_minutes"] == pytest.approx(0.12, abs=0.05)
    curve = rows[0]["curve"]
    assert len(curve) >= 2 and curve[0]["minutes"] < curve[-1]["minutes"]  # a mark, then the end
    assert curve[0]["step"] < curve[-1]["step"] and curve[0]["metrics"] != curve[-1]["metrics"]  # scored from the mark's checkpoint
    assert curve[-1]["metrics"] == rows[0]["metrics"]  # the end point is the row, scored by the board itself
    events = EventAccumulator(str(out / "runs" / "flow-matching"), size_guidance={"scalars": 0}).Reload()
    fid_tag = next(k for k in curve[-1]["metrics"] if k.startswith("fid["))
    assert [(e.step, e.value) for e in events.Scalars(f"board/{fid_tag}")] == [
        (p["step"], pytest.approx(p["metrics"][fid_tag], rel=1e-6)) for p in curve]  # the curve, beside the run's losses
    assert board["meta"]["eval_samples"] == 100 and board["meta"]["held_out"] == 180 and board["meta"]["mark_samples"] == 60
    start = out / "start"  # both runs waited at the start line, and the board let them go together
    assert (start / "go").is_file() and len(list(start.glob("*.ready"))) == 2
    for m in ("flow-matching", "ot-nfm@deep"):  # the runs only trained and checkpointed: the board scored them
        records = [json.loads(line) for line in (out / "runs" / m / "metrics.jsonl").read_text().splitlines()]
        assert not any("eval" in r for r in records) and sum("checkpoint" in r for r in records) >= 2
    assert board["meta"]["command"].startswith("onestep board --data digits --minutes 0.12")
    # each run kept its preset's values (a variant NAME@LABEL uses NAME's), and an explicit scoped override won
    fm = yaml.safe_load((out / "runs" / "flow-matching" / "config.yaml").read_text())
    ot = yaml.safe_load((out / "runs" / "ot-nfm@deep" / "config.yaml").read_text())
    assert fm["backbone"]["width"] == 48 and fm["objective"]["nfe"] == 4 and fm["train"]["max_minutes"] == 0.12
    assert ot["backbone"]["width"] == 40 and ot["backbone"]["depth"] == 2 and ot["coupler"]["name"] == "minibatch-ot"
    table = (out / "board.md").read_text()
    assert "| flow-matching | 1 |" in table and "100 of 180 held-out images" in table
    assert matplotlib.image.imread(out / "fid_vs_minutes.png").shape[0] > 100
    assert (out / "grid-ot-nfm_deep-1nfe.png").is_file() and (out / "grids.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--methods", "no-such-method"], r"unknown objective 'no-such-method'; valid: .*flow-matching"),
    (["--methods", "flow-matching", "--minutes", "0"], r"--minutes: expected > 0, got 0"),
    (["--methods", "flow-matching", "--deadline", "0.5"], r"--deadline: expected more than --minutes"),
    (["--methods", "wflow"], r"--methods: no preset of 'wflow' in .*--config wflow=FILE"),
    (["--methods", "flow-matching", "--config", "flow-matching=missing.yaml"], r"config file 'missing.yaml': not found"),
    (["--methods", "flow-matching", "--data", "gmm8", "--metrics", "fid"], r"--metrics: 'fid' applies to images, latents data; data 'gmm8' is points"),
])
def test_board_bad_input_is_one_line_before_training(tmp_path, capsys, args, message):
    import re

    presets = write_presets(tmp_path / "presets", PRESET_FM)
    base = {"--data": "digits", "--minutes": "1", "--presets": str(presets), "--out": str(tmp_path / "b")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    rc = main(["board", *[a for kv in base.items() for a in kv]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "b" / "runs").exists()


def test_caption_of_a_board_without_marks_says_end_only():
    """`--marks 0` scores only the end: the caption must not claim checkpoints every 0 minutes or a curve."""
    from onestep.compare.report import board_table
    meta = {"data": "digits", "num_classes": 10, "minutes": 1.0, "device": "cpu", "marks_minutes": 0, "eval_samples": 100,
            "held_out": 360, "mark_samples": 50, "torch": "x", "date": "today"}
    caption = board_table([], meta).split("\n")[0]
    assert "checkpointed at the end only" in caption and "every 0" not in caption and "curve" not in caption
    marked = board_table([], {**meta, "marks_minutes": 2.0}).split("\n")[0]
    assert "checkpointed every 2.0 min" in marked and "the curve's marks with 50" in marked


def test_a_training_run_reports_its_steps_minutes_and_last_losses(tmp_path):
    """The board's status line of a run while it trains: from the newest loss record, past the
    evaluation and checkpoint records after it and a torn last line."""
    import json

    from onestep.compare.launch import run_status

    assert run_status(tmp_path) == "starting"
    records = [{"step": 50, "generator/loss": 0.5, "critic/loss": 1.0, "train_minutes": 0.2},
               {"step": 100, "generator/loss": 0.25, "critic/loss": 0.75, "samples_per_s": 900.0, "train_minutes": 0.51},
               {"step": 100, "train_minutes": 0.51, "checkpoint": "step-0000100"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 1')
    assert run_status(tmp_path) == "step 100, 0.5 min, generator/loss=0.25 critic/loss=0.75"

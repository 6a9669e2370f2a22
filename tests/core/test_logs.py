"""A run's numbers and pictures reach TensorBoard's event files as they reach metrics.jsonl."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from onestep.api import compose
from onestep.trainer import Trainer


def tiny_run(out, *overrides):
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", overrides=[
        f"output_dir={out}", "train.progress=false", "train.steps=20", "train.log_every=10", "train.sample_every=10",
        "train.batch_size=32", "backbone.width=16", "objective.nfe=2", "eval.metrics=[sinkhorn]",
        "eval.num_samples=100", "sample.num=100", *overrides])
    Trainer(cfg, console=False).fit()


def test_every_logged_number_and_the_sample_pictures_are_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_run(tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "samples_per_s" in r]
    evaluation = next(r for r in records if "eval" in r)
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    loss_tag = next(k for k in losses[0] if k.endswith("/loss"))
    for tag in (loss_tag, "samples_per_s", "lr/generator", "train_minutes"):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(r["step"], r[tag]) for r in losses]
        assert [s for s, _ in got[:2]] == [10, 20] and [s for s, _ in want] == [10, 20]
        assert np.allclose([v for _, v in got[:2]], [v for _, v in want], rtol=1e-6), tag
    [sinkhorn] = events.Scalars("eval/sinkhorn")
    assert (sinkhorn.step, sinkhorn.value) == (20, pytest.approx(evaluation["eval"]["sinkhorn"], rel=1e-6))
    assert "samples" in tags["images"]
    pictures = events.Images("samples")
    assert sorted({p.step for p in pictures}) == [10, 20]
    last = Image.open(io.BytesIO(pictures[-1].encoded_image_string))
    written = Image.open(tmp_path / "run" / "samples" / "step-0000020.png")
    assert last.size == written.size and np.array_equal(np.asarray(last.convert("RGB")), np.asarray(written.convert("RGB")))


def test_tensorboard_can_be_switched_off(tmp_path):
    tiny_run(tmp_path / "run", "train.tensorboard=false", "eval.metrics=[]", "train.sample_every=0")
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_a_resumed_run_draws_each_step_once(tmp_path):
    """Resuming from step 10 of a run that had reached step 20: TensorBoard drops the first
    file's later steps, as metrics.jsonl is truncated, so no step appears twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quiet = ["eval.metrics=[]", "train.sample_every=0", "train.checkpoint_every=10"]
    tiny_run(tmp_path / "run", *quiet)
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", overrides=[
        f"output_dir={tmp_path / 'run'}", "train.progress=false", "train.steps=20", "train.log_every=10",
        "train.batch_size=32", "backbone.width=16", "objective.nfe=2", "eval.num_samples=100", "sample.num=100", *quiet])
    Trainer(cfg, console=False).fit(resume=tmp_path / "run" / "checkpoints" / "step-0000010", overwrite=True)
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("samples_per_s")] == [10, 20]

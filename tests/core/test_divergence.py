"""A run whose loss turns NaN stops with a one-line error naming the step and the last good
checkpoint, and writes no checkpoint after it (ZeRO-2 without clipping applies a NaN step). The
advice names fields that exist; NaN in the data is reported as such, also when it makes a
method's solver raise (W-Flow's Sinkhorn) instead of returning a NaN loss."""
import pytest
import torch
from safetensors.torch import load_file

from onestep.api import compose
from onestep.errors import DivergenceError
from onestep.trainer import Trainer


def test_nan_loss_stops_before_the_next_checkpoint(registry, tmp_path):
    cfg = compose(
        objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
        overrides=[f"output_dir={tmp_path}", "train.progress=false", "train.steps=12", "train.batch_size=64",
                   "train.zero_stage=2", "train.grad_clip=0", "train.log_every=100", "train.checkpoint_every=4",
                   "backbone.width=32", "backbone.depth=1", "eval.metrics=[]"],
    )
    trainer = Trainer(cfg, registry=registry, console=False)
    honest = trainer.objective.loss

    def poisoned(phase, nets, batches, info):
        loss, logs = honest(phase, nets, batches, info)
        return (loss * float("nan") if info.step >= 5 else loss), logs

    trainer.objective.loss = poisoned
    with pytest.raises(DivergenceError, match=r"step 8: .*loss is not finite.*step-0000004") as err:
        trainer.fit()
    # flow matching has no objective.lr: the advice names the field that sets its learning rate
    assert "lower train.optim.lr=0.001 or set train.grad_clip > 0" in str(err.value) and "objective.lr" not in str(err.value)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step-0000004"]
    weights = load_file(str(tmp_path / "checkpoints/step-0000004/generator.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    live = trainer.engines["generator"].module
    assert not all(torch.isfinite(p).all() for p in live.parameters())  # the NaN step was applied


def _poisoned_data_run(registry, tmp_path, objective, *extra):
    cfg = compose(objective=objective, backbone="mlp", data="gmm8", registry=registry, overrides=[
        f"output_dir={tmp_path}", "train.progress=false", "train.steps=6", "train.batch_size=64", "train.log_every=2",
        "backbone.width=32", "backbone.depth=1", "eval.metrics=[]", *extra])
    trainer = Trainer(cfg, registry=registry, console=False)
    points = trainer.source.dataset("train").tensors[0]
    points[::50, 0] = float("nan")  # what a broken preprocessing step leaves in a dataset
    return trainer


def test_nan_in_the_data_is_reported_as_such(registry, tmp_path):
    trainer = _poisoned_data_run(registry, tmp_path, "flow-matching")
    with pytest.raises(DivergenceError, match=r"training data \(gmm8\) holds NaN or inf values"):
        trainer.fit()


def test_wflow_on_nan_ends_in_the_same_divergence_error_not_a_solver_traceback(registry, tmp_path):
    """Whether the Sinkhorn solver raises on the NaN batch or returns NaN plans (its fixed-budget
    solves do), the run ends in a DivergenceError that names the data as the cause."""
    trainer = _poisoned_data_run(registry, tmp_path, "wflow")
    with pytest.raises(DivergenceError, match=r"training data \(gmm8\) holds NaN"):
        trainer.fit()


def test_advice_for_a_method_with_its_own_learning_rate_names_it(registry, tmp_path):
    cfg = compose(objective="wflow", backbone="mlp", data="gmm8", registry=registry, overrides=[
        f"output_dir={tmp_path}", "train.progress=false", "train.steps=4", "train.batch_size=64", "train.log_every=2",
        "backbone.width=32", "backbone.depth=1", "eval.metrics=[]", "objective.lr=0.5", "train.grad_clip=1"])
    trainer = Trainer(cfg, registry=registry, console=False)
    honest = trainer.objective.loss
    trainer.objective.loss = lambda *a: (honest(*a)[0] * float("inf"), {})
    with pytest.raises(DivergenceError, match=r"; lower objective.lr=0.5$"):
        trainer.fit()

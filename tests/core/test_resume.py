"""A run stopped at step k and resumed reaches step 2k with the same parameters as an
uninterrupted run (bit-identical on CPU), for plain data-parallel, ZeRO-2 and ZeRO-3 engines."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_checkpoint_weights
from onestep.api import compose
from onestep.trainer import Trainer


def _run(registry, out, steps, zero, resume=None):
    cfg = compose(
        objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
        overrides=[f"output_dir={out}", "train.progress=false", f"train.steps={steps}", "train.batch_size=64",
                   f"train.zero_stage={zero}", "train.warmup_steps=3", "train.grad_clip=1.0",
                   "train.checkpoint_every=4", "backbone.width=32", "backbone.depth=1",
                   "sample.num=100", "objective.nfe=2", "eval.metrics=[]"],
    )
    trainer = Trainer(cfg, registry=registry, console=False)
    trainer.fit(resume=resume)
    return trainer


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_resume_is_bit_identical(registry, tmp_path, zero):
    full = _run(registry, tmp_path / "full", 8, zero)
    _run(registry, tmp_path / "half", 4, zero)
    resumed = _run(registry, tmp_path / "half", 8, zero, resume=str(tmp_path / "half"))
    assert resumed.step == full.step == 8
    a = assert_same_checkpoint_weights(tmp_path / "full", tmp_path / "half", 8)
    # and the run really trained: parameters moved away from their initial values
    init = _run(registry, tmp_path / "init", 1, zero)
    c = load_file(str(tmp_path / "init/checkpoints/step-0000001/generator.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("change, message", [
    (["train.batch_size=32"], r"train.batch_size: 64 in checkpoint '.*step-0000004', 32 now; a resumed run keeps it"),
    (["objective=wflow"], r"objective.name: 'flow-matching' in checkpoint '.*', 'wflow' now"),
    (["backbone.width=48"], r"backbone.width: 32 in checkpoint '.*', 48 now"),
])
def test_resuming_with_a_changed_batch_size_objective_or_network_is_refused(registry, tmp_path, change, message):
    from onestep.errors import ConfigError

    _run(registry, tmp_path, 4, 0)
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry, overrides=[
        f"output_dir={tmp_path}", "train.progress=false", "train.steps=8", "train.batch_size=64",
        "train.checkpoint_every=4", "backbone.width=32", "backbone.depth=1", "eval.metrics=[]", *change])
    trainer = Trainer(cfg, registry=registry, console=False)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(resume=tmp_path)
    assert trainer.step == 0  # refused before anything was loaded

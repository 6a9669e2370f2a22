"""A run stopped at step k and resumed reaches step 2k with the same parameters as an
uninterrupted run (bit-identical on CPU), for plain data-parallel, ZeRO-2 and ZeRO-3 engines."""
import pytest
import torch
from safetensors.torch import load_file

from onestep.api import build_run, compose


def _run(registry, out, steps, zero, resume=None):
    cfg = compose(
        objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
        overrides=[f"output_dir={out}", "train.progress=false", f"train.steps={steps}", "train.batch_size=64",
                   f"train.zero_stage={zero}", "train.warmup_steps=3", "train.grad_clip=1.0",
                   "train.checkpoint_every=4", "backbone.width=32", "backbone.depth=1",
                   "sample.num=100", "objective.nfe=2", "eval.metrics=[]"],
    )
    trainer = build_run(cfg, registry=registry, console=False)
    trainer.fit(resume=resume)
    return trainer


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_resume_is_bit_identical(registry, tmp_path, zero):
    full = _run(registry, tmp_path / "full", 8, zero)
    _run(registry, tmp_path / "half", 4, zero)
    resumed = _run(registry, tmp_path / "half", 8, zero, resume=str(tmp_path / "half"))
    assert resumed.step == full.step == 8
    a = load_file(str(tmp_path / "full/checkpoints/step-0000008/generator.safetensors"))
    b = load_file(str(tmp_path / "half/checkpoints/step-0000008/generator.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea = load_file(str(tmp_path / "full/checkpoints/step-0000008/generator.ema.safetensors"))
    eb = load_file(str(tmp_path / "half/checkpoints/step-0000008/generator.ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # and the run really trained: parameters moved away from their initial values
    init = _run(registry, tmp_path / "init", 1, zero)
    c = load_file(str(tmp_path / "init/checkpoints/step-0000001/generator.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)

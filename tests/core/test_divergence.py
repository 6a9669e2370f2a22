"""A run whose loss turns NaN stops with a one-line error naming the step and the last good
checkpoint, and writes no checkpoint after it (ZeRO-2 without clipping applies a NaN step)."""
import pytest
import torch
from safetensors.torch import load_file

from onestep.api import build_run, compose
from onestep.errors import DivergenceError


def test_nan_loss_stops_before_the_next_checkpoint(registry, tmp_path):
    cfg = compose(
        objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
        overrides=[f"output_dir={tmp_path}", "train.progress=false", "train.steps=12", "train.batch_size=64",
                   "train.zero_stage=2", "train.grad_clip=0", "train.log_every=100", "train.checkpoint_every=4",
                   "backbone.width=32", "backbone.depth=1", "eval.metrics=[]"],
    )
    trainer = build_run(cfg, registry=registry, console=False)
    honest = trainer.objective.loss

    def poisoned(phase, nets, batches, info):
        loss, logs = honest(phase, nets, batches, info)
        return (loss * float("nan") if info.step >= 5 else loss), logs

    trainer.objective.loss = poisoned
    with pytest.raises(DivergenceError, match=r"step 8: .*loss is not finite.*step-0000004"):
        trainer.fit()
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step-0000004"]
    weights = load_file(str(tmp_path / "checkpoints/step-0000004/generator.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    live = trainer.engines["generator"].module
    assert not all(torch.isfinite(p).all() for p in live.parameters())  # the NaN step was applied

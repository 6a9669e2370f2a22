"""Checkpoints are atomic, pickle-free and fail loudly on damage."""
import pytest
import torch

from onestep import checkpoint as ckpt
from onestep.api import build_run, compose
from onestep.errors import CheckpointError


def _trainer(registry, out, steps=4):
    cfg = compose(objective="flow-matching", backbone="mlp", data="moons", registry=registry,
                  overrides=[f"output_dir={out}", "train.progress=false", f"train.steps={steps}", "train.batch_size=32",
                             "backbone.width=16", "backbone.depth=1", "train.keep_checkpoints=2"])
    return build_run(cfg, registry=registry, console=False)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(registry, tmp_path, monkeypatch):
    t = _trainer(registry, tmp_path)
    t.step = 1
    first = t.save_checkpoint()
    t.step = 2

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_state", boom)
    with pytest.raises(OSError):
        t.save_checkpoint()
    assert ckpt.resolve(tmp_path) == first
    monkeypatch.undo()
    for step in (3, 4, 5):
        t.step = step
        t.save_checkpoint()
    assert [s for s, _ in ckpt.step_dirs(tmp_path / "checkpoints")] == [4, 5]  # keep-last-2


def test_damaged_or_foreign_checkpoints_are_clear_errors(registry, tmp_path):
    t = _trainer(registry, tmp_path)
    folder = t.save_checkpoint()
    (folder / "generator.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="generator.safetensors'.*unreadable"):
        t.load(folder)
    (folder / "trainer.pt").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.resolve(folder)


def test_opaque_objects_are_never_pickled_and_come_back_from_the_template():
    import enum

    class Stage(enum.IntEnum):
        TWO = 2

    state = {"w": torch.ones(2), "stage": Stage.TWO, "scaler": object(), "n": [1, (2.0, "x")]}
    plain = ckpt.to_plain(state)
    path = "/tmp/_onestep_plain.pt"
    torch.save(plain, path)
    loaded = torch.load(path, weights_only=True)
    restored = ckpt.fill_opaque(loaded, state)
    assert restored["stage"] is Stage.TWO and restored["scaler"] is state["scaler"]
    assert torch.equal(restored["w"], state["w"]) and restored["n"] == [1, (2.0, "x")]

"""Checkpoints are atomic, pickle-free and fail loudly on damage."""
import pytest
import torch

from onestep import checkpoint as ckpt
from onestep import statecodec
from onestep.api import compose
from onestep.trainer import Trainer
from onestep.errors import CheckpointError


def _trainer(registry, out, steps=4):
    cfg = compose(objective="flow-matching", backbone="mlp", data="moons", registry=registry,
                  overrides=[f"output_dir={out}", "train.progress=false", f"train.steps={steps}", "train.batch_size=32",
                             "backbone.width=16", "backbone.depth=1", "train.keep_checkpoints=2"])
    return Trainer(cfg, registry=registry, console=False)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(registry, tmp_path, monkeypatch):
    t = _trainer(registry, tmp_path)
    t.step = 1
    first = t.save_checkpoint()
    t.step = 2

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(statecodec, "save_state", boom)
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
    with pytest.raises(CheckpointError, match="generator.safetensors': damaged"):
        t.load(folder)
    (folder / ckpt.CHECKSUMS).unlink()  # as written before checkpoints carried checksums
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
    plain = statecodec.to_plain(state)
    path = "/tmp/_onestep_plain.pt"
    torch.save(plain, path)
    loaded = torch.load(path, weights_only=True)
    restored = statecodec.fill_opaque(loaded, state)
    assert restored["stage"] is Stage.TWO and restored["scaler"] is state["scaler"]
    assert torch.equal(restored["w"], state["w"]) and restored["n"] == [1, (2.0, "x")]


def test_a_flipped_bit_is_detected_and_resume_falls_back_to_the_newest_intact_checkpoint(registry, tmp_path):
    from safetensors.torch import load_file

    def trainer():
        cfg = compose(objective="flow-matching", backbone="mlp", data="moons", registry=registry,
                      overrides=[f"output_dir={tmp_path}", "train.progress=false", "train.steps=8", "train.batch_size=32",
                                 "train.checkpoint_every=4", "backbone.width=16", "backbone.depth=1", "eval.metrics=[]",
                                 "sample.num=50"])
        return Trainer(cfg, registry=registry, console=False)

    trainer().fit()
    latest = tmp_path / "checkpoints" / "step-0000008"
    honest = {k: v.clone() for k, v in load_file(str(latest / "generator.safetensors")).items()}  # not a view of the file
    data = bytearray((latest / "generator.safetensors").read_bytes())
    data[-3] ^= 0x10  # one bit of the last weight: the file still parses, the value is wrong
    (latest / "generator.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"generator.safetensors': damaged"):
        trainer().load(latest)
    resumed = trainer()
    resumed.fit(resume=tmp_path)
    log = (tmp_path / "log.jsonl").read_text()
    assert '"damaged checkpoint skipped"' in log and '"start_step": 4' in log  # said so, and went back to step 4
    assert (tmp_path / "checkpoints" / "damaged-step-0000008").is_dir()  # set aside, not deleted
    again = load_file(str(latest / "generator.safetensors"))
    assert all(torch.equal(again[k], honest[k]) for k in honest)  # retrained steps 5-8 exactly

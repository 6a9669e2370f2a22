"""Ctrl-C during training ends the step in progress, writes a checkpoint of it and exits with one
line (code 130); ``--resume`` continues from there. A second Ctrl-C stops at once and says that
no checkpoint of that step was written."""
import os
import signal

import pytest

from onestep import checkpoint as ckpt
from onestep.cli import main
from onestep.trainer import Trainer

ARGS = ["--objective", "flow-matching", "--backbone", "mlp", "--data", "moons", "train.progress=false", "train.batch_size=32", "backbone.width=16", "backbone.depth=1",
        "objective.nfe=2", "eval.metrics=[]", "sample.num=50", "train.steps=20", "train.log_every=5"]


@pytest.fixture(autouse=True)
def default_sigint():
    """SIGINT's default handler, as an interactive shell gives it: under nohup or ``&`` the suite
    starts with SIGINT ignored, and a keypress would never reach the command."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.SIG_DFL if before is None else before)


def _main(args):
    try:
        return main(args)
    except KeyboardInterrupt:  # not caught by the command: pytest would stop the whole session
        pytest.fail("Ctrl-C escaped the command as KeyboardInterrupt (a traceback for the user)")


def _press_ctrl_c_at(monkeypatch, steps):
    honest = Trainer.train_step

    def train_step(self):
        logs = honest(self)
        if self.step + 1 in steps:
            os.kill(os.getpid(), signal.SIGINT)
        return logs

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_ctrl_c_checkpoints_the_current_step_and_resume_continues(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _press_ctrl_c_at(monkeypatch, {7})
    assert _main(["run", "--out", str(out), *ARGS]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"onestep: error: interrupted: training stopped at step 7, checkpoint "
                       f"{out}/checkpoints/step-0000007 written; continue with --resume")
    assert not any("Traceback" in line for line in err)
    assert ckpt.resolve(out).name == "step-0000007"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.undo()
    assert main(["run", "--out", str(out), "--resume", *ARGS]) == 0
    assert ckpt.resolve(out).name == "step-0000020"


def test_a_second_ctrl_c_stops_at_once_and_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _press_ctrl_c_at(monkeypatch, {3})
    honest = Trainer.save_checkpoint

    def impatient_save(self):  # the user presses again while the final checkpoint is being written
        os.kill(os.getpid(), signal.SIGINT)
        return honest(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", impatient_save)
    assert _main(["run", "--out", str(out), *ARGS]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "onestep: error: interrupted at step 3 before a checkpoint of it was written; no checkpoint was written"
    assert ckpt.latest(out / "checkpoints") is None

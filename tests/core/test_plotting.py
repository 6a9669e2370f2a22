"""Pictures are written through a temporary file: a drawing interrupted mid-write (a board cut by
its deadline, a killed run) leaves the previous picture intact, never a truncated PNG."""
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from onestep import plotting
from onestep.plotting import save_samples


def cut_short(write):
    """``write`` that leaves half a file on disk and then stops the process."""
    def stopped(target, *args, **kwargs):
        write(target, *args, **kwargs)
        with open(target, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    return stopped


@pytest.mark.parametrize("samples", [torch.rand(16, 1, 8, 8) * 2 - 1, torch.randn(200, 2)], ids=["image grid", "scatter"])
def test_an_interrupted_drawing_leaves_the_previous_picture(samples, tmp_path, monkeypatch):
    path = tmp_path / "samples.png"
    save_samples(samples, path, nrow=4, title="first")
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    real_savefig, real_imsave = Figure.savefig, plt.imsave
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: cut_short(lambda *b, **c: real_savefig(self, *b, **c))(*a, **k))
    monkeypatch.setattr(plotting.plt, "imsave", cut_short(real_imsave))
    with pytest.raises(KeyboardInterrupt):
        save_samples(samples, path, nrow=4, title="second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # and no temporary file left behind

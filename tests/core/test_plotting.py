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


def test_every_figure_labels_its_axes_with_units(tmp_path, monkeypatch):
    """Samples (points, a histogram, image grids), loss curves and the compare/board figures:
    every panel says what its axes hold; a quantity says its unit or scale in parentheses."""
    import json

    from onestep.compare.comparison import Comparison
    from onestep.compare.rows import Row
    from onestep.compare.report import save_curves, save_figure, save_grids
    from onestep.plotting import save_loss_curves

    drawn = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), real(self, *a, **k))[1])
    save_samples(torch.randn(200, 2), tmp_path / "points.png", reference=torch.randn(200, 2))
    save_samples(torch.randn(200, 1), tmp_path / "line.png", reference=torch.randn(200, 1))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "generator/loss": 1 / s, "critic/loss": s})
                                                    + "\n" for s in (1, 2, 3)))
    save_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "losses.png")
    rows = [Row("a", 1, {}, 1.0, 1, 1.0, "x"), Row("b", 1, {}, 1.0, 1, 1.0, "y")]
    save_figure(Comparison(rows, {"a (1 NFE)": torch.randn(50, 2), "b (1 NFE)": torch.randn(50, 2)}, None, {}),
                tmp_path / "compare-points.png")
    images = {"a (1 NFE)": torch.rand(20, 1, 8, 8), "b (1 NFE)": torch.rand(20, 1, 8, 8)}
    save_figure(Comparison(rows, images, None, {"grid_columns": 10, "num_classes": 10}), tmp_path / "compare-images.png")
    save_grids(images, 10, tmp_path / "grids.png", classes=10)
    curve = [{"minutes": m, "step": 10 * m, "metrics": {"fid": 10.0 / m}} for m in (1, 2)]
    save_curves([Row("a", 1, {"fid": 5.0}, 1.0, 20, 2.0, "x", curve=curve)], tmp_path / "curves.png")
    assert len(drawn) == 7
    for figure in drawn:
        for ax in figure.axes:
            assert ax.get_xlabel(), ax.get_title()
            if not ax.images:  # a chart of quantities, not a picture of samples
                assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), (ax.get_xlabel(), ax.get_ylabel())

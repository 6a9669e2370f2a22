"""Array data (.npz/.npy): good files load with their labels; bad ones fail before training with
one line that names the file, the array and what would be valid (CLI exit code 2)."""
import numpy as np
import pytest

from onestep.cli import main
from onestep.data.images import NpzArrays, NpzConfig
from onestep.errors import ConfigError


def test_points_and_labels_load_with_their_classes(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.random.default_rng(0).normal(size=(50, 2)), y=np.arange(50) % 3)
    src = NpzArrays(NpzConfig(path=str(tmp_path / "ok.npz")))
    assert src.spec().shape == (2,) and src.spec().num_classes == 3
    x, y = src.dataset("train")[0]
    assert x.shape == (2,) and 0 <= int(y) < 3


def _nan_points():
    x = np.zeros((20, 2))
    x[7, 1] = np.nan
    return {"x": x}


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.arange(20.0)}, r"data.path: array 'x' in '.*bad.npz' has shape \[20\]; expected \[N, \*sample shape\]"),
    ({"x": np.zeros((20, 2)), "y": np.arange(19)},
     r"data.label_key: array 'y' in '.*bad.npz' has shape \[19\]; expected \[20\] \(one label per sample\)"),
    ({"x": np.zeros((0, 2))}, r"data.path: array 'x' in '.*bad.npz' holds 0 samples"),
    (_nan_points(), r"data.path: array 'x' in '.*bad.npz' holds 1 NaN or infinite values"),
    ({"x": np.zeros((20, 2)), "y": np.linspace(0, 1, 20)}, r"data.label_key: .* has dtype float64; expected integer"),
    ({"pixels": np.zeros((20, 2))}, r"data.key: 'x' not in '.*bad.npz'; arrays: pixels"),
    (None, r"data.path: '.*bad.npz' is neither a .npz \(zip\) nor a .npy file"),
])
def test_bad_arrays_are_one_line_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    if arrays is None:
        path.write_text("x,y\n1,2\n")  # a CSV named .npz
    else:
        np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message) as err:
        NpzArrays(NpzConfig(path=str(path))).spec()
    assert "\n" not in str(err.value)


def test_the_cli_reports_bad_data_before_training(tmp_path, capsys):
    np.savez(tmp_path / "flat.npz", x=np.arange(100.0))
    rc = main(["run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "npz", "--out", str(tmp_path / "run"), f"data.path={tmp_path / 'flat.npz'}",
               "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("onestep: error: data.path: array 'x' in") and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()

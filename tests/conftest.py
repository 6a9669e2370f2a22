"""Shared fixtures: small, fast runs on CPU."""
import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def registry():
    from onestep.registry import Registry

    return Registry.discover()


@pytest.fixture
def quiet(tmp_path):
    """Overrides that keep a test run small and silent, writing under tmp_path."""
    return [f"output_dir={tmp_path}/run", "train.progress=false", "train.log_every=10"]


@pytest.fixture
def digits_label_metrics(tmp_path):
    """Overrides for a 400-step MLP run on the 8x8 digits scored by FID and class accuracy, both
    from one data classifier cached under tmp_path (trained once)."""
    cache = tmp_path / "features"
    return ["train.progress=false", "train.log_every=1000", "train.steps=400", "train.batch_size=256",
            "backbone.width=256", "backbone.depth=3", "eval.metrics=[fid,class-accuracy]", "eval.num_samples=1000",
            "sample.num=200", f"eval.options.fid.cache_dir={cache}", f"eval.options.class-accuracy.cache_dir={cache}"]


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny ops, where a second thread costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_checkpoint_weights(run_a, run_b, step: int, names=("generator.safetensors", "generator.ema.safetensors")):
    """The two runs' checkpoints of ``step`` hold bit-identical tensors in every file of ``names``
    (e.g. an uninterrupted run and a resumed one); returns run_a's tensors of the first file."""
    from safetensors.torch import load_file

    first = None
    for name in names:
        a = load_file(f"{run_a}/checkpoints/step-{step:07d}/{name}")
        b = load_file(f"{run_b}/checkpoints/step-{step:07d}/{name}")
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
        first = a if first is None else first
    return first

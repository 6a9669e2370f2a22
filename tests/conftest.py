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
def one_thread():
    """One torch thread for tests of many tiny ops, where a second thread costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

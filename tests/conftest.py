"""Shared fixtures: small, fast runs on CPU."""
import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
# One torch thread per test process: the suite's ops are small, so a second thread mostly spins. On a
# busy 2-core machine two threads made the suite take 2.1x the CPU time (1141 s against 543 s) and a
# single toy run 8x the wall time; `make test` runs two such processes instead (pytest-xdist).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, the rest in file order. With ``make test``'s two workers and worksteal
    scheduling, the end-to-end runs of a minute or two start early and the short tests fill in
    behind them, instead of one worker idling while the other runs a long test it reached last
    (Makefile). Plain ``-n 2`` (load scheduling) would hand all the slow tests to one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def helper_network_cache(tmp_path_factory):
    """``$ONESTEP_CACHE`` for the session: the helper networks that metrics and data sources train
    (data classifiers, conv-mae features, autoencoders) are trained once per session and shared by
    its tests, and the suite never reads or fills the user's ``~/.cache/onestep``."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ONESTEP_CACHE", str(tmp_path_factory.mktemp("onestep-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def registry():
    from onestep.registry import Registry

    return Registry.discover()


@pytest.fixture
def quiet(tmp_path):
    """Overrides that keep a test run small and silent, writing under tmp_path."""
    return [f"output_dir={tmp_path}/run", "train.progress=false", "train.log_every=10"]


@pytest.fixture
def digits_label_metrics():
    """Overrides for a 400-step MLP run on the 8x8 digits scored by FID and class accuracy, both
    from the session's one data classifier of the digits (see :func:`helper_network_cache`)."""
    return ["train.progress=false", "train.log_every=1000", "train.steps=400", "train.batch_size=256",
            "backbone.width=256", "backbone.depth=3", "eval.metrics=[fid,class-accuracy]", "eval.num_samples=1000",
            "sample.num=200"]


@pytest.fixture
def one_thread():
    """One torch thread, as the session sets it, also after a test before changed it (tests of many
    tiny ops, where a second thread costs more than it gives)."""
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

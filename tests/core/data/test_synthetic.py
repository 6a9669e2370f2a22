"""synthetic-latents: labelled latents of the asked shape, unit variance per coordinate, the same
for the same seed, with class means that set the classes apart."""
import pytest
import torch

from onestep.config import structure
from onestep.data.synthetic import SyntheticLatents
from onestep.errors import ConfigError


def _source(**fields):
    return SyntheticLatents(SyntheticLatents.Config(**fields))


def test_spec_split_and_statistics():
    source = _source(shape=[4, 8, 8], num_classes=5, size=2000, test_fraction=0.1)
    spec = source.spec()
    assert spec.shape == (4, 8, 8) and spec.num_classes == 5 and spec.kind == "latents"
    train, test = source.dataset("train"), source.dataset("test")
    assert len(train) + len(test) == 2000 and len(test) == 200
    x, y = train.tensors
    assert abs(float(x.var()) - 1.0) < 0.05 and abs(float(x.mean())) < 0.05
    assert set(y.tolist()) == set(range(5))
    # the labels mean something: each sample is nearer its own class mean than any other
    means = torch.stack([x[y == k].mean(0) for k in range(5)])
    nearest = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
    assert (nearest == y).float().mean() > 0.99


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (_source(shape=[4, 4, 4], num_classes=3, size=30, seed=s).dataset("train").tensors[0] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fields, message", [
    ({"shape": [4, 32]}, r"data.shape: expected \[C, H, W\]"),
    ({"num_classes": 10, "size": 5}, r"data.size: expected >= 2 and >= num_classes \(10\)"),
    ({"class_spread": 1.0}, r"data.class_spread: expected in \[0, 1\)"),
])
def test_bad_settings_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=f"^{message}") as err:
        structure(fields, SyntheticLatents.Config, "data")
    assert "\n" not in str(err.value)

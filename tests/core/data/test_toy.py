"""Toy sources draw what they claim: mixture weights, held-out splits, clear config errors."""
import pytest
import torch

from onestep.data.toy import GMMImbalanced, GMM1DConfig, GMMImbalancedConfig
from onestep.config import structure
from onestep.errors import ConfigError
from onestep.metrics.toy import mode_masses


def test_imbalanced_mixture_has_its_rare_modes_at_their_weights():
    src = GMMImbalanced(GMMImbalancedConfig(minority_weight=0.05))
    x = src.dataset("train").tensors[0]
    mass, off = mode_masses(x, src.modes(), radius=1.0)
    assert mass[6:].tolist() == pytest.approx([0.05, 0.05], abs=0.01)
    assert off < 0.01
    assert not torch.equal(x[:100], src.dataset("test").tensors[0][:100])


def test_bad_mixture_config_names_the_field():
    with pytest.raises(ConfigError, match="^data.weights: expected as many weights as means"):
        structure({"means": [0.0, 1.0], "weights": [1.0]}, GMM1DConfig, "data")
    with pytest.raises(ConfigError, match=r"^data.minority_weight: expected in \(0, 0.5\), got 0.5$"):
        structure({"minority_weight": 0.5}, GMMImbalancedConfig, "data")

"""The torchcfm peer plugin."""
import sys

import pytest

from onestep.errors import ConfigError


def test_peer_without_torchcfm_is_a_clear_error(monkeypatch):
    from onestep.interfaces import DataSpec
    from onestep_torchcfm_peer.objective import TorchCFMOTCFM

    monkeypatch.setitem(sys.modules, "torchcfm.conditional_flow_matching", None)
    with pytest.raises(ConfigError, match="needs the package torchcfm"):
        TorchCFMOTCFM(TorchCFMOTCFM.Config(), spec=DataSpec((2,)))

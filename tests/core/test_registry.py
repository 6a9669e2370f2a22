"""Plugin discovery through entry points and pluggy, and its failure modes."""
import importlib.metadata as md
import types

import attrs
import pytest

from onestep.errors import PluginError
from onestep.hookspecs import hookimpl
from onestep.interfaces import Coupler
from onestep.registry import Registry


@attrs.define
class _NoConfig:
    pass


def _coupler_plugin(module_name, coupler_name):
    class Reverse(Coupler):
        """Pairs noise i with data N-1-i."""

        name = coupler_name
        Config = _NoConfig

        def pair(self, noise, data, y=None):
            return noise, data.flip(0), None if y is None else y.flip(0)

    mod = types.ModuleType(module_name)
    mod.onestep_couplers = hookimpl(lambda: [Reverse])
    return mod


def test_bundled_plugins_are_found_through_entry_points(registry):
    assert "flow-matching" in registry.names("objective")
    assert "mlp" in registry.names("backbone")
    assert {"gmm8", "mnist", "npz"} <= set(registry.names("data"))
    info = registry.get("objective", "flow-matching")
    assert info.package == "onestep-flow-matching"


def test_a_third_party_plugin_object_is_usable_without_core_changes():
    reg = Registry.discover(extra=[("reverse-plugin", _coupler_plugin("thirdparty", "reverse"))])
    coupler = reg.build("coupler", "reverse", _NoConfig())
    import torch

    _, data, _ = coupler.pair(torch.zeros(3, 2), torch.arange(6.0).view(3, 2))
    assert data[0].tolist() == [4.0, 5.0]


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    with pytest.raises(PluginError, match=r"coupler 'reverse' is provided by two plugins: one \(one\) and two \(two\)"):
        Registry.discover(entry_points=False, extra=[("one", _coupler_plugin("one", "reverse")),
                                                      ("two", _coupler_plugin("two", "reverse"))])


def test_a_plugin_that_fails_to_import_is_named_and_the_others_still_work(monkeypatch):
    real = md.entry_points

    def with_broken(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "onestep":
            eps.append(md.EntryPoint(name="broken-one", value="onestep_no_such_module.plugin", group="onestep"))
        return eps

    monkeypatch.setattr(md, "entry_points", with_broken)
    reg = Registry.discover()
    assert "broken-one" in reg.broken and "ModuleNotFoundError" in reg.broken["broken-one"]
    assert "flow-matching" in reg.names("objective")
    with pytest.raises(PluginError, match=r"unknown objective 'gone'.*failed to load: broken-one"):
        reg.get("objective", "gone")


def test_a_component_without_config_is_rejected_with_its_plugin_named():
    class Bad(Coupler):
        name = "bad"

        def pair(self, noise, data, y=None):
            return noise, data, y

    mod = types.ModuleType("badplug")
    mod.onestep_couplers = hookimpl(lambda: [Bad])
    with pytest.raises(PluginError, match="plugin badplug .*coupler 'bad' has no attrs class 'Config'"):
        Registry.discover(entry_points=False, extra=[("badplug", mod)])

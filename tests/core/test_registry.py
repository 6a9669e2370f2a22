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


def test_two_plugins_claiming_one_name_disable_that_name_only_and_are_both_named():
    reg = Registry.discover(entry_points=False, extra=[("one", _coupler_plugin("one", "reverse")),
                                                        ("two", _coupler_plugin("two", "reverse")),
                                                        ("three", _coupler_plugin("three", "forward"))])
    with pytest.raises(PluginError, match=r"coupler 'reverse' is provided by two plugins: one \(one\) and two \(two\)"):
        reg.get("coupler", "reverse")
    assert reg.names("coupler") == ["forward"]  # the rest stays usable
    assert "coupler reverse" in reg.broken


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
    reg = Registry.discover(entry_points=False, extra=[("badplug", mod), ("good", _coupler_plugin("good", "reverse"))])
    assert "coupler 'bad' has no attrs class 'Config'" in reg.broken["badplug/bad"]
    assert reg.names("coupler") == ["reverse"]
    with pytest.raises(PluginError, match="unknown coupler 'bad'.*badplug/bad .*has no attrs class 'Config'"):
        reg.get("coupler", "bad")


def test_a_config_without_defaults_is_reported_at_registration_and_the_listing_still_works(capsys, monkeypatch):
    @attrs.define
    class NeedsPath:
        path: str  # no default: `onestep plugins` and the CLI could not build it

    class Strict(Coupler):
        name = "strict"
        Config = NeedsPath

        def pair(self, noise, data, y=None):
            return noise, data, y

    mod = types.ModuleType("strictplug")
    mod.onestep_couplers = hookimpl(lambda: [Strict])
    reg = Registry.discover(extra=[("strictplug", mod)])
    assert "Config() fails without arguments" in reg.broken["strictplug/strict"]
    assert "strict" not in reg.names("coupler") and "minibatch-ot" in reg.names("coupler")
    from onestep import cli

    monkeypatch.setattr(cli.Registry, "discover", classmethod(lambda cls, **kw: reg))
    assert cli.main(["plugins", "--kind", "coupler"]) == 0
    out = capsys.readouterr().out
    assert "minibatch-ot" in out and "broken plugin strictplug/strict" in out and "give every field a default" in out


def test_what_an_objective_accepts_is_checked_once_by_the_registry(registry):
    from onestep.api import compose
    from onestep.errors import ConfigError
    from onestep.interfaces import DataSpec

    spec = DataSpec((2,))
    with_coupler = compose(objective="wflow", backbone="mlp", data="gmm8", coupler="minibatch-ot", registry=registry)
    with pytest.raises(ConfigError, match=r"^coupler 'minibatch-ot': objective wflow uses no coupler; remove"):
        registry.build_objective(with_coupler, spec)
    guided = compose(objective="flow-matching", backbone="mlp", data="gmm8", guidance="classifier", registry=registry)
    with pytest.raises(ConfigError, match=r"^guidance 'classifier': objective flow-matching takes no guidance plugin"):
        registry.build_objective(guided, spec)
    bare = compose(objective="ot-nfm", backbone="mlp", data="gmm8", registry=registry)
    with pytest.raises(ConfigError, match=r"^coupler: objective ot-nfm needs a coupler; valid: .*minibatch-ot"):
        registry.build_objective(bare, spec)
    sampler = registry.build_objective(bare, spec, sampling=True)  # sampling needs no coupler
    assert sampler.coupler is None and sampler.default_nfe() == 1

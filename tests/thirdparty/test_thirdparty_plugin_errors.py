"""A plugin that fails to import is named and the others stay usable; two plugins claiming one
name are both named, that name is disabled and every other component stays usable. Plugins are installed as distributions (a .dist-info with an entry point)
on a temporary sys.path entry."""
import pytest

from onestep.api import compose
from onestep.errors import PluginError
from onestep.registry import Registry

COUPLER = '''
import attrs
import torch
from onestep.hookspecs import hookimpl
from onestep.interfaces import Coupler

@attrs.define
class Config:
    pass

class Twin(Coupler):
    """A coupler that keeps the given order."""
    name = "twin"
    Config = Config
    def pair(self, noise, data, y=None):
        return noise, data, y

@hookimpl
def onestep_couplers():
    return [Twin]
'''


def install(site, dist, entry_name, module, source):
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[onestep]\n{entry_name} = {module}\n")
    (site / f"{module}.py").write_text(source)


def test_plugin_that_fails_to_import_is_named_and_the_others_still_work(tmp_path, monkeypatch):
    install(tmp_path, "onestep-needs-libfoo", "needs-libfoo", "onestep_needs_libfoo_t1",
            "raise ImportError('libfoo.so.3: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.discover()
    assert "libfoo.so.3" in reg.broken["needs-libfoo"] and "onestep-needs-libfoo" in reg.broken["needs-libfoo"]
    with pytest.raises(PluginError, match=r"unknown coupler 'foo-ot'.*needs-libfoo \(onestep-needs-libfoo: ImportError"):
        reg.get("coupler", "foo-ot")
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=reg)
    assert cfg.objective.name == "flow-matching"


def test_two_plugins_claiming_one_name_are_both_named_and_the_others_still_work(tmp_path, monkeypatch):
    install(tmp_path, "onestep-twin-a", "twin-a", "onestep_twin_a_t2", COUPLER)
    install(tmp_path, "onestep-twin-b", "twin-b", "onestep_twin_b_t2", COUPLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.discover()
    with pytest.raises(PluginError, match=r"coupler 'twin' is provided by two plugins: onestep-twin-a \(twin-a\) and onestep-twin-b \(twin-b\)"):
        compose(objective="flow-matching", backbone="mlp", data="gmm8", coupler="twin", registry=reg)
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", coupler="minibatch-ot", registry=reg)
    assert cfg.coupler.name == "minibatch-ot"


def test_a_misspelt_hook_is_a_one_line_error_naming_the_plugin_and_the_hook(tmp_path, monkeypatch, capsys):
    misspelt = COUPLER.replace("def onestep_couplers():", "def onestep_coupler():")
    install(tmp_path, "onestep-typo", "typo", "onestep_typo_t3", misspelt)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.discover()
    assert reg.broken["typo"] == ("onestep-typo: function 'onestep_coupler' is not an onestep hook; "
                                  "did you mean 'onestep_couplers'?")
    with pytest.raises(PluginError, match=r"unknown coupler 'twin'.*typo \(onestep-typo: function 'onestep_coupler' "
                                          r"is not an onestep hook; did you mean 'onestep_couplers'\?\)"):
        compose(objective="flow-matching", backbone="mlp", data="gmm8", coupler="twin", registry=reg)
    from onestep import cli

    assert cli.main(["run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "gmm8",
                     "--coupler", "twin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "typo (onestep-typo: function 'onestep_coupler'" in err
    assert "minibatch-ot" in reg.names("coupler")  # the other plugins stay usable


def test_a_hook_function_without_hookimpl_is_refused_by_name(tmp_path, monkeypatch):
    unmarked = COUPLER.replace("@hookimpl\ndef onestep_couplers", "def onestep_couplers")
    install(tmp_path, "onestep-unmarked", "unmarked", "onestep_unmarked_t4", unmarked)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.discover()
    assert "function 'onestep_couplers' is not marked @hookimpl" in reg.broken["unmarked"]
    assert "twin" not in reg.names("coupler")

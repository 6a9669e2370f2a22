"""Configs: files + names + overrides -> attrs objects; every mistake names its field path."""
import pytest

from onestep.config import assemble, build_config, parse_override
from onestep.errors import ConfigError


def build(registry, *overrides, files=(), **names):
    return build_config(assemble(files, names, overrides), registry)


def test_defaults_and_overrides_reach_the_component_configs(registry):
    cfg = build(registry, "objective.nfe=7", "train.optim.lr=1e-3", "train.optim.betas=[0, 0.9]",
                "backbone.width=48", objective="flow-matching", backbone="mlp", data="moons")
    assert cfg.objective.config.nfe == 7
    assert cfg.backbone.config.width == 48
    assert cfg.train.optim.lr == pytest.approx(1e-3)  # "1e-3" is a YAML string; float fields accept it
    assert cfg.train.optim.betas == (0.0, 0.9)
    assert cfg.data.name == "moons"


@pytest.mark.parametrize("override, message", [
    ("objective.nfe=abc", "objective.nfe: expected int, got 'abc'"),
    ("objective.nfee=3", "objective.nfee: unknown field; valid: nfe, class_dropout, guidance_scale"),
    ("train.optim.lr=fast", "train.optim.lr: expected float, got 'fast'"),
    ("train.steps=2.5", "train.steps: expected int, got 2.5"),
    ("train.zero_stage=4", "train.zero_stage: expected 0, 1, 2 or 3, got 4"),
    ("trian.steps=3", "trian: unknown section; valid: objective"),
    ("train.progress=maybe", "train.progress: expected bool, got 'maybe'"),
    ("data.radius=[1, 2]", "data.radius: expected float, got [1, 2]"),
    ("eval.options.sinkhorn.blurr=0.1", "eval.options.sinkhorn.blurr: unknown field; valid: blur, scaling, max_points"),
    ("eval.options.sinkhorn.blur=wide", "eval.options.sinkhorn.blur: expected float, got 'wide'"),
])
def test_errors_name_the_field_path(registry, override, message):
    with pytest.raises(ConfigError) as err:
        build(registry, override, objective="flow-matching")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_component_lists_valid_names(registry):
    from onestep.errors import PluginError

    with pytest.raises(PluginError, match=r"unknown objective 'nope'; valid: .*flow-matching"):
        build(registry, objective="nope")
    with pytest.raises(PluginError, match=r"unknown metric 'sinkhron'; valid: .*sinkhorn"):
        build(registry, "eval.options.sinkhron.blur=0.1", objective="flow-matching")


def test_yaml_and_toml_files_merge_in_order(registry, tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("objective: {name: flow-matching, nfe: 3}\ntrain: {steps: 10, batch_size: 32}\n")
    b = tmp_path / "b.toml"
    b.write_text("[train]\nsteps = 20\n[backbone]\nname = 'mlp'\nwidth = 16\n")
    cfg = build(registry, "train.batch_size=64", files=[a, b])
    assert (cfg.objective.config.nfe, cfg.train.steps, cfg.train.batch_size, cfg.backbone.config.width) == (3, 20, 64, 16)


def test_changing_a_component_name_drops_the_old_components_fields(registry, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: {name: gmm8, radius: 2.0}\n")
    cfg = build(registry, files=[f], data="moons")  # 'radius' belongs to gmm8, not moons
    assert cfg.data.name == "moons"


def test_bad_files_are_named(registry, tmp_path):
    with pytest.raises(ConfigError, match="config file '.*missing.yaml': not found"):
        build(registry, files=[tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="config file '.*bad.yaml'"):
        build(registry, files=[bad])
    with pytest.raises(ConfigError, match="override 'train.steps': expected key.path=value"):
        parse_override("train.steps")

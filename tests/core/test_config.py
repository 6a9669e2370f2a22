"""Configs: files + names + overrides -> attrs objects; every mistake names its field path."""
import pytest

from onestep.config import assemble, build_config, parse_override
from onestep.errors import ConfigError


TOY = {"objective": {"name": "flow-matching"}, "backbone": {"name": "mlp"}, "data": {"name": "gmm8"}}


def build(registry, *overrides, files=(), base=TOY, **names):
    """A config from ``files``, ``names`` and ``overrides`` over a toy run's choices (``base``)."""
    return build_config(assemble(files, names, overrides, base), registry)


def test_a_run_must_name_its_objective_backbone_and_data(registry):
    """The core defaults to no plugin: a missing choice is a one-line error listing the valid ones."""
    with pytest.raises(ConfigError, match=r"^objective.name: missing; choose an? objective .*valid: .*flow-matching"):
        build(registry, base={})
    with pytest.raises(ConfigError, match=r"^data.name: missing; choose a data .*valid: .*gmm8"):
        build(registry, base={}, objective="flow-matching", backbone="mlp")
    cfg = build(registry, base={}, objective="flow-matching", backbone="mlp", data="gmm8")
    assert cfg.coupler is None and cfg.guidance is None and cfg.features is None


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
    ("train.log_every=0", "train.log_every: expected >= 1, got 0"),
    ("sample.num=0", "sample.num: expected >= 1, got 0"),
    ("eval.num_samples=0", "eval.num_samples: expected >= 1, got 0"),
    ("data.size=0", "data.size: expected >= 1 points per split, got 0"),
    ("train.optim.lr=0", "train.optim.lr: expected > 0, got 0.0"),
    ("train.networks.generator.lr=-1e-3", "train.networks.generator.lr: expected > 0, got -0.001"),
    ("train.warmup_steps=-5", "train.warmup_steps: expected >= 0 (0: no warmup), got -5"),
    ("train.grad_clip=-1", "train.grad_clip: expected >= 0 (0: no clipping), got -1.0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every: expected >= 0 (0: only at the end), got -1"),
    ("train.optim.betas=[0.9]", "train.optim.betas: expected a list of 2 values (float, float), got [0.9]"),
    ("train.optim.betas=[0.9, 1.5]", "train.optim.betas: expected two values in [0, 1), got (0.9, 1.5)"),
    ("output_dir=runs/{objectiv}", "output_dir: 'runs/{objectiv}' names {objectiv}; valid: {objective}, {backbone}"),
    ("output_dir=runs/{objective", "output_dir: 'runs/{objective' is not a valid template"),
])
def test_errors_name_the_field_path(registry, override, message):
    with pytest.raises(ConfigError) as err:
        build(registry, override, objective="flow-matching")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_list_field_takes_one_value_and_says_what_it_wants_otherwise(registry):
    """``objective.relative_temperatures=0.05`` means ``[0.05]``; what cannot be a list names the field and shows one."""
    assert build(registry, "objective.relative_temperatures=0.05", objective="wflow").objective.config.relative_temperatures == [0.05]
    assert build(registry, "objective.relative_temperatures=[0.05, 0.2]",
                 objective="wflow").objective.config.relative_temperatures == [0.05, 0.2]
    assert build(registry, "eval.metrics=sinkhorn").eval.metrics == ["sinkhorn"]
    with pytest.raises(ConfigError) as err:
        build(registry, "objective.relative_temperatures={low: 0.05}", objective="wflow")
    assert str(err.value) == "objective.relative_temperatures: expected a list, e.g. [0.05], got {'low': 0.05}"
    with pytest.raises(ConfigError) as err:
        build(registry, "train.optim.betas=0.9")
    assert str(err.value) == "train.optim.betas: expected a list of 2 values (float, float), e.g. [0.9, 0.9], got 0.9"


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


def test_a_plugin_rejecting_its_settings_with_a_value_error_is_one_config_error(registry):
    """The contract lets components raise ValueError for settings they cannot work with; the
    user sees one line naming the component, as for the core's own errors."""
    import types

    import attrs

    from onestep.hookspecs import hookimpl
    from onestep.interfaces import Coupler
    from onestep.registry import Registry

    @attrs.define
    class Cfg:
        k: int = 0

    class Picky(Coupler):
        name = "picky"
        Config = Cfg

        def __init__(self, config):
            super().__init__(config)
            if config.k < 1:
                raise ValueError(f"k must be at least 1,\n got {config.k}")

        def pair(self, noise, data, y=None):
            return noise, data, y

    mod = types.ModuleType("picky")
    mod.onestep_couplers = hookimpl(lambda: [Picky])
    reg = Registry.discover(extra=[("picky", mod)])
    cfg = build(reg, objective="flow-matching", coupler="picky")
    with pytest.raises(ConfigError) as err:
        reg.build_objective(cfg, None)
    assert str(err.value) == "coupler 'picky': k must be at least 1, got 0"


def test_the_mnist_demo_config_tunes_af_and_a_small_autoencoder_and_leaves_the_baseline_at_its_defaults(registry):
    """`make demo` compares AF and flow matching with configs/demo/mnist.yaml (see the Makefile):
    one small autoencoder and metrics classifier for both runs, AF's settings for AF only."""
    from pathlib import Path

    demo = Path(__file__).parents[2] / "configs" / "demo" / "mnist.yaml"
    af = build(registry, files=[demo], base={}, objective="adversarial-flow")
    baseline = build(registry, files=[demo], base={}, objective="flow-matching")
    assert (af.objective.config.lr, af.objective.config.grad_norm) == (3.0e-4, False)
    assert baseline.objective.config.nfe == 50 and baseline.backbone == af.backbone and baseline.data == af.data
    assert (af.data.name, af.data.config.dim, af.data.config.steps) == ("autoencoded", 16, 1500)

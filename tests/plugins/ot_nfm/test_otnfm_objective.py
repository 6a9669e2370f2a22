"""OT-NFM's flow map and loss against their definitions, and its errors."""
import pytest
import torch

from onestep.api import compose
from onestep.config import structure
from onestep.errors import ConfigError
from onestep.interfaces import Batch, DataSpec, Networks, StepInfo


def build(registry, coupler="minibatch-ot", spec=DataSpec((2,)), **fields):
    info = registry.get("objective", "ot-nfm")
    c = registry.get("coupler", coupler) if coupler else None
    return info.cls(info.cls.Config(**fields), spec=spec, coupler=c.cls(c.cls.Config()) if c else None)


def generator(registry, objective, spec):
    mlp = registry.get("backbone", "mlp")
    torch.manual_seed(0)
    return mlp.cls(mlp.cls.Config(width=32, depth=1)).build(objective.networks()["generator"], spec)


@pytest.mark.parametrize("predict", ["velocity", "data"])
def test_flow_map_is_identity_at_time_zero(registry, predict):
    spec = DataSpec((1, 4, 4), num_classes=3)
    obj = build(registry, spec=spec, predict=predict)
    net = generator(registry, obj, spec)
    z, y = torch.randn(6, 1, 4, 4), torch.arange(6) % 3
    torch.testing.assert_close(obj.flow_map(net, z, torch.zeros(6), y), z)
    assert not torch.allclose(obj.flow_map(net, z, torch.ones(6), y), z)
    if predict == "data":  # the one-step sample is the network's output itself
        torch.testing.assert_close(obj.flow_map(net, z, torch.ones(6), y), net(z, t=torch.ones(6), y=y))
    assert obj.networks()["generator"].time_inputs == 1 and obj.networks()["generator"].class_conditional


@pytest.mark.parametrize("predict", ["velocity", "data"])
def test_loss_is_the_straight_path_regression(registry, predict):
    """loss = E ||F(z,t) - ((1-t) z + t x)||^2 = E t^2 ||u(z,t) - (x - z)||^2 with the coupler's pairs,
    u = net (velocity) or net - z (data); a quarter of the batch at t = 1, the rest t ~ U(0, 1)."""
    spec = DataSpec((2,))
    obj = build(registry, coupler="independent", spec=spec, one_step_share=0.25, predict=predict)
    net = generator(registry, obj, spec)
    x = torch.randn(64, 2) * 3
    torch.manual_seed(11)
    loss, logs = obj.loss("flow-map", Networks({"generator": net}), [Batch(x)], StepInfo(0, 1))
    torch.manual_seed(11)
    z = torch.randn_like(x)
    t = torch.rand(64)
    t[:16] = 1.0
    u = net(z, t=t) - (z if predict == "data" else 0.0)
    expected = (t[:, None] ** 2 * (u - (x - z)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["pair_cost"], (x - z).pow(2).sum(1).mean())


def test_time_sampling_weights_the_one_step_end(registry):
    obj = build(registry, one_step_share=0.75)
    t = obj.times(4000, torch.device("cpu"))
    assert (t == 1.0).float().mean() == 0.75
    rest = t[t < 1.0]
    assert 0.45 < float(rest.mean()) < 0.55 and float(rest.min()) >= 0.0


def test_one_step_sample_is_the_flow_map_at_time_one(registry):
    spec = DataSpec((2,))
    obj = build(registry, spec=spec)
    net = generator(registry, obj, spec)
    z = torch.randn(5, 2)
    out = obj.sample(Networks({"generator": net}), z, None, 1)
    torch.testing.assert_close(out, z + net(z, t=torch.ones(5)))
    assert obj.default_nfe() == 1


def test_errors_name_what_is_wrong(registry):
    without_coupler = compose(objective="ot-nfm", backbone="mlp", data="gmm8", registry=registry)
    with pytest.raises(ConfigError, match="coupler: objective ot-nfm needs a coupler; valid: .*minibatch-ot"):
        registry.build_objective(without_coupler, DataSpec((2,)))
    Config = registry.get("objective", "ot-nfm").cls.Config
    with pytest.raises(ConfigError, match="^objective.lr: expected > 0, got 0.0$"):
        structure({"lr": 0.0}, Config, "objective")
    with pytest.raises(ConfigError, match=r"^objective.one_step_share: expected in \[0, 1\], got 1.5$"):
        structure({"one_step_share": 1.5}, Config, "objective")
    with pytest.raises(ConfigError, match="^objective.predict: expected one of velocity, data, got 'noise'$"):
        structure({"predict": "noise"}, Config, "objective")
    obj = build(registry)
    net = generator(registry, obj, DataSpec((2,)))
    with pytest.raises(ConfigError, match=r"sample.nfe: .* got 4 \(valid: 1\)"):
        obj.sample(Networks({"generator": net}), torch.randn(3, 2), None, 4)


def test_unconditional_option_ignores_the_labels(registry):
    """class_conditional=false on labelled data: one map for all classes, pairs across classes."""
    spec = DataSpec((2,), num_classes=3)
    obj = build(registry, spec=spec, class_conditional=False)
    assert not obj.networks()["generator"].class_conditional
    net = generator(registry, obj, spec)
    x, y = torch.randn(30, 2) * 3, torch.arange(30) % 3
    seen = []
    pair = obj.coupler.pair
    obj.coupler.pair = lambda z, x, y: seen.append(y) or pair(z, x, y)
    obj.loss("flow-map", Networks({"generator": net}), [Batch(x, y)], StepInfo(0, 1))
    assert seen == [None]
    z = torch.randn(4, 2)
    torch.testing.assert_close(obj.sample(Networks({"generator": net}), z, torch.arange(4) % 3, 1),
                               obj.sample(Networks({"generator": net}), z, None, 1))

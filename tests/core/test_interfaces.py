"""The plugin contract as the trainer honours it: in a phase, the network being trained is its
engine and every other network is its plain module (calling a frozen engine would rescale the
gradient passing through it under gradient accumulation), so plugins never unwrap anything."""
import types

import attrs
import torch
from torch import nn

from onestep.api import compose
from onestep.hookspecs import hookimpl
from onestep.interfaces import NetworkRequest, Objective, Phase
from onestep.registry import Registry
from onestep.trainer import Trainer


@attrs.define
class _Config:
    pass


class _TwoNetworks(Objective):
    """A generator pulled towards the data through a frozen 'judge' network, and the judge."""

    name = "two-networks"
    Config = _Config
    seen: list = []

    def networks(self):
        return {"generator": NetworkRequest("generator"), "judge": NetworkRequest("generator")}

    def phases(self):
        return [Phase("judge", "judge"), Phase("generator", "generator")]

    def loss(self, phase, nets, batches, info):
        x = batches[0].x
        other = "generator" if phase == "judge" else "judge"
        type(self).seen.append((phase, type(nets[phase]).__name__, type(nets[other]).__name__))
        return (nets[other](nets[phase](torch.randn_like(x))) - x).pow(2).mean(), {}

    def sample(self, nets, noise, y, nfe):
        return nets.ema("generator")(noise)


def test_a_phase_sees_its_own_network_as_the_engine_and_the_others_plain(quiet):
    plugin = types.SimpleNamespace(onestep_objectives=hookimpl(lambda: [_TwoNetworks]))
    registry = Registry.discover(extra=[("two-networks", plugin)])
    cfg = compose(objective="two-networks", backbone="mlp", data="gmm8", registry=registry,
                  overrides=quiet + ["train.steps=1", "train.grad_accum=2", "train.batch_size=16",
                                     "backbone.width=16", "backbone.depth=1"])
    trainer = Trainer(cfg, registry=registry, console=False)
    _TwoNetworks.seen.clear()
    trainer.train_step()
    engine, plain = type(trainer.engines["generator"]).__name__, type(trainer.engines["generator"].module).__name__
    assert engine != plain
    assert _TwoNetworks.seen == [("judge", engine, plain)] * 2 + [("generator", engine, plain)] * 2
    assert isinstance(trainer.nets["judge"], nn.Module) and trainer.nets.ema("generator") is trainer.ema["generator"].module

"""The objective written in docs/PLUGINS.md ("Writing an objective") is real code: registered as a
plugin, it trains a one-step generator on a 1D mixture through compose/Trainer and gets closer
to the target than the untrained generator."""
import re
import types
from pathlib import Path

from onestep.api import compose
from onestep.hookspecs import hookimpl
from onestep.registry import Registry
from onestep.trainer import Trainer

GUIDE = Path(__file__).parents[2] / "docs" / "PLUGINS.md"


def guide_objective():
    section = GUIDE.read_text().split("## Writing an objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)
    return namespace["RegressToData"]


def test_the_guide_objective_trains_as_a_plugin(quiet):
    cls = guide_objective()
    plugin = types.SimpleNamespace(__name__="guide-example", onestep_objectives=hookimpl(lambda: [cls]))
    registry = Registry.discover(extra=[("guide-example", plugin)])
    overrides = quiet + ["backbone.width=64", "backbone.depth=2", "train.batch_size=256", "eval.num_samples=1000",
                         "eval.metrics=[sinkhorn]", "data.size=4000"]
    run = Trainer(compose(objective="regress-to-data", backbone="mlp", data="gmm1d", coupler="minibatch-ot",
                            overrides=overrides + ["train.steps=200"], registry=registry),
                    registry=registry, console=False)
    before = run.evaluate()["sinkhorn"]
    after = run.fit()["metrics"]["sinkhorn"]
    assert after < before / 5, (before, after)

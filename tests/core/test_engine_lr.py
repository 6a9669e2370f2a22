"""The learning-rate schedule of every engine: warm-up, then ``train.lr_decay`` to 0 at the run's
planned end, whether that end is a step count or a wall-clock budget."""
import math

import pytest

from onestep.api import compose
from onestep.engine import lr_factor
from onestep.errors import ConfigError
from onestep.trainer import Trainer

TINY = ["train.batch_size=64", "backbone.width=32", "backbone.depth=1", "eval.metrics=[]", "train.optim.lr=0.01"]


def last_lr(run) -> float:
    return next(iter(run.engines.values())).lr_scheduler.get_last_lr()[0]


def test_lr_factor_warms_up_then_decays_to_zero_at_the_horizon():
    assert [lr_factor(s, 4, "none", 10) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    assert lr_factor(3, 4, "linear", 10) == 1.0 and lr_factor(10, 4, "linear", 10) == 0.0
    assert lr_factor(7, 4, "linear", 10) == pytest.approx(0.5)
    assert lr_factor(7, 4, "cosine", 10) == pytest.approx(0.5) and lr_factor(5, 4, "cosine", 10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_factor(50, 0, "cosine", 10) == 0.0  # past the horizon: stays at 0


@pytest.mark.parametrize("decay", ["none", "linear"])
def test_a_step_budget_ends_at_lr_zero_with_decay(registry, quiet, decay):
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
                  overrides=quiet + TINY + ["train.steps=30", "train.warmup_steps=5", f"train.lr_decay={decay}"])
    run = Trainer(cfg, registry=registry, console=False)
    run.fit()
    assert last_lr(run) == (pytest.approx(0.01) if decay == "none" else pytest.approx(0.0, abs=1e-12))


def test_a_wall_clock_budget_ends_near_lr_zero(registry, quiet):
    """Under train.max_minutes the horizon is the step count the measured rate reaches when the clock
    runs out, so the last step's rate is a small share of the configured one (3 s: a scheduler hiccup
    of a loaded machine is a small share of it)."""
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
                  overrides=quiet + TINY + ["train.steps=1000000", "train.max_minutes=0.05", "train.lr_decay=cosine"])
    run = Trainer(cfg, registry=registry, console=False)
    summary = run.fit()
    assert summary["step"] > 20
    assert last_lr(run) < 0.01 * 0.1, last_lr(run)


def test_unknown_decay_is_a_one_line_error(registry):
    with pytest.raises(ConfigError, match=r"^train.lr_decay: expected one of none, linear, cosine"):
        compose(data="gmm8", overrides=["train.lr_decay=step"], registry=registry)

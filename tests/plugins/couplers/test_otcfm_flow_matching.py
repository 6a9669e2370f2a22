"""Couplers serve any objective: flow matching with minibatch-ot pairs (OT-CFM, Tong et al. 2024)
on gmm8. With independent pairs the velocity at t = 0 is E[x] - z, so ONE Euler step lands every
sample on the data mean; with OT pairs the paths are straight enough that one step reaches the
eight modes."""
import torch

from onestep.api import compose
from onestep.trainer import Trainer

SMALL = ["backbone.width=128", "backbone.depth=2", "train.batch_size=128", "train.steps=150", "train.optim.lr=2e-3",
         "objective.nfe=1", "eval.metrics=[sinkhorn,mode-coverage]", "eval.num_samples=1000", "sample.num=200"]


def one_step_run(coupler, tmp_path, quiet):
    """Mean distance of one-step samples from the data mean (the origin), that of the data, metrics."""
    run = Trainer(compose(objective="flow-matching", backbone="mlp", data="gmm8", coupler=coupler,
                            overrides=[f"output_dir={tmp_path}/{coupler}", *quiet[1:], *SMALL]), console=False)
    metrics = run.fit()["metrics"]
    return run.sample(1000).norm(dim=1).mean(), run.reference(1000)[0].norm(dim=1).mean(), metrics


def test_flow_matching_with_minibatch_ot_pairs_reaches_the_modes_in_one_step(quiet, tmp_path):
    r_ind, r_data, m_ind = one_step_run("independent", tmp_path, quiet)
    r_ot, _, m_ot = one_step_run("minibatch-ot", tmp_path, quiet)
    assert r_ind < 0.5 * r_data and m_ind["modes_covered"] == 0, (r_ind, r_data, m_ind)
    assert abs(r_ot - r_data) < 0.15 * r_data, (r_ot, r_data)
    assert m_ot["modes_covered"] == 8, m_ot
    assert m_ot["sinkhorn"] < 0.2 * m_ind["sinkhorn"], (m_ot["sinkhorn"], m_ind["sinkhorn"])

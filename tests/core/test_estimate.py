"""``onestep estimate``: timed steps of a recipe through the trainer on CPU, and the projection of
its full length on N GPUs from the measured per-GPU step and the measured scaling."""
import json
import math
from pathlib import Path

import pytest

from onestep.cli import main
from onestep.config import TrainConfig
from onestep.errors import ConfigError, OnestepError
from onestep.estimate import Measurement, per_gpu_batch, project, read_scaling

PRESET = str(Path(__file__).parents[2] / "configs" / "imagenet256" / "af-b2.yaml")
TINY = ["backbone.size=P/2", "data.shape=[4,8,8]", "data.num_classes=4", "data.size=64", "train.batch_size=64"]


SHIPPED = read_scaling().per_doubling  # the package's measured_scaling.json


def _measured(step_s: float, per_gpu: int, world: int = 1) -> Measurement:
    return Measurement([step_s * 1.1, step_s, step_s * 0.9], per_gpu, world, "test", None, None, {"generator": 1})


def test_projection_divides_the_work_and_charges_the_measured_scaling():
    m = _measured(2.0, per_gpu=32)
    ideal = project(m, gpus=8, steps=1800, zero_stage=2, scaling=1.0)
    assert ideal.step_s == pytest.approx(2.0)  # each GPU keeps its share: the step time stays
    assert ideal.samples_per_s == pytest.approx(8 * 16)
    assert ideal.wall_hours == pytest.approx(1.0) and ideal.gpu_hours == pytest.approx(8.0)
    real = project(m, gpus=8, steps=1800, zero_stage=2)
    assert real.step_s == pytest.approx(2.0 / SHIPPED[2] ** 3)  # three doublings from 1 GPU
    assert real.extrapolated and not project(m, gpus=2, steps=1, zero_stage=2).extrapolated
    assert project(m, gpus=8, steps=1, zero_stage=3).step_s > real.step_s  # ZeRO-3 scaled worse
    # measured on 2 GPUs already: only the doublings beyond them are charged
    two = project(_measured(2.0, per_gpu=32, world=2), gpus=8, steps=1, zero_stage=2)
    assert two.step_s == pytest.approx(2.0 / SHIPPED[2] ** 2)


def test_the_efficiency_per_doubling_comes_from_the_measured_samples_per_s(tmp_path):
    record = {"date": "d", "device": "4 x GPU", "record": "tools/RESULTS.md",
              "samples_per_s": {"2": {"1": 100.0, "4": 361.0}, "3": {"1": 100.0, "2": 180.0}}, "stand_ins": {"0": 2}}
    (tmp_path / "s.json").write_text(json.dumps(record))
    measured = read_scaling(tmp_path / "s.json")
    assert measured.per_doubling == pytest.approx({2: 0.95, 3: 0.9, 0: 0.95})  # 3.61x on 4 = 0.95 per doubling
    assert measured.gpus == 4 and "4 x GPU" in measured.source
    m = _measured(2.0, per_gpu=32)
    assert not project(m, gpus=4, steps=1, zero_stage=2, measured=measured).extrapolated
    assert project(m, gpus=4, steps=1, zero_stage=2, measured=measured).step_s == pytest.approx(2.0 / 0.95 ** 2)
    del record["samples_per_s"]["3"]["2"]  # one GPU count: no scaling to derive
    (tmp_path / "s.json").write_text(json.dumps(record))
    with pytest.raises(OnestepError, match=r"s\.json: not a scaling measurement") as e:
        read_scaling(tmp_path / "s.json")
    assert "\n" not in str(e.value)


def test_a_batch_that_does_not_split_over_the_gpus_is_refused():
    assert per_gpu_batch(TrainConfig(batch_size=256, grad_accum=2), 8) == 32
    with pytest.raises(ConfigError, match=r"--gpus: train.batch_size 256 does not split over 3 GPUs"):
        per_gpu_batch(TrainConfig(batch_size=256), 3)


def test_estimate_times_real_steps_on_cpu_and_projects_the_recipe(capsys, one_thread):
    assert main(["estimate", "--config", PRESET, "--gpus", "8", "--steps", "2", "--warmup", "1", "--json", *TINY]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["objective"] == "adversarial-flow" and r["steps"] == 500_000  # the preset's length
    assert r["batch_per_gpu"] == 8 and len(r["step_seconds"]) == 2 and r["step_s"] > 0
    assert set(r["parameters"]) == {"generator", "critic"}
    assert r["projected_step_s"] == pytest.approx(r["step_s"] / SHIPPED[2] ** 3)
    assert r["wall_hours"] == pytest.approx(500_000 * r["projected_step_s"] / 3600)
    assert r["gpu_hours"] == pytest.approx(8 * r["wall_hours"])
    assert math.isfinite(r["gpu_hours"]) and r["peak_memory_gib"] is None  # no GPU here

    assert main(["estimate", "--config", PRESET, "--gpus", "2", "--steps", "1", "--warmup", "0", *TINY]) == 0
    text = capsys.readouterr().out
    assert "synthetic latents of shape [4, 8, 8]" in text and "projected on 2 GPUs" in text
    assert "GPU-hours" in text and "wall-clock" in text


def test_estimate_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["estimate", "--config", PRESET, "--gpus", "3", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onestep: error: --gpus:") and "\n" not in err
    assert main(["estimate", "--gpus", "8"]) == 2
    assert "--config" in capsys.readouterr().err

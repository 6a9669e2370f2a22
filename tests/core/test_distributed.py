"""Two processes launched by torchrun train one run together on CPU (gloo), write one set of
outputs, and resume from their checkpoint."""
import json
import os
import subprocess
import sys

import pytest


def torchrun(args, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "onestep.cli",
           "run", "--data", "gmm8", "--objective", "flow-matching", "--backbone", "mlp", "--out", str(tmp_path / "run"),
           "train.batch_size=64", "train.progress=false", "train.zero_stage=2", "train.log_every=1",
           "backbone.width=32", "backbone.depth=1", "objective.nfe=4", "sample.num=200", "eval.num_samples=200",
           "eval.metrics=[sinkhorn]", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_processes_train_resume_and_write_once(tmp_path):
    first = torchrun(["train.steps=4"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(["train.steps=8", "--resume"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "velocity/loss" in r]
    assert steps == list(range(1, 9)), "each step logged once, by rank 0 alone"
    runs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"run"' in line]
    assert [r["world"] for r in runs] == [2, 2] and runs[1]["start_step"] == 4
    assert second.stdout.count("metrics step=8") == 1

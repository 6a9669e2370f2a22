"""Two processes launched by torchrun train one run together on CPU (gloo), write one set of
outputs, and resume from their checkpoint, each process reading only its own optimizer file, to
the weights of an uninterrupted run. A single process opens no network port and needs no C++
compiler (DeepSpeed's CPU op is never built)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import assert_same_checkpoint_weights

LISTENING_SOCKETS = textwrap.dedent("""
    import os

    def listening():
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            target = os.readlink(f"/proc/self/fd/{fd}") if os.path.islink(f"/proc/self/fd/{fd}") else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        found = []
        for table in ("tcp", "tcp6"):
            for line in open(f"/proc/self/net/{table}").read().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN, owned by this process
                    found.append(cols[1])
        return found
""")


def tiny_run(tmp_path):
    """`-m onestep.cli run` of a tiny flow-matching run on gmm8 (ZeRO-2, every step logged), for a launcher."""
    return ["-m", "onestep.cli", "run", "--data", "gmm8", "--objective", "flow-matching", "--backbone", "mlp",
            "--out", str(tmp_path / "run"), "train.batch_size=64", "train.progress=false", "train.zero_stage=2",
            "train.log_every=1", "backbone.width=32", "backbone.depth=1", "sample.num=200"]


def torchrun(args, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *tiny_run(tmp_path),
           "objective.nfe=4", "eval.num_samples=200", "eval.metrics=[sinkhorn]", *args]
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
    # ZeRO-2 resume: each process reads its own rank's optimizer file, not every rank's
    resumed = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"resumed"' in line]
    assert [r["optimizer_files"] for r in resumed] == [["generator.optim.rank0.pt"]], resumed
    # and continues exactly: the same weights as an uninterrupted two-process run
    whole = torchrun(["train.steps=8"], tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_same_checkpoint_weights(tmp_path / "whole" / "run", run, 8)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_hosts_meet_at_a_rendezvous_endpoint_and_train_one_run(tmp_path):
    """Multi-host as a cluster launches it: one launcher per host (here two launchers on this
    machine, one process each), meeting at a c10d rendezvous endpoint; together they train one run
    (world 2) and rank 0 alone writes its outputs."""
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint={endpoint}", "--rdzv-id=onestep-two-hosts", *tiny_run(tmp_path), "train.steps=3",
           "objective.nfe=2", "eval.metrics=[]"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    hosts = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [h.communicate(timeout=600) for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], [err[-2000:] for _, err in outs]
    run = tmp_path / "run"
    runs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"run"' in line]
    assert [r["world"] for r in runs] == [2]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "velocity/loss" in r] == [1, 2, 3]
    assert (run / "checkpoints" / "step-0000003").is_dir()


def test_a_single_process_listens_on_loopback_only():
    code = LISTENING_SOCKETS + textwrap.dedent("""
        import json
        from onestep.distributed import init_process_group, resolve_device

        print(json.dumps({"rank_world": init_process_group(resolve_device("cpu")), "listening": listening()}))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rank_world"] == [0, 1]
    loopback = ("0100007F:", "00000000000000000000000001000000:")  # 127.0.0.1 and ::1 as /proc/net lists them
    assert all(a.startswith(loopback) for a in result["listening"]), result  # nothing on 0.0.0.0, :: or a LAN address


def _path_without_compilers(tmp_path):
    """A PATH with every tool of this machine except C/C++ compilers."""
    shim = tmp_path / "bin"
    shim.mkdir()
    compiler = ("c++", "g++", "gcc", "cc", "cpp", "clang", "x86_64-linux-gnu-", "aarch64-linux-gnu-")
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder) or folder == os.path.dirname(sys.executable):
            continue
        for name in os.listdir(folder):
            if name.startswith(compiler) or name.endswith(("-gcc", "-g++", "-c++")) or (shim / name).exists():
                continue
            (shim / name).symlink_to(os.path.join(folder, name))
    return os.pathsep.join([os.path.dirname(sys.executable), str(shim)])


@pytest.mark.slow
def test_single_process_cpu_training_needs_no_compiler(tmp_path):
    path = _path_without_compilers(tmp_path)
    assert shutil.which("c++", path=path) is None and shutil.which("gcc", path=path) is None
    env = {**os.environ, "PATH": path, "TORCH_EXTENSIONS_DIR": str(tmp_path / "no-cached-ops"), "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if k not in ("CC", "CXX", "RANK", "WORLD_SIZE", "DS_ACCELERATOR")}
    cmd = [sys.executable, "-m", "onestep.cli", "run", "--objective", "flow-matching", "--backbone", "mlp", "--data", "gmm8",
           "--out", str(tmp_path / "run"),
           "train.steps=5", "train.batch_size=64", "train.progress=false", "train.zero_stage=2", "backbone.width=32",
           "backbone.depth=1", "objective.nfe=2", "eval.metrics=[sinkhorn]", "eval.num_samples=200", "sample.num=200"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "metrics step=5 sinkhorn=" in done.stdout
    assert "built successfully" not in done.stderr + done.stdout and not (tmp_path / "no-cached-ops").exists()

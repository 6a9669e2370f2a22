"""Two processes (two launchers meeting at a rendezvous, or one torchrun) train one run together on
CPU (gloo), write one set of outputs, and resume from its checkpoint, each process reading only its
own optimizer file, to the weights of the uninterrupted run. A single process opens no network port and needs no C++
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


def launch(launcher, run_args):
    """``python -m torch.distributed.run`` with ``launcher``'s options over :func:`tiny_run`'s command."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *run_args, "objective.nfe=2", "eval.num_samples=200",
            "eval.metrics=[sinkhorn]"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(path, text):
    """The JSON records of the lines of ``path`` that contain ``text``."""
    return [json.loads(line) for line in path.read_text().splitlines() if text in line]


@pytest.mark.slow
def test_two_hosts_train_one_run_and_two_processes_resume_it_exactly(tmp_path):
    """Multi-host as a cluster launches it: one launcher per host (here two launchers on this
    machine, one process each) meet at a c10d rendezvous endpoint and train one run of 8 steps
    (world 2, ZeRO-2, checkpoints at 4 and 8), rank 0 alone writing its outputs. A copy of that
    run that lost its step-8 checkpoint (a crash after step 4's) is resumed by one launcher of two
    processes (torchrun --standalone): each process reads only its own optimizer file, each step
    is logged once, and step 8 has the uninterrupted run's weights bit for bit.
    (One rendezvous run and one resumed run replace a rendezvous run, two torchrun runs of the
    resume and a third uninterrupted one.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    hosts = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
             "--rdzv-id=onestep-two-hosts"]
    cmd = launch(hosts, [*tiny_run(whole), "train.steps=8", "train.checkpoint_every=4"])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    run = whole / "run"
    assert [r["world"] for r in _records(run / "log.jsonl", '"run"')] == [2]
    assert [r["step"] for r in _records(run / "metrics.jsonl", '"velocity/loss"')] == list(range(1, 9))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]

    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "run" / "checkpoints" / "step-0000008")
    second = subprocess.run(launch(["--standalone", "--nproc_per_node=2"], [*tiny_run(resumed), "train.steps=8",
                                                                          "train.checkpoint_every=4", "--resume"]),
                            capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    run = resumed / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    steps = [r["step"] for r in _records(run / "metrics.jsonl", '"velocity/loss"')]
    assert steps == list(range(1, 9)), "each step logged once, by rank 0 alone"
    runs = _records(run / "log.jsonl", '"run"')
    assert [r["world"] for r in runs] == [2, 2] and runs[1]["start_step"] == 4
    assert second.stdout.count("metrics step=8") == 1
    resumes = _records(run / "log.jsonl", '"resumed"')
    assert [r["optimizer_files"] for r in resumes] == [["generator.optim.rank0.pt"]], resumes
    assert_same_checkpoint_weights(whole / "run", run, 8)


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

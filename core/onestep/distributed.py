"""Process-group and device setup: one code path for one CPU process, one GPU, or many GPUs
launched by torchrun / the deepspeed launcher.

What listens on the network:

- a single process (no ``RANK`` in the environment) joins a world of one through an in-memory
  store (no TCP store); gloo's own listener is bound to the loopback interface;
- processes started by a launcher rendezvous at ``MASTER_ADDR:MASTER_PORT`` (torchrun:
  ``--master-addr``/``--master-port``, or a free local port with ``--standalone``). PyTorch's
  TCPStore behind it is unauthenticated and its server (on the launcher or rank 0) listens on
  every interface of that host, so multi-process runs belong on a trusted network.
"""
from __future__ import annotations

import atexit
import os
import sys

import torch

from .errors import ConfigError


def resolve_device(choice: str) -> torch.device:
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available; use device=cpu or auto")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if not use_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def launched() -> bool:
    """Whether a launcher (torchrun, deepspeed) started this process as one rank of several."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def skip_shm_comm_op() -> None:
    """Tell DeepSpeed that its CPU shared-memory all-reduce op is unavailable.

    DeepSpeed's comm backend JIT-compiles that C++ op when it starts on the CPU accelerator
    (about a minute, and a crash where no compiler is installed). The op serves only
    ``inference_all_reduce`` (tensor-parallel inference), which training never calls; gloo
    carries every collective of a multi-process CPU run."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_process_group(device: torch.device | None = None) -> tuple[int, int]:
    """Join (or start) the process group; returns (rank, world).

    A single process gets a world of one on an in-memory store (no TCP port); launched
    processes initialise through DeepSpeed from the launcher's environment."""
    import torch.distributed as dist

    if device is None:
        device = torch.device("cpu" if os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()
                              else "cuda")
    if device.type == "cpu":
        skip_shm_comm_op()
    if not dist.is_initialized():
        if launched():
            import deepspeed

            deepspeed.init_distributed(verbose=False)
        else:
            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it
            # gloo listens for peers on the interface of the host name unless told otherwise;
            # a world of one has no peers (this also covers the groups DeepSpeed creates later)
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        # at exit, not after each command: DeepSpeed caches its groups for the process's lifetime
        atexit.register(shutdown_process_group)
    return dist.get_rank(), dist.get_world_size()


def shutdown_process_group() -> None:
    """Tear the process group down (NCCL warns at exit and may leak otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

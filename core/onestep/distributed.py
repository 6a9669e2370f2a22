"""Process-group and device setup: one code path for one CPU process, one GPU, or many GPUs
launched by torchrun / the deepspeed launcher."""
from __future__ import annotations

import atexit
import os
import socket

import torch

from .errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def init_process_group() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed if needed; returns (rank, world)."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain single process: make it a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        deepspeed.init_distributed(verbose=False)
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

"""Data parallelism for ``sio train``: the process group, global sums, and launching torchrun.

Under ``torchrun --nproc_per_node N -m sio train …`` (or ``sio train --nproc N``, which runs
exactly that) each process is one rank: NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU. Ranks
share nothing but gradients (DDP), the epoch log's sums and the RNG states gathered into the
checkpoint. ``SIO_DIST_TIMEOUT`` (seconds, default 1800) bounds every collective, so a rank
that dies makes the others fail instead of hanging.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (``size == 1``: a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was started here (and is stopped here)

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The rank and world size that torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < max(size, 1):
        raise ValueError(f"RANK={rank} outside 0..{size - 1}")
    return World(rank, size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: str) -> tuple[World, str]:
    """Join the process group when launched by torchrun; returns (world, this rank's device)."""
    world = world_from_env()
    if world.size == 1:
        return world, device
    backend = "gloo"
    if str(device).startswith("cuda"):
        device, backend = f"cuda:{world.local_rank}", "nccl"
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        timeout = timedelta(seconds=float(os.environ.get("SIO_DIST_TIMEOUT", "1800")))
        dist.init_process_group(backend, timeout=timeout)
    if dist.get_world_size() != world.size:
        raise RuntimeError(f"process group of {dist.get_world_size()}, WORLD_SIZE {world.size}")
    return World(world.rank, world.size, world.local_rank, owns), device


def stop(world: World) -> None:
    """Leave the process group this module started (after every rank has arrived)."""
    if world.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], world: World, device) -> list[float]:
    """Element-wise sums over ranks (float64; exact for counts below 2**53)."""
    if world.size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_max(value: float, world: World, device) -> float:
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather(value, world: World) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if world.size == 1:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def torchrun_command(nproc: int, arguments: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m sio …`` with this interpreter; standalone
    picks a free local port, so concurrent runs never collide."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*runner, f"--nproc_per_node={nproc}", "-m", "sio", *arguments]

"""Distributed data-parallel training under torchrun: process group, rank, and the few
collectives the loop needs beside DistributedDataParallel's gradient averaging.

Launch: ``torchrun --nproc_per_node N -m fastshower train ...`` (multi-node: add torchrun's
``--nnodes``, ``--node_rank``, ``--rdzv_endpoint`` ...). gloo on CPU, nccl on GPU. Without
torchrun's environment everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum of ``values`` over all ranks (the values themselves in one process)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions such as stopping must be shared)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.broadcast(t, 0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Dist()  # one process, no torchrun


def start() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

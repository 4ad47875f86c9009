"""Sharding an evaluation across the processes of ``torch.distributed`` (``torchrun``).

Work is split in fixed units that do not depend on the number of processes (gallery chunks of
64 images, query batches of ``batch_size``), and unit ``k`` goes to rank ``k % world_size``.
Each unit is computed exactly as a single process computes it (same images in the same batch,
same seeds), and the results are gathered in unit order, so a sharded run writes what a single
process writes. Gloo carries the gathers on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: ``rank`` of ``world_size`` (``0`` of ``1`` alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and logs (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def owns(self, unit: int) -> bool:
        """Whether this process computes work unit ``unit`` (round robin)."""
        return unit % self.world_size == self.rank

    def mine(self, units: Iterable[T]) -> Iterator[tuple[int, T]]:
        """``(k, unit)`` for the units of ``units`` this process computes."""
        return ((k, u) for k, u in enumerate(units) if self.owns(k))

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process (picklable objects)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def current_shard(distributed: bool | None = None) -> Shard:
    """The shard of this process: the initialised default process group when ``distributed``
    is None or True (True without one is an error), a single process when False."""
    from ..errors import InputError

    if distributed is False:
        return Shard()
    if dist.is_available() and dist.is_initialized():
        return Shard(rank=dist.get_rank(), world_size=dist.get_world_size())
    if distributed:
        raise InputError("distributed=True needs an initialised torch.distributed process "
                         "group (launch with torchrun and call init_distributed())")
    return Shard()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed() -> torch.device:
    """Join the process group ``torchrun`` describes (env ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...): NCCL with one GPU per local rank where CUDA is available, gloo on CPU.
    Returns this process's device. Does nothing (CPU or ``cuda``) outside torchrun."""
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def close_distributed() -> None:
    """Leave the process group (after the last gather)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

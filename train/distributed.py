"""Ranks for multi-process runs: torchrun (DDP over nccl or gloo) and torch_xla's launcher.

One rule throughout: every rank computes, only rank 0 writes (checkpoints, metrics, plots, the
export, a cache built on the fly). The helpers here take a ``Device`` (train/device.py), which knows
its rank and world, so callers do not branch on the backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .device import Device


def _xla_world(device: Device) -> bool:
    return device.kind == "xla" and device.world > 1


def _ddp_world(device: Device) -> bool:
    return device.kind != "xla" and device.world > 1 and torch.distributed.is_initialized()


def barrier(device: Device, tag: str = "kamim") -> None:
    """Wait until every rank got here (a no-op for one process)."""
    if _xla_world(device):
        import torch_xla.core.xla_model as xm

        xm.rendezvous(tag)
    elif _ddp_world(device):
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first(device: Device, tag: str = "main-first") -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds a missing cache); the others run it once rank 0 is done
    (and so find the cache there), instead of all ranks writing the same files at once."""
    if not device.is_main:
        barrier(device, tag)
    yield
    if device.is_main:
        barrier(device, tag)


def broadcast_object(value: Any, device: Device) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run dir named after the time, which ranks may disagree on)."""
    if _ddp_world(device):
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]
    if _xla_world(device):
        import torch_xla.core.xla_model as xm

        return xm.mesh_reduce("kamim-broadcast", value, lambda values: values[0])
    return value


def mean_across_ranks(value: torch.Tensor, device: Device) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks, left on the device (no host sync here).

    Each rank's loss is the mean over its own micro-batch, and every rank masks the same number of
    pixels, so this is the loss of the global batch. Call it on every rank (it is a collective).
    """
    if _ddp_world(device):
        total = value.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total / device.world
    if _xla_world(device):
        import torch_xla.core.xla_model as xm

        return xm.all_reduce(xm.REDUCE_SUM, value.detach()) / device.world
    return value


def rank_share(count: int, rank: int, world: int) -> slice:
    """Strided share of ``count`` ordered items for ``rank``, equal on every rank (the tail that does
    not divide is dropped), like torch's DistributedSampler without padding.

    Strided, not contiguous: batch b of every rank together is exactly batch b of one process with a
    ``world`` times larger batch, so N ranks train like one process with the same global batch.
    """
    usable = count - count % world
    return slice(rank, usable, world)


def rank_loader(loader: torch.utils.data.DataLoader, device: Device, seed: int, shuffle: bool = True,
                drop_last: bool = True) -> torch.utils.data.DataLoader:
    """``loader`` with its dataset dealt over the ranks by a ``DistributedSampler`` (call
    ``loader.sampler.set_epoch(epoch)`` every epoch to reshuffle); ``loader`` itself for one process."""
    if device.world == 1:
        return loader
    sampler = torch.utils.data.DistributedSampler(loader.dataset, num_replicas=device.world, rank=device.rank,
                                                  shuffle=shuffle, seed=seed, drop_last=drop_last)
    return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                                       drop_last=loader.drop_last, num_workers=loader.num_workers,
                                       persistent_workers=loader.num_workers > 0, collate_fn=loader.collate_fn)

"""The map-style rank split: per-epoch reshuffle, equal disjoint shares, and N ranks x batch B = one
process x batch N*B, batch for batch (what makes DDP runs equal single-process runs)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from kamim.train.data import EpochBatches, epoch_order


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_are_equal_disjoint_and_cover_the_epoch(world):
    indices = np.arange(100, 123)  # 23 usable samples: does not divide by 2 or 3
    shares = [epoch_order(indices, seed=5, epoch=0, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == 23 // world
    union = np.concatenate(shares)
    assert len(set(union.tolist())) == len(union) and set(union.tolist()) <= set(indices.tolist())


@pytest.mark.parametrize(("world", "batch", "start"), [(2, 2, 0), (3, 1, 0), (2, 3, 5)])
def test_ranks_together_see_the_single_process_batches(world, batch, start):
    indices = np.arange(40)
    single = list(islice(iter(EpochBatches(indices, batch * world, seed=1, start=start)), 12))
    ranks = [list(islice(iter(EpochBatches(indices, batch, seed=1, start=start, rank=r, world=world)), 12))
             for r in range(world)]
    assert EpochBatches(indices, batch, 1, rank=0, world=world).batches_per_epoch == 40 // (batch * world)
    for step, keys in enumerate(single):  # crosses epoch boundaries: (epoch, index) keys must match
        together = sorted(key for rank in ranks for key in rank[step])
        assert together == sorted(keys)


def test_each_epoch_is_reshuffled_and_resume_continues_the_sequence():
    indices = np.arange(16)
    sampler = EpochBatches(indices, 2, seed=0, rank=1, world=2)  # 4 batches per epoch per rank
    batches = list(islice(iter(sampler), 8))
    first = [i for b in batches[:4] for _, i in b]
    second = [i for b in batches[4:] for _, i in b]
    assert {e for b in batches[:4] for e, _ in b} == {0} and {e for b in batches[4:] for e, _ in b} == {1}
    assert first != second
    resumed = list(islice(iter(EpochBatches(indices, 2, seed=0, start=3, rank=1, world=2)), 5))
    assert resumed == batches[3:8]

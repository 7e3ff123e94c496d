"""Multi-dataset whole-batch interleaving and P x K identity batches."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from hcq_ros.data.sampler import IdentityBatchSampler, MultiDatasetBatchSampler, apportion

SIZES = [300, 120, 60]


def dataset_of(index: int) -> int:
    return int(np.searchsorted(np.cumsum(SIZES), index, side="right"))


def test_whole_batches_in_proportion_to_size():
    sampler = MultiDatasetBatchSampler(SIZES, batch_sizes=6, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 80  # 50 + 20 + 10: one pass over every dataset
    per_dataset = Counter()
    seen = {d: [] for d in range(3)}
    for batch in batches:
        owners = {dataset_of(i) for i in batch}
        assert len(owners) == 1 and len(batch) == 6  # a batch never mixes datasets
        (d,) = owners
        per_dataset[d] += 1
        seen[d].extend(batch)
    assert per_dataset == {0: 50, 1: 20, 2: 10}
    for d in range(3):  # one epoch = every sample exactly once
        assert sorted(seen[d]) == list(range(sum(SIZES[:d]), sum(SIZES[:d + 1])))
    # the datasets are interleaved, not run one after the other
    first_half = Counter(dataset_of(b[0]) for b in batches[:40])
    assert all(first_half[d] > 0 for d in range(3))


def test_per_dataset_batch_sizes_and_oversampling():
    sampler = MultiDatasetBatchSampler(SIZES, batch_sizes=[10, 4, 7], seed=0, num_batches=200)
    counts = Counter()
    for batch in sampler:
        d = dataset_of(batch[0])
        assert len(batch) == [10, 4, 7][d] and len(set(batch)) == len(batch)
        counts[d] += 1
    assert list(sampler.batch_counts()) == [125, 50, 25] and counts == {0: 125, 1: 50, 2: 25}


def test_seeded_and_epoch_aware():
    a = MultiDatasetBatchSampler(SIZES, 6, seed=5)
    b = MultiDatasetBatchSampler(SIZES, 6, seed=5)
    assert list(a) == list(b)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(MultiDatasetBatchSampler(SIZES, 6, seed=6)) != epoch0


def test_distributed_ranks_split_one_schedule():
    full = list(MultiDatasetBatchSampler(SIZES, 6, seed=2))
    ranks = [list(MultiDatasetBatchSampler(SIZES, 6, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [26, 26, 26]  # 80 rounded down to a multiple of 3
    merged = [ranks[k % 3][k // 3] for k in range(78)]
    assert all(set(x) <= set(range(sum(SIZES))) for x in merged)
    assert len({tuple(b) for b in merged}) == 78


def test_works_as_dataloader_batch_sampler():
    datasets = [TensorDataset(torch.full((n,), d)) for d, n in enumerate(SIZES)]
    loader = DataLoader(ConcatDataset(datasets), batch_sampler=MultiDatasetBatchSampler(SIZES, 6, seed=0))
    for (labels,) in loader:
        assert labels.unique().numel() == 1  # every batch from one dataset


def test_bad_arguments():
    with pytest.raises(ValueError, match="dataset 2: size 60 must be >= its batch size 64"):
        MultiDatasetBatchSampler(SIZES, 64)
    with pytest.raises(ValueError, match="weights"):
        MultiDatasetBatchSampler(SIZES, 6, weights=[1, 2])
    assert list(apportion(10, [1, 1, 1])) == [4, 3, 3] and apportion(7, [0, 5]).tolist() == [0, 7]


def test_identity_pk_batches():
    rng = np.random.default_rng(0)
    identities = np.concatenate([np.full(n, pid) for pid, n in enumerate(rng.integers(1, 12, size=30))])
    identities = np.concatenate([identities, np.full(5, -1)])  # unlabelled images
    sampler = IdentityBatchSampler(identities, p=8, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        ids = identities[batch]
        assert len(batch) == 32 and (ids >= 0).all()
        counts = Counter(ids.tolist())
        assert len(counts) == 8 and set(counts.values()) == {4}
        assert all(len(set(ids[j * 4:(j + 1) * 4])) == 1 for j in range(8))  # K consecutive per identity
    # identities with >= K images contribute distinct images within a batch
    big = [pid for pid in range(30) if (identities == pid).sum() >= 4]
    for batch in batches:
        for pid in big:
            chosen = [i for i in batch if identities[i] == pid]
            assert len(set(chosen)) == len(chosen)
    again = IdentityBatchSampler(identities, p=8, k=4, seed=3)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches
    with pytest.raises(ValueError, match="only 30 labelled identities"):
        IdentityBatchSampler(identities, p=31, k=2)


def test_stream_sampler_resumes_exactly_and_splits_ranks():
    from itertools import islice

    from hcq_ros.data.sampler import StreamBatchSampler

    full = list(islice(iter(StreamBatchSampler(10, 4, seed=3)), 6))
    resumed = list(islice(iter(StreamBatchSampler(10, 4, seed=3, start_iteration=2)), 4))
    assert resumed == full[2:]
    # each epoch of 10 positions visits every index once
    positions = [pair for batch in full for pair in batch][:10]
    assert sorted(i for i, _ in positions) == list(range(10))
    r0 = next(iter(StreamBatchSampler(10, 2, rank=0, world_size=2, shuffle=False)))
    r1 = next(iter(StreamBatchSampler(10, 2, rank=1, world_size=2, shuffle=False)))
    assert [p for _, p in r0] == [0, 1] and [p for _, p in r1] == [2, 3]

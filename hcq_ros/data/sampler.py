"""Batch samplers: multi-dataset interleaving of whole batches, and P x K identity batches for triplet loss.

Both yield lists of *global* indices and plug into ``torch.utils.data.DataLoader(batch_sampler=...)``:

- ``MultiDatasetBatchSampler`` indexes a ``ConcatDataset``-style concatenation (dataset d owns global
  indices ``offsets[d] .. offsets[d] + sizes[d] - 1``). Every batch comes from ONE dataset; the number of
  batches drawn from each dataset is proportional to its size (or to ``weights``), apportioned exactly per
  epoch (largest remainder) and interleaved in a random order. Within a dataset the samples are walked in a
  fresh permutation, whole batches only, so no sample repeats before the dataset is exhausted and no
  batch holds a duplicate.
- ``IdentityBatchSampler``: P identities x K images each (identities with fewer than K images are sampled
  with replacement; identity < 0 = unlabelled, never sampled).

Randomness: ``numpy.random.default_rng([seed, epoch])`` — the same (seed, epoch) gives the same batches on
every process; call ``set_epoch(epoch)`` each epoch (as with DistributedSampler). With ``world_size > 1``
every rank draws the same global schedule and takes every ``world_size``-th batch from ``rank``.

torch is imported at module level but optionally: with torch the samplers subclass
``torch.utils.data.Sampler``; without it they are plain iterables and the module still imports.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

try:
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover - the data package works without torch
    _SamplerBase = object


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest-remainder method)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights.tolist()}")
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    counts[np.argsort(-remainder, kind="stable")[: total - counts.sum()]] += 1
    return counts


def _check_distributed(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class MultiDatasetBatchSampler(_SamplerBase):
    """Whole batches from one dataset at a time, datasets drawn in proportion to their size.

    dataset_sizes: [D] lengths of the concatenated datasets. batch_sizes: one int or [D].
    num_batches: global batches per epoch (default: sum of size // batch size, one pass over the data).
    weights: [D] sampling weights (default: dataset_sizes).
    """

    def __init__(self, dataset_sizes: Sequence[int], batch_sizes: int | Sequence[int], seed: int = 0,
                 num_batches: Optional[int] = None, weights: Optional[Sequence[float]] = None,
                 rank: int = 0, world_size: int = 1):
        self.sizes = np.asarray(dataset_sizes, dtype=np.int64)
        if self.sizes.ndim != 1 or len(self.sizes) == 0:
            raise ValueError("dataset_sizes must be a non-empty list")
        self.batch_sizes = np.broadcast_to(np.asarray(batch_sizes, dtype=np.int64), self.sizes.shape).copy()
        for d, (size, batch) in enumerate(zip(self.sizes, self.batch_sizes)):
            if batch < 1 or size < batch:
                raise ValueError(f"dataset {d}: size {size} must be >= its batch size {batch} >= 1")
        _check_distributed(rank, world_size)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.weights = np.asarray(self.sizes if weights is None else weights, dtype=np.float64)
        if self.weights.shape != self.sizes.shape:
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.sizes)} datasets")
        total = int((self.sizes // self.batch_sizes).sum()) if num_batches is None else int(num_batches)
        self.num_batches = total - total % world_size  # every rank gets the same number of batches
        if self.num_batches < 1:
            raise ValueError(f"num_batches {total} gives no batch for each of {world_size} ranks")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_counts(self) -> np.ndarray:
        """[D] global batches per epoch drawn from each dataset."""
        return apportion(self.num_batches, self.weights)

    def _dataset_batches(self, rng: np.random.Generator, d: int, count: int) -> list[np.ndarray]:
        """``count`` batches of dataset ``d`` (local indices): consecutive permutations, whole batches only."""
        size, batch = int(self.sizes[d]), int(self.batch_sizes[d])
        per_pass = size // batch
        batches: list[np.ndarray] = []
        while len(batches) < count:
            order = rng.permutation(size)
            batches.extend(order[j * batch:(j + 1) * batch] for j in range(min(per_pass, count - len(batches))))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        counts = self.batch_counts()
        schedule = rng.permutation(np.repeat(np.arange(len(self.sizes)), counts))
        pending = {d: iter(self._dataset_batches(rng, d, int(c))) for d, c in enumerate(counts)}
        for position, d in enumerate(schedule):
            batch = next(pending[d])
            if position % self.world_size == self.rank:
                yield (batch + self.offsets[d]).tolist()

    def __len__(self) -> int:
        return self.num_batches // self.world_size


class IdentityBatchSampler(_SamplerBase):
    """P x K batches: P distinct identities, K images each (K consecutive indices per identity in the batch).

    identities: [N] identity of every global index (< 0 = unlabelled, excluded).
    num_batches: batches per epoch (default: images in K-chunks // P, about one pass over the data).
    """

    def __init__(self, identities: Sequence[int], p: int, k: int, seed: int = 0,
                 num_batches: Optional[int] = None, rank: int = 0, world_size: int = 1):
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        identities = np.asarray(identities, dtype=np.int64)
        self.groups: dict[int, np.ndarray] = {}
        for pid in np.unique(identities[identities >= 0]):
            self.groups[int(pid)] = np.flatnonzero(identities == pid)
        if len(self.groups) < p:
            raise ValueError(f"P={p} identities per batch but only {len(self.groups)} labelled identities")
        _check_distributed(rank, world_size)
        self.p, self.k = p, k
        chunks = sum(max(1, len(ix) // k) for ix in self.groups.values())
        total = max(1, chunks // p) if num_batches is None else int(num_batches)
        self.num_batches = max(world_size, total - total % world_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunks(self, rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
        """Every identity's images shuffled and cut into K-chunks (one with replacement when < K images)."""
        out = {}
        for pid, indices in self.groups.items():
            if len(indices) < self.k:
                order = rng.choice(indices, self.k, replace=True)
            else:
                order = rng.permutation(indices)
            out[pid] = [order[j * self.k:(j + 1) * self.k] for j in range(len(order) // self.k)]
        return out

    def _global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        while len(batches) < self.num_batches:
            chunks = self._chunks(rng)
            available = sorted(pid for pid, c in chunks.items() if c)
            while len(available) >= self.p and len(batches) < self.num_batches:
                chosen = [available[i] for i in rng.choice(len(available), self.p, replace=False)]
                batches.append([int(i) for pid in chosen for i in chunks[pid].pop()])
                available = [pid for pid in available if chunks[pid]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._global_batches()[self.rank::self.world_size]

    def __len__(self) -> int:
        return self.num_batches // self.world_size


class StreamBatchSampler(_SamplerBase):
    """Endless batches for iteration-based training that resume exactly: batch ``it`` of ``rank`` holds the
    stream positions ``(it * world_size + rank) * batch_size + j``; position p maps to sample
    ``perm_e[p % n]`` of epoch ``e = p // n`` (a fresh permutation per epoch, or the identity when
    ``shuffle=False``, e.g. for generated data where every index is already a new image).

    Yields lists of ``(index, position)`` pairs, so the dataset can seed its augmentation from the position.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 start_iteration: int = 0, rank: int = 0, world_size: int = 1):
        _check_distributed(rank, world_size)
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.n, self.batch_size, self.seed, self.shuffle = int(num_samples), int(batch_size), int(seed), shuffle
        self.start_iteration, self.rank, self.world_size = int(start_iteration), rank, world_size
        self._perm_epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start_iteration
        while True:
            first = (it * self.world_size + self.rank) * self.batch_size
            yield [(self._index(p), p) for p in range(first, first + self.batch_size)]
            it += 1

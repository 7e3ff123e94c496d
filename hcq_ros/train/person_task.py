"""PersonNet training task for ``hcq_ros.train.trainer.Trainer``: crop sources (SynthHumans identity crops and/or
Market-1501 / LIP / MPII folders), P x K identity batches for ReID sources, whole batches per source interleaved in
proportion to size, resume-exact, and periodic evaluation on a held-out SynthHumans sequence folder.

Training YAML (see ``hcq_ros/train/configs/person_small.yaml`` and ``person_small_multisource.yaml``)::

    model: {kind: person, preset: small, overrides: {...PersonNetConfig fields}}
        num_identities defaults to the ReID sources' identity count (the identity classifier size)
    data:
      sources:                                   {name: spec} (or a list of specs); whole batches per source
        synth: {kind: synth, p: 8, k: 4, synth: {...SynthCropConfig}, augment: {...CropAugment}, weight: W}
        market: {kind: market, path: DIR, p: 8, k: 4, augment: {expand: 1.0}}
        lip: {kind: lip, path: DIR, batch_size: 32}
        mpii: {kind: mpii, path: DIR, batch_size: 32, ann_file: annot/train.json}
      augment: {...CropAugment defaults for every source}    crop_size comes from the model (H, W -> W, H)
      workers: 1
      round_batches: 100                         interleaving period (see PersonBatchStream)
      val: {sequences: 12, frames: 300, identities: 30, seed: 1000003, size: 320, max_people: 8, frame_step: 5}
    loss: {weights: {triplet: 1, identity: 1, ...}, triplet_margin: 0.3, ...}   PersonCriterion arguments
    train: {...TrainSchedule fields}

Batches: a source with ``p``/``k`` gives P identities x K crops (identity sources), else ``batch_size`` crops
walked in a fresh permutation per epoch. The number of batches per source follows its weight (default its size;
``SynthCropConfig.size`` for generated crops).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from hcq_ros.data.person_dataset import (CropAugment, LipCropSource, MarketCropSource, MpiiCropSource,
                                         PersonCropDataset, SynthCropConfig, SynthCropSource, collate_crops)
from hcq_ros.data.sampler import apportion
from hcq_ros.data.torch_dataset import loader_worker_options
from hcq_ros.models.person_net import CHECKPOINT_CONFIG_KEY, PersonNet, PersonNetConfig
from hcq_ros.train.person_losses import PersonCriterion

SOURCE_KINDS = ("synth", "market", "lip", "mpii")


@dataclass
class SourceBatching:
    """How one source is batched. identity_groups: {label: item indices} for P x K batches (None = plain
    batches of ``batch_size``); pool: P x K over an endless generator whose item index IS the identity."""
    size: int
    weight: float
    p: int = 0
    k: int = 0
    batch_size: int = 0
    identity_groups: Optional[list[np.ndarray]] = None
    pool_ids: Optional[np.ndarray] = None

    @property
    def batch_len(self) -> int:
        return self.p * self.k if (self.identity_groups is not None or self.pool_ids is not None) else self.batch_size


class PersonBatchStream:
    """Endless, resume-exact batches of ``(source, index, position)`` over several sources.

    Global batch g = iteration * world_size + rank. Batches come in rounds of ``round_batches``: each round holds
    ``apportion(round_batches, weights)`` batches of every source in an order drawn from (seed, round); source d's
    j-th batch of all time is fully determined by (seed, d, j). So batch g is computed directly, without replaying
    earlier ones, and a resumed run continues exactly where it stopped (as ``StreamBatchSampler``).
    """

    def __init__(self, sources: list[SourceBatching], seed: int = 0, start_iteration: int = 0, rank: int = 0,
                 world_size: int = 1, round_batches: int = 100):
        if not sources:
            raise ValueError("PersonBatchStream needs at least one source")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        for d, s in enumerate(sources):
            if s.batch_len < 1:
                raise ValueError(f"source {d}: batch size must be >= 1 (P x K or batch_size)")
            if s.identity_groups is not None and len(s.identity_groups) < s.p:
                raise ValueError(f"source {d}: P={s.p} identities per batch but only {len(s.identity_groups)}")
            if s.pool_ids is not None and len(s.pool_ids) < s.p:
                raise ValueError(f"source {d}: P={s.p} identities per batch but only {len(s.pool_ids)}")
        self.sources, self.seed = sources, int(seed)
        self.counts = apportion(int(round_batches), [s.weight for s in sources])
        self.round_batches = int(self.counts.sum())
        self.start_iteration, self.rank, self.world_size = int(start_iteration), rank, world_size
        self._round, self._schedule = -1, np.zeros(0, np.int64)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}     # source -> (epoch, permutation) of plain sources

    def schedule(self, round_index: int) -> np.ndarray:
        """int64 [round_batches]: the source of every batch of one round."""
        if round_index != self._round:
            rng = np.random.default_rng([self.seed, 0x5C4ED, round_index])
            self._round = round_index
            self._schedule = rng.permutation(np.repeat(np.arange(len(self.sources)), self.counts))
        return self._schedule

    def global_batch(self, g: int) -> list[tuple[int, int, int]]:
        round_index, pos = divmod(int(g), self.round_batches)
        schedule = self.schedule(round_index)
        d = int(schedule[pos])
        local = round_index * int(self.counts[d]) + int((schedule[:pos] == d).sum())
        return [(d, index, position) for index, position in self._source_batch(d, local)]

    def _source_batch(self, d: int, b: int) -> list[tuple[int, int]]:
        s = self.sources[d]
        first = b * s.batch_len
        if s.identity_groups is None and s.pool_ids is None:          # plain: per-epoch permutations
            out = []
            for position in range(first, first + s.batch_len):
                epoch, offset = divmod(position, s.size)
                if self._perms.get(d, (None,))[0] != epoch:
                    self._perms[d] = (epoch, np.random.default_rng([self.seed, d, epoch]).permutation(s.size))
                out.append((int(self._perms[d][1][offset]), position))
            return out
        rng = np.random.default_rng([self.seed, d, b, 0x1D])
        if s.pool_ids is not None:                                      # generated: index = identity
            chosen = rng.choice(s.pool_ids, s.p, replace=False)
            indices = np.repeat(chosen, s.k)
        else:
            groups = [s.identity_groups[i] for i in rng.choice(len(s.identity_groups), s.p, replace=False)]
            indices = np.concatenate([rng.choice(g, s.k, replace=len(g) < s.k) for g in groups])
        return [(int(i), first + j) for j, i in enumerate(indices)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        it = self.start_iteration
        while True:
            yield self.global_batch(it * self.world_size + self.rank)
            it += 1


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(allowed)}")


def build_sources(data: dict, crop_size: tuple[int, int], seed: int) -> tuple[list, list[SourceBatching], int]:
    """data.sources -> (crop sources, their batching, number of identity labels). crop_size: (W, H)."""
    specs = data.get("sources") or {"synth": {"kind": "synth", "p": 8, "k": 4}}
    named = list(specs.items()) if isinstance(specs, dict) else [(str(d), s) for d, s in enumerate(specs)]
    base_augment = dict(data.get("augment") or {})
    sources, batching, labels = [], [], 0
    for d, (name, spec) in enumerate(named):
        where = f"data.sources.{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping with a 'kind', got {spec!r}")
        kind = spec.get("kind")
        if kind not in SOURCE_KINDS:
            raise ValueError(f"{where}.kind must be one of {SOURCE_KINDS}, got {kind!r}")
        _check_keys(where, spec, {"kind", "path", "p", "k", "batch_size", "weight", "augment", "synth", "split",
                                  "ann_file"})
        augment = CropAugment.from_dict({**base_augment, **(spec.get("augment") or {})}, crop_size=crop_size)
        source_seed = seed * 1000 + d
        if kind in ("market", "lip", "mpii") and not spec.get("path"):
            raise ValueError(f"{where}: kind {kind!r} needs a path")
        if kind == "synth":
            source = SynthCropSource(SynthCropConfig.from_dict(spec.get("synth")), augment, source_seed, labels)
        elif kind == "market":
            source = MarketCropSource(spec["path"], augment, source_seed, labels, spec.get("split", "train"))
        elif kind == "lip":
            source = LipCropSource(spec["path"], augment, source_seed, spec.get("split", "train"))
        else:
            source = MpiiCropSource(spec["path"], augment, source_seed, spec.get("ann_file", "annot/train.json"))
        weight = float(spec.get("weight", len(source)))
        if "identity" in source.has:
            p, k = int(spec.get("p", 8)), int(spec.get("k", 4))
            if kind == "synth":
                batching.append(SourceBatching(len(source), weight, p, k, pool_ids=np.asarray(source.identity_ids())))
            else:
                ids = source.identities()
                groups = [np.flatnonzero(ids == label) for label in np.unique(ids)]
                batching.append(SourceBatching(len(source), weight, p, k, identity_groups=groups))
            labels += source.num_identities
        else:
            batching.append(SourceBatching(len(source), weight, batch_size=int(spec.get("batch_size", 32))))
        sources.append(source)
    return sources, batching, labels


class PersonTask:
    """The Trainer task (see ``hcq_ros.train.trainer``) for PersonNet; the YAML layout is in the module doc."""
    HEADLINE_METRICS = ("reid_mAP", "reid_rank1", "attr_acc", "parts_mIoU", "pose_PCK")

    @staticmethod
    def architecture_mismatches(theirs: dict, ours: dict) -> list[str]:
        """The whole ``model:`` section is architecture for PersonNet (its losses live under ``loss:``)."""
        return [] if theirs == ours else [f"model config {theirs} != {ours}"]

    def __init__(self, config: dict, out_dir: str | Path):
        self.config, self.out = config, Path(out_dir)
        self.data = dict(config.get("data") or {})
        _check_keys("data", self.data, {"sources", "augment", "workers", "round_batches", "val"})
        self.seed = int((config.get("train") or {}).get("seed", 0))
        model_cfg = config["model"]
        overrides = dict(model_cfg.get("overrides") or {})
        preset = PersonNetConfig.preset(model_cfg.get("preset", "small"), **overrides)
        h, w = preset.crop_size
        self.crop_size = (int(w), int(h))
        self.sources, self.batching, labels = build_sources(self.data, self.crop_size, self.seed)
        self.loss_cfg = dict(config.get("loss") or {})
        if "num_identities" not in overrides:
            use_id = float((self.loss_cfg.get("weights") or {}).get("identity", 1.0)) > 0
            overrides["num_identities"] = labels if use_id else 0
        self.model_cfg = PersonNetConfig.preset(model_cfg.get("preset", "small"), **overrides)

    def build_model(self) -> PersonNet:
        return PersonNet(self.model_cfg)

    def build_criterion(self) -> PersonCriterion:
        return PersonCriterion(**self.loss_cfg)

    def checkpoint_extra(self) -> dict:
        return {CHECKPOINT_CONFIG_KEY: self.model_cfg.to_dict()}

    def batches(self, rank: int, world_size: int, start_iteration: int):
        stream = PersonBatchStream(self.batching, self.seed, start_iteration, rank, world_size,
                                   int(self.data.get("round_batches", 100)))
        loader = torch.utils.data.DataLoader(PersonCropDataset(self.sources), batch_sampler=stream,
                                             collate_fn=collate_crops,
                                             **loader_worker_options(int(self.data.get("workers", 1))))
        return iter(loader)

    def loss(self, model, criterion, batch) -> dict:
        crops, targets = batch
        device = next(model.parameters()).device
        crops = crops.to(device)
        targets = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in targets.items()}
        outputs = model(crops)
        with torch.autocast(device.type, enabled=False):   # losses in float32 (bootstrapped CE ranks pixels)
            outputs = {k: _to_float(v) for k, v in outputs.items()}
            terms = criterion(outputs, targets)
        out = {"loss": terms.pop("total")}
        out.update({f"loss_{k}": v for k, v in terms.items()})
        return out

    def validation_dir(self) -> Path:
        """The held-out SynthHumans sequence folder (written once under OUT/val; its identity pool uses
        ``val.seed``, never the training pool's seed)."""
        val = dict(self.data.get("val") or {})
        root = self.out / "val"
        if (root / "annotations" / "person_keypoints.json").is_file():
            return root
        seed = int(val.get("seed", 1000003))
        pool_seeds = [s.config.pool_seed for s in self.sources if isinstance(s, SynthCropSource)]
        if seed in pool_seeds:
            raise ValueError(f"data.val.seed {seed} equals a training identity pool seed: identities not held out")
        from hcq_ros.data.synth import cli as synth_cli

        parser = argparse.ArgumentParser()
        synth_cli.add_arguments(parser)
        args = parser.parse_args([
            "--out", str(root), "--sequences", str(val.get("sequences", 12)), "--frames", str(val.get("frames", 300)),
            "--identities", str(val.get("identities", 30)), "--seed", str(seed), "--size", str(val.get("size", 320)),
            "--max-people", str(val.get("max_people", 8)), "--no-progress"])
        synth_cli.run(args)
        return root

    def evaluate(self, model) -> dict:
        from hcq_ros.evaluation.person_eval import evaluate_person_net

        val = dict(self.data.get("val") or {})
        metrics = evaluate_person_net(model, self.validation_dir(), frame_step=int(val.get("frame_step", 5)))
        return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float()
    if isinstance(value, (list, tuple)):
        return [v.float() for v in value]
    return value

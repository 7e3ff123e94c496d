"""PersonNet training: the resume-exact multi-source batch stream (P x K, proportions, ranks), the task end to end
through `hcq-ros train` (single-source synth and Market + LIP + MPII), and config errors."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import write_person_formats
from hcq_ros.train.person_task import PersonBatchStream, PersonTask, SourceBatching

TINY_MODEL = {"kind": "person", "preset": "small",
              "overrides": {"embedding_dim": 32, "pose_dim": 16, "fpn_dim": 16, "seg_dim": 8}}
TINY_VAL = {"sequences": 2, "frames": 20, "identities": 6, "size": 160, "max_people": 4, "frame_step": 5,
            "seed": 77}
TRAIN = {"iterations": 3, "lr": 1.0e-3, "warmup": 1, "checkpoint_every": 2, "eval_every": 3, "log_every": 1,
         "threads": 1}


def _streams():
    market = SourceBatching(size=40, weight=40, p=3, k=2,
                            identity_groups=[np.arange(i * 4, i * 4 + 4) for i in range(10)])
    lip = SourceBatching(size=25, weight=25, batch_size=5)
    synth = SourceBatching(size=35, weight=35, p=2, k=3, pool_ids=np.arange(1, 9))
    return [market, lip, synth]


def test_stream_batches_are_pk_proportional_and_resume_exactly():
    stream = PersonBatchStream(_streams(), seed=4, round_batches=20)
    first = [b for _, b in zip(range(60), iter(stream))]
    sources = [b[0][0] for b in first]
    assert all(len({d for d, _, _ in b}) == 1 for b in first)              # whole batches of one source
    np.testing.assert_array_equal(np.bincount(sources, minlength=3), [24, 15, 21])   # 3 rounds of (8, 5, 7)
    for batch in first:
        d = batch[0][0]
        indices = [i for _, i, _ in batch]
        if d == 0:                                                         # 3 identities x 2 crops
            ids = [i // 4 for i in indices]
            assert len(batch) == 6 and len(set(ids)) == 3 and all(ids.count(i) == 2 for i in set(ids))
        elif d == 2:                                                       # pool ids repeated K times
            assert len(batch) == 6 and len(set(indices)) == 2 and set(indices) <= set(range(1, 9))
        else:
            assert len(batch) == 5
    lip_items = [i for b in first if b[0][0] == 1 for _, i, _ in b]
    assert sorted(lip_items[:25]) == list(range(25))                       # one epoch = a permutation
    positions = [(d, p) for b in first for d, _, p in b]
    assert len(set(positions)) == len(positions)                           # every crop has its own augmentation
    resumed = PersonBatchStream(_streams(), seed=4, round_batches=20, start_iteration=37)
    assert [b for _, b in zip(range(23), iter(resumed))] == first[37:]
    ranks = [PersonBatchStream(_streams(), seed=4, round_batches=20, rank=r, world_size=2) for r in (0, 1)]
    r0, r1 = ([b for _, b in zip(range(10), iter(s))] for s in ranks)
    assert r0 == first[0:20:2] and r1 == first[1:20:2]
    with pytest.raises(ValueError, match="P=12 identities per batch but only 10"):
        PersonBatchStream([SourceBatching(40, 40, p=12, k=2, identity_groups=_streams()[0].identity_groups)])


def _train(tmp_path: Path, config: dict, out: Path, *extra: str) -> int:
    from hcq_ros.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["train", "--config", str(path), "--out", str(out), "--no-progress", *extra])


def test_synth_training_logs_every_loss_evaluates_and_resumes(tmp_path):
    config = {"model": TINY_MODEL, "train": TRAIN,
              "data": {"sources": {"synth": {"kind": "synth", "p": 3, "k": 2, "synth": {"identities": 30}}},
                       "workers": 0, "val": TINY_VAL}}
    out = tmp_path / "run"
    assert _train(tmp_path, config, out, "--iterations", "2", "--set", "train.eval_every=0") == 0
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 2 and ckpt["person_config"]["num_identities"] == 30
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert {"loss_triplet", "loss_identity", "loss_attributes", "loss_parts", "loss_pose"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert _train(tmp_path, config, out) == 0                               # resumes at 2, runs to 3, evaluates
    assert [int(r["iteration"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3]
    evals = [json.loads(line) for line in open(out / "eval.jsonl")]
    assert {"reid_mAP", "attr_acc", "parts_mIoU", "pose_PCK"} <= set(evals[-1])
    assert 0.0 <= evals[-1]["attr_acc"] <= 1.0 and evals[-1]["eval_crops"] > 0
    # the last.pt is a PersonNet checkpoint that loads on its own
    from hcq_ros.models.person_net import load_checkpoint
    assert load_checkpoint(out / "last.pt").config.embedding_dim == 32


def test_multisource_batches_carry_only_their_sources_targets(tmp_path):
    root = write_person_formats(tmp_path / "formats", identities=8, images=6, people=(2, 3), seed=5)
    config = yaml.safe_load(Path("hcq_ros/train/configs/person_small_multisource.yaml").read_text())
    config["model"] = TINY_MODEL
    config["train"] = TRAIN
    config["data"].update(workers=0, round_batches=6, val=TINY_VAL)
    config["data"]["sources"]["market"].update(path=str(root / "market"), p=2, k=2)
    config["data"]["sources"]["lip"].update(path=str(root / "lip"), batch_size=3)
    config["data"]["sources"]["mpii"].update(path=str(root / "mpii"), batch_size=3)
    task = PersonTask(config, tmp_path / "run")
    assert task.model_cfg.num_identities == task.sources[0].num_identities > 2
    kinds = set()
    for _, (crops, targets) in zip(range(12), task.batches(0, 1, 0)):
        present = tuple(k for k in ("identities", "attributes", "parts", "keypoints") if targets[k] is not None)
        assert present in {("identities", "attributes"), ("parts", "keypoints"), ("keypoints",)}
        kinds.add(present)
        assert crops.shape[1:] == (3, 128, 64)
    assert len(kinds) == 3
    config["data"]["val"] = TINY_VAL
    assert _train(tmp_path, config, tmp_path / "run", "--set", "train.eval_every=0",
                  "--set", f"data.sources.lip.path={root / 'lip'}") == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 3 and all(np.isfinite(float(r["loss"])) for r in rows)


def test_config_errors_name_the_problem(tmp_path):
    base = {"model": TINY_MODEL, "train": TRAIN}
    with pytest.raises(ValueError, match=r"data.sources.a.kind must be one of"):
        PersonTask({**base, "data": {"sources": {"a": {"kind": "coco"}}}}, tmp_path)
    with pytest.raises(ValueError, match=r"data.sources.m: kind 'market' needs a path"):
        PersonTask({**base, "data": {"sources": {"m": {"kind": "market"}}}}, tmp_path)
    with pytest.raises(ValueError, match=r"unknown keys \['batchsize'\]"):
        PersonTask({**base, "data": {"sources": {"s": {"kind": "synth", "batchsize": 3}}}}, tmp_path)
    with pytest.raises(ValueError, match="unknown synth crop keys"):
        PersonTask({**base, "data": {"sources": {"s": {"kind": "synth", "synth": {"people": 3}}}}}, tmp_path)
    task = PersonTask({**base, "data": {"sources": {"s": {"kind": "synth", "synth": {"pool_seed": 77}}},
                                        "val": {"seed": 77}}}, tmp_path)
    with pytest.raises(ValueError, match="not held out"):
        task.validation_dir()


def test_background_workers_are_spawned_and_survive_a_busy_opencv_parent():
    """The parent uses OpenCV's thread pool first (as the ablation runner does when it writes datasets); spawned
    workers start clean, so the first batch arrives (a forked worker hung in cv2.setNumThreads here)."""
    import cv2

    from hcq_ros.data.torch_dataset import loader_worker_options

    assert loader_worker_options(0) == {"num_workers": 0}
    assert loader_worker_options(1)["multiprocessing_context"] == "spawn"
    with pytest.raises(ValueError, match="workers"):
        loader_worker_options(-1)
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    for _ in range(5):
        cv2.resize(big, (64, 128), interpolation=cv2.INTER_AREA)
    config = {"model": TINY_MODEL, "train": TRAIN,
              "data": {"sources": {"synth": {"kind": "synth", "p": 3, "k": 2, "synth": {"identities": 30}}},
                       "workers": 1, "val": TINY_VAL}}
    crops, targets = next(PersonTask(config, "unused").batches(0, 1, 0))
    assert crops.shape[0] == 6 and targets["identities"].shape == (6,)

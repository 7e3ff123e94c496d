"""The training loop end to end on tiny configs: loss terms logged, checkpoint + exact resume, periodic eval,
curve PNG, config errors, and torchrun DDP with 2 CPU processes (gloo)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_hcq_train_config
from hcq_ros.train.cli import load_config

TINY = tiny_hcq_train_config()


def _write_config(tmp_path: Path, config=TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config_path: Path, out: Path, *extra: str) -> int:
    from hcq_ros.cli import main
    return main(["train", "--config", str(config_path), "--out", str(out), "--no-progress", *extra])


def test_train_logs_checkpoints_evaluates_and_resumes(tmp_path):
    cfg = _write_config(tmp_path)
    out = tmp_path / "run"
    assert _train(cfg, out, "--iterations", "2") == 0
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 2 and "hcq_config" in ckpt
    assert ckpt["git_commit"] and ckpt["git_commit_last"]   # the code the run started from, and HEAD at this save
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in rows) and "loss_pose" in rows[0]
    # resume: continues from iteration 2 to 4 instead of starting again
    snapshot = tmp_path / "engines" / "tiny.pt"
    assert _train(cfg, out, "--export", str(snapshot)) == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    evals = [json.loads(line) for line in open(out / "eval.jsonl")]
    assert evals and {"bbox_AP", "segm_AP", "keypoints_AP"} <= set(evals[-1])
    assert (out / "curve.png").stat().st_size > 1000
    # the weights-only snapshot (what engines/ ships) loads as an HCQNet and seeds a new run at its iteration
    from hcq_ros.models.hcq import load_checkpoint
    assert load_checkpoint(snapshot).config.num_queries == 6
    assert "optimizer" not in torch.load(snapshot, weights_only=False)
    out2 = tmp_path / "run2"
    assert _train(cfg, out2, "--init", str(snapshot), "--iterations", "5", "--set", "train.eval_every=0") == 0
    assert [int(r["iteration"]) for r in csv.DictReader(open(out2 / "log.csv"))] == [5]


def test_resume_with_another_architecture_is_refused_other_losses_are_fine(tmp_path):
    cfg = _write_config(tmp_path)
    out = tmp_path / "run"
    assert _train(cfg, out, "--iterations", "1", "--set", "train.eval_every=0") == 0
    with pytest.raises(ValueError, match="trained with another model .*num_queries: 6 != 7"):
        _train(cfg, out, "--iterations", "2", "--set", "model.overrides.num_queries=7")
    # loss settings are not architecture: the run continues under new ones
    assert _train(cfg, out, "--iterations", "2", "--set", "train.eval_every=0",
                  "--set", "model.overrides.giou_weight=2.0", "--set", "model.overrides.match_box_weight=5.0") == 0
    assert torch.load(out / "last.pt", weights_only=False)["iteration"] == 2


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_config(tmp_path / "no_such.yaml", [])
    cfg = _write_config(tmp_path)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(cfg, ["data.batch_size"])
    with pytest.raises(ValueError, match="unknown train settings"):
        _train(cfg, tmp_path / "x", "--set", "train.learning_rate=1")


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_ddp_two_cpu_processes(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["train"].update(iterations=2, eval_every=0)
    cfg = _write_config(tmp_path, config)
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hcq_ros.cli", "train",
                           "--config", str(cfg), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(out / "last.pt", weights_only=False)["iteration"] == 2


def test_snapshot_drops_optimizer_and_loads(tmp_path):
    from hcq_ros.models.hcq import load_checkpoint
    from hcq_ros.train.snapshot import snapshot

    cfg = _write_config(tmp_path)
    out = tmp_path / "run"
    assert _train(cfg, out, "--iterations", "1", "--set", "train.eval_every=0") == 0
    slim = snapshot(out / "last.pt", tmp_path / "engines" / "x.pt")
    assert "optimizer" not in slim and slim["iteration"] == 1
    assert load_checkpoint(tmp_path / "engines" / "x.pt").config.num_queries == 6
    with pytest.raises(FileNotFoundError, match="no_such"):
        snapshot(tmp_path / "no_such.pt", tmp_path / "y.pt")


def test_init_backbone_copies_only_the_backbone_and_checks_it_fits(tmp_path):
    cfg = _write_config(tmp_path)
    first = tmp_path / "first"
    assert _train(cfg, first, "--iterations", "2", "--set", "train.eval_every=0") == 0
    source = torch.load(first / "last.pt", weights_only=False)["model"]
    second = tmp_path / "second"   # lr 0: the one step leaves the initial weights as they were
    assert _train(cfg, second, "--iterations", "1", "--set", "train.eval_every=0", "--set", "train.lr=0.0",
                  "--set", f"train.init_backbone={first / 'last.pt'}") == 0
    ckpt = torch.load(second / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 1
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone and all(torch.equal(ckpt["model"][k], source[k]) for k in backbone)
    others = [k for k in source if not k.startswith("backbone.") and source[k].is_floating_point()]
    assert any(not torch.equal(ckpt["model"][k], source[k]) for k in others)   # the rest started fresh
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"backbone.stem.0.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        _train(cfg, tmp_path / "third", "--iterations", "1", "--set", f"train.init_backbone={bad}")
    with pytest.raises(FileNotFoundError, match="init_backbone"):
        _train(cfg, tmp_path / "fourth", "--iterations", "1", "--set", f"train.init_backbone={tmp_path / 'no.pt'}")


def test_init_weights_warm_starts_an_extended_model(tmp_path, capsys):
    """A run with learned references seeds a run with encoder query selection: every shared tensor is copied, the
    proposal heads are new and named."""
    learned = tmp_path / "learned.yaml"
    config = json.loads(json.dumps(TINY))
    config["model"].setdefault("overrides", {})["query_init"] = "learned"
    learned.write_text(yaml.safe_dump(config))
    first = tmp_path / "first"
    assert _train(learned, first, "--iterations", "2", "--set", "train.eval_every=0") == 0
    source = torch.load(first / "last.pt", weights_only=False)["model"]
    cfg = _write_config(tmp_path)            # the profile's query_init: "encoder"
    second = tmp_path / "second"
    capsys.readouterr()
    assert _train(cfg, second, "--iterations", "1", "--set", "train.eval_every=0", "--set", "train.lr=0.0",
                  "--set", f"train.init_weights={first / 'last.pt'}") == 0
    printed = capsys.readouterr().out
    assert "initialised from" in printed and "new (" in printed and "query_selection" in printed
    ckpt = torch.load(second / "last.pt", weights_only=False)["model"]
    shared = [k for k in ckpt if k in source and source[k].shape == ckpt[k].shape and source[k].is_floating_point()]
    assert len(shared) > 100 and all(torch.equal(ckpt[k], source[k]) for k in shared)
    assert any(k.startswith("query_selection.") for k in ckpt) and "decoder.query_corners" in source
    with pytest.raises(ValueError, match="exclusive"):
        _train(cfg, tmp_path / "third", "--iterations", "1", "--set", f"train.init_weights={first / 'last.pt'}",
               "--set", f"train.init_backbone={first / 'last.pt'}")
    empty = tmp_path / "empty.pt"
    torch.save({"model": {"nothing.weight": torch.zeros(1)}}, empty)
    with pytest.raises(ValueError, match="no tensor"):
        _train(cfg, tmp_path / "fourth", "--iterations", "1", "--set", f"train.init_weights={empty}")

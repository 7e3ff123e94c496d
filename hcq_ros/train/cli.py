"""`hcq-ros train`: train HCQNet (or PersonNet) from a YAML config, resumable, single process or torchrun DDP.

    hcq-ros train --config hcq_ros/train/configs/hcq_small.yaml --out runs/hcq_small
    hcq-ros train --config ... --data coco:/data/coco --set train.iterations=90000 --set data.batch_size=16
    torchrun --nproc_per_node 4 -m hcq_ros.cli train --config ... --out runs/x
Rerunning the same command resumes from OUT/last.pt.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="training YAML (model/data/train sections)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<config name>)")
    parser.add_argument("--data", default=None, help="training data: synth | coco:PATH (overrides data.train)")
    parser.add_argument("--iterations", type=int, default=None, help="overrides train.iterations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set data.batch_size=4 (value parsed as YAML)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this weights-only snapshot when OUT has no last.pt (e.g. engines/hcq_small.pt)")
    parser.add_argument("--export", type=Path, default=None,
                        help="at the end, write a weights-only snapshot here (what engines/ ships)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")


def load_config(path: Path, overrides: list[str]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    for section in ("model", "train"):
        if section not in config:
            raise ValueError(f"{path}: missing section {section!r}")
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return config


def build_task(config: dict, out: Path):
    kind = config["model"].get("kind", "hcq")
    if kind == "hcq":
        from hcq_ros.train.hcq_task import HCQTask
        return HCQTask(config, out)
    if kind == "person":
        from hcq_ros.train.person_task import PersonTask
        return PersonTask(config, out)
    raise ValueError(f"model.kind must be 'hcq' or 'person', got {kind!r}")


def run(args) -> int:
    from hcq_ros.train.trainer import Trainer, TrainSchedule

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.train={args.data}")
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    config = load_config(args.config, overrides)
    out = args.out or Path("runs") / args.config.stem
    schedule = TrainSchedule.from_dict(config["train"])
    trainer = Trainer(build_task(config, out), schedule, out, config)
    metrics = trainer.fit(progress=not args.no_progress, init=args.init)
    if args.export:
        trainer.export_weights(args.export)
    if trainer.main:
        print(f"checkpoint: {trainer.last_path}")
        for k in trainer.task.HEADLINE_METRICS:
            if isinstance(metrics.get(k), float):
                print(f"  {k:22s} {metrics[k]:.4f}")
    return 0

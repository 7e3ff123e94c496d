"""The ``hcq-ros`` command line. Each sub-command lives in its own module, imported only when used.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Lazy so that `hcq-ros synth` does not import torch.
COMMANDS = {
    "demo": ("hcq_ros.demo", "synthetic sequence -> full pipeline -> MCAP bag + annotated video"),
    "synth": ("hcq_ros.data.synth.cli", "generate a SynthHumans dataset (images or sequences)"),
    "eval": ("hcq_ros.evaluation.cli", "score predictions (or a model) against ground truth"),
    "train": ("hcq_ros.train.cli", "train HCQNet or PersonNet from a YAML config (resumable, DDP)"),
    "export": ("hcq_ros.runtime.export_cli", "export a checkpoint to ONNX for onnxruntime / TensorRT (+ metadata)"),
    "build-engine": ("hcq_ros.runtime.build_engine_cli", "build or find the cached TensorRT engine of a .trt.onnx"),
    "doctor": ("hcq_ros.runtime.doctor", "what this machine can run: backends, GPU, TensorRT plugin, ROS"),
    "ablation": ("hcq_ros.train.hcq_ablation", "HCQNet ablation, equal budgets -> docs/ablation.md"),
    "person-ablation": ("hcq_ros.train.person_ablation",
                        "PersonNet ablation, equal budgets -> docs/person_ablation.md"),
    "run": ("hcq_ros.run_cli", "video / image folder / camera / bag -> tracked people (MCAP + video)"),
    "replay": ("hcq_ros.ros.replay_cli", "rosbag2 in -> rosbag2 out with the perception topics"),
    "calibrate": ("hcq_ros.evaluation.calibrate",
                  "choose score and tracker thresholds for a detector from IDF1 on SynthHumans sequences"),
    "bench": ("hcq_ros.bench_cli", "per-stage latency, FPS and memory of the pipeline per backend/threads/size/people"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcq-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added only for the chosen command (see main) to keep imports lazy.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.error(
            f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        return 0
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cmd_parser = argparse.ArgumentParser(prog=f"hcq-ros {argv[0]}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

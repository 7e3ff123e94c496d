"""Weights-only snapshot of a training checkpoint (what engines/ ships), taken from a run that may still be going.

    python -m hcq_ros.train.snapshot runs/person_small/last.pt engines/person_small.pt

Keeps the model (+ criterion, e.g. the RLE flows), the config, the iteration and the commit; drops the optimizer
state (two thirds of the file). The result loads with the models' own ``load_checkpoint`` and seeds a new run
with ``hcq-ros train --init``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

OPTIMIZER_KEYS = ("optimizer",)


def snapshot(checkpoint: str | Path, out: str | Path) -> dict:
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {checkpoint}")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{checkpoint} is not a training checkpoint (no 'model' key)")
    slim = {k: v for k, v in ckpt.items() if k not in OPTIMIZER_KEYS}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(slim, tmp)
    os.replace(tmp, out)
    return slim


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    slim = snapshot(args.checkpoint, args.out)
    print(f"{args.out}: iteration {slim.get('iteration')}, commit {slim.get('git_commit', '?')[:12]}, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

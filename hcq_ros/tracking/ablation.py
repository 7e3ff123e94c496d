"""Tracker ablation on simulated detections: IoU only vs + ReID association vs + lost-track re-identification.

    python -m hcq_ros.tracking.ablation                       # writes docs/tracking_ablation.md
    python -m hcq_ros.tracking.ablation --fps 25 --sequences 2 --frames 60 --out /tmp/ablation.md

All logic lives in ``hcq_ros.tracking.simulate``; this only parses arguments and writes the report.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hcq_ros.tracking import TrackerConfig
from hcq_ros.tracking.simulate import (SimulationConfig, ablation_report, evaluate_true_ids, run_ablation,
                                       simulate_sequences)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=6, help="cameras per setting (default 6)")
    parser.add_argument("--frames", type=int, default=150, help="frames per sequence (default 150)")
    parser.add_argument("--fps", type=float, nargs="+", default=[25.0, 10.0],
                        help="one table per frame rate (default 25 10)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("docs/tracking_ablation.md"), help="markdown report")
    parser.add_argument("--json", type=Path, help="also write the table rows as JSON")
    args = parser.parse_args(argv)
    tracker = TrackerConfig()
    sections, raw = [], {}
    for fps in args.fps:
        cfg = SimulationConfig(num_frames=args.frames, fps=fps)
        print(f"simulating {args.sequences} x {args.frames} frames at {fps:g} fps ...", flush=True)
        sequences = simulate_sequences(args.sequences, args.seed, cfg)
        rows = run_ablation(sequences, tracker)
        reference = evaluate_true_ids(sequences)
        sections.append((cfg, sequences, rows, reference))
        raw[f"{fps:g}fps"] = rows
        for r in rows:
            print(f"  {r['variant']:32s} IDF1 {r['IDF1']:.3f}  MOTA {r['MOTA']:.3f}  IDs {r['IDs']}")
    command = "python -m hcq_ros.tracking.ablation " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(ablation_report(sections, command.strip(), args.seed, tracker))
    print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

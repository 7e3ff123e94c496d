"""Soak and load checks of the full pipeline: ``python -m hcq_ros.evaluation.soak --frames 5000``.

1. soak: ``frames`` frames through the replay path (Perceptor -> every output message -> an MCAP bag in a
   scratch folder), the same loop as ``hcq-ros replay``. Resident memory (RSS, /proc) is sampled every
   ``sample_every`` frames after a garbage collection; growth is measured from the end of the warm-up
   (``warmup`` frames, default 10 %) to the end. Target: < 5 %. The frames cycle through a pool of SynthHumans
   frames of one sequence with ever-increasing stamps, so the scene jumps back every ``pool`` frames and the
   tracker keeps starting and retiring tracks (its state must not grow).
2. load: a producer thread-free loop offers frames at ``live_fps`` (60) for ``live_seconds`` to a FrameWorker in
   newest-frame mode (what the ROS node does). Reports processed / skipped frames and output latency
   (offered -> all messages recorded) p50 / p99 / max.

Models: ``--detector/--person`` (``--backend``), else the shipped ``engines/hcq_small.*`` +
``engines/person_small.*``, else tiny random-initialised models made on the spot (``tiny_models``; the report
says so). Figures with tiny models measure the plumbing (memory, hand-off, messages), not the networks' cost.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

TARGET_GROWTH = 0.05
TINY_HCQ = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=10, ffn_dim=64, mask_points=256)
TINY_PERSON = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))
# Tiny random models score around 0.02: thresholds low enough that persons and tracks exist at all.
TINY_SETTINGS = dict(score_threshold=0.0, max_people=3, input_size=(64, 64),
                     tracker={"high_score": 0.0, "low_score": 0.0, "new_track_score": 0.0, "min_hits": 1})


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; ru_maxrss peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tiny_models(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Random-initialised tiny HCQNet + PersonNet checkpoints (det.pt, person.pt) in ``folder``."""
    import torch

    from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq
    from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_hcq(folder / "det.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **TINY_HCQ)))
    save_person(folder / "person.pt", PersonNet(PersonNetConfig.preset("small", **TINY_PERSON)))
    return folder / "det.pt", folder / "person.pt"


def tiny_config(folder: str | Path, **overrides):
    """PerceptorConfig for the torch backend on ``tiny_models(folder)`` (made if missing), one thread, with
    TINY_SETTINGS (tests, soak without shipped models)."""
    from hcq_ros.pipeline import PerceptorConfig

    folder = Path(folder)
    if not ((folder / "det.pt").is_file() and (folder / "person.pt").is_file()):
        tiny_models(folder)
    settings = {**copy.deepcopy(TINY_SETTINGS), "backend": "torch", "threads": 1,
                "detector_model": str(folder / "det.pt"), "person_model": str(folder / "person.pt"), **overrides}
    return PerceptorConfig.from_dict(settings)


def frame_pool(count: int, width: int, height: int, seed: int = 3) -> list[np.ndarray]:
    """``count`` consecutive frames (uint8 [H, W, 3] RGB) of one SynthHumans sequence."""
    from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_sequence

    cfg = SceneConfig(width=width, height=height, max_people=6)
    return [s.image for s in generate_sequence(seed, cfg, count, camera=1, pool=IdentityPool(seed=seed, size=12),
                                               name="soak")]


def cycled_frames(pool: list[np.ndarray], total: int, fps: float = 30.0) -> Iterator:
    """``total`` SourceFrames cycling through ``pool``; stamps strictly increase at ``fps``."""
    from hcq_ros.sources import SourceFrame

    period = int(round(1e9 / fps))
    for i in range(total):
        image = pool[i % len(pool)]
        stamp = 1_000_000_000 + i * period
        yield SourceFrame(stamp, "camera", image, None, (image.shape[1], image.shape[0]), log_ns=stamp, index=i)


def memory_soak(perceptor, pool: list[np.ndarray], frames: int, warmup: Optional[int] = None,
                sample_every: int = 50, bag_dir: Optional[Path] = None, progress: bool = True) -> dict:
    """Run ``frames`` frames through the replay path; RSS samples and growth after warm-up (see module doc)."""
    from hcq_ros.ros.bag import BagWriter
    from hcq_ros.ros.replay import FrameRecorder, process_frames

    if frames < 2 * sample_every:
        raise ValueError(f"frames must be >= {2 * sample_every} (two RSS samples), got {frames}")
    warmup = max(sample_every, frames // 10) if warmup is None else warmup
    if not 0 < warmup < frames:
        raise ValueError(f"warmup must be in (0, {frames}), got {warmup}")
    samples: list[tuple[int, int]] = []

    def sample(frame, _result) -> None:
        done = frame.index + 1
        if done % sample_every == 0 or done == frames:
            gc.collect()
            samples.append((done, rss_bytes()))

    with tempfile.TemporaryDirectory(prefix="hcq_soak_") as scratch:
        bag_path = Path(bag_dir or scratch) / "soak_out"
        with BagWriter(bag_path, storage="mcap") as bag:
            recorder = FrameRecorder(bag, input_topic="/camera/image_raw")
            summary = process_frames(cycled_frames(pool, frames), perceptor, recorder, source_name="soak",
                                     total=frames, progress=progress, on_frame=sample)
        bag_mib = sum(p.stat().st_size for p in bag_path.rglob("*") if p.is_file()) / 2 ** 20
    after_warmup = [(n, r) for n, r in samples if n >= warmup]
    base, end = after_warmup[0][1], after_warmup[-1][1]
    slope = float(np.polyfit([n for n, _ in after_warmup], [r for _, r in after_warmup], 1)[0]) \
        if len(after_warmup) > 1 else 0.0
    return {"frames": summary.frames, "processed": summary.processed, "dropped": summary.dropped,
            "persons": summary.persons, "tracks": summary.tracks, "fps": summary.fps, "stage_ms": summary.stage_ms,
            "warmup_frames": warmup, "rss_after_warmup_mib": round(base / 2 ** 20, 2),
            "rss_end_mib": round(end / 2 ** 20, 2), "rss_max_mib": round(max(r for _, r in samples) / 2 ** 20, 2),
            "rss_growth": round((end - base) / base, 4), "rss_slope_kib_per_1000_frames": round(slope * 1000 / 1024, 1),
            "target_growth": TARGET_GROWTH, "within_target": (end - base) / base < TARGET_GROWTH,
            "output_bag_mib": round(bag_mib, 1), "samples": [(n, round(r / 2 ** 20, 2)) for n, r in samples]}


def live_load(perceptor, pool: list[np.ndarray], seconds: float = 10.0, fps: float = 60.0,
              progress: bool = True) -> dict:
    """Offer frames at ``fps`` for ``seconds`` to the newest-frame worker; latency and skipped frames."""
    from hcq_ros.ros.replay import FrameRecorder, process_frames

    perceptor.reset()
    total = max(1, int(round(seconds * fps)))
    recorder = FrameRecorder(None, input_topic=None)  # messages are built; nothing is stored
    summary = process_frames(cycled_frames(pool, total, fps), perceptor, recorder, source_name="live",
                             total=total, progress=progress, newest_only=True, pace_fps=fps)
    return {"offered": summary.frames, "offered_fps": fps, "processed": summary.processed,
            "skipped": summary.skipped, "dropped": summary.dropped,
            "output_fps": round(summary.processed / summary.wall_s, 2),
            "latency_ms": summary.latency_ms, "stage_ms": summary.stage_ms, "wall_s": summary.wall_s}


def build_perceptor(args, scratch: Path):
    """(Perceptor, description of the models used)."""
    from hcq_ros.demo import DETECTOR_STEM, PERSON_STEM, find_model
    from hcq_ros.pipeline import Perceptor, PerceptorConfig

    detector = args.detector or find_model(Path(args.engines), DETECTOR_STEM)
    person = args.person or find_model(Path(args.engines), PERSON_STEM)
    from hcq_ros.ros.node_params import load_perceptor_settings

    # the node's settings (launch/params.yaml: calibrated thresholds, tracked_only), so people are found and tracked
    settings: dict = {**load_perceptor_settings(), "backend": args.backend, "threads": args.threads,
                      "pipelined": args.pipelined}
    if detector is None or person is None:
        detector, person = tiny_models(scratch)
        settings.update(copy.deepcopy(TINY_SETTINGS), backend="torch")
        models = "tiny random-initialised HCQNet + PersonNet (no shipped models found)"
    else:
        models = f"{detector} + {person}"
    settings.update(detector_model=str(detector), person_model=str(person))
    return Perceptor(PerceptorConfig.from_dict(settings)), models


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcq_ros.evaluation.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000, help="frames of the memory soak (default 5000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up frames (default 10 %%)")
    parser.add_argument("--sample-every", type=int, default=50, help="frames between RSS samples (default 50)")
    parser.add_argument("--live-seconds", type=float, default=10.0, help="duration of the 60 fps load test")
    parser.add_argument("--live-fps", type=float, default=60.0, help="producer rate of the load test")
    parser.add_argument("--size", type=int, default=64, help="square frame size (default 64)")
    parser.add_argument("--pool", type=int, default=40, help="distinct frames cycled through (default 40)")
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    parser.add_argument("--detector", default=None, help="HCQNet model (default shipped, else tiny random)")
    parser.add_argument("--person", default=None, help="PersonNet model (default shipped, else tiny random)")
    parser.add_argument("--engines", default="engines", help="where shipped models are looked for")
    parser.add_argument("--threads", type=int, default=1, help="backend CPU threads (default 1)")
    parser.add_argument("--pipelined", action=argparse.BooleanOptionalAction, default=True,
                        help="detector one frame ahead on a second thread, as the node (default on)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hcq_soak_models_") as scratch:
        try:
            perceptor, models = build_perceptor(args, Path(scratch))
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"soak: error: {exc}", file=sys.stderr)
            return 2
        try:
            pool = frame_pool(args.pool, args.size, args.size)
            t0 = time.perf_counter()
            soak = memory_soak(perceptor, pool, args.frames, args.warmup, args.sample_every,
                               progress=not args.no_progress)
            live = live_load(perceptor, pool, args.live_seconds, args.live_fps, progress=not args.no_progress)
        finally:
            perceptor.close()
    report = {"models": models, "frame_size": [args.size, args.size], "pipelined": args.pipelined,
              "threads": args.threads, "backend": args.backend, "soak": soak, "live": live,
              "total_s": round(time.perf_counter() - t0, 1)}
    print(f"models: {models} ({'pipelined' if args.pipelined else 'one thread'}, {args.threads} thread(s) per model)")
    print(f"soak: {soak['frames']} frames at {soak['fps']:.1f} frames/s, {soak['persons']} persons, "
          f"{soak['tracks']} tracks; RSS {soak['rss_after_warmup_mib']:.1f} MiB after {soak['warmup_frames']} "
          f"warm-up frames -> {soak['rss_end_mib']:.1f} MiB at the end: growth {100 * soak['rss_growth']:.2f} % "
          f"({'within' if soak['within_target'] else 'OVER'} the {100 * TARGET_GROWTH:.0f} % target; "
          f"{soak['rss_slope_kib_per_1000_frames']:.0f} KiB per 1000 frames)")
    lat = live["latency_ms"]
    print(f"live: {live['offered']} frames offered at {live['offered_fps']:g} fps, {live['processed']} processed "
          f"({live['output_fps']:.1f} fps), {live['skipped']} skipped (newest-frame mode); latency p50 "
          f"{lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

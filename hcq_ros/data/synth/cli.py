"""``hcq-ros synth``: write a SynthHumans dataset (single images and/or sequences) in the real formats.

Layout under ``--out DIR``::

    annotations/person_keypoints.json   COCO person keypoints for every image and frame (+ sequence, camera,
                                        frame, parts_file per image; track_id, identity, attributes per person)
    images/{id:06d}.jpg, parts/{id:06d}.png                      --images mode
    mot/{seq}/img1/{frame:06d}.jpg, gt/gt.txt, seqinfo.ini       --sequences mode (COCO file_name points here)
    parts/{seq}/{frame:06d}.png                                  --sequences mode
    market/bounding_box_train|bounding_box_test|query/...jpg     --sequences mode: ReID crops, 128x64
    market/attributes.json

ReID crops: every ``--crop-every`` frames, each person whose visible box is >= 32 px tall, with >= 8 visible
keypoints and a person-like aspect ratio, padded by 10 % and resized to 128x64. Identities are split in half
(lower ids train, upper ids test); per test identity and camera the crop with the most visible keypoints is
the query, the others go to the gallery (bounding_box_test).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hcq_ros.data.schema import Sample
from hcq_ros.data.synth.appearance import IdentityPool
from hcq_ros.data.synth.scene import SceneConfig, generate_image, measure_speed
from hcq_ros.data.synth.sequence import generate_sequence

CROP_SIZE = (64, 128)           # Market-1501 crops: width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder (required unless --bench)")
    parser.add_argument("--images", type=int, default=0, help="number of single images (default 0)")
    parser.add_argument("--sequences", type=int, default=0, help="number of sequences = cameras (default 0)")
    parser.add_argument("--frames", type=int, default=100, help="frames per sequence (default 100)")
    parser.add_argument("--size", type=int, default=256, help="square image size (default 256)")
    parser.add_argument("--width", type=int, help="image width (overrides --size)")
    parser.add_argument("--height", type=int, help="image height (overrides --size)")
    parser.add_argument("--max-people", type=int, default=15, help="most people per image (default 15)")
    parser.add_argument("--identities", type=int, default=40, help="identity pool size for sequences (default 40)")
    parser.add_argument("--fps", type=float, default=25.0, help="sequence frame rate (default 25)")
    parser.add_argument("--crop-every", type=int, default=5, help="ReID crops every N frames (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same files)")
    parser.add_argument("--bench", action="store_true",
                        help="only measure in-memory generation speed (--images N, default 200) on one thread")
    parser.add_argument("--json", type=Path, help="write a summary json here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _config(args: argparse.Namespace) -> SceneConfig:
    width = args.width if args.width is not None else args.size
    height = args.height if args.height is not None else args.size
    return SceneConfig(width=width, height=height, max_people=args.max_people)


def _camera_plan(pool: IdentityPool, cameras: int, seed: int) -> list[list[int]]:
    """Identities shown per camera: each identity in 2 (sometimes 3) cameras, so ReID pairs exist."""
    rng = np.random.default_rng([seed, 0xCA3])
    plan: list[list[int]] = [[] for _ in range(cameras)]
    for identity in pool.ids:
        count = min(cameras, 2 + int(rng.random() < 0.3))
        for cam in rng.choice(cameras, size=count, replace=False):
            plan[int(cam)].append(identity)
    for cam in range(cameras):
        if not plan[cam]:                                   # tiny pools: never leave a camera empty
            plan[cam] = [int(i) for i in rng.choice(pool.ids, size=min(len(pool), 4), replace=False)]
    return plan


def _crop(sample: Sample, k: int) -> tuple[np.ndarray, int] | None:
    """128x64 crop around person k's padded visible box and its visible keypoint count, or None if unsuitable."""
    person = sample.persons[k]
    x0, y0, x1, y1 = (float(v) for v in person.box)
    w, h = x1 - x0, y1 - y0
    visible = int((person.keypoints[:, 2] == 2).sum())
    if h < 32 or visible < 8 or not 1.3 <= h / max(w, 1.0) <= 5.0 or person.identity < 1:
        return None
    height, width = sample.image.shape[:2]
    px, py = 0.1 * w, 0.1 * h
    xa, ya = max(0, int(x0 - px)), max(0, int(y0 - py))
    xb, yb = min(width, int(np.ceil(x1 + px))), min(height, int(np.ceil(y1 + py)))
    crop = cv2.resize(sample.image[ya:yb, xa:xb], CROP_SIZE, interpolation=cv2.INTER_AREA)
    return crop, visible


def _write_images(args, cfg, coco, bar) -> int:
    persons = 0
    for i in range(args.images):
        image_id = i + 1
        sample = generate_image(np.random.default_rng([args.seed, i]), cfg, image_id=image_id)
        coco.add(sample, f"images/{image_id:06d}.jpg", f"parts/{image_id:06d}.png")
        persons += len(sample.persons)
        bar.update(1)
    return persons


def _write_sequences(args, cfg, coco, bar, first_image_id: int) -> dict:
    from hcq_ros.data.formats.market import MarketWriter
    from hcq_ros.data.formats.mot import MotWriter

    pool = IdentityPool(args.identities, args.seed)
    plan = _camera_plan(pool, args.sequences, args.seed)
    train_ids = set(pool.ids[: len(pool) // 2])
    market = MarketWriter(args.out / "market")
    counts = {"persons": 0, "frames": 0, "train": 0, "query": 0, "test": 0}
    seen: set[int] = set()
    image_id = first_image_id
    for index in range(args.sequences):
        camera = index + 1
        name = f"SYNTH-{camera:02d}"
        mot = MotWriter(args.out / "mot" / name, name, args.fps, cfg.width, cfg.height)
        test_crops: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
        for sample in generate_sequence(args.seed, cfg, args.frames, camera, pool, name, identities=plan[index],
                                        fps=args.fps, first_image_id=image_id):
            coco.add(sample, f"mot/{name}/img1/{sample.frame:06d}.jpg", f"parts/{name}/{sample.frame:06d}.png",
                     write_image=False)
            mot.add(sample.frame, sample.image, sample.persons)
            counts["persons"] += len(sample.persons)
            counts["frames"] += 1
            image_id += 1
            bar.update(1)
            if sample.frame % args.crop_every:
                continue
            for k in range(min(len(sample.persons), 100)):
                found = _crop(sample, k)
                if found is None:
                    continue
                crop, visible = found
                identity = sample.persons[k].identity
                seen.add(identity)
                if identity in train_ids:
                    market.add(crop, identity, camera, sample.frame, k, "train")
                    counts["train"] += 1
                else:
                    test_crops.setdefault(identity, []).append((visible, sample.frame, k, crop))
        mot.close()
        for identity, crops in test_crops.items():      # best-visible crop is the query, the rest gallery
            best = max(range(len(crops)), key=lambda j: (crops[j][0], -crops[j][1]))
            for j, (_, frame, k, crop) in enumerate(crops):
                split = "query" if j == best else "test"
                market.add(crop, identity, camera, frame, k, split)
                counts[split] += 1
    for identity in sorted(seen):
        market.set_attributes(identity, pool.attributes(identity))
    market.close()
    counts["identities_with_crops"] = len(seen)
    return counts


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.bench:
        n = args.images if args.images > 0 else 200
        if args.width is not None or args.height is not None:
            raise ValueError("--bench measures square images: use --size")
        result = measure_speed(n, args.size, args.seed)
        print(f"synth bench: {result['images']} images {args.size}x{args.size}, {result['persons']} persons, "
              f"{result['seconds']:.2f} s -> {result['images_per_s']:.1f} images/s "
              f"({result['images_per_cpu_s']:.1f} per CPU second, one thread)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    if args.out is None:
        raise ValueError("--out DIR is required (or use --bench)")
    if args.images < 0 or args.sequences < 0 or args.frames < 1 or args.crop_every < 1:
        raise ValueError(f"need --images >= 0, --sequences >= 0, --frames >= 1, --crop-every >= 1; got "
                         f"{args.images}, {args.sequences}, {args.frames}, {args.crop_every}")
    if args.images == 0 and args.sequences == 0:
        raise ValueError("nothing to generate: give --images N and/or --sequences K")
    from hcq_ros.data.formats.coco import CocoWriter

    cv2.setNumThreads(1)
    start = time.perf_counter()
    coco = CocoWriter(args.out)
    total = args.images + args.sequences * args.frames
    summary: dict = {"out": str(args.out), "width": cfg.width, "height": cfg.height, "seed": args.seed}
    with tqdm(total=total, desc="synth", unit="img", disable=args.no_progress) as bar:
        persons = _write_images(args, cfg, coco, bar)
        summary["images"] = args.images
        if args.sequences:
            seq = _write_sequences(args, cfg, coco, bar, first_image_id=args.images + 1)
            persons += seq.pop("persons")
            summary.update(sequences=args.sequences, frames=seq.pop("frames"), market=seq)
    summary["annotations"] = str(coco.close())
    seconds = time.perf_counter() - start
    summary.update(persons=persons, seconds=round(seconds, 3), images_per_s=round(total / seconds, 2),
                   total_images=total)
    print(f"synth: {total} images ({args.images} single, {args.sequences} x {args.frames} frames), "
          f"{persons} persons, {seconds:.1f} s, {total / seconds:.1f} images/s -> {args.out}")
    if "market" in summary:
        m = summary["market"]
        print(f"  market crops: {m['train']} train, {m['query']} query, {m['test']} gallery, "
              f"{m['identities_with_crops']} identities")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0

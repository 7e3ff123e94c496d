"""PersonNet ablation (DESIGN.md §6, after Pfeiffer et al. GCPR 2019) -> ``docs/person_ablation.md``.

    python -m hcq_ros.train.person_ablation --iterations 1500 --out runs/ablation_person --doc docs/person_ablation.md
    python -m hcq_ros.train.person_ablation ... --variants multisource_gn multisource_bn --estimate-only

Variants on ``person_small.yaml`` (SynthHumans identity crops, every target in every batch): single-task baselines
(ReID, attributes, parts, pose only), the multi-task net with a single branch / split output / multi-branch, and
deformable refinement (optional: heatmap offsets). GroupNorm vs BatchNorm is trained multi-source
(``person_small_multisource.yaml``: whole batches from Market-1501 (ReID + attributes), LIP (parts + pose) and MPII
(pose)); without ``--market/--lip/--mpii`` those folders are SynthHumans exports written once by
``write_synth_formats`` with the format writers, so the multi-source path runs without the real datasets.
Every variant is evaluated on the same held-out SynthHumans sequence folder.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from hcq_ros.train.ablation import (AblationSuite, Comparison, Variant, add_common_arguments, command_line,
                                    run_and_report)

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "person_small.yaml"
DEFAULT_MULTISOURCE = CONFIGS / "person_small_multisource.yaml"
METRICS = {"reid_mAP": "ReID mAP", "reid_rank1": "ReID rank-1", "attr_acc": "attribute acc.",
           "parts_mIoU": "parts mIoU", "pose_PCK": "pose PCK@0.5"}
MARKET_CROP = (64, 128)          # (width, height) of Market-1501 crops


@dataclass(frozen=True)
class FormatExport:
    """Size of the SynthHumans export: Market identities x views (crops), LIP single-person images, MPII
    multi-person images; seed: the Market identity pool's seed (must differ from the validation pool's)."""
    market_identities: int = 300
    market_views: int = 8
    lip_images: int = 1500
    mpii_images: int = 500
    seed: int = 4241


def _market_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Market-style crop: the visible box padded by 10 %, resized to 64x128 (uint8 [128, 64, 3])."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    px, py = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    xa, ya = max(0, int(x0 - px)), max(0, int(y0 - py))
    xb, yb = min(width, int(math.ceil(x1 + px))), min(height, int(math.ceil(y1 + py)))
    return cv2.resize(image[ya:yb, xa:xb], MARKET_CROP, interpolation=cv2.INTER_AREA)


def _identity_scene(rng, pool, identity: int, cfg, min_visible: int = 4, attempts: int = 6):
    """(Sample, target index) with the target showing >= ``min_visible`` visible joints, or None."""
    from hcq_ros.data.person_dataset import render_identity_scene

    for _ in range(attempts):
        sample, k = render_identity_scene(rng, pool, identity, cfg)
        if k >= 0 and int((sample.persons[k].keypoints[:, 2] == 2).sum()) >= min_visible:
            return sample, k
    return None


def write_synth_formats(root: Path, spec: FormatExport = FormatExport(), progress: bool = False) -> dict[str, Path]:
    """Write SynthHumans as Market-1501 (``bounding_box_train`` crops + attributes.json), LIP (train split, one
    person per image with its parsing and pose) and MPII (multi-person images, annot/train.json) under ``root``,
    once: a folder with the same ``ready.json`` is reused, one with other settings is an error. Returns
    {"market": dir, "lip": dir, "mpii": dir}."""
    from tqdm import tqdm

    from hcq_ros.data.formats import LipWriter, MarketWriter, MpiiWriter
    from hcq_ros.data.person_dataset import SynthCropConfig
    from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_image

    root = Path(root)
    paths = {name: root / name for name in ("market", "lip", "mpii")}
    wanted = asdict(spec)
    if (root / "ready.json").is_file():
        have = json.loads((root / "ready.json").read_text())
        if have != wanted:
            raise ValueError(f"{root} holds a SynthHumans export with other settings {have} (wanted {wanted}): "
                             "delete it or use another folder")
        return paths
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and has no ready.json: not writing an export into it")
    if min(spec.market_identities, spec.market_views, spec.lip_images, spec.mpii_images) < 1:
        raise ValueError(f"every export size must be >= 1, got {wanted}")
    partial = root.parent / f".{root.name}.partial"      # only ever ours: an interrupted export starts again
    if partial.exists():
        shutil.rmtree(partial)
    bar = tqdm(total=spec.market_identities * spec.market_views + spec.lip_images + spec.mpii_images,
               desc="synth formats", disable=not progress)
    pool = IdentityPool(max(2, spec.market_identities), spec.seed)
    crops = SynthCropConfig(identities=pool.size, pool_seed=spec.seed)
    market = MarketWriter(partial / "market")
    for identity in pool.ids[: spec.market_identities]:
        for view in range(spec.market_views):
            found = _identity_scene(np.random.default_rng([spec.seed, identity, view]), pool, identity, crops)
            if found is not None:
                sample, k = found
                market.add(_market_crop(sample.image, sample.persons[k].box), identity, 1 + view % 6, view + 1,
                           0, "train")
            bar.update(1)
        market.set_attributes(identity, pool.attributes(identity))
    market.close()
    # LIP: one person, close and unoccluded by others (as LIP crops), from another pool than Market's
    lip_pool = IdentityPool(500, spec.seed + 1)
    single = SynthCropConfig(identities=lip_pool.size, pool_seed=spec.seed + 1, person_height=(80.0, 170.0),
                             distractor_prob=0.0)
    with LipWriter(partial / "lip", "train") as lip:
        for i in range(spec.lip_images):
            found = _identity_scene(np.random.default_rng([spec.seed, 1, i]), lip_pool, 1 + i % lip_pool.size,
                                    single)
            if found is not None:
                lip.add(found[0], f"{i + 1:06d}", person=found[1])
            bar.update(1)
    scene = SceneConfig(width=320, height=320, min_people=1, max_people=6, min_person_height=40)
    with MpiiWriter(partial / "mpii") as mpii:
        for i in range(spec.mpii_images):
            sample = generate_image(np.random.default_rng([spec.seed, 2, i]), scene, image_id=i + 1)
            mpii.add(sample, f"{i + 1:06d}.jpg")
            bar.update(1)
    bar.close()
    (partial / "ready.json").write_text(json.dumps(wanted))
    if root.exists():
        root.rmdir()                                     # empty (checked above)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, root)
    return paths


def build_variants(sources: dict[str, Path], multisource_config: Path = DEFAULT_MULTISOURCE) -> list[Variant]:
    """Every variant; the multi-source ones read Market / LIP / MPII from ``sources``."""
    paths = tuple(f"data.sources.{name}.path={json.dumps(str(Path(p).resolve()))}" for name, p in sources.items())
    solo = "Single-task baseline: only the {} head is built and trained (same data, same budget)."
    return [
        Variant("reid_only", "ReID only", ("model.overrides.tasks=[reid]",), solo.format("ReID")),
        Variant("attributes_only", "attributes only", ("model.overrides.tasks=[attributes]",),
                solo.format("attribute")),
        Variant("parts_only", "parts only", ("model.overrides.tasks=[parts]",), solo.format("part segmentation")),
        Variant("pose_only", "pose only", ("model.overrides.tasks=[pose]",), solo.format("pose")),
        Variant("single_branch", "multi-task, single branch", ("model.overrides.branching=single_branch",),
                "Every head reads the same last-stage map (the default PersonNet)."),
        Variant("split_output", "multi-task, split output", ("model.overrides.branching=split_output",),
                "The last stage's output channels are split: a quarter for pose, the rest for ReID / attributes / "
                "parts."),
        Variant("multi_branch", "multi-task, multi-branch", ("model.overrides.branching=multi_branch",),
                "Every task gets its own copy of the last stage."),
        Variant("deformable", "+ deformable refinement", ("model.overrides.deform_stages=1",
                                                          "model.overrides.deform_pose_head=true"),
                "Single branch with deformable 3x3 convolutions in the last stage and in the pose head."),
        Variant("heatmap_offsets", "+ heatmap offsets", ("model.overrides.heatmap_offsets=true",),
                "Single branch with sub-cell heatmap offset refinement."),
        Variant("multisource_gn", "multi-source, GroupNorm", ("model.overrides.norm=gn", *paths),
                "Market + LIP + MPII batches interleaved, GroupNorm everywhere.", multisource_config),
        Variant("multisource_bn", "multi-source, BatchNorm", ("model.overrides.norm=bn", *paths),
                "The same multi-source training with BatchNorm instead of GroupNorm.", multisource_config),
    ]


DEFAULT_VARIANTS = ("reid_only", "attributes_only", "parts_only", "pose_only", "single_branch", "split_output",
                    "multi_branch", "deformable", "multisource_gn", "multisource_bn")
MULTISOURCE = ("multisource_gn", "multisource_bn")

COMPARISONS = [
    *(Comparison(m, "multisource_gn", "multisource_bn", None, "GroupNorm beats BatchNorm in multi-dataset training.")
      for m in METRICS),
    Comparison("reid_mAP", "split_output", "single_branch", None,
               "the split output removes most of the pose/ReID interference."),
    Comparison("pose_PCK", "split_output", "single_branch", None,
               "the split output removes most of the pose/ReID interference."),
    Comparison("reid_mAP", "single_branch", "reid_only", None, "multi-task ReID >= single-task ReID."),
    Comparison("reid_rank1", "single_branch", "reid_only", None, "multi-task ReID >= single-task ReID."),
    Comparison("attr_acc", "single_branch", "attributes_only"),
    Comparison("parts_mIoU", "single_branch", "parts_only"),
    Comparison("pose_PCK", "single_branch", "pose_only"),
    *(Comparison(m, "multi_branch", "single_branch") for m in METRICS),
    Comparison("pose_PCK", "deformable", "single_branch"),
    Comparison("parts_mIoU", "deformable", "single_branch"),
    Comparison("pose_PCK", "heatmap_offsets", "single_branch"),
    # Multi-source vs single-source (same network): the sources are the Market / LIP / MPII-format exports of
    # SynthHumans, each labelling only some tasks, so every task sees fewer labels per batch.
    *(Comparison(m, "multisource_gn", "single_branch") for m in METRICS),
]


def interference_notes(done: dict[str, dict]) -> list[str]:
    """How much of the single-task -> single-branch drop the split output wins back, per task (computed)."""
    lines = []
    for metric, solo in (("reid_mAP", "reid_only"), ("pose_PCK", "pose_only")):
        values = [(done.get(n) or {}).get("metrics", {}).get(metric) for n in (solo, "single_branch", "split_output")]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        alone, shared, split = values
        gap = alone - shared
        if gap <= 0:
            lines.append(f"{METRICS[metric]}: no interference to remove here: the single-branch multi-task net is "
                         f"{100 * -gap:+.1f} points vs single-task; split output {100 * (split - shared):+.1f}.")
        else:
            won = (split - shared) / gap
            lines.append(f"{METRICS[metric]}: sharing the last stage costs {100 * gap:.1f} points vs single-task; "
                         f"the split output wins back {100 * won:.0f}% of that "
                         f"({'most of it, as the paper' if won > 0.5 else 'less than half, unlike the paper'}).")
    return lines


def build_suite(config: Path = DEFAULT_CONFIG, multisource_config: Path = DEFAULT_MULTISOURCE,
                sources: dict[str, Path] | None = None) -> AblationSuite:
    sources = sources or {name: Path("runs/ablation_person/_formats") / name for name in ("market", "lip", "mpii")}
    return AblationSuite(
        title="PersonNet ablation: multi-task, branching, normalisation",
        module="hcq_ros.train.person_ablation", base_config=Path(config),
        variants=build_variants(sources, Path(multisource_config)), default_variants=DEFAULT_VARIANTS,
        metrics=METRICS, comparisons=COMPARISONS, shared_val=lambda c: dict((c.get("data") or {}).get("val") or {}),
        budget_keys={"preset": "model.preset", "single-source data": "data.sources.synth.synth",
                     "augmentation": "data.augment", "loss weights": "loss.weights"},
        intro="Every variant trains with `hcq-ros train` (same schedule, seed and number of iterations) and is "
              "scored on one held-out SynthHumans sequence folder (identities never seen in training): ReID "
              "mAP / rank-1 across cameras, attribute accuracy, part mIoU and PCK@0.5 of the torso size. "
              "Multi-source variants read Market-1501 / LIP / MPII folders: " +
              ", ".join(f"{k} `{v}`" for k, v in sources.items()) + ".",
        paper_setup="The paper trains a ResNet-50 at 256x128 on the real Market-1501, LIP, MPII (and more) datasets; "
                    "these runs use the `small` 128x64 profile on SynthHumans and its exports for the budget above, "
                    "so only the direction of each effect is compared.",
        notes=interference_notes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, build_variants({}), DEFAULT_VARIANTS, DEFAULT_CONFIG, Path("runs/ablation_person"),
                         Path("docs/person_ablation.md"))
    parser.add_argument("--multisource-config", type=Path, default=DEFAULT_MULTISOURCE,
                        help="base YAML of the multi-source variants")
    for name in ("market", "lip", "mpii"):
        parser.add_argument(f"--{name}", type=Path, default=None,
                            help=f"real {name} folder for the multi-source variants (default: SynthHumans export)")
    parser.add_argument("--formats", type=Path, default=None, help="SynthHumans export folder (default OUT/_formats)")
    spec = FormatExport()
    parser.add_argument("--market-identities", type=int, default=spec.market_identities)
    parser.add_argument("--market-views", type=int, default=spec.market_views, help="crops per Market identity")
    parser.add_argument("--lip-images", type=int, default=spec.lip_images)
    parser.add_argument("--mpii-images", type=int, default=spec.mpii_images)


def run(args: argparse.Namespace) -> int:
    formats = args.formats or args.out / "_formats"
    sources = {name: getattr(args, name) or formats / name for name in ("market", "lip", "mpii")}
    suite = build_suite(args.config, args.multisource_config, sources)
    chosen = {v.name for v in suite.select(args.variants)}
    exported = [n for n in ("market", "lip", "mpii") if getattr(args, n) is None]
    spec = FormatExport(args.market_identities, args.market_views, args.lip_images, args.mpii_images)
    if chosen & set(MULTISOURCE) and exported and not args.report_only:
        from hcq_ros.train.cli import load_config
        val_seed = (load_config(args.multisource_config, args.set).get("data", {}).get("val") or {}).get("seed")
        if val_seed == spec.seed:
            raise ValueError(f"data.val.seed {val_seed} equals the export's identity pool seed: not held out")
        print(f"SynthHumans -> Market/LIP/MPII under {formats} ({', '.join(exported)} used)")
        write_synth_formats(formats, spec, progress=not args.no_progress)
    extra = [] if Path(args.config).resolve() == DEFAULT_CONFIG else ["--config", str(args.config)]
    if Path(args.multisource_config).resolve() != DEFAULT_MULTISOURCE:
        extra += ["--multisource-config", str(args.multisource_config)]
    extra += [opt for n in ("market", "lip", "mpii") if getattr(args, n) for opt in (f"--{n}", str(getattr(args, n)))]
    if args.formats:
        extra += ["--formats", str(args.formats)]
    if spec != FormatExport():
        extra += ["--market-identities", str(spec.market_identities), "--market-views", str(spec.market_views),
                  "--lip-images", str(spec.lip_images), "--mpii-images", str(spec.mpii_images)]
    return run_and_report(suite, args, command_line(suite.module, args, extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcq_ros.train.person_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

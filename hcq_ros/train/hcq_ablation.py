"""HCQNet ablation (DESIGN.md §5; the paper's Table 1 and Table 6) -> ``docs/ablation.md``.

    python -m hcq_ros.train.hcq_ablation --iterations 600 --out runs/ablation_hcq --doc docs/ablation.md
    python -m hcq_ros.train.hcq_ablation ... --variants all            (+ BaseNet-DS and the L1 option)
    python -m hcq_ros.train.hcq_ablation ... --estimate-only           (time per variant, then stop)

Variants (``HCQConfig`` presets on ``hcq_ros/train/configs/hcq_small.yaml``): BaseNet-DPS, HCQNet-alpha,
HCQNet-beta, HCQNet, HCQNet with image-space joints; optional BaseNet-DS (det + seg only) and HCQNet with L1
instead of RLE box/pose losses. Rerunning the same command resumes (finished variants are skipped).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hcq_ros.train.ablation import (AblationSuite, Comparison, Variant, add_common_arguments, command_line,
                                   run_and_report)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "hcq_small.yaml"
METRICS = {"bbox_AP": "det AP", "segm_AP": "seg AP", "keypoints_AP": "pose AP",
           "keypoints_AP_nosmall": "pose AP (no small)", "keypoints_err": "joint error"}
# Keypoints AP stays near 0 at CPU budgets (a joint must land within a few percent of the box scale, OKS), so the
# pose claims are also read on the joint error (hcq_ros/evaluation/pose_error.py: mean distance / box scale of
# matched medium + large people, x100 in the report; lower is better).
LOWER_IS_BETTER = ("keypoints_err",)

# The small profile turns on pose_joint_features (our addition); the paper's rows are run without it.
PAPER_POSE_HEAD = "model.overrides.pose_joint_features=false"

VARIANTS = [
    Variant("basenet_ds", "BaseNet-DS", ("model.preset=basenet_ds",),
            "Detection + segmentation only; queries carry a box reference, no joints."),
    Variant("basenet_dps", "BaseNet-DPS", ("model.preset=basenet_dps",),
            "Detection + pose + segmentation without human-centric queries: joints regressed in image space "
            "from the box-only query."),
    Variant("hcqnet_alpha", "HCQNet-α", ("model.preset=hcqnet_alpha",),
            "Keypoints in the queries (positional query, refined per layer); heads read E only, attention samples "
            "offsets only."),
    Variant("hcqnet_beta", "HCQNet-β", ("model.preset=hcqnet_beta",),
            "HCQNet-α + heads read Cat(E, K)."),
    Variant("hcqnet", "HCQNet", ("model.preset=hcqnet", PAPER_POSE_HEAD),
            "HCQNet-β + the joints join the deformable-attention sampling set (full model, canonical joints)."),
    Variant("hcqnet_image_space", "HCQNet image-space", ("model.preset=hcqnet_image_space", PAPER_POSE_HEAD),
            "Full HCQNet with joints kept in normalised image space instead of the box's canonical space."),
    Variant("hcqnet_joint_features", "HCQNet + joint features", ("model.preset=hcqnet",
                                                                 "model.overrides.pose_joint_features=true"),
            "Full HCQNet + per-joint refinement from the features at each joint (our addition; the shipped form)."),
    Variant("hcqnet_l1", "HCQNet L1", ("model.preset=hcqnet", PAPER_POSE_HEAD, "model.overrides.box_loss=l1",
                                       "model.overrides.pose_loss=l1"),
            "Full HCQNet with L1 box and pose losses instead of RLE."),
]
DEFAULT_VARIANTS = ("basenet_dps", "hcqnet_alpha", "hcqnet_beta", "hcqnet", "hcqnet_image_space",
                    "hcqnet_joint_features")

# DESIGN.md §5: the paper's numbers (COCO person val, Swin-B), AP in percent.
COMPARISONS = [
    Comparison("bbox_AP", "hcqnet", "basenet_dps", (56.1, 53.5), "HCQNet beats BaseNet-DPS on detection."),
    Comparison("keypoints_AP", "hcqnet", "basenet_dps", (64.4, 55.7), "HCQNet beats BaseNet-DPS on pose."),
    Comparison("segm_AP", "hcqnet", "basenet_dps", (51.7, 49.3), "HCQNet beats BaseNet-DPS on segmentation."),
    Comparison("keypoints_AP", "hcqnet", "hcqnet_image_space", (64.4, 55.3),
               "canonical (box-relative) joints beat image-space joints."),
    Comparison("keypoints_err", "hcqnet", "basenet_dps", None,
               "HCQNet beats BaseNet-DPS on pose (read here on the joint error)."),
    Comparison("keypoints_err", "hcqnet", "hcqnet_image_space", None,
               "canonical joints beat image-space joints (read here on the joint error)."),
    Comparison("keypoints_AP", "hcqnet", "basenet_dps", None,
               "HCQNet after 100k iterations beats BaseNet-DPS after 300k (a third of the budget).", better_at=1 / 3),
    Comparison("keypoints_AP", "hcqnet_beta", "hcqnet_alpha"),
    Comparison("keypoints_AP", "hcqnet", "hcqnet_beta"),
    Comparison("keypoints_AP", "hcqnet", "hcqnet_l1"),
    Comparison("keypoints_AP", "hcqnet_joint_features", "hcqnet"),
    Comparison("keypoints_err", "hcqnet_beta", "hcqnet_alpha"),
    Comparison("keypoints_err", "hcqnet", "hcqnet_beta"),
    Comparison("keypoints_err", "hcqnet_joint_features", "hcqnet"),
    Comparison("bbox_AP", "basenet_dps", "basenet_ds"),
    Comparison("segm_AP", "basenet_dps", "basenet_ds"),
]


def template_notes(done: dict[str, dict]) -> list[str]:
    """Per finished variant: its joint error against the template pose placed in its own boxes (did the pose head
    learn articulation, or only where the box is?)."""
    parts = []
    for name, r in done.items():
        m = r.get("metrics") or {}
        err, tmpl = m.get("keypoints_err"), m.get("keypoints_err_template")
        if isinstance(err, (int, float)) and isinstance(tmpl, (int, float)) and tmpl > 0:
            label = next((v.label for v in VARIANTS if v.name == name), name)
            parts.append(f"{label} {100 * err:.1f} vs {100 * tmpl:.1f} ({100 * (err / tmpl - 1):+.0f}%)")
    if not parts:
        return []
    return ["Joint error against the template pose placed in the same predicted boxes (x100 box scales; a pose "
            "head that learnt nothing scores 0%): " + "; ".join(parts) + "."]


def _val_settings(config: dict) -> dict:
    data = config.get("data") or {}
    return {k: data.get(k) for k in ("val", "val_images", "val_seed", "val_size", "scene")}


def build_suite(config: Path = DEFAULT_CONFIG) -> AblationSuite:
    return AblationSuite(
        title="HCQNet ablation: human-centric queries vs BaseNet",
        module="hcq_ros.train.hcq_ablation", base_config=Path(config), variants=VARIANTS,
        default_variants=DEFAULT_VARIANTS, metrics=METRICS, comparisons=COMPARISONS, shared_val=_val_settings,
        notes=template_notes, lower_is_better=LOWER_IS_BETTER,
        budget_keys={"batch": "data.batch_size", "input": "data.image_size", "profile": "model.profile",
                     "training data": "data.train", "validation": "data.val",
                     "validation images": "data.val_images"},
        intro="Every variant is the same training run (`hcq-ros train`, same data stream, schedule and seed) with "
              "one HCQConfig preset changed; COCO-style AP (pycocotools) on a fixed held-out SynthHumans "
              "validation set (unless `data.val` points at COCO).",
        paper_setup="The paper trains on COCO person with an ImageNet-pretrained Swin-B backbone for 100k-300k "
                    "iterations; these runs use the `small` CPU profile on SynthHumans for the budget above, so "
                    "absolute values are not comparable and only the ordering of the variants is checked. Three "
                    "differences matter for reading the ordering: (1) the budget is about 1% of the paper's, so "
                    "the comparison is about early training, where the paper's convergence claim (HCQNet learns "
                    "faster) is the relevant one; (2) when the runs start from a pretrained backbone "
                    "(`train.init_backbone`), ours is the shipped HCQNet's, trained with the full HCQNet head, not "
                    "an ImageNet one, which may favour the HCQNet variants; (3) keypoints AP stays near 0 at this "
                    "budget (a joint must land within a few percent of the box scale), so the pose claims are also "
                    "read on the joint error, which still separates the variants.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, VARIANTS, DEFAULT_VARIANTS, DEFAULT_CONFIG, Path("runs/ablation_hcq"),
                         Path("docs/ablation.md"))


def run(args: argparse.Namespace) -> int:
    suite = build_suite(args.config)
    extra = [] if Path(args.config).resolve() == DEFAULT_CONFIG else ["--config", str(args.config)]
    return run_and_report(suite, args, command_line(suite.module, args, extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcq_ros.train.hcq_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

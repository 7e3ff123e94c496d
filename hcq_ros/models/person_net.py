"""PersonNet: the multi-task person-crop network (DESIGN.md §6, after Pfeiffer et al., "Visual Person
Understanding through Multi-Task and Multi-Dataset Learning", GCPR 2019).

A GroupNorm ResNet (last stage stride 1, so the last map is 1/16 of the crop) feeds four heads
(``hcq_ros.models.person_heads``): ReID embedding (global max pool), attributes (BN + ReLU + FC per attribute),
pose (heatmaps -> soft-argmax, crop-normalised xy) and part segmentation (FPN semantic branch, full resolution).

Variants for the ablation (``PersonNetConfig``; one code path, switches):
- ``branching="single_branch"``: every head reads the same last-stage map (default);
- ``"split_output"``: the last stage's output channels are split: the first ``pose_channels`` (a multiple of the
  GroupNorm group size, so normalisation does not mix the halves) go to the pose head only, the rest to
  ReID / attributes / parts only. The last block's final conv + norm + shortcut rows of each half then get only
  their own tasks' gradients;
- ``"multi_branch"``: the shared trunk ends at res4 and every task gets its own copy of the last stage;
- ``norm`` "gn" | "bn" (the whole net), ``deform_stages`` (deformable 3x3s in the last n stages),
  ``deform_pose_head``, ``heatmap_offsets``, ``pose_stride``;
- ``tasks``: any non-empty subset of TASKS; heads of disabled tasks are not built and give no outputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from hcq_ros.models.flops import flops_by_group

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_KEYPOINTS, NUM_PARTS
from hcq_ros.models.backbone import LEVELS, NORMS, PROFILES as BACKBONE_PROFILES, build_backbone, group_norm_groups
from hcq_ros.models.person_heads import AttributeHead, PartsHead, PoseHead, ReIDHead, global_max_pool

TASKS = ("reid", "attributes", "parts", "pose")
BRANCHINGS = ("single_branch", "split_output", "multi_branch")


@dataclass
class PersonNetConfig:
    """Everything that defines a PersonNet (all fields are architecture; stored in checkpoints).

    profile: backbone "small" | "base". norm: "gn" | "bn". tasks: subset of TASKS. branching: see module doc.
    pose_fraction: share of the last stage's channels given to pose with split_output (rounded to whole groups).
    deform_stages: 0..4 deformable last stages. deform_pose_head: DeformConv2d in the pose head.
    heatmap_offsets: predict sub-cell offsets. pose_stride: 4 | 8 | 16 heatmap resolution. pose_dim: pose head width.
    embedding_dim: ReID embedding size D. bn_neck: the embedding is taken after a BatchNorm (BNNeck).
    num_identities: identity classifier size for the ID loss (0 = no classifier).
    fpn_dim, seg_dim: part branch widths (FPN, semantic head). crop_size: (H, W) the net is deployed at
    (H, W multiples of 16; used by export and ``flops``; the net runs at any multiple of 16).
    """

    profile: str = "small"
    norm: str = "gn"
    tasks: tuple[str, ...] = TASKS
    branching: str = "single_branch"
    pose_fraction: float = 0.25
    deform_stages: int = 0
    deform_pose_head: bool = False
    heatmap_offsets: bool = False
    pose_stride: int = 8
    pose_dim: int = 64
    embedding_dim: int = 256
    bn_neck: bool = True
    num_identities: int = 0
    fpn_dim: int = 64
    seg_dim: int = 32
    crop_size: tuple[int, int] = (128, 64)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        choices = {"profile": tuple(BACKBONE_PROFILES), "norm": NORMS, "branching": BRANCHINGS,
                   "pose_stride": PoseHead.STRIDES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"PersonNetConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        tasks = tuple(self.tasks)
        if not tasks or len(set(tasks)) != len(tasks) or any(t not in TASKS for t in tasks):
            raise ValueError(f"PersonNetConfig.tasks must be a non-empty subset of {TASKS} without repeats, "
                             f"got {self.tasks!r}")
        if self.branching == "split_output" and ("pose" not in tasks or len(tasks) < 2):
            raise ValueError("PersonNetConfig.branching='split_output' needs 'pose' and at least one other task")
        if not 0.0 < self.pose_fraction < 1.0:
            raise ValueError(f"PersonNetConfig.pose_fraction must be in (0, 1), got {self.pose_fraction}")
        if not 0 <= self.deform_stages <= 4:
            raise ValueError(f"PersonNetConfig.deform_stages must be in 0..4, got {self.deform_stages}")
        for name in ("pose_dim", "embedding_dim", "fpn_dim", "seg_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PersonNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_identities < 0:
            raise ValueError(f"PersonNetConfig.num_identities must be >= 0, got {self.num_identities}")
        if len(self.crop_size) != 2 or any(int(s) <= 0 or int(s) % 16 for s in self.crop_size):
            raise ValueError(f"PersonNetConfig.crop_size must be (H, W), positive multiples of 16, "
                             f"got {self.crop_size!r}")

    def to_dict(self) -> dict:
        """Plain types only (lists for tuples), so that it survives JSON / YAML."""
        data = asdict(self)
        data["tasks"], data["crop_size"] = list(self.tasks), list(self.crop_size)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PersonNetConfig":
        """Inverse of to_dict; unknown keys -> ValueError naming them."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown PersonNetConfig keys {unknown}")
        data = dict(data)
        for key in ("tasks", "crop_size"):
            if key in data:
                data[key] = tuple(data[key])
        config = cls(**data)
        config.validate()
        return config

    @classmethod
    def preset(cls, name: str = "small", **overrides) -> "PersonNetConfig":
        """PRESETS[name] ("small" | "base"), then keyword overrides (any field)."""
        if name not in PRESETS:
            raise ValueError(f"unknown PersonNet preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# small: CPU real time at 128x64 crops; base: ResNet-50 at the usual ReID crop size 256x128 (as the paper).
PRESETS: dict[str, dict] = {
    "small": dict(profile="small", pose_dim=64, embedding_dim=256, fpn_dim=64, seg_dim=32, crop_size=(128, 64)),
    "base": dict(profile="base", pose_dim=256, embedding_dim=256, fpn_dim=256, seg_dim=128, crop_size=(256, 128)),
}


def split_pose_channels(channels: int, fraction: float, norm: str) -> int:
    """Channels of the last stage given to pose with split_output: ``fraction`` of ``channels`` rounded to whole
    GroupNorm groups (at least one group each side), so that no group mixes pose and non-pose channels."""
    group = channels // group_norm_groups(channels) if norm == "gn" else 1
    n_groups = channels // group
    return min(max(round(fraction * n_groups), 1), n_groups - 1) * group


def _fresh_last_stage(config: PersonNetConfig) -> nn.Module:
    """A newly initialised res5 stage (stride 1) of the configured backbone, for one multi_branch branch."""
    full = build_backbone(config.profile, norm=config.norm, last_stride=1, deform_stages=config.deform_stages)
    return full.stages[3]


class PersonNet(nn.Module):
    """Backbone -> (split / branches) -> task heads. See the module docstring and ``PersonNetConfig``.

    forward(crops [B, 3, H, W] float normalised (``image_to_tensor`` convention), H, W multiples of 16; B may be
    0) -> dict, keys only for enabled tasks:
        reid: ``embedding [B, D]`` L2-normalised; training outputs also ``reid_features [B, D]`` (triplet loss
            input) and ``id_logits [B, num_identities]`` (with a classifier);
        attributes: ``attr_logits`` list of ``[B, len(ATTRIBUTES[name])]`` in ATTRIBUTE_NAMES order;
        pose: ``keypoints [B, 17, 2]`` crop-normalised xy in [0, 1], ``keypoint_conf [B, 17]`` in (0, 1];
            training outputs also ``heatmaps [B, 17, H/s, W/s]`` logits;
        parts: ``part_logits [B, 15, H, W]`` (PART_NAMES order).
    Training outputs are produced when ``with_train_outputs`` is True (default: in training mode).
    Empty batches run through every module here, but an ONNX export of the GroupNorm net cannot run B = 0 in
    onnxruntime (its GroupNorm Reshape to [0, G, -1] cannot infer -1): runtimes skip the call for no crops.
    """

    def __init__(self, config: PersonNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        multi = c.branching == "multi_branch"
        self.backbone = build_backbone(c.profile, norm=c.norm, last_stride=1, deform_stages=c.deform_stages,
                                       out_features=LEVELS[:3] if multi else LEVELS)
        widths = BACKBONE_PROFILES[c.profile].widths
        last = widths[3]
        self.branches = nn.ModuleDict({t: _fresh_last_stage(c) for t in c.tasks}) if multi else None
        self.pose_channels = split_pose_channels(last, c.pose_fraction, c.norm) if c.branching == "split_output" else 0
        pose_in = self.pose_channels or last
        rest_in = last - self.pose_channels

        self.reid_head = (ReIDHead(rest_in, c.embedding_dim, c.bn_neck, c.num_identities)
                          if "reid" in c.tasks else None)
        self.attribute_head = (AttributeHead(rest_in, [len(ATTRIBUTES[n]) for n in ATTRIBUTE_NAMES])
                               if "attributes" in c.tasks else None)
        self.pose_head = (PoseHead(pose_in, {"res3": widths[1], "res2": widths[0]}, c.pose_dim, c.pose_stride, c.norm,
                                   c.deform_pose_head, c.heatmap_offsets, NUM_KEYPOINTS)
                          if "pose" in c.tasks else None)
        self.parts_head = None
        if "parts" in c.tasks:
            in_channels = {"res2": widths[0], "res3": widths[1], "res4": widths[2], "res5": rest_in}
            strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 16}
            self.parts_head = PartsHead(in_channels, strides, c.fpn_dim, c.seg_dim, NUM_PARTS, c.norm)

    def check_crops(self, crops: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong unless crops is a float [B, 3, H, W] (B >= 0, H, W % 16 == 0)
        of the model's parameter dtype."""
        if not isinstance(crops, torch.Tensor):
            raise ValueError(f"crops must be a torch.Tensor [B, 3, H, W], got {type(crops).__name__}")
        if crops.dim() != 4:
            raise ValueError(f"crops must have rank 4 [B, 3, H, W], got rank {crops.dim()} {list(crops.shape)}")
        if crops.shape[1] != 3:
            raise ValueError(f"crops must have 3 channels [B, 3, H, W], got {crops.shape[1]} channels")
        dtype = next(self.parameters()).dtype
        if not crops.is_floating_point() or crops.dtype != dtype:
            raise ValueError(f"crops dtype must be {dtype} (normalised float, the model's dtype), got {crops.dtype}")
        h, w = crops.shape[-2:]
        if h % 16 or w % 16 or h == 0 or w == 0:
            raise ValueError(f"crop height and width must be positive multiples of 16, got H={h}, W={w}")

    def task_features(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backbone levels -> the 1/16 map each enabled task reads ({task: [B, C_task, H/16, W/16]})."""
        if self.branches is not None:
            return {t: branch(levels["res4"]) for t, branch in self.branches.items()}
        last = levels["res5"]
        if self.pose_channels:
            pose, rest = last[:, :self.pose_channels], last[:, self.pose_channels:]
            return {t: pose if t == "pose" else rest for t in self.config.tasks}
        return {t: last for t in self.config.tasks}

    def forward(self, crops: torch.Tensor, with_train_outputs: bool | None = None) -> dict:
        self.check_crops(crops)
        train_outputs = self.training if with_train_outputs is None else with_train_outputs
        levels = self.backbone(crops)
        features = self.task_features(levels)
        pooled_cache: dict[int, torch.Tensor] = {}  # ReID and attributes share one pooling unless branched

        def pooled(task: str) -> torch.Tensor:
            key = id(features[task])
            if key not in pooled_cache:
                pooled_cache[key] = global_max_pool(features[task])
            return pooled_cache[key]

        out: dict = {}
        if self.reid_head is not None:
            out.update(self.reid_head(pooled("reid"), train_outputs))
        if self.attribute_head is not None:
            out["attr_logits"] = self.attribute_head(pooled("attributes"))
        if self.pose_head is not None:
            out.update(self.pose_head(features["pose"], levels, train_outputs))
        if self.parts_head is not None:
            pyramid = {"res2": levels["res2"], "res3": levels["res3"], "res4": levels["res4"],
                       "res5": features["parts"]}
            out["part_logits"] = self.parts_head(pyramid, (crops.shape[-2], crops.shape[-1]))
        return out

    def output_names(self) -> list[str]:
        """Names of the inference outputs in the order ``forward`` (eval mode) returns them once flattened, as an
        ONNX export lists them: embedding, attr_<name>..., keypoints, keypoint_conf, part_logits (enabled only)."""
        names = []
        if self.reid_head is not None:
            names.append("embedding")
        if self.attribute_head is not None:
            names += [f"attr_{n}" for n in ATTRIBUTE_NAMES]
        if self.pose_head is not None:
            names += ["keypoints", "keypoint_conf"]
        if self.parts_head is not None:
            names.append("part_logits")
        return names


def decode_attributes(attr_logits: list[torch.Tensor]) -> list[dict[str, tuple[str, float]]]:
    """``attr_logits`` (list of [B, n_values], ATTRIBUTE_NAMES order) -> per crop {name: (value, probability)}."""
    if len(attr_logits) != len(ATTRIBUTE_NAMES):
        raise ValueError(f"attr_logits must hold {len(ATTRIBUTE_NAMES)} tensors, got {len(attr_logits)}")
    batch = attr_logits[0].shape[0] if attr_logits else 0
    result: list[dict[str, tuple[str, float]]] = [{} for _ in range(batch)]
    for name, logits in zip(ATTRIBUTE_NAMES, attr_logits):
        prob, index = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
        for i in range(batch):
            result[i][name] = (ATTRIBUTES[name][int(index[i])], float(prob[i]))
    return result


CHECKPOINT_CONFIG_KEY = "person_config"


def save_checkpoint(path: str | Path, model: PersonNet, **extra) -> None:
    """Write {"person_config": config dict, "model": state_dict, **extra} with torch.save."""
    torch.save({CHECKPOINT_CONFIG_KEY: model.config.to_dict(), "model": model.state_dict(), **extra}, str(path))


def load_checkpoint(path: str | Path, requested: PersonNetConfig | None = None,
                    map_location: str | torch.device = "cpu") -> PersonNet:
    """Build the PersonNet stored in a checkpoint and load its weights.

    requested: the config the caller expects; a ValueError names every field that differs from the stored one.
    Missing file -> FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PersonNet checkpoint not found: {path}")
    ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or CHECKPOINT_CONFIG_KEY not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a PersonNet checkpoint (needs keys {CHECKPOINT_CONFIG_KEY!r}, 'model')")
    stored = PersonNetConfig.from_dict(ckpt[CHECKPOINT_CONFIG_KEY])
    if requested is not None:
        theirs, ours = stored.to_dict(), requested.to_dict()
        diffs = [f"{k}: {theirs[k]!r} != {ours[k]!r}" for k in theirs if theirs[k] != ours[k]]
        if diffs:
            raise ValueError(f"checkpoint {path} does not match the requested config: " + "; ".join(diffs))
    model = PersonNet(stored)
    model.load_state_dict(ckpt["model"])
    return model


FLOP_GROUPS = ("backbone", "branches", "reid_head", "attribute_head", "pose_head", "parts_head")


def flops(model: PersonNet, crop_size: tuple[int, int] | None = None, batch: int = 1) -> dict[str, int]:
    """FLOPs of one inference forward pass on ``batch`` crops of crop_size (H, W; default config.crop_size), per
    part (FLOP_GROUPS that exist) plus "total".

    Counted with torch.utils.flop_counter.FlopCounterMode (convolutions, matmuls) plus a bilinear grid_sample
    formula for deformable convs; element-wise ops, norms and pooling are not counted. Runs with autograd on
    (the counter's module tracker needs it) and restores the model's train/eval mode.
    """
    h, w = crop_size if crop_size is not None else model.config.crop_size
    param = next(model.parameters())
    crops = torch.zeros(batch, 3, h, w, dtype=param.dtype, device=param.device)
    return flops_by_group(model, crops, FLOP_GROUPS)

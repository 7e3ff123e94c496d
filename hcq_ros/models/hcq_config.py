"""HCQNet's configuration: ``HCQConfig`` (architecture, ablation switches, loss settings; stored in checkpoints),
the size ``PROFILES`` and the ablation ``PRESETS`` of DESIGN.md §5. The model itself is ``hcq_ros.models.hcq``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

TASKS = ("det_seg", "det_pose_seg")
POSE_SPACES = ("canonical", "image")
REGRESSION_LOSSES = ("rle", "l1")
CLASS_LOSSES = ("bce", "focal")
QUERY_INITS = ("learned", "encoder")


@dataclass
class HCQConfig:
    """Everything that defines an HCQNet and its training losses. Build one with ``HCQConfig.preset``.

    Architecture: profile ("small" | "base" backbone), backbone_norm, d_model, mask_dim, num_queries,
    query_init ("learned": each query's reference box is a parameter, as the paper; "encoder": the K best
    proposals of the encoder memory, see ``query_selection``),
    enc_layers, enc_query_levels (how many of the coarsest levels are encoder queries; see pixel_decoder),
    dec_layers, n_heads, ffn_dim, dropout, enc_points (per head per level, encoder),
    dec_offset_points (offset points per head per level, decoder; each head also samples ceil(17 / n_heads)
    joints at every level when keypoints_in_attention is on).
    Ablation switches (see PRESETS): tasks, query_keypoints, keypoints_in_heads, keypoints_in_attention,
    pose_space. box_loss / pose_loss "rle" also give the model its sigma outputs. pose_joint_features: every
    layer also corrects each joint from the mask features read at its current estimate (joint_features.py;
    needs query_keypoints; not in the paper, on in the small profile).
    Losses (not architecture; ignored by checkpoint comparison): class_loss, *_weight, no_object_weight
    (weight of unmatched queries in the BCE class loss), mask_points (points sampled per mask),
    box_l1_weight / pose_l1_weight (used instead of box_weight / pose_weight with the "l1" option),
    giou_weight (0 = off), match_* (matcher cost weights; class + mask by default, box L1 optional),
    enc_repeats (query_init "encoder": each person is matched to this many proposals).
    """

    profile: str = "small"
    backbone_norm: str = "gn"
    d_model: int = 128
    mask_dim: int = 64
    num_queries: int = 50
    query_init: str = "learned"
    enc_layers: int = 3
    enc_query_levels: int = 3
    dec_layers: int = 3
    n_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.0
    enc_points: int = 4
    dec_offset_points: int = 4
    tasks: str = "det_pose_seg"
    query_keypoints: bool = True
    keypoints_in_heads: bool = True
    keypoints_in_attention: bool = True
    pose_space: str = "canonical"
    pose_joint_features: bool = False
    box_loss: str = "rle"
    pose_loss: str = "rle"
    class_loss: str = "bce"
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    box_weight: float = 0.2
    pose_weight: float = 0.2
    box_l1_weight: float = 5.0
    pose_l1_weight: float = 5.0
    giou_weight: float = 0.0
    no_object_weight: float = 0.1
    mask_points: int = 12544
    match_class_weight: float = 2.0
    match_mask_weight: float = 5.0
    match_dice_weight: float = 5.0
    match_box_weight: float = 0.0
    enc_repeats: int = 4

    LOSS_FIELDS = ("class_loss", "class_weight", "mask_weight", "dice_weight", "box_weight", "pose_weight",
                   "box_l1_weight", "pose_l1_weight", "giou_weight", "no_object_weight", "mask_points",
                   "match_class_weight", "match_mask_weight", "match_dice_weight", "match_box_weight", "enc_repeats")

    @property
    def with_pose(self) -> bool:
        return self.tasks == "det_pose_seg"

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        choices = {"profile": ("small", "base"), "backbone_norm": ("gn", "bn"), "tasks": TASKS,
                   "pose_space": POSE_SPACES, "box_loss": REGRESSION_LOSSES, "pose_loss": REGRESSION_LOSSES,
                   "class_loss": CLASS_LOSSES, "query_init": QUERY_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"HCQConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("d_model", "mask_dim", "num_queries", "enc_layers", "dec_layers", "n_heads", "ffn_dim",
                     "enc_points", "dec_offset_points", "mask_points", "enc_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HCQConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= int(self.enc_query_levels) <= 3:
            raise ValueError(f"HCQConfig.enc_query_levels must be 1..3 (of res3..res5), got {self.enc_query_levels}")
        if self.d_model % self.n_heads or self.d_model % 4:
            raise ValueError(f"HCQConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                             "and by 4 (2-D sine position encoding)")
        if not self.query_keypoints and (self.keypoints_in_heads or self.keypoints_in_attention):
            raise ValueError("HCQConfig.keypoints_in_heads / keypoints_in_attention need query_keypoints=True")
        if not self.with_pose and self.query_keypoints:
            raise ValueError("HCQConfig.query_keypoints needs tasks='det_pose_seg' (joints need pose supervision)")
        if self.pose_joint_features and not self.query_keypoints:
            raise ValueError("HCQConfig.pose_joint_features needs query_keypoints=True (it refines the query's "
                             "joints from where they are)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HCQConfig":
        """Inverse of to_dict; unknown keys -> ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HCQConfig keys {unknown}")
        config = cls(**data)
        config.validate()
        return config

    def architecture_mismatches(self, other: "HCQConfig") -> list[str]:
        """'key: self != other' for every architecture field that differs (loss fields ignored)."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}" for f in fields(self)
                if f.name not in self.LOSS_FIELDS and getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def preset(cls, name: str = "hcqnet", profile: str = "small", **overrides) -> "HCQConfig":
        """PRESETS[name] on top of PROFILES[profile], then keyword overrides (any field)."""
        if name not in PRESETS:
            raise ValueError(f"unknown HCQNet preset {name!r}; choose from {sorted(PRESETS)}")
        if profile not in PROFILES:
            raise ValueError(f"unknown HCQNet profile {profile!r}; choose from {sorted(PROFILES)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown HCQConfig keys {unknown}")
        config = replace(cls(), **{**PROFILES[profile], **PRESETS[name], **overrides})
        config.validate()
        return config


# Sizes. small: CPU real time (ResNet-18-like small backbone at 1/4 width, 1 + 3 layers, 4 heads; decoder
# samples per query and level 4 heads x (4 offsets + 5 joints)). base: ResNet-50, 6 + 6 layers, 8 heads,
# 3 offsets + 3 joints per head and level (half the points from keypoints, half from offsets, as the paper).
# small has ONE encoder layer whose queries are the 1/16 and 1/32 pixels only (enc_query_levels=2, RT-DETR's
# finding; the 1/8 level gets the FPN top-down path): an all-level layer costs ~0.5 GFLOPs and, measured with
# onnxruntime on 2 cores at 320x320, ~40% of the detector's time; the product's CPU budget (>= 20 FPS for the
# whole pipeline) cannot carry it. small also takes its queries' reference boxes from the encoder's best proposals
# (query_init="encoder", see query_selection.py): with the paper's learned references the from-scratch CPU run
# reached only bbox AP 0.10 in 6000 iterations.
PROFILES: dict[str, dict] = {
    "small": dict(profile="small", d_model=128, mask_dim=64, num_queries=50, query_init="encoder",
                  pose_joint_features=True,
                  enc_layers=1, enc_query_levels=2,
                  dec_layers=3, n_heads=4, ffn_dim=256, enc_points=4, dec_offset_points=4, mask_points=12544),
    "base": dict(profile="base", d_model=256, mask_dim=256, num_queries=100, enc_layers=6, dec_layers=6,
                 n_heads=8, ffn_dim=1024, enc_points=4, dec_offset_points=3, mask_points=12544),
}

# Ablations (paper Table 1 / Table 6). Interpretation of the paper's naming: alpha = keypoints in the queries
# only (they set the positional query and are refined, but heads read E and attention samples only offsets);
# beta = alpha + heads read Cat(E, K); full HCQNet = beta + the joints join the deformable-attention sampling set.
# BaseNets carry only a box reference per query; BaseNet-DPS regresses joints directly in image space.
# pose_joint_features (our addition, see joint_features.py) is off up to beta so those rows stay the paper's.
PRESETS: dict[str, dict] = {
    "basenet_ds": dict(tasks="det_seg", query_keypoints=False, keypoints_in_heads=False,
                       keypoints_in_attention=False, pose_space="image", pose_joint_features=False),
    "basenet_dps": dict(tasks="det_pose_seg", query_keypoints=False, keypoints_in_heads=False,
                        keypoints_in_attention=False, pose_space="image", pose_joint_features=False),
    "hcqnet_alpha": dict(tasks="det_pose_seg", query_keypoints=True, keypoints_in_heads=False,
                         keypoints_in_attention=False, pose_space="canonical", pose_joint_features=False),
    "hcqnet_beta": dict(tasks="det_pose_seg", query_keypoints=True, keypoints_in_heads=True,
                        keypoints_in_attention=False, pose_space="canonical", pose_joint_features=False),
    "hcqnet": dict(tasks="det_pose_seg", query_keypoints=True, keypoints_in_heads=True,
                   keypoints_in_attention=True, pose_space="canonical"),
    "hcqnet_image_space": dict(tasks="det_pose_seg", query_keypoints=True, keypoints_in_heads=True,
                               keypoints_in_attention=True, pose_space="image"),
}

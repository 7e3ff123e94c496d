"""Identity appearance (clothes, hair, accessories) and the shared identity pool.

Every attribute of ``schema.ATTRIBUTES`` is drawn explicitly and rendered so that it can be read off the
image: colour names map to well separated RGB prototypes (jittered a little), stripes contrast with the base
colour, a backpack shows its straps from the front, a handbag hangs from a hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hcq_ros.data.schema import ATTRIBUTES, COLORS
from hcq_ros.data.synth.skeleton import BodyShape, sample_body

# RGB prototype and jitter (per-channel, plus a shared brightness jitter for the achromatic ones).
COLOR_PROTOTYPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "black": ((28, 28, 30), 8),
    "white": ((236, 236, 232), 8),
    "gray": ((128, 128, 132), 6),
    "red": ((196, 32, 36), 20),
    "yellow": ((236, 206, 46), 16),
    "green": ((42, 140, 62), 18),
    "blue": ((36, 72, 186), 20),
    "purple": ((122, 52, 152), 16),
    "pink": ((238, 126, 176), 12),
    "brown": ((116, 72, 40), 12),
}
_ACHROMATIC_BRIGHTNESS = {"black": 14, "white": 12, "gray": 22}
HAIR_COLORS = ((28, 24, 22), (58, 38, 24), (104, 70, 42), (196, 164, 104), (150, 148, 146), (126, 54, 30))
SKIN_LIGHT = np.array([244.0, 206.0, 180.0])
SKIN_DARK = np.array([88.0, 56.0, 40.0])
SHOE_COLORS = ((25, 25, 25), (235, 235, 235), (90, 60, 35), (110, 110, 115), (30, 40, 90))
BAG_COLORS = ((30, 30, 30), (95, 60, 35), (50, 60, 80), (140, 30, 40), (70, 90, 60))


def color_sample(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A jittered RGB sample of the colour called ``name`` (one of schema.COLORS)."""
    if name not in COLOR_PROTOTYPES:
        raise ValueError(f"colour {name!r} not in {COLORS}")
    proto, jitter = COLOR_PROTOTYPES[name]
    rgb = np.asarray(proto, dtype=np.float64) + rng.uniform(-jitter, jitter, 3)
    rgb += rng.uniform(-1, 1) * _ACHROMATIC_BRIGHTNESS.get(name, 10)
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def _stripe_color(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A stripe colour that contrasts with the garment colour ``name`` (light on dark, dark on light)."""
    light = name in ("white", "yellow", "pink", "gray")
    value = rng.uniform(15, 45) if light else rng.uniform(215, 245)
    return (int(value),) * 3


@dataclass(frozen=True)
class Appearance:
    """Everything that is drawn for one identity. Colours are RGB int triples."""
    skin: tuple[int, int, int]
    hair_long: bool
    hair_color: tuple[int, int, int]
    upper_color_name: str
    upper_color: tuple[int, int, int]
    long_sleeves: bool
    striped: bool
    stripe_color: tuple[int, int, int]
    stripe_count: int
    lower_type: str             # "trousers" | "shorts" | "skirt"
    lower_color_name: str
    lower_color: tuple[int, int, int]
    shoe_color: tuple[int, int, int]
    hat: bool
    hat_cap: bool               # cap with a brim (else a beanie)
    hat_color: tuple[int, int, int]
    backpack: bool
    backpack_color: tuple[int, int, int]
    handbag: bool
    handbag_left: bool
    handbag_color: tuple[int, int, int]
    child: bool

    def attributes(self) -> dict[str, str]:
        """The schema.ATTRIBUTES dict of this appearance (names and values exactly as in the schema)."""
        attrs = {
            "upper_color": self.upper_color_name,
            "lower_color": self.lower_color_name,
            "sleeve": "long" if self.long_sleeves else "short",
            "upper_pattern": "striped" if self.striped else "plain",
            "lower_type": self.lower_type,
            "hair": "long" if self.hair_long else "short",
            "hat": "yes" if self.hat else "no",
            "backpack": "yes" if self.backpack else "no",
            "handbag": "yes" if self.handbag else "no",
            "age": "child" if self.child else "adult",
        }
        for name, value in attrs.items():
            assert value in ATTRIBUTES[name], (name, value)
        return attrs


def sample_appearance(rng: np.random.Generator, child: bool) -> Appearance:
    """Random appearance; colour names are uniform over schema.COLORS so every class is well represented."""
    t = rng.uniform(0, 1)
    skin = np.clip(SKIN_LIGHT * (1 - t) + SKIN_DARK * t + rng.uniform(-8, 8, 3), 0, 255)
    upper_name = COLORS[int(rng.integers(len(COLORS)))]
    lower_name = COLORS[int(rng.integers(len(COLORS)))]
    lower_type = ("trousers", "shorts", "skirt")[int(rng.choice(3, p=(0.5, 0.25, 0.25)))]
    hat_color_name = COLORS[int(rng.integers(len(COLORS)))]
    return Appearance(
        skin=tuple(int(v) for v in skin),
        hair_long=bool(rng.random() < 0.45),
        hair_color=HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))],
        upper_color_name=upper_name,
        upper_color=color_sample(upper_name, rng),
        long_sleeves=bool(rng.random() < 0.5),
        striped=bool(rng.random() < 0.3),
        stripe_color=_stripe_color(upper_name, rng),
        stripe_count=int(rng.integers(3, 6)),
        lower_type=lower_type,
        lower_color_name=lower_name,
        lower_color=color_sample(lower_name, rng),
        shoe_color=SHOE_COLORS[int(rng.integers(len(SHOE_COLORS)))],
        hat=bool(rng.random() < 0.25),
        hat_cap=bool(rng.random() < 0.6),
        hat_color=color_sample(hat_color_name, rng),
        backpack=bool(rng.random() < 0.3),
        backpack_color=BAG_COLORS[int(rng.integers(len(BAG_COLORS)))],
        handbag=bool(rng.random() < 0.25),
        handbag_left=bool(rng.random() < 0.5),
        handbag_color=BAG_COLORS[int(rng.integers(len(BAG_COLORS)))],
        child=child,
    )


@dataclass(frozen=True)
class Identity:
    """A person that can appear in many images and sequences: ``identity`` >= 1 (Market-1501 keeps 0 for
    distractors), a body shape and an appearance."""
    identity: int
    body: BodyShape
    appearance: Appearance

    @property
    def attributes(self) -> dict[str, str]:
        return self.appearance.attributes()


def sample_identity(rng: np.random.Generator, identity: int = -1, child_prob: float = 0.2) -> Identity:
    child = bool(rng.random() < child_prob)
    return Identity(identity, sample_body(rng, child), sample_appearance(rng, child))


@dataclass
class IdentityPool:
    """``size`` identities numbered 1..size, each deterministic from (``seed``, identity number) alone.

    Sequences draw their people from one pool so that the same identity re-appears under other cameras.
    """
    size: int
    seed: int = 0
    child_prob: float = 0.2
    _cache: dict[int, Identity] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"IdentityPool size must be >= 1, got {self.size}")

    def __len__(self) -> int:
        return self.size

    @property
    def ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    def get(self, identity: int) -> Identity:
        if not 1 <= identity <= self.size:
            raise ValueError(f"identity {identity} outside the pool 1..{self.size}")
        if identity not in self._cache:
            rng = np.random.default_rng([self.seed, identity, 0x1D])
            self._cache[identity] = sample_identity(rng, identity, self.child_prob)
        return self._cache[identity]

    def attributes(self, identity: int) -> dict[str, str]:
        return self.get(identity).attributes

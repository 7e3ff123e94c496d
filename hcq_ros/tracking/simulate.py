"""Detection simulator over SynthHumans sequences, for tracker tests and the tracking ablation.

Each sequence (``hcq_ros.data.synth.generate_sequence``; one camera) is rendered once and its exact ground
truth turned into what a detector + ReID network would give, so the tracker is measured in isolation:

- visibility of a person = share of its 17 joints that are inside the image *and* on its own visible mask;
  a joint hidden under another person's mask names that person as the occluder (the render's keypoint
  visibility flag alone also marks self-occlusion, which does not hide a person from a detector).
- missed detections: ``miss_prob + miss_prob_occluded * occlusion**2 + miss_prob_small * smallness``
  (occlusion = 1 - visibility, smallness = max(0, 1 - box height / small_height)).
- boxes: the visible GT box with Gaussian jitter (``box_jitter`` x width / height on centre and log-size).
- scores: ``0.92 - 0.6 occlusion - 0.3 smallness + N(0, score_noise)``: occluded people come in low.
- false positives: Poisson(``false_positives``) boxes per frame with random person-like sizes and scores.
- embeddings: per identity a unit vector; distinct identities have cosine ``identity_similarity`` on average
  (a shared component, as real ReID features are not isotropic), and a ``similar_fraction`` of identities
  are look-alikes of an earlier one (cosine ``similar_cosine``). A detection's embedding is its identity's
  vector mixed with its occluder's (weight ``occluder_mixing`` x the share of joints the occluder hides:
  an occluded crop shows the occluder) plus Gaussian noise of size ``embedding_noise`` +
  ``embedding_noise_occluded`` x occlusion + ``embedding_noise_small`` x smallness. False positives get
  vectors from the same distribution as new identities.

Ground-truth ids are the person identity by default (``gt_ids="identity"``): the same person leaving and
coming back is one object, as the tracker's re-identification intends; ``gt_ids="appearance"`` scores
against SynthHumans' per-appearance ``track_id`` instead. Scored boxes are the detection boxes with their
track id (what the Perceptor publishes), with ``hcq_ros.evaluation.mot.evaluate_mot`` (motmetrics).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from hcq_ros.data.schema import NUM_KEYPOINTS, Sample
from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_sequence
from hcq_ros.evaluation.mot import evaluate_mot

from .tracker import Tracker, TrackerConfig

ABLATION_VARIANTS: dict[str, dict] = {
    "IoU only": {"use_reid": False, "reidentify_lost": False},
    "+ ReID association": {"use_reid": True, "reidentify_lost": False},
    "+ lost-track re-identification": {"use_reid": True, "reidentify_lost": True},
}


@dataclass
class SimulationConfig:
    """Scene and detector-noise settings (see the module docstring for how each is used)."""
    width: int = 640
    height: int = 360
    max_people: int = 15
    num_frames: int = 150
    fps: float = 25.0
    identities_per_camera: int = 18
    gt_ids: str = "identity"
    box_jitter: float = 0.04
    miss_prob: float = 0.03
    miss_prob_occluded: float = 0.9
    miss_prob_small: float = 0.2
    small_height: float = 48.0
    score_noise: float = 0.08
    false_positives: float = 0.3
    embedding_dim: int = 128
    identity_similarity: float = 0.3
    similar_fraction: float = 0.15
    similar_cosine: float = 0.7
    embedding_noise: float = 0.5
    embedding_noise_occluded: float = 1.0
    embedding_noise_small: float = 0.5
    occluder_mixing: float = 0.5

    def __post_init__(self):
        if self.gt_ids not in ("identity", "appearance"):
            raise ValueError(f"SimulationConfig.gt_ids must be 'identity' or 'appearance', got {self.gt_ids!r}")
        if self.num_frames < 1 or self.identities_per_camera < 1 or self.embedding_dim < 2:
            raise ValueError("SimulationConfig needs num_frames >= 1, identities_per_camera >= 1, "
                             f"embedding_dim >= 2; got {self.num_frames}, {self.identities_per_camera}, "
                             f"{self.embedding_dim}")
        if not 0 <= self.identity_similarity < 1 or not 0 <= self.similar_cosine < 1:
            raise ValueError("SimulationConfig identity_similarity and similar_cosine must be in [0, 1)")


@dataclass
class SimulatedFrame:
    """Detections of one frame. boxes [N, 4] xyxy, scores [N], embeddings [N, D] unit rows, gt_ids [N]
    (the GT id each detection came from, -1 for false positives)."""
    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    gt_ids: np.ndarray


@dataclass
class SimulatedSequence:
    """gt_rows: [G, 6] MOT rows (frame, id, x, y, w, h), frames 1-based; frames[k] is frame k + 1."""
    name: str
    fps: float
    gt_rows: np.ndarray
    frames: list[SimulatedFrame] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def person_visibility(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per GT person of ``sample``: (visible fraction [P] in [0, 1], occluder index [P] (-1 none),
    share of joints hidden by that occluder [P])."""
    persons = sample.persons
    h, w = sample.image.shape[:2]
    visible = np.zeros(len(persons))
    occluder = np.full(len(persons), -1)
    share = np.zeros(len(persons))
    if not persons:
        return visible, occluder, share
    masks = np.stack([p.mask for p in persons])                                    # [P, H, W]
    for i, p in enumerate(persons):
        inside = p.keypoints[:, 2] > 0
        xs = np.clip(p.keypoints[:, 0].astype(int), 0, w - 1)
        ys = np.clip(p.keypoints[:, 1].astype(int), 0, h - 1)
        on_mask = masks[:, ys, xs] & inside[None, :]                               # [P, 17]
        visible[i] = on_mask[i].sum() / NUM_KEYPOINTS
        hidden_by = on_mask.sum(1)
        hidden_by[i] = 0
        if hidden_by.max() > 0:
            occluder[i] = int(hidden_by.argmax())
            share[i] = hidden_by.max() / NUM_KEYPOINTS
    return visible, occluder, share


class _IdentityVectors:
    """Lazily drawn identity vectors with a shared component and occasional look-alikes."""

    def __init__(self, cfg: SimulationConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.shared = _unit(rng.normal(size=cfg.embedding_dim))
        self.vectors: dict[int, np.ndarray] = {}

    def fresh(self) -> np.ndarray:
        own = _unit(self.rng.normal(size=self.cfg.embedding_dim))
        a = np.sqrt(self.cfg.identity_similarity)
        return _unit(a * self.shared + np.sqrt(1 - a * a) * own)

    def get(self, identity: int) -> np.ndarray:
        if identity not in self.vectors:
            vector = self.fresh()
            if self.vectors and self.rng.random() < self.cfg.similar_fraction:
                ids = sorted(self.vectors)
                twin = self.vectors[ids[int(self.rng.integers(len(ids)))]]
                c = self.cfg.similar_cosine
                orthogonal = _unit(vector - (vector @ twin) * twin)
                vector = _unit(c * twin + np.sqrt(1 - c * c) * orthogonal)
            self.vectors[identity] = vector
        return self.vectors[identity]


def simulate_sequence(seed: int, camera: int, cfg: SimulationConfig, pool: IdentityPool) -> SimulatedSequence:
    """Render one SynthHumans sequence and turn its ground truth into noisy detections (deterministic)."""
    rng = np.random.default_rng([seed, camera, 0x7AC])
    scene = SceneConfig(width=cfg.width, height=cfg.height, max_people=cfg.max_people)
    count = min(cfg.identities_per_camera, len(pool))
    identities = [int(i) for i in rng.choice(pool.ids, size=count, replace=False)]
    vectors = _IdentityVectors(cfg, rng)
    name = f"sim{camera:02d}"
    gt_rows, frames = [], []
    for sample in generate_sequence(seed, scene, cfg.num_frames, camera, pool, name, identities, cfg.fps):
        visible, occluder, share = person_visibility(sample)
        ids = [p.identity if cfg.gt_ids == "identity" else p.track_id for p in sample.persons]
        boxes, scores, embeddings, sources = [], [], [], []
        for i, p in enumerate(sample.persons):
            x0, y0, x1, y1 = (float(v) for v in p.box)
            gt_rows.append((sample.frame, ids[i], x0, y0, x1 - x0, y1 - y0))
            occlusion = 1.0 - visible[i]
            small = max(0.0, 1.0 - (y1 - y0) / cfg.small_height)
            miss = cfg.miss_prob + cfg.miss_prob_occluded * occlusion ** 2 + cfg.miss_prob_small * small
            if rng.random() < min(miss, 0.98):
                continue
            boxes.append(_jitter(rng, p.box, cfg.box_jitter, cfg.width, cfg.height))
            scores.append(0.92 - 0.6 * occlusion - 0.3 * small + rng.normal(0, cfg.score_noise))
            mean = vectors.get(p.identity)
            if occluder[i] >= 0:
                mix = cfg.occluder_mixing * share[i]
                mean = _unit((1 - mix) * mean + mix * vectors.get(sample.persons[occluder[i]].identity))
            sigma = cfg.embedding_noise + cfg.embedding_noise_occluded * occlusion + cfg.embedding_noise_small * small
            embeddings.append(_unit(mean + sigma * rng.normal(size=cfg.embedding_dim) / np.sqrt(cfg.embedding_dim)))
            sources.append(ids[i])
        for _ in range(rng.poisson(cfg.false_positives)):
            bh = rng.uniform(20.0, 0.6 * cfg.height)
            bw = bh * rng.uniform(0.3, 0.6)
            x, y = rng.uniform(0, cfg.width - bw), rng.uniform(0, cfg.height - bh)
            boxes.append(np.array([x, y, x + bw, y + bh]))
            scores.append(rng.uniform(0.1, 0.7))
            embeddings.append(vectors.fresh())
            sources.append(-1)
        order = np.argsort(-np.asarray(scores, float), kind="stable")       # detectors emit by score
        frames.append(SimulatedFrame(
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4)[order],
            scores=np.clip(np.asarray(scores, np.float64), 0.01, 0.99)[order],
            embeddings=np.asarray(embeddings, np.float64).reshape(-1, cfg.embedding_dim)[order],
            gt_ids=np.asarray(sources, np.int64)[order]))
    return SimulatedSequence(name, cfg.fps, np.asarray(gt_rows, np.float64).reshape(-1, 6), frames)


def simulate_sequences(num_sequences: int, seed: int, cfg: SimulationConfig) -> list[SimulatedSequence]:
    """``num_sequences`` cameras (1..n) of one scene seed sharing an identity pool."""
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    pool = IdentityPool(max(50, 2 * cfg.identities_per_camera), seed)
    return [simulate_sequence(seed, camera, cfg, pool) for camera in range(1, num_sequences + 1)]


def run_tracker(sequence: SimulatedSequence, config: TrackerConfig) -> tuple[np.ndarray, float]:
    """Track one sequence (stamps from the frame rate) -> (MOT rows [M, 6] of confirmed tracks with the
    detection boxes, mean tracker milliseconds per frame)."""
    tracker = Tracker(config)
    rows, seconds = [], 0.0
    for k, frame in enumerate(sequence.frames):
        start = time.perf_counter()
        outputs = tracker.update(frame.boxes, frame.scores, frame.embeddings,
                                 stamp_ns=int(round(k * 1e9 / sequence.fps)))
        seconds += time.perf_counter() - start
        for box, out in zip(frame.boxes, outputs):
            if out.track_id > 0:
                rows.append((k + 1, out.track_id, box[0], box[1], box[2] - box[0], box[3] - box[1]))
    return np.asarray(rows, np.float64).reshape(-1, 6), 1000.0 * seconds / max(1, sequence.num_frames)


def evaluate_tracker(sequences: list[SimulatedSequence], config: TrackerConfig) -> dict:
    """motmetrics scores of ``config`` over ``sequences`` (``evaluate_mot`` keys) plus ``tracker_ms``."""
    results, timings = {}, []
    for seq in sequences:
        pred, ms = run_tracker(seq, config)
        results[seq.name] = (seq.gt_rows, pred, seq.num_frames)
        timings.append(ms)
    metrics = evaluate_mot(results)
    metrics["tracker_ms"] = float(np.mean(timings))
    return metrics


def evaluate_true_ids(sequences: list[SimulatedSequence]) -> dict:
    """Reference: every true detection scored with its ground-truth id (no false positives, no start-up
    delay, no id errors) - the best any tracker can output from these detections."""
    results = {}
    for seq in sequences:
        rows = [(k + 1, g, b[0], b[1], b[2] - b[0], b[3] - b[1])
                for k, frame in enumerate(seq.frames) for b, g in zip(frame.boxes, frame.gt_ids) if g >= 0]
        results[seq.name] = (seq.gt_rows, np.asarray(rows, np.float64).reshape(-1, 6), seq.num_frames)
    return evaluate_mot(results)


def _table_row(name: str, m: dict) -> dict:
    return {"variant": name, "IDF1": m["mot_IDF1"], "MOTA": m["mot_MOTA"], "IDs": m["id_switches"],
            "IDP": m["mot_IDP"], "IDR": m["mot_IDR"], "FP": m["mot_FP"], "FN": m["mot_FN"],
            "frag": m["mot_fragmentations"], "ms": m.get("tracker_ms")}


def run_ablation(sequences: list[SimulatedSequence], base: TrackerConfig | None = None) -> list[dict]:
    """One row per ``ABLATION_VARIANTS`` entry: {variant, IDF1, MOTA, IDs, IDP, IDR, FP, FN, frag, ms}."""
    base = base if base is not None else TrackerConfig()
    return [_table_row(variant, evaluate_tracker(sequences, replace(base, **switches)))
            for variant, switches in ABLATION_VARIANTS.items()]


def ablation_markdown(rows: list[dict], reference: dict | None = None) -> str:
    """A markdown table of ``run_ablation`` rows (+ the ``evaluate_true_ids`` reference) and one line per
    variant saying how it compares with the previous one."""
    lines = ["| variant | IDF1 | MOTA | ID switches | IDP | IDR | FP | FN | frag. | tracker ms/frame |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table = rows + ([_table_row("(reference) detections with their true ids", reference)] if reference else [])
    for r in table:
        ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
        lines.append(f"| {r['variant']} | {r['IDF1']:.3f} | {r['MOTA']:.3f} | {r['IDs']} | {r['IDP']:.3f} | "
                     f"{r['IDR']:.3f} | {r['FP']} | {r['FN']} | {r['frag']} | {ms} |")
    lines.append("")
    for previous, r in zip(rows, rows[1:]):
        lines.append(f"- {r['variant']} vs {previous['variant']}: IDF1 {r['IDF1'] - previous['IDF1']:+.3f}, "
                     f"MOTA {r['MOTA'] - previous['MOTA']:+.3f}, ID switches {previous['IDs']} -> {r['IDs']}")
    return "\n".join(lines) + "\n"


def _jitter(rng: np.random.Generator, box: np.ndarray, sigma: float, width: int, height: int) -> np.ndarray:
    """xyxy box with Gaussian noise on the centre (sigma x size) and on the log-size, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2 + rng.normal(0, sigma) * w, y0 + h / 2 + rng.normal(0, sigma) * h
    w, h = w * np.exp(rng.normal(0, sigma)), h * np.exp(rng.normal(0, sigma))
    out = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.clip(out, 0, [width, height, width, height])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def ablation_report(sections: list[tuple[SimulationConfig, list[SimulatedSequence], list[dict], dict]],
                    command: str, seed: int, tracker: TrackerConfig) -> str:
    """The markdown of docs/tracking_ablation.md: the command, then per simulation setting (config, sequences,
    ``run_ablation`` rows, ``evaluate_true_ids`` reference) a table and its comparison lines."""
    out = ["# Tracking ablation (SynthHumans detection simulation)", "",
           "Written by:", "", "```", command, "```", "",
           "Each sequence is a SynthHumans camera (`generate_sequence`, scene seed "
           f"{seed}); its exact ground truth becomes noisy detections and ReID embeddings "
           "(`hcq_ros/tracking/simulate.py`: misses and low scores grow with occlusion, jittered boxes, false "
           "positives, embeddings mixed with the occluder's and noisier for small/occluded people, look-alike "
           "identities). The tracker runs with its defaults except for the ablation switches `use_reid` and "
           "`reidentify_lost`; scores are motmetrics (`hcq_ros.evaluation.mot.evaluate_mot`, IoU >= 0.5) "
           "against identity-level ground-truth ids (a person who leaves and comes back is one object).", ""]
    for cfg, sequences, rows, reference in sections:
        num_ids = sum(len(np.unique(s.gt_rows[:, 1])) for s in sequences)
        num_gt = sum(len(s.gt_rows) for s in sequences)
        num_det = sum(len(f.boxes) for s in sequences for f in s.frames)
        num_fp = sum(int(np.sum(f.gt_ids < 0)) for s in sequences for f in s.frames)
        out += [f"## {len(sequences)} sequences x {cfg.num_frames} frames at {cfg.fps:g} fps "
                f"({cfg.num_frames / cfg.fps:.0f} s each), {cfg.width}x{cfg.height}", "",
                f"{num_ids} ground-truth people, {num_gt} ground-truth boxes, {num_det} detections of which "
                f"{num_fp} false positives.", "", ablation_markdown(rows, reference)]
    out += ["How to read it: the reference row scores every true detection with its true id, the best any "
            "tracker can output from these detections. The tracker falls short of it by what it cannot know "
            f"online: a new track reports no id for its first `min_hits - 1` = {tracker.min_hits - 1} frames, "
            "low-score boxes that match no track stay anonymous, and false positives that start tracks. "
            "The lower frame rate (what the full Perceptor reaches on an embedded GPU) makes motion less "
            "predictive and gaps longer, which is where appearance matters most. "
            "Tracker milliseconds are wall time on a shared CPU and only indicative. The tracker's defaults "
            "were checked on scene seed 100, not on the seed reported here.", "",
            "Tracker settings: `" + ", ".join(f"{k}={v}" for k, v in vars(tracker).items()) + "`", ""]
    for cfg, *_ in sections[:1]:
        settings = ", ".join(f"{k}={v}" for k, v in vars(cfg).items() if k != "fps")
        out += [f"Simulation settings (every table; fps as titled): `{settings}`", ""]
    return "\n".join(out)

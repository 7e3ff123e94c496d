"""Multi-person tracker (DESIGN.md §9): Kalman boxes, IoU + ReID association, re-identification of lost tracks.

One ``Tracker.update`` per frame, in the ByteTrack / BoT-SORT order:

1. every track is predicted to the frame's time (``stamp_ns``, or ``frame index / frame_rate`` when no stamps
   are given); detections split into high (``score >= high_score``) and low (``low_score <= score <
   high_score``); lower ones are ignored.
2. first association: high detections vs tentative + confirmed + recently lost (``<= max_lost_s``) tracks.
   Cost ``1 - IoU`` against the predicted box, or with ReID ``iou_weight * (1 - IoU) + (1 - iou_weight) *
   cosine distance`` to the track's EMA feature; a pair needs ``IoU >= min_iou`` and a cosine distance
   ``<= appearance_gate`` (a clearly different appearance cannot match however well the boxes overlap;
   not applied to tentative tracks, whose feature is one or two noisy samples) and a cost ``<= match_cost``.
   Without ReID this is ByteTrack's first stage (IoU >= 1 - match_cost).
3. second association: low detections vs the remaining tracks on IoU (``IoU >= low_score_min_iou``). As in
   ByteTrack, lost tracks are left out without ReID; with ReID a lost track may take a low box whose
   embedding passes ``appearance_gate`` (a person coming out from behind someone is often first detected
   with a low score), and a confirmed track may not take one that fails it (the low box of an occluded
   person overlaps the track of the person in front). Low-score boxes are mostly occluded people: their
   embeddings do not update features.
4. re-identification (``reidentify_lost``): remaining high detections vs remaining confirmed/lost tracks on
   appearance alone (cosine distance ``<= reid_distance``) within ``reid_window_s`` and a loose motion gate:
   the detection centre lies within ``(reid_gate_heights + reid_gate_speed * seconds lost)`` track heights
   of the last observed box and the heights differ by at most ``reid_max_scale`` times. The track restarts
   its Kalman state at the detection. The same test runs once more when a tentative track gets confirmed
   (its averaged feature is less noisy than one detection): it then takes over the lost track's id.
5. life cycle: unmatched tentative tracks die; unmatched confirmed tracks become lost and are removed after
   ``max_lost_s`` (or ``reid_window_s`` when re-identification is on); unmatched high detections with
   ``score >= new_track_score`` start tentative tracks, confirmed after ``min_hits`` consecutive matches.

Ids: positive, given at confirmation from a counter that only grows (``reset`` keeps it), so never reused.
Time: stamps must strictly increase; an equal or earlier stamp raises ValueError (call ``reset()`` when a
bag loops or the clock jumps back) - a repeated stamp is a duplicated frame, not a zero-length step.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np

from .association import box_iou, cosine_distance, linear_assignment
from .config import TrackerConfig
from .kalman import BoxKalmanFilter, cxcywh_to_xyxy, xyxy_to_cxcywh

__all__ = ["TrackInfo", "TrackOutput", "TrackStatus", "Tracker", "TrackerConfig"]


class TrackStatus(str, Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    LOST = "lost"


@dataclass(frozen=True)
class TrackOutput:
    """What the tracker made of one input detection.

    track_id: the confirmed track's id, 0 when the detection's track is still tentative or it is not tracked.
    box: float32 [4] xyxy, the Kalman-filtered box of its track (the input box when not tracked).
    stage: "first" | "second" (low-score IoU) | "reid" (re-identified lost track) | "new" | "none".
    """
    track_id: int
    box: np.ndarray
    stage: str


@dataclass(frozen=True)
class TrackInfo:
    """A snapshot of one live track. box: float32 [4] xyxy state; velocity: float32 [4] (vcx, vcy, vw, vh)
    px/s; feature: float32 [D] L2-normalised EMA embedding or None; track_id 0 while tentative."""
    track_id: int
    status: TrackStatus
    box: np.ndarray
    velocity: np.ndarray
    hits: int
    time_since_update_s: float
    feature: Optional[np.ndarray]


@dataclass
class _Track:
    track_id: int
    status: TrackStatus
    mean: np.ndarray            # [8] Kalman state
    cov: np.ndarray             # [8, 8]
    last_box: np.ndarray        # [4] xyxy of the last matched detection
    last_seen_s: float
    hits: int = 1               # consecutive matched frames
    feature: Optional[np.ndarray] = None
    num_features: int = 0


class Tracker:
    """Stateful multi-person tracker; one instance per camera stream."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config if config is not None else TrackerConfig()
        c = self.config
        self.kalman = BoxKalmanFilter(c.kalman_position_noise, c.kalman_velocity_noise,
                                      c.kalman_measurement_noise, c.kalman_initial_velocity_std)
        self._next_id = 1
        self._embedding_dim: Optional[int] = None
        self.reset()

    def reset(self) -> None:
        """Forget all tracks and the clock (a new stream); ids keep counting up, so none is reused."""
        self._tracks: list[_Track] = []
        self._origin_ns: Optional[int] = None
        self._last_ns: Optional[int] = None
        self._frames = 0
        self._clock_mode: Optional[str] = None
        self._now = 0.0

    @property
    def tracks(self) -> list[TrackInfo]:
        """Every live track: tentative, confirmed (matched in the latest frame) and lost."""
        out = []
        for t in self._tracks:
            feature = None if t.feature is None else t.feature.astype(np.float32)
            out.append(TrackInfo(t.track_id, t.status, cxcywh_to_xyxy(t.mean[:4])[0].astype(np.float32),
                                 t.mean[4:].astype(np.float32), t.hits, self._now - t.last_seen_s, feature))
        return out

    @property
    def active_tracks(self) -> list[TrackInfo]:
        """Confirmed tracks matched in the latest frame."""
        return [t for t in self.tracks if t.status == TrackStatus.CONFIRMED]

    def update(self, boxes: np.ndarray, scores: np.ndarray, embeddings: Optional[np.ndarray] = None,
               stamp_ns: Optional[int] = None) -> list[TrackOutput]:
        """Track one frame. boxes: [N, 4] xyxy pixels; scores: [N]; embeddings: [N, D] or None (rows are
        L2-normalised here; an all-zero row means "no embedding for this detection"); stamp_ns: the frame's
        time (None: frame counting at ``frame_rate``). Returns one TrackOutput per detection, in input order.

        Raises ValueError, leaving the tracker unchanged, for mismatched lengths, non-finite or non-xyxy boxes,
        non-finite scores/embeddings, an embedding size other than the stream's, a stamp not after the last
        one, or mixing stamped and unstamped calls."""
        boxes, scores, embeddings = self._check_inputs(boxes, scores, embeddings)
        self._advance_clock(stamp_ns)
        if embeddings is not None:
            self._embedding_dim = embeddings.shape[1]
        c = self.config
        appearance = embeddings if c.use_reid else None
        reid_on = c.use_reid and c.reidentify_lost
        now = self._now
        high = np.flatnonzero(scores >= c.high_score)
        low = np.flatnonzero((scores >= c.low_score) & (scores < c.high_score))
        assigned: dict[int, tuple[_Track, str]] = {}

        first_pool = [t for t in self._tracks
                      if t.status != TrackStatus.LOST or now - t.last_seen_s <= c.max_lost_s]
        matches, rest_tracks, rest_high = self._first_stage(first_pool, boxes, high, appearance)
        assigned.update({d: (t, "first") for t, d in matches})
        second_pool = rest_tracks
        cost = 1.0 - box_iou(self._boxes(second_pool), boxes[low])
        # Without ReID lost tracks sit out (ByteTrack). With it, a lost track may take a low-score box whose
        # appearance passes the gate, and a confirmed one may not take a box that fails it: an occluded person's
        # low box often overlaps the track of the one in front (most id switches on SynthHumans came from here).
        is_lost = np.array([t.status == TrackStatus.LOST for t in second_pool], bool)
        blocked = np.repeat(is_lost[:, None], len(low), axis=1)
        if appearance is not None and len(second_pool) and len(low):
            features, has_feature = self._features(second_pool, appearance.shape[1])
            known = has_feature[:, None] & np.any(appearance[low], axis=1)[None, :]
            different = known & (cosine_distance(features, appearance[low]) > c.appearance_gate)
            confirmed = np.array([t.status == TrackStatus.CONFIRMED for t in second_pool], bool)[:, None]
            blocked = np.where(is_lost[:, None], ~known | different, different & confirmed)
        cost[blocked] = np.inf
        pairs, _, _ = linear_assignment(cost, 1.0 - c.low_score_min_iou + 1e-9)
        assigned.update({int(low[j]): (second_pool[i], "second") for i, j in pairs})
        self._apply_kalman_updates(assigned, boxes, appearance)

        if reid_on and appearance is not None:
            matched = {id(t) for t, _ in assigned.values()}
            candidates = [t for t in self._tracks if id(t) not in matched and t.status != TrackStatus.TENTATIVE
                          and t.feature is not None and now - t.last_seen_s <= c.reid_window_s]
            for t, d in self._reidentify(candidates, boxes, rest_high, appearance):
                t.mean, t.cov = (a[0] for a in self.kalman.initiate(xyxy_to_cxcywh(boxes[d])))
                self._observe(t, boxes[d], appearance[d])
                t.hits = 1
                t.status = TrackStatus.CONFIRMED
                assigned[d] = (t, "reid")

        matched = {id(t) for t, _ in assigned.values()}
        keep_s = max(c.max_lost_s, c.reid_window_s if reid_on else 0.0)
        survivors = []
        for t in self._tracks:
            if id(t) not in matched:
                if t.status == TrackStatus.TENTATIVE:
                    continue
                t.status, t.hits = TrackStatus.LOST, 0
                if now - t.last_seen_s > keep_s:
                    continue
            survivors.append(t)
        self._tracks = survivors

        births = [d for d in high if d not in assigned and scores[d] >= c.new_track_score]
        if births:
            means, covs = self.kalman.initiate(xyxy_to_cxcywh(boxes[births]))
            for k, d in enumerate(births):
                t = _Track(0, TrackStatus.TENTATIVE, means[k], covs[k], boxes[d].copy(), now)
                self._observe(t, boxes[d], None if appearance is None else appearance[d])
                self._tracks.append(t)
                assigned[int(d)] = (t, "new")
        self._confirm(appearance is not None and reid_on)

        outputs = []
        for i in range(len(boxes)):
            if i in assigned:
                t, stage = assigned[i]
                outputs.append(TrackOutput(t.track_id, cxcywh_to_xyxy(t.mean[:4])[0].astype(np.float32), stage))
            else:
                outputs.append(TrackOutput(0, boxes[i].astype(np.float32), "none"))
        return outputs

    # -- association stages -------------------------------------------------------------------------------

    def _first_stage(self, tracks: list[_Track], boxes: np.ndarray, high: np.ndarray,
                     appearance: Optional[np.ndarray]) -> tuple[list[tuple[_Track, int]], list[_Track], np.ndarray]:
        """High detections vs ``tracks`` -> (matched (track, detection index), unmatched tracks, unmatched
        detection indices)."""
        c = self.config
        iou = box_iou(self._boxes(tracks), boxes[high])
        cost = 1.0 - iou
        allowed = iou >= c.min_iou
        if appearance is not None and len(tracks) and len(high):
            features, has_feature = self._features(tracks, appearance.shape[1])
            dets = appearance[high]
            distance = cosine_distance(features, dets)
            both = has_feature[:, None] & np.any(dets, axis=1)[None, :]
            cost = np.where(both, c.iou_weight * (1.0 - iou) + (1.0 - c.iou_weight) * distance, cost)
            # The gate needs a settled feature: a tentative track's is one or two noisy samples.
            settled = np.array([t.status != TrackStatus.TENTATIVE for t in tracks], bool)[:, None]
            allowed &= ~(both & settled) | (distance <= c.appearance_gate)
        cost = np.where(allowed, cost, np.inf)
        pairs, rest_rows, rest_cols = linear_assignment(cost, c.match_cost)
        return ([(tracks[i], int(high[j])) for i, j in pairs], [tracks[i] for i in rest_rows], high[rest_cols])

    def _reid_gate(self, track_boxes: np.ndarray, elapsed_s: np.ndarray, det_boxes: np.ndarray) -> np.ndarray:
        """Loose motion gate [T, N]: track_boxes [T, 4] last observed, elapsed_s [T] since then, det_boxes [N, 4]."""
        c = self.config
        t, d = xyxy_to_cxcywh(track_boxes), xyxy_to_cxcywh(det_boxes)
        heights = np.maximum(t[:, 3], 1.0)
        reach = (c.reid_gate_heights + c.reid_gate_speed * elapsed_s) * heights
        distance = np.linalg.norm(t[:, None, :2] - d[None, :, :2], axis=2)
        scale = np.maximum(d[None, :, 3], 1.0) / heights[:, None]
        return (distance <= reach[:, None]) & (scale <= c.reid_max_scale) & (scale >= 1.0 / c.reid_max_scale)

    def _appearance_match(self, tracks: list[_Track], features: np.ndarray, det_boxes: np.ndarray
                          ) -> list[tuple[int, int]]:
        """Appearance-only assignment of lost ``tracks`` to detections (features [N, D], boxes [N, 4])."""
        c = self.config
        if not tracks or not len(features):
            return []
        track_features, _ = self._features(tracks, features.shape[1])
        distance = cosine_distance(track_features, features)
        elapsed = np.array([self._now - t.last_seen_s for t in tracks])
        gate = self._reid_gate(np.stack([t.last_box for t in tracks]), elapsed, det_boxes)
        gate &= np.any(features, axis=1)[None, :]
        pairs, _, _ = linear_assignment(np.where(gate, distance, np.inf), c.reid_distance + 1e-9)
        return [(int(i), int(j)) for i, j in pairs]

    def _reidentify(self, tracks: list[_Track], boxes: np.ndarray, dets: np.ndarray, appearance: np.ndarray
                    ) -> list[tuple[_Track, int]]:
        pairs = self._appearance_match(tracks, appearance[dets], boxes[dets])
        return [(tracks[i], int(dets[j])) for i, j in pairs]

    def _confirm(self, inherit: bool) -> None:
        """Give ids to tentative tracks with ``min_hits`` hits; with ``inherit``, one that looks like a lost
        track takes over that track's id (and the lost track is dropped)."""
        ready = [t for t in self._tracks if t.status == TrackStatus.TENTATIVE and t.hits >= self.config.min_hits]
        if not ready:
            return
        if inherit:
            lost = [t for t in self._tracks if t.status == TrackStatus.LOST and t.feature is not None
                    and self._now - t.last_seen_s <= self.config.reid_window_s]
            with_feature = [t for t in ready if t.feature is not None]
            if lost and with_feature:
                features = np.stack([t.feature for t in with_feature])
                boxes = np.stack([t.last_box for t in with_feature])
                dropped = set()
                for i, j in self._appearance_match(lost, features, boxes):
                    old, new = lost[i], with_feature[j]
                    new.track_id = old.track_id
                    new.feature = _normalise(old.feature + new.feature)
                    dropped.add(id(old))
                self._tracks = [t for t in self._tracks if id(t) not in dropped]
        for t in ready:
            t.status = TrackStatus.CONFIRMED
            if t.track_id == 0:
                t.track_id = self._next_id
                self._next_id += 1

    # -- state helpers ------------------------------------------------------------------------------------

    def _apply_kalman_updates(self, assigned: dict[int, tuple[_Track, str]], boxes: np.ndarray,
                              appearance: Optional[np.ndarray]) -> None:
        """One batched Kalman update for the first/second-stage matches; features from high scores only."""
        if not assigned:
            return
        dets = list(assigned)
        tracks = [assigned[d][0] for d in dets]
        means, covs = self.kalman.update(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]),
                                         xyxy_to_cxcywh(boxes[dets]))
        for k, (d, t) in enumerate(zip(dets, tracks)):
            t.mean, t.cov = means[k], covs[k]
            high_score = assigned[d][1] == "first"
            self._observe(t, boxes[d], appearance[d] if high_score and appearance is not None else None)
            t.hits += 1
            if t.status == TrackStatus.LOST:
                t.status = TrackStatus.CONFIRMED

    def _observe(self, t: _Track, box: np.ndarray, embedding: Optional[np.ndarray]) -> None:
        """Record a match: last box/time and the EMA feature (a running mean until ``1/(1-momentum)`` samples,
        so the first embedding does not dominate)."""
        t.last_box, t.last_seen_s = box.copy(), self._now
        if embedding is None or not np.any(embedding):
            return
        if t.feature is None:
            t.feature, t.num_features = embedding.copy(), 1
            return
        keep = min(self.config.feature_momentum, t.num_features / (t.num_features + 1.0))
        t.feature = _normalise(keep * t.feature + (1.0 - keep) * embedding)
        t.num_features += 1

    def _predict(self, dt: float) -> None:
        if not self._tracks or dt == 0:
            return
        means, covs = self.kalman.predict(np.stack([t.mean for t in self._tracks]),
                                          np.stack([t.cov for t in self._tracks]), dt)
        for k, t in enumerate(self._tracks):
            t.mean, t.cov = means[k], covs[k]

    def _boxes(self, tracks: list[_Track]) -> np.ndarray:
        """Predicted xyxy boxes [T, 4]."""
        if not tracks:
            return np.zeros((0, 4))
        return cxcywh_to_xyxy(np.stack([t.mean[:4] for t in tracks]))

    @staticmethod
    def _features(tracks: list[_Track], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """[T, D] features (zeros where missing) and [T] bool has-feature."""
        has = np.array([t.feature is not None for t in tracks], bool)
        out = np.zeros((len(tracks), dim))
        for k, t in enumerate(tracks):
            if t.feature is not None:
                out[k] = t.feature
        return out, has

    def _advance_clock(self, stamp_ns: Optional[int]) -> None:
        """Set ``self._now`` (seconds since the first frame) and predict every track to it."""
        mode = "frame" if stamp_ns is None else "stamp"
        if self._clock_mode is not None and mode != self._clock_mode:
            raise ValueError(f"stamp_ns must be given on every update or on none (this stream uses "
                             f"{self._clock_mode} timing); call reset() to switch")
        self._clock_mode = mode
        if stamp_ns is None:
            now = self._frames / self.config.frame_rate
        else:
            stamp_ns = int(stamp_ns)
            if self._last_ns is not None and stamp_ns <= self._last_ns:
                raise ValueError(f"stamp_ns {stamp_ns} is not after the previous frame's {self._last_ns}; "
                                 f"stamps must strictly increase (call reset() if the stream restarted)")
            if self._origin_ns is None:
                self._origin_ns = stamp_ns
            self._last_ns = stamp_ns
            now = (stamp_ns - self._origin_ns) * 1e-9
        dt = now - self._now if self._frames else 0.0
        self._frames += 1
        self._now = now
        self._predict(dt)

    def _check_inputs(self, boxes, scores, embeddings) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        boxes = np.asarray(boxes, np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4] xyxy, got shape {list(boxes.shape)}")
        scores = np.asarray(scores, np.float64)
        if scores.ndim != 1 or len(scores) != len(boxes):
            raise ValueError(f"scores must be [N] with N = {len(boxes)} boxes, got shape {list(scores.shape)}")
        bad = np.flatnonzero(~np.isfinite(boxes).all(1))
        if len(bad):
            raise ValueError(f"boxes row {bad[0]} is not finite: {boxes[bad[0]].tolist()}")
        bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        if len(bad):
            raise ValueError(f"boxes row {bad[0]} is not xyxy (x2 < x1 or y2 < y1): {boxes[bad[0]].tolist()}")
        if not np.isfinite(scores).all():
            raise ValueError(f"scores entry {np.flatnonzero(~np.isfinite(scores))[0]} is not finite")
        if embeddings is None:
            return boxes, scores, None
        embeddings = np.asarray(embeddings, np.float64)
        if embeddings.ndim != 2 or len(embeddings) != len(boxes):
            raise ValueError(f"embeddings must be [N, D] with N = {len(boxes)} boxes, got shape "
                             f"{list(embeddings.shape)}")
        if self._embedding_dim is not None and embeddings.shape[1] != self._embedding_dim:
            raise ValueError(f"embedding dimension changed from {self._embedding_dim} to {embeddings.shape[1]}")
        if not np.isfinite(embeddings).all():
            raise ValueError(f"embeddings row {np.flatnonzero(~np.isfinite(embeddings).all(1))[0]} is not finite")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return boxes, scores, np.where(norms > 0, embeddings / np.maximum(norms, 1e-12), 0.0)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)

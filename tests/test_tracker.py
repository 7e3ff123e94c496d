"""Tracker: association stages, life cycle, ids, timing, bad input, and a simulated SynthHumans sequence."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hcq_ros.data.schema import PersonAnnotation, Sample
from hcq_ros.data.synth import IdentityPool
from hcq_ros.tracking import Tracker, TrackerConfig, TrackStatus
from hcq_ros.tracking.association import box_iou, linear_assignment
from hcq_ros.tracking.simulate import (ABLATION_VARIANTS, SimulationConfig, ablation_markdown, evaluate_tracker,
                                       evaluate_true_ids, person_visibility, run_ablation, simulate_sequence,
                                       simulate_sequences)

FRAME_NS = 40_000_000          # 25 fps
IOU_ONLY = TrackerConfig(use_reid=False, reidentify_lost=False)
REID = TrackerConfig()


def box(cx: float, cy: float = 200.0, w: float = 40.0, h: float = 100.0) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def identity_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(config: TrackerConfig, frames: list[list[tuple[int, np.ndarray, float]]], vectors: np.ndarray,
        stamps: list[int] | None = None) -> list[dict[int, int]]:
    """frames: per frame [(person, box, score)]; returns per frame {person: track id} (0 = none yet)."""
    tracker = Tracker(config)
    out = []
    for k, dets in enumerate(frames):
        boxes = np.array([d[1] for d in dets]).reshape(-1, 4)
        scores = np.array([d[2] for d in dets])
        emb = vectors[[d[0] for d in dets]] if dets else np.zeros((0, vectors.shape[1]))
        stamp = None if stamps is None else stamps[k]
        results = tracker.update(boxes, scores, emb, stamp_ns=stamp)
        out.append({d[0]: r.track_id for d, r in zip(dets, results)})
    return out


def final_ids(history: list[dict[int, int]], person: int) -> set[int]:
    """Every positive id the person had."""
    return {f[person] for f in history if f.get(person, 0) > 0}


# -- association primitives ------------------------------------------------------------------------------

def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 1, 0], [0, 0, 0]])


def test_linear_assignment_backends_agree_and_respect_the_limit():
    rng = np.random.default_rng(3)
    for n, m in ((4, 6), (6, 4), (5, 5), (0, 3)):
        cost = rng.uniform(0, 1, (n, m))
        cost[rng.uniform(size=(n, m)) < 0.2] = np.inf
        a = linear_assignment(cost, 0.6, backend="lap")
        b = linear_assignment(cost, 0.6, backend="scipy")
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(y, axis=0))
        matches, rows, cols = a
        assert np.all(cost[matches[:, 0], matches[:, 1]] <= 0.6)
        assert len(matches) + len(rows) == n and len(matches) + len(cols) == m
    # both unmatched (0.25 + 0.25) beats a pair costing 0.55 under a limit of 0.5
    assert len(linear_assignment(np.array([[0.55]]), 0.5)[0]) == 0


# -- tracking behaviour ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [REID, IOU_ONLY], ids=["reid", "iou"])
def test_clean_crossing_keeps_ids(config):
    vectors = identity_vectors(2)
    # they cross at slightly different depths, so the boxes never coincide exactly (a tie for IoU alone)
    frames = [[(0, box(100 + 8 * k), 0.9), (1, box(424 - 8 * k, 206, 42, 104), 0.9)] for k in range(40)]
    history = run(config, frames, vectors)
    assert history[0] == {0: 0, 1: 0}                                   # tentative at first
    assert final_ids(history, 0) == {1} and final_ids(history, 1) == {2}


def test_reid_config_without_embeddings_tracks_on_iou():
    tracker = Tracker(REID)
    for k in range(10):
        out = tracker.update(np.stack([box(100 + 8 * k), box(400)]), [0.9, 0.9], None)
    assert [o.track_id for o in out] == [1, 2]
    assert all(t.feature is None for t in tracker.tracks)


def test_meet_and_turn_back_needs_reid():
    """Two people meet (boxes coincide), then each walks back the way it came: the motion model predicts
    that they pass each other, so IoU alone swaps their ids; the appearance gate of the first stage
    forbids the swap."""
    vectors = identity_vectors(2)
    xs = [150 + 10 * k for k in range(16)] + [300 - 10 * k for k in range(1, 16)]
    frames = [[(0, box(x), 0.9), (1, box(600 - x), 0.9)] for x in xs]
    with_reid = run(REID, frames, vectors)
    assert final_ids(with_reid, 0) == {1} and final_ids(with_reid, 1) == {2}
    iou_only = run(IOU_ONLY, frames, vectors)
    assert iou_only[-1] == {0: 2, 1: 1}                                 # swapped


def test_occlusion_gap_kept_by_reid_switched_by_iou():
    """Person 0 walks behind person 1 (standing), turns round unseen and comes back out on the side it came
    from 0.6 s later: the motion model looks for it on the far side."""
    vectors = identity_vectors(2)
    frames = []
    for k in range(50):
        dets = [(1, box(300), 0.9)]
        if k < 15:
            dets.append((0, box(150 + 8 * k), 0.9))
        elif k >= 30:
            dets.append((0, box(270 - 8 * (k - 30)), 0.9))
        frames.append(dets)
    with_reid = run(REID, frames, vectors)
    assert final_ids(with_reid, 0) == {2} and final_ids(with_reid, 1) == {1}   # ids in detection order
    iou_only = run(IOU_ONLY, frames, vectors)
    assert final_ids(iou_only, 0) == {2, 3}                             # a new id after the gap
    assert final_ids(iou_only, 1) == {1}


def test_leave_and_reenter_is_reidentified():
    vectors = identity_vectors(3)
    frames = [[(0, box(300 + 10 * k), 0.9), (1, box(100), 0.9)] for k in range(20)]
    frames += [[(1, box(100), 0.9)] for _ in range(75)]                  # 3 s out of view
    frames += [[(0, box(250 - 10 * k), 0.9), (1, box(100), 0.9)] for k in range(15)]
    with_reid = run(REID, frames, vectors)
    assert final_ids(with_reid, 0) == {1}
    no_reidentify = run(replace(REID, reidentify_lost=False), frames, vectors)
    assert final_ids(no_reidentify, 0) == {1, 3}
    # Someone else entering there gets a new id, and the motion gate forbids an implausible jump.
    other = [[(d[0] if d[0] == 1 or k < 20 else 2, d[1], d[2]) for d in f] for k, f in enumerate(frames)]
    assert final_ids(run(REID, other, vectors), 2) == {3}
    jump = frames[:20] + [[(0, box(90, 420), 0.9), (1, box(100), 0.9)]] * 5     # 450 px in 40 ms
    assert final_ids(run(REID, jump, vectors), 0) == {1, 3}


def test_reentry_confirmation_inherits_the_lost_id():
    """The first two embeddings after re-entry are too noisy for re-identification on their own (cosine
    distance 0.32 > reid_distance); averaged over the tentative track's hits they match, so the track takes
    over the lost id when it is confirmed instead of getting a new one."""
    u = identity_vectors(3)
    sides, _ = np.linalg.qr(np.stack([u[0], u[1], u[2]]).T)            # orthonormal, sides[:, 0] = +-u[0]
    noisy = [0.68 * u[0] + np.sqrt(1 - 0.68 ** 2) * sides[:, k] for k in (1, 2)]
    tracker = Tracker(REID)
    for k in range(10):
        out = tracker.update(box(300 + 8 * k)[None], [0.9], u[:1], stamp_ns=k * FRAME_NS)
    assert out[0].track_id == 1
    for k in range(10, 40):                                             # 1.2 s away
        tracker.update([], [], stamp_ns=k * FRAME_NS)
    ids, stages = [], []
    for k, emb in enumerate(noisy + [u[0], u[0]]):
        (o,) = tracker.update(box(330 - 8 * k)[None], [0.9], emb[None], stamp_ns=(40 + k) * FRAME_NS)
        ids.append(o.track_id)
        stages.append(o.stage)
    assert stages[:2] == ["new", "first"] and ids == [0, 0, 1, 1]
    assert [t.track_id for t in tracker.tracks] == [1]                  # the lost track was absorbed


def test_ids_never_reused_and_increase():
    vectors = identity_vectors(12)
    frames = []
    for person in range(12):                                            # one after another, 8 frames each
        frames += [[(person, box(60 + 40 * person, 100 + 20 * (person % 3)), 0.9)] for _ in range(8)]
        frames += [[] for _ in range(30)]                                # gone long enough to be removed
    config = replace(IOU_ONLY, max_lost_s=0.5)
    tracker = Tracker(config)
    seen = []
    for dets in frames:
        out = tracker.update(np.array([d[1] for d in dets]).reshape(-1, 4), np.array([d[2] for d in dets]))
        seen += [o.track_id for o in out if o.track_id and (not seen or seen[-1] != o.track_id)]
    assert seen == list(range(1, 13))
    assert tracker.tracks == []                                          # all removed after max_lost_s
    tracker.reset()
    for _ in range(3):
        out = tracker.update(box(100)[None], [0.9])
    assert out[0].track_id == 13                                        # reset keeps counting


def test_tentative_tracks_report_zero_until_confirmed():
    vectors = identity_vectors(1)
    frames = [[(0, box(100 + 5 * k), 0.9)] for k in range(5)]
    assert [f[0] for f in run(replace(REID, min_hits=3), frames, vectors)] == [0, 0, 1, 1, 1]
    assert [f[0] for f in run(replace(REID, min_hits=1), frames, vectors)] == [1, 1, 1, 1, 1]
    # A miss before confirmation kills the tentative track: the count restarts.
    gap = frames[:2] + [[]] + frames[3:]
    assert [f.get(0) for f in run(replace(REID, min_hits=3), gap, vectors)] == [0, 0, None, 0, 0]
    tracker = Tracker(REID)
    tracker.update(box(100)[None], [0.9], vectors[:1])
    assert [t.status for t in tracker.tracks] == [TrackStatus.TENTATIVE]


def test_low_score_second_stage_recovers_the_track():
    tracker = Tracker(IOU_ONLY)
    for k in range(5):
        tracker.update(box(100 + 5 * k)[None], [0.9])
    # Partly occluded: the detector's score drops below high_score (0.5); a stray low box appears elsewhere.
    for k in range(5, 9):
        out = tracker.update(np.stack([box(100 + 5 * k), box(500)]), [0.3, 0.3])
        assert (out[0].track_id, out[0].stage) == (1, "second")
        assert (out[1].track_id, out[1].stage) == (0, "none")            # low scores never start tracks
    # Without the second stage (threshold above the scores) the track is lost instead.
    tracker = Tracker(replace(IOU_ONLY, low_score=0.4))
    for k in range(5):
        tracker.update(box(100 + 5 * k)[None], [0.9])
    assert tracker.update(box(125)[None], [0.3])[0].track_id == 0
    assert tracker.tracks[0].status == TrackStatus.LOST


def test_second_stage_gate_keeps_a_confirmed_track_off_someone_elses_low_box():
    """Person 0 walks in front of person 1: only 1's low-score box is detected where 0's track is. IoU alone
    hands 0's id to person 1; with ReID the gate blocks that, and 0's own low box still extends the track."""
    vectors = identity_vectors(2)
    walk = [[(0, box(100 + 5 * k), 0.9)] for k in range(5)]
    occluded = [[(1, box(125 + 5 * k), 0.3)] for k in range(3)]
    iou_only, reid = run(IOU_ONLY, walk + occluded, vectors), run(REID, walk + occluded, vectors)
    assert [f[1] for f in iou_only[5:]] == [1, 1, 1]                     # person 1 took person 0's id
    assert [f[1] for f in reid[5:]] == [0, 0, 0]                         # appearance gate: not 0's box
    own = [[(0, box(125 + 5 * k), 0.3)] for k in range(3)]
    assert [f[0] for f in run(REID, walk + own, vectors)[5:]] == [1, 1, 1]


def test_input_order_preserved():
    vectors = identity_vectors(4)
    xs = (80.0, 200.0, 320.0, 440.0)
    rng = np.random.default_rng(5)
    tracker = Tracker(REID)
    id_of: dict[int, int] = {}
    for k in range(8):
        order = rng.permutation(4)                                      # detections arrive shuffled
        boxes = np.stack([box(xs[p] + 3 * k) for p in order])
        out = tracker.update(boxes, np.full(4, 0.9), vectors[order])
        for p, b, o in zip(order, boxes, out):
            np.testing.assert_allclose(o.box, b, atol=5)                 # the output row is this detection's
            if k >= 2:
                assert id_of.setdefault(int(p), o.track_id) == o.track_id
    assert sorted(id_of.values()) == [1, 2, 3, 4]
    assert sorted(t.track_id for t in tracker.active_tracks) == [1, 2, 3, 4]


def test_time_stamps_bridge_dropped_frames():
    """Fast walker, frames 5-10 dropped: with stamps the prediction covers the gap; counting frames
    (no stamps) under-predicts the motion and the IoU-only tracker loses the person."""
    frames = [[(0, box(100 + 12 * k), 0.9)] for k in range(20)]
    kept = [k for k in range(20) if not 5 <= k <= 10]
    sub = [frames[k] for k in kept]
    vectors = identity_vectors(1)
    assert final_ids(run(IOU_ONLY, sub, vectors, stamps=[k * FRAME_NS for k in kept]), 0) == {1}
    assert final_ids(run(IOU_ONLY, sub, vectors), 0) == {1, 2}


def test_empty_frames_age_tracks():
    tracker = Tracker(replace(IOU_ONLY, max_lost_s=0.2))
    for k in range(3):
        tracker.update(box(100)[None], [0.9], stamp_ns=k * FRAME_NS)
    assert tracker.update(np.zeros((0, 4)), np.zeros(0), stamp_ns=3 * FRAME_NS) == []
    (info,) = tracker.tracks
    assert info.status == TrackStatus.LOST and info.time_since_update_s == pytest.approx(0.04)
    for k in range(4, 10):
        tracker.update([], [], stamp_ns=k * FRAME_NS)
    assert tracker.tracks == []


def test_bad_inputs():
    tracker = Tracker(REID)
    two = np.stack([box(100), box(200)])
    with pytest.raises(ValueError, match="scores"):
        tracker.update(two, [0.9])
    with pytest.raises(ValueError, match="embeddings"):
        tracker.update(two, [0.9, 0.9], np.ones((3, 8)))
    with pytest.raises(ValueError, match="boxes row 1 is not finite"):
        tracker.update(np.stack([box(100), [np.nan, 0, 1, 1]]), [0.9, 0.9])
    with pytest.raises(ValueError, match="boxes row 0 is not xyxy"):
        tracker.update(np.array([[10.0, 0, 5, 10]]), [0.9])
    with pytest.raises(ValueError, match="boxes must be"):
        tracker.update(np.zeros((2, 5)), [0.9, 0.9])
    with pytest.raises(ValueError, match="embeddings row 0"):
        tracker.update(two, [0.9, 0.9], np.full((2, 8), np.nan))
    tracker.update(two, [0.9, 0.9], np.ones((2, 8)), stamp_ns=FRAME_NS)
    with pytest.raises(ValueError, match="embedding dimension changed from 8 to 16"):
        tracker.update(two, [0.9, 0.9], np.ones((2, 16)), stamp_ns=2 * FRAME_NS)
    with pytest.raises(ValueError, match="not after the previous frame"):
        tracker.update(two, [0.9, 0.9], np.ones((2, 8)), stamp_ns=FRAME_NS)
    with pytest.raises(ValueError, match="stamp_ns must be given on every update"):
        tracker.update(two, [0.9, 0.9], np.ones((2, 8)))


def test_config_from_dict():
    config = TrackerConfig.from_dict({"min_hits": 2, "max_lost_s": 2, "use_reid": False})
    assert config.min_hits == 2 and config.max_lost_s == 2.0 and not config.use_reid
    with pytest.raises(ValueError, match="unknown tracker parameters \\['max_age'\\]"):
        TrackerConfig.from_dict({"max_age": 30})
    with pytest.raises(ValueError, match="use_reid must be a bool"):
        TrackerConfig.from_dict({"use_reid": "yes"})
    with pytest.raises(ValueError, match="low_score <= high_score"):
        TrackerConfig(low_score=0.7, high_score=0.5)
    with pytest.raises(ValueError, match="min_hits"):
        TrackerConfig(min_hits=0)


# -- simulation ------------------------------------------------------------------------------------------

def test_person_visibility_names_the_occluder():
    h, w = 40, 40
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = np.linspace(5, 34, 17), 10, 2
    back = np.zeros((h, w), bool)
    back[5:15, 0:20] = True                                             # its left half is drawn
    front = np.zeros((h, w), bool)
    front[5:15, 20:40] = True                                           # the right half is someone else's
    persons = [PersonAnnotation(box=[0, 5, 20, 15], mask=back, keypoints=kp, identity=1),
               PersonAnnotation(box=[20, 5, 40, 15], mask=front, keypoints=np.zeros((17, 3)), identity=2)]
    visible, occluder, share = person_visibility(Sample(np.zeros((h, w, 3), np.uint8), persons))
    on_left = int(np.sum(kp[:, 0] < 20))
    assert visible[0] == pytest.approx(on_left / 17) and occluder[0] == 1
    assert share[0] == pytest.approx((17 - on_left) / 17)
    assert visible[1] == 0 and occluder[1] == -1


@pytest.fixture(scope="module")
def simulated():
    cfg = SimulationConfig(width=320, height=240, max_people=6, num_frames=60, identities_per_camera=8)
    return simulate_sequence(7, 1, cfg, IdentityPool(20, 7))


def test_simulated_sequence_scores_above_floor(simulated):
    assert simulated.num_frames == 60 and len(simulated.gt_rows) > 60
    frame = simulated.frames[10]
    assert frame.boxes.shape[0] == frame.scores.shape[0] == frame.embeddings.shape[0] == frame.gt_ids.shape[0]
    np.testing.assert_allclose(np.linalg.norm(frame.embeddings, axis=1), 1.0, atol=1e-6)
    metrics = evaluate_tracker([simulated], REID)
    assert metrics["mot_IDF1"] > 0.75 and metrics["mot_MOTA"] > 0.6
    with pytest.raises(ValueError, match="gt_ids"):
        SimulationConfig(gt_ids="track")
    with pytest.raises(ValueError, match="num_sequences"):
        simulate_sequences(0, 0, SimulationConfig())


def test_ablation_table(simulated):
    rows = run_ablation([simulated])
    assert [r["variant"] for r in rows] == list(ABLATION_VARIANTS)
    reference = evaluate_true_ids([simulated])
    assert reference["id_switches"] == 0 and reference["mot_FP"] == 0
    text = ablation_markdown(rows, reference)
    assert text.startswith("| variant |") and text.count("\n| ") == 4   # 3 variants + the reference
    assert "+ ReID association vs IoU only: IDF1" in text

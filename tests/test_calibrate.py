"""`hcq-ros calibrate`: thresholds chosen from tracking accuracy on cached detections. A stand-in perceptor
returns the ground truth (score 0.9) plus a persistent false positive (score 0.2, same box every frame, like a
poster): the chosen setting must not let that false positive start a track, and the sweep's rows must show why."""
from __future__ import annotations

import numpy as np
import pytest

from hcq_ros.cli import main
from hcq_ros.evaluation.calibrate import (NMS_GRID, appearance_settings, best_row, calibrate, candidate_settings,
                                         keep_above, params_snippet, suppress_cached)
from hcq_ros.evaluation.pipeline_eval import run_sequences
from hcq_ros.pipeline import PerceptorConfig
from hcq_ros.result import Person

from helpers import GroundTruthPerceptor

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

FALSE_SCORE = 0.2


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    assert main(["synth", "--out", str(root / "seq"), "--sequences", "2", "--frames", "8", "--size", "96",
                 "--max-people", "3", "--no-progress"]) == 0
    return root / "seq"


class PosterPerceptor(GroundTruthPerceptor):
    """Ground truth at score 0.9 plus one false person at a fixed box with score FALSE_SCORE."""

    def __init__(self, data_dir):
        super().__init__(data_dir)
        self.config = PerceptorConfig(score_threshold=0.0)

    def process(self, image, stamp_ns, frame_id):
        out = super().process(image, stamp_ns, frame_id)
        for p in out.persons:
            p.score = 0.9
        box = np.array([2.0, 2.0, 20.0, 50.0], np.float32)
        out.persons.append(Person(track_id=0, score=FALSE_SCORE, box=box, keypoints=np.zeros((17, 3), np.float32),
                                  mask=np.ones((48, 18), bool)))
        return out


def test_candidate_settings_are_ordered():
    settings = candidate_settings((0.1, 0.3, 0.5), (0.0, 0.1))
    assert settings and all(floor <= high <= new <= 1.0 for floor, high, new in settings)
    assert (0.1, 0.3, 0.4) in settings and (0.5, 0.5, 0.6) in settings
    assert not any(high < floor for floor, high, _ in settings)


def test_keep_above_filters_a_copy(seq_dir):
    sequences = run_sequences(PosterPerceptor(seq_dir), seq_dir, progress=False)
    kept = keep_above(sequences, 0.5)
    for seq, filtered in zip(sequences, kept):
        for fr, fk in zip(seq.frames, filtered.frames):
            assert any(p.score == FALSE_SCORE for p in fr.result.persons)     # the cache is unchanged
            assert all(p.score >= 0.5 for p in fk.result.persons)
            assert len(fk.result.persons) == len(fr.result.persons) - 1


def test_calibration_keeps_the_false_positive_from_starting_tracks(seq_dir):
    result = calibrate(PosterPerceptor(seq_dir), seq_dir, floor=0.1, progress=False,
                       score_grid=(0.1, 0.15, 0.2, 0.3, 0.5), nms_grid=(1.0,))
    best = result["best"]
    assert result["sequences"] == 2 and result["frames"] == 16
    assert best["new_track_score"] > FALSE_SCORE and best["FP"] == 0
    # settings that let the poster start a track are scored, and lose
    births = [r for r in result["rows"] if r["new_track_score"] <= FALSE_SCORE]
    assert births and all(r["FP"] > 0 and r["IDF1"] < best["IDF1"] for r in births)
    assert best_row(result["rows"]) == best
    snippet = params_snippet(best)
    assert f"new_track_score: {best['new_track_score']}" in snippet
    assert f"low_score: {best['score_threshold']}" in snippet


def test_calibration_needs_a_perceptor_below_the_floor(seq_dir):
    perceptor = PosterPerceptor(seq_dir)
    perceptor.config = PerceptorConfig(score_threshold=0.3)
    with pytest.raises(ValueError, match="calibration floor"):
        calibrate(perceptor, seq_dir, floor=0.1, progress=False)
    with pytest.raises(ValueError, match="no score in the grid"):
        calibrate(PosterPerceptor(seq_dir), seq_dir, floor=0.6, progress=False, score_grid=(0.1, 0.5))
    with pytest.raises(ValueError, match="no calibration rows"):
        best_row([])


class DuplicatePerceptor(GroundTruthPerceptor):
    """Ground truth at score 0.9 plus, for every person, a second box 1% of its width to the right at 0.95: the
    set-prediction duplicate a weak detector makes. No score threshold separates the two."""

    def __init__(self, data_dir):
        super().__init__(data_dir)
        self.config = PerceptorConfig(score_threshold=0.0)

    def process(self, image, stamp_ns, frame_id):
        from dataclasses import replace

        out = super().process(image, stamp_ns, frame_id)
        duplicates = []
        for p in out.persons:
            p.score = 0.9
            shift = np.float32(0.01 * (p.box[2] - p.box[0]))
            duplicates.append(replace(p, score=0.95, box=p.box + np.array([shift, 0, shift, 0], np.float32)))
        out.persons.extend(duplicates)
        return out


def test_calibration_turns_duplicate_suppression_on(seq_dir):
    result = calibrate(DuplicatePerceptor(seq_dir), seq_dir, floor=0.1, progress=False, score_grid=(0.1, 0.5))
    best = result["best"]
    assert best["nms_iou"] < 1.0 and best["FP"] == 0
    raw = [r for r in result["rows"] if r["nms_iou"] == 1.0]
    assert raw and all(r["FP"] > 0 for r in raw)                          # every duplicate became a track
    assert {r["nms_iou"] for r in result["rows"]} == set(NMS_GRID)
    assert f"nms_iou: {best['nms_iou']}" in params_snippet(best)
    kept = suppress_cached(run_sequences(DuplicatePerceptor(seq_dir), seq_dir, progress=False), 0.8)
    assert all(p.score == 0.95 for seq in kept for fr in seq.frames for p in fr.result.persons)
    perceptor = DuplicatePerceptor(seq_dir)
    perceptor.config = PerceptorConfig(score_threshold=0.0, nms_iou=0.7)
    with pytest.raises(ValueError, match="nms_iou 1.0"):
        calibrate(perceptor, seq_dir, floor=0.1, progress=False)


class NoisyEmbeddingPerceptor(GroundTruthPerceptor):
    """Ground truth boxes (score 0.9) with a fresh random embedding per detection: appearance carries no identity."""

    def __init__(self, data_dir):
        super().__init__(data_dir)
        self.config = PerceptorConfig(score_threshold=0.0)
        self.rng = np.random.default_rng(0)

    def process(self, image, stamp_ns, frame_id):
        out = super().process(image, stamp_ns, frame_id)
        for p in out.persons:
            p.score = 0.9
            e = self.rng.standard_normal(64).astype(np.float32)
            p.embedding = e / np.linalg.norm(e)
        return out


def test_appearance_stage_prefers_iou_when_embeddings_are_noise(seq_dir):
    result = calibrate(NoisyEmbeddingPerceptor(seq_dir), seq_dir, floor=0.1, progress=False, score_grid=(0.1, 0.5),
                       nms_grid=(1.0,))
    rows = result["appearance_rows"]
    assert len(rows) == len(appearance_settings()) == 19
    iou_only = rows[0]
    assert iou_only["use_reid"] is False and iou_only["IDs"] == 0   # ground-truth boxes: no switch on IoU
    # a tight appearance gate with meaningless embeddings splits tracks: those settings must score lower
    gated = [r for r in rows if r["use_reid"] and r["appearance_gate"] == 0.3]
    assert gated and all(r["IDF1"] < iou_only["IDF1"] for r in gated)
    assert result["best_appearance"] == iou_only
    snippet = params_snippet(result["best"], result["best_appearance"])
    assert "use_reid: false" in snippet and "reidentify_lost: false" in snippet

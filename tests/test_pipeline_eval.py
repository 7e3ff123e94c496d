"""`hcq-ros eval --pipeline`: the whole Perceptor on `hcq-ros synth --sequences` folders, its prediction files,
motmetrics / pycocotools scores, the tracker ablation on cached detections; and `hcq-ros demo` (with models and
its no-model fallback). A ground-truth stand-in perceptor must score 1.0; tiny random models must give the same
numbers through `pipeline_eval` as through `hcq-ros eval --gt --pred` on the files it wrote."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from hcq_ros.cli import main
from hcq_ros.data.formats.mot import read_mot_sequence
from hcq_ros.evaluation.cli import evaluate_paths
from hcq_ros.evaluation.pipeline_eval import evaluate_pipeline, mot_rows, retrack, run_sequences
from hcq_ros.evaluation.soak import TINY_SETTINGS, tiny_config
from hcq_ros.pipeline import Perceptor
from hcq_ros.tracking.tracker import TrackerConfig

from helpers import GroundTruthPerceptor

# pycocotools' annToMask (in the ground-truth stand-in) trips NumPy 2's copy-keyword deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root, SynthHumans folder with 2 sequences x 6 frames at 96x96, tiny model folder)."""
    root = tmp_path_factory.mktemp("pipeline_eval")
    assert main(["synth", "--out", str(root / "seq"), "--sequences", "2", "--frames", "6", "--size", "96",
                 "--max-people", "4", "--no-progress"]) == 0
    tiny_config(root / "models")
    return root, root / "seq", root / "models"


def test_ground_truth_perceptor_scores_perfectly(data, tmp_path):
    _, seq_dir, _ = data
    metrics = evaluate_pipeline(GroundTruthPerceptor(seq_dir), seq_dir, tmp_path / "pred", ablation=True,
                                progress=False)
    assert metrics["mot_IDF1"] == pytest.approx(1.0) and metrics["mot_MOTA"] == pytest.approx(1.0)
    assert metrics["id_switches"] == 0
    for key in ("bbox_AP", "segm_AP", "keypoints_AP"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["pipeline"]["frames"] == 12 and metrics["pipeline"]["dropped"] == 0
    assert (tmp_path / "pred" / "mot" / "SYNTH-01.txt").is_file() and (tmp_path / "pred" / "detections.json").is_file()
    rows = {r["variant"]: r for r in metrics["tracker_ablation"]}
    assert list(rows) == ["IoU only", "+ ReID association", "+ lost-track re-identification"]
    # the real tracker on perfect boxes: ids only after min_hits frames, but no switches
    assert 0.5 < rows["IoU only"]["IDF1"] < 1.0 and rows["IoU only"]["IDs"] == 0
    # identity-level GT ids: the appearance ids are all different identities here, so the score stays perfect
    by_identity = evaluate_pipeline(GroundTruthPerceptor(seq_dir), seq_dir, tmp_path / "pred_id",
                                    gt_ids="identity", progress=False)
    assert by_identity["mot_IDF1"] == pytest.approx(1.0)


def test_damaged_tracks_score_lower(data, tmp_path):
    _, seq_dir, _ = data

    class SwappingPerceptor(GroundTruthPerceptor):
        def process(self, image, stamp_ns, frame_id):
            out = super().process(image, stamp_ns, frame_id)
            frame = int(round(stamp_ns * self.fps / 1e9)) + 1
            if frame >= 4 and len(out.persons) > 1:  # two people swap ids from frame 4 on
                out.persons[0].track_id, out.persons[1].track_id = out.persons[1].track_id, out.persons[0].track_id
            return out

    metrics = evaluate_pipeline(SwappingPerceptor(seq_dir), seq_dir, tmp_path / "pred", progress=False)
    assert metrics["mot_IDF1"] < 1.0 and metrics["id_switches"] > 0
    assert metrics["bbox_AP"] == pytest.approx(1.0)


def test_tiny_models_through_the_cli_match_scoring_the_written_files(data, tmp_path, capsys):
    root, seq_dir, models = data
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY_SETTINGS, "input_size": [64, 64], "threads": 1}))
    out = tmp_path / "metrics.json"
    rc = main(["eval", "--pipeline", "--data", str(seq_dir), "--backend", "torch", "--detector",
               str(models / "det.pt"), "--person", str(models / "person.pt"), "--params", str(params),
               "--tracker-ablation", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mot_IDF1" in printed and "| IoU only |" in printed
    metrics = json.loads(out.read_text())
    for key in ("mot_IDF1", "mot_MOTA", "id_switches", "bbox_AP", "segm_AP", "keypoints_AP", "parts_mIoU"):
        assert key in metrics
    assert metrics["pipeline"]["persons"] == 3 * 12  # max_people=3, threshold 0
    assert len(metrics["tracker_ablation"]) == 3
    pred = out.with_name("metrics_predictions")
    assert {p.name for p in pred.iterdir()} == {"mot", "detections.json", "parts"}
    again = evaluate_paths(seq_dir, [pred])
    for key in ("mot_IDF1", "mot_MOTA", "id_switches", "bbox_AP", "keypoints_AP", "segm_AP", "parts_mIoU"):
        assert again[key] == metrics[key], key


def test_retracking_the_cache_reproduces_the_pipeline(data):
    _, seq_dir, models = data
    perceptor = Perceptor(tiny_config(models))
    try:
        sequences = run_sequences(perceptor, seq_dir, progress=False, max_frames=4)
    finally:
        perceptor.close()
    assert [s.length for s in sequences] == [4, 4]
    assert sequences[0].gt_rows[:, 0].max() <= 4
    config = TrackerConfig.from_dict(perceptor.config.tracker)
    def first_seen_order(rows: np.ndarray) -> np.ndarray:
        """Track ids renumbered by first appearance (ids are never reused, so the Perceptor's second sequence
        continues its count while a fresh tracker starts at 1)."""
        order = {tid: k + 1 for k, tid in enumerate(dict.fromkeys(rows[:, 1].tolist()))}
        return np.column_stack([rows[:, :1], [order[t] for t in rows[:, 1]], rows[:, 2:]])

    for seq in sequences:
        ids, _ = retrack(seq.frames, config)
        assert len(mot_rows(seq.frames)) > 0
        np.testing.assert_array_equal(first_seen_order(mot_rows(seq.frames, ids)),
                                      first_seen_order(mot_rows(seq.frames)))
    gt = read_mot_sequence(seq_dir / "mot" / "SYNTH-01").gt
    assert len(sequences[0].gt_rows) == int((gt["frame"] <= 4).sum())


def test_eval_pipeline_errors(data, capsys):
    _, seq_dir, models = data
    assert main(["eval", "--pipeline"]) == 2
    assert "--pipeline takes --data" in capsys.readouterr().err
    assert main(["eval", "--pipeline", "--data", str(seq_dir), "--backend", "torch",
                 "--detector", str(models / "nope.pt"), "--person", str(models / "person.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_demo_with_models_and_without(data, tmp_path, capsys):
    root, _, models = data
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY_SETTINGS, "input_size": [64, 64], "threads": 1}))
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--frames", "4", "--width", "64", "--height", "64", "--backend", "torch",
               "--detector", str(models / "det.pt"), "--person", str(models / "person.pt"), "--params", str(params),
               "--no-progress", "--json", str(tmp_path / "demo.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "against the ground truth: IDF1" in printed and "demo.mcap" in printed
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["mode"] == "pipeline" and summary["frames"] == 4
    assert summary["topics"]["/hcq/persons"] == 4 and summary["topics"]["/camera/image_raw"] == 4
    assert (out / "demo_annotated.mp4").stat().st_size > 0 and "mot_IDF1" in summary["metrics"]

    rc = main(["demo", "--out", str(out), "--frames", "3", "--width", "64", "--height", "64",
               "--engines", str(tmp_path / "no_engines"), "--json", str(tmp_path / "gt.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "no shipped models found" in printed and "no perception results" in printed
    summary = json.loads((tmp_path / "gt.json").read_text())
    assert summary["mode"] == "ground_truth" and "metrics" not in summary
    assert not (out / "demo_annotated.mp4").exists()  # the earlier run's output is not left to pass for this one


def test_tracked_only_scores_what_is_published_and_ablates_every_detection(data, tmp_path):
    _, seq_dir, models = data
    tracker = {"high_score": 0.0, "low_score": 0.0, "new_track_score": 0.0, "min_hits": 3}
    results = {}
    for tracked_only in (False, True):
        perceptor = Perceptor(tiny_config(models, tracker=tracker, tracked_only=tracked_only))
        try:
            results[tracked_only] = evaluate_pipeline(perceptor, seq_dir, tmp_path / str(tracked_only),
                                                      ablation=True, progress=False)
            assert perceptor.config.tracked_only is tracked_only   # restored after the run
        finally:
            perceptor.close()
    every, published = results[False], results[True]
    # unconfirmed detections (a track's first two frames, boxes that jump) are held back; the MOT rows are
    # confirmed tracks in both runs
    assert 0 < published["pipeline"]["persons"] < every["pipeline"]["persons"]
    assert published["mot_IDF1"] == every["mot_IDF1"] and published["id_switches"] == every["id_switches"]
    def scores(rows):   # everything but the timing
        return [{k: v for k, v in r.items() if k != "ms"} for r in rows]
    assert scores(published["tracker_ablation"]) == scores(every["tracker_ablation"])   # from every detection


def test_pipelined_run_gives_the_same_rows_as_one_thread(data):
    _, seq_dir, models = data
    config = tiny_config(models)
    rows = {}
    for pipelined in (False, True):
        perceptor = Perceptor(dataclasses.replace(config, pipelined=pipelined))
        try:
            sequences = run_sequences(perceptor, seq_dir, progress=False)
        finally:
            perceptor.close()
        rows[pipelined] = [mot_rows(seq.frames) for seq in sequences]
        assert [[fr.frame for fr in seq.frames] for seq in sequences] == [list(range(1, 7))] * 2
    assert sum(len(r) for r in rows[False]) > 0
    for sequential, pipelined in zip(rows[False], rows[True]):
        np.testing.assert_array_equal(sequential, pipelined)

"""The whole data chain: `hcq-ros synth` writes a dataset, its ground truth is turned into every prediction
format, `hcq-ros eval` scores it 1.0 everywhere; damaged predictions score lower."""
import json

import numpy as np
import pytest

from hcq_ros.cli import main
from hcq_ros.evaluation.predictions import write_ground_truth_as_predictions

METRICS = ("bbox_AP", "segm_AP", "keypoints_AP", "keypoints_AP_nosmall", "parts_mIoU", "attr_acc", "reid_mAP",
           "reid_rank1", "mot_IDF1", "mot_MOTA")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), "--sequences", "4", "--frames", "16", "--size", "160",
                 "--identities", "6", "--crop-every", "4", "--seed", "5", "--no-progress"]) == 0
    return root


def _eval(gt, pred, out):
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_ground_truth_scores_one_on_every_metric(dataset, tmp_path):
    pred = tmp_path / "pred"
    write_ground_truth_as_predictions(dataset, pred)
    metrics = _eval(dataset, pred, tmp_path / "m.json")
    for key in METRICS:
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["id_switches"] == 0


def test_damaged_predictions_score_lower(dataset, tmp_path):
    pred = tmp_path / "pred"
    write_ground_truth_as_predictions(dataset, pred)
    dets = json.loads((pred / "detections.json").read_text())
    rng = np.random.default_rng(0)
    for d in dets:
        d["bbox"][0] += d["bbox"][2] * 0.4
        kp = np.asarray(d["keypoints"], dtype=float).reshape(17, 3)
        kp[:, :2] += rng.normal(0, 6, size=(17, 2))
        d["keypoints"] = kp.ravel().tolist()
    (pred / "detections.json").write_text(json.dumps(dets))
    metrics = _eval(dataset, pred, tmp_path / "m.json")
    assert metrics["bbox_AP"] < 0.9 and metrics["keypoints_AP"] < 0.9

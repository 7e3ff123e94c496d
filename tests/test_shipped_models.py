"""The shipped checkpoints in engines/ still score on a small fixed SynthHumans set.

Not the accuracy targets (those are measured by ``hcq-ros eval`` on >= 500 held-out images, see the README): these
floors sit well below the measured figures and catch a broken shipped file, a preprocessing change the weights
were not trained with, or an evaluation regression. Skipped with the reason while a model is not shipped yet."""
from pathlib import Path

import pytest

from hcq_ros.evaluation.cli import evaluate_checkpoint

ENGINES = Path(__file__).resolve().parents[1] / "engines"
PERSON = ENGINES / "person_small.pt"
DETECTOR = ENGINES / "hcq_small.pt"
# On the `sequences` folder below, person_small at iteration 9000 scored reid_mAP 0.99, rank-1 1.00, attributes
# 0.69, parts 0.33, PCK 0.67; the same network with random weights 0.29 / 0.00 / 0.47 / 0.02 / 0.19.
PERSON_FLOORS = {"reid_mAP": 0.75, "reid_rank1": 0.80, "attr_acc": 0.55, "parts_mIoU": 0.20, "pose_PCK": 0.50}
# hcq_small (run 3, iteration 5000) scored bbox AP 0.140 (AP50 0.360), segm AP 0.074, keypoints AP 0.001 on the
# `images` folder below (the previous file, run 1 at 6600: 0.100 / 0.337 / 0.040); random weights score 0. Its joint
# error is 0.231 box scales against 0.270 for the template pose in the same boxes (43 people): the joints must stay
# better than the template (keypoints AP is too close to 0 for a floor).
DETECTOR_FLOORS = {"bbox_AP": 0.08, "bbox_AP50": 0.25, "segm_AP": 0.04}


def _shipped(path: Path):
    return pytest.mark.skipif(not path.is_file(), reason=f"{path.name} is not shipped in engines/ yet")


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    from hcq_ros.cli import main

    out = tmp_path_factory.mktemp("shipped_seq")
    assert main(["synth", "--out", str(out), "--sequences", "3", "--frames", "40", "--identities", "8",
                 "--size", "320", "--max-people", "6", "--seed", "424242", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from hcq_ros.cli import main

    out = tmp_path_factory.mktemp("shipped_img")
    assert main(["synth", "--out", str(out), "--images", "40", "--size", "256", "--seed", "434343",
                 "--no-progress"]) == 0
    return out


@_shipped(PERSON)
def test_shipped_person_net_scores_above_its_floors(sequences):
    metrics = evaluate_checkpoint(PERSON, sequences, frame_step=2)
    assert metrics["model"] == "PersonNet"
    low = {k: round(metrics[k], 3) for k, floor in PERSON_FLOORS.items() if not metrics[k] >= floor}
    assert not low, f"below the floors {PERSON_FLOORS}: {low}"


@_shipped(DETECTOR)
def test_shipped_detector_scores_above_its_floors(images):
    metrics = evaluate_checkpoint(DETECTOR, images)
    assert metrics["model"] == "HCQNet"
    low = {k: round(metrics[k], 3) for k, floor in DETECTOR_FLOORS.items() if not metrics[k] >= floor}
    assert not low, f"below the floors {DETECTOR_FLOORS}: {low}"
    assert metrics["keypoints_err_people"] >= 20
    assert metrics["keypoints_err"] < 0.95 * metrics["keypoints_err_template"], "joints no better than the template"


@_shipped(DETECTOR)
def test_shipped_detector_finds_nobody_in_scenes_without_people():
    """Backgrounds, furniture and occluders but no person: zero detections at the product's threshold."""
    from hcq_ros.data.synth import SceneConfig, generate_image
    from hcq_ros.pipeline import Perceptor, PerceptorConfig

    from hcq_ros.ros.node_params import load_perceptor_settings

    product = load_perceptor_settings()            # launch/params.yaml: the calibrated thresholds
    perceptor = Perceptor(PerceptorConfig.from_dict({**product, "backend": "torch", "detector_model": str(DETECTOR),
                                                     "person_model": str(PERSON), "input_size": (256, 256),
                                                     "threads": 1}))
    assert perceptor.config.score_threshold == product["score_threshold"]
    try:
        for seed in range(8):
            sample = generate_image(seed, SceneConfig(width=256, height=256, min_people=0, max_people=0))
            assert not sample.persons
            frame = perceptor.process(sample.image, stamp_ns=seed, frame_id="empty")
            assert frame.dropped is None and frame.persons == [], (seed, [p.score for p in frame.persons])
    finally:
        perceptor.close()

"""Perceptor end to end on tiny random-initialised models (torch backend): the PersonFrame contract, tracking
across frames, bad frames returned dropped with a reason, task switches, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_KEYPOINTS, PART_NAMES
from hcq_ros.evaluation.soak import frame_pool, tiny_config
from hcq_ros.pipeline import Perceptor, PerceptorConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_models")
    tiny_config(folder)  # writes det.pt / person.pt
    return folder


@pytest.fixture(scope="module")
def frames():
    return frame_pool(4, 64, 64)


@pytest.fixture(scope="module")
def perceptor(model_dir):
    p = Perceptor(tiny_config(model_dir))
    yield p
    p.close()


def test_crop_size_comes_from_the_torch_model(perceptor):
    # the torch backend has dynamic H, W: the size must come from the checkpoint's crop_size (H, W) = (64, 32)
    assert perceptor.crop_size == (32, 64)
    assert "torch" in perceptor.reasons["detector"] and "torch" in perceptor.reasons["person_net"]


def test_frame_follows_the_result_contract(perceptor, frames):
    perceptor.reset()
    frame = perceptor.process(frames[0], stamp_ns=5_000, frame_id="cam")
    assert frame.dropped is None and frame.stamp_ns == 5_000 and frame.frame_id == "cam"
    assert frame.image_size == (64, 64)
    assert 1 <= len(frame.persons) <= 3  # max_people=3, score_threshold 0
    for stage in ("preprocess", "detector", "postprocess", "crops", "person_net", "tracker"):
        assert frame.timings_ms[stage] >= 0
    for p in frame.persons:
        x0, y0, w, h = p.box_grid()
        assert p.box.shape == (4,) and p.box[2] >= p.box[0] and p.box[3] >= p.box[1]
        assert p.keypoints.shape == (NUM_KEYPOINTS, 3) and np.isfinite(p.keypoints).all()
        assert p.mask.dtype == bool and p.mask.shape == (h, w)
        assert p.parts.dtype == np.uint8 and p.parts.shape == (h, w) and p.parts.max() < len(PART_NAMES)
        assert not p.parts[~p.mask].any()  # parts live inside the person's mask
        assert list(p.attributes) == list(ATTRIBUTE_NAMES)
        for name, (value, conf) in p.attributes.items():
            assert value in ATTRIBUTES[name] and 0 < conf <= 1
        assert p.embedding.shape == (32,) and np.linalg.norm(p.embedding) == pytest.approx(1.0, abs=1e-4)
        assert 0 <= p.score <= 1


def test_tracks_are_confirmed_and_kept_over_frames(perceptor, frames):
    perceptor.reset()
    outputs = [perceptor.process(frames[0], stamp_ns=(k + 1) * 40_000_000) for k in range(4)]
    ids = [sorted(p.track_id for p in f.persons) for f in outputs]
    assert all(i > 0 for i in ids[0])  # min_hits=1 in the tiny settings: confirmed at once
    assert ids[1:] == [ids[0]] * 3  # the same image: the same people keep their ids
    assert len(set(ids[0])) == len(ids[0])


def test_tracked_only_holds_people_back_until_their_track_is_confirmed(model_dir, perceptor, frames):
    tracker = {"high_score": 0.0, "low_score": 0.0, "new_track_score": 0.0, "min_hits": 3}
    gated = Perceptor(tiny_config(model_dir, tracker=tracker, tracked_only=True), detector=perceptor.detector,
                      person_net=perceptor.person_net)
    counts = [len(gated.process(frames[0], stamp_ns=(k + 1) * 40_000_000).persons) for k in range(4)]
    assert counts == [0, 0, 3, 3]          # 3 people (max_people), confirmed on their third frame
    gated.set_runtime_options(tracked_only=False)
    gated.reset()
    assert len(gated.process(frames[0], stamp_ns=10**9).persons) == 3   # every detection, unconfirmed ones too


def test_bad_frames_come_back_dropped_with_a_reason(model_dir, perceptor, frames):
    perceptor.reset()
    cases = {
        "not a numpy array": [[1, 2, 3]],
        "must be uint8": frames[0].astype(np.float32),
        "zero size": np.zeros((0, 10, 3), np.uint8),
        "too large": np.zeros((300, 300, 3), np.uint8),
    }
    small = Perceptor(tiny_config(model_dir, max_image_pixels=200 * 200),
                      detector=perceptor.detector, person_net=perceptor.person_net)
    for k, (reason, image) in enumerate(cases.items()):
        out = small.process(image, stamp_ns=k + 1)
        assert out.dropped is not None and reason in out.dropped and out.persons == []
    # a tracker error (stamps not increasing) is a dropped frame too, not an exception
    good = small.process(frames[0], stamp_ns=100)
    assert good.dropped is None
    repeat = small.process(frames[0], stamp_ns=100)
    assert repeat.dropped.startswith("processing error: ValueError") and "stamp" in repeat.dropped


def test_task_switches_and_detector_only(model_dir, frames, perceptor):
    perceptor.reset()
    perceptor.set_runtime_options(enable_parts=False, enable_attributes=False, enable_reid=False)
    try:
        out = perceptor.process(frames[1], stamp_ns=1)
        assert out.persons and all(p.parts is None and p.attributes == {} and p.embedding.size == 0
                                   for p in out.persons)
        with pytest.raises(ValueError, match="restart"):
            perceptor.set_runtime_options(input_size=(32, 32))
    finally:
        perceptor.set_runtime_options(enable_parts=True, enable_attributes=True, enable_reid=True)
    detector_only = Perceptor(tiny_config(model_dir, enable_person_net=False), detector=perceptor.detector)
    assert detector_only.person_net is None
    out = detector_only.process(frames[1], stamp_ns=1)
    assert out.persons and all(p.embedding.size == 0 and p.mask is not None for p in out.persons)
    assert "person_net" not in out.timings_ms


def test_nms_iou_is_a_live_option_of_the_postprocessor(perceptor, frames):
    # (what it drops is tested on constructed outputs in test_hcq_model.py: the tiny detector's boxes never overlap)
    perceptor.reset()
    before = [p.box for p in perceptor.process(frames[1], stamp_ns=1).persons]
    perceptor.set_runtime_options(nms_iou=0.5)
    try:
        assert perceptor.postprocess.nms_iou == 0.5
        perceptor.reset()
        after = [p.box for p in perceptor.process(frames[1], stamp_ns=1).persons]
        np.testing.assert_array_equal(np.stack(before), np.stack(after))
        with pytest.raises(ValueError, match="nms_iou must be in"):
            perceptor.set_runtime_options(nms_iou=0.0)
    finally:
        perceptor.set_runtime_options(nms_iou=1.0)
    assert perceptor.postprocess.nms_iou == 1.0


def test_same_input_gives_the_same_output(model_dir, frames, perceptor):
    other = Perceptor(tiny_config(model_dir))  # its own models, loaded again
    one = Perceptor(tiny_config(model_dir), detector=perceptor.detector, person_net=perceptor.person_net)
    for k, image in enumerate(frames):  # fresh trackers on both sides: ids count from 1 (they are never reused)
        a, b = one.process(image, stamp_ns=k + 1), other.process(image, stamp_ns=k + 1)
        assert [p.track_id for p in a.persons] == [p.track_id for p in b.persons]
        for pa, pb in zip(a.persons, b.persons):
            np.testing.assert_array_equal(pa.box, pb.box)
            np.testing.assert_array_equal(pa.embedding, pb.embedding)
            np.testing.assert_array_equal(pa.parts, pb.parts)
    other.close()


def test_config_errors_name_the_setting(model_dir):
    with pytest.raises(ValueError, match="unknown perceptor settings"):
        PerceptorConfig.from_dict({"score_treshold": 0.3})
    with pytest.raises(ValueError, match="input_size"):
        tiny_config(model_dir, input_size=(60, 64))
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Perceptor(tiny_config(model_dir, detector_model=str(model_dir / "missing.pt")))


def test_static_export_size_must_match_input_size(model_dir, perceptor):
    class StaticDetector:  # what an ONNX / TensorRT export reports: a fixed [1, 3, H, W] input
        input_shapes = {"images": (1, 3, 64, 96)}

    with pytest.raises(ValueError, match="takes 96x64 images but input_size is 64x64"):
        Perceptor(tiny_config(model_dir), detector=StaticDetector(), person_net=perceptor.person_net)
    ok = Perceptor(tiny_config(model_dir, input_size=(96, 64)), detector=StaticDetector(),
                   person_net=perceptor.person_net)
    assert ok.config.input_size == (96, 64)


def test_pose_source_crop_maps_personnet_joints_back_to_the_image(perceptor, frames):
    from hcq_ros.data.crops import keypoints_to_image

    perceptor.reset()
    det = perceptor.detect(frames[2], stamp_ns=1)
    person_out = perceptor._run_person_net(det.image, det.boxes, {})
    expected = keypoints_to_image(person_out["keypoints"], person_out["_affines"], perceptor.crop_size)
    try:
        perceptor.set_runtime_options(pose_source="crop")
        out = perceptor.describe(det)
        got = np.stack([p.keypoints for p in out.persons])
        np.testing.assert_allclose(got[..., :2], expected[:len(got)], atol=1e-4)
        np.testing.assert_allclose(got[..., 2], person_out["keypoint_conf"][:len(got)], atol=1e-6)
        assert not np.allclose(got, det.keypoints[:len(got)])   # not the detector's joints
        perceptor.set_runtime_options(enable_person_net=False)   # no crops: the detector's joints
        perceptor.reset()
        alone = perceptor.describe(perceptor.detect(frames[2], stamp_ns=1))
        np.testing.assert_array_equal(np.stack([p.keypoints for p in alone.persons]), det.keypoints[:len(got)])
    finally:
        perceptor.set_runtime_options(pose_source="detector", enable_person_net=True)
    with pytest.raises(ValueError, match="pose_source"):
        perceptor.set_runtime_options(pose_source="heatmap")

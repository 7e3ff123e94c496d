"""SynthHumans generator: determinism, ground-truth invariants, occlusion rules, sequences and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hcq_ros.data.schema import ATTRIBUTES, COLORS, NUM_PARTS, PART_NAMES, attributes_to_indices
from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_image, generate_sequence
from hcq_ros.data.synth.appearance import COLOR_PROTOTYPES, color_sample, sample_identity
from hcq_ros.data.synth.background import object_prims
from hcq_ros.data.synth.camera import Camera
from hcq_ros.data.synth.render import PlacedPerson, render_scene
from hcq_ros.data.synth.skeleton import POSE_KINDS, forward_kinematics, place, random_pose

LIGHT = np.array([0.3, 0.8, 0.52]) / np.linalg.norm([0.3, 0.8, 0.52])


@pytest.fixture(scope="module")
def batch():
    cfg = SceneConfig()
    return [generate_image(np.random.default_rng([7, i]), cfg, image_id=i + 1) for i in range(24)]


def _same_sample(a, b):
    assert np.array_equal(a.image, b.image) and np.array_equal(a.parts, b.parts)
    assert len(a.persons) == len(b.persons)
    for p, q in zip(a.persons, b.persons):
        assert np.array_equal(p.box, q.box) and np.array_equal(p.keypoints, q.keypoints)
        assert np.array_equal(p.mask, q.mask) and p.attributes == q.attributes


def test_same_seed_same_bytes_and_seeds_differ():
    cfg = SceneConfig(width=160, height=128)
    a, b = generate_image(123, cfg), generate_image(123, cfg)
    _same_sample(a, b)
    c = generate_image(np.random.default_rng(123), cfg)
    _same_sample(a, c)
    assert not np.array_equal(a.image, generate_image(124, cfg).image)


def test_every_sample_invariant(batch):
    people = 0
    for s in batch:
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and s.parts.dtype == np.uint8 and s.parts.max() < NUM_PARTS
        union = np.zeros((h, w), dtype=np.int32)
        for p in s.persons:
            people += 1
            m = p.mask
            assert m.shape == (h, w) and m.sum() >= SceneConfig().min_visible_area
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert p.box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]       # tight xyxy
            kp = p.keypoints
            assert set(np.unique(kp[:, 2])) <= {0.0, 1.0, 2.0}
            assert np.all(kp[kp[:, 2] == 0, :2] == 0)
            labelled = kp[kp[:, 2] > 0]
            assert np.all((labelled[:, 0] >= 0) & (labelled[:, 0] < w) & (labelled[:, 1] >= 0) & (labelled[:, 1] < h))
            for x, y, _ in kp[kp[:, 2] == 2]:
                assert m[int(y), int(x)], "a visible keypoint must lie on its person's mask"
            assert set(p.attributes) == set(ATTRIBUTES)
            attributes_to_indices(p.attributes)
            assert p.identity == -1 and p.track_id == -1
            union += m
        assert union.max() <= 1, "instance masks overlap"
        assert np.all(s.parts[union == 0] == 0) and np.all(s.parts[union == 1] > 0)
    assert people > 50


def test_scale_range_has_small_and_large_people(batch):
    heights = np.array([p.box[3] - p.box[1] for s in batch for p in s.persons])
    areas = np.array([p.area for s in batch for p in s.persons])
    assert (areas < 32 ** 2).sum() >= 10                 # COCO "small"
    assert (areas > 96 ** 2).sum() >= 2                  # COCO "large"
    assert heights.min() < 20 and heights.max() > 150


def test_occlusion_and_truncation_happen(batch):
    occluded = sum(int((p.keypoints[:, 2] == 1).sum()) for s in batch for p in s.persons)
    truncated = sum(1 for s in batch for p in s.persons
                    if p.box[0] == 0 or p.box[1] == 0 or p.box[2] == s.image.shape[1] or p.box[3] == s.image.shape[0])
    assert occluded > 100 and truncated >= 3
    assert sum(len(s.persons) for s in batch if len(s.persons) >= 5) > 0


@pytest.mark.parametrize("size", [(320, 320), (384, 256), (200, 512)])
def test_any_image_size(size):
    s = generate_image(5, SceneConfig(width=size[0], height=size[1], max_people=4))
    assert s.image.shape == (size[1], size[0], 3) and s.parts.shape == (size[1], size[0])


def _render_one(kind: str, facing_camera: bool, seed: int = 0, scenery_fn=None):
    """One person at 3 m, seen at chest height from the front or from behind; returns (annotation, camera)."""
    rng = np.random.default_rng(seed)
    ident = sample_identity(rng, 1)
    cam = Camera.look(160, 240, 45.0, 1.2, 0.0, 0.05)
    joints, frames = forward_kinematics(ident.body, random_pose(rng, kind))
    joints, frames = place(joints, frames, (0.0, 3.0), math.pi if facing_camera else 0.0)
    scenery = scenery_fn(cam) if scenery_fn else []
    canvas = np.full((240, 160, 3), 128, np.uint8)
    _, persons, parts = render_scene(canvas, [PlacedPerson(ident, joints, frames)], scenery, cam, LIGHT)
    assert len(persons) == 1
    return persons[0], parts


def test_self_occlusion_rules():
    front, _ = _render_one("arms_crossed", facing_camera=True)
    back, _ = _render_one("arms_crossed", facing_camera=False)
    wrists, face = [9, 10], [0, 1, 2]
    assert np.all(front.keypoints[wrists, 2] == 2) and np.all(front.keypoints[face, 2] == 2)
    assert np.all(back.keypoints[wrists, 2] == 1), "wrists behind the torso are occluded"
    assert np.all(back.keypoints[face, 2] == 1), "nose and eyes are hidden from behind"
    assert np.all(back.keypoints[[5, 6, 11, 12, 15, 16], 2] == 2)


def test_left_is_the_persons_own_left():
    front, _ = _render_one("standing", facing_camera=True)
    back, _ = _render_one("standing", facing_camera=False)
    for a, b in ((5, 6), (1, 2), (11, 12)):           # shoulders, eyes, hips
        assert front.keypoints[a, 0] > front.keypoints[b, 0]      # facing us: their left is our right
    assert back.keypoints[5, 0] < back.keypoints[6, 0]


def test_foreground_object_hides_legs():
    def crate(cam):          # >= 0.4 m tall, 0.6 m in front of the person: the camera cannot see the ankles
        return object_prims(np.random.default_rng(3), cam, np.array([0.0, 2.4]), LIGHT, kind="crate")

    free, _ = _render_one("standing", True)
    hidden, parts = _render_one("standing", True, scenery_fn=crate)
    assert 0 < hidden.mask.sum() < free.mask.sum()
    assert np.all(hidden.keypoints[[15, 16], 2] == 1)              # ankles behind the crate
    assert np.all(free.keypoints[[15, 16], 2] == 2)
    assert np.all(parts[~hidden.mask] == 0)
    with pytest.raises(ValueError, match="object kind"):
        object_prims(np.random.default_rng(0), Camera.look(64, 64, 45.0, 1.2, 0.0, 0.05), np.zeros(2), LIGHT,
                     kind="car")


def test_part_labels_follow_clothing():
    lip = {name: i for i, name in enumerate(PART_NAMES)}
    person, parts = _render_one("standing", True, seed=4)
    labels = set(np.unique(parts[person.mask]).tolist())
    assert {lip["face"], lip["hair"], lip["upper_clothes"], lip["left_shoe"], lip["right_shoe"]} <= labels
    assert lip["left_hand"] in labels or lip["right_hand"] in labels


def test_all_pose_kinds_keep_feet_on_ground_and_bones_rigid():
    rng = np.random.default_rng(0)
    for kind in POSE_KINDS:
        ident = sample_identity(rng)
        joints, _ = forward_kinematics(ident.body, random_pose(rng, kind))
        b = ident.body
        assert abs(np.linalg.norm(joints[7] - joints[5]) - b.upper_arm) < 1e-9       # left shoulder->elbow
        assert abs(np.linalg.norm(joints[17] - joints[15]) - b.shin) < 1e-9          # left knee->ankle
        lowest = joints[[17, 18, 19, 20], 1].min()
        assert kind == "running" or abs(lowest - 0.6 * b.ankle_height) < 1e-9
    with pytest.raises(ValueError, match="pose kind"):
        random_pose(rng, "flying")


def test_colour_prototypes_are_separable():
    rng = np.random.default_rng(0)
    names = list(COLOR_PROTOTYPES)
    protos = np.array([COLOR_PROTOTYPES[n][0] for n in names], dtype=float)
    assert tuple(names) == COLORS
    for name in names:
        for _ in range(50):
            c = np.array(color_sample(name, rng), dtype=float)
            assert names[int(np.argmin(((protos - c) ** 2).sum(1)))] == name


def test_rendered_garment_colours_are_recoverable(batch):
    """A crude nearest-prototype classifier on the median garment colour already gets most right."""
    names = list(COLOR_PROTOTYPES)
    protos = np.array([COLOR_PROTOTYPES[n][0] for n in names], dtype=float)
    lower = PART_NAMES.index("lower_clothes")
    hits = total = 0
    for s in batch:
        for p in s.persons:
            sel = p.mask & (s.parts == lower)
            if sel.sum() >= 60:
                median = np.median(s.image[sel].astype(float), 0)
                hits += names[int(np.argmin(((protos - median) ** 2).sum(1)))] == p.attributes["lower_color"]
                total += 1
    assert total >= 20 and hits / total >= 0.8


def test_identity_pool_is_deterministic_and_validates():
    a, b = IdentityPool(10, seed=3), IdentityPool(10, seed=3)
    assert a.get(4) == b.get(4) and a.get(4) != a.get(5) and a.ids == list(range(1, 11))
    with pytest.raises(ValueError, match="outside the pool"):
        a.get(0)
    with pytest.raises(ValueError):
        IdentityPool(0)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="width/height"):
        SceneConfig(width=10)
    with pytest.raises(ValueError, match="min_people"):
        SceneConfig(min_people=5, max_people=2)
    with pytest.raises(ValueError, match="pose_kinds"):
        SceneConfig(pose_kinds=("dancing",))
    with pytest.raises(ValueError, match="Generator or an integer"):
        generate_image("seed", SceneConfig())


@pytest.fixture(scope="module")
def sequences():
    pool = IdentityPool(6, seed=1)
    cfg = SceneConfig(width=192, height=160, max_people=5)
    return {cam: list(generate_sequence(11, cfg, 24, cam, pool, f"S{cam}", identities=[1, 2, 3, 4, 5, 6]))
            for cam in (1, 2)}


def test_sequences_track_ids_identities_and_motion(sequences):
    for cam, frames in sequences.items():
        assert [s.frame for s in frames] == list(range(1, 25))
        assert all(s.camera == cam and s.sequence == f"S{cam}" for s in frames)
        track_identity: dict[int, int] = {}
        centres: dict[int, list[tuple[int, float, float]]] = {}
        for s in frames:
            ids = [p.track_id for p in s.persons]
            assert len(ids) == len(set(ids)) and min(ids, default=1) >= 1
            for p in s.persons:
                assert track_identity.setdefault(p.track_id, p.identity) == p.identity
                centres.setdefault(p.track_id, []).append((s.frame, *p.keypoints[[11, 12], :2].mean(0)))
        # Smooth motion: hip centres move a few pixels per frame at most (25 fps, <= 4 m/s).
        for track in centres.values():
            for (f0, x0, y0), (f1, x1, y1) in zip(track, track[1:]):
                if f1 == f0 + 1 and x0 and x1:
                    assert math.hypot(x1 - x0, y1 - y0) < 15
    shown = [{p.identity for s in frames for p in s.persons} for frames in sequences.values()]
    assert len(shown[0] & shown[1]) >= 2, "identities must re-appear under another camera"


def test_sequence_is_deterministic(sequences):
    pool = IdentityPool(6, seed=1)
    cfg = SceneConfig(width=192, height=160, max_people=5)
    again = generate_sequence(11, cfg, 3, 1, pool, "S1", identities=[1, 2, 3, 4, 5, 6])
    for a, b in zip(sequences[1][:3], again):
        _same_sample(a, b)
        assert [p.track_id for p in a.persons] == [p.track_id for p in b.persons]


def test_cli_end_to_end(tmp_path, capsys):
    from hcq_ros import cli
    from hcq_ros.data.formats.coco import CocoPersonDataset
    from hcq_ros.data.formats.market import read_market
    from hcq_ros.data.formats.mot import read_mot_sequence

    out = tmp_path / "synth"
    code = cli.main(["synth", "--out", str(out), "--images", "3", "--sequences", "2", "--frames", "12",
                     "--identities", "6", "--size", "160", "--crop-every", "2", "--seed", "2", "--no-progress",
                     "--json", str(tmp_path / "summary.json")])
    assert code == 0
    assert "persons" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total_images"] == 3 + 2 * 12 and summary["images_per_s"] > 0
    for rel in ("images/000001.jpg", "parts/000003.png", "mot/SYNTH-01/img1/000012.jpg", "mot/SYNTH-02/gt/gt.txt",
                "mot/SYNTH-02/seqinfo.ini", "parts/SYNTH-01/000001.png", "market/attributes.json"):
        assert (out / rel).is_file(), rel
    data = json.loads((out / "annotations" / "person_keypoints.json").read_text())
    files = [im["file_name"] for im in data["images"]]
    assert files[0] == "images/000001.jpg" and files[3] == "mot/SYNTH-01/img1/000001.jpg"
    assert all({"track_id", "identity", "attributes"} <= set(a) for a in data["annotations"])
    ds = CocoPersonDataset(out / "annotations" / "person_keypoints.json", out)
    assert len(ds) == 27
    sample = ds[5]
    assert sample.sequence == "SYNTH-01" and sample.frame == 3 and sample.parts is not None
    assert read_mot_sequence(out / "mot" / "SYNTH-01").length == 12
    crops = {split: read_market(out / "market", split) for split in ("train", "query", "test")}
    assert sum(len(v) for v in crops.values()) == sum(summary["market"][k] for k in ("train", "query", "test"))
    assert all(item.attributes for items in crops.values() for item in items)
    if crops["query"]:
        test_ids = {i.identity for i in crops["query"]}
        assert not test_ids & {i.identity for i in crops["train"]}


def test_cli_bench_and_bad_arguments(capsys):
    from hcq_ros import cli

    assert cli.main(["synth", "--bench", "--images", "2", "--size", "128"]) == 0
    assert "images/s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--out"):
        cli.main(["synth", "--images", "2"])
    with pytest.raises(ValueError, match="nothing to generate"):
        cli.main(["synth", "--out", "/tmp/unused-synth-dir"])

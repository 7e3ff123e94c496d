"""Format readers/writers: round trips of hand-built Samples, real-layout fixtures, bad-input errors."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from hcq_ros.data.formats import (CocoPersonDataset, CocoWriter, LipDataset, LipWriter, MarketWriter, MotWriter,
                                  MpiiDataset, MpiiWriter, coco_to_mpii, mpii_to_coco, read_market,
                                  read_market_attributes, read_mot_sequence)
from hcq_ros.data.formats.lip import LIP_PARTS, lip_to_parts, parts_to_lip
from hcq_ros.data.formats.mpii import MPII_JOINTS
from hcq_ros.data.schema import KEYPOINT_NAMES, PART_NAMES, PersonAnnotation, Sample

KP = KEYPOINT_NAMES.index
PART = PART_NAMES.index


def make_person(x0: int, y0: int, w: int, h: int, size=(64, 48), **kw) -> PersonAnnotation:
    """A rectangle person with labelled limb joints at pixel centres inside it (nose included)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    kps = np.zeros((17, 3), np.float32)
    for name, fx, fy, v in [("nose", .5, .1, 2), ("left_shoulder", .8, .25, 2), ("right_shoulder", .2, .25, 1),
                            ("left_elbow", .85, .4, 2), ("right_wrist", .1, .5, 2), ("left_hip", .7, .55, 2),
                            ("right_hip", .3, .55, 2), ("left_knee", .7, .75, 1), ("right_ankle", .3, .95, 2)]:
        kps[KP(name)] = (x0 + int(fx * w) + 0.5, y0 + int(fy * h) + 0.5, v)
    return PersonAnnotation(box=[x0, y0, x0 + w, y0 + h], mask=mask, keypoints=kps, **kw)


def make_sample(seed: int = 0, size=(64, 48)) -> Sample:
    width, height = size
    a = make_person(4, 6, 20, 36, size, identity=7, track_id=1,
                    attributes={"upper_color": "red", "lower_type": "skirt", "hat": "no"})
    b = make_person(34, 4, 22, 40, size, identity=9, track_id=2, attributes={"upper_color": "blue"})
    parts = np.zeros((height, width), np.uint8)
    for p in (a, b):
        x0, y0, x1, y1 = p.box.astype(int)
        ym = (y0 + y1) // 2
        parts[y0:ym, x0:x1] = PART("upper_clothes")
        parts[ym:y1, x0:x1] = PART("lower_clothes")
        parts[y0:y0 + 4, x0:x1] = PART("hair")
        parts[y0 + 4:ym, x0:x0 + 3] = PART("right_arm")
        parts[y0 + 4:ym, x1 - 3:x1] = PART("left_arm")
        parts[y1 - 3:y1, x0:(x0 + x1) // 2] = PART("right_shoe")
    # smooth colours (JPEG-friendly) with distinct channels, so an RGB/BGR swap would show
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 3 + seed, ys * 4, np.full_like(xs, 200)], axis=-1).astype(np.uint8)
    return Sample(image=image, persons=[a, b], parts=parts, sequence="seq01", camera=2, frame=5)


def assert_same_person(got: PersonAnnotation, want: PersonAnnotation, masks=True):
    np.testing.assert_allclose(got.box, want.box, atol=0.01)
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=0.01)
    if masks:
        np.testing.assert_array_equal(got.mask, want.mask)


# ---------------------------------------------------------------- COCO
def test_coco_round_trip(tmp_path):
    s1, s2 = make_sample(0), make_sample(1)
    s2.persons[1] = PersonAnnotation(box=[30, 10, 50, 30], mask=None, keypoints=np.zeros((17, 3)), iscrowd=0)
    with CocoWriter(tmp_path) as writer:
        id1 = writer.add(s1, "images/a.png", "parts/a.png")
        id2 = writer.add(s2, "images/b.jpg", None)
    ds = CocoPersonDataset(tmp_path / "annotations" / "person_keypoints.json", tmp_path)
    assert (id1, id2) == (1, 2) and ds.image_ids == [1, 2] and len(ds) == 2
    r1, r2 = ds[0], ds[1]
    np.testing.assert_array_equal(r1.image, s1.image)  # png: lossless, RGB order kept
    assert np.abs(r2.image.astype(int) - s2.image).mean() < 3  # jpg: lossy, same colours
    np.testing.assert_array_equal(r1.parts, s1.parts)
    assert r2.parts is None
    for got, want in zip(r1.persons, s1.persons):
        assert_same_person(got, want)
        assert (got.identity, got.track_id, got.attributes) == (want.identity, want.track_id, want.attributes)
    assert r2.persons[1].mask is None
    np.testing.assert_allclose(r2.persons[1].box, [30, 10, 50, 30])
    assert (r1.sequence, r1.camera, r1.frame, r1.file_name) == ("seq01", 2, 5, "images/a.png")
    data = json.loads((tmp_path / "annotations" / "person_keypoints.json").read_text())
    assert data["categories"][0]["keypoints"] == list(KEYPOINT_NAMES)
    first = data["annotations"][0]
    assert first["num_keypoints"] == 9 and isinstance(first["segmentation"]["counts"], str)
    assert first["area"] == s1.persons[0].mask.sum()
    assert ds.coco.getAnnIds(imgIds=[1]) == [1, 2]  # the pycocotools object is indexed


def test_coco_export_scores_perfectly_in_cocoeval(tmp_path):
    """The written json is real COCO: ground truth submitted as results gives AP 1 for keypoints and masks."""
    from pycocotools.cocoeval import COCOeval
    with CocoWriter(tmp_path) as writer:
        for seed in range(3):
            writer.add(make_sample(seed), f"images/{seed}.jpg", None, write_image=False)
    ds = CocoPersonDataset(tmp_path / "annotations" / "person_keypoints.json", tmp_path)
    results = [dict(ann, score=1.0) for ann in ds.coco.dataset["annotations"]]
    for iou_type in ("keypoints", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(ds.coco, ds.coco.loadRes(copy.deepcopy(results)), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0), iou_type


def _write_gray_jpg(path: Path, width: int, height: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), 90, np.uint8))


def test_coco_real_layout_fixture(tmp_path):
    """instances-style json: polygons, crowd uncompressed RLE, num_keypoints 0, other class, messy entries."""
    _write_gray_jpg(tmp_path / "val2017" / "000000000001.jpg", 40, 30)
    kps = [0] * 51
    kps[5 * 3:5 * 3 + 3] = [12, 8, 2]  # left_shoulder
    crowd_counts = [30 * 20, 30 * 10, 30 * 10]  # column-major: 20 empty columns, 10 full, 10 empty
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 5, 10, 20], "area": 200,
         "segmentation": [[10, 5, 20, 5, 20, 25, 10, 25], [1, 1, 2, 2]], "keypoints": kps, "num_keypoints": 1},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 5, 5], "area": 25,
         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]], "keypoints": [0] * 51, "num_keypoints": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [20, 0, 10, 30], "area": 300,
         "segmentation": {"counts": crowd_counts, "size": [30, 40]}, "keypoints": [0] * 51, "num_keypoints": 0},
        {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [3, 3, 0.5, 9], "area": 1,
         "segmentation": [[3, 3, 3.5, 3, 3.5, 12]], "keypoints": [0] * 51, "num_keypoints": 0},
        {"id": 5, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 9, 9], "area": 81,
         "segmentation": [[0, 0, 9, 0, 9, 9]]},
    ]
    ann_file = tmp_path / "annotations" / "instances_val2017.json"
    ann_file.parent.mkdir()
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "000000000002.jpg", "width": 40, "height": 30}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    ds = CocoPersonDataset(ann_file, tmp_path / "val2017", skip_empty=True)
    assert ds.image_ids == [1]  # image 2 has no person
    sample = ds[0]
    assert sample.parts is None and sample.image.shape == (30, 40, 3)
    assert [p.iscrowd for p in sample.persons] == [0, 0, 1]  # degenerate box and the car are gone
    assert ds.skipped == {"degenerate_box": 1, "bad_polygon": 1}
    person, empty_kps, crowd = sample.persons
    assert abs(int(person.mask.sum()) - 200) <= 30 and person.mask[15, 15] and not person.mask[15, 25]
    np.testing.assert_array_equal(person.keypoints[5], [12, 8, 2])
    assert empty_kps.keypoints.sum() == 0 and empty_kps.mask.any()  # kept for its box and mask
    assert crowd.mask[:, 20:30].all() and not crowd.mask[:, :20].any()
    assert len(CocoPersonDataset(ann_file, tmp_path / "val2017", include_crowd=False)[0].persons) == 2


def test_coco_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoPersonDataset(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"bad\.json: invalid JSON"):
        CocoPersonDataset(bad, tmp_path)
    ann = {"images": [{"id": 1, "file_name": "missing.jpg", "width": 8, "height": 8, "parts_file": "p.png"}],
           "annotations": [{"id": 42, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "keypoints": [0] * 50}],
           "categories": [{"id": 1, "name": "person"}]}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="annotation id 42.*50 keypoint values"):
        CocoPersonDataset(wrong, tmp_path)
    ann["annotations"][0]["keypoints"] = [0] * 51
    wrong.write_text(json.dumps(ann))
    ds = CocoPersonDataset(wrong, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        ds[0]
    cv2.imwrite(str(tmp_path / "missing.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"p\.png: unreadable PNG"):
        ds[0]


# ---------------------------------------------------------------- MOT
def test_mot_round_trip(tmp_path):
    seq = tmp_path / "SYN-01"
    with MotWriter(seq, "SYN-01", fps=25, width=64, height=48) as writer:
        for frame in (1, 2, 3):
            sample = make_sample(frame)
            writer.add(frame, sample.image if frame < 3 else None, sample.persons)
    mot = read_mot_sequence(seq)
    assert (mot.name, mot.fps, mot.size, mot.length) == ("SYN-01", 25.0, (64, 48), 3)
    assert mot.frames[0] == seq / "img1" / "000001.jpg" and mot.read_frame(2).shape == (48, 64, 3)
    assert len(mot.gt) == 6 and list(mot.track_ids) == [1, 2]
    got = mot.frame_annotations(2)
    want = make_sample(2).persons
    assert [p.track_id for p in got] == [1, 2] and got[0].mask is None
    np.testing.assert_allclose([p.box for p in got], [p.box for p in want])
    # visibility stand-in: 7 of 9 labelled keypoints are visible
    np.testing.assert_allclose(mot.gt["vis"][0], 7 / 9, atol=1e-3)
    with pytest.raises(ValueError, match="no track id"):
        MotWriter(seq, "x", 25, 64, 48).add(1, None, [make_person(0, 0, 4, 4)])


def _seqinfo(seq: Path, name: str, length: int):
    seq.mkdir(parents=True, exist_ok=True)
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={length}\n"
                                     "imWidth=1920\nimHeight=1080\nimExt=.jpg\n")


def test_mot17_and_mot15_gt_fixtures(tmp_path):
    seq = tmp_path / "MOT17-02-FRCNN"
    _seqinfo(seq, "MOT17-02-FRCNN", 600)
    (seq / "gt").mkdir()
    (seq / "gt" / "gt.txt").write_text(
        "2,1,912,484,97,109,0,7,1\n"        # static person, not considered
        "1,2,1338,418,167,379,1,1,0.86\n"   # pedestrian
        "1,1,-3,200,50,100,1,1,0.2\n"       # pedestrian partly outside the image (kept as is)
        "1,3,100,100,40,40,1,2,1\n"         # person on vehicle
        "2,2,1340,418,167,379,0,1,1\n")     # pedestrian flagged ignore
    mot = read_mot_sequence(seq)
    assert mot.length == 600 and mot.size == (1920, 1080)
    assert mot.dropped == {"ignored": 2, "non_pedestrian": 1}
    assert mot.gt[["frame", "id"]].tolist() == [(1, 1), (1, 2)]
    np.testing.assert_allclose(mot.frame_annotations(1)[0].box, [-3, 200, 47, 300])
    assert mot.frame_annotations(2) == []
    assert len(read_mot_sequence(seq, pedestrians_only=False).gt) == 3
    assert len(read_mot_sequence(seq, min_visibility=0.5).gt) == 1
    mot15 = tmp_path / "PETS09-S2L1"
    _seqinfo(mot15, "PETS09-S2L1", 795)
    (mot15 / "gt").mkdir()
    (mot15 / "gt" / "gt.txt").write_text("1,1,533,110,31,80,1,-1,-1,-1\n1,2,600,100,30,80,1,-1,-1,-1\n")
    assert len(read_mot_sequence(mot15).gt) == 2
    test_seq = tmp_path / "MOT17-01"
    _seqinfo(test_seq, "MOT17-01", 450)
    assert len(read_mot_sequence(test_seq).gt) == 0
    with pytest.raises(FileNotFoundError, match="seqinfo.ini"):
        read_mot_sequence(tmp_path / "nothing")
    (seq / "gt" / "gt.txt").write_text("1,2,x,418\n")
    with pytest.raises(ValueError, match="gt.txt: malformed"):
        read_mot_sequence(seq)


# ---------------------------------------------------------------- Market-1501
def test_market_round_trip(tmp_path):
    crop = np.full((32, 16, 3), (200, 30, 30), np.uint8)
    with MarketWriter(tmp_path) as writer:
        path = writer.add(crop, identity=12, camera=3, frame=451, k=1, split="train")
        writer.add(crop, identity=12, camera=1, frame=9, k=0, split="query")
        writer.add(crop, identity=5, camera=2, frame=10, k=0, split="train")
        writer.set_attributes(12, {"upper_color": "red", "hat": "yes"})
        with pytest.raises(ValueError, match="not in"):
            writer.set_attributes(5, {"hat": "maybe"})
    assert path.name == "0012_c3s1_000451_01.jpg" and path.parent.name == "bounding_box_train"
    items = read_market(tmp_path, "train")
    assert [(i.identity, i.camera, i.frame, i.k) for i in items] == [(5, 2, 10, 0), (12, 3, 451, 1)]
    assert items[1].attributes == {"upper_color": "red", "hat": "yes"} and items[0].attributes == {}
    assert [i.identity for i in read_market(tmp_path, "query")] == [12]


def test_market_real_names_and_attribute_mat(tmp_path):
    test_dir = tmp_path / "bounding_box_test"
    test_dir.mkdir()
    for name in ["0002_c1s1_000451_03.jpg", "0000_c2s1_000002_01.jpg", "-1_c1s1_000401_03.jpg",
                 "0007_c6s4_002202_02.jpg", "Thumbs.db"]:
        (test_dir / name).write_bytes(b"")
    skipped: dict = {}
    items = read_market(tmp_path, "test", skipped=skipped)
    assert [(i.identity, i.camera, i.sequence) for i in items] == [(0, 2, 1), (2, 1, 1), (7, 6, 4)]
    assert skipped == {"junk": 1, "unparsed": 1, "distractor": 0}
    assert [i.identity for i in read_market(tmp_path, "test", keep_distractors=False)] == [2, 7]

    # market_attribute.mat in the real structure: struct of 1 x N arrays + image_index cell; 1 = no, 2 = yes
    def split_struct(ids, rows):
        fields = {name: np.array([[float(r[name]) for r in rows]]) for name in rows[0]}
        fields["image_index"] = np.array(ids, dtype=object)
        return fields
    base = {n: 1 for n in ["age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender"]
            + ["up" + c for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")]
            + ["down" + c for c in ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")]}
    p2 = dict(base, age=3, backpack=2, clothes=2, down=2, up=2, hair=2, upred=2, downblue=2)
    p7 = dict(base, age=1, bag=2, clothes=1, hat=2, upblack=2, upwhite=2)  # two upper colours: ambiguous
    p1 = dict(base, age=2, clothes=2, down=1, upgreen=2, downbrown=2)
    scipy.io.savemat(str(tmp_path / "market_attribute.mat"), {"market_attribute": {
        "test": split_struct(["0002", "0007"], [p2, p7]), "train": split_struct(["0001"], [p1])}})
    attrs = read_market_attributes(tmp_path)
    assert attrs[2] == {"hat": "no", "backpack": "yes", "handbag": "no", "sleeve": "short", "hair": "long",
                        "lower_type": "shorts", "age": "adult", "upper_color": "red", "lower_color": "blue"}
    assert attrs[7] == {"hat": "yes", "backpack": "no", "handbag": "yes", "sleeve": "long", "hair": "short",
                        "lower_type": "skirt", "age": "child"}
    assert attrs[1]["lower_type"] == "trousers" and "age" not in attrs[1] and attrs[1]["lower_color"] == "brown"
    by_id = {i.identity: i for i in read_market(tmp_path, "test")}
    assert by_id[2].attributes["upper_color"] == "red" and by_id[0].attributes == {}


# ---------------------------------------------------------------- LIP
def test_lip_round_trip(tmp_path):
    sample = make_sample(3)
    sample.persons = sample.persons[1:]  # LIP holds one person: person b, trousers-wearer
    sample.parts[:, :30] = 0
    with LipWriter(tmp_path, "train") as writer:
        stem = writer.add(sample, name="10_123")
    assert (tmp_path / "TrainVal_images" / "train_id.txt").read_text() == "10_123\n"
    ds = LipDataset(tmp_path, "train")
    assert ds.names == ["10_123"] and stem == "10_123"
    got = ds[0]
    np.testing.assert_array_equal(got.parts, sample.parts)
    want = sample.persons[0]
    np.testing.assert_array_equal(got.persons[0].mask, sample.parts > 0)
    np.testing.assert_allclose(got.persons[0].box, [34, 4, 56, 44])
    limbs = [KP(n) for n in KEYPOINT_NAMES[5:]]
    np.testing.assert_allclose(got.persons[0].keypoints[limbs], want.keypoints[limbs], atol=0.01)
    assert not got.persons[0].keypoints[:5].any()  # LIP has no face points
    # lower clothes become LIP Skirt inside skirt wearers (person a), Pants elsewhere
    full = make_sample(3)
    lip = parts_to_lip(full.parts, full.persons)
    assert lip[35, 10] == LIP_PARTS.index("Skirt") and lip[35, 40] == LIP_PARTS.index("Pants")
    assert lip_to_parts(lip)[35, 10] == PART("lower_clothes")


def test_lip_real_layout_fixture(tmp_path):
    images = tmp_path / "TrainVal_images" / "TrainVal_images" / "val_images"
    parsing = tmp_path / "TrainVal_parsing_annotations" / "TrainVal_parsing_annotations" / "val_segmentations"
    images.mkdir(parents=True)
    parsing.mkdir(parents=True)
    for stem in ("100034_483681", "100050_452373"):
        cv2.imwrite(str(images / f"{stem}.jpg"), np.zeros((40, 30, 3), np.uint8))
    lip = np.zeros((40, 30), np.uint8)
    lip[5:20, 2:6] = LIP_PARTS.index("Right-arm")
    lip[5:20, 24:28] = LIP_PARTS.index("Left-arm")
    lip[20:23, 2:6] = lip[20:23, 24:28] = LIP_PARTS.index("Glove")
    lip[5:20, 8:22] = LIP_PARTS.index("Dress")
    lip[25:35, 8:12] = LIP_PARTS.index("Left-leg")
    lip[35:38, 8:12] = LIP_PARTS.index("Socks")
    palette = Image.fromarray(lip, mode="P")  # real parsing PNGs may be palette images
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    palette.save(parsing / "100034_483681.png")
    pose = tmp_path / "TrainVal_pose_annotations"
    pose.mkdir()
    def joint(row, name, values):
        start = 1 + 3 * MPII_JOINTS.index(name)
        row[start:start + 3] = values
    row1 = ["100034_483681.jpg"] + ["nan"] * 48
    joint(row1, "left_wrist", ["26", "21", "0"])   # visible
    joint(row1, "right_knee", ["10", "30", "1"])   # occluded
    joint(row1, "head_top", ["15", "1", "0"])      # no COCO counterpart
    row2 = ["100050_452373.jpg"] + ["nan"] * 48
    joint(row2, "right_ankle", ["50", "10", "0"])  # outside the 30-px-wide crop
    (pose / "lip_val_set.csv").write_text(",".join(row1) + "\n" + ",".join(row2) + "\n")
    ds = LipDataset(tmp_path, "val")
    first, second = ds[0], ds[1]
    parts = first.parts
    assert parts[21, 25] == PART("left_hand") and parts[21, 3] == PART("right_hand")
    assert parts[36, 10] == PART("left_leg") and parts[10, 10] == PART("upper_clothes")
    np.testing.assert_array_equal(first.persons[0].keypoints[KP("left_wrist")], [26, 21, 2])
    np.testing.assert_array_equal(first.persons[0].keypoints[KP("right_knee")], [10, 30, 1])
    assert first.persons[0].keypoints[KP("nose"), 2] == 0
    assert second.parts is None and second.persons[0].mask is None  # no parsing PNG for this one
    assert not second.persons[0].keypoints.any() and ds.skipped["joint_outside_image"] == 1
    np.testing.assert_allclose(second.persons[0].box, [0, 0, 30, 40])
    (pose / "lip_val_set.csv").write_text("100034_483681.jpg,1,2,0\n")
    with pytest.raises(ValueError, match="lip_val_set.csv: line 1"):
        LipDataset(tmp_path, "val")


def test_lip_label_mapping_sides():
    lip = np.zeros((4, 10), np.uint8)
    lip[:, 0] = LIP_PARTS.index("Glove")  # no arm anywhere: frontal-view fallback
    lip[:, 9] = LIP_PARTS.index("Glove")
    parts = lip_to_parts(lip)
    assert parts[0, 0] == PART("right_hand") and parts[0, 9] == PART("left_hand")
    assert lip_to_parts(np.full((2, 2), LIP_PARTS.index("Skirt"), np.uint8)).max() == PART("lower_clothes")


# ---------------------------------------------------------------- MPII
def test_mpii_joint_mapping():
    coco = np.zeros((17, 3), np.float32)
    coco[KP("nose")] = (50, 20, 2)
    coco[KP("left_shoulder")], coco[KP("right_shoulder")] = (60, 40, 2), (40, 40, 1)
    coco[KP("left_hip")], coco[KP("right_hip")] = (58, 80, 2), (42, 80, 2)
    coco[KP("left_wrist")] = (70, 70, 2)
    mpii = coco_to_mpii(coco)
    j = MPII_JOINTS.index
    np.testing.assert_allclose(mpii[j("thorax")], [50, 40, 1])
    np.testing.assert_allclose(mpii[j("pelvis")], [50, 80, 2])
    np.testing.assert_allclose(mpii[j("upper_neck")], [50, 30, 1])
    np.testing.assert_allclose(mpii[j("head_top")], [50, 10, 1])
    np.testing.assert_allclose(mpii[j("left_wrist")], [70, 70, 2])
    back = mpii_to_coco(mpii)
    np.testing.assert_allclose(back[5:], coco[5:])
    assert not back[:5].any()


def test_mpii_round_trip_and_real_json(tmp_path):
    sample = make_sample(4)
    with MpiiWriter(tmp_path) as writer:
        assert writer.add(sample, "000001.jpg") == 2
    got = MpiiDataset(tmp_path, "annot/train.json")[0]
    for g, w in zip(got.persons, sample.persons):
        want = w.keypoints[:, 2:] > 0
        kps = np.where(want, w.keypoints, 0.0)
        kps[:, 2] = np.where(want[:, 0], 2.0, 0.0)  # the json keeps "labelled", not "occluded"
        kps[:5] = 0.0                               # MPII has no face points
        assert_same_person(g, PersonAnnotation(box=w.box, mask=None, keypoints=kps), masks=False)
    # HRNet-style entries: 1-based coordinates, unlabelled joints at -1, no "box" field
    cv2.imwrite(str(tmp_path / "images" / "015601864.jpg"), np.zeros((100, 200, 3), np.uint8))
    joints = [[-1, -1]] * 16
    joints[MPII_JOINTS.index("right_ankle")] = [21, 81]
    vis = [0] * 16
    vis[MPII_JOINTS.index("right_ankle")] = 1
    entries = [{"image": "015601864.jpg", "center": [51, 51], "scale": 0.4, "joints": joints, "joints_vis": vis},
               {"image": "015601864.jpg", "center": [-1, -1], "scale": -1, "joints": [[-1, -1]] * 16,
                "joints_vis": [0] * 16}]
    (tmp_path / "annot" / "valid.json").write_text(json.dumps(entries))
    ds = MpiiDataset(tmp_path, "annot/valid.json")
    real = ds[0]
    assert len(real.persons) == 1 and ds.skipped["no_extent"] == 1
    np.testing.assert_allclose(real.persons[0].keypoints[KP("right_ankle")], [20, 80, 2])
    np.testing.assert_allclose(real.persons[0].box, [10, 10, 90, 90])
    entries[0]["joints"] = joints[:15]
    (tmp_path / "annot" / "valid.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"entry 0 \(image '015601864.jpg'\): expected 16 joints"):
        MpiiDataset(tmp_path, "annot/valid.json")

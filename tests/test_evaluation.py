"""hcq_ros.evaluation on a tiny hand-built dataset: GT-as-predictions scores 1.0 everywhere, corruptions
score lower, bad input fails clearly. The dataset is written here directly (not by the generator)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hcq_ros.cli import main as hcq_main
from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_KEYPOINTS
from hcq_ros.evaluation import (PartConfusion, evaluate_detections, evaluate_paths, evaluate_reid,
                                find_predictions, load_coco_gt, write_ground_truth_as_predictions)

W, H = 160, 120
RNG_SEED = 7


def _person(box_xywh, rng, labelled=True, attributes=True, ann_id=1, image_id=1, track_id=1):
    """One COCO annotation with an elliptic mask filling ``box_xywh`` and a grid of 17 keypoints."""
    x, y, w, h = box_xywh
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (int(x + w / 2), int(y + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(mask))
    bx, by, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
    kps = np.zeros((NUM_KEYPOINTS, 3))
    if labelled:
        j = np.arange(NUM_KEYPOINTS)
        kps[:, 0] = bx + bw * (0.2 + 0.6 * (j % 4) / 3)
        kps[:, 1] = by + bh * (0.1 + 0.8 * (j // 4) / 4)
        kps[:, 2] = 2
        kps[3, 2] = 1
        kps[16] = 0
    attrs = {n: str(rng.choice(ATTRIBUTES[n])) for n in ATTRIBUTE_NAMES} if attributes else {}
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [bx, by, bw, bh],
           "area": float(mask.sum()), "iscrowd": 0,
           "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")},
           "keypoints": kps.reshape(-1).tolist(), "num_keypoints": int((kps[:, 2] > 0).sum()),
           "track_id": track_id, "identity": track_id, "attributes": attrs}
    return ann, mask.astype(bool)


def _write_mot(seq_dir: Path, name: str, rows: list[tuple]) -> None:
    (seq_dir / "gt").mkdir(parents=True)
    (seq_dir / "gt" / "gt.txt").write_text("".join(",".join(str(v) for v in r) + "\n" for r in rows))
    length = max(r[0] for r in rows)
    (seq_dir / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=10\nseqLength={length}\n"
        f"imWidth={W}\nimHeight={H}\nimExt=.jpg\n")


@pytest.fixture(scope="module")
def gt_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gt")
    rng = np.random.default_rng(RNG_SEED)
    # image id -> [(box xywh, labelled keypoints, has attributes)]; image 3 has nobody.
    layout = {1: [((10, 10, 40, 80), True, True), ((80, 20, 30, 60), True, True)],
              2: [((20, 15, 44, 90), True, True), ((100, 30, 18, 36), True, True),   # small person (< 32²)
                  ((138, 50, 20, 50), False, False)],                              # no keypoints/attributes
              3: [],
              4: [((30, 20, 36, 70), True, True), ((90, 10, 40, 84), True, True)]}
    images, anns = [], []
    for image_id, persons in layout.items():
        parts_file = f"parts/s2/{image_id:06d}.png" if image_id == 4 else f"parts/{image_id:06d}.png"
        images.append({"id": image_id, "file_name": f"images/{image_id:06d}.jpg", "width": W, "height": H,
                       "sequence": "s1", "camera": 1, "frame": image_id, "parts_file": parts_file})
        parts = np.zeros((H, W), np.uint8)
        for k, (box, labelled, has_attrs) in enumerate(persons):
            ann, mask = _person(box, rng, labelled, has_attrs, len(anns) + 1, image_id, k + 1)
            anns.append(ann)
            rows = np.arange(H)[:, None] * np.ones((1, W))
            y0, h = box[1], box[3]
            parts[mask & (rows < y0 + h / 4)] = 3                          # face
            parts[mask & (rows >= y0 + h / 4) & (rows < y0 + h / 2)] = 4   # upper clothes
            parts[mask & (rows >= y0 + h / 2)] = 9 if k % 2 == 0 else 10  # lower clothes / left leg
        (root / parts_file).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / parts_file), parts)
    (root / "annotations").mkdir()
    (root / "annotations" / "person_keypoints.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}))
    # MOT: s1 has two tracks moving right (plus one ignored conf-0 row), s2 three tracks, one appearing late.
    s1 = [(f, t, 10 + 5 * f + 60 * (t - 1), 20, 30, 60, 1, 1, 1.0) for f in range(1, 7) for t in (1, 2)]
    s1.append((2, 9, 0, 0, 10, 10, 0, 1, 1.0))
    s2 = [(f, t, 5 + 4 * f + 50 * (t - 1), 30, 25, 50, 1, 1, 1.0) for f in range(1, 6) for t in (1, 2, 3)
          if not (t == 3 and f < 3)]
    _write_mot(root / "mot" / "s1", "s1", s1)
    _write_mot(root / "mot" / "s2", "s2", s2)
    # Market crops: per identity one query (cam 1) and gallery crops in cams 1 (excluded), 2 and 3.
    market = root / "market"
    names = {"query": [f"{i:04d}_c1s1_000010_00.jpg" for i in range(1, 5)],
             "bounding_box_test": [f"{i:04d}_c{c}s1_0000{c}0_00.jpg" for i in range(1, 5) for c in (1, 2, 3)]
             + ["0000_c2s1_000050_00.jpg", "-1_c3s1_000060_00.jpg"],
             "bounding_box_train": ["0007_c1s1_000001_00.jpg"]}
    for split, files in names.items():
        (market / split).mkdir(parents=True)
        for name in files:
            cv2.imwrite(str(market / split / name), rng.integers(0, 255, (16, 8, 3), dtype=np.uint8))
    identities = {f"{i:04d}": {n: str(rng.choice(ATTRIBUTES[n])) for n in ATTRIBUTE_NAMES} for i in range(1, 5)}
    (market / "attributes.json").write_text(json.dumps({"identities": identities}))
    return root


@pytest.fixture(scope="module")
def gt_preds(gt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt_preds")
    written = write_ground_truth_as_predictions(gt_dir, out)
    assert sorted(p.name for p in written) == ["detections.json", "mot", "parts", "reid.npz"]
    return out


def _copy_preds(gt_preds: Path, tmp_path: Path) -> Path:
    out = tmp_path / "pred"
    shutil.copytree(gt_preds, out)
    return out


def test_ground_truth_as_predictions_scores_one_everywhere(gt_dir, gt_preds):
    m = evaluate_paths(gt_dir, [gt_preds])
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "keypoints_AP", "keypoints_AP_nosmall", "parts_mIoU",
                "parts_pixel_acc", "attr_acc", "crop_attr_acc", "reid_mAP", "reid_rank1", "reid_rank5",
                "mot_MOTA", "mot_IDF1", "mot_MOTP"):
        assert m[key] == pytest.approx(1.0), key
    assert m["id_switches"] == 0 and m["mot_FP"] == 0 and m["mot_FN"] == 0
    assert m["attr_matched"] == 1.0
    assert m["reid_num_queries"] == 4 and m["reid_skipped_queries"] == 0
    assert m["parts_per_class"]["hat"] is None  # absent from GT and prediction: excluded from the mean
    assert set(m["mot_per_sequence"]) == {"s1", "s2"}
    assert m["mot_num_gt_ids"] == 5  # the conf-0 row of s1 is not a GT track


def test_cli_writes_json_and_detects_each_kind(gt_dir, gt_preds, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = hcq_main(["eval", "--gt", str(gt_dir), "--pred", str(gt_preds / "detections.json"),
                   "--pred", str(gt_preds / "parts"), "--pred", str(gt_preds / "reid.npz"),
                   "--pred", str(gt_preds / "mot"), "--json", str(out)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["bbox_AP"] == 1.0 and metrics["reid_rank1"] == 1.0 and metrics["parts_mIoU"] == 1.0
    assert set(metrics["inputs"]) == {"detections", "parts", "reid", "mot"}
    assert "keypoints_AP_nosmall" in capsys.readouterr().out
    # the GT part folder itself is a valid "prediction" folder of PNGs
    assert find_predictions(gt_dir / "parts") == {"parts": gt_dir / "parts"}
    assert hcq_main(["eval", "--gt", str(gt_dir), "--pred", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_corrupted_detections_score_lower(gt_dir, gt_preds):
    coco = load_coco_gt(gt_dir / "annotations" / "person_keypoints.json")
    results = json.loads((gt_preds / "detections.json").read_text())
    shifted = copy.deepcopy(results)
    for r in shifted:
        r["bbox"][0] += 0.45 * r["bbox"][2]
    m = evaluate_detections(coco, shifted)
    assert m["bbox_AP"] < 1.0 and m["segm_AP"] == pytest.approx(1.0)
    # a confident false positive on the image without persons counts
    m = evaluate_detections(coco, results + [{"image_id": 3, "category_id": 1, "bbox": [5, 5, 40, 80],
                                              "score": 2.0, "segmentation": results[0]["segmentation"],
                                              "keypoints": results[0]["keypoints"]}])
    assert m["bbox_AP"] < 1.0
    # wrong keypoints on the small person only: AP drops, the no-small protocol ignores it
    small = [r for r in results if r["image_id"] == 2 and r["bbox"][2] < 20]
    assert len(small) == 1
    bad_small = copy.deepcopy(results)
    idx = results.index(small[0])
    bad_small[idx]["keypoints"] = (np.array(small[0]["keypoints"]) + [-8, 8, 0] * NUM_KEYPOINTS).tolist()
    m = evaluate_detections(coco, bad_small)
    assert m["keypoints_AP"] < 1.0 and m["keypoints_AP_nosmall"] == pytest.approx(1.0)
    assert m["bbox_AP"] == pytest.approx(1.0)


def test_corrupted_attributes_parts_reid_mot_score_lower(gt_dir, gt_preds, tmp_path):
    pred = _copy_preds(gt_preds, tmp_path)
    results = json.loads((pred / "detections.json").read_text())
    for r in results:
        if "attributes" in r:
            values = ATTRIBUTES["hat"]
            r["attributes"]["hat"] = values[1 - values.index(r["attributes"]["hat"])]
    (pred / "detections.json").write_text(json.dumps(results))
    rng = np.random.default_rng(0)
    for png in (pred / "parts").rglob("*.png"):
        labels = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        noise = rng.random(labels.shape) < 0.2
        labels[noise] = rng.integers(0, 15, int(noise.sum()))
        cv2.imwrite(str(png), labels)
    with np.load(pred / "reid.npz") as data:
        arrays = dict(data)
    arrays["embeddings"] = np.roll(arrays["embeddings"], 1, axis=0)
    arrays["attributes"][:, ATTRIBUTE_NAMES.index("age")] = -1  # "not predicted" counts as wrong
    np.savez(pred / "reid.npz", **arrays)
    s1 = np.loadtxt(pred / "mot" / "s1.txt", delimiter=",")
    late = s1[:, 0] >= 4
    s1[late, 1] = 3 - s1[late, 1]  # swap track ids 1 <-> 2 from frame 4 on
    np.savetxt(pred / "mot" / "s1.txt", s1, delimiter=",", fmt="%g")
    m = evaluate_paths(gt_dir, [pred])
    assert m["attr_per_attribute"]["hat"] == 0.0 and m["attr_per_attribute"]["age"] == 1.0
    assert m["attr_acc"] == pytest.approx(1.0 - 1.0 / len(ATTRIBUTE_NAMES))
    assert m["crop_attr_per_attribute"]["age"] == 0.0 and m["crop_attr_acc"] < 1.0
    assert m["parts_mIoU"] < 0.9 and m["bbox_AP"] == pytest.approx(1.0)
    assert m["reid_mAP"] < 1.0 and m["reid_rank1"] < 1.0
    assert m["id_switches"] == 2 and m["mot_IDF1"] < 1.0 and m["mot_MOTA"] < 1.0
    assert m["mot_per_sequence"]["s2"]["IDF1"] == pytest.approx(1.0)


def test_empty_predictions_score_zero(gt_dir, tmp_path):
    (tmp_path / "detections.json").write_text("[]")
    (tmp_path / "mot").mkdir()
    for seq in ("s1", "s2"):
        (tmp_path / "mot" / f"{seq}.txt").write_text("")
    m = evaluate_paths(gt_dir, [tmp_path])
    for key in ("bbox_AP", "segm_AP", "keypoints_AP", "keypoints_AP_nosmall", "mot_MOTA", "mot_IDF1"):
        assert m[key] == 0.0, key
    assert m["det_num_predictions"] == 0 and m["mot_FN"] > 0


def test_reid_protocol_by_hand():
    # Gallery ranked in its own order (angles grow); the same-camera crop of the query's id is excluded.
    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    gallery = np.stack([np.cos(angles), np.sin(angles)], 1)
    g_ids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([1, 2, 2, 3, 3])
    m = evaluate_reid(np.array([[1.0, 0.0]]), np.array([1]), np.array([1]), gallery, g_ids, g_cams)
    # kept ranking: id2, id1 (hit at rank 2), id3, id1 (hit at rank 4): AP = (1/2 + 2/4) / 2
    assert m["reid_mAP"] == pytest.approx(0.5)
    assert m["reid_rank1"] == 0.0 and m["reid_rank5"] == 1.0
    m = evaluate_reid(np.array([[1.0, 0.0]]), np.array([9]), np.array([1]), gallery, g_ids, g_cams)
    assert m["reid_mAP"] is None and m["reid_skipped_queries"] == 1


def test_part_confusion_excludes_absent_classes():
    confusion = PartConfusion()
    confusion.update(np.array([[0, 1], [1, 1]], np.uint8), np.array([[0, 1], [0, 1]], np.uint8))
    r = confusion.result()
    assert r["parts_per_class"]["background"] == pytest.approx(0.5)
    assert r["parts_per_class"]["hat"] == pytest.approx(2 / 3)
    assert r["parts_per_class"]["hair"] is None
    assert r["parts_mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="label 20"):
        confusion.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 20, np.uint8))


def test_bad_input_fails_clearly(gt_dir, gt_preds, tmp_path):
    coco = load_coco_gt(gt_dir / "annotations" / "person_keypoints.json")
    results = json.loads((gt_preds / "detections.json").read_text())
    with pytest.raises(FileNotFoundError, match="person_keypoints.json"):
        evaluate_paths(tmp_path, [gt_preds / "detections.json"])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("[{")
    with pytest.raises(ValueError, match="corrupt.json"):
        evaluate_paths(gt_dir, [corrupt])
    unknown = copy.deepcopy(results)
    unknown[0]["image_id"] = 999
    with pytest.raises(ValueError, match="entry 0: image_id 999"):
        evaluate_detections(coco, unknown)
    short = copy.deepcopy(results)
    short[1]["keypoints"] = short[1]["keypoints"][:48]
    with pytest.raises(ValueError, match="entry 1 .*48 keypoint values"):
        evaluate_detections(coco, short)
    pred = _copy_preds(gt_preds, tmp_path)
    broken_png = pred / "parts" / "000002.png"
    broken_png.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="000002.png"):
        evaluate_paths(gt_dir, [pred / "parts"])
    (pred / "mot" / "s2.txt").unlink()
    with pytest.raises(FileNotFoundError, match="s2.txt"):
        evaluate_paths(gt_dir, [pred / "mot"])
    with np.load(pred / "reid.npz") as data:
        arrays = dict(data)
    np.savez(pred / "reid.npz", names=arrays["names"][1:], embeddings=arrays["embeddings"][1:])
    with pytest.raises(ValueError, match="no embedding for 1 of 4 query crops"):
        evaluate_paths(gt_dir, [pred / "reid.npz"])


def test_greedy_match_prefers_high_scores_and_respects_iou():
    from hcq_ros.evaluation import greedy_match
    gt = np.array([[0, 0, 10, 10], [20, 0, 10, 10]], float)
    pred = np.array([[1, 0, 10, 10], [0, 0, 10, 10], [50, 50, 5, 5]], float)
    # the higher-scored prediction 1 takes GT 0 first; prediction 0 overlaps nothing else; 2 matches nothing
    assert greedy_match(gt, pred, np.array([0.5, 0.9, 0.8])) == [(1, 0)]
    assert greedy_match(gt, pred[:1], np.array([0.5])) == [(0, 0)]
    assert greedy_match(gt, np.zeros((0, 4)), np.zeros(0)) == []


def test_best_f1_and_its_score_threshold(gt_dir, gt_preds):
    coco = load_coco_gt(gt_dir / "annotations" / "person_keypoints.json")
    results = json.loads((gt_preds / "detections.json").read_text())
    for i, r in enumerate(results):          # true people scored 0.6 .. 0.9
        r["score"] = 0.6 + 0.3 * i / max(1, len(results) - 1)
    m = evaluate_detections(coco, results)
    assert m["bbox_best_F1"] == pytest.approx(1.0) and 0.6 <= m["bbox_best_F1_score"] <= 0.9
    # confident false positives above every true person: the best F1 drops and its threshold stays at the true
    # people's scores (keeping the false ones too would only add errors)
    boxes = [[2, 2, 10, 20], [60, 2, 10, 20], [2, 60, 10, 20]]
    fakes = [{"image_id": 3, "category_id": 1, "bbox": b, "score": 0.95} for b in boxes]
    plain = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]
    m = evaluate_detections(coco, plain + fakes)
    assert m["bbox_best_F1"] < 1.0 and 0.6 <= m["bbox_best_F1_score"] <= 0.9
    assert evaluate_detections(coco, [])["bbox_AP"] is not None and "bbox_best_F1" not in evaluate_detections(coco, [])


def test_joint_error_separates_exact_joints_from_the_template(gt_dir, gt_preds):
    from hcq_ros.evaluation.pose_error import template_pose

    coco = load_coco_gt(gt_dir / "annotations" / "person_keypoints.json")
    results = json.loads((gt_preds / "detections.json").read_text())
    exact = evaluate_detections(coco, results)
    assert exact["keypoints_err"] == pytest.approx(0.0) and exact["keypoints_err_people"] >= 1
    assert exact["keypoints_err_template"] > 0.05      # these GT poses are not the template
    # every person's joints replaced by the template in its box: the two errors coincide
    templated = copy.deepcopy(results)
    for r in templated:
        x0, y0, w, h = r["bbox"]
        xy = np.array([x0, y0]) + template_pose() * np.array([w, h])
        r["keypoints"] = np.concatenate([xy, np.ones((NUM_KEYPOINTS, 1))], axis=1).reshape(-1).tolist()
    m = evaluate_detections(coco, templated)
    assert m["keypoints_err"] == pytest.approx(m["keypoints_err_template"])
    assert m["keypoints_err_template"] == pytest.approx(exact["keypoints_err_template"])

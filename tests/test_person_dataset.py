"""PersonNet crop datasets: SynthHumans identity crops, Market/LIP/MPII readers (only their own targets), part
targets that ignore other people, consistent flips, collation."""
import numpy as np
import pytest

from hcq_ros.data.person_dataset import (IGNORE, CropAugment, CropTargets, LipCropSource, MarketCropSource,
                                         MpiiCropSource, SynthCropConfig, SynthCropSource, collate_crops, make_crop,
                                         owner_map, person_part_targets)
from hcq_ros.data.schema import KEYPOINT_NAMES, NUM_PARTS, PART_NAMES, attributes_to_indices

AUG = CropAugment()


@pytest.fixture(scope="module")
def synth():
    return SynthCropSource(SynthCropConfig(identities=12, pool_seed=5), AUG, seed=3)


def test_synth_identity_crops_carry_every_target_and_are_reproducible(synth):
    a, b, c = synth.get(4, 10), synth.get(4, 10), synth.get(4, 11)
    assert a.crop.shape == (128, 64, 3) and a.crop.dtype == np.uint8
    np.testing.assert_array_equal(a.crop, b.crop)
    assert not np.array_equal(a.crop, c.crop)                      # another position: another scene
    assert a.identity == 3 == c.identity                           # pool id 4 -> classifier label 3
    np.testing.assert_array_equal(a.attributes, attributes_to_indices(synth.pool.attributes(4)))
    labels = set(np.unique(a.parts).tolist())
    assert labels <= set(range(NUM_PARTS)) | {IGNORE}
    assert (a.parts > 0).sum() - (a.parts == IGNORE).sum() > 300  # the person covers a good part of the crop
    on = a.keypoints[:, 2] > 0
    assert on.sum() >= 4 and (a.keypoints[on, :2] >= 0).all() and (a.keypoints[on, :2] < 1).all()
    assert (a.keypoints[~on] == 0).all()


def test_synth_crops_keep_the_person_centred_and_sized_like_a_detection(synth):
    heights, centres = [], []
    for pos in range(6):
        t = synth.get(1 + pos, pos)
        body = (t.parts > 0) & (t.parts != IGNORE)
        rows = np.flatnonzero(body.any(1))
        heights.append((rows[-1] - rows[0] + 1) / 128)
        centres.append(np.flatnonzero(body.any(0)).mean() / 64)
    assert 0.5 < np.median(heights) < 0.95                         # expand 1.2 + jitter: ~0.8 of the crop
    assert all(0.25 < c < 0.75 for c in centres)


def test_part_targets_ignore_other_people_and_the_outside():
    parts = np.zeros((40, 40), np.uint8)
    parts[5:30, 5:15] = PART_NAMES.index("upper_clothes")          # person 0
    parts[5:30, 20:30] = PART_NAMES.index("left_leg")              # person 1
    m0, m1 = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    m0[5:30, 5:15], m1[5:30, 20:30] = True, True
    owner = owner_map([m0, m1], parts.shape)
    double = np.array([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], np.float32)    # crop = the image scaled x2
    labels = person_part_targets(parts, owner, 0, double, (80, 100))[0]
    assert labels.shape == (100, 80)
    assert (labels[10:60, 10:30] == PART_NAMES.index("upper_clothes")).all()
    assert (labels[10:60, 40:60] == IGNORE).all()                            # person 1 ignored
    assert (labels[80:, :] == IGNORE).all()                                  # below the image
    assert (labels[0:5, 0:80] == 0).all()                                    # background stays background
    other = person_part_targets(parts, owner, 1, double, (80, 100))[0]
    assert (other[10:60, 40:60] == PART_NAMES.index("left_leg")).all() and (other[10:60, 10:30] == IGNORE).all()


def test_flip_mirrors_crop_parts_and_swaps_left_right_joints():
    image = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3)).astype(np.uint8))
    parts = np.zeros((120, 90), np.uint8)
    parts[30:90, 20:45] = PART_NAMES.index("left_arm")
    kp = np.zeros((17, 3), np.float32)
    kp[KEYPOINT_NAMES.index("left_wrist")] = (25.0, 60.0, 2)
    box = np.array([15.0, 20.0, 70.0, 110.0])
    plain = make_crop(image, box, np.random.default_rng(7), CropAugment(flip_prob=0.0), kp, parts)
    flipped = make_crop(image, box, np.random.default_rng(7), CropAugment(flip_prob=1.0), kp, parts)
    np.testing.assert_array_equal(flipped.crop, plain.crop[:, ::-1])
    right_arm = PART_NAMES.index("right_arm")
    np.testing.assert_array_equal(flipped.parts == right_arm, (plain.parts == PART_NAMES.index("left_arm"))[:, ::-1])
    lw, rw = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
    assert flipped.keypoints[lw, 2] == 0 and flipped.keypoints[rw, 2] == 2
    np.testing.assert_allclose(flipped.keypoints[rw, :2], [1 - plain.keypoints[lw, 0], plain.keypoints[lw, 1]])


@pytest.fixture(scope="module")
def real_formats(tmp_path_factory):
    """Tiny Market-1501 / LIP / MPII folders written from SynthHumans with the format writers."""
    from helpers import write_person_formats

    return write_person_formats(tmp_path_factory.mktemp("formats"))


def test_market_gives_identities_and_attributes_only(real_formats):
    source = MarketCropSource(real_formats / "market", AUG, label_offset=100)
    labels = source.identities()
    assert sorted(set(labels.tolist())) == list(range(100, 100 + source.num_identities))
    t = source.get(0, 0)
    assert t.crop.shape == (128, 64, 3) and t.identity == labels[0]
    assert t.attributes is not None and (t.attributes >= 0).all()
    assert t.parts is None and t.keypoints is None


def test_lip_gives_parts_and_pose_and_mpii_pose_only(real_formats):
    lip = LipCropSource(real_formats / "lip", AUG)
    t = lip.get(0, 0)
    assert t.identity == -1 and t.attributes is None
    assert t.parts.shape == (128, 64) and (t.parts[(t.parts != IGNORE)] > 0).any()
    assert t.keypoints is not None and (t.keypoints[:5, 2] == 0).all()     # MPII-16 has no face points
    mpii = MpiiCropSource(real_formats / "mpii", AUG)
    m = mpii.get(0, 3)
    assert m.parts is None and m.identity == -1 and m.attributes is None
    assert (m.keypoints[5:, 2] > 0).any() and (m.keypoints[:5, 2] == 0).all()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MarketCropSource(real_formats / "nowhere", AUG)


def test_collate_fills_missing_targets_with_ignore_values():
    crop = np.zeros((128, 64, 3), np.uint8)
    with_all = CropTargets(crop, 3, np.zeros(10, np.int64), np.ones((128, 64), np.uint8),
                           np.full((17, 3), 0.5, np.float32))
    bare = CropTargets(crop)
    images, targets = collate_crops([with_all, bare])
    assert images.shape == (2, 3, 128, 64)
    assert targets["identities"].tolist() == [3, -1]
    assert (targets["attributes"][1] == -1).all() and (targets["parts"][1] == IGNORE).all()
    assert (targets["keypoints"][1, :, 2] == 0).all() and targets["parts"].dtype.is_floating_point is False
    _, none = collate_crops([bare, bare])
    assert all(v is None for v in none.values())

"""PersonNet evaluation on a SynthHumans sequence folder: a perfect oracle scores 1.0 everywhere, damage scores
lower, the PCK / query rules are exact, a real PersonNet runs, and `hcq-ros eval --model --data` dispatches on
the checkpoint kind."""
import json

import numpy as np
import pytest
import torch

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_PARTS
from hcq_ros.evaluation.person_eval import collect_crops, evaluate_person_net, pose_pck, reid_split

CROP = (64, 128)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from hcq_ros.cli import main

    out = tmp_path_factory.mktemp("seq")
    assert main(["synth", "--out", str(out), "--sequences", "3", "--frames", "30", "--identities", "6",
                 "--size", "192", "--max-people", "4", "--seed", "11", "--no-progress"]) == 0
    return out


class Oracle:
    """A backend that answers with the ground truth of the crops it is given (in evaluation order)."""

    def __init__(self, gt: dict, shuffle_embeddings=False, shift=0.0):
        self.gt, self.cursor, self.shuffle, self.shift = gt, 0, shuffle_embeddings, shift

    def __call__(self, x: np.ndarray) -> dict:
        from hcq_ros.data.torch_dataset import image_to_tensor

        rows = slice(self.cursor, self.cursor + len(x))
        self.cursor += len(x)
        expected = torch.stack([image_to_tensor(c) for c in self.gt["crops"][rows]]).numpy()
        np.testing.assert_allclose(x, expected)                     # normalised NCHW crops, in order
        ids = self.gt["identities"][rows]
        embedding = np.eye(32, dtype=np.float32)[ids % 32]
        if self.shuffle:
            embedding = np.random.default_rng(0).standard_normal(embedding.shape).astype(np.float32)
        out = {"embedding": embedding}
        for a, name in enumerate(ATTRIBUTE_NAMES):
            out[f"attr_{name}"] = np.eye(len(ATTRIBUTES[name]))[np.maximum(self.gt["attributes"][rows, a], 0)]
        out["keypoints"] = self.gt["crop_keypoints"][rows, :, :2] + self.shift
        parts = np.where(self.gt["parts"][rows] == 255, 0, self.gt["parts"][rows])
        out["part_logits"] = np.eye(NUM_PARTS, dtype=np.float32)[parts].transpose(0, 3, 1, 2)
        return out


def test_oracle_scores_one_and_damage_scores_lower(folder):
    gt = collect_crops(folder, CROP, frame_step=5)
    assert len(gt["crops"]) == len(gt["identities"]) > 10
    perfect = evaluate_person_net(Oracle(gt), folder, crop_size=CROP, batch_size=16)
    assert perfect["reid_num_queries"] > 0
    for key in ("reid_mAP", "reid_rank1", "attr_acc", "parts_mIoU", "pose_PCK", "pose_PCK_0.2"):
        assert perfect[key] == pytest.approx(1.0), key
    damaged = evaluate_person_net(Oracle(gt, shuffle_embeddings=True, shift=0.25), folder, crop_size=CROP)
    assert damaged["reid_mAP"] < 0.9 and damaged["pose_PCK"] < 0.7
    assert damaged["attr_acc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="crop_size"):
        evaluate_person_net(Oracle(gt), folder)


def test_pck_uses_half_the_torso_size_exactly():
    kp = np.zeros((2, 17, 3), np.float32)
    kp[:, :, 2] = 2
    kp[:, 5, :2], kp[:, 6, :2] = (10, 0), (30, 0)           # shoulders: midpoint (20, 0)
    kp[:, 11, :2], kp[:, 12, :2] = (10, 40), (30, 40)       # hips: midpoint (20, 40) -> torso 40 px
    kp[1, 12, 2] = 0                                         # person 1: a hip unlabelled -> not scored
    gt = {"keypoints": kp, "crop_keypoints": kp.copy()}
    pred = kp[..., :2].copy()
    pred[0, 0, 0] += 19.9                                    # within 0.5 x 40
    pred[0, 1, 1] += 20.1                                    # just outside
    pred[0, 2, 0] += 7.9                                     # within 0.2 x 40 = 8
    result = pose_pck(pred, gt)
    assert result["pose_joints"] == 17 and result["pose_unscored_persons"] == 1
    assert result["pose_PCK"] == pytest.approx(16 / 17)
    assert result["pose_PCK_0.2"] == pytest.approx(15 / 17)


def test_query_is_the_most_visible_crop_per_identity_and_camera():
    ids = np.array([1, 1, 1, 1, 2, 2])
    cams = np.array([1, 1, 2, 2, 1, 1])
    visible = np.array([10, 12, 9, 9, 14, 14])
    frames = np.array([5, 10, 5, 10, 15, 5])
    np.testing.assert_array_equal(reid_split(ids, cams, visible, frames), [0, 1, 1, 0, 0, 1])


def test_a_real_person_net_runs_and_the_cli_dispatches_on_the_checkpoint(folder, tmp_path):
    from hcq_ros.cli import main
    from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint

    model = PersonNet(PersonNetConfig.preset("small", embedding_dim=32, pose_dim=16, fpn_dim=16, seg_dim=8))
    metrics = evaluate_person_net(model, folder, frame_step=10)
    assert model.training                                         # mode restored
    for key in ("reid_mAP", "attr_acc", "parts_mIoU", "pose_PCK"):
        assert 0.0 <= metrics[key] <= 1.0, key
    ckpt = tmp_path / "person.pt"
    save_checkpoint(ckpt, model)
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(ckpt), "--data", str(folder), "--frame-step", "10", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["model"] == "PersonNet" and written["pose_PCK"] == pytest.approx(metrics["pose_PCK"])
    assert main(["eval", "--model", str(ckpt)]) == 2                   # --data missing
    assert main(["eval", "--model", str(ckpt), "--data", str(folder), "--gt", str(folder)]) == 2
    assert main(["eval", "--model", str(tmp_path / "missing.pt"), "--data", str(folder)]) == 2


def test_cli_scores_an_hcqnet_checkpoint_with_the_detector_evaluation(folder, tmp_path, capsys):
    from hcq_ros.cli import main
    from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint

    config = HCQConfig.preset("hcqnet", "small", d_model=32, mask_dim=16, num_queries=4, enc_layers=1,
                              dec_layers=1, n_heads=2, ffn_dim=32)
    ckpt = tmp_path / "hcq.pt"
    save_checkpoint(ckpt, HCQNet(config))
    out = tmp_path / "d.json"
    assert main(["eval", "--model", str(ckpt), "--data", str(folder), "--input-size", "64", "64",
                 "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["model"] == "HCQNet" and "bbox_AP" in written and "segm_AP" in written

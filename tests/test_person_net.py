"""PersonNet: output shapes for every variant and task subset, the split-output gradient separation, empty batches,
input validation, soft-argmax decoding, ONNX export through onnxruntime, config/checkpoint round trip, FLOPs."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_KEYPOINTS, NUM_PARTS
from hcq_ros.models.person_heads import soft_argmax
from hcq_ros.models.person_net import (BRANCHINGS, TASKS, PersonNet, PersonNetConfig, decode_attributes, flops,
                                       load_checkpoint, save_checkpoint, split_pose_channels)
from hcq_ros.train.person_losses import keypoint_coordinate_loss

TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))
H, W = 64, 32


def tiny(**overrides) -> PersonNetConfig:
    return PersonNetConfig.preset("small", **{**TINY, **overrides})


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-zero gammas/betas so that residual branches (zero-init gamma) contribute."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def crops(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


def check_outputs(out: dict, tasks, batch: int, config: PersonNetConfig, train: bool) -> None:
    expected = set()
    if "reid" in tasks:
        expected |= {"embedding"} | ({"reid_features"} if train else set())
        assert out["embedding"].shape == (batch, config.embedding_dim)
        if batch:
            assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(batch), atol=1e-5)
        if train and config.num_identities:
            expected.add("id_logits")
            assert out["id_logits"].shape == (batch, config.num_identities)
    if "attributes" in tasks:
        expected.add("attr_logits")
        assert [tuple(a.shape) for a in out["attr_logits"]] == [(batch, len(ATTRIBUTES[n])) for n in ATTRIBUTE_NAMES]
    if "pose" in tasks:
        expected |= {"keypoints", "keypoint_conf"} | ({"heatmaps"} if train else set())
        assert out["keypoints"].shape == (batch, NUM_KEYPOINTS, 2)
        assert out["keypoint_conf"].shape == (batch, NUM_KEYPOINTS)
        assert torch.all((out["keypoints"] >= 0) & (out["keypoints"] <= 1))
        assert torch.all((out["keypoint_conf"] > 0) & (out["keypoint_conf"] <= 1))
        if train:
            s = config.pose_stride
            assert out["heatmaps"].shape == (batch, NUM_KEYPOINTS, H // s, W // s)
    if "parts" in tasks:
        expected.add("part_logits")
        assert out["part_logits"].shape == (batch, NUM_PARTS, H, W)
    assert set(out) == expected


@pytest.mark.parametrize("branching", BRANCHINGS)
def test_shapes_for_each_variant(branching):
    torch.manual_seed(0)
    config = tiny(branching=branching, num_identities=7)
    model = PersonNet(config).train()
    check_outputs(model(crops(4)), TASKS, 4, config, train=True)
    model.eval()
    with torch.no_grad():
        check_outputs(model(crops(2)), TASKS, 2, config, train=False)
    assert (model.branches is not None) == (branching == "multi_branch")
    if branching == "multi_branch":
        assert set(model.branches) == set(TASKS) and "res5" not in model.backbone.out_features


@pytest.mark.parametrize("tasks", [("reid",), ("attributes",), ("parts",), ("pose",), ("reid", "pose"),
                                   ("attributes", "parts")])
def test_task_subsets_build_and_output_only_their_heads(tasks):
    torch.manual_seed(0)
    config = tiny(tasks=tasks)
    model = PersonNet(config).train()
    check_outputs(model(crops(2)), tasks, 2, config, train=True)
    heads = {"reid": model.reid_head, "attributes": model.attribute_head, "parts": model.parts_head,
             "pose": model.pose_head}
    for task, head in heads.items():
        assert (head is not None) == (task in tasks)
    assert len(model.output_names()) == (("reid" in tasks) + 10 * ("attributes" in tasks) + 2 * ("pose" in tasks)
                                         + ("parts" in tasks))


@pytest.mark.parametrize("flags", [dict(norm="bn"), dict(deform_stages=2, deform_pose_head=True),
                                   dict(heatmap_offsets=True, pose_stride=4), dict(pose_stride=16, bn_neck=False),
                                   dict(branching="split_output", deform_stages=1, norm="bn")])
def test_variant_flags(flags):
    torch.manual_seed(0)
    config = tiny(**flags)
    model = PersonNet(config).train()
    check_outputs(model(crops(3)), TASKS, 3, config, train=True)
    if flags.get("heatmap_offsets"):
        assert model.pose_head.offset is not None
    if flags.get("deform_pose_head"):
        assert type(model.pose_head.refine[0]).__name__ == "DeformConv2d"


def test_soft_argmax_decodes_peaks_and_offsets():
    heatmaps = torch.full((1, 2, 4, 8), -30.0)
    heatmaps[0, 0, 1, 5] = 30.0                     # a sharp peak in row 1, column 5
    heatmaps[0, 1] = 0.0                            # flat
    xy, conf, prob = soft_argmax(heatmaps)
    assert torch.allclose(xy[0, 0], torch.tensor([5.5 / 8, 1.5 / 4]), atol=1e-5)
    assert torch.allclose(xy[0, 1], torch.tensor([0.5, 0.5]), atol=1e-5)
    assert conf[0, 0] == pytest.approx(1.0, abs=1e-5) and conf[0, 1] == pytest.approx(9 / 32, abs=1e-5)
    assert torch.allclose(prob.sum(dim=(2, 3)), torch.ones(1, 2))
    offsets = torch.zeros(1, 2, 2, 4, 8)
    offsets[0, 0, 0, 1, 5], offsets[0, 0, 1, 1, 5] = 0.5, -0.25   # half a cell right, a quarter cell up
    xy_off, _, _ = soft_argmax(heatmaps, offsets)
    assert torch.allclose(xy_off[0, 0], torch.tensor([6.0 / 8, 1.25 / 4]), atol=1e-5)


def _last_block_rows(model: PersonNet) -> dict[str, torch.Tensor]:
    """Parameters of the last stage's final block whose rows are output channels."""
    block = model.backbone.stages[3][-1]
    return {"conv2": block.conv2.weight, "norm2.weight": block.norm2.weight, "norm2.bias": block.norm2.bias,
            "shortcut.conv": block.shortcut[0].weight, "shortcut.norm": block.shortcut[1].weight}


def _pose_and_rest_losses(model: PersonNet, x: torch.Tensor):
    out = model(x)
    target = torch.rand(x.shape[0], NUM_KEYPOINTS, 3)
    target[..., 2] = 2
    pose = keypoint_coordinate_loss(out["keypoints"], target)
    rest = (out["reid_features"].pow(2).sum() + sum(a.logsumexp(1).sum() for a in out["attr_logits"])
            + out["part_logits"].logsumexp(1).mean())
    return pose, rest


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_split_output_separates_pose_from_other_tasks(norm):
    torch.manual_seed(0)
    model = PersonNet(tiny(branching="split_output", norm=norm)).train()
    randomise_norms(model)
    cp = model.pose_channels
    assert cp == split_pose_channels(256, 0.25, norm) == 64
    x = crops(4)
    for which in ("pose", "rest"):
        model.zero_grad()
        pose, rest = _pose_and_rest_losses(model, x)
        (pose if which == "pose" else rest).backward()
        for name, p in _last_block_rows(model).items():
            own, other = (p.grad[:cp], p.grad[cp:]) if which == "pose" else (p.grad[cp:], p.grad[:cp])
            assert torch.count_nonzero(other) == 0, f"{which} loss reached the other task's rows of {name}"
            assert torch.count_nonzero(own) > 0, f"{which} loss did not reach its own rows of {name}"
        heads = [model.pose_head] if which == "rest" else [model.reid_head, model.attribute_head, model.parts_head]
        for head in heads:
            assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in head.parameters())

    # Control: in the single-branch net the pose loss does reach every channel of the last stage.
    single = PersonNet(tiny(norm=norm)).train()
    randomise_norms(single)
    pose, _ = _pose_and_rest_losses(single, x)
    pose.backward()
    assert torch.count_nonzero(_last_block_rows(single)["conv2"].grad[cp:]) > 0


@pytest.mark.parametrize("norm", ["gn", "bn"])
@pytest.mark.parametrize("branching", BRANCHINGS)
def test_empty_batch_gives_empty_outputs(norm, branching):
    torch.manual_seed(0)
    config = tiny(norm=norm, branching=branching, heatmap_offsets=True, deform_pose_head=True, num_identities=5)
    model = PersonNet(config).eval()
    randomise_norms(model)
    with torch.no_grad():
        out = model(torch.zeros(0, 3, H, W))
        check_outputs(out, TASKS, 0, config, train=False)
        check_outputs(model(torch.zeros(0, 3, H, W), with_train_outputs=True), TASKS, 0, config, train=True)
    assert decode_attributes(out["attr_logits"]) == []


def test_input_validation_names_the_problem():
    model = PersonNet(tiny(tasks=("reid",))).eval()
    with pytest.raises(ValueError, match="rank 4"):
        model(torch.zeros(3, H, W))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.zeros(1, 1, H, W))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 3, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 3, H, W, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 3, 60, 32))
    with pytest.raises(ValueError, match="torch.Tensor"):
        model(np.zeros((1, 3, H, W), np.float32))


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="tasks"):
        tiny(tasks=("reid", "faces"))
    with pytest.raises(ValueError, match="tasks"):
        tiny(tasks=())
    with pytest.raises(ValueError, match="split_output"):
        tiny(branching="split_output", tasks=("reid", "parts"))
    with pytest.raises(ValueError, match="pose_stride"):
        tiny(pose_stride=2)
    with pytest.raises(ValueError, match="crop_size"):
        tiny(crop_size=(100, 50))
    with pytest.raises(ValueError, match="unknown PersonNetConfig keys"):
        PersonNetConfig.from_dict({"profil": "small"})
    with pytest.raises(ValueError, match="preset"):
        PersonNetConfig.preset("huge")
    config = tiny(branching="multi_branch", tasks=("pose", "reid"), heatmap_offsets=True, num_identities=3)
    assert PersonNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PersonNetConfig.preset("base").profile == "base"


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = tiny(branching="split_output", heatmap_offsets=True, num_identities=4)
    model = PersonNet(config).eval()
    randomise_norms(model)
    path = tmp_path / "person.pt"
    save_checkpoint(path, model, epoch=3)
    loaded = load_checkpoint(path, requested=config).eval()
    x = crops(2)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in ("embedding", "keypoints", "part_logits"):
        assert torch.equal(a[key], b[key])
    with pytest.raises(ValueError, match="heatmap_offsets"):
        load_checkpoint(path, requested=tiny(branching="split_output", num_identities=4))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_flops_by_part():
    full = flops(PersonNet(tiny()))
    assert set(full) == {"backbone", "reid_head", "attribute_head", "pose_head", "parts_head", "total"}
    assert all(v > 0 for v in full.values())
    assert full["total"] >= sum(v for k, v in full.items() if k != "total")
    reid_only = flops(PersonNet(tiny(tasks=("reid",))))
    assert set(reid_only) == {"backbone", "reid_head", "total"} and reid_only["total"] < full["total"]
    multi = flops(PersonNet(tiny(branching="multi_branch")))
    assert multi["branches"] > 0 and multi["total"] > full["total"]


def test_onnx_export_dynamic_batch_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = PersonNet(tiny(heatmap_offsets=True)).eval()
    randomise_norms(model)
    with torch.no_grad():  # non-zero offsets so that the offset refinement is really exported
        model.pose_head.offset.weight.normal_(0.0, 0.1)
    path = tmp_path / "person.onnx"
    names = model.output_names()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (crops(2),), str(path), dynamo=True, input_names=["crops"], output_names=names,
                          dynamic_shapes={"crops": {0: torch.export.Dim("batch", min=1, max=256)}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    for batch in (1, 3):
        x = crops(batch, seed=batch)
        outputs = session.run(None, {"crops": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        flat = [ref["embedding"], *ref["attr_logits"], ref["keypoints"], ref["keypoint_conf"], ref["part_logits"]]
        assert len(outputs) == len(flat)
        for name, got, want in zip(names, outputs, flat):
            assert got.shape == tuple(want.shape), name
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)

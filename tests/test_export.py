"""hcq_ros.runtime.export: checkpoint loading (kinds, clear errors), the TensorRT-form HCQNet export through
``hcq-ros export`` (one plugin node per deformable attention with the exact input shapes/dtypes the plugin needs,
no GridSample left), and the metadata sidecar / ONNX metadata_props. The onnxruntime form of both networks
(PersonNet with its dynamic batch) is exported and run in test_backends.py."""
from __future__ import annotations

import argparse
import json
import math

import onnx
import pytest
import torch
from onnx import TensorProto

from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq
from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person
from hcq_ros.ops.ms_deform_attn_onnx import (PLUGIN_OP_TYPE, check_trt_plugin_nodes, count_trt_plugin_nodes,
                                             register_trt_plugin_schema)
from hcq_ros.runtime import export_cli
from hcq_ros.runtime.export import (METADATA_KEY, check_input_size, export_model, load_model_checkpoint,
                                    read_export_metadata, sha256_file, sidecar_path)

from helpers import once_per_session  # noqa: E402  (tests/ is on sys.path under pytest)

HCQ_TINY = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=8, ffn_dim=64, mask_points=256)
PERSON_TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))
SIZE = (64, 64)   # (W, H) of the tiny detector export


def save_tiny_checkpoints(root) -> None:
    torch.manual_seed(0)
    save_hcq(root / "tiny_hcq.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY)), iteration=7)
    save_person(root / "tiny_person.pt", PersonNet(PersonNetConfig.preset("small", **PERSON_TINY)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_checkpoints(root)
    return root


@pytest.fixture(scope="module")
def trt_export(tmp_path_factory):
    """``hcq-ros export --model tiny_hcq.pt --target tensorrt --size 64 64 --json ...`` -> the .trt.onnx path."""
    with once_per_session(tmp_path_factory, "tiny_trt_export") as (root, ready):
        if not ready:
            save_tiny_checkpoints(root)
            args = argparse.Namespace(model=root / "tiny_hcq.pt", target="tensorrt", out=root / "engines",
                                      size=list(SIZE), name=None, opset=18, json=root / "engines" / "summary.json")
            assert export_cli.run(args) == 0
    return root / "engines" / "tiny_hcq.trt.onnx"


# ----------------------------------------------------------------------------------------- checkpoints
def test_load_model_checkpoint_tells_kinds_apart(checkpoints):
    kind, model = load_model_checkpoint(checkpoints / "tiny_hcq.pt")
    assert kind == "hcq" and isinstance(model, HCQNet) and not model.training
    kind, model = load_model_checkpoint(checkpoints / "tiny_person.pt")
    assert kind == "person" and isinstance(model, PersonNet)


def test_load_model_checkpoint_errors_name_the_file(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a zip or pickle")
    with pytest.raises(ValueError, match="garbage.pt is not a readable PyTorch checkpoint"):
        load_model_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    with pytest.raises(ValueError, match="unknown checkpoint"):
        load_model_checkpoint(foreign)
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(ValueError, match="not a dict"):
        load_model_checkpoint(not_dict)
    # weights that do not fit the stored config: corrupt
    ckpt = torch.load(checkpoints / "tiny_hcq.pt", weights_only=False)
    ckpt["hcq_config"]["d_model"] = 64
    corrupt = tmp_path / "corrupt.pt"
    torch.save(ckpt, corrupt)
    with pytest.raises(ValueError, match="corrupt hcq checkpoint"):
        load_model_checkpoint(corrupt)


def test_input_size_and_target_validation(checkpoints, tmp_path):
    assert check_input_size("hcq", (320, 256)) == (320, 256)
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input_size("hcq", (100, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        check_input_size("person", (40, 64))
    with pytest.raises(ValueError, match="unknown export target"):
        export_model(checkpoints / "tiny_hcq.pt", "tflite", tmp_path)
    with pytest.raises(ValueError, match="opset 17 requested"):
        export_model(checkpoints / "tiny_hcq.pt", "tensorrt", tmp_path, SIZE, opset=17)


# ----------------------------------------------------------------------------------------- TensorRT form
def test_trt_export_has_one_plugin_node_per_deformable_attention(trt_export):
    config = HCQConfig.preset("hcqnet", "small", **HCQ_TINY)
    proto = onnx.load(str(trt_export))
    assert trt_export.name == "tiny_hcq.trt.onnx"
    register_trt_plugin_schema()   # a fresh process (another xdist worker exported) must know the plugin op
    onnx.checker.check_model(proto, full_check=True)
    assert config.pose_joint_features   # the small profile reads joint features through the plugin too
    assert count_trt_plugin_nodes(proto) == config.enc_layers + 2 * config.dec_layers
    assert not [n for n in proto.graph.node if n.op_type == "GridSample"]   # nothing left for TensorRT to miscompile

    summaries = check_trt_plugin_nodes(proto)
    heads, head_dim = config.n_heads, config.d_model // config.n_heads
    levels = [(SIZE[1] // s, SIZE[0] // s) for s in (8, 16, 32)]
    keys = sum(h * w for h, w in levels)
    decoder_points = config.dec_offset_points + math.ceil(17 / heads)
    encoder_queries = sum(h * w for h, w in levels[3 - config.enc_query_levels:])   # the coarsest levels only
    expected = sorted([(encoder_queries, config.enc_points)] * config.enc_layers
                      + [(config.num_queries, decoder_points)] * config.dec_layers)
    got, joint_reads = [], 0
    for summary in summaries:
        inputs = summary["inputs"]
        assert summary["dtype"] == "FLOAT"
        if inputs["spatial_shapes"] == [1, 2]:     # joint-feature read: one 1/4 level, one head, one point
            assert inputs["value"] == [1, (SIZE[1] // 4) * (SIZE[0] // 4), 1, config.mask_dim]
            assert inputs["sampling_locations"] == [1, config.num_queries * 17, 1, 1, 1, 2]
            joint_reads += 1
            continue
        assert inputs["value"] == [1, keys, heads, head_dim]
        assert inputs["spatial_shapes"] == [3, 2] and inputs["level_start_index"] == [3]
        lq, points = inputs["sampling_locations"][1], inputs["sampling_locations"][4]
        assert inputs["sampling_locations"] == [1, lq, heads, 3, points, 2]
        assert inputs["attention_weights"] == [1, lq, heads, 3, points]
        got.append((lq, points))
    assert sorted(got) == expected and joint_reads == config.dec_layers
    # INT32 shape inputs, straight from the graph
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(
        inferred.graph.input)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    for node in (n for n in proto.graph.node if n.op_type == PLUGIN_OP_TYPE):
        assert types[node.input[1]] == TensorProto.INT32 and types[node.input[2]] == TensorProto.INT32


def test_trt_export_io_names_and_fixed_input(trt_export):
    proto = onnx.load(str(trt_export))
    (graph_input,) = proto.graph.input
    assert graph_input.name == "images"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, SIZE[1], SIZE[0]]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes", "pred_keypoints",
                                                    "pred_kpt_sigma", "pred_masks", "pred_box_sigma"]


def test_metadata_sidecar_and_metadata_props_agree(trt_export):
    meta = json.loads(sidecar_path(trt_export).read_text())
    assert sidecar_path(trt_export).name == "tiny_hcq.trt.json"
    assert meta["kind"] == "hcq" and meta["target"] == "tensorrt" and meta["export_form"] == "trt_plugin"
    assert meta["input_size"] == list(SIZE) and meta["input_names"] == ["images"]
    assert meta["input_shapes"] == {"images": [1, 3, SIZE[1], SIZE[0]]}
    assert meta["config"] == HCQConfig.preset("hcqnet", "small", **HCQ_TINY).to_dict()
    assert meta["profile"] == "small" and meta["opset"] == 18 and meta["torch_version"] == torch.__version__
    assert meta["source_sha256"] == sha256_file(trt_export.parents[1] / "tiny_hcq.pt")
    assert meta["source_iteration"] == 7
    assert meta["onnx_sha256"] == sha256_file(trt_export)
    assert json.loads((trt_export.parent / "summary.json").read_text()) == meta
    assert meta["plugin_nodes"] == HCQ_TINY["enc_layers"] + 2 * HCQ_TINY["dec_layers"]   # + joint-feature reads
    props = {p.key: p.value for p in onnx.load(str(trt_export)).metadata_props}
    embedded = json.loads(props[METADATA_KEY])
    assert embedded == {k: v for k, v in meta.items() if k not in ("onnx_file", "onnx_sha256")}
    assert read_export_metadata(trt_export) == meta


def test_stale_sidecar_falls_back_to_embedded_metadata(trt_export, tmp_path):
    copy = tmp_path / "copy.trt.onnx"
    copy.write_bytes(trt_export.read_bytes())
    stale = json.loads(sidecar_path(trt_export).read_text())
    stale.update(onnx_sha256="0" * 64, kind="person")
    sidecar_path(copy).write_text(json.dumps(stale))
    meta = read_export_metadata(copy)
    assert meta["kind"] == "hcq" and "onnx_sha256" not in meta
    with pytest.raises(FileNotFoundError):
        read_export_metadata(tmp_path / "nothing.onnx")

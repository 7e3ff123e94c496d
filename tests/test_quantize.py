"""int8 onnxruntime profile (``hcq_ros.runtime.quantize``, ``hcq-ros export --target onnxruntime-int8``): QDQ graphs
that pass onnx.checker, outputs close to fp32, PersonNet's dynamic batch, metadata, ``.int8.onnx`` files taken by the
backends / Perceptor / ``hcq-ros eval``, and clear errors.

Tolerance: for every output, mean |int8 - fp32| <= 0.3 x std(fp32 output) (+1e-4 for near-constant outputs), the
embedding's cosine similarity > 0.99 and the part argmax agreeing on > 90 % of the pixels. Activations are uint8 per
tensor (a step is 1/255 of the calibrated range, here from only 16 crops / 4 frames) and weights int8 per channel;
through the ~20 quantised layers of these tiny random networks, whose attribute logits are small differences of
random features, the measured error was at most 0.17 std (PersonNet's age logits; detector: 0.11, class logits),
cosine >= 0.997, part agreement 0.94: the bound leaves ~2x margin on the error and still fails a wrong scale or zero
point (an error of one std or more). Everything here is deterministic (fixed seeds, onnxruntime on CPU). The
shipped PersonNet's int8 accuracy is measured on held-out data instead (README, Runtime).

The detector here has learned queries (``query_init="learned"``): with the product's encoder query selection, the
top-k proposals of a random-weight tiny model sit on near-tied scores and int8 noise changes which ones become the
queries (measured: half the queries changed on 2 of 3 frames), so per-query outputs would not be comparable; the
quantised graph is otherwise the same.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest
import torch

from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq
from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person
from hcq_ros.runtime import export_cli
from hcq_ros.runtime.backend import model_stem, open_backend, resolve_model_file
from hcq_ros.runtime.export import export_model, flat_io_module, load_model_checkpoint, read_export_metadata, \
    sha256_file
from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from hcq_ros.runtime.quantize import (CALIB_SEED_START, count_qdq, detector_calibration, export_int8,
                                      float_nodes, node_modules, person_calibration, quantize_onnx)

from helpers import once_per_session  # noqa: E402  (tests/ is on sys.path under pytest)

HCQ_TINY = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=8, ffn_dim=64, mask_points=256,
                query_init="learned")
PERSON_TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))
CROP = (32, 64)      # (W, H) of the tiny PersonNet
SIZE = (64, 64)      # (W, H) of the tiny detector export
ORT = {"intra_op_threads": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny checkpoints; PersonNet: fp32 export + ``quantize_onnx`` (16 crops); detector: ``hcq-ros export --target
    onnxruntime-int8 --size 64 64 --calib 4`` (CLI path, metadata)."""
    with once_per_session(tmp_path_factory, "tiny_int8") as (root, ready):
        if not ready:
            torch.manual_seed(0)
            save_hcq(root / "det.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY)), iteration=3)
            save_person(root / "person.pt", PersonNet(PersonNetConfig.preset("small", **PERSON_TINY)))
            export_model(root / "person.pt", "onnxruntime", root)
            data = person_calibration(CROP, 16)
            quantize_onnx(root / "person.onnx", root / "person.int8.onnx", data.batches)
            args = argparse.Namespace(model=root / "det.pt", target="onnxruntime-int8", out=root, size=list(SIZE),
                                      name=None, opset=18, calib=4, calib_method="minmax", json=None)
            assert export_cli.run(args) == 0
    return root


def person_crops(n: int, seed: int = 11) -> np.ndarray:
    """n normalised crops float32 [n, 3, 64, 32] from scenes that are not calibration scenes."""
    return np.concatenate([b["crops"] for b in person_calibration(CROP, n, seed_start=seed).batches])


def assert_close(ref: dict, got: dict) -> None:
    """The module docstring's tolerance."""
    assert list(got) == list(ref)
    for name, r in ref.items():
        err = float(np.abs(got[name] - r).mean())
        assert err <= 0.3 * float(r.std()) + 1e-4, f"{name}: mean |int8 - fp32| {err:.4g}, fp32 std {r.std():.4g}"
    if "embedding" in ref:
        a, b = ref["embedding"], got["embedding"]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() > 0.99, cosine
    if "part_logits" in ref:
        assert (ref["part_logits"].argmax(1) == got["part_logits"].argmax(1)).mean() > 0.9


# ----------------------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("name", ["person", "det"])
def test_int8_graph_has_qdq_nodes_and_passes_the_checker(models, name):
    proto = onnx.load(str(models / f"{name}.int8.onnx"))
    n_q, n_dq = count_qdq(proto)
    assert n_q > 10 and n_dq > n_q                  # weights: DequantizeLinear only; activations: a Q/DQ pair
    onnx.checker.check_model(proto, full_check=True)
    quantised = {n.op_type for n in proto.graph.node} & {"Conv", "MatMul", "Gemm"}
    assert quantised, "the float compute ops should still be there, fed by DequantizeLinear"


def test_person_int8_is_close_to_fp32_and_keeps_the_dynamic_batch(models):
    fp32 = OnnxRuntimeBackend(**ORT).load(models / "person.onnx")
    int8 = OnnxRuntimeBackend(**ORT).load(models / "person.int8.onnx")
    assert int8.input_shapes["crops"] == (None, 3, 64, 32) and int8.output_names == fp32.output_names
    crops = person_crops(7)
    batch = int8.infer({"crops": crops})
    assert_close(fp32.infer({"crops": crops}), batch)
    for n in (1, 3):                                 # other batch sizes, same rows
        part = int8.infer({"crops": crops[:n]})
        for name, value in part.items():
            assert value.shape == (n, *batch[name].shape[1:])
            np.testing.assert_allclose(value, batch[name][:n], atol=1e-4, rtol=1e-4)
    assert int8.infer({"crops": crops[:0]})["embedding"].shape == (0, 32)


def test_detector_int8_export_is_close_to_the_float_model(models):
    _, model = load_model_checkpoint(models / "det.pt")
    module = flat_io_module("hcq", model, SIZE)
    backend = OnnxRuntimeBackend(**ORT).load(models / "det.int8.onnx")
    assert backend.input_shapes["images"] == (1, 3, 64, 64)
    for seed in (5, 6):                              # not calibration seeds
        x = detector_calibration(SIZE, 1, seed_start=seed).batches[0]
        with torch.no_grad():
            ref = dict(zip(module.output_names, (t.numpy() for t in module(torch.from_numpy(x["images"])))))
        assert_close(ref, backend.infer(x))


def test_int8_metadata(models):
    meta = read_export_metadata(models / "det.int8.onnx")
    assert (models / "det.int8.json").is_file() and meta["onnx_file"] == "det.int8.onnx"
    assert meta["precision"] == "int8" and meta["target"] == "onnxruntime-int8" and meta["kind"] == "hcq"
    assert meta["input_size"] == list(SIZE) and meta["export_form"] == "grid_sample"
    assert meta["source_sha256"] == sha256_file(models / "det.pt") and meta["source_iteration"] == 3
    q = meta["quantization"]
    assert q["method"] == "minmax" and q["format"] == "QDQ" and q["calibration_count"] == 4
    assert q["calibration_unit"] == "frames" and q["calibration_seeds"] == [CALIB_SEED_START, CALIB_SEED_START + 3]
    props = {p.key: p.value for p in onnx.load(str(models / "det.int8.onnx"), load_external_data=False).metadata_props}
    assert json.loads(props["hcq_ros"])["precision"] == "int8"     # also inside the ONNX (no sidecar needed)


# ----------------------------------------------------------------------------------------- files, Perceptor, eval
def test_int8_files_belong_to_their_family(models, tmp_path):
    from hcq_ros.evaluation.bench import detector_file, person_file
    from hcq_ros.runtime.tensorrt_build import check_trt_onnx

    path = models / "person.int8.onnx"
    assert model_stem(path) == models / "person"
    assert resolve_model_file("onnxruntime", path) == path
    assert resolve_model_file("torch", path) == models / "person.pt"
    with pytest.raises(FileNotFoundError, match="person.trt.onnx"):   # never the QDQ file for TensorRT
        resolve_model_file("tensorrt", path)
    with pytest.raises(ValueError, match="onnxruntime int8"):
        check_trt_onnx(path)
    backend, reason = open_backend("onnxruntime", path, **ORT)
    assert backend.source == str(path) and "onnxruntime requested" in reason
    # hcq-ros bench runs a given int8 file as is (not its float sibling), the detector only at its own size
    assert person_file(path, "onnxruntime", tmp_path)[0] == path
    assert detector_file(models / "det.int8.onnx", "onnxruntime", 64, tmp_path)[0] == models / "det.int8.onnx"
    with pytest.raises(FileNotFoundError, match="no int8 detector export at 96x96"):
        detector_file(models / "det.int8.onnx", "onnxruntime", 96, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.int8.onnx"):
        OnnxRuntimeBackend().load(tmp_path / "missing.int8.onnx")
    # a truncated copy beside its (now stale) sidecar: the sidecar is not trusted, the file itself fails to load
    (tmp_path / "cut.int8.json").write_bytes((models / "det.int8.json").read_bytes())
    (tmp_path / "cut.int8.onnx").write_bytes((models / "det.int8.onnx").read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.int8.onnx is not a readable ONNX model"):
        OnnxRuntimeBackend().load(tmp_path / "cut.int8.onnx")


def test_perceptor_runs_int8_detector_and_person_net(models):
    from hcq_ros.data.synth import SceneConfig, generate_image
    from hcq_ros.pipeline import Perceptor, PerceptorConfig

    config = PerceptorConfig(backend="onnxruntime", detector_model=str(models / "det.int8.onnx"),
                             person_model=str(models / "person.int8.onnx"), input_size=SIZE, threads=1,
                             score_threshold=0.0, max_people=3)
    perceptor = Perceptor(config)
    try:
        assert perceptor.detector.metadata["precision"] == "int8"
        # quantize_onnx alone writes no sidecar: the float export's metadata inside the ONNX, marked int8
        meta = perceptor.person_net.metadata
        assert meta["precision"] == "int8" and meta["kind"] == "person" and meta["quantization"]["batches"] == 16
        assert perceptor.crop_size == CROP
        frame = perceptor.process(generate_image(3, SceneConfig(width=96, height=80)).image, 1, "cam")
        assert frame.dropped is None and 1 <= len(frame.persons) <= 3
        assert all(p.embedding.shape == (32,) for p in frame.persons)     # PersonNet ran on every person
    finally:
        perceptor.close()


def test_eval_scores_an_onnx_person_net(models, tmp_path):
    from hcq_ros.cli import main

    data = tmp_path / "seq"
    assert main(["synth", "--out", str(data), "--sequences", "1", "--frames", "10", "--identities", "4", "--size",
                 "128", "--max-people", "3", "--seed", "5", "--no-progress"]) == 0
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(models / "person.int8.onnx"), "--data", str(data), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["model"] == "PersonNet" and metrics["eval_crops"] > 0
    assert 0.0 <= metrics["attr_acc"] <= 1.0 and 0.0 <= metrics["pose_PCK"] <= 1.0


def test_eval_scores_a_detector_export_like_its_checkpoint(models, tmp_path):
    """``hcq-ros eval --model X.onnx`` on an HCQNet export: the same predictions and AP as the torch checkpoint at the
    export's size (the fp32 export matches torch to ~1e-5), and an int8 file is scored the same way."""
    from hcq_ros.cli import main
    from hcq_ros.evaluation.cli import evaluate_checkpoint

    data = tmp_path / "images"
    assert main(["synth", "--out", str(data), "--images", "6", "--size", "96", "--max-people", "3", "--seed", "5",
                 "--no-progress"]) == 0
    torch.manual_seed(0)
    model = HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY))
    with torch.no_grad():   # the focal prior starts every score at 0.01: lift them over the 0.05 COCO threshold
        model.class_head.linear.bias += 3.0
    save_hcq(tmp_path / "det.pt", model, iteration=1)
    export_model(tmp_path / "det.pt", "onnxruntime", tmp_path, SIZE)
    ref = evaluate_checkpoint(tmp_path / "det.pt", data, input_size=SIZE)
    got = evaluate_checkpoint(tmp_path / "det.onnx", data)
    assert got["model"] == "HCQNet" and got["precision"] == "fp32" and got["input_size"] == list(SIZE)
    assert got["det_num_predictions"] == ref["det_num_predictions"] > 0
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "keypoints_AP"):
        assert abs(got[key] - ref[key]) < 1e-3, key
    out = tmp_path / "int8.json"
    quantize_onnx(tmp_path / "det.onnx", tmp_path / "det.int8.onnx", detector_calibration(SIZE, 2).batches)
    assert main(["eval", "--model", str(tmp_path / "det.int8.onnx"), "--data", str(data), "--json", str(out)]) == 0
    int8 = json.loads(out.read_text())
    assert int8["precision"] == "int8" and int8["det_num_predictions"] > 0 and 0.0 <= int8["bbox_AP"] <= 1.0
    bare = onnx.load(str(tmp_path / "det.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="bare.onnx: --model X.onnx scores PersonNet and HCQNet exports, this is an "
                                         "ONNX without hcq_ros export metadata"):
        evaluate_checkpoint(tmp_path / "bare.onnx", data)


def test_keep_float_leaves_the_named_modules_unquantised(models, tmp_path):
    src = export_model(models / "det.pt", "onnxruntime", tmp_path, SIZE).onnx_path
    modules = node_modules(onnx.load(str(src)))
    assert any(m.startswith("decoder.layers.0.") for m in modules.values())
    assert any(m.startswith("backbone.") for m in modules.values())
    batches = detector_calibration(SIZE, 2).batches
    full = quantize_onnx(src, tmp_path / "full.int8.onnx", batches)["quantization"]
    part = quantize_onnx(src, tmp_path / "part.int8.onnx", batches, keep_float=("decoder", "class_head"))
    q = part["quantization"]
    assert full["float_nodes"] == 0 and q["keep_float"] == ["decoder", "class_head"]
    assert q["float_nodes"] > 0 and q["quantize_nodes"] < full["quantize_nodes"]
    # the ops of the kept modules read float weights (no DequantizeLinear in front), the backbone's do not
    proto = onnx.load(str(tmp_path / "part.int8.onnx"))
    made_by = {o: n for n in proto.graph.node for o in n.output}
    src_modules = node_modules(onnx.load(str(src)))
    seen = set()
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        module = src_modules.get(node.name) or src_modules.get(node.name.split("/")[0], "")
        weight_dq = made_by.get(node.input[1]) is not None and made_by[node.input[1]].op_type == "DequantizeLinear"
        if module.startswith(("decoder.", "class_head")):
            assert not weight_dq, node.name
            seen.add("float")
        elif module.startswith("backbone."):
            assert weight_dq, node.name
            seen.add("int8")
    assert seen == {"float", "int8"}
    backend = OnnxRuntimeBackend(**ORT).load(tmp_path / "part.int8.onnx")
    assert np.isfinite(backend.infer(batches[0])["pred_logits"]).all()
    with pytest.raises(ValueError, match=r"no Conv/MatMul/Gemm node comes from module\(s\) \['decoders'\]"):
        quantize_onnx(src, tmp_path / "bad.int8.onnx", batches, keep_float=("decoders",))
    with pytest.raises(ValueError, match="top-level modules of this export"):
        float_nodes(onnx.load(str(src)), onnx.load(str(src)), ("nothing",))


# ----------------------------------------------------------------------------------------- errors
def test_errors_are_clear(models, tmp_path, capsys):
    base = dict(target="onnxruntime-int8", out=tmp_path, size=None, name=None, opset=18, calib=None,
                calib_method="minmax", json=None)
    assert export_cli.run(argparse.Namespace(model=tmp_path / "missing.pt", **base)) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert export_cli.run(argparse.Namespace(model=models / "person.pt", **{**base, "calib": 0})) == 2
    assert "--calib must be >= 1, got 0" in capsys.readouterr().err
    assert export_cli.run(argparse.Namespace(model=models / "person.pt", **{**base, "target": "onnxruntime",
                                                                          "calib": 8})) == 2
    assert "only apply to --target onnxruntime-int8" in capsys.readouterr().err
    assert export_cli.run(argparse.Namespace(model=models / "person.pt", **{**base, "target": "onnxruntime",
                                                                          "keep_float": ["decoder"]})) == 2
    assert "--keep-float only apply to --target onnxruntime-int8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown calibration method"):
        export_int8(models / "person.pt", tmp_path, method="kl")
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        quantize_onnx(tmp_path / "nothing.onnx", tmp_path / "x.int8.onnx", [])
    with pytest.raises(ValueError, match="got no batches"):
        quantize_onnx(models / "person.onnx", tmp_path / "x.int8.onnx", [])
    with pytest.raises(ValueError, match=r"the model takes \['crops'\]"):
        quantize_onnx(models / "person.onnx", tmp_path / "x.int8.onnx", [{"images": person_crops(1)}])
    assert not list(tmp_path.glob("*.int8.onnx"))

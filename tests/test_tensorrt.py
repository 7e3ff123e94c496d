"""TensorRT backend on a real GPU (skipped, with the reason, where TensorRT or a CUDA GPU is missing): the
built-in MultiscaleDeformableAttnPlugin_TRT resolves, engines build from the tiny exports and come back from the
cache, a corrupt cached engine is rebuilt, the person net's dynamic-batch profile is enforced, the grid_sample
export is refused, INT8 calibration runs on SynthHumans crops. TensorRT-vs-onnxruntime numbers are in
test_backends.py."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

try:
    import tensorrt as trt
except Exception as exc:  # ImportError, or OSError for a broken libnvinfer
    pytest.skip(f"TensorRT not importable: {type(exc).__name__}: {exc}", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip(f"TensorRT {trt.__version__} importable but no CUDA GPU (torch.cuda unavailable)",
                allow_module_level=True)

from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq  # noqa: E402
from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person  # noqa: E402
from hcq_ros.runtime.backend import open_backend  # noqa: E402
from hcq_ros.runtime.export import export_model  # noqa: E402
from hcq_ros.runtime.tensorrt_backend import TensorRTBackend  # noqa: E402
from hcq_ros.runtime.tensorrt_build import deform_attn_plugin_registered  # noqa: E402

HCQ_TINY = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=10, ffn_dim=64, mask_points=256)
PERSON_TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_engines")
    torch.manual_seed(0)
    save_hcq(root / "hcq.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY)))
    save_person(root / "person.pt", PersonNet(PersonNetConfig.preset("small", **PERSON_TINY)))
    for target in ("onnxruntime", "tensorrt"):
        export_model(root / "hcq.pt", target, root, (64, 64))
    export_model(root / "person.pt", "tensorrt", root)
    return root


def test_plugin_is_registered():
    assert deform_attn_plugin_registered(trt)


def test_detector_engine_builds_then_comes_from_the_cache(exports, tmp_path):
    first = TensorRTBackend(precision="fp16", cache_dir=tmp_path).load(exports / "hcq.trt.onnx")
    assert first.reason.startswith("built") and first.input_names == ["images"]
    assert first.output_names == first.metadata["output_names"]
    out = first.infer({"images": np.zeros((1, 3, 64, 64), np.float32)})
    assert out["pred_masks"].shape == (1, 10, 16, 16) and np.isfinite(out["pred_logits"]).all()
    first.close()
    second, reason = open_backend("tensorrt", exports / "hcq.trt.onnx", precision="fp16", cache_dir=tmp_path)
    assert second.reason.startswith("cached engine") and "requested explicitly" in reason
    with pytest.raises(ValueError, match="must be float32"):
        second.infer({"images": np.zeros((1, 3, 64, 64), np.float64)})
    second.close()


def test_corrupt_cached_engine_is_rebuilt(exports, tmp_path, caplog):
    backend = TensorRTBackend(precision="fp32", cache_dir=tmp_path).load(exports / "hcq.trt.onnx")
    backend.close()
    engine = next(tmp_path.glob("hcq-*.engine"))
    engine.write_bytes(b"\x00" * 64)
    meta = json.loads(engine.with_suffix(".json").read_text())
    import hashlib
    meta["engine_sha256"] = hashlib.sha256(b"\x00" * 64).hexdigest()   # metadata fine, bytes refused
    engine.with_suffix(".json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        rebuilt = TensorRTBackend(precision="fp32", cache_dir=tmp_path).load(exports / "hcq.trt.onnx")
    assert rebuilt.reason.startswith("built") and "deserialisation" in caplog.text
    rebuilt.close()


def test_person_profile_is_enforced_and_empty_batches_skip_the_engine(exports, tmp_path):
    backend = TensorRTBackend(precision="fp16", cache_dir=tmp_path, batch_profile=(1, 2, 4))
    backend.load(exports / "person.trt.onnx")
    assert backend.shape_bounds["crops"] == ((1, 3, 64, 32), (4, 3, 64, 32))
    assert backend.infer({"crops": np.zeros((3, 3, 64, 32), np.float32)})["embedding"].shape == (3, 32)
    with pytest.raises(ValueError, match="outside the optimisation profile"):
        backend.infer({"crops": np.zeros((5, 3, 64, 32), np.float32)})
    assert backend.infer({"crops": np.zeros((0, 3, 64, 32), np.float32)})["part_logits"].shape == (0, 15, 64, 32)
    backend.close()


def test_grid_sample_export_and_foreign_engines_are_refused(exports, tmp_path):
    with pytest.raises(ValueError, match="grid_sample"):
        TensorRTBackend(cache_dir=tmp_path).load(exports / "hcq.onnx")
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"not an engine")
    with pytest.raises(ValueError, match="not an engine this TensorRT"):
        TensorRTBackend(cache_dir=tmp_path).load(garbage)


def test_serialised_engine_file_loads_directly(exports, tmp_path):
    engine_file = tmp_path / "person.engine"
    TensorRTBackend(precision="fp16", cache_dir=tmp_path, engine_path=engine_file).load(
        exports / "person.trt.onnx").close()
    backend = TensorRTBackend().load(engine_file)
    assert backend.reason == f"serialised engine {engine_file}"
    assert backend.infer({"crops": np.zeros((2, 3, 64, 32), np.float32)})["keypoints"].shape == (2, 17, 2)
    backend.close()


def test_int8_calibrates_on_synthhumans_crops(exports, tmp_path):
    if not hasattr(trt.BuilderFlag, "INT8"):
        pytest.skip(f"TensorRT {trt.__version__} has no implicit INT8")
    backend = TensorRTBackend(precision="int8", cache_dir=tmp_path, batch_profile=(1, 4, 8), calib_count=8)
    backend.load(exports / "person.trt.onnx")
    assert list(tmp_path.glob("person-*.calib"))
    assert backend.infer({"crops": np.zeros((2, 3, 64, 32), np.float32)})["embedding"].shape == (2, 32)
    backend.close()

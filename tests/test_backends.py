"""Backends behind one interface (and the onnxruntime-form exports they run): torch vs onnxruntime (and TensorRT vs onnxruntime where TensorRT and a GPU exist)
agree on tiny random HCQNet / PersonNet exports and on the shipped ``engines/*.onnx`` once they exist; input
validation; empty batches; provider handling; ``open_backend`` / ``auto`` selection without silent fallback.

Tolerances: raw outputs 1e-4 absolute (1e-3 for mask / part logits, larger magnitudes); after the
postprocessor boxes and keypoints within 0.5 px, mask IoU > 0.99; embeddings cosine > 0.9999, attribute
argmax equal, part-label agreement > 0.99. TensorRT (fp32, TF32 off) gets 10x the raw tolerances.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq
from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person
from hcq_ros.models.postprocess import HCQPostProcess
from hcq_ros.ops.ms_deform_attn_onnx import count_trt_plugin_nodes
from hcq_ros.runtime.backend import Availability, choose_backend, open_backend, resolve_model_file
from hcq_ros.runtime.export import export_model, read_export_metadata
from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from hcq_ros.runtime.tensorrt_build import calibration_batches

from helpers import once_per_session  # noqa: E402  (tests/ is on sys.path under pytest)

HCQ_TINY = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=10, ffn_dim=64, mask_points=256)
PERSON_TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))
ENGINES = Path(__file__).resolve().parents[1] / "engines"
RAW_ATOL = {"pred_masks": 1e-3, "part_logits": 1e-3}
DEFAULT_ATOL = 1e-4
ORT = {"intra_op_threads": 1}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{"tiny_hcq": stem path, "tiny_person": stem path}: .pt checkpoints + onnxruntime exports."""
    with once_per_session(tmp_path_factory, "tiny_backend_engines") as (root, ready):
        if not ready:
            torch.manual_seed(0)
            save_hcq(root / "tiny_hcq.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY)))
            person = PersonNet(PersonNetConfig.preset("small", **PERSON_TINY))
            with torch.no_grad():   # non-trivial GroupNorm affine parameters so every branch contributes
                for m in person.modules():
                    if isinstance(m, torch.nn.GroupNorm):
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.normal_(0.0, 0.1)
            save_person(root / "tiny_person.pt", person)
            export_model(root / "tiny_hcq.pt", "onnxruntime", root, (64, 64))
            export_model(root / "tiny_person.pt", "onnxruntime", root)
    return {"tiny_hcq": root / "tiny_hcq", "tiny_person": root / "tiny_person"}


def shipped_models() -> list:
    """engines/<stem>.onnx with a <stem>.pt beside it; one skipping param while there are none."""
    found = sorted(p for p in ENGINES.glob("*.onnx") if not p.name.endswith(".trt.onnx")
                   and p.with_suffix(".pt").is_file()) if ENGINES.is_dir() else []
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no shipped {ENGINES}/*.onnx with a .pt yet"),
                             id="shipped")]
    return [pytest.param(p.with_suffix(""), id=p.stem) for p in found]


def model_inputs(onnx_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(kind, inputs): a SynthHumans frame letterboxed to the detector size, or 3 SynthHumans person crops."""
    meta = read_export_metadata(onnx_path)
    kind, size = meta["kind"], tuple(meta["input_size"])
    batch = 1 if kind == "hcq" else 3
    array = next(calibration_batches(kind, size, batch, batch, seed=5))
    return kind, {meta["input_names"][0]: array}


# ----------------------------------------------------------------------------------------- comparator
def compare_outputs(kind: str, ref: dict, got: dict, input_hw: tuple[int, int], scale: float = 1.0) -> None:
    """Raw outputs within tolerance, then task-level agreement (see module docstring)."""
    assert list(got) == list(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=0, err_msg=name,
                                   atol=scale * RAW_ATOL.get(name, DEFAULT_ATOL))
    (compare_detections if kind == "hcq" else compare_person)(ref, got, input_hw)


def compare_detections(ref: dict, got: dict, input_hw: tuple[int, int]) -> None:
    post = HCQPostProcess(score_threshold=0.0, max_people=1000)
    a, b = (post({k: torch.from_numpy(v) for k, v in out.items()}, [input_hw])[0] for out in (ref, got))
    assert len(a["scores"]) == len(b["scores"]) > 0
    cost = torch.cdist(a["boxes"], b["boxes"], p=1).numpy()   # score ties may reorder: match by box
    rows, cols = linear_sum_assignment(cost)
    assert np.abs(a["boxes"][rows].numpy() - b["boxes"][cols].numpy()).max() < 0.5
    assert np.abs(a["keypoints"][rows, :, :2].numpy() - b["keypoints"][cols, :, :2].numpy()).max() < 0.5
    ma, mb = a["masks"][rows].numpy(), b["masks"][cols].numpy()
    union = np.logical_or(ma, mb).sum()
    assert union == 0 or np.logical_and(ma, mb).sum() / union > 0.99


def compare_person(ref: dict, got: dict, input_hw: tuple[int, int]) -> None:
    e1, e2 = ref["embedding"], got["embedding"]
    cosine = (e1 * e2).sum(1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
    assert cosine.min() > 0.9999
    for name in (n for n in ref if n.startswith("attr_")):
        assert (ref[name].argmax(1) == got[name].argmax(1)).all(), name
    h, w = input_hw
    assert np.abs((ref["keypoints"] - got["keypoints"]) * np.array([w, h])).max() < 0.5
    assert (ref["part_logits"].argmax(1) == got["part_logits"].argmax(1)).mean() > 0.99
    if "part_labels" in ref:   # the in-graph argmax: int32 and the argmax of the same runtime's logits
        assert ref["part_labels"].dtype == got["part_labels"].dtype == np.int32
        assert (got["part_labels"] == got["part_logits"].argmax(1)).all()
        assert (ref["part_labels"] == got["part_labels"]).mean() > 0.99


def run_torch_vs_onnxruntime(stem: Path) -> None:
    kind, inputs = model_inputs(stem.with_suffix(".onnx"))
    with open_backend("torch", stem.with_suffix(".pt"))[0] as torch_backend, \
            open_backend("onnxruntime", stem.with_suffix(".onnx"), **ORT)[0] as ort_backend:
        assert torch_backend.input_names == ort_backend.input_names
        assert torch_backend.output_names == ort_backend.output_names
        ref, got = torch_backend.infer(inputs), ort_backend.infer(inputs)
    compare_outputs(kind, ref, got, next(iter(inputs.values())).shape[-2:])


@pytest.mark.parametrize("which", ["tiny_hcq", "tiny_person"])
def test_torch_and_onnxruntime_agree_on_tiny_models(tiny_models, which):
    run_torch_vs_onnxruntime(tiny_models[which])


@pytest.mark.parametrize("stem", shipped_models())
def test_torch_and_onnxruntime_agree_on_shipped_models(stem):
    run_torch_vs_onnxruntime(stem)


def tensorrt_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"TensorRT not importable: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return "TensorRT importable but torch.cuda has no GPU for the CUDA buffers"
    return None


@pytest.mark.parametrize("which", ["tiny_hcq", "tiny_person"])
def test_tensorrt_and_onnxruntime_agree(tiny_models, tmp_path, which):
    reason = tensorrt_skip_reason()
    if reason:
        pytest.skip(reason)
    stem = tiny_models[which]
    export_model(stem.with_suffix(".pt"), "tensorrt", stem.parent, (64, 64) if which == "tiny_hcq" else None)
    kind, inputs = model_inputs(stem.with_suffix(".onnx"))
    with open_backend("onnxruntime", stem.with_suffix(".onnx"), **ORT)[0] as ort_backend, \
            open_backend("tensorrt", stem.with_name(stem.name + ".trt.onnx"), precision="fp32",
                         cache_dir=tmp_path)[0] as trt_backend:
        assert trt_backend.output_names == ort_backend.output_names
        compare_outputs(kind, ort_backend.infer(inputs), trt_backend.infer(inputs),
                        next(iter(inputs.values())).shape[-2:], scale=10.0)


# ----------------------------------------------------------------------------------------- exports
def test_onnxruntime_exports_have_the_documented_form(tiny_models):
    hcq = onnx.load(str(tiny_models["tiny_hcq"].with_suffix(".onnx")))
    assert count_trt_plugin_nodes(hcq) == 0 and any(n.op_type == "GridSample" for n in hcq.graph.node)
    assert read_export_metadata(tiny_models["tiny_hcq"].with_suffix(".onnx"))["export_form"] == "grid_sample"
    person_path = tiny_models["tiny_person"].with_suffix(".onnx")
    person = onnx.load(str(person_path))
    dims = person.graph.input[0].type.tensor_type.shape.dim
    assert person.graph.input[0].name == "crops"
    assert dims[0].HasField("dim_param") and [d.dim_value for d in dims[1:]] == [3, 64, 32]
    names = PersonNet(PersonNetConfig.preset("small", **PERSON_TINY)).output_names() + ["part_labels"]
    assert [o.name for o in person.graph.output] == names
    meta = read_export_metadata(person_path)
    assert meta["export_form"] == "plain" and meta["dynamic_batch"] and meta["input_size"] == [32, 64]
    assert meta["input_shapes"] == {"crops": [None, 3, 64, 32]} and meta["output_names"] == names


# ----------------------------------------------------------------------------------------- interface
def test_inputs_are_validated_with_clear_errors(tiny_models):
    backend = OnnxRuntimeBackend(**ORT).load(tiny_models["tiny_hcq"].with_suffix(".onnx"))
    good = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(ValueError, match=r"missing \['images'\], unexpected \['image'\]"):
        backend.infer({"image": good})
    with pytest.raises(ValueError, match="must be float32, got float64"):
        backend.infer({"images": good.astype(np.float64)})
    with pytest.raises(ValueError, match=r"dim 2 must be 64 .*got shape \[1, 3, 32, 64\]"):
        backend.infer({"images": good[:, :, :32]})
    with pytest.raises(ValueError, match="must have rank 4"):
        backend.infer({"images": good[0]})
    with pytest.raises(ValueError, match="must be a numpy array"):
        backend.infer({"images": torch.zeros(1, 3, 64, 64)})
    with pytest.raises(ValueError, match="dim 0 must be 1"):
        backend.infer({"images": np.zeros((2, 3, 64, 64), np.float32)})
    empty = backend.infer({"images": good[:0]})          # no frames -> empty outputs of the right shapes
    assert empty["pred_logits"].shape == (0, 10, 1) and empty["pred_masks"].shape == (0, 10, 16, 16)
    torch_backend = open_backend("torch", tiny_models["tiny_hcq"].with_suffix(".pt"))[0]
    assert {k: v.shape for k, v in torch_backend.infer({"images": good[:0]}).items()} == \
        {k: v.shape for k, v in empty.items()}


def test_empty_person_batch_never_reaches_the_session(tiny_models, monkeypatch):
    backend = OnnxRuntimeBackend(**ORT).load(tiny_models["tiny_person"].with_suffix(".onnx"))

    def fail(*args, **kwargs):
        raise AssertionError("session.run called for an empty batch")

    monkeypatch.setattr(backend.session, "run", fail)
    out = backend.infer({"crops": np.zeros((0, 3, 64, 32), np.float32)})
    assert out["embedding"].shape == (0, 32) and out["part_logits"].shape == (0, 15, 64, 32)
    assert out["part_labels"].shape == (0, 64, 32) and out["part_labels"].dtype == np.int32
    assert list(out) == backend.output_names


def test_onnxruntime_providers_and_files_fail_loudly(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="'CUDAExecutionProvider' is not in this onnxruntime build"):
        OnnxRuntimeBackend(providers=["cuda"])
    with pytest.raises(ValueError, match="intra_op_num_threads must be >= 1"):
        OnnxRuntimeBackend(intra_op_threads=0)
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        OnnxRuntimeBackend().load(tmp_path / "nothing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00not a protobuf")
    with pytest.raises(ValueError, match="broken.onnx is not a readable ONNX model"):
        OnnxRuntimeBackend().load(broken)
    plugin_form = tmp_path / "m.trt.onnx"
    plugin_form.write_bytes(b"")
    with pytest.raises(ValueError, match="TensorRT-plugin export"):
        OnnxRuntimeBackend().load(plugin_form)
    backend = OnnxRuntimeBackend(providers=["cpu"], **ORT).load(tiny_models["tiny_person"].with_suffix(".onnx"))
    assert backend.active_providers == ["CPUExecutionProvider"]
    assert backend.metadata["kind"] == "person"


def test_resolve_model_file_uses_the_right_sibling(tmp_path):
    for name in ("m.pt", "m.onnx", "m.trt.onnx"):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_model_file("onnxruntime", tmp_path / "m.trt.onnx") == tmp_path / "m.onnx"
    assert resolve_model_file("tensorrt", tmp_path / "m.onnx") == tmp_path / "m.trt.onnx"
    assert resolve_model_file("torch", tmp_path / "m.onnx") == tmp_path / "m.pt"
    (tmp_path / "m.trt.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="grid_sample .onnx must never be fed to TensorRT"):
        resolve_model_file("tensorrt", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_model_file("openvino", tmp_path / "m.onnx")


def fake_availability(trt=True, gpu=True, ort=True, torch_ok=True) -> Availability:
    return Availability({"tensorrt": (trt, "tensorrt 10.3.0" if trt else "tensorrt not importable"),
                         "onnxruntime": (ort, "onnxruntime 1.x"), "torch": (torch_ok, "torch 2.x")},
                        (gpu, "Orin (sm 8.7)" if gpu else "no CUDA GPU"))


def test_auto_policy_order_and_reasons():
    assert choose_backend(None, fake_availability())[0] == ["tensorrt", "onnxruntime", "torch"]
    usable, reason = choose_backend(None, fake_availability(gpu=False))
    assert usable[0] == "onnxruntime" and "no CUDA GPU" in reason
    assert choose_backend(None, fake_availability(trt=False, ort=False))[0] == ["torch"]
    with pytest.raises(RuntimeError, match="nothing usable"):
        choose_backend(None, fake_availability(trt=False, ort=False, torch_ok=False))


def test_auto_skips_missing_files_and_records_load_failures(tiny_models, tmp_path):
    stem = tiny_models["tiny_person"]
    usable, reason = choose_backend(stem.with_suffix(".onnx"), fake_availability())
    assert usable == ["onnxruntime", "torch"] and "tensorrt: skipped" in reason and ".trt.onnx" in reason
    # TensorRT claimed usable and its file exists, but it cannot load here: auto moves on and says so
    (stem.parent / "tiny_person.trt.onnx").write_bytes(b"")
    try:
        backend, reason = open_backend("auto", stem.with_suffix(".onnx"), availability=fake_availability(),
                                       intra_op_threads=1, precision="fp16")
    finally:
        (stem.parent / "tiny_person.trt.onnx").unlink()
    assert backend.name == "onnxruntime" and "tensorrt failed to load" in reason and "using onnxruntime" in reason
    assert backend.infer({"crops": np.zeros((1, 3, 64, 32), np.float32)})["embedding"].shape == (1, 32)


def test_named_backend_never_falls_back(tiny_models):
    stem = tiny_models["tiny_hcq"]
    if tensorrt_skip_reason() is None:
        pytest.skip("TensorRT is usable here; the no-fallback case needs it missing")
    with pytest.raises(ImportError, match="TensorRT not importable"):
        open_backend("tensorrt", stem.with_suffix(".onnx"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch.cuda is not available"):
            open_backend("torch", stem.with_suffix(".pt"), device="cuda")
    backend, reason = open_backend("torch", stem.with_suffix(".onnx"))
    assert backend.name == "torch" and "requested explicitly" in reason
    with pytest.raises(ValueError, match=r"torch backend: unknown options \['intra_op_threads'\]"):
        open_backend("torch", stem.with_suffix(".pt"), intra_op_threads=1)
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        open_backend("openvino", stem.with_suffix(".pt"))

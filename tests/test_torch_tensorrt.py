"""``hcq-ros export --target torch-tensorrt`` (hcq_ros/runtime/torch_tensorrt_export.py). Here (no torch_tensorrt,
no GPU): a clear error and nothing written. Where torch_tensorrt, TensorRT and a CUDA GPU exist: the tiny detector
compiles (its deformable attention through the MultiscaleDeformableAttnPlugin_TRT converter), loads back and agrees
with the torch model; the tiny PersonNet keeps its dynamic batch."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from hcq_ros.models.hcq import HCQConfig, HCQNet, save_checkpoint as save_hcq
from hcq_ros.models.person_net import PersonNet, PersonNetConfig, save_checkpoint as save_person
from hcq_ros.runtime import export_cli

HCQ_TINY = dict(d_model=32, mask_dim=32, enc_layers=1, dec_layers=2, num_queries=8, ffn_dim=64, mask_points=256,
                query_init="learned")
PERSON_TINY = dict(pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32, crop_size=(64, 32))


def _args(model, out, **extra) -> argparse.Namespace:
    base = dict(model=model, target="torch-tensorrt", out=out, size=None, name=None, opset=18, calib=None,
                calib_method="minmax", keep_float=None, precision=None, json=None)
    return argparse.Namespace(**{**base, **extra})


def _torch_trt_missing() -> str | None:
    """Why the compile tests cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
        import torch_tensorrt  # noqa: F401
    except Exception as exc:
        return f"torch_tensorrt / TensorRT not importable: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return "torch_tensorrt importable but no CUDA GPU (torch.cuda unavailable)"
    return None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchtrt")
    torch.manual_seed(0)
    save_hcq(root / "det.pt", HCQNet(HCQConfig.preset("hcqnet", "small", **HCQ_TINY)), iteration=1)
    save_person(root / "person.pt", PersonNet(PersonNetConfig.preset("small", **PERSON_TINY)))
    return root


def test_without_torch_tensorrt_the_export_says_what_is_missing(checkpoints, tmp_path, capsys):
    if _torch_trt_missing() is None:
        pytest.skip("torch_tensorrt and a GPU are present: the compile tests below cover this path")
    out = tmp_path / "out"
    assert export_cli.run(_args(checkpoints / "person.pt", out)) == 2
    err = capsys.readouterr().err
    assert "hcq-ros export: error:" in err
    assert ("needs the torch_tensorrt package" in err or "torch.cuda is not available" in err
            or "TensorRT does not" in err), err
    assert not out.exists() or not any(out.iterdir())
    # a missing checkpoint is still reported as such, before the runtime check
    assert export_cli.run(_args(tmp_path / "missing.pt", out)) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_precision_only_with_torch_tensorrt(checkpoints, tmp_path, capsys):
    assert export_cli.run(_args(checkpoints / "person.pt", tmp_path, target="onnxruntime", precision="fp32")) == 2
    assert "--precision only applies to --target torch-tensorrt" in capsys.readouterr().err


def test_fp16_is_asked_for_the_way_each_torch_tensorrt_release_takes_it():
    """Newer torch-tensorrt releases default use_explicit_typing=True (enabled_precisions alone is then ignored); later
    releases add rule-based autocast. The options follow the compile function's signature (stand-ins here)."""
    from hcq_ros.runtime.torch_tensorrt_export import precision_options, save_options

    def old_compile(program, inputs=None, *, enabled_precisions=None, min_block_size=5):
        pass

    def explicit_typing_compile(program, inputs=None, *, enabled_precisions=None, use_explicit_typing=True):
        pass

    def autocast_compile(program, inputs=None, *, use_explicit_typing=True, enable_autocast=False,
                         low_precision_type=None, enabled_precisions=None):
        pass

    assert precision_options(old_compile, "fp16") == ({"enabled_precisions": {torch.float16}},
                                                      "fp16 by enabled_precisions")
    options, mode = precision_options(explicit_typing_compile, "fp16")
    assert options == {"use_explicit_typing": False, "enabled_precisions": {torch.float16}} and "weak typing" in mode
    options, mode = precision_options(autocast_compile, "fp16")
    assert options["enable_autocast"] and options["low_precision_type"] is torch.float16 and "autocast" in mode
    assert precision_options(autocast_compile, "fp32")[0] == {"enabled_precisions": {torch.float32}}

    def old_save(module, path, *, inputs=None, retrace=False):
        pass

    def new_save(module, path, *, inputs=None, arg_inputs=None, dynamic_shapes=None, retrace=True):
        pass

    example, dynamic = torch.zeros(2, 3, 8, 4), ({0: torch.export.Dim("batch", min=1, max=32)},)
    assert save_options(old_save, example, dynamic) == {"inputs": [example]}
    assert save_options(new_save, example, dynamic) == {"arg_inputs": [example], "dynamic_shapes": dynamic}
    assert save_options(new_save, example, None) == {"arg_inputs": [example]}


def test_detector_compiles_with_the_plugin_and_agrees_with_torch(checkpoints, tmp_path):
    reason = _torch_trt_missing()
    if reason:
        pytest.skip(reason)
    import torch_tensorrt  # noqa: F401  (registers the runtime ops torch.export.load needs)

    from hcq_ros.runtime.export import example_input, flat_io_module, load_model_checkpoint
    from hcq_ros.runtime.torch_tensorrt_export import export_torch_tensorrt

    result = export_torch_tensorrt(checkpoints / "det.pt", tmp_path, input_size=(64, 64), precision="fp32")
    meta = json.loads(result.metadata_path.read_text())
    assert meta["kind"] == "hcq" and meta["input_size"] == [64, 64] and meta["precision"] == "fp32"
    _, model = load_model_checkpoint(checkpoints / "det.pt")
    module = flat_io_module("hcq", model, (64, 64)).cuda().eval()
    compiled = torch.export.load(str(result.onnx_path)).module()
    x = example_input("hcq", (64, 64)).cuda()
    with torch.no_grad():
        ref, got = module(x), compiled(x)
    for name, r, g in zip(meta["output_names"], ref, got):
        np.testing.assert_allclose(g.float().cpu().numpy(), r.float().cpu().numpy(), atol=2e-3, rtol=2e-3,
                                   err_msg=name)


def test_person_net_keeps_its_dynamic_batch(checkpoints, tmp_path):
    reason = _torch_trt_missing()
    if reason:
        pytest.skip(reason)
    import torch_tensorrt  # noqa: F401

    from hcq_ros.runtime.torch_tensorrt_export import export_torch_tensorrt

    result = export_torch_tensorrt(checkpoints / "person.pt", tmp_path, precision="fp16")
    assert result.metadata["batch_profile"] == [1, 8, 32]
    compiled = torch.export.load(str(result.onnx_path)).module()
    for n in (1, 5):
        outs = compiled(torch.randn(n, 3, 64, 32, device="cuda"))
        assert outs[0].shape == (n, 32)             # embedding

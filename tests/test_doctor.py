"""``hcq-ros doctor``: the report completes on any machine, is JSON-able, and tells the truth about this one
(what imports, whether a GPU / TensorRT / the deformable-attention plugin exist, what ``auto`` would pick)."""
from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from hcq_ros.runtime import doctor


@pytest.fixture(scope="module")
def report():
    return doctor.collect_report()


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_report_matches_this_machine(report):
    json.dumps(report)   # JSON-able
    for name in ("tensorrt", "onnxruntime", "torch", "rclpy", "cv_bridge", "rosbags"):
        assert report["packages"][name]["importable"] == importable(name), name
    import onnxruntime
    import torch
    assert report["packages"]["onnxruntime"]["version"] == onnxruntime.__version__
    assert report["onnxruntime_providers"] == onnxruntime.get_available_providers()
    assert report["gpu"]["torch_cuda"]["available"] == torch.cuda.is_available()
    if not importable("tensorrt"):
        assert report["tensorrt"]["registered"] is None and "not importable" in report["tensorrt"]["detail"]
        assert report["packages"]["tensorrt"]["error"].startswith("ModuleNotFoundError")


def test_auto_choice_follows_the_policy(report):
    auto = report["auto_backend"]
    trt_usable = importable("tensorrt") and report["tensorrt"]["registered"] and (
        report["gpu"]["torch_cuda"]["available"] or report["gpu"]["nvidia_smi"]["gpus"])
    expected = "tensorrt" if trt_usable else "onnxruntime" if importable("onnxruntime") else "torch"
    assert auto["choice"] == expected
    assert f"auto chose {expected}" in auto["reason"] and "tensorrt:" in auto["reason"]


def test_text_and_json_output(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    assert doctor.run(parser.parse_args([])) == 0
    text = capsys.readouterr().out
    for needle in ("inference runtimes", "onnxruntime providers", "MultiscaleDeformableAttnPlugin_TRT",
                   "rclpy", "cv_bridge", "rosbags", "auto backend ->"):
        assert needle in text
    assert doctor.run(parser.parse_args(["--json"])) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"packages", "gpu", "tensorrt", "onnxruntime_providers", "auto_backend"}
    out = tmp_path / "doctor.json"
    assert doctor.run(parser.parse_args(["--json", str(out)])) == 0
    assert json.loads(out.read_text())["auto_backend"]["choice"] == printed["auto_backend"]["choice"]


def test_missing_module_is_reported_not_raised():
    info = doctor.probe_module("hcq_ros_no_such_module")
    assert info == {"importable": False, "version": None,
                    "error": "ModuleNotFoundError: No module named 'hcq_ros_no_such_module'"}

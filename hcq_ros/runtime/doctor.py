"""``hcq-ros doctor [--json [OUT]]``: what this machine can run, reported honestly.

Checks: the inference runtimes and their versions (TensorRT, onnxruntime + execution providers, torch,
torch-tensorrt, pycuda), the GPU (torch.cuda and nvidia-smi), whether TensorRT's plugin registry holds
``MultiscaleDeformableAttnPlugin_TRT`` v1 after ``init_libnvinfer_plugins``, the ROS side (rclpy, cv_bridge,
rosbags, mcap) and the export tools (onnx, onnxscript), and what ``auto`` backend selection would choose and
why. Every probe catches its own failure, so the report always completes.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# module name -> distribution name for the version fallback (modules without __version__)
PACKAGES = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "torch": "torch", "torch_tensorrt": "torch-tensorrt",
            "pycuda": "pycuda", "onnx": "onnx", "onnxscript": "onnxscript", "cv2": "opencv-python-headless",
            "rclpy": "rclpy", "cv_bridge": "cv_bridge", "rosbags": "rosbags", "mcap": "mcap"}


def probe_module(module_name: str) -> dict[str, Any]:
    """{"importable": bool, "version": str | None, "error": str | None} for one module."""
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or OSError for missing shared libraries
        return {"importable": False, "version": None, "error": f"{type(exc).__name__}: {exc}"}
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(PACKAGES.get(module_name, module_name))
        except importlib.metadata.PackageNotFoundError:
            version = None
    return {"importable": True, "version": str(version) if version is not None else None, "error": None}


def probe_nvidia_smi() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"found": False, "gpus": [], "error": "nvidia-smi not on PATH"}
    fields = "name,compute_cap,driver_version,memory.total"
    try:
        result = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=15)
    except (subprocess.SubprocessError, OSError) as exc:
        return {"found": True, "gpus": [], "error": f"{type(exc).__name__}: {exc}"}
    if result.returncode != 0:
        return {"found": True, "gpus": [], "error": (result.stderr or result.stdout).strip()[:300]}
    gpus = [dict(zip(fields.split(","), (v.strip() for v in line.split(","))))
            for line in result.stdout.strip().splitlines() if line.strip()]
    return {"found": True, "gpus": gpus, "error": None}


def probe_torch_cuda(torch_info: dict) -> dict[str, Any]:
    if not torch_info["importable"]:
        return {"available": False, "devices": [], "detail": "torch not importable"}
    import torch
    if not torch.cuda.is_available():
        return {"available": False, "devices": [], "detail": f"torch {torch.__version__} reports no CUDA device "
                                                            f"(built with CUDA {torch.version.cuda})"}
    devices = [{"name": torch.cuda.get_device_name(i),
                "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
               for i in range(torch.cuda.device_count())]
    return {"available": True, "devices": devices, "detail": f"CUDA {torch.version.cuda}"}


def probe_tensorrt_plugin(trt_info: dict) -> dict[str, Any]:
    from hcq_ros.runtime.tensorrt_build import PLUGIN_NAME, PLUGIN_VERSION

    out = {"plugin": PLUGIN_NAME, "plugin_version": PLUGIN_VERSION, "registered": None}
    if not trt_info["importable"]:
        return {**out, "detail": "not checked: TensorRT not importable"}
    try:
        import tensorrt as trt
        from hcq_ros.runtime.tensorrt_build import registered_plugins
        plugins = registered_plugins(trt)
    except Exception as exc:
        return {**out, "detail": f"plugin registry probe failed: {type(exc).__name__}: {exc}"}
    versions = sorted({v for n, v, _ in plugins if n == PLUGIN_NAME})
    return {**out, "registered": PLUGIN_VERSION in versions,
            "detail": f"{len(plugins)} creators registered; {PLUGIN_NAME} versions {versions or 'none'}"}


def collect_report() -> dict[str, Any]:
    """Everything ``doctor`` prints, as a JSON-able dict."""
    from hcq_ros.runtime.backend import Availability, choose_backend

    packages = {name: probe_module(name) for name in PACKAGES}
    report: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                              "packages": packages}
    providers = []
    if packages["onnxruntime"]["importable"]:
        import onnxruntime
        providers = list(onnxruntime.get_available_providers())
    report["onnxruntime_providers"] = providers
    report["gpu"] = {"torch_cuda": probe_torch_cuda(packages["torch"]), "nvidia_smi": probe_nvidia_smi()}
    report["tensorrt"] = probe_tensorrt_plugin(packages["tensorrt"])

    torch_cuda, smi = report["gpu"]["torch_cuda"], report["gpu"]["nvidia_smi"]
    if torch_cuda["available"]:
        gpu = (True, torch_cuda["devices"][0]["name"])
    elif smi["gpus"]:
        gpu = (True, f"{smi['gpus'][0].get('name')} (nvidia-smi; torch has no CUDA)")
    else:
        gpu = (False, "no CUDA GPU (torch.cuda unavailable, nvidia-smi " + (smi["error"] or "lists none") + ")")
    runtimes = {kind: (packages[kind]["importable"],
                       f"{kind} {packages[kind]['version']}" if packages[kind]["importable"]
                       else f"{kind} not importable: {packages[kind]['error']}")
                for kind in ("tensorrt", "onnxruntime", "torch")}
    if report["tensorrt"]["registered"] is False:
        runtimes["tensorrt"] = (False, f"{runtimes['tensorrt'][1]} without {report['tensorrt']['plugin']}")
    try:
        usable, reason = choose_backend(None, Availability(runtimes, gpu))
        report["auto_backend"] = {"choice": usable[0], "reason": reason}
    except RuntimeError as exc:
        report["auto_backend"] = {"choice": None, "reason": str(exc)}
    return report


def _package_line(name: str, info: dict) -> str:
    state = (info["version"] or "installed") if info["importable"] else f"no ({info['error']})"
    return f"  {name:<15} {state}"


def format_report(report: dict[str, Any]) -> str:
    p = report["packages"]
    lines = [f"hcq-ros doctor: python {report['python']} on {report['platform']}", "inference runtimes"]
    lines += [_package_line(n, p[n]) for n in ("tensorrt", "onnxruntime", "torch", "torch_tensorrt", "pycuda")]
    lines.append(f"  onnxruntime providers: {', '.join(report['onnxruntime_providers']) or 'none'}")
    tc, smi = report["gpu"]["torch_cuda"], report["gpu"]["nvidia_smi"]
    lines.append("GPU")
    lines.append("  torch.cuda      " + (", ".join(f"{d['name']} (sm {d['compute_capability']})" for d in tc["devices"])
                                         if tc["available"] else f"not available ({tc['detail']})"))
    lines.append("  nvidia-smi      " + (", ".join(f"{g.get('name')} (sm {g.get('compute_cap')}, driver "
                                                   f"{g.get('driver_version')})" for g in smi["gpus"])
                                         if smi["gpus"] else f"no GPU listed ({smi['error']})"))
    t = report["tensorrt"]
    state = {True: "registered", False: "MISSING", None: "unknown"}[t["registered"]]
    lines.append(f"TensorRT plugin {t['plugin']} v{t['plugin_version']}: {state} ({t['detail']})")
    lines.append("export tools")
    lines += [_package_line(n, p[n]) for n in ("onnx", "onnxscript", "cv2")]
    lines.append("ROS / recording")
    lines += [_package_line(n, p[n]) for n in ("rclpy", "cv_bridge", "rosbags", "mcap")]
    auto = report["auto_backend"]
    lines.append(f"auto backend -> {auto['choice']}")
    lines.append(f"  {auto['reason']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="OUT",
                        help="print the report as JSON (or write it to OUT)")


def run(args: argparse.Namespace) -> int:
    report = collect_report()
    if args.json is None:
        print(format_report(report))
    elif args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(format_report(report))
        print(f"report written to {out}")
    return 0

"""Unified HCQNet vs three single-task networks (detection, segmentation, pose) of the same size settings, run
back to back on one frame: latency per network and its sum (``hcq-ros bench --unified-vs-separate``), the counted
FLOPs of each, and the FLOPs ratio of ``hcq_ros.evaluation.cost`` (DESIGN.md §8; target: unified <= 0.4x)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hcq_ros.evaluation.bench import TARGETS, _summary

class SkippedHead(nn.Module):
    """Stands in for a head a single-task network does not have: computes nothing, returns None."""

    def forward(self, *args):
        return None


class TaskNet(nn.Module):
    """An HCQNet variant with flat outputs: forward(images [1, 3, H, W]) -> tuple of its non-None outputs, in
    DETECTOR_OUTPUTS order (``output_names``; found by a probe forward, as export.DetectorIO does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from hcq_ros.runtime.export import DETECTOR_OUTPUTS

        self.model = model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, 64, 64, device=device), with_aux=False)
        self.output_names = [k for k in DETECTOR_OUTPUTS if probe.get(k) is not None]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, with_aux=False)
        return tuple(out[k] for k in self.output_names)


def task_networks(config_dict: dict, device: str = "cpu") -> dict[str, TaskNet]:
    """{"unified", "detection", "segmentation", "pose"} -> TaskNet, as hcq_ros.evaluation.cost defines them: each
    single-task network has its own backbone + pixel decoder + decoder + class and box heads, plus the mask head
    (segmentation) or the pose heads (pose). No preset drops the mask head, so detection and pose skip it
    (SkippedHead); detection and segmentation take the ``basenet_ds`` switches (no pose, hence no query
    keypoints), pose is the unified configuration without its mask head. Random weights: timing and FLOPs only."""
    from hcq_ros.models.hcq import PRESETS, HCQConfig, HCQNet

    unified = HCQConfig.from_dict(config_dict)
    no_pose = HCQConfig.from_dict({**unified.to_dict(), **PRESETS["basenet_ds"]})
    plan = {"unified": (unified, False), "detection": (no_pose, True), "segmentation": (no_pose, False),
            "pose": (unified, True)}
    nets = {}
    with torch.device(device):
        for name, (config, skip_masks) in plan.items():
            model = HCQNet(config)
            if skip_masks:
                model.mask_head = SkippedHead()
            nets[name] = TaskNet(model)
    return nets


def _task_runner(name: str, net: TaskNet, backend: str, size: int, threads: int, cache_dir: Path):
    """A callable images [1, 3, size, size] float32 -> outputs, on ``backend`` (onnxruntime: cached export)."""
    if backend == "torch":
        torch.set_num_threads(threads)

        def run_torch(x: np.ndarray):
            with torch.inference_mode():
                return net(torch.from_numpy(x))
        return run_torch
    from hcq_ros.ops.ms_deform_attn_onnx import export_onnx
    from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    digest = hashlib.sha256(json.dumps(net.model.config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"task_{name}_{digest}_{size}x{size}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        tmp = path.with_name(path.name + ".part")
        export_onnx(net, (example,), tmp, trt=False, input_names=["images"], output_names=net.output_names)
        tmp.replace(path)
    session = OnnxRuntimeBackend(intra_op_threads=threads).load(path)
    return lambda x: session.infer({"images": x})


def unified_vs_separate(config_dict: dict, backend: str, threads: int, size: int, image: np.ndarray, frames: int,
                        warmup: int, cache_dir: str | Path) -> dict:
    """Latency of HCQNet vs detection + segmentation + pose networks run back to back on the same frame
    (interleaved per frame, so machine load hits all four alike), their counted FLOPs, and cost.py's FLOPs ratio."""
    from hcq_ros.data.torch_dataset import image_to_tensor
    from hcq_ros.data.transforms import letterbox
    from hcq_ros.evaluation.cost import cost_table
    from hcq_ros.models.flops import flops_by_group

    nets = task_networks(config_dict)
    runners = {name: _task_runner(name, net, backend, size, threads, cache_dir) for name, net in nets.items()}
    x = image_to_tensor(letterbox(image, (size, size))[0]).numpy()[None]
    times: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(warmup + frames):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    separate = [sum(parts) for parts in zip(times["detection"], times["segmentation"], times["pose"])]
    latency = {name: _summary(v) for name, v in times.items()}
    latency["separate_sum"] = _summary(separate)
    meta_nets = task_networks(config_dict, device="meta")
    flops = {name: flops_by_group(net, torch.zeros(1, 3, size, size, device="meta"), ())["total"]
             for name, net in meta_nets.items()}
    cost_flops, single = cost_table(config_dict["profile"], size)
    ratio = latency["unified"]["median"] / latency["separate_sum"]["median"]
    return {"backend": backend, "threads": threads, "size": size, "frames": frames, "warmup": warmup,
            "latency_ms": latency, "latency_ratio": round(ratio, 3),
            "within_target": ratio <= TARGETS["unified_ratio_max"],
            "flops": flops, "flops_ratio": round(flops["unified"] / sum(flops[k] for k in single), 3),
            "cost_py": {"profile": config_dict["profile"], "unified": cost_flops["total"], "single_task": single,
                        "flops_ratio": round(cost_flops["total"] / sum(single.values()), 3)}}

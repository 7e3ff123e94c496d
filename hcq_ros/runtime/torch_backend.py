"""PyTorch backend: runs HCQNet / PersonNet from a checkpoint with the same flat, named I/O as the exports.

The reference the other backends are compared against, and the fallback when neither TensorRT nor onnxruntime
is installed. Input shapes are dynamic except the channel axis (the model checks H, W multiples itself).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hcq_ros.runtime.backend import Backend
from hcq_ros.runtime.export import flat_io_module, load_model_checkpoint

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    """Args:
        device: "cpu" | "cuda" | "cuda:N" (a CUDA device must exist: no silent CPU fallback).
        threads: torch intra-op threads (None = leave torch's setting).
    load(checkpoint path | HCQNet | PersonNet module).
    """

    name = "torch"
    OPTIONS = ("device", "threads")

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"torch backend: device {device!r} requested but torch.cuda is not available "
                               f"(torch {torch.__version__})")
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"torch backend: threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.kind: str | None = None
        self.module: nn.Module | None = None

    def load(self, path_or_model) -> "TorchBackend":
        if isinstance(path_or_model, nn.Module):
            model, self.source = path_or_model, f"<in-memory {type(path_or_model).__name__}>"
            self.kind = {"HCQNet": "hcq", "PersonNet": "person"}.get(type(model).__name__)
            if self.kind is None:
                raise ValueError(f"torch backend: expected an HCQNet or PersonNet, got {type(model).__name__}")
        else:
            self.kind, model = load_model_checkpoint(path_or_model)
            self.source = str(Path(path_or_model))
        model = model.to(self.device).eval()
        if self.kind == "hcq":
            size = (64, 64)   # any valid size: only used to find which outputs the configuration produces
        else:
            h, w = model.config.crop_size
            size = (w, h)
        self.module = flat_io_module(self.kind, model, size)
        self.input_names = list(self.module.input_names)
        self.output_names = list(self.module.output_names)
        self.input_shapes = {self.input_names[0]: (None, 3, None, None)}
        self.output_shapes = {}
        self.metadata = {"kind": self.kind, "config": model.config.to_dict(), "input_names": self.input_names,
                         "output_names": self.output_names}
        if self.kind == "person":
            self.metadata["input_size"] = list(size)   # (W, H) the net is deployed at
        log.info("torch backend: %s %s on %s", self.kind, self.source, self.device)
        return self

    @torch.no_grad()
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(inputs[self.input_names[0]]).to(self.device)
        outputs = self.module(x)
        return {name: (t.float() if t.is_floating_point() else t).detach().cpu().numpy()
                for name, t in zip(self.output_names, outputs)}

    def _empty_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # PersonNet runs an empty batch in PyTorch; HCQNet rejects B = 0, so one blank image gives the shapes.
        if self.kind == "person":
            return self._run(inputs)
        blank = {name: np.zeros((1, *a.shape[1:]), a.dtype) for name, a in inputs.items()}
        return {name: a[:0] for name, a in self._run(blank).items()}

    def close(self) -> None:
        self.module = None

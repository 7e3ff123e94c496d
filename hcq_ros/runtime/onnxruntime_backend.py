"""onnxruntime backend: runs the decomposed ``*.onnx`` exports (the embedded default, DESIGN.md §8) and their int8
quantised form ``*.int8.onnx`` (``hcq_ros.runtime.quantize``; metadata from its own ``*.int8.json``).

Execution providers are an explicit list, validated against ``onnxruntime.get_available_providers()``; the
providers the session really activated are logged and checked, so that a requested CUDA / TensorRT provider
that failed to initialise is an error, not a silent CPU run. Thread counts come from the caller's config.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from hcq_ros.runtime.backend import Backend

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}
NP_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
             "tensor(int32)": np.dtype(np.int32), "tensor(int64)": np.dtype(np.int64)}


def _import_ort():
    try:
        import onnxruntime
    except Exception as exc:
        raise ImportError(f"onnxruntime backend: onnxruntime not importable ({type(exc).__name__}: {exc}); "
                          "pip install onnxruntime (or onnxruntime-gpu)") from exc
    return onnxruntime


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d >= 0 else None


class OnnxRuntimeBackend(Backend):
    """Args:
        providers: execution providers, best first, by full name or alias (cpu, cuda, tensorrt), each a name or
            (name, provider options dict). Default CPU only. A provider missing from this onnxruntime build ->
            ValueError; a requested provider the session did not activate -> RuntimeError.
        intra_op_threads / inter_op_threads: thread pool sizes (None = onnxruntime default, all cores).
        graph_optimization: "disable" | "basic" | "extended" | "all".
        allow_spinning: let idle pool threads busy-wait. Off by default: the pipeline runs two sessions plus numpy/
            torch work on few cores, and spinning threads starve them (measured with `hcq-ros bench`: the detector
            went from 229 to 108 ms and the postprocess from 13 to 4 ms at 5 people on 2 cores, torch at 1 thread).
    load(path to a ``.onnx`` / ``.int8.onnx`` | bytes of a serialised model).
    """

    name = "onnxruntime"
    OPTIONS = ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization", "allow_spinning")

    def __init__(self, providers: Sequence = ("CPUExecutionProvider",), intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, graph_optimization: str = "all",
                 allow_spinning: bool = False) -> None:
        super().__init__()
        ort = _import_ort()
        available = ort.get_available_providers()
        self.providers = []
        for entry in ([providers] if isinstance(providers, str) else list(providers)):
            name, options = (entry, None) if isinstance(entry, str) else (entry[0], dict(entry[1]))
            name = PROVIDER_ALIASES.get(name.lower(), name)
            if name not in available:
                raise ValueError(f"onnxruntime backend: execution provider {name!r} is not in this onnxruntime "
                                 f"build ({ort.__version__}: {available})")
            self.providers.append(name if options is None else (name, options))
        if not self.providers:
            raise ValueError("onnxruntime backend: providers list is empty")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if graph_optimization not in levels:
            raise ValueError(f"onnxruntime backend: graph_optimization must be one of {sorted(levels)}, "
                             f"got {graph_optimization!r}")
        self.session_options = ort.SessionOptions()
        self.session_options.graph_optimization_level = levels[graph_optimization]
        for attr, value in (("intra_op_num_threads", intra_op_threads), ("inter_op_num_threads", inter_op_threads)):
            if value is not None:
                if int(value) < 1:
                    raise ValueError(f"onnxruntime backend: {attr} must be >= 1, got {value}")
                setattr(self.session_options, attr, int(value))
        self.session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self.session = None
        self.active_providers: list[str] = []

    def load(self, path_or_model) -> "OnnxRuntimeBackend":
        ort = _import_ort()
        if isinstance(path_or_model, (bytes, bytearray)):
            source, model = "<in-memory ONNX>", bytes(path_or_model)
        else:
            path = Path(path_or_model)
            if not path.is_file():
                raise FileNotFoundError(f"onnxruntime backend: ONNX model not found: {path}")
            if path.name.endswith(".trt.onnx"):
                raise ValueError(f"onnxruntime backend: {path} is the TensorRT-plugin export; onnxruntime runs the "
                                 f"decomposed {path.name[:-len('.trt.onnx')]}.onnx")
            source, model = str(path), str(path)
            from hcq_ros.runtime.export import read_export_metadata
            self.metadata = read_export_metadata(path)
        try:
            self.session = ort.InferenceSession(model, sess_options=self.session_options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ValueError(f"onnxruntime backend: cannot load {source} ({type(exc).__name__}: {exc})") from exc
        self.source = source
        self.active_providers = self.session.get_providers()
        requested = [p if isinstance(p, str) else p[0] for p in self.providers]
        inactive = [p for p in requested if p not in self.active_providers]
        if inactive:
            raise RuntimeError(f"onnxruntime backend: requested providers {inactive} did not initialise for "
                               f"{source} (active: {self.active_providers}); see the onnxruntime log")
        log.info("onnxruntime %s: %s with providers %s", ort.__version__, source, self.active_providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in outputs]
        self.input_shapes = {i.name: tuple(_dim(d) for d in i.shape) for i in inputs}
        self.output_shapes = {o.name: tuple(_dim(d) for d in o.shape) for o in outputs}
        unsupported = [f"{i.name}: {i.type}" for i in inputs if i.type not in NP_DTYPES]
        if unsupported:
            raise ValueError(f"onnxruntime backend: unsupported input types {unsupported}")
        self.input_dtypes = {i.name: NP_DTYPES[i.type] for i in inputs}
        self.output_dtypes = {o.name: NP_DTYPES[o.type] for o in outputs if o.type in NP_DTYPES}
        return self

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self.session = None

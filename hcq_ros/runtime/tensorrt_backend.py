"""TensorRT backend: engine from the cache (built from ``*.trt.onnx``) or a serialised ``.engine``/``.plan``.

Execution uses the name-based tensor API available in TensorRT 8.5+ and the only one left in 10.x (the binding
index API — ``num_bindings``, ``get_binding_shape``, ``execute_async_v2`` — was removed in 10.0):
``engine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` /
``get_tensor_shape`` / ``get_tensor_profile_shape`` (``get_profile_shape`` was removed in 10.0), then per call
``context.set_input_shape``, ``context.set_tensor_address`` and ``context.execute_async_v3(stream)``.
``Runtime.deserialize_cuda_engine`` returns None for a foreign / corrupt engine in both versions.

CUDA memory goes through torch when ``torch.cuda`` is available, else through pycuda (``CudaBuffers``).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from hcq_ros.runtime.backend import Backend
from hcq_ros.runtime.engine_cache import PRECISIONS, EngineCache
from hcq_ros.runtime.tensorrt_build import (DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB, build_or_load_engine,
                                            import_tensorrt, tensorrt_logger)

log = logging.getLogger(__name__)


class CudaBuffers:
    """Device memory and one stream through torch.cuda (preferred) or pycuda.

    upload(array) -> handle; empty(shape, dtype) -> handle; pointer(handle) -> int device address;
    download(handle, shape, dtype) -> np.ndarray (after synchronize); stream_handle; activate() context manager
    making the device current on the calling thread (pycuda contexts are per thread)."""

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = int(device_index)
        self.torch = None
        try:
            import torch
            if torch.cuda.is_available():
                self.torch = torch
        except ImportError:
            pass
        if self.torch is not None:
            self.device = self.torch.device("cuda", self.device_index)
            self.stream = self.torch.cuda.Stream(self.device)
            self.via = "torch.cuda"
            return
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise RuntimeError("TensorRT backend needs CUDA buffers: torch.cuda is unavailable and pycuda is not "
                               "installed (pip install pycuda)") from exc
        try:
            cuda.init()
            device = cuda.Device(self.device_index)
        except Exception as exc:  # pycuda.driver.Error / LogicError: no driver, no GPU, bad index
            raise RuntimeError(f"TensorRT backend: no CUDA device {self.device_index} through pycuda "
                               f"({type(exc).__name__}: {exc}); check nvidia-smi and the device index") from exc
        self.cuda = cuda
        self.context = device.retain_primary_context()
        with self.activate():
            self.stream = cuda.Stream()
        self.via = "pycuda"

    @contextlib.contextmanager
    def activate(self):
        if self.torch is not None:
            with self.torch.cuda.device(self.device), self.torch.cuda.stream(self.stream):
                yield
        else:
            self.context.push()
            try:
                yield
            finally:
                self.context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream if self.torch is not None else self.stream.handle)

    def upload(self, array: np.ndarray):
        if self.torch is not None:
            return self.torch.from_numpy(array).to(self.device, non_blocking=False)
        memory = self.cuda.mem_alloc(max(array.nbytes, 1))
        self.cuda.memcpy_htod_async(memory, array, self.stream)
        return memory

    def empty(self, shape: Sequence[int], dtype: np.dtype):
        if self.torch is not None:
            torch_dtype = self.torch.from_numpy(np.zeros(0, dtype)).dtype
            return self.torch.empty(tuple(shape), dtype=torch_dtype, device=self.device)
        return self.cuda.mem_alloc(max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))

    def pointer(self, handle) -> int:
        return int(handle.data_ptr()) if self.torch is not None else int(handle)

    def download(self, handle, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        if self.torch is not None:
            return handle.cpu().numpy()
        host = np.empty(tuple(shape), dtype=dtype)
        self.cuda.memcpy_dtoh_async(host, handle, self.stream)
        self.stream.synchronize()
        return host

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        if self.torch is None and getattr(self, "context", None) is not None:
            self.context.detach()
            self.context = None


class TensorRTBackend(Backend):
    """Args:
        precision: "fp16" (default) | "fp32" | "int8" (INT8 calibrated on SynthHumans or ``calib_images``).
        cache_dir: engine cache root (default ``~/.cache/hcq_ros/engines``); engine_path: explicit engine file.
        batch_profile: (min, opt, max) batch of the optimisation profile for dynamic-batch inputs (person net).
        workspace_mib: builder workspace pool limit. device: CUDA device index.
    load(path to ``*.trt.onnx`` (engine cache) | ``*.engine`` / ``*.plan`` (deserialised as is)).
    ``reason`` says whether the engine was built or loaded from the cache.
    """

    name = "tensorrt"
    OPTIONS = ("precision", "cache_dir", "engine_path", "batch_profile", "workspace_mib", "calib_images",
               "calib_count", "device", "verbose")

    def __init__(self, precision: str = "fp16", cache_dir: str | Path | None = None,
                 engine_path: str | Path | None = None, batch_profile: Sequence[int] = DEFAULT_BATCH_PROFILE,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, calib_images: str | Path | None = None,
                 calib_count: int = 256, device: int = 0, verbose: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"TensorRT backend: precision must be one of {PRECISIONS}, got {precision!r}")
        self.trt = import_tensorrt()
        self.logger = tensorrt_logger(self.trt, verbose)
        self.precision, self.batch_profile = precision, tuple(batch_profile)
        self.cache = EngineCache(cache_dir)
        self.engine_path, self.workspace_mib, self.verbose = engine_path, workspace_mib, verbose
        self.calib_images, self.calib_count = calib_images, calib_count
        self.cuda = CudaBuffers(device)
        self.runtime = self.trt.Runtime(self.logger)
        self.engine = self.context = None
        self.reason = ""
        self._io_dtypes: dict[str, np.dtype] = {}

    def _deserialize(self, data: bytes):
        return self.runtime.deserialize_cuda_engine(data)   # None when TensorRT refuses the bytes

    def load(self, path_or_model) -> "TensorRTBackend":
        path = Path(path_or_model)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT backend: model file not found: {path}")
        # one activation for build (incl. INT8 calibration callbacks), deserialisation and context creation
        with self.cuda.activate():
            self._load(path)
        self._read_io()
        log.info("TensorRT %s backend: %s (%s; buffers via %s)", self.trt.__version__, path, self.reason,
                 self.cuda.via)
        return self

    def _load(self, path: Path) -> None:
        if path.suffix in (".engine", ".plan"):
            engine = self._deserialize(path.read_bytes())
            if engine is None:
                raise ValueError(f"TensorRT backend: {path} is not an engine this TensorRT "
                                 f"({self.trt.__version__}) and GPU can deserialise; rebuild it from the .trt.onnx")
            self.reason = f"serialised engine {path}"
        elif path.name.endswith(".onnx"):
            result = build_or_load_engine(path, self._deserialize, self.cuda, self.precision, self.cache,
                                          self.engine_path, self.batch_profile, self.workspace_mib,
                                          self.calib_images, self.calib_count, self.verbose)
            engine, self.reason = result.engine, result.reason
            from hcq_ros.runtime.export import read_export_metadata
            self.metadata = read_export_metadata(path)
        else:
            raise ValueError(f"TensorRT backend: expected a .trt.onnx, .engine or .plan file, got {path}")
        self.engine, self.source = engine, str(path)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT backend: cannot create an execution context for {path} (GPU memory?)")

    def _read_io(self) -> None:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        for n in names:
            try:
                self._io_dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            except TypeError as exc:   # BF16 / FP8 / INT4 I/O (TensorRT 10) has no numpy type
                raise ValueError(f"TensorRT backend: engine tensor {n!r} has type {engine.get_tensor_dtype(n)}, "
                                 "which has no numpy equivalent; export with float32/int32 inputs and outputs") \
                    from exc
            shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(n))
            (self.input_shapes if n in self.input_names else self.output_shapes)[n] = shape
        self.input_dtypes = {n: self._io_dtypes[n] for n in self.input_names}
        self.output_dtypes = {n: self._io_dtypes[n] for n in self.output_names}
        for n in self.input_names:
            if None in self.input_shapes[n]:
                low, _, high = engine.get_tensor_profile_shape(n, 0)
                self.shape_bounds[n] = (tuple(int(v) for v in low), tuple(int(v) for v in high))

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, keep = self.context, []
        with self.cuda.activate():
            for name in self.input_names:
                array = inputs[name]
                if not context.set_input_shape(name, tuple(array.shape)):
                    raise ValueError(f"TensorRT backend: input {name!r} shape {list(array.shape)} rejected by the "
                                     f"engine (profile {self.shape_bounds.get(name)})")
                handle = self.cuda.upload(array)
                keep.append(handle)
                context.set_tensor_address(name, self.cuda.pointer(handle))
            outputs = {}
            for name in self.output_names:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT backend: output {name!r} shape {shape} unresolved after setting "
                                       "the input shapes")
                handle = self.cuda.empty(shape, self._io_dtypes[name])
                outputs[name] = (handle, shape)
                context.set_tensor_address(name, self.cuda.pointer(handle))
            if not context.execute_async_v3(self.cuda.stream_handle):
                raise RuntimeError(f"TensorRT backend: execute_async_v3 failed for {self.source}")
            self.cuda.synchronize()
            return {name: self.cuda.download(handle, shape, self._io_dtypes[name]).astype(np.float32, copy=False)
                    for name, (handle, shape) in outputs.items()}

    def close(self) -> None:
        self.context = self.engine = None
        if getattr(self, "cuda", None) is not None:
            self.cuda.close()

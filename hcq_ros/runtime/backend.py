"""One small interface for every inference runtime, and ``open_backend`` (with ``auto`` selection).

A backend runs one exported network with flat, named numpy I/O (the names of ``hcq_ros.runtime.export``):
    detector:   images [B, 3, H, W] float32 normalised (``image_to_tensor``) -> pred_logits [B, Q, 1],
                pred_boxes [B, Q, 4], pred_keypoints [B, Q, 17, 2], pred_kpt_sigma [B, Q, 17, 2],
                pred_masks [B, Q, H/4, W/4] (+ pred_box_sigma [B, Q, 4]); present outputs only
    person net: crops [B, 3, H, W] float32 -> ``PersonNet.output_names()`` (embedding [B, D], attr_<name> ...,
                keypoints [B, 17, 2], keypoint_conf [B, 17], part_logits [B, 15, H, W]) + part_labels [B, H, W]
                int32 (exports since session 4; older ones lack it)

Interface: ``load(path_or_model)``, ``infer({name: array}) -> {name: array}``, ``close()``, and ``name``,
``input_names``, ``output_names``, ``input_shapes`` / ``output_shapes`` ({name: tuple, None = dynamic dim}).
``infer`` validates names, dtypes and shapes before the runtime sees them (ValueError naming the problem) and
answers an empty batch (B = 0) with empty outputs without calling the runtime: an ONNX GroupNorm cannot run
B = 0 in onnxruntime.

Model files: one model is a family of sibling files ``<stem>.pt`` (torch), ``<stem>.onnx`` (onnxruntime,
deformable attention as grid_sample), ``<stem>.int8.onnx`` (onnxruntime, the same graph quantised to int8 QDQ,
``hcq_ros.runtime.quantize``), ``<stem>.trt.onnx`` (TensorRT, plugin nodes) and optionally a serialised
engine ``<stem>.engine`` / ``.plan``. ``resolve_model_file`` picks the file a backend needs and says so.
"""
from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

log = logging.getLogger(__name__)

BACKEND_KINDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = BACKEND_KINDS  # what ``auto`` tries, best first (DESIGN.md §8)
MODEL_SUFFIXES = (".trt.onnx", ".int8.onnx", ".onnx", ".pt", ".engine", ".plan")   # compound suffixes first


class Backend(ABC):
    """Base class: shared input validation and empty-batch handling; subclasses implement ``load``/``_run``."""

    name = "backend"

    def __init__(self) -> None:
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.input_shapes: dict[str, tuple[int | None, ...]] = {}
        self.output_shapes: dict[str, tuple[int | None, ...]] = {}
        self.input_dtypes: dict[str, np.dtype] = {}
        self.output_dtypes: dict[str, np.dtype] = {}   # where the runtime says (default float32)
        # optional per-input (min_shape, max_shape) bounds, e.g. a TensorRT optimisation profile
        self.shape_bounds: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.metadata: dict[str, Any] = {}
        self.source: str = ""

    # ------------------------------------------------------------------------------------------ interface
    @abstractmethod
    def load(self, path_or_model) -> "Backend":
        """Load a model (file path or in-memory model, per backend); returns self."""

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated, non-empty inputs; return every output by name."""

    def close(self) -> None:
        """Free the runtime's resources (idempotent)."""

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: array}, outputs in ``output_names`` order."""
        if not self.input_names:
            raise RuntimeError(f"{self.name} backend: call load() before infer()")
        checked = self.check_inputs(inputs)
        if any(a.shape[0] == 0 for a in checked.values()):
            return self._empty_outputs(checked)
        outputs = self._run(checked)
        return {name: outputs[name] for name in self.output_names}

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source or 'not loaded'})"

    # ------------------------------------------------------------------------------------------ helpers
    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raise ValueError naming the input and what is wrong (names, type, dtype, rank, static dims, bounds,
        batch size agreement); returns the inputs as C-contiguous arrays."""
        if not isinstance(inputs, Mapping):
            raise ValueError(f"{self.name} backend: inputs must be a dict {{name: np.ndarray}}, "
                             f"got {type(inputs).__name__}")
        missing = [n for n in self.input_names if n not in inputs]
        unknown = sorted(set(inputs) - set(self.input_names))
        if missing or unknown:
            raise ValueError(f"{self.name} backend: inputs must be exactly {self.input_names}; "
                             f"missing {missing}, unexpected {unknown}")
        checked, batches = {}, set()
        for name in self.input_names:
            array = inputs[name]
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{self.name} backend: input {name!r} must be a numpy array, "
                                 f"got {type(array).__name__}")
            want_dtype = self.input_dtypes.get(name, np.dtype(np.float32))
            if array.dtype != want_dtype:
                raise ValueError(f"{self.name} backend: input {name!r} must be {want_dtype}, got {array.dtype}")
            expected = self.input_shapes.get(name)
            if expected is not None:
                if array.ndim != len(expected):
                    raise ValueError(f"{self.name} backend: input {name!r} must have rank {len(expected)} "
                                     f"{_shape_text(expected)}, got shape {list(array.shape)}")
                for axis, (got, want) in enumerate(zip(array.shape, expected)):
                    if want is not None and got != want and not (axis == 0 and got == 0):
                        raise ValueError(f"{self.name} backend: input {name!r} dim {axis} must be {want} "
                                         f"(expected {_shape_text(expected)}), got shape {list(array.shape)}")
            if name in self.shape_bounds and array.shape[0] > 0:
                low, high = self.shape_bounds[name]
                if any(g < lo or g > hi for g, lo, hi in zip(array.shape, low, high)):
                    raise ValueError(f"{self.name} backend: input {name!r} shape {list(array.shape)} is outside "
                                     f"the optimisation profile {list(low)} .. {list(high)}")
            batches.add(array.shape[0] if array.ndim else None)
            checked[name] = np.ascontiguousarray(array)
        if len(batches) > 1:
            raise ValueError(f"{self.name} backend: inputs disagree on the batch size: {sorted(batches)}")
        return checked

    def _empty_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for B = 0 from ``output_shapes`` (every non-batch dim must be static)."""
        out = {}
        for name in self.output_names:
            shape = self.output_shapes.get(name)
            if shape is None or any(d is None for d in shape[1:]):
                raise ValueError(f"{self.name} backend: cannot answer an empty batch, output {name!r} has "
                                 f"unknown shape {shape}")
            out[name] = np.zeros((0, *shape[1:]), dtype=self.output_dtypes.get(name, np.float32))
        return out


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------- files
def model_stem(path: str | Path) -> Path:
    """``engines/hcq_small.trt.onnx`` / ``.int8.onnx`` -> ``engines/hcq_small`` (any of MODEL_SUFFIXES removed)."""
    path = Path(path)
    for suffix in MODEL_SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def resolve_model_file(kind: str, model_path: str | Path) -> Path:
    """The file backend ``kind`` loads for ``model_path`` (the path itself when it fits, else its sibling).

    tensorrt: ``<stem>.trt.onnx`` or a serialised ``.engine``/``.plan``; never the grid_sample ``.onnx``.
    onnxruntime: ``<stem>.onnx``, or a given ``<stem>.int8.onnx`` (never ``.trt.onnx``: onnxruntime has no kernel
    for the TensorRT plugin). The int8 QDQ file is onnxruntime's only: tensorrt and torch take the family's
    ``.trt.onnx`` / ``.pt`` for it (logged). torch: ``<stem>.pt``. Missing file -> FileNotFoundError naming it
    and why that file is needed.
    """
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend {kind!r}; choose from {BACKEND_KINDS}")
    path = Path(model_path)
    name = path.name
    if kind == "tensorrt" and (name.endswith(".trt.onnx") or path.suffix in (".engine", ".plan")):
        wanted = path
    elif kind == "onnxruntime" and name.endswith(".onnx") and not name.endswith(".trt.onnx"):
        wanted = path
    elif kind == "torch" and path.suffix == ".pt":
        wanted = path
    else:
        suffix = {"tensorrt": ".trt.onnx", "onnxruntime": ".onnx", "torch": ".pt"}[kind]
        stem = model_stem(path)
        wanted = stem.with_name(stem.name + suffix)
        if wanted != path:
            log.info("%s backend: using %s for %s", kind, wanted, path)
    if not wanted.is_file():
        why = {"tensorrt": "TensorRT needs the plugin-form export (hcq-ros export --target tensorrt); the "
                           "grid_sample .onnx must never be fed to TensorRT",
               "onnxruntime": "onnxruntime needs the decomposed export (hcq-ros export --target onnxruntime)",
               "torch": "the torch backend runs the PyTorch checkpoint"}[kind]
        raise FileNotFoundError(f"{kind} backend: model file not found: {wanted} ({why})")
    return wanted


# ---------------------------------------------------------------------------------------------- selection
@dataclass
class Availability:
    """What this machine can run: {kind: (usable, detail)} plus whether a CUDA GPU is present."""

    runtimes: dict[str, tuple[bool, str]]
    gpu: tuple[bool, str]


def _module_version(module_name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or a broken install raising anything at import time
        return False, f"{module_name} not importable: {type(exc).__name__}: {exc}"
    return True, f"{module_name} {getattr(module, '__version__', '?')}"


def probe_availability() -> Availability:
    """Import each runtime (versions) and look for a CUDA GPU (torch.cuda, else nvidia-smi)."""
    from hcq_ros.runtime.engine_cache import cuda_device_info

    runtimes = {kind: _module_version(module) for kind, module in
                (("tensorrt", "tensorrt"), ("onnxruntime", "onnxruntime"), ("torch", "torch"))}
    try:
        device = cuda_device_info()
        gpu = (True, f"{device.name} (compute capability {device.capability_text})")
    except RuntimeError as exc:
        gpu = (False, str(exc))
    return Availability(runtimes, gpu)


def choose_backend(model_path: str | Path | None = None,
                   availability: Availability | None = None) -> tuple[list[str], str]:
    """``auto`` policy: TensorRT if importable with a GPU, else onnxruntime, else torch; with ``model_path``
    a kind also needs its model file. Returns (usable kinds best first, reason text naming why each better
    kind was skipped)."""
    availability = availability or probe_availability()
    usable, notes = [], []
    for kind in AUTO_ORDER:
        ok, detail = availability.runtimes.get(kind, (False, "not probed"))
        if ok and kind == "tensorrt" and not availability.gpu[0]:
            ok, detail = False, f"{detail} but no CUDA GPU ({availability.gpu[1]})"
        if ok and model_path is not None:
            try:
                detail = f"{detail}, file {resolve_model_file(kind, model_path)}"
            except FileNotFoundError as exc:
                ok, detail = False, str(exc)
        if ok:
            usable.append(kind)
        notes.append(f"{kind}: {'usable' if ok else 'skipped'} ({detail})")
    if not usable:
        raise RuntimeError("auto backend: nothing usable; " + "; ".join(notes))
    return usable, f"auto chose {usable[0]}: " + "; ".join(notes)


def _backend_class(kind: str) -> Callable[..., Backend]:
    if kind == "tensorrt":
        from hcq_ros.runtime.tensorrt_backend import TensorRTBackend
        return TensorRTBackend
    if kind == "onnxruntime":
        from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend
    if kind == "torch":
        from hcq_ros.runtime.torch_backend import TorchBackend
        return TorchBackend
    raise ValueError(f"unknown backend {kind!r}; choose from {('auto',) + BACKEND_KINDS}")


def open_backend(kind: str, model_path: str | Path, availability: Availability | None = None,
                 **options) -> tuple[Backend, str]:
    """Open and load a backend for ``model_path`` -> (backend, human-readable reason for the choice).

    kind: "auto" | "tensorrt" | "onnxruntime" | "torch". A named kind never falls back: its import, file or load
    error is raised. ``auto`` tries the usable kinds in order (``choose_backend``) and records any that failed
    to load in the reason (logged as a warning). ``options`` go to the backend's constructor, e.g.
    ``providers``/``intra_op_threads`` (onnxruntime), ``precision``/``cache_dir``/``batch_profile`` (tensorrt),
    ``device`` (torch); options a backend does not take are dropped for ``auto`` with a log line.
    """
    if kind != "auto":
        cls = _backend_class(kind)
        unknown = sorted(set(options) - set(getattr(cls, "OPTIONS", options)))
        if unknown:
            raise ValueError(f"{kind} backend: unknown options {unknown}; it takes {list(cls.OPTIONS)}")
        backend = cls(**options)
        backend.load(resolve_model_file(kind, model_path))
        return backend, f"{kind} requested explicitly ({backend.source})"
    candidates, reason = choose_backend(model_path, availability)
    failures = []
    for candidate in candidates:
        cls = _backend_class(candidate)
        accepted = getattr(cls, "OPTIONS", None)
        kwargs = options if accepted is None else {k: v for k, v in options.items() if k in accepted}
        dropped = sorted(set(options) - set(kwargs))
        if dropped:
            log.info("auto backend: %s does not take options %s", candidate, dropped)
        backend = None
        try:
            backend = cls(**kwargs)
            backend.load(resolve_model_file(candidate, model_path))
        except Exception as exc:  # auto may move on, but says so
            if backend is not None:
                backend.close()
            failures.append(f"{candidate} failed to load ({type(exc).__name__}: {exc})")
            log.warning("auto backend: %s", failures[-1])
            continue
        text = reason if not failures else f"{reason}; " + "; ".join(failures) + f"; using {candidate}"
        return backend, text
    raise RuntimeError("auto backend: every usable backend failed to load: " + "; ".join(failures))

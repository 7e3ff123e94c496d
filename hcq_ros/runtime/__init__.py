"""Inference runtime (DESIGN.md §8): ONNX exports for onnxruntime and TensorRT, backends behind one interface
(torch, onnxruntime, tensorrt; ``open_backend("auto", ...)``), the TensorRT engine cache, ``hcq-ros export``,
``hcq-ros build-engine`` and ``hcq-ros doctor``.

Light on import (numpy only): torch, onnxruntime and TensorRT load when a backend or the exporter is used.
"""
from hcq_ros.runtime.backend import (BACKEND_KINDS, Availability, Backend, choose_backend, model_stem,
                                     open_backend, probe_availability, resolve_model_file)

__all__ = ["BACKEND_KINDS", "Availability", "Backend", "choose_backend", "model_stem", "open_backend",
           "probe_availability", "resolve_model_file"]

"""Custom ops: multi-scale deformable attention (pure-PyTorch reference, torch custom op for the TensorRT
plugin, ONNX export helpers).  The ONNX helpers load lazily so that importing the ops needs only torch."""
from __future__ import annotations

from hcq_ros.ops.ms_deform_attn import (
    MSDeformAttn,
    export_mode,
    level_start_index_from_shapes,
    ms_deform_attn,
    ms_deform_attn_core,
    spatial_shapes_list,
    trt_mode_active,
)

_ONNX_NAMES = ("PLUGIN_OP_TYPE", "check_trt_plugin_nodes", "count_trt_plugin_nodes", "export_onnx",
               "register_trt_plugin_schema", "trt_translation_table")

__all__ = ["MSDeformAttn", "export_mode", "level_start_index_from_shapes", "ms_deform_attn",
           "ms_deform_attn_core", "spatial_shapes_list", "trt_mode_active", *_ONNX_NAMES]


def __getattr__(name: str):
    if name in _ONNX_NAMES:  # needs onnx + onnxscript (the `train` extra)
        from hcq_ros.ops import ms_deform_attn_onnx

        return getattr(ms_deform_attn_onnx, name)
    raise AttributeError(f"module 'hcq_ros.ops' has no attribute {name!r}")

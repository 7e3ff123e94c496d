"""ONNX export of models holding MSDeformAttn, in two forms, with the torch.onnx dynamo exporter.

* decomposed (`trt=False`): the grid_sample reference becomes plain ONNX GridSample/Reshape/Mul ops that
  onnxruntime runs.  Never feed this form to TensorRT (it may silently miscompile; DESIGN §8).
* TensorRT (`trt=True`): each deformable-attention core is ONE node `MultiscaleDeformableAttnPlugin_TRT` in the
  default ONNX domain with attributes plugin_version="1", plugin_namespace="".  TensorRT's ONNX parser has no
  importer for that op type, so it falls back to its plugin importer, which looks the op type up in the plugin
  registry by (name, plugin_version, plugin_namespace) — the built-in plugin from `initLibNvInferPlugins`.
  Inputs: value [N,S,M,D], spatial_shapes [L,2] INT32, level_start_index [L] INT32,
  sampling_locations [N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P]; output [N,Lq,M,D] (then a Reshape).

Mechanism: the torch custom op `hcq::ms_deform_attn` (ms_deform_attn.py, used inside `export_mode(trt=True)`)
is translated by an onnxscript function given to `torch.onnx.export(..., dynamo=True,
custom_translation_table=...)`.  An ONNX schema for the plugin op is registered with onnx (process-local) so that
onnxscript can build the node and `onnx.checker.check_model(..., full_check=True)` passes with shape inference.
The TorchScript exporter (dynamo=False) is not supported: it raises UnsupportedOperatorError on the custom op.
"""
from __future__ import annotations

import os
from typing import Any

import onnx
import onnx.defs
import onnxscript
import torch
from onnx import TensorProto

from hcq_ros.ops.ms_deform_attn import export_mode

PLUGIN_OP_TYPE = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_DOMAIN = ""  # default domain: TensorRT's parser finds the plugin by op_type (since 10.10 it also reads a
                   # non-empty domain as the plugin namespace, so the domain must stay empty)
PLUGIN_VERSION = "1"  # IPluginV2DynamicExt creator; still registered by TensorRT 10 next to the V3 one ("2")
PLUGIN_NAMESPACE = ""
PLUGIN_INPUT_RANKS = (4, 2, 1, 6, 5)  # value, spatial_shapes, level_start_index, sampling_locations, weights
PLUGIN_INPUT_NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
DEFAULT_OPSET = 18


def _infer_plugin_output(ctx) -> None:
    """Output [N, Lq, M, D] with value's element type (N, M, D from value; Lq from sampling_locations)."""
    value_type, locations_type = ctx.get_input_type(0), ctx.get_input_type(3)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = value_type.tensor_type.elem_type
    if value_type.tensor_type.HasField("shape") and locations_type.tensor_type.HasField("shape"):
        value_dims, location_dims = value_type.tensor_type.shape.dim, locations_type.tensor_type.shape.dim
        if len(value_dims) == 4 and len(location_dims) == 6:
            for dim in (value_dims[0], location_dims[1], value_dims[2], value_dims[3]):
                out.tensor_type.shape.dim.add().CopyFrom(dim)
    ctx.set_output_type(0, out)


def register_trt_plugin_schema() -> None:
    """Make the plugin op known to onnx/onnxscript in this process (idempotent)."""
    if onnx.defs.has(PLUGIN_OP_TYPE, PLUGIN_DOMAIN):
        return
    param = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    string_attr = onnx.defs.OpSchema.AttrType.STRING
    schema = onnx.defs.OpSchema(
        PLUGIN_OP_TYPE, PLUGIN_DOMAIN, 1,
        "TensorRT MultiscaleDeformableAttnPlugin_TRT (Deformable DETR sampling); run by TensorRT only.",
        inputs=[param("value", "T"), param("spatial_shapes", "tensor(int32)"),
                param("level_start_index", "tensor(int32)"), param("sampling_locations", "T"),
                param("attention_weights", "T")],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "plugin float types")],
        attributes=[attr("plugin_version", string_attr, "TensorRT plugin creator version", required=False),
                    attr("plugin_namespace", string_attr, "TensorRT plugin namespace", required=False)])
    schema.set_type_and_shape_inference_function(_infer_plugin_output)
    onnx.defs.register_schema(schema)


def _plugin_translation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    plugin_opset = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)
    return getattr(plugin_opset, PLUGIN_OP_TYPE)(value, spatial_shapes, level_start_index, sampling_locations,
                                                 attention_weights, plugin_version=PLUGIN_VERSION,
                                                 plugin_namespace=PLUGIN_NAMESPACE)


def trt_translation_table() -> dict:
    """custom_translation_table entry mapping the torch custom op onto the plugin node."""
    register_trt_plugin_schema()
    return {torch.ops.hcq.ms_deform_attn.default: _plugin_translation}


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not os.path.isfile(model):
        raise FileNotFoundError(f"ONNX model not found: {model}")
    return onnx.load(os.fspath(model))


def count_trt_plugin_nodes(model: onnx.ModelProto | str | os.PathLike) -> int:
    """Number of MultiscaleDeformableAttnPlugin_TRT nodes in the main graph and its local functions."""
    model = _load(model)
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return sum(1 for node in nodes if node.op_type == PLUGIN_OP_TYPE)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    types = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        types[info.name] = info.type
    for init in model.graph.initializer:
        t = onnx.TypeProto()
        t.tensor_type.elem_type = init.data_type
        for d in init.dims:
            t.tensor_type.shape.dim.add().dim_value = d
        types[init.name] = t
    return types


def check_trt_plugin_nodes(model: onnx.ModelProto | str | os.PathLike) -> list[dict[str, Any]]:
    """Verify every plugin node: default domain, attributes, 5 inputs / 1 output, INT32 spatial_shapes and
    level_start_index, float32/float16 value/locations/weights of one type, input ranks (4, 2, 1, 6, 5) and
    consistent static dims.  Returns one summary dict per node; raises ValueError naming the node and problem."""
    register_trt_plugin_schema()
    inferred = onnx.shape_inference.infer_shapes(_load(model), strict_mode=False)
    types = _value_types(inferred)
    summaries = []
    for node in inferred.graph.node:
        if node.op_type != PLUGIN_OP_TYPE:
            continue
        where = f"plugin node {node.name or '<unnamed>'}"
        if node.domain != PLUGIN_DOMAIN:
            raise ValueError(f"{where}: domain {node.domain!r}, expected the empty default domain (TensorRT >= 10.10 "
                             "reads a node's domain as the plugin namespace)")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("plugin_version", b"1") != PLUGIN_VERSION.encode() or \
                attrs.get("plugin_namespace", b"") != PLUGIN_NAMESPACE.encode():
            raise ValueError(f"{where}: plugin_version/plugin_namespace {attrs} do not name the built-in plugin")
        if len(node.input) != 5 or len(node.output) != 1:
            raise ValueError(f"{where}: needs 5 inputs and 1 output, has {len(node.input)} / {len(node.output)}")
        shapes = []
        elem_types = []
        for name, role, rank in zip(node.input, PLUGIN_INPUT_NAMES, PLUGIN_INPUT_RANKS):
            if name not in types or not types[name].tensor_type.HasField("shape"):
                raise ValueError(f"{where}: input {role} ({name}) has no known type/shape")
            tensor_type = types[name].tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if len(dims) != rank:
                raise ValueError(f"{where}: input {role} ({name}) has rank {len(dims)}, expected {rank}")
            shapes.append(dims)
            elem_types.append(tensor_type.elem_type)
        for idx in (1, 2):
            if elem_types[idx] != TensorProto.INT32:
                raise ValueError(f"{where}: {PLUGIN_INPUT_NAMES[idx]} is "
                                 f"{TensorProto.DataType.Name(elem_types[idx])}, TensorRT needs INT32")
        float_types = {elem_types[0], elem_types[3], elem_types[4]}
        if len(float_types) != 1 or not float_types <= {TensorProto.FLOAT, TensorProto.FLOAT16}:
            raise ValueError(f"{where}: value/sampling_locations/attention_weights must share FLOAT or FLOAT16, "
                             f"got {[TensorProto.DataType.Name(t) for t in (elem_types[0], *elem_types[3:])]}")
        value, spatial, start, locations, weights = shapes
        # pairs of dims TensorRT's configurePlugin asserts equal (checked where both are static)
        for label, a, b in (("M", value[2], locations[2]), ("M", value[2], weights[2]),
                            ("L", spatial[0], start[0]), ("L", spatial[0], locations[3]),
                            ("L", spatial[0], weights[3]), ("P", locations[4], weights[4]),
                            ("Lq", locations[1], weights[1]), ("N", value[0], locations[0]),
                            ("xy", locations[5], 2), ("hw", spatial[1], 2)):
            if a is not None and b is not None and a != b:
                raise ValueError(f"{where}: inconsistent {label}: {a} vs {b} (input shapes {shapes})")
        summaries.append({"name": node.name, "inputs": dict(zip(PLUGIN_INPUT_NAMES, shapes)),
                          "dtype": TensorProto.DataType.Name(elem_types[0])})
    return summaries


def _count_custom_op_calls(exported_program) -> int | None:
    if exported_program is None:
        return None
    target = torch.ops.hcq.ms_deform_attn.default
    return sum(1 for node in exported_program.graph.nodes
               if node.op == "call_function" and node.target is target)


def export_onnx(model: torch.nn.Module, args: tuple, path: str | os.PathLike | None = None, *, trt: bool,
                kwargs: dict | None = None, opset_version: int = DEFAULT_OPSET,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                dynamic_shapes: Any = None) -> onnx.ModelProto:
    """Export `model(*args, **kwargs)` with the dynamo exporter in the decomposed (trt=False) or TensorRT
    (trt=True) form; checks the result, optionally saves it to `path`, returns the ModelProto.

    TensorRT form raises RuntimeError unless exactly one plugin node was emitted per traced deformable
    attention call (and at least one); the decomposed form raises if any plugin node is present."""
    if not isinstance(trt, bool):
        raise ValueError(f"trt must be a bool, got {trt!r}")
    table = trt_translation_table() if trt else None
    was_training = model.training
    model.eval()
    try:
        with export_mode(trt), torch.no_grad():
            program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, opset_version=opset_version,
                                        custom_translation_table=table, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes,
                                        external_data=False, verbose=False)
    finally:
        model.train(was_training)
    proto = program.model_proto
    n_plugin = count_trt_plugin_nodes(proto)
    if trt:
        n_calls = _count_custom_op_calls(getattr(program, "exported_program", None))
        if n_plugin == 0:
            raise RuntimeError("TensorRT form requested but no MultiscaleDeformableAttnPlugin_TRT node was "
                               "emitted: the model never called the deformable-attention core")
        if n_calls is not None and n_calls != n_plugin:
            raise RuntimeError(f"TensorRT form: {n_calls} deformable-attention calls traced but {n_plugin} "
                               f"plugin nodes emitted")
        onnx.checker.check_model(proto, full_check=True)
        check_trt_plugin_nodes(proto)
    else:
        if n_plugin:
            raise RuntimeError(f"decomposed form requested but {n_plugin} plugin nodes were emitted")
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        onnx.save_model(proto, os.fspath(path))
    return proto


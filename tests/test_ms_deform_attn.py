"""Tests for hcq_ros.ops.ms_deform_attn (reference core, custom op, module) and its two ONNX export forms."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from hcq_ros.ops import MSDeformAttn, export_mode, ms_deform_attn, ms_deform_attn_core
from hcq_ros.ops.ms_deform_attn_onnx import (PLUGIN_OP_TYPE, check_trt_plugin_nodes, count_trt_plugin_nodes,
                                             export_onnx, register_trt_plugin_schema)


def bilinear_loop(value, shapes, locations, weights):
    """Per-point reference: value [N,S,M,D], locations [N,Lq,M,L,P,2] (x, y; 0/1 = map edges) -> [N,Lq,M*D]."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
        grid = value[:, start:start + h * w].reshape(n, h, w, m, d)
        start += h * w
        for b in range(n):
            for q in range(lq):
                for head in range(m):
                    for p in range(n_points):
                        x = float(locations[b, q, head, level, p, 0]) * w - 0.5  # pixel-centre coordinates
                        y = float(locations[b, q, head, level, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(d, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:  # zero padding outside the map
                                    sample += wy * wx * grid[b, yy, xx, head]
                        out[b, q, head] += weights[b, q, head, level, p] * sample
    return out.reshape(n, lq, m * d)


def random_inputs(shapes, n=2, lq=3, m=2, d=3, n_points=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # include points outside [0, 1] to exercise the zero padding
    locations = torch.rand(n, lq, m, len(shapes), n_points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, len(shapes), n_points, generator=g, dtype=dtype)
    weights = weights / weights.flatten(3).sum(-1)[..., None, None]
    return value, locations, weights


def test_core_matches_per_point_bilinear_loop():
    shapes = [(4, 6), (3, 2), (1, 5)]
    value, locations, weights = random_inputs(shapes)
    expected = bilinear_loop(value, shapes, locations, weights)
    got = ms_deform_attn_core(value, torch.tensor(shapes), torch.tensor([0, 24, 30]), locations, weights)
    assert got.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # list form of spatial_shapes and derived level_start_index give the same result
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, None, locations, weights), got)


def test_coordinate_convention_single_query_single_level():
    h, w = 3, 5  # non-square, one level, one query, one head
    value = torch.arange(h * w, dtype=torch.float64).add(1.0).reshape(1, h * w, 1, 1)
    grid = value.reshape(h, w)

    def sample(x, y):
        loc = torch.tensor([x, y], dtype=torch.float64).reshape(1, 1, 1, 1, 1, 2)
        return float(ms_deform_attn_core(value, [(h, w)], [0], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)))

    for i in range(h):
        for j in range(w):  # pixel centres sample the pixel exactly
            assert sample((j + 0.5) / w, (i + 0.5) / h) == pytest.approx(float(grid[i, j]))
    assert sample(0.0, 1.5 / h) == pytest.approx(0.5 * float(grid[1, 0]))  # left edge: half border, half zero
    assert sample(1.0, 1.5 / h) == pytest.approx(0.5 * float(grid[1, w - 1]))  # right edge
    assert sample(0.0, 0.0) == pytest.approx(0.25 * float(grid[0, 0]))  # top-left corner
    assert sample(1.0, 1.0) == pytest.approx(0.25 * float(grid[h - 1, w - 1]))
    assert sample(-0.25, 0.5) == 0.0 and sample(0.5, 1.4) == 0.0  # beyond half a pixel outside: nothing
    assert sample(1.0 / w, 0.5 / h) == pytest.approx(0.5 * float(grid[0, 0] + grid[0, 1]))  # between pixels


def test_gradcheck_core_wrt_value_locations_weights():
    shapes = [(3, 4), (2, 2)]
    value, locations, weights = random_inputs(shapes, n=1, lq=2, m=2, d=2, n_points=2, seed=1)
    locations = locations.clamp(0.05, 0.95)  # keep finite differences off the padding boundary
    inputs = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_core(v, shapes, None, l, a), inputs,
                                    eps=1e-6, atol=1e-6)
    # the TensorRT-form custom op has the same gradients (registered autograd recomputes the reference)
    assert torch.autograd.gradcheck(
        lambda v, l, a: torch.ops.hcq.ms_deform_attn(v, torch.tensor(shapes, dtype=torch.int32),
                                                     torch.tensor([0, 12], dtype=torch.int32), l, a),
        inputs, eps=1e-6, atol=1e-6)


def test_core_rejects_inconsistent_inputs():
    shapes = [(3, 4), (2, 2)]
    value, locations, weights = random_inputs(shapes)
    with pytest.raises(ValueError, match="S=16"):
        ms_deform_attn_core(value, [(3, 4), (2, 3)], None, locations, weights)
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn_core(value, shapes, torch.tensor([0, 11]), locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn_core(value, shapes, None, locations, weights[..., :1])
    with pytest.raises(ValueError, match="sampling_locations"):
        ms_deform_attn_core(value, shapes, None, locations[:, :, :, :1], weights)
    with pytest.raises(ValueError, match="positive"):
        ms_deform_attn_core(value, [(0, 4), (4, 4)], None, locations, weights)


def test_trt_path_matches_reference_and_rejects_float64():
    shapes = [(4, 6), (2, 3)]
    value, locations, weights = random_inputs(shapes, dtype=torch.float32)
    reference = ms_deform_attn_core(value, shapes, None, locations, weights)
    with export_mode(trt=True):
        torch.testing.assert_close(ms_deform_attn(value, shapes, None, locations, weights), reference)
        torch.testing.assert_close(ms_deform_attn(value, torch.tensor(shapes), torch.tensor([0, 24]),
                                                  locations, weights), reference)
        with pytest.raises(ValueError, match="float32/float16"):
            ms_deform_attn(value.double(), shapes, None, locations.double(), weights.double())


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return module


def test_module_shapes_extra_points_and_padding_mask():
    torch.manual_seed(0)
    shapes = [(6, 8), (3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    n, lq, c, m = 2, 5, 32, 4
    query, value_input = torch.randn(n, lq, c), torch.randn(n, s, c)
    plain = MSDeformAttn(c, 3, m, 4)
    assert plain(query, torch.rand(n, lq, 2), value_input, shapes).shape == (n, lq, c)
    assert plain(query, torch.rand(n, lq, 4), value_input, torch.tensor(shapes)).shape == (n, lq, c)
    assert plain(query, torch.rand(n, lq, 3, 2), value_input, shapes).shape == (n, lq, c)  # per-level refs
    mixed = MSDeformAttn(c, 3, m, 2, n_extra_points=3)
    extra = torch.rand(n, lq, m, 3, 2)
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[1, :10] = True
    assert mixed(query, torch.rand(n, lq, 4), value_input, shapes, None, mask, extra).shape == (n, lq, c)
    # every key masked -> no value reaches the output, only output_proj's bias
    out = mixed(query, torch.rand(n, lq, 2), value_input, shapes, None, torch.ones(n, s, dtype=torch.bool), extra)
    torch.testing.assert_close(out, mixed.output_proj.bias.expand(n, lq, c).detach())
    with pytest.raises(ValueError, match="extra_points"):
        mixed(query, torch.rand(n, lq, 2), value_input, shapes)
    with pytest.raises(ValueError, match="extra_points"):
        plain(query, torch.rand(n, lq, 2), value_input, shapes, extra_points=extra)
    with pytest.raises(ValueError, match="reference_points"):
        plain(query, torch.rand(n, lq, 3), value_input, shapes)
    with pytest.raises(ValueError, match="value_padding_mask"):
        plain(query, torch.rand(n, lq, 2), value_input, shapes, value_padding_mask=mask[:, :5])
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(30, 3, 4, 4)


def test_extra_points_sample_the_same_location_at_every_level():
    shapes = [(4, 4), (2, 3)]
    s = sum(h * w for h, w in shapes)
    c, m = 4, 2
    attn = MSDeformAttn(c, 2, m, n_points=0, n_extra_points=1).double()
    with torch.no_grad():  # identity projections: output = sampled value, weights uniform (zero init)
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(c))
    value_input = torch.randn(1, s, c, dtype=torch.float64)
    extra = torch.rand(1, 2, m, 1, 2, dtype=torch.float64)
    got = attn(torch.randn(1, 2, c, dtype=torch.float64), torch.rand(1, 2, 2, dtype=torch.float64),
               value_input, shapes, None, None, extra)
    locations = extra[:, :, :, None].expand(1, 2, m, 2, 1, 2)
    expected = bilinear_loop(value_input.view(1, s, m, c // m), shapes, locations,
                             torch.full((1, 2, m, 2, 1), 0.5, dtype=torch.float64))
    torch.testing.assert_close(got, expected)


def test_offset_init_is_a_ring_over_heads():
    attn = MSDeformAttn(64, 2, 8, 3)
    bias = attn.sampling_offsets.bias.detach().view(8, 2, 3, 2)
    assert torch.equal(bias[:, 0], bias[:, 1])  # same pattern on every level
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for k in range(3):  # point k sits k+1 steps out along the head's direction
            torch.testing.assert_close(bias[head, 0, k], direction * (k + 1))
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0


class TwoLayer(torch.nn.Module):
    """Two deformable attention layers, keypoint-style extra points in the second."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes
        self.first = MSDeformAttn(16, len(shapes), 2, 2)
        self.second = MSDeformAttn(16, len(shapes), 2, 1, n_extra_points=2)

    def forward(self, query, boxes, value_input, extra_points):
        hidden = self.first(query, boxes[..., :2], value_input, self.shapes)
        return self.second(hidden, boxes, value_input, self.shapes, extra_points=extra_points)


def _two_layer_case():
    shapes = [(6, 5), (3, 3)]
    model = _randomize(TwoLayer(shapes), seed=3).eval()
    g = torch.Generator().manual_seed(4)
    s = sum(h * w for h, w in shapes)
    args = (torch.randn(1, 4, 16, generator=g), torch.rand(1, 4, 4, generator=g) * 0.5 + 0.25,
            torch.randn(1, s, 16, generator=g), torch.rand(1, 4, 2, 2, 2, generator=g))
    with torch.no_grad():
        expected = model(*args)
    return model, args, expected


def test_onnx_decomposed_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model, args, expected = _two_layer_case()
    proto = export_onnx(model, args, trt=False)
    assert count_trt_plugin_nodes(proto) == 0
    assert sum(node.op_type == "GridSample" for node in proto.graph.node) == 4  # 2 layers x 2 levels
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {inp.name: arg.numpy() for inp, arg in zip(session.get_inputs(), args)}
    np.testing.assert_allclose(session.run(None, feeds)[0], expected.numpy(), atol=1e-4, rtol=1e-4)


def _plugin_inputs_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Cut the graph before the first plugin node; its five inputs become the graph outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    plugin = next(node for node in model.graph.node if node.op_type == PLUGIN_OP_TYPE)
    kept = list(model.graph.node)[:list(model.graph.node).index(plugin)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.output[:]
    for i, name in enumerate(plugin.input):  # Identity so initializers can be outputs too
        model.graph.node.append(helper.make_node("Identity", [name], [f"plugin_in_{i}"]))
        model.graph.output.append(helper.make_empty_tensor_value_info(f"plugin_in_{i}"))
    return model


def test_onnx_trt_form_one_plugin_node_per_layer():
    model, args, expected = _two_layer_case()
    proto = export_onnx(model, args, trt=True)
    onnx.checker.check_model(proto, full_check=True)
    assert count_trt_plugin_nodes(proto) == 2
    assert not any(node.op_type == "GridSample" for node in proto.graph.node)
    summaries = check_trt_plugin_nodes(proto)
    assert [s["inputs"]["sampling_locations"] for s in summaries] == [[1, 4, 2, 2, 2, 2], [1, 4, 2, 2, 3, 2]]
    for node in proto.graph.node:
        if node.op_type == PLUGIN_OP_TYPE:
            assert node.domain == ""
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs == {"plugin_version": b"1", "plugin_namespace": b""}

    # The graph feeding the first plugin node, run in onnxruntime, gives the plugin exactly the inputs that make
    # the reference reproduce the first layer.
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(_plugin_inputs_model(proto).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {inp.name: arg.numpy() for inp, arg in zip(session.get_inputs(), args)}
    value, shapes, starts, locations, weights = session.run(None, feeds)
    assert shapes.dtype == np.int32 and starts.dtype == np.int32
    assert shapes.tolist() == [[6, 5], [3, 3]] and starts.tolist() == [0, 30]
    with torch.no_grad():
        core = torch.ops.hcq.ms_deform_attn(*(torch.from_numpy(a) for a in (value, shapes, starts, locations,
                                                                                weights)))
        first_layer = model.first.output_proj(core.flatten(2))
        torch.testing.assert_close(first_layer, model.first(args[0], args[1][..., :2], args[2], model.shapes),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_trt_form_that_cannot_emit_the_plugin_raises():
    no_attention = torch.nn.Linear(4, 4).eval()
    with pytest.raises(RuntimeError, match="no MultiscaleDeformableAttnPlugin_TRT"):
        export_onnx(no_attention, (torch.randn(1, 4),), trt=True)
    # the TorchScript exporter cannot translate the custom op: it fails instead of falling back to grid_sample
    model, args, _ = _two_layer_case()
    with export_mode(trt=True), pytest.raises(Exception, match="hcq::ms_deform_attn"):
        torch.onnx.export(model, args, None, dynamo=False)


def _plugin_graph(shapes_type=TensorProto.INT32, location_rank=6):
    register_trt_plugin_schema()
    location_dims = [1, 4, 2, 2, 3, 2][:location_rank]
    inputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 39, 2, 8]),
              helper.make_tensor_value_info("shapes", shapes_type, [2, 2]),
              helper.make_tensor_value_info("starts", TensorProto.INT32, [2]),
              helper.make_tensor_value_info("locations", TensorProto.FLOAT, location_dims),
              helper.make_tensor_value_info("weights", TensorProto.FLOAT, [1, 4, 2, 2, 3])]
    node = helper.make_node(PLUGIN_OP_TYPE, [i.name for i in inputs], ["out"], name="msda",
                            plugin_version="1", plugin_namespace="")
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 2, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_plugin_node_checker_rejects_wrong_dtypes_and_ranks():
    summaries = check_trt_plugin_nodes(_plugin_graph())
    assert summaries[0]["inputs"]["value"] == [1, 39, 2, 8]
    onnx.checker.check_model(_plugin_graph(), full_check=True)
    with pytest.raises(ValueError, match="spatial_shapes is INT64"):
        check_trt_plugin_nodes(_plugin_graph(shapes_type=TensorProto.INT64))
    with pytest.raises(ValueError, match="rank 5"):
        check_trt_plugin_nodes(_plugin_graph(location_rank=5))

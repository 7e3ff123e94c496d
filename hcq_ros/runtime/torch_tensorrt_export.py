"""``hcq-ros export --target torch-tensorrt``: compile a checkpoint with torch-tensorrt (dynamo) into a TensorRT-backed
torch ExportedProgram, ``<out>/<name>.torchtrt.ep`` + ``<name>.torchtrt.json``, for users who stay in PyTorch
(DESIGN.md section 8). The ONNX route (``.trt.onnx`` -> ``hcq-ros build-engine``) stays the product's default.

The deformable attention reaches TensorRT as its built-in ``MultiscaleDeformableAttnPlugin_TRT``, the plugin the
``.trt.onnx`` export names:
- the model is traced inside ``export_mode(trt=True)``, where every MSDeformAttn core call is the custom op
  ``torch.ops.hcq.ms_deform_attn`` (the plugin's five inputs, output [N, Lq, M, D]);
- ``register_plugin_converter`` gives torch-tensorrt a converter for that op: one plugin layer
  (``INetworkDefinition.add_plugin_v2`` with the creator from TensorRT's plugin registry after
  ``init_libnvinfer_plugins``), spatial_shapes and level_start_index cast to INT32 as the plugin requires.

It needs torch_tensorrt, TensorRT and a CUDA GPU. torch_tensorrt is not a dependency of this package: its wheels
pull a CUDA torch that replaces the CPU one. Where any of them is missing the export stops with an error saying
which, and writes nothing. Load the result on the GPU with ``import torch_tensorrt, hcq_ros.ops`` then
``torch.export.load(path).module()``; inputs as the onnxruntime export's (``images`` float32 [1, 3, H, W] /
``crops`` [B, 3, H, W], B in the batch profile), outputs in the sidecar's ``output_names`` order.

APIs used (torch-tensorrt 2.x dynamo frontend): ``torch_tensorrt.dynamo.conversion.dynamo_tensorrt_converter``
(converter signature ``(ctx, target, args, kwargs, name)``, ``ctx.net`` the INetworkDefinition),
``converter_utils.get_trt_tensor`` / ``cast_trt_tensor``, ``torch_tensorrt.Input``, ``torch_tensorrt.dynamo.compile``
on a ``torch.export`` ExportedProgram, ``torch_tensorrt.save``.
"""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import torch

from hcq_ros.runtime.export import (ExportResult, atomic_write, check_input_size, default_input_size,
                                    example_input, flat_io_module, model_from_checkpoint, read_checkpoint,
                                    sha256_file)
from hcq_ros.runtime.tensorrt_build import DEFAULT_BATCH_PROFILE, PLUGIN_NAME, PLUGIN_VERSION

log = logging.getLogger(__name__)

TORCH_TRT_TARGET = "torch-tensorrt"
TORCH_TRT_SUFFIX = ".torchtrt.ep"
PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
_CONVERTER_REGISTERED = False


def import_torch_tensorrt():
    """(torch_tensorrt, tensorrt) modules; RuntimeError naming what is missing otherwise."""
    try:
        import torch_tensorrt
    except Exception as exc:  # ImportError, or OSError from a broken CUDA / TensorRT install
        raise RuntimeError(f"--target {TORCH_TRT_TARGET} needs the torch_tensorrt package, which is not importable "
                           f"here ({type(exc).__name__}: {exc}). It comes with a CUDA torch and TensorRT; install it "
                           f"on the GPU machine (pip install torch-tensorrt, matching its torch), or use --target "
                           f"tensorrt and hcq-ros build-engine") from exc
    try:
        import tensorrt as trt
    except Exception as exc:
        raise RuntimeError(f"--target {TORCH_TRT_TARGET}: torch_tensorrt imports but TensorRT does not "
                           f"({type(exc).__name__}: {exc})") from exc
    return torch_tensorrt, trt


def register_plugin_converter() -> None:
    """Register the converter torch.ops.hcq.ms_deform_attn -> MultiscaleDeformableAttnPlugin_TRT (once per
    process). RuntimeError if torch_tensorrt / TensorRT are missing or the plugin is not in TensorRT's registry."""
    global _CONVERTER_REGISTERED
    if _CONVERTER_REGISTERED:
        return
    _, trt = import_torch_tensorrt()
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter
    from torch_tensorrt.dynamo.conversion.converter_utils import cast_trt_tensor, get_trt_tensor

    import hcq_ros.ops.ms_deform_attn  # noqa: F401  (defines torch.ops.hcq.ms_deform_attn)

    trt.init_libnvinfer_plugins(None, "")   # the built-in plugins, default namespace
    creator = trt.get_plugin_registry().get_plugin_creator(PLUGIN_NAME, PLUGIN_VERSION, "")
    if creator is None:
        raise RuntimeError(f"TensorRT {trt.__version__}: {PLUGIN_NAME} v{PLUGIN_VERSION} is not in the plugin "
                           "registry after init_libnvinfer_plugins (libnvinfer_plugin missing?)")

    try:
        register = dynamo_tensorrt_converter(torch.ops.hcq.ms_deform_attn.default, supports_dynamic_shapes=True)
    except TypeError as exc:   # the first 2.x releases had no supports_dynamic_shapes (PersonNet needs it)
        raise RuntimeError(f"torch_tensorrt {getattr(torch_tensorrt_module(), '__version__', '?')} is too old for "
                           f"--target {TORCH_TRT_TARGET}: its dynamo_tensorrt_converter has no "
                           f"supports_dynamic_shapes ({exc}); upgrade torch-tensorrt") from exc

    @register
    def convert_ms_deform_attn(ctx, target, args, kwargs, name):
        """value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], sampling_locations [N,Lq,M,L,P,2],
        attention_weights [N,Lq,M,L,P] -> one plugin layer, output [N, Lq, M, D] (the op's own output)."""
        value, shapes, starts, locations, weights = (get_trt_tensor(ctx, a, f"{name}_input{i}")
                                                     for i, a in enumerate(args))
        shapes = cast_trt_tensor(ctx, shapes, trt.int32, f"{name}_spatial_shapes_int32")
        starts = cast_trt_tensor(ctx, starts, trt.int32, f"{name}_level_start_index_int32")
        plugin = creator.create_plugin(name, trt.PluginFieldCollection([]))
        layer = ctx.net.add_plugin_v2([value, shapes, starts, locations, weights], plugin)
        layer.name = f"{name}_{PLUGIN_NAME}"
        return layer.get_output(0)

    _CONVERTER_REGISTERED = True


def torch_tensorrt_module():
    import torch_tensorrt
    return torch_tensorrt


def precision_options(compile_fn, precision: str) -> tuple[dict, str]:
    """(keyword arguments for ``torch_tensorrt.dynamo.compile``, how the precision is asked for), by what that
    release's signature takes. fp16 in newer releases (``use_explicit_typing`` defaults to True, and
    ``enabled_precisions`` alone is then ignored): rule-based autocast to float16 where ``enable_autocast``
    exists, else TensorRT weak typing with ``use_explicit_typing=False``; older releases: ``enabled_precisions``."""
    params = inspect.signature(compile_fn).parameters
    if precision == "fp32":
        return {"enabled_precisions": {torch.float32}}, "fp32"
    if "enable_autocast" in params and "low_precision_type" in params:
        return {"use_explicit_typing": True, "enable_autocast": True, "low_precision_type": torch.float16}, \
            "fp16 by rule-based autocast (enable_autocast)"
    if "use_explicit_typing" in params:
        return {"use_explicit_typing": False, "enabled_precisions": {torch.float16}}, \
            "fp16 by TensorRT weak typing (use_explicit_typing=False)"
    return {"enabled_precisions": {torch.float16}}, "fp16 by enabled_precisions"


def save_options(save_fn, example: torch.Tensor, dynamic) -> dict:
    """Keyword arguments for ``torch_tensorrt.save`` that keep a dynamic batch: ``arg_inputs`` (newer) or
    ``inputs``, plus ``dynamic_shapes`` where save takes it (a re-exporting save would otherwise fix the batch at
    the example's)."""
    params = inspect.signature(save_fn).parameters
    options = {("arg_inputs" if "arg_inputs" in params else "inputs"): [example]}
    if dynamic is not None and "dynamic_shapes" in params:
        options["dynamic_shapes"] = dynamic
    return options


def torch_trt_file_name(name: str) -> str:
    return f"{name}{TORCH_TRT_SUFFIX}"


def export_torch_tensorrt(checkpoint: str | Path, out_dir: str | Path = "engines",
                          input_size: tuple[int, int] | None = None, name: str | None = None,
                          precision: str = "fp16", batch_profile=DEFAULT_BATCH_PROFILE) -> ExportResult:
    """Checkpoint -> ``<out_dir>/<name>.torchtrt.ep`` + sidecar ``<name>.torchtrt.json`` (module docstring).
    PersonNet gets a dynamic batch axis over ``batch_profile`` (min, opt, max); the detector batch 1. Missing
    torch_tensorrt / TensorRT / GPU -> RuntimeError before anything is written; bad size or precision ->
    ValueError; missing checkpoint -> FileNotFoundError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    checkpoint = Path(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    torch_tensorrt, trt = import_torch_tensorrt()
    if not torch.cuda.is_available():
        raise RuntimeError(f"--target {TORCH_TRT_TARGET} compiles for a CUDA GPU; torch.cuda is not available")
    register_plugin_converter()
    from hcq_ros.ops.ms_deform_attn import export_mode

    kind, model = model_from_checkpoint(ckpt, checkpoint)
    size = check_input_size(kind, input_size or default_input_size(kind, model, ckpt))
    module = flat_io_module(kind, model, size).cuda().eval()
    example = example_input(kind, size).cuda()
    lo, opt, hi = (int(v) for v in batch_profile)
    if kind == "person":
        batch = torch.export.Dim("batch", min=lo, max=hi)
        dynamic, shape = ({0: batch},), tuple(example.shape[1:])
        spec = torch_tensorrt.Input(min_shape=(lo, *shape), opt_shape=(opt, *shape), max_shape=(hi, *shape),
                                    dtype=torch.float32)
    else:
        dynamic, spec = None, torch_tensorrt.Input(shape=tuple(example.shape), dtype=torch.float32)
    with torch.no_grad(), export_mode(trt=True):
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        options, precision_mode = precision_options(torch_tensorrt.dynamo.compile, precision)
        compiled = torch_tensorrt.dynamo.compile(program, inputs=[spec], min_block_size=1, **options)
    name = name or checkpoint.stem
    path = Path(out_dir) / torch_trt_file_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_tensorrt.save(compiled, str(path), **save_options(torch_tensorrt.save, example, dynamic))
    metadata = {"kind": kind, "target": TORCH_TRT_TARGET, "precision": precision, "precision_mode": precision_mode,
                "input_size": list(size),
                "input_names": list(module.input_names), "output_names": list(module.output_names),
                "batch_profile": [lo, opt, hi] if kind == "person" else None,
                "source_checkpoint": str(checkpoint), "source_sha256": sha256_file(checkpoint),
                "torch_tensorrt_version": torch_tensorrt.__version__, "tensorrt_version": trt.__version__,
                "gpu": torch.cuda.get_device_name(0), "file": path.name, "sha256": sha256_file(path)}
    meta_path = path.with_name(path.name[:-len(".ep")] + ".json")
    atomic_write(meta_path, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    log.info("torch-tensorrt export of %s (%s, %s) -> %s", checkpoint, kind, precision, path)
    return ExportResult(path, meta_path, metadata)

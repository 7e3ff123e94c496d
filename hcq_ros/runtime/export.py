"""Export checkpoints to ONNX for onnxruntime and for TensorRT (DESIGN.md §8), with a metadata sidecar.

Targets and files (``<name>`` defaults to the checkpoint's stem):
- HCQNet, ``onnxruntime`` -> ``<name>.onnx``: deformable attention decomposed into GridSample ops. Never give
  this file to TensorRT (it can silently miscompile that form).
- HCQNet, ``tensorrt`` -> ``<name>.trt.onnx``: one ``MultiscaleDeformableAttnPlugin_TRT`` node per deformable
  attention (INT32 spatial_shapes / level_start_index), checked with ``check_trt_plugin_nodes``.
- PersonNet has no deformable attention: both targets write the same plain graph (``<name>.onnx`` /
  ``<name>.trt.onnx``), so that every TensorRT input is a ``*.trt.onnx``.

Flat I/O. Detector: input ``images`` [1, 3, H, W] float32 normalised as ``image_to_tensor`` (fixed size and
batch 1); outputs pred_logits, pred_boxes, pred_keypoints, pred_kpt_sigma, pred_masks (+ pred_box_sigma),
whichever the configuration produces, in that order. Person net: input ``crops`` [B, 3, H, W] with a dynamic
batch axis; outputs ``PersonNet.output_names()``.

Metadata (sidecar ``<file without .onnx>.json`` and the ONNX ``metadata_props`` key ``hcq_ros``): kind,
input size, input/output names and shapes, profile, config dict, source checkpoint + sha256, exporter, opset,
torch/onnx versions, export form (``grid_sample`` | ``trt_plugin`` | ``plain``), target; the sidecar adds the
ONNX file's own sha256.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from hcq_ros.data.torch_dataset import IMAGE_MEAN, IMAGE_STD
from hcq_ros.runtime.engine_cache import atomic_write

log = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt")
KINDS = ("hcq", "person")
DETECTOR_INPUT = "images"
PERSON_INPUT = "crops"
DETECTOR_OUTPUTS = ("pred_logits", "pred_boxes", "pred_keypoints", "pred_kpt_sigma", "pred_masks", "pred_box_sigma")
DEFAULT_DETECTOR_SIZE = (320, 320)   # (W, H) when the checkpoint does not record its training size
METADATA_KEY = "hcq_ros"
METADATA_VERSION = 1
MIN_OPSET = 18                       # what torch.onnx.export(dynamo=True) writes
PERSON_MAX_BATCH = 1024              # bound of the exported symbolic batch axis (TensorRT profiles are tighter)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | Path) -> dict:
    """torch.load a checkpoint dict; FileNotFoundError / ValueError (unreadable, not a dict) naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # zip/pickle errors of a truncated or foreign file come in many types
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not an hcq_ros checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    return ckpt


def checkpoint_kind(ckpt: dict, path: str | Path = "<checkpoint>") -> str:
    """"hcq" (key ``hcq_config``) or "person" (key ``person_config``); ValueError otherwise."""
    from hcq_ros.models import hcq, person_net

    if hcq.CHECKPOINT_CONFIG_KEY in ckpt:
        return "hcq"
    if person_net.CHECKPOINT_CONFIG_KEY in ckpt:
        return "person"
    raise ValueError(f"{path}: unknown checkpoint, neither {hcq.CHECKPOINT_CONFIG_KEY!r} (HCQNet) nor "
                     f"{person_net.CHECKPOINT_CONFIG_KEY!r} (PersonNet) in its keys {sorted(ckpt)[:10]}")


def model_from_checkpoint(ckpt: dict, path: str | Path = "<checkpoint>") -> tuple[str, nn.Module]:
    """Build the network a checkpoint dict describes and load its weights -> (kind, model in eval mode)."""
    from hcq_ros.models.hcq import CHECKPOINT_CONFIG_KEY as HCQ_KEY, HCQConfig, HCQNet
    from hcq_ros.models.person_net import CHECKPOINT_CONFIG_KEY as PERSON_KEY, PersonNet, PersonNetConfig

    kind = checkpoint_kind(ckpt, path)
    if "model" not in ckpt:
        raise ValueError(f"{path}: checkpoint has no 'model' state dict")
    try:
        if kind == "hcq":
            model = HCQNet(HCQConfig.from_dict(ckpt[HCQ_KEY]))
        else:
            model = PersonNet(PersonNetConfig.from_dict(ckpt[PERSON_KEY]))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: corrupt {kind} checkpoint ({exc})") from exc
    return kind, model.eval()


def load_model_checkpoint(path: str | Path) -> tuple[str, nn.Module]:
    """Checkpoint file -> (kind "hcq" | "person", model in eval mode). Missing -> FileNotFoundError; unreadable,
    unknown or corrupt (weights not matching the stored config) -> ValueError naming the file."""
    return model_from_checkpoint(read_checkpoint(path), path)


def default_input_size(kind: str, model: nn.Module, ckpt: dict | None = None) -> tuple[int, int]:
    """(W, H): the person net's ``crop_size``; the detector's training ``data.image_size`` if the checkpoint
    records it, else DEFAULT_DETECTOR_SIZE."""
    if kind == "person":
        h, w = model.config.crop_size
        return int(w), int(h)
    size = ((ckpt or {}).get("config") or {}).get("data", {}).get("image_size")
    if size and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_DETECTOR_SIZE


# ------------------------------------------------------------------------------------------- flat I/O
class DetectorIO(nn.Module):
    """HCQNet with flat outputs: forward(images [B, 3, H, W]) -> tuple in ``output_names`` order."""

    def __init__(self, model: nn.Module, output_names: list[str]) -> None:
        super().__init__()
        self.model, self.output_names = model, list(output_names)
        self.input_names = [DETECTOR_INPUT]

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor) -> "DetectorIO":
        """Output names = the DETECTOR_OUTPUTS the model returns for ``example`` (eval mode)."""
        with torch.no_grad():
            out = model.eval()(example)
        return cls(model, [k for k in DETECTOR_OUTPUTS if k in out])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, with_aux=False)
        return tuple(out[k] for k in self.output_names)


class PersonIO(nn.Module):
    """PersonNet with flat outputs: forward(crops [B, 3, H, W]) -> tuple in ``PersonNet.output_names()`` order
    (the attribute logits list is spread into one output per attribute), then ``part_labels`` [B, H, W] int32 =
    argmax of part_logits when the net has parts: the runtime's ArgMax is several times faster than numpy's over
    the channel axis, a per-person cost of the pipeline (int32: TensorRT 8.6 has no int64 outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        names = model.output_names()
        self.input_names, self.output_names = [PERSON_INPUT], names + (["part_labels"] if "part_logits" in names
                                                                       else [])

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(crops, with_train_outputs=False)
        flat = []
        if "embedding" in out:
            flat.append(out["embedding"])
        flat.extend(out.get("attr_logits", []))
        if "keypoints" in out:
            flat += [out["keypoints"], out["keypoint_conf"]]
        if "part_logits" in out:
            flat += [out["part_logits"], out["part_logits"].argmax(1).to(torch.int32)]
        return tuple(flat)


def flat_io_module(kind: str, model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """The DetectorIO / PersonIO wrapper of ``model`` (eval mode) for inputs of (W, H)."""
    model.eval()
    if kind == "hcq":
        w, h = input_size
        return DetectorIO.build(model, torch.zeros(1, 3, h, w))
    if kind == "person":
        return PersonIO(model)
    raise ValueError(f"unknown model kind {kind!r}; choose from {KINDS}")


def example_input(kind: str, input_size: tuple[int, int]) -> torch.Tensor:
    """Deterministic export example: detector batch 1; person net batch 2 (a batch of 1 would specialise the
    dynamic axis to 1 in torch.export)."""
    w, h = input_size
    return torch.randn(1 if kind == "hcq" else 2, 3, h, w, generator=torch.Generator().manual_seed(0))


def check_input_size(kind: str, input_size) -> tuple[int, int]:
    """(W, H) ints, multiples of 32 (detector) or 16 (person net); ValueError otherwise."""
    if len(input_size) != 2:
        raise ValueError(f"input size must be (W, H), got {input_size!r}")
    w, h = int(input_size[0]), int(input_size[1])
    multiple = 32 if kind == "hcq" else 16
    if w <= 0 or h <= 0 or w % multiple or h % multiple:
        raise ValueError(f"{kind} input size must be positive multiples of {multiple}, got W={w} H={h}")
    return w, h


# ------------------------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    onnx_path: Path
    metadata_path: Path
    metadata: dict


def onnx_file_name(name: str, target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; choose from {TARGETS}")
    return f"{name}.trt.onnx" if target == "tensorrt" else f"{name}.onnx"


def sidecar_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.json``; ``x.trt.onnx`` -> ``x.trt.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name[: -len(".onnx")] + ".json") if onnx_path.name.endswith(".onnx") \
        else onnx_path.with_name(onnx_path.name + ".json")


def export_network(kind: str, model: nn.Module, target: str, onnx_path: str | Path, input_size: tuple[int, int],
                   opset: int = 18, extra_metadata: dict | None = None) -> ExportResult:
    """Export an in-memory HCQNet / PersonNet (see module docstring); returns the paths and metadata."""
    from hcq_ros.ops.ms_deform_attn_onnx import count_trt_plugin_nodes, export_onnx

    input_size = check_input_size(kind, input_size)
    if opset < MIN_OPSET:
        # torch's dynamo exporter writes opset 18 and only tries a down-conversion, which fails on these graphs
        # (Reduce* with axes inputs, the plugin op) and then keeps 18: refuse instead of mislabelling the file.
        raise ValueError(f"ONNX opset {opset} requested; the exporter writes opset >= {MIN_OPSET} (TensorRT 8.6's "
                         "parser documents opset <= 17: use TensorRT 10.x for these exports)")
    onnx_path = Path(onnx_path)
    suffix = onnx_file_name("", target)   # validates target
    if not onnx_path.name.endswith(suffix) or (target != "tensorrt" and onnx_path.name.endswith(".trt.onnx")):
        raise ValueError(f"{target} exports must be named *{suffix}, got {onnx_path}")
    module = flat_io_module(kind, model, input_size)
    example = example_input(kind, input_size)
    trt_form = kind == "hcq" and target == "tensorrt"
    dynamic = {PERSON_INPUT: {0: torch.export.Dim("batch", min=1, max=PERSON_MAX_BATCH)}} if kind == "person" else None
    chatty = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [logger.level for logger in chatty]
    try:
        for logger in chatty:   # the exporter's optimiser logs every rewrite at INFO
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the exporter's deprecation/tracer chatter
            proto = export_onnx(module, (example,), None, trt=trt_form, opset_version=opset,
                                input_names=module.input_names, output_names=module.output_names,
                                dynamic_shapes=dynamic)
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    # export_onnx has run onnx.checker (full_check) and, for the TensorRT form, check_trt_plugin_nodes
    n_plugins = count_trt_plugin_nodes(proto)
    written_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written_opset != opset:
        raise RuntimeError(f"requested ONNX opset {opset} but the exporter wrote opset {written_opset}")
    form = "trt_plugin" if trt_form else ("grid_sample" if kind == "hcq" else "plain")
    w, h = input_size
    config = model.config.to_dict()
    metadata = {
        "format_version": METADATA_VERSION, "kind": kind, "target": target, "export_form": form,
        "input_size": [w, h], "input_names": module.input_names, "output_names": module.output_names,
        "input_shapes": {module.input_names[0]: [1 if kind == "hcq" else None, 3, h, w]},
        "dynamic_batch": kind == "person", "profile": config.get("profile"), "config": config,
        "normalization": {"mean": IMAGE_MEAN.tolist(), "std": IMAGE_STD.tolist(), "scale": 1 / 255.0,
                          "layout": "RGB NCHW"},
        "plugin_nodes": n_plugins, "exporter": "torch.onnx.export(dynamo=True)", "opset": opset,
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra_metadata or {}),
    }
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, sort_keys=True),
                                        "hcq_ros.kind": kind, "hcq_ros.export_form": form})
    atomic_write(onnx_path, proto.SerializeToString())
    sidecar = {**metadata, "onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path)}
    meta_path = sidecar_path(onnx_path)
    atomic_write(meta_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    log.info("exported %s (%s, %s form, %d plugin nodes) -> %s", kind, target, form, n_plugins, onnx_path)
    return ExportResult(onnx_path, meta_path, sidecar)


def export_model(checkpoint: str | Path, target: str, out_dir: str | Path = "engines",
                 input_size: tuple[int, int] | None = None, name: str | None = None,
                 opset: int = 18) -> ExportResult:
    """Checkpoint -> ``<out_dir>/<name>.onnx`` (onnxruntime) or ``<name>.trt.onnx`` (tensorrt) + sidecar.

    input_size: (W, H); default ``default_input_size``. name: default the checkpoint's file stem.
    """
    checkpoint = Path(checkpoint)
    onnx_file_name("x", target)
    ckpt = read_checkpoint(checkpoint)
    kind, model = model_from_checkpoint(ckpt, checkpoint)
    size = check_input_size(kind, input_size) if input_size else default_input_size(kind, model, ckpt)
    name = name or checkpoint.stem
    extra = {"name": name, "source_checkpoint": str(checkpoint), "source_sha256": sha256_file(checkpoint)}
    if "iteration" in ckpt:
        extra["source_iteration"] = int(ckpt["iteration"])
    return export_network(kind, model, target, Path(out_dir) / onnx_file_name(name, target), size, opset, extra)


def read_export_metadata(onnx_path: str | Path) -> dict:
    """Metadata of an export: the sidecar if present (checked against the file's sha256), else the ONNX
    ``metadata_props``; {} for an ONNX without either. Missing file -> FileNotFoundError."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    sidecar = sidecar_path(onnx_path)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"metadata sidecar {sidecar} is not valid JSON: {exc}") from exc
        if meta.get("onnx_sha256") not in (None, sha256_file(onnx_path)):
            log.warning("metadata sidecar %s describes another version of %s; reading the ONNX's own metadata",
                        sidecar, onnx_path)
        else:
            return meta
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{onnx_path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def export_kind_phrase(meta: dict) -> str:
    """What an ONNX holds, for error messages: "a 'person' export" / "an ONNX without hcq_ros export metadata"."""
    return f"a {meta['kind']!r} export" if meta.get("kind") else "an ONNX without hcq_ros export metadata"


def describe_export(result: ExportResult) -> str:
    """One-paragraph summary for the CLI."""
    m = result.metadata
    shapes = ", ".join(f"{k} {['B' if d is None else d for d in v]}" for k, v in m["input_shapes"].items())
    return (f"{m['kind']} -> {result.onnx_path} ({m['export_form']} form for {m['target']}, opset {m['opset']}, "
            f"{m['plugin_nodes']} plugin nodes)\n  inputs: {shapes}\n  outputs: {', '.join(m['output_names'])}\n"
            f"  metadata: {result.metadata_path}")

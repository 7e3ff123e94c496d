"""Static int8 quantisation of the onnxruntime exports (``hcq-ros export --target onnxruntime-int8``).

``quantize_onnx`` runs onnxruntime's ``quant_pre_process`` (ONNX shape inference + graph optimisation) and
``quantize_static`` in QDQ format: Conv / MatMul / Gemm weights int8 per output channel (symmetric), their
activations uint8 per tensor (asymmetric), ranges calibrated on data fed by ``calibration_batches``. Everything else
(GroupNorm, softmax, GridSample, the heads' small ops) stays float32. QUInt8 activations with QInt8 weights is
onnxruntime's recommendation for x86 CPUs with VNNI (its u8s8 kernels); ``reduce_range`` is off for the same reason.

Calibration data is SynthHumans, never an evaluation seed: image ``i`` is ``generate_image(CALIB_SEED_START + i)``
(seeds 7_100_000, 7_100_001, ...: one per detector frame, PersonNet draws scenes until it has ``count`` crops; the
evaluation folders use sequence seeds 1000003, 2000003, 3000001, 3000003, 424242, 434343). It is prepared exactly as
the Perceptor prepares its inputs (``pipeline.Perceptor``):
- detector: ``letterbox`` to the export's (W, H) + ``image_to_tensor`` -> ``images`` float32 [1, 3, H, W]; even
  images are W x H scenes, odd ones 4:3 scenes of 2W x 1.5W (a camera frame, downscaled and padded like one);
- PersonNet: ``crop_persons`` on the ground-truth boxes (non-crowd persons >= MIN_CROP_HEIGHT px tall) of
  320 x 320 scenes with 1..8 people + ``normalize_images`` -> ``crops`` float32 [1, 3, H, W], ``count`` crops. One
  crop per batch: onnxruntime's histogram calibrators stack a chunk's batches, so they must share one shape, and
  the ranges do not depend on the batching (GroupNorm normalises each crop on its own).

Calibration method (``DEFAULT_METHOD``), chosen by measured accuracy of the shipped PersonNet (engines/person_small,
iteration 9000), each calibrated on the default 256 crops and scored with ``hcq-ros eval --model X.int8.onnx --data
VAL`` on the held-out folder of engines/README.md (922 crops, 39 ReID queries: one query is 0.026 of rank-1):
    method      reid_mAP  reid_rank1  attr_acc  parts_mIoU  pose_PCK
    fp32 .onnx   0.9679    0.9744      0.7552    0.4250      0.8277
    minmax       0.9694    1.0000      0.7547    0.4235      0.8261
    percentile   0.9673    1.0000      0.7535    0.4241      0.8245   (99.999 %)
    entropy      0.9635    0.9744      0.7516    0.4233      0.8240
MinMax is the closest to fp32 on ReID, attributes and pose, 0.0006 behind percentile on parts, and the cheapest
(5.8 s against 7.7 s / 11.5 s for 256 crops on 2 cores).

Detector ops left float32 (``DEFAULT_KEEP_FLOAT``): query selection and the output heads. Quantising every
Conv/MatMul/Gemm of the shipped HCQNet (run 3) cost 3.4 bbox AP points, three times the 1-point budget of the int8
profile. Measured with
``hcq-ros export --model engines/hcq_small.pt --target onnxruntime-int8 --size 320 320 --keep-float M...`` and
``hcq-ros eval --model X.int8.onnx --data H`` on the 500 held-out images of engines/README.md:
    left float32                                 bbox_AP  bbox_AP50  segm_AP  keypoints_err
    fp32 .onnx (all)                              0.1595   0.3736     0.0935   0.2259
    nothing                                       0.1256   0.3270     0.0918   0.2421
    query_selection                               0.1334   0.3446     0.0955   0.2382
    heads (class, box, pose, joint, mask)         0.1593   0.3757     0.0924   0.2267
    query_selection + heads                       0.1617   0.3742     0.0932   0.2254
The heads turn the last decoder features into box and joint coordinates, where one uint8 step of the activation
range is a visible shift. On the whole pipeline (``hcq-ros eval --pipeline --data SEQ --backend onnxruntime
--detector X.int8.onnx --person engines/person_small.int8.onnx`` on the README's held-out sequences, the node's
thresholds) the heads alone still lost 1.3 bbox AP points against the fp32 models (0.158 vs 0.171), query selection
+ heads 0.9 (0.162): the default keeps both, 15% of the detector's FLOPs (docs/cost.md). With the run-4 detector the
default scores 0.192 against 0.186 fp32 on the 500 images and 0.170 against 0.159 in the pipeline.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from hcq_ros.runtime.export import (METADATA_KEY, ExportResult, atomic_write, export_model, sha256_file,
                                    sidecar_path)

log = logging.getLogger(__name__)

INT8_TARGET = "onnxruntime-int8"
INT8_SUFFIX = ".int8.onnx"
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"            # measured, see the module docstring
OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIB_SEED_START = 7_100_000
DEFAULT_CALIB = {"hcq": 64, "person": 256}   # detector frames / PersonNet crops
# Module paths whose ops stay float32 by default (measured, see the module docstring); a model without one of them
# (e.g. no joint heads) just has nothing to keep there.
DEFAULT_KEEP_FLOAT: dict[str, tuple[str, ...]] = {
    "hcq": ("query_selection", "class_head", "box_heads", "pose_heads", "joint_heads", "mask_head"), "person": ()}
CALIB_SCENE = 320                    # PersonNet calibration scenes: 320 x 320, <= 8 people (the product's input)
MIN_CROP_HEIGHT = 16.0
STRIDE = 8                           # calibration batches per range update (bounds the memory of the collection)


# ------------------------------------------------------------------------------------------- calibration data
@dataclass
class Calibration:
    """Calibration inputs: batches (dicts {input name: float32 array}), samples (detector frames / PersonNet
    crops over all batches), seeds (first, last) of the SynthHumans images drawn."""

    batches: list[dict[str, np.ndarray]]
    samples: int
    seeds: tuple[int, int]


def detector_calibration(input_size: tuple[int, int], count: int, seed_start: int = CALIB_SEED_START) -> Calibration:
    """``count`` detector inputs {"images": float32 [1, 3, H, W]} for an export of (W, H) (module docstring)."""
    from hcq_ros.data.synth import SceneConfig, generate_image
    from hcq_ros.data.torch_dataset import image_to_tensor
    from hcq_ros.data.transforms import letterbox

    w, h = input_size
    square, camera = SceneConfig(width=w, height=h), SceneConfig(width=2 * w, height=(3 * w) // 2)
    batches = []
    for i in range(count):
        image = generate_image(seed_start + i, camera if i % 2 else square).image
        boxed, _, _ = letterbox(image, (w, h))
        batches.append({"images": image_to_tensor(boxed).numpy()[None]})
    return Calibration(batches, count, (seed_start, seed_start + count - 1))


def person_calibration(crop_size: tuple[int, int], count: int, seed_start: int = CALIB_SEED_START) -> Calibration:
    """``count`` PersonNet inputs {"crops": float32 [1, 3, H, W]} of crop_size (W, H) (module docstring)."""
    from hcq_ros.data.crops import crop_persons
    from hcq_ros.data.synth import SceneConfig, generate_image
    from hcq_ros.data.torch_dataset import normalize_images

    cfg = SceneConfig(width=CALIB_SCENE, height=CALIB_SCENE, min_people=1, max_people=8)
    batches, left, seed = [], count, seed_start
    while left > 0:
        if seed - seed_start > 100 + count:   # every scene has >= 1 person: never reached in practice
            raise RuntimeError(f"PersonNet calibration: {count - left} of {count} crops from {seed - seed_start} "
                               f"scenes (persons >= {MIN_CROP_HEIGHT:g} px tall are too rare)")
        sample = generate_image(seed, cfg)
        seed += 1
        boxes = [p.box for p in sample.persons if not p.iscrowd and p.box[3] - p.box[1] >= MIN_CROP_HEIGHT]
        if boxes:
            crops, _ = crop_persons(sample.image, np.stack(boxes[:left]), crop_size=crop_size)
            left -= len(crops)
            batches += [{"crops": x[None]} for x in normalize_images(crops)]
    return Calibration(batches, count, (seed_start, seed - 1))


def calibration_batches(kind: str, input_size: tuple[int, int], count: int,
                        seed_start: int = CALIB_SEED_START) -> Calibration:
    """Calibration inputs of a model kind ("hcq" | "person") at input_size (W, H); count >= 1 samples."""
    if int(count) < 1:
        raise ValueError(f"calibration count must be >= 1, got {count}")
    if kind == "hcq":
        return detector_calibration(input_size, int(count), seed_start)
    if kind == "person":
        return person_calibration(input_size, int(count), seed_start)
    raise ValueError(f"unknown model kind {kind!r}; choose from ('hcq', 'person')")


class _Reader:
    """onnxruntime CalibrationDataReader over a list of input dicts, with the ``set_range`` / ``__len__`` that
    ``quantize_static``'s ``CalibStridedMinMax`` option uses to collect ranges STRIDE batches at a time."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches, self.start, self.end, self.pos = batches, 0, len(batches), 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, min(end_index, len(self.batches)), start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self) -> None:
        self.pos = self.start


_MODULE_RE = re.compile(r"/model\.([\w.]+):")


def node_modules(proto: onnx.ModelProto) -> dict[str, str]:
    """{node name: dotted path of the innermost nn.Module that made it} from the ``namespace`` metadata the dynamo
    exporter writes on each node (e.g. "query_selection.box_head.layers.0"); nodes without one are left out."""
    out = {}
    for node in proto.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        found = _MODULE_RE.findall(namespace)
        if found:
            out[node.name] = found[-1]
    return out


def float_nodes(src: onnx.ModelProto, prepared: onnx.ModelProto, keep_float: tuple[str, ...],
                op_types: tuple[str, ...] = OP_TYPES, require_all: bool = True) -> list[str]:
    """Names of the ``op_types`` nodes of ``prepared`` (``quant_pre_process``'s output of ``src``) made by a module
    under one of the ``keep_float`` paths ("decoder" matches "decoder.layers.0.ffn.0", not "decoder2"). The
    pre-processing renames the nodes it fuses to "<src name>/<fusion>", so a name maps back through its prefix. A
    path that matches no node -> ValueError when ``require_all`` (a typo would silently quantise everything)."""
    modules = node_modules(src)
    names, used = [], set()
    for node in prepared.graph.node:
        if node.op_type not in op_types:
            continue
        module = modules.get(node.name) or modules.get(node.name.split("/")[0])
        hit = next((k for k in keep_float if module and (module == k or module.startswith(k + "."))), None)
        if hit is not None:
            names.append(node.name)
            used.add(hit)
    unused = [k for k in keep_float if k not in used]
    if unused and require_all:
        known = sorted({m.split(".")[0] for m in modules.values()})
        raise ValueError(f"keep_float: no {'/'.join(op_types)} node comes from module(s) {unused} "
                         f"(top-level modules of this export: {known})")
    return names


def count_qdq(proto: onnx.ModelProto) -> tuple[int, int]:
    """(QuantizeLinear nodes, DequantizeLinear nodes) of a graph."""
    ops = [n.op_type for n in proto.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


# ------------------------------------------------------------------------------------------- quantisation
def quantize_onnx(src: str | Path, dst: str | Path, calibration: Iterable[dict[str, np.ndarray]],
                  method: str = DEFAULT_METHOD, op_types: tuple[str, ...] = OP_TYPES, per_channel: bool = True,
                  calibration_info: dict | None = None, keep_float: tuple[str, ...] = (),
                  require_all: bool = True) -> dict:
    """Float ONNX ``src`` -> QDQ int8 ONNX ``dst`` (module docstring), calibrated on ``calibration``: dicts
    {input name: float32 array} in the model's input shapes. ``keep_float``: module paths whose ops stay float32
    (``float_nodes``; ``require_all``: each must match a node).

    Returns the metadata written into ``dst``'s ``hcq_ros`` metadata_props: the float export's (if it has one) with
    target "onnxruntime-int8", precision "int8", the written opset and "quantization" (settings, batch and Q/DQ node
    counts, plus ``calibration_info``). Missing/unreadable model -> FileNotFoundError/ValueError; empty calibration,
    wrong input names or unknown method -> ValueError; a result without Q/DQ nodes or failing onnx.checker ->
    RuntimeError."""
    import onnxruntime
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"int8 quantisation: ONNX model not found: {src}")
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")
    try:
        inputs = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
    except Exception as exc:
        raise ValueError(f"{src} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    batches = list(calibration)
    if not batches:
        raise ValueError("int8 quantisation needs calibration data: got no batches")
    for batch in batches:
        if set(batch) != inputs:
            raise ValueError(f"calibration batch has inputs {sorted(batch)}, the model takes {sorted(inputs)}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="hcq_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # onnxruntime's symbolic shape inference fails on these exports (an Expand whose target shape it cannot
        # follow: TypeError in _infer_Expand); ONNX's own shape inference and the graph optimisation still run.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(str(src)), onnx.load(str(prepared)), tuple(keep_float), tuple(op_types),
                               require_all) if keep_float else []
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), _Reader(batches), nodes_to_exclude=excluded,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=per_channel,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate, extra_options={"CalibStridedMinMax": _stride(len(batches))})
        proto = onnx.load(str(Path(tmp) / "int8.onnx"))
    n_q, n_dq = count_qdq(proto)
    if n_q == 0 or n_dq == 0:
        raise RuntimeError(f"int8 quantisation of {src} inserted no QuantizeLinear/DequantizeLinear nodes "
                           f"(no {'/'.join(op_types)} ops?)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise RuntimeError(f"int8 quantisation of {src} produced an invalid model: {exc}") from exc
    props = {p.key: p.value for p in proto.metadata_props}   # quantize_static keeps the float model's
    metadata = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
    metadata.update({
        "target": INT8_TARGET, "precision": "int8",
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "quantization": {
            "tool": "onnxruntime.quantization.quantize_static", "onnxruntime_version": onnxruntime.__version__,
            "format": "QDQ", "op_types": list(op_types),
            "weights": f"int8 symmetric per {'channel' if per_channel else 'tensor'}",
            "activations": "uint8 asymmetric per tensor", "method": method, "batches": len(batches),
            "keep_float": list(keep_float), "float_nodes": len(excluded),
            "quantize_nodes": n_q, "dequantize_nodes": n_dq, **(calibration_info or {})},
    })
    onnx.helper.set_model_props(proto, {**props, METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    atomic_write(dst, proto.SerializeToString())
    return metadata


def _stride(n: int) -> int:
    """Largest divisor of n up to STRIDE (quantize_static wants the batch count divisible by the stride)."""
    return max(d for d in range(1, min(n, STRIDE) + 1) if n % d == 0)


def int8_file_name(name: str) -> str:
    return f"{name}{INT8_SUFFIX}"


def export_int8(checkpoint: str | Path, out_dir: str | Path = "engines", input_size: tuple[int, int] | None = None,
                name: str | None = None, opset: int = 18, calib: int | None = None, method: str = DEFAULT_METHOD,
                seed_start: int = CALIB_SEED_START, keep_float: tuple[str, ...] | None = None) -> ExportResult:
    """Checkpoint -> ``<out_dir>/<name>.int8.onnx`` + sidecar ``<name>.int8.json``: the fp32 onnxruntime export
    (``export_model``, same size/name rules) quantised by ``quantize_onnx``. calib: calibration samples (detector
    frames / PersonNet crops; default DEFAULT_CALIB). keep_float: module paths left float32 (default
    DEFAULT_KEEP_FLOAT of the model kind; () quantises every Conv/MatMul/Gemm). The metadata is the fp32 export's
    plus target "onnxruntime-int8", precision "int8" and the quantisation settings (method, seeds, count)."""
    checkpoint = Path(checkpoint)
    if calib is not None and int(calib) < 1:
        raise ValueError(f"--calib must be >= 1, got {calib}")
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")
    name = name or checkpoint.stem
    onnx_path = Path(out_dir) / int8_file_name(name)
    with tempfile.TemporaryDirectory(prefix="hcq_int8_export_") as tmp:
        fp32 = export_model(checkpoint, "onnxruntime", tmp, input_size, name, opset)
        kind, size = fp32.metadata["kind"], tuple(fp32.metadata["input_size"])
        count = int(calib) if calib is not None else DEFAULT_CALIB[kind]
        data = calibration_batches(kind, size, count, seed_start)
        info = {"calibration_count": data.samples, "calibration_unit": "frames" if kind == "hcq" else "crops",
                "calibration_seeds": list(data.seeds),
                "calibration_data": "SynthHumans generate_image(seed), prepared as the Perceptor does "
                                    "(hcq_ros.runtime.quantize)"}
        keep = tuple(DEFAULT_KEEP_FLOAT[kind] if keep_float is None else keep_float)
        metadata = quantize_onnx(fp32.onnx_path, onnx_path, data.batches, method, calibration_info=info,
                                 keep_float=keep, require_all=keep_float is not None)
    sidecar = {**metadata, "onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path)}
    meta_path = sidecar_path(onnx_path)
    atomic_write(meta_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    log.info("int8 export of %s (%s, %d calibration %s, %s) -> %s", checkpoint, kind, data.samples,
             info["calibration_unit"], method, onnx_path)
    return ExportResult(onnx_path, meta_path, sidecar)


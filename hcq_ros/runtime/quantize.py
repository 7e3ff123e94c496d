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
"""
from __future__ import annotations

import json
import logging
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


def count_qdq(proto: onnx.ModelProto) -> tuple[int, int]:
    """(QuantizeLinear nodes, DequantizeLinear nodes) of a graph."""
    ops = [n.op_type for n in proto.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


# ------------------------------------------------------------------------------------------- quantisation
def quantize_onnx(src: str | Path, dst: str | Path, calibration: Iterable[dict[str, np.ndarray]],
                  method: str = DEFAULT_METHOD, op_types: tuple[str, ...] = OP_TYPES, per_channel: bool = True,
                  calibration_info: dict | None = None) -> dict:
    """Float ONNX ``src`` -> QDQ int8 ONNX ``dst`` (module docstring), calibrated on ``calibration``: dicts
    {input name: float32 array} in the model's input shapes.

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
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), _Reader(batches),
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
                seed_start: int = CALIB_SEED_START) -> ExportResult:
    """Checkpoint -> ``<out_dir>/<name>.int8.onnx`` + sidecar ``<name>.int8.json``: the fp32 onnxruntime export
    (``export_model``, same size/name rules) quantised by ``quantize_onnx``. calib: calibration samples (detector
    frames / PersonNet crops; default DEFAULT_CALIB). The metadata is the fp32 export's plus target
    "onnxruntime-int8", precision "int8" and the quantisation settings (method, seeds, count)."""
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
        metadata = quantize_onnx(fp32.onnx_path, onnx_path, data.batches, method, calibration_info=info)
    sidecar = {**metadata, "onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path)}
    meta_path = sidecar_path(onnx_path)
    atomic_write(meta_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    log.info("int8 export of %s (%s, %d calibration %s, %s) -> %s", checkpoint, kind, data.samples,
             info["calibration_unit"], method, onnx_path)
    return ExportResult(onnx_path, meta_path, sidecar)


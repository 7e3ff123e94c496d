"""TensorRT engine building from ``*.trt.onnx`` exports, for TensorRT 8.6 and 10.x (imported lazily).

API differences handled here (TensorRT 8.6 -> 10.x):
- ``create_network``: 8.x needs the EXPLICIT_BATCH flag; 10.x networks are always explicit batch and the flag is
  deprecated (ignored), so it is only passed for major < 10.
- ``build_serialized_network`` (8.0+) is the only build call: ``build_engine`` was removed in 10.0.
- workspace through ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (8.4+); ``max_workspace_size``
  was removed in 10.0.
- plugin lookup: ``IPluginRegistry.all_creators`` (10.x, V2 and V3 creators) else ``plugin_creator_list`` (8.x;
  deprecated in 10.0). ``init_libnvinfer_plugins(logger, "")`` registers the built-in plugins (incl.
  ``MultiscaleDeformableAttnPlugin_TRT`` version "1") in both.
- INT8 implicit quantisation (``BuilderFlag.INT8`` + ``IInt8EntropyCalibrator2``) exists in 8.6 and 10.x
  (deprecated since 10.1, removed in 11): a build without the flag says so instead of failing obscurely.
  With a dynamic-shape network the calibration runs on ``set_calibration_profile`` (8.x and 10.x).

Calibration data come from SynthHumans (``calibration_batches``): letterboxed frames for the detector, person
crops for the person net, normalised exactly as at run time. Those helpers need numpy/cv2 only.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import onnx

from hcq_ros.runtime.backend import model_stem
from hcq_ros.runtime.engine_cache import PRECISIONS, CacheResult, EngineCache, EngineKey, atomic_write, \
    cuda_device_info
from hcq_ros.runtime.export import read_export_metadata, sha256_file

log = logging.getLogger(__name__)

PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_VERSION = "1"
DEFAULT_BATCH_PROFILE = (1, 8, 32)     # person net crops per call: min, opt, max
DEFAULT_WORKSPACE_MIB = 1024
_LOGGER = None                          # one trt.Logger per process (TensorRT expects a single logger)


def import_tensorrt():
    """The tensorrt module; ImportError starting "TensorRT not importable" with the cause otherwise."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
        raise ImportError(f"TensorRT not importable: {type(exc).__name__}: {exc}") from exc
    return trt


def tensorrt_logger(trt, verbose: bool | None = None):
    """The process's trt.Logger (created once, then the built-in plugins registered with it); ``verbose``
    True/False switches its severity, None leaves it."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(_LOGGER, "")   # built-in plugins, default namespace
    elif verbose is not None:
        try:
            _LOGGER.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
        except AttributeError:   # a logger without the writable attribute keeps its first severity
            pass
    return _LOGGER


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def registered_plugins(trt) -> list[tuple[str, str, str]]:
    """(name, version, namespace) of every creator in the plugin registry (after init_libnvinfer_plugins)."""
    tensorrt_logger(trt)
    registry = trt.get_plugin_registry()
    creators = getattr(registry, "all_creators", None)        # 10.x
    if creators is None:
        creators = registry.plugin_creator_list                # 8.x
    return [(str(getattr(c, "name", "")), str(getattr(c, "plugin_version", "")),
             str(getattr(c, "plugin_namespace", ""))) for c in creators]


def deform_attn_plugin_registered(trt) -> bool:
    return any(n == PLUGIN_NAME and v == PLUGIN_VERSION for n, v, _ in registered_plugins(trt))


# ------------------------------------------------------------------------------------------- profiles
def onnx_input_shapes(onnx_path: str | Path) -> dict[str, list[int | None]]:
    """Graph inputs of an ONNX file: {name: dims, None for a symbolic dim} (initialisers excluded)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if i.name not in initialisers}


def count_plugin_nodes(onnx_path: str | Path) -> int:
    """Number of MultiscaleDeformableAttnPlugin_TRT nodes in an ONNX file (main graph and local functions)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    return sum(1 for node in nodes if node.op_type == PLUGIN_NAME)


def optimization_profile(input_shapes: dict[str, Sequence[int | None]],
                         batch_profile: Sequence[int] = DEFAULT_BATCH_PROFILE) -> tuple:
    """((name, min, opt, max), ...) for inputs with a dynamic batch axis; () when every input is static.
    Only axis 0 may be dynamic (exports fix H, W); ValueError otherwise or for a bad batch_profile."""
    lo, opt, hi = (int(v) for v in batch_profile)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {tuple(batch_profile)}")
    profile = []
    for name, dims in input_shapes.items():
        if any(d is None for d in dims[1:]):
            raise ValueError(f"input {name!r} {dims}: only the batch axis may be dynamic for TensorRT")
        if dims and dims[0] is None:
            rest = tuple(int(d) for d in dims[1:])
            profile.append((name, (lo, *rest), (opt, *rest), (hi, *rest)))
    return tuple(profile)


# ------------------------------------------------------------------------------------------- calibration
def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise FileNotFoundError(f"no calibration images (*.jpg, *.png, *.bmp) under {folder}")
    return files


def calibration_batches(kind: str, input_size: tuple[int, int], batch_size: int, count: int,
                        images_dir: str | Path | None = None, seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` normalised float32 samples [batch_size, 3, H, W] in batches, (W, H) = input_size.

    hcq: whole frames letterboxed to the input size. person: person boxes cut from the frames (SynthHumans
    annotations; for an image folder the centre column of the frame, person-shaped) resized to the crop size.
    Frames come from ``images_dir`` if given, else are generated with SynthHumans (deterministic in seed)."""
    from hcq_ros.data.synth import SceneConfig, generate_image
    from hcq_ros.data.torch_dataset import image_to_tensor
    from hcq_ros.data.transforms import letterbox

    if kind not in ("hcq", "person"):
        raise ValueError(f"unknown model kind {kind!r}")
    w, h = input_size
    files = _image_files(Path(images_dir)) if images_dir is not None else None
    scene = SceneConfig(width=max(w, 64) if kind == "hcq" else 256, height=max(h, 64) if kind == "hcq" else 256,
                        min_people=1, max_people=6)
    samples, batch, frame = 0, [], 0
    while samples < count:
        if files is not None:
            bgr = cv2.imread(str(files[frame % len(files)]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"calibration image {files[frame % len(files)]} cannot be read")
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            ih, iw = image.shape[:2]
            boxes = [np.array([iw * 0.3, 0, iw * 0.7, ih], np.float32)]
        else:
            sample = generate_image(np.random.default_rng([seed, frame]), scene, image_id=frame)
            image, boxes = sample.image, [p.box for p in sample.persons if not p.iscrowd]
        frame += 1
        if kind == "hcq":
            pieces = [letterbox(image, (w, h))[0]]
        else:
            pieces = []
            for x0, y0, x1, y1 in (np.round(b).astype(int) for b in boxes):
                crop = image[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
                if crop.shape[0] >= 4 and crop.shape[1] >= 4:
                    pieces.append(cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR))
        for piece in pieces:
            batch.append(image_to_tensor(piece).numpy())
            samples += 1
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
            if samples >= count:
                break
    if batch:   # TensorRT calibrates on full batches only: pad the last one by repeating samples
        real = len(batch)
        batch += [batch[i % real] for i in range(batch_size - real)]
        yield np.stack(batch)


def make_entropy_calibrator(trt, batches: Iterator[np.ndarray], batch_size: int, cache_path: Path, cuda):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through ``cuda`` (a CudaBuffers) and reusing / writing the
    calibration cache at ``cache_path``."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)   # pybind11 needs the explicit base initialiser
            self.batches, self.current = batches, None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if len(names) != 1:   # the exports have one image input; one buffer cannot feed several
                raise ValueError(f"INT8 calibration feeds one input, the network has {list(names)}")
            try:
                array = next(self.batches)
            except StopIteration:
                return None                               # no more data: calibration ends
            self.current = cuda.upload(np.ascontiguousarray(array, dtype=np.float32))
            cuda.synchronize()
            return [cuda.pointer(self.current)]

        def read_calibration_cache(self):
            if not cache_path.is_file():
                return None
            log.info("INT8: reusing calibration cache %s (delete it to recalibrate)", cache_path)
            return cache_path.read_bytes()

        def write_calibration_cache(self, cache):
            atomic_write(cache_path, bytes(cache))
            log.info("INT8 calibration cache written to %s", cache_path)

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------------- building
def build_serialized_engine(onnx_path: str | Path, precision: str = "fp16", profile: tuple = (),
                            workspace_mib: int = DEFAULT_WORKSPACE_MIB, calibrator=None,
                            verbose: bool = False) -> bytes:
    """Parse a ``*.trt.onnx`` and build a serialised engine (bytes). RuntimeError with the parser's errors or
    the reason the build failed."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = tensorrt_logger(trt, verbose)
    if count_plugin_nodes(onnx_path) and not deform_attn_plugin_registered(trt):
        raise RuntimeError(f"TensorRT {trt.__version__}: {PLUGIN_NAME} v{PLUGIN_VERSION} is not in the plugin "
                           "registry after init_libnvinfer_plugins (libnvinfer_plugin missing?)")
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in {"fp16": ("FP16",), "int8": ("INT8", "FP16"), "fp32": ()}[precision]:
        if not hasattr(trt.BuilderFlag, flag):
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (weak typing removed); "
                               "build with --precision fp32")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)   # TF32 is on by default (Ampere+): fp32 should mean fp32
    opt_profile = None
    if profile:
        opt_profile = builder.create_optimization_profile()
        for name, lo, opt, hi in profile:
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)
    if precision == "int8":
        if calibrator is None:
            raise ValueError("int8 precision needs a calibrator (calibration images)")
        config.int8_calibrator = calibrator
        if opt_profile is not None:
            config.set_calibration_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision}); see its log")
    return bytes(serialized)


def engine_key(onnx_path: str | Path, tensorrt_version: str, device, precision: str,
               batch_profile: Sequence[int] = DEFAULT_BATCH_PROFILE) -> EngineKey:
    """Cache key of the engine for an ONNX file (sha256 of its bytes, optimisation profile from its inputs)."""
    profile = optimization_profile(onnx_input_shapes(onnx_path), batch_profile)
    return EngineKey.create(sha256_file(onnx_path), tensorrt_version, device, precision, profile)


def check_trt_onnx(onnx_path: Path) -> dict:
    """FileNotFoundError / ValueError unless ``onnx_path`` is an ONNX TensorRT may be given; its metadata."""
    if not onnx_path.is_file():
        raise FileNotFoundError(f"TensorRT: ONNX model not found: {onnx_path}")
    meta = read_export_metadata(onnx_path)
    if onnx_path.name.endswith(".int8.onnx") or meta.get("precision") == "int8":
        raise ValueError(f"TensorRT: {onnx_path} is the onnxruntime int8 (QDQ) export; give TensorRT the .trt.onnx "
                         "(--precision int8 calibrates its own INT8 engine)")
    if meta.get("export_form") == "grid_sample":
        raise ValueError(f"TensorRT: {onnx_path} is the grid_sample (onnxruntime) export, which TensorRT can "
                         "silently miscompile; export with --target tensorrt and use the .trt.onnx")
    if not meta:
        log.warning("TensorRT: %s has no hcq_ros export metadata; building it as is", onnx_path)
    return meta


def build_or_load_engine(onnx_path: str | Path, runtime_deserialize, cuda, precision: str = "fp16",
                         cache: EngineCache | None = None, engine_path: str | Path | None = None,
                         batch_profile: Sequence[int] = DEFAULT_BATCH_PROFILE,
                         workspace_mib: int = DEFAULT_WORKSPACE_MIB, calib_images: str | Path | None = None,
                         calib_count: int = 256, verbose: bool = False) -> CacheResult:
    """The cached engine for ``onnx_path`` (built when missing, stale or corrupt); see ``EngineCache``."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    meta = check_trt_onnx(onnx_path)
    cache = cache or EngineCache()
    key = engine_key(onnx_path, trt.__version__, cuda_device_info(cuda.device_index), precision, batch_profile)

    def build() -> bytes:
        calibrator = None
        if precision == "int8":
            kind = meta.get("kind")
            if kind not in ("hcq", "person") or "input_size" not in meta:
                raise ValueError(f"int8 calibration needs the export metadata (kind, input_size) of {onnx_path}")
            batch = 1 if not key.profile else key.profile[0][2][0]
            # the scales depend on the data and the TensorRT version too, not only on the ONNX
            source = f"{key.onnx_sha256}|{trt.__version__}|{batch}|{calib_count}|{calib_images or 'synth'}"
            calib_cache = cache.root / (f"{model_stem(onnx_path).name}-"
                                        f"{hashlib.sha256(source.encode()).hexdigest()[:16]}.calib")
            data = calibration_batches(kind, tuple(meta["input_size"]), batch, calib_count, calib_images)
            calibrator = make_entropy_calibrator(trt, data, batch, calib_cache, cuda)
        log.info("TensorRT %s: building %s engine from %s (takes minutes)", trt.__version__, precision, onnx_path)
        return build_serialized_engine(onnx_path, precision, key.profile, workspace_mib, calibrator, verbose)

    return cache.load_or_build(key, build, runtime_deserialize, stem=model_stem(onnx_path).name,
                               engine_path=engine_path)

"""TensorRT engine cache logic with an injected fake builder / deserialiser and fake device info (no TensorRT
needed): key contents, build once then load, stale/foreign metadata -> rebuild, corrupt or refused engine ->
rebuild, atomic writes; the TensorRT-free helpers of the builder (optimisation profile from the ONNX inputs,
engine key of an ONNX file, SynthHumans calibration batches); build-engine's missing-TensorRT error; and the
builder / backend / build-engine control flow against a fake ``tensorrt`` module and numpy "device" memory
(the real module is exercised by test_tensorrt.py where TensorRT and a GPU exist)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import types

import cv2
import numpy as np
import onnx
import pytest
from pathlib import Path
from onnx import TensorProto, helper

from hcq_ros.data.torch_dataset import IMAGE_MEAN, IMAGE_STD
from hcq_ros.runtime import engine_cache
from hcq_ros.runtime.engine_cache import DeviceInfo, EngineCache, EngineKey, default_cache_dir
from hcq_ros.runtime.tensorrt_build import (calibration_batches, engine_key, onnx_input_shapes,
                                            optimization_profile)

ORIN = DeviceInfo("Orin", (8, 7))
PROFILE = (("crops", (1, 3, 64, 32), (8, 3, 64, 32), (32, 3, 64, 32)),)


def make_key(**overrides) -> EngineKey:
    fields = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", device=ORIN, precision="fp16", profile=PROFILE)
    fields.update(overrides)
    return EngineKey.create(**fields)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FakeTensorRT:
    """Builder producing b"ENGINE:<n>" and a deserialiser that refuses anything else (as TensorRT returns None)."""

    def __init__(self):
        self.builds = 0

    def build(self) -> bytes:
        self.builds += 1
        return f"ENGINE:{self.builds}".encode()

    @staticmethod
    def deserialize(data: bytes):
        return {"engine": data.decode()} if data.startswith(b"ENGINE:") else None


def test_key_covers_every_field_and_is_stable():
    base = make_key()
    assert base.digest() == make_key().digest()
    variants = [make_key(onnx_sha256="b" * 64), make_key(tensorrt_version="8.6.1"),
                make_key(device=DeviceInfo("Orin", (8, 6))), make_key(device=DeviceInfo("RTX 4090", (8, 7))),
                make_key(precision="int8"), make_key(profile=())]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests
    data = base.to_dict()
    assert data["gpu_name"] == "Orin" and data["compute_capability"] == "8.7"
    assert data["profile"] == [["crops", [1, 3, 64, 32], [8, 3, 64, 32], [32, 3, 64, 32]]]
    with pytest.raises(ValueError, match="precision must be one of"):
        make_key(precision="bf16")


def test_builds_once_then_loads(tmp_path):
    fake, cache, key = FakeTensorRT(), EngineCache(tmp_path), make_key()
    first = cache.load_or_build(key, fake.build, fake.deserialize, stem="person_small")
    assert first.built and fake.builds == 1 and first.engine == {"engine": "ENGINE:1"}
    assert first.path.parent == tmp_path and first.path.name.startswith("person_small-")
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert meta["key"] == key.to_dict() and meta["engine_bytes"] == len(b"ENGINE:1")
    mode = first.path.stat().st_mode & 0o777
    assert mode & 0o444 == 0o444 & ~_current_umask()   # readable like any other file, not mkstemp's 0600
    second = cache.load_or_build(key, fake.build, fake.deserialize, stem="person_small")
    assert not second.built and fake.builds == 1 and second.path == first.path
    other = cache.load_or_build(make_key(precision="fp32"), fake.build, fake.deserialize, stem="person_small")
    assert other.built and other.path != first.path and fake.builds == 2


def test_foreign_engine_is_rebuilt_with_a_log_line(tmp_path, caplog):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path)
    engine_file = tmp_path / "explicit.engine"
    cache.load_or_build(make_key(tensorrt_version="8.6.1"), fake.build, fake.deserialize, engine_path=engine_file)
    with caplog.at_level(logging.WARNING, logger="hcq_ros.runtime.engine_cache"):
        result = cache.load_or_build(make_key(), fake.build, fake.deserialize, engine_path=engine_file)
    assert result.built and fake.builds == 2
    assert "stale or foreign engine" in caplog.text and "tensorrt_version: '8.6.1' != '10.3.0'" in caplog.text
    assert json.loads(engine_file.with_suffix(".json").read_text())["key"]["tensorrt_version"] == "10.3.0"
    # metadata missing or unreadable: rebuilt too
    engine_file.with_suffix(".json").write_text("{not json")
    assert cache.load_or_build(make_key(), fake.build, fake.deserialize, engine_path=engine_file).built
    assert fake.builds == 3
    # in the cache layout, an engine without metadata is rebuilt as well
    cached = cache.load_or_build(make_key(), fake.build, fake.deserialize).path
    cached.with_suffix(".json").unlink()
    assert cache.load_or_build(make_key(), fake.build, fake.deserialize).built and fake.builds == 5


def test_an_explicit_engine_without_metadata_is_never_overwritten(tmp_path):
    """A user's own engine (trtexec) at an explicit path: nothing says what it is for; refuse, keep the file."""
    fake, cache = FakeTensorRT(), EngineCache(tmp_path)
    engine_file = tmp_path / "from_trtexec.engine"
    engine_file.write_bytes(b"SOMEONE ELSE'S ENGINE")
    with pytest.raises(ValueError, match="from_trtexec.json next to it.*not overwriting it"):
        cache.load_or_build(make_key(), fake.build, fake.deserialize, engine_path=engine_file)
    assert engine_file.read_bytes() == b"SOMEONE ELSE'S ENGINE" and fake.builds == 0


def test_an_unwritable_cache_fails_before_the_build(tmp_path, monkeypatch):
    fake = FakeTensorRT()
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(RuntimeError, match="cannot write TensorRT engines to .*not_a_folder.*engine_cache_dir"):
        EngineCache(blocker / "engines").load_or_build(make_key(), fake.build, fake.deserialize)
    assert fake.builds == 0   # nothing was built only to be lost


def test_an_unreadable_cached_engine_is_rebuilt(tmp_path, monkeypatch, caplog):
    fake, cache, key = FakeTensorRT(), EngineCache(tmp_path), make_key()
    path = cache.load_or_build(key, fake.build, fake.deserialize).path
    real_read = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with caplog.at_level(logging.WARNING):
        assert cache.load_or_build(key, fake.build, fake.deserialize).built
    assert "engine unreadable" in caplog.text


def test_corrupt_or_refused_engine_is_rebuilt_never_a_crash(tmp_path, caplog):
    fake, cache, key = FakeTensorRT(), EngineCache(tmp_path), make_key()
    path = cache.load_or_build(key, fake.build, fake.deserialize).path
    path.write_bytes(b"ENGINE:truncat")                              # bytes no longer match the recorded sha256
    with caplog.at_level(logging.WARNING):
        assert cache.load_or_build(key, fake.build, fake.deserialize).built
    assert "do not match the recorded sha256" in caplog.text

    def raising(data):
        raise RuntimeError("deserializeCudaEngine: version tag mismatch")

    caplog.clear()
    with caplog.at_level(logging.WARNING):   # metadata fine, but the runtime refuses the engine
        result = cache.load_or_build(key, fake.build, lambda d: raising(d) if fake.builds == 2 else
                                     fake.deserialize(d))
    assert result.built and fake.builds == 3 and "deserialisation failed" in caplog.text


def test_fresh_engine_that_does_not_deserialise_is_an_error(tmp_path):
    cache = EngineCache(tmp_path)
    with pytest.raises(RuntimeError, match="freshly built engine .* does not deserialise"):
        cache.load_or_build(make_key(), lambda: b"GARBAGE", FakeTensorRT.deserialize)
    with pytest.raises(RuntimeError, match="produced no engine"):
        cache.load_or_build(make_key(), lambda: None, FakeTensorRT.deserialize)


def test_writes_are_atomic(tmp_path, monkeypatch):
    fake, cache, key = FakeTensorRT(), EngineCache(tmp_path), make_key()
    good = cache.load_or_build(key, fake.build, fake.deserialize)
    before = good.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(engine_cache.os, "replace", crash)
    good.path.with_suffix(".json").unlink()                           # force a rebuild
    with pytest.raises(OSError, match="disk full"):
        cache.load_or_build(key, fake.build, fake.deserialize)
    assert good.path.read_bytes() == before                           # old engine untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.path.name]   # no temporary files left
    monkeypatch.undo()
    assert cache.load_or_build(key, fake.build, fake.deserialize).built


def test_cache_directory_defaults_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("HCQ_ROS_ENGINE_CACHE", str(tmp_path / "custom"))
    assert default_cache_dir() == tmp_path / "custom" and EngineCache().root == tmp_path / "custom"
    monkeypatch.delenv("HCQ_ROS_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hcq_ros" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == engine_cache.Path(os.path.expanduser("~")) / ".cache" / "hcq_ros" / "engines"


# ----------------------------------------------------------------------------------------- builder helpers
def tiny_onnx(path, batch_dim) -> None:
    x = helper.make_tensor_value_info("crops", TensorProto.FLOAT, [batch_dim, 3, 64, 32])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch_dim, 3, 64, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["crops"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def test_optimization_profile_from_onnx_inputs(tmp_path):
    tiny_onnx(tmp_path / "dyn.trt.onnx", "batch")
    tiny_onnx(tmp_path / "static.trt.onnx", 1)
    assert onnx_input_shapes(tmp_path / "dyn.trt.onnx") == {"crops": [None, 3, 64, 32]}
    assert optimization_profile(onnx_input_shapes(tmp_path / "dyn.trt.onnx"), (1, 8, 32)) == PROFILE
    assert optimization_profile(onnx_input_shapes(tmp_path / "static.trt.onnx")) == ()
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        optimization_profile({"crops": [None, 3, 64, 32]}, (8, 4, 32))
    with pytest.raises(ValueError, match="only the batch axis may be dynamic"):
        optimization_profile({"images": [1, 3, None, 64]})
    key = engine_key(tmp_path / "dyn.trt.onnx", "10.3.0", ORIN, "fp16", (1, 8, 32))
    assert key.profile == PROFILE and key.onnx_sha256 == engine_cache.sha256_bytes(
        (tmp_path / "dyn.trt.onnx").read_bytes())
    assert engine_key(tmp_path / "dyn.trt.onnx", "10.3.0", ORIN, "fp16", (1, 4, 16)).digest() != key.digest()


def test_calibration_batches_from_synthhumans_and_from_a_folder(tmp_path):
    frames = list(calibration_batches("hcq", (96, 64), batch_size=1, count=2, seed=3))
    assert len(frames) == 2 and frames[0].shape == (1, 3, 64, 96) and frames[0].dtype == np.float32
    low, high = (0 - IMAGE_MEAN) / IMAGE_STD, (1 - IMAGE_MEAN) / IMAGE_STD
    assert (frames[0] >= low.min() - 1e-5).all() and (frames[0] <= high.max() + 1e-5).all()
    assert not np.allclose(frames[0], frames[1])
    crops = list(calibration_batches("person", (32, 64), batch_size=4, count=6, seed=3))
    assert [c.shape for c in crops] == [(4, 3, 64, 32), (4, 3, 64, 32)]    # last batch padded to full size
    image = np.zeros((40, 30, 3), np.uint8)
    image[:, :, 0] = 255                                                  # pure red frame
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (batch,) = calibration_batches("hcq", (64, 64), batch_size=1, count=1, images_dir=tmp_path)
    centre = batch[0, :, 32, 32]
    np.testing.assert_allclose(centre, (np.array([1.0, 0.0, 0.0]) - IMAGE_MEAN) / IMAGE_STD, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no calibration images"):
        next(calibration_batches("hcq", (64, 64), 1, 1, images_dir=tmp_path / "empty_missing"))
    with pytest.raises(ValueError, match="unknown model kind"):
        next(calibration_batches("segformer", (64, 64), 1, 1))


def test_build_engine_without_tensorrt_says_so(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from hcq_ros.runtime import build_engine_cli

    parser = argparse.ArgumentParser()
    build_engine_cli.add_arguments(parser)
    args = parser.parse_args(["--onnx", str(tmp_path / "m.trt.onnx"), "--precision", "fp16"])
    with pytest.raises(ImportError, match="TensorRT not importable"):
        build_engine_cli.run(args)
    with pytest.raises(ValueError, match="only used with --precision int8"):
        build_engine_cli.run(parser.parse_args(["--onnx", "m.trt.onnx", "--calib-images", str(tmp_path)]))


def test_no_gpu_is_reported_with_what_was_tried():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU found .*torch"):
        engine_cache.cuda_device_info()


# ----------------------------------------------------------------------------------------- fake TensorRT
class FakeCuda:
    """numpy 'device': addresses map to arrays (what CudaBuffers does with torch.cuda / pycuda)."""

    via, device_index, stream_handle = "fake", 0, 7

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}

    @contextlib.contextmanager
    def activate(self):
        yield

    def upload(self, array):
        copy = np.array(array)
        self.memory[id(copy)] = copy
        return copy

    def empty(self, shape, dtype):
        return self.upload(np.full(shape, np.nan, dtype))

    def pointer(self, handle):
        return id(handle)

    def download(self, handle, shape, dtype):
        return handle.copy()

    def synchronize(self):
        pass

    def close(self):
        pass


def fake_tensorrt(cuda: FakeCuda, version: str = "10.3.0") -> types.ModuleType:
    """The slice of the tensorrt module the builder and backend use; the "network" is the ONNX's inputs and
    its single Relu, the serialised engine a JSON of them."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, s: None})
    trt.init_libnvinfer_plugins = lambda logger, namespace: trt.calls.append("init_plugins")
    creator = types.SimpleNamespace(name="MultiscaleDeformableAttnPlugin_TRT", plugin_version="1", plugin_namespace="")
    trt.get_plugin_registry = lambda: types.SimpleNamespace(all_creators=[creator])
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator = {"TF32"}, [], None

        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("pool", pool, size))

        set_flag = lambda self, flag: self.flags.add(flag)  # noqa: E731
        clear_flag = lambda self, flag: self.flags.discard(flag)  # noqa: E731
        add_optimization_profile = lambda self, profile: self.profiles.append(profile)  # noqa: E731
        set_calibration_profile = lambda self, profile: trt.calls.append("calibration_profile")  # noqa: E731

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return {"flags": flags}

        create_builder_config = lambda self: Config()  # noqa: E731
        create_optimization_profile = lambda self: types.SimpleNamespace(
            shapes={}, set_shape=lambda n, lo, opt, hi: None)  # noqa: E731

        def build_serialized_network(self, network, config):
            calibrator = config.int8_calibrator
            while calibrator is not None and calibrator.get_batch(["crops"]) is not None:
                trt.calls.append("calibration_batch")
            if calibrator is not None:
                calibrator.write_calibration_cache(b"CALIBRATION")
            return ("FAKE" + json.dumps({"inputs": network["inputs"], "flags": sorted(config.flags)})).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            self.network["inputs"] = {k: [-1 if d is None else d for d in v]
                                      for k, v in onnx_input_shapes(path).items()}
            return True

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes["crops"]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            src, dst = (cuda.memory[self.addresses[n]] for n in ("crops", "out"))
            dst[...] = np.maximum(src, 0)
            return stream == FakeCuda.stream_handle

    class Engine:
        def __init__(self, spec):
            self.spec, self.num_io_tensors = spec, 2

        get_tensor_name = lambda self, i: ["crops", "out"][i]  # noqa: E731
        get_tensor_mode = lambda self, n: "in" if n == "crops" else "out"  # noqa: E731
        get_tensor_dtype = lambda self, n: "FLOAT"  # noqa: E731
        get_tensor_shape = lambda self, n: self.spec["inputs"]["crops"]  # noqa: E731
        get_tensor_profile_shape = lambda self, n, i: [(1, 3, 64, 32), (8, 3, 64, 32), (32, 3, 64, 32)]  # noqa
        create_execution_context = lambda self: Context(self)  # noqa: E731

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda data: Engine(json.loads(data[4:])) if data.startswith(b"FAKE") else None)
    return trt


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    from hcq_ros.runtime import tensorrt_backend, tensorrt_build

    cuda = FakeCuda()
    trt = fake_tensorrt(cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_LOGGER", None)
    monkeypatch.setattr(tensorrt_build, "cuda_device_info", lambda index=0: ORIN)
    monkeypatch.setattr(tensorrt_backend, "CudaBuffers", lambda device=0: cuda)
    tiny_onnx(tmp_path / "crops.trt.onnx", "batch")
    (tmp_path / "crops.trt.json").write_text(json.dumps({"kind": "person", "input_size": [32, 64],
                                                         "export_form": "plain"}))
    return trt, tmp_path


def test_tensorrt_backend_flow_with_a_fake_tensorrt(fake_trt, caplog):
    from hcq_ros.runtime.backend import open_backend
    from hcq_ros.runtime.tensorrt_backend import TensorRTBackend

    trt, root = fake_trt
    backend, reason = open_backend("tensorrt", root / "crops.onnx", cache_dir=root / "cache", precision="fp32")
    assert "requested explicitly" in reason and backend.reason.startswith("built")
    assert trt.calls[0] == "init_plugins" and ("pool", "WORKSPACE", 1024 << 20) in trt.calls
    assert json.loads(next((root / "cache").glob("crops-*.engine")).read_bytes()[4:])["flags"] == []  # no TF32
    assert backend.input_shapes == {"crops": (None, 3, 64, 32)}
    assert backend.shape_bounds == {"crops": ((1, 3, 64, 32), (32, 3, 64, 32))}
    x = np.linspace(-1, 1, 2 * 3 * 64 * 32, dtype=np.float32).reshape(2, 3, 64, 32)
    np.testing.assert_array_equal(backend.infer({"crops": x})["out"], np.maximum(x, 0))
    assert backend.infer({"crops": x[:0]})["out"].shape == (0, 3, 64, 32)
    with pytest.raises(ValueError, match="outside the optimisation profile"):
        backend.infer({"crops": np.zeros((33, 3, 64, 32), np.float32)})
    backend.close()
    again = TensorRTBackend(precision="fp32", cache_dir=root / "cache").load(root / "crops.trt.onnx")
    assert again.reason.startswith("cached engine")
    fp16 = TensorRTBackend(precision="fp16", cache_dir=root / "cache").load(root / "crops.trt.onnx")
    assert fp16.reason.startswith("built")
    # a grid_sample export is refused before anything is built
    (root / "grid.trt.onnx").write_bytes((root / "crops.trt.onnx").read_bytes())
    (root / "grid.trt.json").write_text(json.dumps({"export_form": "grid_sample"}))
    with pytest.raises(ValueError, match="grid_sample .* export"):
        TensorRTBackend(cache_dir=root / "cache").load(root / "grid.trt.onnx")


def test_int8_build_calibrates_and_caches_with_a_fake_tensorrt(fake_trt):
    from hcq_ros.runtime import build_engine_cli

    trt, root = fake_trt
    parser = argparse.ArgumentParser()
    build_engine_cli.add_arguments(parser)
    args = parser.parse_args(["--onnx", str(root / "crops.trt.onnx"), "--precision", "int8", "--calib-count", "5",
                              "--batch-profile", "1", "2", "4", "--cache-dir", str(root / "cache"),
                              "--json", str(root / "build.json")])
    assert build_engine_cli.run(args) == 0
    assert trt.calls.count("calibration_batch") == 3 and "calibration_profile" in trt.calls   # 5 crops, batch 2
    assert [p.read_bytes() for p in (root / "cache").glob("crops-*.calib")] == [b"CALIBRATION"]
    summary = json.loads((root / "build.json").read_text())
    assert summary["result"].startswith("built") and summary["profile"] == {"crops": [[1, 3, 64, 32],
                                                                                      [32, 3, 64, 32]]}
    flags = json.loads(next((root / "cache").glob("crops-*.engine")).read_bytes()[4:])["flags"]
    assert flags == ["FP16", "INT8", "TF32"]

"""TensorRT engine cache (DESIGN.md §8): build once per (ONNX, TensorRT version, GPU, precision, profile).

Layout: ``<root>/<onnx stem>-<key digest[:16]>.engine`` plus ``.json`` metadata (the full key, the engine's
sha256, build time). Root: ``$HCQ_ROS_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/hcq_ros/engines``, else
``~/.cache/hcq_ros/engines``.

``EngineCache.load_or_build`` never crashes on a bad entry: missing/unreadable metadata, a key mismatch (a
stale or foreign engine, e.g. copied from another GPU or built by another TensorRT), an engine whose bytes do
not match the recorded sha256, or an engine the runtime refuses to deserialise are each logged and rebuilt.
Writes are atomic (temporary file in the same directory + ``os.replace``), engine first, metadata last, so a
crash mid-write leaves either the old entry or nothing usable (which rebuilds). The builder and deserialiser
are injected, so the logic runs (and is tested) without TensorRT.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
KEY_VERSION = 1


@dataclass(frozen=True)
class DeviceInfo:
    """A CUDA device: name and compute capability (major, minor)."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def capability_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def cuda_device_info(index: int = 0) -> DeviceInfo:
    """Name and compute capability of CUDA device ``index`` from torch.cuda, else pycuda, else nvidia-smi;
    RuntimeError saying what was tried when no GPU is found."""
    tried = []
    try:
        import torch
        if torch.cuda.is_available():
            return DeviceInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))
        tried.append(f"torch {torch.__version__}: cuda not available")
    except ImportError as exc:
        tried.append(f"torch: {exc}")
    try:
        import pycuda.driver as cuda
        cuda.init()
        device = cuda.Device(index)
        return DeviceInfo(device.name(), tuple(device.compute_capability()))
    except ImportError:
        tried.append("pycuda: not installed")
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError types without a GPU
        tried.append(f"pycuda: {type(exc).__name__}: {exc}")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        tried.append("nvidia-smi: not on PATH")
    else:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip().splitlines()
            name, cap = [s.strip() for s in out[index].split(",")]
            major, minor = cap.split(".")
            return DeviceInfo(name, (int(major), int(minor)))
        except (subprocess.SubprocessError, OSError, IndexError, ValueError) as exc:
            tried.append(f"nvidia-smi: {type(exc).__name__}: {exc}")
    raise RuntimeError("no CUDA GPU found (" + "; ".join(tried) + ")")


def default_cache_dir() -> Path:
    env = os.environ.get("HCQ_ROS_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hcq_ros" / "engines"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. profile: ((input name, min shape, opt shape, max shape), ...) for
    dynamic inputs, () for fully static networks."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple = ()
    key_version: int = KEY_VERSION

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = [[name, list(lo), list(opt), list(hi)] for name, lo, opt, hi in self.profile]
        return data

    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.to_dict(), sort_keys=True).encode())

    @classmethod
    def create(cls, onnx_sha256: str, tensorrt_version: str, device: DeviceInfo, precision: str,
               profile: Sequence[tuple[str, Sequence[int], Sequence[int], Sequence[int]]] = ()) -> "EngineKey":
        norm = tuple((str(n), tuple(int(v) for v in lo), tuple(int(v) for v in opt), tuple(int(v) for v in hi))
                     for n, lo, opt, hi in profile)
        return cls(onnx_sha256, str(tensorrt_version), device.name, device.capability_text, precision, norm)


@dataclass
class CacheResult:
    engine: Any            # what ``deserialize`` returned
    path: Path
    built: bool            # True when the engine was (re)built by this call
    reason: str            # why it was built / loaded


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_writable(folder: Path) -> None:
    """RuntimeError naming ``folder`` when an engine cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check."):
            pass
    except OSError as exc:
        raise RuntimeError(f"cannot write TensorRT engines to {folder} ({exc}); set engine_cache_dir (node "
                           "parameter) or $HCQ_ROS_ENGINE_CACHE to a writable folder") from exc


class EngineCache:
    """See the module docstring. ``root``: cache directory (default ``default_cache_dir()``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def engine_path(self, key: EngineKey, stem: str) -> Path:
        return self.root / f"{stem}-{key.digest()[:16]}.engine"

    @staticmethod
    def meta_path(engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def check_entry(self, key: EngineKey, engine_path: Path) -> tuple[bytes | None, str]:
        """(engine bytes, "") when ``engine_path`` holds a valid engine for ``key``, else (None, why not)."""
        meta_path = self.meta_path(engine_path)
        if not engine_path.is_file():
            return None, "no cached engine"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, f"metadata {meta_path.name} missing"
        except (OSError, ValueError) as exc:
            return None, f"metadata {meta_path.name} unreadable ({exc})"
        stored = meta.get("key") if isinstance(meta, dict) else None
        if stored != key.to_dict():
            wanted = key.to_dict()
            diffs = [f"{k}: {stored.get(k)!r} != {wanted[k]!r}" for k in wanted if stored.get(k) != wanted[k]] \
                if isinstance(stored, dict) else ["no key recorded"]
            return None, "stale or foreign engine (" + "; ".join(diffs) + ")"
        try:
            data = engine_path.read_bytes()
        except OSError as exc:
            return None, f"engine unreadable ({exc})"
        if meta.get("engine_sha256") != sha256_bytes(data):
            return None, "engine bytes do not match the recorded sha256 (truncated or modified)"
        return data, ""

    def load_or_build(self, key: EngineKey, build: Callable[[], bytes], deserialize: Callable[[bytes], Any],
                      stem: str = "model", engine_path: str | Path | None = None) -> CacheResult:
        """Load the cached engine for ``key`` or build, store and load a new one.

        build() -> serialised engine bytes. deserialize(bytes) -> engine object; returning None or raising means
        the runtime refused it (-> rebuild). engine_path: an explicit file instead of the cache layout.
        A freshly built engine that does not deserialise -> RuntimeError.
        """
        path = Path(engine_path) if engine_path is not None else self.engine_path(key, stem)
        data, why = self.check_entry(key, path)
        if data is not None:
            try:
                engine = deserialize(data)
            except Exception as exc:
                engine, why = None, f"deserialisation failed ({type(exc).__name__}: {exc})"
            else:
                why = "deserialisation returned nothing"
            if engine is not None:
                log.info("engine cache: loaded %s", path)
                return CacheResult(engine, path, False, f"cached engine {path}")
        if engine_path is not None and path.is_file() and not self.meta_path(path).is_file():
            # an engine the user made (trtexec, another tool): nothing says what it was built for
            raise ValueError(f"engine file {path} has no {self.meta_path(path).name} next to it, so it is not an "
                             "hcq_ros engine and was not checked against this ONNX / TensorRT / GPU; not "
                             "overwriting it: remove it, or leave the engine path unset to use the engine cache")
        _check_writable(path.parent)   # before a build that takes minutes, not after
        if why != "no cached engine":
            log.warning("engine cache: rebuilding %s: %s", path, why)
        else:
            log.info("engine cache: building %s (%s precision on %s)", path, key.precision, key.gpu_name)
        data = build()
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise RuntimeError(f"engine build for {path} produced no engine ({type(data).__name__})")
        data = bytes(data)
        atomic_write(path, data)
        meta = {"key": key.to_dict(), "engine_sha256": sha256_bytes(data), "engine_bytes": len(data),
                "built_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        atomic_write(self.meta_path(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        try:
            engine = deserialize(data)
        except Exception as exc:
            raise RuntimeError(f"freshly built engine {path} does not deserialise "
                               f"({type(exc).__name__}: {exc})") from exc
        if engine is None:
            raise RuntimeError(f"freshly built engine {path} does not deserialise")
        return CacheResult(engine, path, True, f"built ({why})")

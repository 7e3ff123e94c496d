"""Per-stage latency, FPS and memory of the perception pipeline (``hcq-ros bench``; DESIGN.md §8, §11).

One *case* = backend x threads x detector input size x people. Its frames are SynthHumans images with exactly
N annotated (visible) people, cycled through the full path the node runs: ``Perceptor.process`` (preprocess,
detector, postprocess, crops, person_net, tracker, assemble), ``frame_to_messages`` with the rosbags factory
("messages": PersonArray, Detection2DArray, markers, diagnostics) and CDR serialisation of those ("serialize"),
then the annotated image (drawing, Image message and its serialisation: "annotate"; the node builds it only while
someone subscribes, so ``fps_without_annotated`` is the rate of the perception outputs alone). Per stage the
median and p90 over the timed frames (after warm-up) are reported; a stage that did not run in a frame (no person: no crops / person_net)
counts 0 ms there. Detected persons are counted as they come out: an untrained detector finds fewer or more
people than there are. ``force_people`` makes the later stages see exactly N people regardless of model
quality: score threshold 0 and max_people = N (N = 0: a threshold no score reaches), tracker thresholds 0.

The detector export has a fixed input size, so each size needs its own ONNX: the given file if it was exported
at that size, else an export of the sibling ``.pt`` checkpoint into ``cache_dir`` (reused while the checkpoint
is unchanged). Peak RSS per case: /proc/self/clear_refs ("5" resets VmHWM) where the kernel allows, else the
process peak so far (ru_maxrss); the report names which.

HCQNet against three single-task networks run back to back is in ``hcq_ros.evaluation.unified_bench``.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hcq_ros.evaluation.bench_targets import TARGETS, target_checks  # noqa: F401  (part of this module's API)

STAGES = ("preprocess", "detector", "postprocess", "crops", "person_net", "tracker", "assemble", "messages",
          "serialize", "annotate")
SCHEDULES = ("sequential", "pipelined")
FORCED_TRACKER = {"high_score": 0.0, "low_score": 0.0, "new_track_score": 0.0, "min_hits": 1}
NOBODY_THRESHOLD = 0.9999999   # > every float32 sigmoid below 1.0: forced 0-people cases keep nobody


# ------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """CPU model (/proc/cpuinfo), cores, load, library versions and the date."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "load_average": [round(v, 2) for v in os.getloadavg()], "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def machine_line(info: dict) -> str:
    load = ", ".join(f"{v:g}" for v in info["load_average"])
    return (f"{info['cpu']}, {info['usable_cores']} of {info['cores']} cores (load average {load}); "
            f"onnxruntime {info['onnxruntime']}, torch {info['torch']}, Python {info['python']}; {info['date']}")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of /proc/self/status, else resource.getrusage ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ------------------------------------------------------------------------------------------- models
def _sibling(path: Path, suffix: str) -> Path:
    from hcq_ros.runtime.backend import model_stem

    stem = model_stem(path)
    return stem.with_name(stem.name + suffix)


def _given_int8(model: Path, backend: str) -> bool:   # an existing *.int8.onnx is run as is by onnxruntime
    return backend == "onnxruntime" and model.name.endswith(".int8.onnx") and model.is_file()


def model_family(path: str | Path, role: str) -> Path:
    """``path`` if any file of its family (.pt / .onnx) exists; FileNotFoundError naming the role otherwise."""
    path = Path(path)
    if not (path.is_file() or _sibling(path, ".pt").is_file() or _sibling(path, ".onnx").is_file()):
        raise FileNotFoundError(f"{role} model not found: {path} (nor {_sibling(path, '.pt').name} / "
                                f"{_sibling(path, '.onnx').name} next to it)")
    return path


def model_description(path: str | Path) -> dict:
    """{"file", "config" (architecture dict or None), "weights": trained iteration or random/untrained}."""
    from hcq_ros.runtime.export import read_checkpoint, read_export_metadata

    path = Path(path)
    checkpoint, onnx_path = _sibling(path, ".pt"), _sibling(path, ".onnx")
    config, iteration = None, None
    if checkpoint.is_file():
        ckpt = read_checkpoint(checkpoint)
        config = ckpt.get("hcq_config") or ckpt.get("person_config")
        iteration = ckpt.get("iteration")
    elif onnx_path.is_file():
        meta = read_export_metadata(onnx_path)
        config, iteration = meta.get("config"), meta.get("source_iteration")
    weights = (f"trained, iteration {int(iteration)}" if iteration else
               "random/untrained: no training iteration recorded")
    return {"file": str(path), "config": config, "weights": weights}


def _onnx_input_size(onnx_path: Path) -> Optional[tuple[int, int]]:
    """(W, H) an export was made for: its metadata, else the graph's static input shape; None if dynamic."""
    import onnx

    from hcq_ros.runtime.export import read_export_metadata

    size = read_export_metadata(onnx_path).get("input_size")
    if size:
        return int(size[0]), int(size[1])
    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    h, w = (d.dim_value for d in dims[2:4])
    return (w, h) if w and h else None


def _cached_export(checkpoint: Path, cache_dir: Path, name: str, size: Optional[tuple[int, int]],
                   dry_run: bool = False) -> tuple[Path, str]:
    """``cache_dir/name.onnx`` exported from ``checkpoint`` (re-exported when the checkpoint changed; dry_run:
    only say that it would be)."""
    from hcq_ros.runtime.export import export_model, read_export_metadata, sha256_file

    target = cache_dir / f"{name}.onnx"
    if target.is_file() and read_export_metadata(target).get("source_sha256") == sha256_file(checkpoint):
        return target, f"cached export {target} of {checkpoint}"
    if dry_run:
        return target, f"to be exported from {checkpoint}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    export_model(checkpoint, "onnxruntime", cache_dir, input_size=size, name=name)
    at = f" at {size[0]}x{size[1]}" if size else ""
    return target, f"exported {checkpoint}{at} on the fly -> {target}"


def detector_file(model: str | Path, backend: str, size: int, cache_dir: Path,
                  dry_run: bool = False) -> tuple[Path, str]:
    """(file ``backend`` runs at ``size`` x ``size``, where it came from). torch: the ``.pt``; onnxruntime: a given
    ``.int8.onnx`` of that size, else the sibling ``.onnx`` if exported at that size, else a (cached) export of the
    ``.pt``. Nothing it cannot find or make -> FileNotFoundError; dry_run: check only, export nothing."""
    from hcq_ros.runtime.backend import resolve_model_file
    from hcq_ros.runtime.export import check_input_size

    check_input_size("hcq", (size, size))
    model = Path(model)
    if backend == "torch":
        return resolve_model_file("torch", model), "checkpoint (torch runs any size)"
    if _given_int8(model, backend):
        if _onnx_input_size(model) != (size, size):
            raise FileNotFoundError(f"no int8 detector export at {size}x{size}: {model} is quantised at (W, H) = "
                                    f"{_onnx_input_size(model)} (hcq-ros export --target onnxruntime-int8 --size W H)")
        return model, f"given int8 export {model}"
    onnx_path, checkpoint = _sibling(model, ".onnx"), _sibling(model, ".pt")
    have = _onnx_input_size(onnx_path) if onnx_path.is_file() else None
    if have == (size, size):
        return onnx_path, f"given export {onnx_path}"
    if not checkpoint.is_file():
        found = f"is exported at {have[0]}x{have[1]}" if have else ("has a dynamic size" if onnx_path.is_file()
                                                                    else "does not exist")
        raise FileNotFoundError(f"no detector export at {size}x{size}: {onnx_path} {found} and there is no "
                                f"checkpoint {checkpoint} to export one from")
    return _cached_export(checkpoint, cache_dir, f"{checkpoint.stem}_{size}x{size}", (size, size), dry_run)


def person_file(model: str | Path, backend: str, cache_dir: Path, dry_run: bool = False) -> tuple[Path, str]:
    """(PersonNet file ``backend`` runs, where from): onnxruntime runs a given ``.int8.onnx`` as is, a missing
    ``.onnx`` is exported from the ``.pt``."""
    from hcq_ros.runtime.backend import resolve_model_file

    model = Path(model)
    if backend == "torch":
        return resolve_model_file("torch", model), "checkpoint"
    if _given_int8(model, backend):
        return model, f"given int8 export {model}"
    onnx_path, checkpoint = _sibling(model, ".onnx"), _sibling(model, ".pt")
    if onnx_path.is_file():
        return onnx_path, f"given export {onnx_path}"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"PersonNet model not found: neither {onnx_path} nor {checkpoint}")
    return _cached_export(checkpoint, cache_dir, checkpoint.stem, None, dry_run)


# ------------------------------------------------------------------------------------------- frames
def frames_with_people(people: int, count: int, width: int, height: int, seed: int = 0,
                       attempts: int = 80) -> tuple[list[np.ndarray], list[int]]:
    """``count`` SynthHumans images (uint8 [H, W, 3] RGB) with ``people`` annotated people each, and those counts.

    Some placed people fall outside the view or are hidden, so scenes of N .. 1.5 N people are drawn until one
    has exactly N annotated; after ``attempts`` draws the closest one is kept (its count is reported)."""
    from hcq_ros.data.synth import SceneConfig, generate_image

    if people < 0 or count < 1:
        raise ValueError(f"people must be >= 0 and count >= 1, got people={people}, count={count}")
    cfg = SceneConfig(width=width, height=height, min_people=people, max_people=people + (people + 1) // 2)
    images, counts, draw = [], [], seed * 100_003 + people * 1_009
    for _ in range(count):
        best = None
        for _ in range(attempts):
            sample = generate_image(draw, cfg)
            draw += 1
            if best is None or abs(len(sample.persons) - people) < abs(len(best.persons) - people):
                best = sample
            if len(best.persons) == people:
                break
        images.append(best.image)
        counts.append(len(best.persons))
    return images, counts


# ------------------------------------------------------------------------------------------- timing
def _summary(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "mean": round(float(a.mean()), 3)}


def time_frames(perceptor, images: list[np.ndarray], frames: int, warmup: int, factory, bar=None,
                pipelined: bool = False) -> dict:
    """Run ``warmup + frames`` frames (cycling ``images``) through process -> messages -> serialisation.

    pipelined: ``Perceptor.detect`` runs one frame ahead on a second thread (``hcq_ros.pipeline_stages``), the
    rest (describe, messages, serialisation, annotated image) on this one, as the node does with ``pipelined``.
    Returns stages_ms {stage: {median, p90, mean} or None if it never ran}, total_ms (per-frame latency: detect
    start -> annotated image done), fps (timed frames over their wall time), period_ms (1000 / fps),
    fps_without_annotated (the same without the "annotate" stage; None when pipelined, where the stages overlap
    and the annotate time cannot be taken out of the wall time), detected {mean, min, max}."""
    from hcq_ros.pipeline_stages import run_stages
    from hcq_ros.ros.messages import MessageOptions, frame_to_messages, topic_type

    outputs = MessageOptions(image_annotated=False)
    annotated_only = MessageOptions(persons=False, detections=False, markers=False, diagnostics=False)

    typestore = factory.typestore
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    ran = {s: 0 for s in STAGES}
    totals, detected = [], []
    perceptor.reset()
    annotate_wall = 0.0
    timed_from = time.perf_counter()
    finished = timed_from

    def first(i: int):
        t0 = time.perf_counter()
        image = images[i % len(images)]
        return i, t0, image, perceptor.detect(image, 1_000_000_000 + i * 33_333_333, "camera")

    def second(staged) -> None:
        nonlocal annotate_wall, timed_from, finished
        i, t0, image, detections = staged
        frame = perceptor.describe(detections)
        if frame.dropped:
            raise RuntimeError(f"the pipeline dropped a frame: {frame.dropped}")
        t2 = time.perf_counter()
        header = factory.header(frame.stamp_ns, "camera")
        messages = frame_to_messages(frame, image, header, factory, outputs)
        t3 = time.perf_counter()
        for key, msg in messages.items():
            typestore.serialize_cdr(msg, topic_type(key))
        t4 = time.perf_counter()
        for key, msg in frame_to_messages(frame, image, header, factory, annotated_only).items():
            typestore.serialize_cdr(msg, topic_type(key))
        t5 = time.perf_counter()
        if bar is not None:
            bar.update(1)
        if i < warmup:
            timed_from = finished = t5   # the timed wall starts when the last warm-up frame is out
            return
        stage_ms = {**frame.timings_ms, "messages": (t3 - t2) * 1e3, "serialize": (t4 - t3) * 1e3,
                    "annotate": (t5 - t4) * 1e3}
        for stage in STAGES:
            ran[stage] += stage in stage_ms
            samples[stage].append(stage_ms.get(stage, 0.0))
        totals.append((t5 - t0) * 1e3)
        detected.append(len(frame.persons))
        annotate_wall += t5 - t4
        finished = t5

    for _ in run_stages(range(warmup + frames), first, second, pipelined=pipelined):
        pass
    wall = finished - timed_from
    return {"stages_ms": {s: (_summary(v) if ran[s] else None) for s, v in samples.items()},
            "total_ms": _summary(totals), "fps": round(frames / wall, 2), "period_ms": round(1e3 * wall / frames, 3),
            "fps_without_annotated": None if pipelined else round(frames / (wall - annotate_wall), 2),
            "detected": {"mean": round(float(np.mean(detected)), 2), "min": int(min(detected)),
                         "max": int(max(detected))}}


def case_options(people: int, force_people: bool, default_max: int = 20) -> dict:
    """Runtime options of one people count: forced (threshold 0 / max N) or the detector's own decisions."""
    if force_people:
        return {"score_threshold": 0.0 if people else NOBODY_THRESHOLD, "max_people": max(1, people)}
    return {"score_threshold": 0.5, "max_people": max(default_max, people)}


def run_cases(detector: str | Path, person: str | Path, backends: list[str], threads: list[int], sizes: list[int],
              people: list[int], frames: int, warmup: int, image_size: tuple[int, int] = (640, 480),
              force_people: bool = False, cache_dir: str | Path = "bench_cache", pool: int = 8, seed: int = 0,
              progress: bool = True, schedules: tuple[str, ...] = ("sequential",)) -> dict:
    """Every case of backends x threads x sizes x schedules x people -> {"results": [...], "sources": [...], ...}.
    schedules: "sequential" (one thread) and/or "pipelined" (detector one frame ahead, ``time_frames``)."""
    from tqdm import tqdm

    from hcq_ros.pipeline import Perceptor, PerceptorConfig
    from hcq_ros.ros.messages import MessageFactory

    check_settings(backends, threads, sizes, people, frames, warmup, image_size, schedules)
    detector, person = model_family(detector, "detector"), model_family(person, "PersonNet")
    cache_dir = Path(cache_dir)
    for backend in backends:   # every file found or exportable before the first (slow) export
        person_file(person, backend, cache_dir, dry_run=True)
        for size in sizes:
            detector_file(detector, backend, size, cache_dir, dry_run=True)
    factory = MessageFactory.rosbags()
    scenes = {n: frames_with_people(n, pool, image_size[0], image_size[1], seed) for n in people}
    results, sources = [], []
    bar = tqdm(total=len(backends) * len(threads) * len(sizes) * len(schedules) * len(people) * (frames + warmup),
               unit="frame",
               desc="bench", disable=not progress)
    try:
        for backend in backends:
            person_path, person_note = person_file(person, backend, cache_dir)
            sources.append(f"{backend} PersonNet: {person_note}")
            for size in sizes:
                det_path, det_note = detector_file(detector, backend, size, cache_dir)
                sources.append(f"{backend} detector {size}x{size}: {det_note}")
                for n_threads in threads:
                    config = PerceptorConfig(backend=backend, detector_model=str(det_path),
                                             person_model=str(person_path), input_size=(size, size),
                                             threads=n_threads, tracker=dict(FORCED_TRACKER) if force_people else {})
                    perceptor = Perceptor(config)
                    try:
                        for schedule, n in ((s, n) for s in schedules for n in people):
                            bar.set_postfix_str(f"{backend} t{n_threads} {size}px {schedule} {n} people")
                            perceptor.set_runtime_options(**case_options(n, force_people))
                            scoped = reset_peak_rss()
                            timing = time_frames(perceptor, scenes[n][0], frames, warmup, factory, bar,
                                                 pipelined=schedule == "pipelined")
                            results.append({
                                "backend": backend, "threads": n_threads, "size": size, "schedule": schedule,
                                "people": n,
                                "mode": "forced" if force_people else "detector",
                                "ground_truth_people": round(float(np.mean(scenes[n][1])), 2), **timing,
                                "torch_threads": torch.get_num_threads(),   # postprocess runs in torch
                                "peak_rss_mib": round(peak_rss_bytes() / 2 ** 20, 1),
                                "peak_rss_scope": "this case" if scoped else "process peak so far",
                                "frames": frames, "warmup": warmup})
                    finally:
                        perceptor.close()
    finally:
        bar.close()
    return {"results": results, "sources": sources, "detector": model_description(detector),
            "person": model_description(person)}


def check_settings(backends, threads, sizes, people, frames, warmup, image_size,
                   schedules=("sequential",)) -> None:
    """ValueError naming the first bad setting."""
    from hcq_ros.runtime.export import check_input_size

    bad_schedules = [s for s in schedules if s not in SCHEDULES]
    if not schedules or bad_schedules:
        raise ValueError(f"schedules must be some of {list(SCHEDULES)}, got {list(schedules)}")

    bad_backends = [b for b in backends if b not in ("onnxruntime", "torch")]
    if not backends or bad_backends:
        raise ValueError(f"backends must be onnxruntime and/or torch, got {backends}")
    if not threads or min(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not sizes:
        raise ValueError("sizes is empty")
    for size in sizes:
        check_input_size("hcq", (size, size))
    if not people or min(people) < 0:
        raise ValueError(f"people counts must be >= 0, got {people}")
    if frames < 1 or warmup < 0:
        raise ValueError(f"frames must be >= 1 and warmup >= 0, got frames={frames}, warmup={warmup}")
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f"image size must be (W, H) with both >= 32, got {image_size}")

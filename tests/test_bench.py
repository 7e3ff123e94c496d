"""hcq-ros bench with tiny random models at 64 px, 3 timed frames and 1 warm-up frame: the report's contents and
files, forced people counts, on-the-fly detector exports per size (and their reuse), the unified-vs-separate
comparison, and clear errors (exit code 2) for bad input."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest

from hcq_ros import bench_cli
from hcq_ros.evaluation import bench, unified_bench
from hcq_ros.evaluation.soak import TINY_HCQ, tiny_models

FAST = ["--sizes", "64", "--frames", "3", "--warmup", "1", "--image-size", "96", "96", "--pool", "2",
        "--no-progress"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("bench_models"))


@pytest.fixture(scope="module")
def forced_run(models, tmp_path_factory):
    """One forced-people torch run with 0 and 2 people, every output file requested."""
    out = tmp_path_factory.mktemp("bench_out")
    det, person = models
    args = parse(["--detector", str(det), "--person", str(person), "--backend", "torch", "--threads", "1",
                  "--people", "0", "2", "--force-people", "--cache-dir", str(out / "cache"),
                  "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"),
                  "--plot", str(out / "bench.png"), *FAST])
    assert bench_cli.run(args) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_files_and_keys(forced_run):
    out, report = forced_run
    for key in ("command", "machine", "machine_line", "mode", "mode_text", "results", "sources", "detector",
                "person", "checks", "unified_vs_separate"):
        assert key in report
    assert report["command"].startswith("hcq-ros bench ") and "--force-people" in report["command"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] and report["machine"]["onnxruntime"]
    assert "random/untrained" in report["detector"]["weights"]
    assert [(r["size"], r["people"]) for r in report["results"]] == [(64, 0), (64, 2)]
    text = (out / "bench.md").read_text()
    assert text.index("Command: `hcq-ros bench") < text.index("Machine: ") < text.index("| backend |")
    assert "forced people" in text
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_medians_and_forced_people(forced_run):
    _, report = forced_run
    empty, two = report["results"]
    for r in (empty, two):
        assert r["mode"] == "forced" and r["frames"] == 3 and r["fps"] > 0 and r["peak_rss_mib"] > 0
        assert r["detected"] == {"mean": r["people"], "min": r["people"], "max": r["people"]}
        assert r["ground_truth_people"] == r["people"]   # the frames hold exactly N annotated people
        assert 0 < r["total_ms"]["median"] <= r["total_ms"]["p90"]
        assert r["fps_without_annotated"] > r["fps"]   # the annotated image is its own stage
    for stage in bench.STAGES:
        assert two["stages_ms"][stage]["median"] > 0, stage
    # no person: crop and PersonNet stages never run, the others do
    assert empty["stages_ms"]["crops"] is None and empty["stages_ms"]["person_net"] is None
    assert empty["stages_ms"]["detector"]["median"] > 0 and empty["stages_ms"]["messages"]["median"] > 0


def test_target_checks_per_person_slope():
    def case(people, ms):
        return {"backend": "onnxruntime", "threads": 2, "size": 320, "people": people, "fps": 1000 / ms,
                "fps_without_annotated": 1200 / ms, "detected": {"mean": people}, "total_ms": {"median": ms}}
    checks = bench.target_checks([case(0, 40.0), case(5, 50.0), case(10, 60.0)])
    (slope,) = checks["per_person"]
    assert slope["ms_per_person"] == pytest.approx(2.0) and slope["fraction_of_empty_frame"] == pytest.approx(0.05)
    assert slope["within_target"]
    fps_5 = {"threads": 2, "schedule": "sequential", "fps": 20.0, "meets_min": True, "meets_goal": False,
             "fps_without_annotated": 24.0, "latency_ms": 50.0}
    assert checks["fps"] == [fps_5]   # only the 5-people case is the reference


def test_pipelined_schedule_is_reported_next_to_the_sequential_one(models, tmp_path):
    det, person = models
    args = parse(["--detector", str(det), "--person", str(person), "--backend", "torch", "--threads", "1",
                  "--people", "0", "2", "--force-people", "--schedule", "sequential", "pipelined",
                  "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "b.json"),
                  "--markdown", str(tmp_path / "b.md"), *FAST])
    assert bench_cli.run(args) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert [(r["schedule"], r["people"]) for r in report["results"]] == [
        ("sequential", 0), ("sequential", 2), ("pipelined", 0), ("pipelined", 2)]
    for r in report["results"]:
        assert r["detected"]["mean"] == r["people"] and r["fps"] > 0
        assert r["period_ms"] == pytest.approx(1000 / r["fps"], rel=0.02)
        assert (r["fps_without_annotated"] is None) == (r["schedule"] == "pipelined")
    assert {p["schedule"] for p in report["checks"]["per_person"]} == {"sequential", "pipelined"}
    assert "--schedule sequential pipelined" in report["command"]
    text = (tmp_path / "b.md").read_text()
    assert "| torch | 1 | 64 | pipe | 2 (2) |" in text and "| torch | 1 | 64 | seq | 0 (0) |" in text


def test_pipelined_per_person_cost_uses_the_frame_period():
    def case(people, latency, period):
        return {"backend": "onnxruntime", "threads": 1, "size": 320, "people": people, "schedule": "pipelined",
                "fps": 1000 / period, "period_ms": period, "fps_without_annotated": None,
                "detected": {"mean": people}, "total_ms": {"median": latency}}
    checks = bench.target_checks([case(0, 30.0, 30.0), case(5, 45.0, 31.0), case(10, 60.0, 32.0)])
    (slope,) = checks["per_person"]
    assert slope["schedule"] == "pipelined" and slope["ms_per_person"] == pytest.approx(0.2)
    assert [f["schedule"] for f in checks["fps"]] == ["pipelined"]


def test_frames_hold_the_requested_people():
    images, counts = bench.frames_with_people(3, 2, 96, 96, seed=1)
    assert counts == [3, 3] and images[0].shape == (96, 96, 3)


def test_detector_export_per_size_is_made_once_and_reused(models, tmp_path):
    det, _ = models
    cache = tmp_path / "cache"
    path, note = bench.detector_file(det, "onnxruntime", 64, cache)
    assert path == cache / "det_64x64.onnx" and path.is_file() and "on the fly" in note
    stamp = path.stat().st_mtime_ns
    again, note = bench.detector_file(det, "onnxruntime", 64, cache)
    assert again == path and note.startswith("cached export") and path.stat().st_mtime_ns == stamp
    # an export of another size without its checkpoint cannot serve 96 px: a clear error, exit code 2
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(path, lone / "det.onnx")
    shutil.copy(path.with_suffix(".json"), lone / "det.json")
    with pytest.raises(FileNotFoundError, match="exported at 64x64"):
        bench.detector_file(lone / "det.onnx", "onnxruntime", 96, cache)
    args = parse(["--detector", str(lone / "det.onnx"), "--person", str(models[1]), "--backend", "onnxruntime",
                  "--threads", "1", "--people", "1", "--cache-dir", str(cache), *FAST])
    args.sizes = [96]
    assert bench_cli.run(args) == 2


def test_unified_vs_separate_task_networks():
    from hcq_ros.models.hcq import HCQConfig

    config = HCQConfig.preset("hcqnet", "small", **TINY_HCQ).to_dict()
    nets = unified_bench.task_networks(config)
    outputs = {name: set(net.output_names) for name, net in nets.items()}
    assert {"pred_masks", "pred_keypoints"} <= outputs["unified"]
    assert "pred_masks" not in outputs["detection"] and "pred_keypoints" not in outputs["detection"]
    assert "pred_masks" in outputs["segmentation"] and "pred_keypoints" not in outputs["segmentation"]
    assert "pred_keypoints" in outputs["pose"] and "pred_masks" not in outputs["pose"]
    image = bench.frames_with_people(1, 1, 96, 96)[0][0]
    result = unified_bench.unified_vs_separate(config, "torch", 1, 64, image, frames=2, warmup=1, cache_dir="unused")
    lat = result["latency_ms"]
    assert lat["separate_sum"]["median"] >= lat["detection"]["median"] > 0
    assert result["latency_ratio"] == pytest.approx(lat["unified"]["median"] / lat["separate_sum"]["median"],
                                                    abs=1e-3)
    flops = result["flops"]
    assert flops["unified"] < flops["detection"] + flops["segmentation"] + flops["pose"]
    assert flops["detection"] < flops["segmentation"] and flops["detection"] < flops["pose"]
    assert 0 < result["cost_py"]["flops_ratio"] < 1


@pytest.mark.parametrize("change, message", [
    (["--detector", "/nonexistent/hcq.onnx"], "detector model not found: /nonexistent/hcq.onnx"),
    (["--sizes", "100"], "multiples of 32"),
    (["--frames", "0"], "frames must be >= 1"),
    (["--people", "-1"], "people counts must be >= 0"),
])
def test_bad_input_is_a_clear_error(models, tmp_path, capsys, change, message):
    det, person = models
    argv = ["--detector", str(det), "--person", str(person), "--backend", "torch", "--threads", "1",
            "--people", "1", "--cache-dir", str(tmp_path), *FAST]
    for i in range(0, len(change), 2):   # the later value of a repeated option wins in argparse
        argv += change[i:i + 2]
    assert bench_cli.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and message in err

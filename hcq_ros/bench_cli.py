"""``hcq-ros bench``: per-stage latency, FPS and memory of the pipeline per backend / threads / size / people.

    hcq-ros bench --detector engines/hcq_small.onnx --person engines/person_small.onnx --backend onnxruntime \
        --threads 2 --sizes 320 --people 0 1 5 10 20 --force-people --json out/bench.json --markdown out/bench.md

Prints a table (median / p90 ms per stage), writes JSON (every number, the machine line and the command), a
markdown table and a PNG plot on request. See hcq_ros/evaluation/bench.py for what is measured and how.
Bad input (a missing model, a size that is not a multiple of 32, ...) is an error with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", default="engines/hcq_small.onnx",
                        help="HCQNet model family (.onnx and/or .pt; other sizes are exported from the .pt)")
    parser.add_argument("--person", default="engines/person_small.onnx", help="PersonNet model family")
    parser.add_argument("--backend", nargs="+", default=["onnxruntime"], choices=["onnxruntime", "torch"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU threads per backend")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320, 384, 512],
                        help="square detector input sizes (multiples of 32)")
    parser.add_argument("--people", nargs="+", type=int, default=[0, 1, 5, 10, 20], help="people per frame")
    parser.add_argument("--schedule", nargs="+", default=["sequential"], choices=["sequential", "pipelined"],
                        help="sequential: one frame at a time on one thread; pipelined: the detector one frame "
                             "ahead on a second thread (the node's `pipelined`)")
    parser.add_argument("--frames", type=int, default=100, help="timed frames per case (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first (default 10)")
    parser.add_argument("--image-size", nargs=2, type=int, default=[640, 480], metavar=("W", "H"),
                        help="camera frame size (default 640 480)")
    parser.add_argument("--pool", type=int, default=8, help="distinct frames per people count (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force-people", action="store_true",
                        help="score threshold 0 and max_people = N so later stages see exactly N people")
    parser.add_argument("--unified-vs-separate", action="store_true",
                        help="also time HCQNet against detection + segmentation + pose networks back to back")
    parser.add_argument("--cache-dir", default=None,
                        help="where per-size exports go (default ~/.cache/hcq_ros/bench)")
    parser.add_argument("--json", type=Path, default=None, help="write every number as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def command_line(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelled out)."""
    words = ["hcq-ros", "bench", "--detector", str(args.detector), "--person", str(args.person),
             "--backend", *args.backend, "--threads", *map(str, args.threads), "--sizes", *map(str, args.sizes),
             "--people", *map(str, args.people), "--schedule", *args.schedule, "--frames", str(args.frames), "--warmup", str(args.warmup),
             "--image-size", *map(str, args.image_size), "--pool", str(args.pool), "--seed", str(args.seed)]
    words += [flag for flag, on in (("--force-people", args.force_people),
                                    ("--unified-vs-separate", args.unified_vs_separate)) if on]
    return shlex.join(words)


def default_cache_dir() -> Path:
    from hcq_ros.runtime.engine_cache import default_cache_dir as engines_dir

    return engines_dir().parent / "bench"


def mode_text(force: bool) -> str:
    if force:
        return ("forced people: score threshold 0 and max_people = N (N = 0: a threshold no score reaches), "
                "tracker thresholds 0, so crops / PersonNet / tracker / messages see exactly N people")
    return "detector decides: score threshold 0.5; 'detected' is what the model found in frames with N people"


def run(args: argparse.Namespace) -> int:
    from hcq_ros.evaluation import bench

    try:
        bench.check_settings(args.backend, args.threads, args.sizes, args.people, args.frames, args.warmup,
                             tuple(args.image_size), args.schedule)
        if args.pool < 1:
            raise ValueError(f"--pool must be >= 1, got {args.pool}")
        bench.model_family(args.detector, "detector")
        bench.model_family(args.person, "PersonNet")
        cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
        report = bench.run_cases(args.detector, args.person, args.backend, args.threads, args.sizes, args.people,
                                 args.frames, args.warmup, tuple(args.image_size), args.force_people, cache_dir,
                                 args.pool, args.seed, progress=not args.no_progress,
                                 schedules=tuple(args.schedule))
        report["unified_vs_separate"] = run_unified_vs_separate(args, report, cache_dir) \
            if args.unified_vs_separate else []
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    info = bench.machine_info()
    report.update(command=command_line(args), machine=info, machine_line=bench.machine_line(info),
                  mode="forced" if args.force_people else "detector", mode_text=mode_text(args.force_people),
                  checks=bench.target_checks(report["results"]))
    text = markdown(report)
    print(text)
    for path, content in ((args.json, json.dumps(report, indent=2) + "\n"), (args.markdown, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_unified_vs_separate(args, report: dict, cache_dir: Path) -> list[dict]:
    from hcq_ros.evaluation import bench, unified_bench

    config = report["detector"]["config"]
    if not config or "profile" not in config:
        raise ValueError(f"--unified-vs-separate needs the detector's HCQNet configuration, and "
                         f"{args.detector} has neither a .pt checkpoint nor export metadata with it")
    image = bench.frames_with_people(max(args.people), 1, args.image_size[0], args.image_size[1], args.seed)[0][0]
    out = []
    for backend in args.backend:
        for size in args.sizes:
            for threads in args.threads:
                out.append(unified_bench.unified_vs_separate(config, backend, threads, size, image, args.frames,
                                                             args.warmup, cache_dir))
    return out


# ------------------------------------------------------------------------------------------- reports
def _cell(summary) -> str:
    return "—" if summary is None else f"{summary['median']:.1f} / {summary['p90']:.1f}"


def _schedule(r: dict) -> str:
    return "pipe" if r.get("schedule") == "pipelined" else "seq"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def markdown(report: dict) -> str:
    """The report as markdown: command and machine line above the tables."""
    from hcq_ros.evaluation.bench import STAGES

    det, person = report["detector"], report["person"]
    lines = ["# Pipeline benchmark", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine_line']}", "",
             f"Models: detector `{det['file']}` - weights {det['weights']}; PersonNet `{person['file']}` - "
             f"weights {person['weights']}.", "", f"People: {report['mode_text']}.", "",
             "Model files: " + "; ".join(report["sources"]) + ".", "",
             "Per stage median / p90 in ms over the timed frames; — = the stage never ran (no person). "
             "`gt` = annotated people per frame, `detected` = persons the pipeline output (mean, min–max). "
             "FPS = timed frames / their wall time (process + messages + serialisation + annotated image); "
             "FPS w/o ann. = the same without the annotated image (`annotate`: drawing, message, serialisation), "
             "which the node only builds while someone subscribes to it. `sched`: seq = one frame at a time; "
             "pipe = the detector runs one frame ahead on a second thread (`total` is then each frame's latency, "
             "detector start to annotated image, and FPS the rate the frames come out; FPS w/o ann. is not "
             "measured, the stages overlap).", "",
             "| backend | thr | size | sched | people (gt) | detected | " + " | ".join(STAGES) +
             " | total | FPS | FPS w/o ann. | peak RSS MiB |", "|---|---:|---:|---|---:|---:|" + "---:|" * (len(STAGES) + 4)]
    for r in report["results"]:
        d = r["detected"]
        without = r.get("fps_without_annotated")
        lines.append(f"| {r['backend']} | {r['threads']} | {r['size']} | {_schedule(r)} "
                     f"| {r['people']} ({r['ground_truth_people']:g}) | {d['mean']:g} ({d['min']}–{d['max']}) | "
                     + " | ".join(_cell(r["stages_ms"][s]) for s in STAGES)
                     + f" | {_cell(r['total_ms'])} | {r['fps']:.1f} | {'—' if without is None else f'{without:.1f}'} "
                     f"| {r['peak_rss_mib']:.0f} |")
    scopes = sorted({r["peak_rss_scope"] for r in report["results"]})
    torch_threads = sorted({r["torch_threads"] for r in report["results"]})
    lines += ["", f"Peak RSS: {', '.join(scopes)}. torch intra-op threads (the postprocess runs in torch whatever "
              f"the backend): {', '.join(map(str, torch_threads))}.", "", "## Targets (reported, not enforced)", ""]
    checks, targets = report["checks"], report["checks"]["targets"]
    ref = targets["fps_case"]
    where = f"{ref['backend']}, {ref['size']} px, {ref['people']} people"
    if not checks["fps"]:
        lines.append(f"- FPS >= {targets['fps_min']:g} (goal {targets['fps_goal']:g}) at {where}: case not measured.")
    for f in checks["fps"]:
        verdict = "meets the goal" if f["meets_goal"] else ("meets the minimum" if f["meets_min"] else "MISSES")
        without = f.get("fps_without_annotated")
        lines.append(f"- FPS >= {targets['fps_min']:g} (goal {targets['fps_goal']:g}) at {where}, "
                     f"{_threads(f['threads'])}, {f['schedule']}: {f['fps']:.1f} FPS, {verdict}"
                     + (f" ({without:.1f} FPS without the annotated image)" if without is not None else "")
                     + f"; median latency {f['latency_ms']:.1f} ms.")
    if not checks["per_person"]:
        lines.append("- Each extra person: not measurable from these cases (needs a 0-people case and detected "
                     "counts that vary; --force-people provides both).")
    for p in checks["per_person"]:
        lines.append(f"- Each extra person <= {100 * targets['per_person_max_fraction']:.0f}% of the 0-person frame "
                     f"({p['backend']}, {_threads(p['threads'])}, {p['size']} px, "
                     f"{p.get('schedule', 'sequential')}): {p['ms_per_person']:.2f} ms per "
                     f"person = {100 * p['fraction_of_empty_frame']:.1f}% "
                     f"({'within' if p['within_target'] else 'OVER'} target).")
    if report.get("unified_vs_separate"):
        lines += ["", "## Unified HCQNet vs three single-task networks", "",
                  "Detection, segmentation and pose networks of the same size settings, each with its own trunk "
                  "(as `hcq_ros/evaluation/cost.py` defines them), run back to back on the same frame; "
                  f"target: unified <= {targets['unified_ratio_max']:g}x the latency of the three.", "",
                  "| backend | thr | size | unified ms | detection | segmentation | pose | three together | "
                  "latency ratio | FLOPs ratio (timed nets) | FLOPs ratio (cost.py) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for u in report["unified_vs_separate"]:
            lat = u["latency_ms"]
            lines.append(f"| {u['backend']} | {u['threads']} | {u['size']} | {_cell(lat['unified'])} | "
                         f"{_cell(lat['detection'])} | {_cell(lat['segmentation'])} | {_cell(lat['pose'])} | "
                         f"{_cell(lat['separate_sum'])} | {u['latency_ratio']:.2f} "
                         f"({'within' if u['within_target'] else 'OVER'}) | {u['flops_ratio']:.2f} | "
                         f"{u['cost_py']['flops_ratio']:.2f} ({u['cost_py']['profile']} preset) |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Two panels: median frame time vs people (one line per backend/threads/size) and FPS vs size (one line
    per backend/threads/people)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted({(r["backend"], r["threads"], r["size"], _schedule(r)) for r in results}):
        group = sorted((r for r in results if (r["backend"], r["threads"], r["size"], _schedule(r)) == key),
                       key=lambda r: r["people"])
        left.plot([r["people"] for r in group], [r["total_ms"]["median"] for r in group], marker="o",
                  label=f"{key[0]} t{key[1]} {key[2]}px {key[3]}")
    left.set(xlabel="people per frame", ylabel="median frame latency (ms)", title="latency vs people")
    for key in sorted({(r["backend"], r["threads"], r["people"], _schedule(r)) for r in results}):
        group = sorted((r for r in results if (r["backend"], r["threads"], r["people"], _schedule(r)) == key),
                       key=lambda r: r["size"])
        right.plot([r["size"] for r in group], [r["fps"] for r in group], marker="o",
                   label=f"{key[0]} t{key[1]} {key[2]} people {key[3]}")
    right.set(xlabel="detector input size (px)", ylabel="FPS", title="FPS vs size",
              xticks=sorted({r["size"] for r in results}))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"people: {report['mode']}; {report['machine_line']}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

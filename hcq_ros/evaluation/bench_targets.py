"""The product's speed targets (DESIGN.md §8, the runtime issue) checked against ``hcq-ros bench`` results.

Reported, never asserted: a benchmark says how far the machine it ran on is from each target.
"""
from __future__ import annotations

import numpy as np

TARGETS = {"fps_min": 20.0, "fps_goal": 30.0, "fps_case": {"backend": "onnxruntime", "size": 320, "people": 5},
           "per_person_max_fraction": 0.10, "unified_ratio_max": 0.4}


def target_checks(results: list[dict]) -> dict:
    """The product's targets against the measured cases (reported, never asserted): FPS at the reference case
    (``fps``: one entry per thread count and schedule measured there; the issue fixes backend, size and people, not
    threads) and, per backend/threads/size/schedule with a 0-people case, the cost of one more person
    (least-squares slope of the frame time over the detected persons) as a fraction of the 0-people frame time.
    Frame time: the median per-frame latency when sequential (one frame at a time, latency = frame time); the frame
    period (wall / frames) when pipelined."""
    ref = TARGETS["fps_case"]
    fps = [{"threads": r["threads"], "schedule": r.get("schedule", "sequential"), "fps": r["fps"],
            "meets_min": r["fps"] >= TARGETS["fps_min"], "meets_goal": r["fps"] >= TARGETS["fps_goal"],
            "fps_without_annotated": r.get("fps_without_annotated"), "latency_ms": r["total_ms"]["median"]}
           for r in results if all(r[k] == v for k, v in ref.items())]

    def frame_ms(r: dict) -> float:
        return r["period_ms"] if r.get("schedule", "sequential") == "pipelined" else r["total_ms"]["median"]

    per_person = []
    for key in sorted({(r["backend"], r["threads"], r["size"], r.get("schedule", "sequential")) for r in results}):
        group = [r for r in results if (r["backend"], r["threads"], r["size"], r.get("schedule", "sequential")) == key]
        empty = next((r for r in group if r["people"] == 0), None)
        xs = [r["detected"]["mean"] for r in group]
        if empty is None or len(group) < 2 or max(xs) - min(xs) < 1e-6:
            continue
        slope = float(np.polyfit(xs, [frame_ms(r) for r in group], 1)[0])
        fraction = slope / frame_ms(empty)
        per_person.append({"backend": key[0], "threads": key[1], "size": key[2], "schedule": key[3],
                           "ms_per_person": round(slope, 3), "fraction_of_empty_frame": round(fraction, 4),
                           "within_target": fraction <= TARGETS["per_person_max_fraction"]})
    return {"targets": TARGETS, "fps": fps, "per_person": per_person}

"""Training curves as PNG from a run folder's ``log.csv`` (loss terms) and ``eval.jsonl`` (metrics)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def read_log(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """log.jsonl (else log.csv) -> {column: (iterations, values)}; a term missing from some rows (multi-source
    training) keeps its own iterations."""
    run_dir = Path(run_dir)
    rows: list[dict] = []
    if (run_dir / "log.jsonl").exists():
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    elif (run_dir / "log.csv").exists():
        with open(run_dir / "log.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("iteration") != "iteration"]
    cols: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for k, v in row.items():
            if k is None or k == "iteration" or v in (None, ""):
                continue
            its, vals = cols.setdefault(k, ([], []))
            its.append(float(row["iteration"]))
            vals.append(float(v))
    return {k: (np.asarray(i), np.asarray(v)) for k, (i, v) in cols.items()}


def read_evals(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "eval.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: np.ndarray, window: int = 20) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None,
                         metrics: tuple[str, ...] = ("bbox_AP", "segm_AP", "keypoints_AP")) -> Path | None:
    """Two panels: smoothed loss terms vs iteration; eval metrics vs iteration. Returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, evals = read_log(run_dir), read_evals(run_dir)
    if not log:
        return None
    out = Path(out) if out else Path(run_dir) / "curve.png"
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in log if k.startswith("loss")):
        it, values = log[key]
        y = smooth(values)
        ax_loss.plot(it[len(it) - len(y):], y, label=key)
    ax_loss.set_yscale("symlog")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training losses (smoothed)")
    ax_loss.legend(fontsize=7)
    for key in metrics:
        pts = [(e["iteration"], e[key]) for e in evals if key in e]
        if pts:
            ax_eval.plot(*zip(*pts), marker="o", label=key)
    ax_eval.set_xlabel("iteration")
    ax_eval.set_title("evaluation")
    ax_eval.set_ylim(0, 1)
    if ax_eval.get_legend_handles_labels()[0]:
        ax_eval.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""The ablation report: a markdown table of each variant's final metrics, one curve PNG per metric, the command,
budget and machine, and the comparison with the paper computed from the numbers (see ``hcq_ros.train.ablation``)."""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Optional

from hcq_ros.train.ablation import (AblationSuite, eval_every_for, logged_speed, read_result,
                                    variant_config)
from hcq_ros.train.curves import read_log


def machine_line() -> str:
    """CPU model, cores, accelerator, torch and Python versions, OS."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts += [f"torch {torch.__version__}", f"Python {platform.python_version()}",
              f"{platform.system()} {platform.release()}"]
    return ", ".join(parts)


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _evals(run_dir: Path) -> list[dict]:
    from hcq_ros.train.curves import read_evals
    return read_evals(run_dir)


def metric_at(run_dir: Path, metric: str, limit: float) -> Optional[tuple[int, float]]:
    """(iteration, value) of the last evaluation at or before iteration ``limit`` that has ``metric``."""
    found = None
    for row in _evals(run_dir):
        if row["iteration"] <= limit + 1e-9 and isinstance(row.get(metric), (int, float)):
            found = (int(row["iteration"]), float(row[metric]))
    return found


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def plot_curves(results: list[dict], out: Path, metrics: dict[str, str], run_root: Path) -> dict[str, Path]:
    """One PNG per metric (value x100 vs iteration, a line per variant) + ``loss.png`` (smoothed total loss)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hcq_ros.train.curves import smooth

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for metric, label in {**metrics, "loss": "training loss (smoothed)"}.items():
        fig, ax = plt.subplots(figsize=(6.5, 4))
        drawn = False
        for r in results:
            run_dir = run_root / r["name"]
            if metric == "loss":
                its, values = read_log(run_dir).get("loss", ([], []))
                y = smooth(values, 10) if len(values) else values
                pts = list(zip(its[len(its) - len(y):], y))
            else:
                pts = [(e["iteration"], 100 * e[metric]) for e in _evals(run_dir)
                       if isinstance(e.get(metric), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if metric != "loss" else None, label=r.get("label", r["name"]))
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("iteration")
        ax.set_ylabel(label if metric == "loss" else f"{label} (x100)")
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written[metric] = path
    return written


def comparison_lines(suite: AblationSuite, results: list[dict], run_root: Path, tie: float = 0.5) -> list[str]:
    """The paper comparison, computed: per Comparison our values and difference (points = x100) with the paper's,
    the verdict (same direction / opposite / tie within ``tie`` points / not measured), then a summary count,
    the winner per metric and a noise yardstick (change between the final and the previous periodic evaluation)."""
    by_name = {r["name"]: r for r in results}
    labels = {v.name: v.label for v in suite.variants}
    lines, verdicts, not_here = [], [], []
    for c in suite.comparisons:
        if c.better not in by_name or c.worse not in by_name:
            if c.claim and f"{labels.get(c.better, c.better)} vs {labels.get(c.worse, c.worse)}" not in not_here:
                not_here.append(f"{labels.get(c.better, c.better)} vs {labels.get(c.worse, c.worse)}")
            continue
        values = []
        for name, at in ((c.better, c.better_at), (c.worse, c.worse_at)):
            r = by_name[name]
            if r.get("status") != "done":
                values.append(None)
                continue
            limit = at * r["iterations"]
            values.append(metric_at(run_root / name, c.metric, limit) if at < 1.0 else
                          ((r["iterations"], r["metrics"][c.metric])
                           if isinstance(r.get("metrics", {}).get(c.metric), (int, float)) else None))
        head = (f"{labels.get(c.better, c.better)}{_at(c.better_at)} vs {labels.get(c.worse, c.worse)}"
                f"{_at(c.worse_at)}, {suite.metrics.get(c.metric, c.metric)}")
        paper = (f"; paper {c.paper[0]:.1f} vs {c.paper[1]:.1f} ({c.paper[0] - c.paper[1]:+.1f})" if c.paper else "")
        if None in values:
            missing = [n for n, v in zip((c.better, c.worse), values) if v is None]
            partial = c.better_at < 1 or c.worse_at < 1
            lines.append(f"- {head}: not measured ({', '.join(missing)}: no result"
                         f"{' at that point of the budget (add evaluations with --evals)' if partial else ''})"
                         f"{paper}.")
            verdicts.append("missing" if c.claim else None)
            continue
        (ib, b), (iw, w) = values
        delta = 100 * (b - w)
        gain = -delta if c.metric in suite.lower_is_better else delta   # > 0: c.better is ahead
        where = f" (at iterations {ib} and {iw})" if c.better_at < 1 or c.worse_at < 1 else ""
        if abs(delta) < tie:
            verdict = f"a tie (|difference| < {tie:g} point)"
            kind = "tie"
        elif gain > 0:
            verdict = "same direction as the paper" if c.claim else f"{labels.get(c.better, c.better)} ahead"
            kind = "agree"
        else:
            verdict = "OPPOSITE to the paper" if c.claim else f"{labels.get(c.worse, c.worse)} ahead"
            kind = "opposite"
        claim = f" Paper: {c.claim}" if c.claim else ""
        lines.append(f"- {head}: ours {100 * b:.1f} vs {100 * w:.1f} ({delta:+.1f}){where}{paper} -> {verdict}."
                     f"{claim}")
        verdicts.append(kind if c.claim else None)
    claims = [v for v in verdicts if v]
    summary = []
    if suite.notes:
        summary += suite.notes({r["name"]: r for r in results if r.get("status") == "done"})
    if claims:
        summary.append(f"Comparisons with a paper finding: {len(claims)}; same direction as the paper: "
                       f"{claims.count('agree')}, opposite: {claims.count('opposite')}, ties within {tie:g} point: "
                       f"{claims.count('tie')}, not measured: {claims.count('missing')}.")
    if not_here:
        summary.append("Paper findings not tested in this run (variants not selected): " + "; ".join(not_here) + ".")
    done = [r for r in results if r.get("status") == "done"]
    for metric, label in suite.metrics.items():
        lower = metric in suite.lower_is_better
        ranked = sorted(((r["metrics"][metric], r["name"]) for r in done
                         if isinstance(r.get("metrics", {}).get(metric), (int, float))), reverse=not lower)
        if len(ranked) >= 2:
            (v1, n1), (v2, n2) = ranked[:2]
            summary.append(f"Best {label}: {labels.get(n1, n1)} {100 * v1:.1f}, {100 * (v1 - v2):+.1f} "
                           f"{'under' if lower else 'over'} {labels.get(n2, n2)}"
                           + (f" (a tie within {tie:g} point)." if abs(100 * (v1 - v2)) < tie else "."))
    wobble = []
    for r in done:
        rows = [e for e in _evals(run_root / r["name"]) if e["iteration"] <= r["iterations"]]
        if not rows:
            continue
        # the final evaluation against the previous periodic one; the trainer may also have evaluated a step or
        # two before the end (999 and 1000 of 1000 at eval_every 333), and that pair would hide the noise
        step = ((r.get("config") or {}).get("train") or {}).get("eval_every") or 1
        earlier = [e for e in rows if e["iteration"] <= rows[-1]["iteration"] - step / 2]
        if not earlier:
            continue
        for metric in suite.metrics:
            pair = [e[metric] for e in (earlier[-1], rows[-1]) if isinstance(e.get(metric), (int, float))]
            if len(pair) == 2:
                wobble.append(abs(100 * (pair[1] - pair[0])))
    if wobble:
        summary.append(f"Noise yardstick: between the final and the previous periodic evaluation of a run the "
                       f"metrics moved by a median of {statistics.median(wobble):.1f} points (max "
                       f"{max(wobble):.1f}); differences of that size are not findings. It is a lower bound: every "
                       f"variant ran with one seed, and the spread between seeds is not measured.")
    return lines + ([""] + [f"- {line}" for line in summary] if summary else [])


def _at(fraction: float) -> str:
    return "" if fraction >= 1.0 else f" at {fraction:.2g} of the budget"


def write_report(suite: AblationSuite, out: Path, doc: Path, iterations: int, evals: int, command: str,
                 variants: Optional[list[str]] = None, overrides: list[str] = (), tie: float = 0.5) -> Path:
    """Collect the run folders under ``out`` of the selected variants into the markdown report ``doc`` (+ curve
    PNGs in ``<doc stem>_curves/`` beside it). Variants without a result are listed as not run."""
    from hcq_ros.train.trainer import TrainSchedule, git_commit

    out, doc = Path(out), Path(doc)
    chosen = suite.select(variants)
    configs = {v.name: variant_config(suite, v, iterations, evals, list(overrides)) for v in chosen}
    results = []
    for v in chosen:
        r = read_result(out / v.name)
        if r is None or r.get("config") != configs[v.name]:
            r = {"name": v.name, "status": "not run" if r is None else "other budget/config"}
        r["label"] = v.label
        results.append(r)
    doc.parent.mkdir(parents=True, exist_ok=True)
    pngs = plot_curves(results, doc.parent / f"{doc.stem}_curves", suite.metrics, out)
    first = configs[chosen[0].name]
    budget = ", ".join(f"{label} {_get(first, key)}" for label, key in suite.budget_keys.items()
                       if _get(first, key) is not None)
    loads = [r["load_at_start"] for r in results if isinstance(r.get("load_at_start"), (int, float))]
    lines = [f"# {suite.title}", "", "Written by:", "", "```", command, "```", ""]
    if suite.intro:
        lines += [suite.intro, ""]
    lines += [f"**Budget (equal for every variant):** {iterations} iterations, evaluated every "
              f"{eval_every_for(iterations, evals)} iterations, seed {TrainSchedule.from_dict(first['train']).seed}"
              + (f", {budget}" if budget else "") + ".", "",
              f"**Machine:** {machine_line()}"
              + (f"; CPU load (1 min) at the start of the variants {min(loads):g}-{max(loads):g}" if loads else "")
              + f". Code: git {git_commit()[:12]}.", "",
              "## Results", "",
              "| variant | " + " | ".join(suite.metrics.values()) + " | params (M) | s/it | train h | status |",
              "|---|" + "---:|" * len(suite.metrics) + "---:|---:|---:|---|"]
    best = {}
    for m in suite.metrics:     # bold only a real winner: at least two values, not all equal
        values = [r["metrics"][m] for r in results
                  if r.get("status") == "done" and isinstance(r.get("metrics", {}).get(m), (int, float))]
        pick = min if m in suite.lower_is_better else max
        best[m] = pick(values) if len(values) >= 2 and len(set(values)) > 1 else None
    for r in results:
        metrics = r.get("metrics") or {}
        cells = []
        for m in suite.metrics:
            value = metrics.get(m) if isinstance(metrics.get(m), (int, float)) else None
            cell = _pct(value)
            cells.append(f"**{cell}**" if value is not None and value == best[m] else cell)
        _, speed, seconds = logged_speed(out / r["name"])
        status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error', '?')}".replace("|", "/")
        params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "–"
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {params} | "
                     + (f"{speed:.2f}" if speed else "–") + f" | {seconds / 3600:.2f} | {status[:300]} |")
    lower = [suite.metrics[m] for m in suite.lower_is_better if m in suite.metrics]
    lines += ["", "Metrics x100 on the fixed validation set; bold = best"
              + (f" (lowest for {', '.join(lower)})" if lower else "") + ". s/it and train h come from the "
              "training logs (evaluations excluded).", "", "Variants:", ""]
    for v in chosen:
        sets = ", ".join(f"`{o}`" for o in v.overrides) or "the base config"
        base = f" (config `{v.config}`)" if v.config else ""
        lines.append(f"- **{v.label}** (`{v.name}`): {v.description} Overrides: {sets}{base}.")
    if overrides:
        lines.append("- Every variant also: " + ", ".join(f"`{o}`" for o in overrides) + ".")
    if pngs:
        lines += ["", "## Curves", ""]
        lines += [f"![{m}]({p.parent.name}/{p.name})" for m, p in pngs.items()]
    lines += ["", "## Where we differ from the paper", ""]
    if suite.paper_setup:
        lines += [suite.paper_setup, ""]
    lines += comparison_lines(suite, results, out, tie)
    doc.write_text("\n".join(lines) + "\n")
    return doc


# ---------------------------------------------------------------------------------------------------- CLI

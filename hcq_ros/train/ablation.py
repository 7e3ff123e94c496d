"""Ablation runner shared by HCQNet (``hcq_ablation``) and PersonNet (``person_ablation``).

A suite is a base training YAML plus named variants (``--set``-style overrides). ``run_suite`` trains them one
after another through the normal ``Trainer`` with EQUAL budgets (same iterations, evaluation points, seed) into
``OUT/<variant>/``; it is resumable: a finished variant (``OUT/<variant>/ablation_result.json`` with status "done"
for the same config) is skipped, an interrupted one resumes from its ``last.pt``, and a failing one is recorded
with its error while the others still run. Before training it prints a time estimate per variant, measured by
running the first few iterations of each (kept: they are inside the warmup, where the learning rate does not
depend on the budget) and one evaluation. ``write_report`` turns the run folders into the markdown report: a
table, one curve PNG per metric, the command, budget and machine, and the comparison with the paper computed from
the numbers.

Validation folders are generated once per suite (``OUT/_shared/val-<hash of the val settings>``) and linked into
every variant's folder, where the tasks look for them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import statistics
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from hcq_ros.train.cli import build_task, load_config
from hcq_ros.train.curves import read_log

RESULT_FILE = "ablation_result.json"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Variant:
    """One arm of an ablation. overrides: ``KEY=VALUE`` strings as ``hcq-ros train --set``; config: another
    base YAML for this variant (None = the suite's)."""
    name: str
    label: str
    overrides: tuple[str, ...] = ()
    description: str = ""
    config: Optional[Path] = None


@dataclass(frozen=True)
class Comparison:
    """``better`` vs ``worse`` on ``metric``, read at ``better_at`` / ``worse_at`` of the budget (1.0 = final).
    paper: the paper's (better, worse) values in percent, or None; claim: what the paper says (None = no claim,
    the comparison is only reported)."""
    metric: str
    better: str
    worse: str
    paper: Optional[tuple[float, float]] = None
    claim: Optional[str] = None
    better_at: float = 1.0
    worse_at: float = 1.0


@dataclass
class AblationSuite:
    """Everything a report needs besides the numbers. metrics: {eval key: column label}; shared_val: config ->
    the settings that define its validation folder (None = no sharing); budget_keys: {label: dotted config key}
    printed in the budget line; paper_setup: a sentence on how the paper trained (for the comparison); notes:
    {variant name: result of a finished variant} -> extra computed lines for the comparison section."""
    title: str
    module: str
    base_config: Path
    variants: list[Variant]
    default_variants: tuple[str, ...]
    metrics: dict[str, str]
    comparisons: list[Comparison] = field(default_factory=list)
    shared_val: Optional[Callable[[dict], dict]] = None
    budget_keys: dict[str, str] = field(default_factory=dict)
    intro: str = ""
    paper_setup: str = ""
    notes: Optional[Callable[[dict[str, dict]], list[str]]] = None

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise ValueError(f"variant names must match {_NAME.pattern}: {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names in {names}")
        missing = sorted(set(self.default_variants) - set(names))
        if missing:
            raise ValueError(f"default_variants {missing} are not variants of the suite")

    def select(self, names: Optional[list[str]]) -> list[Variant]:
        """Variants by name in the suite's order; None / [] = the defaults, ["all"] = every variant."""
        by_name = {v.name: v for v in self.variants}
        if not names:
            names = list(self.default_variants)
        elif names == ["all"]:
            names = list(by_name)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {list(by_name)} (or 'all')")
        return [v for v in self.variants if v.name in names]


# ---------------------------------------------------------------------------------------------------- configs
def eval_every_for(iterations: int, evals: int) -> int:
    """Evaluation period giving ``evals`` equally spaced evaluations (the last at ``iterations``)."""
    if iterations < 1 or evals < 1:
        raise ValueError(f"need iterations >= 1 and evals >= 1, got {iterations}, {evals}")
    return max(1, iterations // evals)


def eval_count(iterations: int, evals: int) -> int:
    """How many evaluations a run of ``iterations`` makes with ``eval_every_for`` (+ the final one)."""
    every = eval_every_for(iterations, evals)
    return iterations // every + (1 if iterations % every else 0)


def variant_config(suite: AblationSuite, variant: Variant, iterations: int, evals: int,
                   overrides: list[str] = ()) -> dict:
    """The full training config of one variant: base YAML <- common overrides <- variant <- budget."""
    budget = [f"train.iterations={iterations}", f"train.eval_every={eval_every_for(iterations, evals)}"]
    return load_config(variant.config or suite.base_config, [*overrides, *variant.overrides, *budget])


def _link_shared_val(suite: AblationSuite, config: dict, out: Path, run_dir: Path) -> None:
    """Point ``run_dir/val`` at the suite's shared validation folder for these val settings."""
    if suite.shared_val is None or (run_dir / "val").exists() or (run_dir / "val").is_symlink():
        return
    settings = suite.shared_val(config)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    shared = out / "_shared" / f"val-{key}"
    shared.mkdir(parents=True, exist_ok=True)        # the tasks write into it through the link
    (shared / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))
    run_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(shared, run_dir), run_dir / "val", target_is_directory=True)


# ---------------------------------------------------------------------------------------------------- results
def read_result(run_dir: Path) -> Optional[dict]:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e}); delete it to rerun the variant") from e


def _write_result(run_dir: Path, result: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, run_dir / RESULT_FILE)


def is_finished(run_dir: Path, config: dict) -> bool:
    result = read_result(run_dir)
    return bool(result and result.get("status") == "done" and result.get("config") == config)


def logged_speed(run_dir: Path) -> tuple[int, Optional[float], float]:
    """(last logged iteration, median s/iteration of the logged rows after the first (None if none), training
    seconds summed over the log: each row's s/it times the iterations it covers)."""
    log = read_log(run_dir)
    if "s_per_it" not in log:
        return 0, None, 0.0
    its, speeds = log["s_per_it"]
    spans = [its[0]] + [b - a for a, b in zip(its[:-1], its[1:])]
    seconds = float(sum(max(0.0, s) * float(n) for s, n in zip(speeds, spans)))
    later = [float(s) for s in speeds[1:]] or [float(speeds[0])]
    return int(its[-1]), statistics.median(later), seconds


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- estimate
@dataclass
class Estimate:
    """Measured cost of one variant: s_per_it training seconds per iteration, done iterations already in its
    run folder, eval_s seconds per evaluation (None = not measured)."""
    name: str
    s_per_it: float
    done: int
    eval_s: Optional[float] = None

    def seconds(self, iterations: int, evals: int, eval_s: float) -> float:
        return self.s_per_it * max(0, iterations - self.done) + eval_count(iterations, evals) * eval_s


def suggest_iterations(estimates: list[Estimate], evals: int, eval_s: float, seconds: float) -> int:
    """The largest equal budget (iterations) whose estimated total over all variants fits in ``seconds``; 0 if
    not even one iteration fits."""
    def total(n: int) -> float:
        return sum(e.seconds(n, evals, eval_s) for e in estimates)

    if not estimates or total(1) > seconds:
        return 0
    lo, hi = 1, 2
    while total(hi) <= seconds and hi < 10**8:
        lo, hi = hi, hi * 2
    while hi - lo > 1:                   # total is monotone in n (eval count steps but never drops)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= seconds else (lo, mid)
    return lo


def probe_variant(suite: AblationSuite, config: dict, out: Path, run_dir: Path, probe_iterations: int,
                  time_eval: bool) -> Estimate:
    """Measure s/iteration of one variant: from its log when it has already run, else by training its first
    iterations (at most up to the warmup's end, so the kept iterations equal those of the full run). With
    ``time_eval``, also time one evaluation of the model (not logged)."""
    from hcq_ros.train.trainer import Trainer, TrainSchedule

    name = run_dir.name
    done, speed, _ = logged_speed(run_dir)
    schedule = TrainSchedule.from_dict(config["train"])
    target = min(max(1, probe_iterations), max(1, schedule.warmup), schedule.iterations)
    trainer = None
    if speed is None or time_eval:
        _link_shared_val(suite, config, out, run_dir)
        if speed is None and done < target:
            probe = replace(schedule, iterations=target, eval_every=0, log_every=1)
            trainer = Trainer(build_task(config, run_dir), probe, run_dir, config)
            trainer.fit(progress=False)
            done, speed, _ = logged_speed(run_dir)
    eval_s = None
    if time_eval:
        if trainer is None:
            trainer = Trainer(build_task(config, run_dir), schedule, run_dir, config)
            trainer.resume()
        if hasattr(trainer.task, "validation_dir"):
            trainer.task.validation_dir()            # generation is a one-off: not part of the eval time
        trainer.model.eval()
        start = time.perf_counter()
        trainer.task.evaluate(trainer.model)
        eval_s = time.perf_counter() - start
    return Estimate(name, float(speed) if speed is not None else math.nan, done, eval_s)


def format_estimates(estimates: list[Estimate], iterations: int, evals: int, eval_s: float, hours: float) -> str:
    lines = [f"time estimate at {iterations} iterations, {eval_count(iterations, evals)} evaluations per variant "
             f"(~{eval_s:.0f} s each); measured now, CPU load {_load_average()} on {os.cpu_count()} cores:",
             f"  {'variant':24s} {'s/it':>7s} {'its left':>9s} {'train h':>8s} {'eval h':>7s} {'total h':>8s}"]
    total = 0.0
    for e in estimates:
        left = max(0, iterations - e.done)
        train_h = e.s_per_it * left / 3600
        eval_h = eval_count(iterations, evals) * eval_s / 3600
        total += train_h + eval_h
        lines.append(f"  {e.name:24s} {e.s_per_it:7.2f} {left:9d} {train_h:8.2f} {eval_h:7.2f} {train_h + eval_h:8.2f}")
    lines.append(f"  {'all':24s} {'':7s} {'':9s} {'':8s} {'':7s} {total:8.2f}")
    fit = suggest_iterations(estimates, evals, eval_s, hours * 3600)
    lines.append(f"  to fit {hours:g} h for all of them: --iterations {fit}" if fit else
                 f"  not even one iteration per variant fits in {hours:g} h")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- run
def run_variant(suite: AblationSuite, variant: Variant, config: dict, out: Path, progress: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """Train one variant to its budget (resuming) and record the outcome; never raises for a training error."""
    from hcq_ros.train.trainer import Trainer, TrainSchedule

    run_dir = out / variant.name
    result = {"name": variant.name, "label": variant.label, "status": "running", "config": config,
              "iterations": int(config["train"]["iterations"]), "load_at_start": _load_average(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    try:
        _link_shared_val(suite, config, out, run_dir)
        trainer = Trainer(build_task(config, run_dir), TrainSchedule.from_dict(config["train"]), run_dir, config)
        result["params"] = sum(p.numel() for p in trainer.model.parameters())
        _write_result(run_dir, result)
        metrics = trainer.fit(progress=progress)
        result.update(status="done", iteration=trainer.iteration,
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None})
    except Exception as e:    # noqa: BLE001 - one broken variant must not stop the others
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        log(f"  {variant.name} FAILED: {result['error']}")
    result["session_seconds"] = round(time.perf_counter() - start, 1)
    _write_result(run_dir, result)
    return result


def run_suite(suite: AblationSuite, out: Path, iterations: int, variants: Optional[list[str]] = None,
              overrides: list[str] = (), evals: int = 3, probe_iterations: int = 3, time_eval: bool = True,
              estimate_only: bool = False, hours: float = 3.0, progress: bool = False,
              log: Callable[[str], None] = print) -> list[dict]:
    """Estimate, then train every selected variant that is not finished; returns their result dicts."""
    out = Path(out)
    chosen = suite.select(variants)
    configs = {v.name: variant_config(suite, v, iterations, evals, list(overrides)) for v in chosen}
    pending = [v for v in chosen if not is_finished(out / v.name, configs[v.name])]
    for v in chosen:
        if v not in pending:
            log(f"{v.name}: finished earlier, skipped")
    if probe_iterations > 0 and pending:
        estimates, eval_s = [], None
        for v in pending:
            try:
                e = probe_variant(suite, configs[v.name], out, out / v.name, probe_iterations,
                                  time_eval=time_eval and eval_s is None)
            except Exception as exc:   # noqa: BLE001 - reported again (with traceback) when the variant runs
                log(f"{v.name}: cannot estimate ({type(exc).__name__}: {exc})")
                continue
            eval_s = eval_s if e.eval_s is None else e.eval_s
            estimates.append(e)
        if estimates:
            log(format_estimates(estimates, iterations, evals, eval_s or 0.0, hours))
    if estimate_only:
        return [read_result(out / v.name) or {"name": v.name, "status": "not run"} for v in chosen]
    results = []
    for i, v in enumerate(chosen, 1):
        if v not in pending:
            results.append(read_result(out / v.name))
            continue
        log(f"[{i}/{len(chosen)}] {v.name}: training to {iterations} iterations in {out / v.name}")
        results.append(run_variant(suite, v, configs[v.name], out, progress=progress, log=log))
    return results


# ---------------------------------------------------------------------------------------------------- report
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
    the winner per metric and a noise yardstick (change between the last two evaluations)."""
    by_name = {r["name"]: r for r in results}
    labels = {v.name: v.label for v in suite.variants}
    lines, verdicts, not_here = [], [], []
    for c in suite.comparisons:
        if c.better not in by_name or c.worse not in by_name:
            if c.claim:
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
        where = f" (at iterations {ib} and {iw})" if c.better_at < 1 or c.worse_at < 1 else ""
        if abs(delta) < tie:
            verdict = f"a tie (|difference| < {tie:g} point)"
            kind = "tie"
        elif delta > 0:
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
        summary.append(f"Of {len(claims)} comparisons with a paper finding, {claims.count('agree')} go the paper's "
                       f"way, {claims.count('opposite')} the opposite way, {claims.count('tie')} are ties within "
                       f"{tie:g} point and {claims.count('missing')} could not be measured.")
    if not_here:
        summary.append("Paper findings not tested in this run (variants not selected): " + "; ".join(not_here) + ".")
    done = [r for r in results if r.get("status") == "done"]
    for metric, label in suite.metrics.items():
        ranked = sorted(((r["metrics"][metric], r["name"]) for r in done
                         if isinstance(r.get("metrics", {}).get(metric), (int, float))), reverse=True)
        if len(ranked) >= 2:
            (v1, n1), (v2, n2) = ranked[:2]
            summary.append(f"Best {label}: {labels.get(n1, n1)} {100 * v1:.1f}, {100 * (v1 - v2):+.1f} over "
                           f"{labels.get(n2, n2)}" + (f" (a tie within {tie:g} point)." if 100 * (v1 - v2) < tie
                                                      else "."))
    wobble = []
    for r in done:
        rows = [e for e in _evals(run_root / r["name"]) if e["iteration"] <= r["iterations"]]
        for metric in suite.metrics:
            pair = [e[metric] for e in rows[-2:] if isinstance(e.get(metric), (int, float))]
            if len(pair) == 2 and rows[-1]["iteration"] != rows[-2]["iteration"]:
                wobble.append(abs(100 * (pair[1] - pair[0])))
    if wobble:
        summary.append(f"Noise yardstick: between the last two evaluations of a run the metrics moved by a median of "
                       f"{statistics.median(wobble):.1f} points (max {max(wobble):.1f}); differences of that size "
                       f"are not findings.")
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
    budget = ", ".join(f"{label} {_get(first, key)}" for label, key in suite.budget_keys.items())
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
        best[m] = max(values) if len(values) >= 2 and len(set(values)) > 1 else None
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
    lines += ["", "Metrics x100 on the fixed validation set; bold = best. s/it and train h come from the training "
              "logs (evaluations excluded).", "", "Variants:", ""]
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
def add_common_arguments(parser, variants: list[Variant], default_variants: tuple[str, ...], config: Path,
                         out: Path, doc: Path) -> None:
    """The options both ablation CLIs share."""
    parser.add_argument("--iterations", type=int, required=True, help="training iterations per variant (equal)")
    parser.add_argument("--out", type=Path, default=out, help=f"run folders OUT/<variant> (default {out})")
    parser.add_argument("--doc", type=Path, default=doc, help=f"markdown report to write (default {doc})")
    parser.add_argument("--config", type=Path, default=config, help="base training YAML")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"variants to run (default {' '.join(default_variants)}; 'all' = "
                             f"{' '.join(v.name for v in variants)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for every variant (as hcq-ros train --set)")
    parser.add_argument("--evals", type=int, default=3, help="evaluations per run, equally spaced (default 3)")
    parser.add_argument("--probe-iterations", type=int, default=3,
                        help="iterations timed per variant for the estimate (kept; 0 = no estimate)")
    parser.add_argument("--no-eval-estimate", action="store_true", help="do not time one evaluation")
    parser.add_argument("--hours", type=float, default=3.0,
                        help="time budget for which the estimate suggests --iterations (default 3)")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT")
    parser.add_argument("--tie", type=float, default=0.5, help="differences below this many points are ties")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def command_line(module: str, args, extra: list[str] = ()) -> str:
    """The command that reproduces the report (every option that changes the runs or the report)."""
    parts = ["python", "-m", module, "--iterations", str(args.iterations), "--out", str(args.out),
             "--doc", str(args.doc), *extra]
    if args.variants:
        parts += ["--variants", *args.variants]
    if args.evals != 3:
        parts += ["--evals", str(args.evals)]
    if args.tie != 0.5:
        parts += ["--tie", str(args.tie)]
    for item in args.set:
        parts += ["--set", item]
    return shlex.join(parts)


def run_and_report(suite: AblationSuite, args, command: str) -> int:
    """Run (unless --report-only), then write the report (unless --estimate-only). 1 when a variant failed."""
    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    failed = []
    if not args.report_only:
        results = run_suite(suite, args.out, args.iterations, args.variants, args.set, evals=args.evals,
                            probe_iterations=args.probe_iterations, time_eval=not args.no_eval_estimate,
                            estimate_only=args.estimate_only, hours=args.hours, progress=not args.no_progress)
        if args.estimate_only:
            return 0
        failed = [r["name"] for r in results if r and r.get("status") == "failed"]
    doc = write_report(suite, args.out, args.doc, args.iterations, args.evals, command, args.variants, args.set,
                       tie=args.tie)
    print(f"report: {doc}" + (f" (failed variants: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0

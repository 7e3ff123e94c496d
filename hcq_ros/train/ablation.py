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
    {variant name: result of a finished variant} -> extra computed lines for the comparison section;
    lower_is_better: metrics where smaller wins (errors), for the bold cell, the ranking and the verdicts."""
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
    lower_is_better: tuple[str, ...] = ()

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
    if speed is None:
        raise RuntimeError(f"{run_dir}: no s/iteration in its training log")
    return Estimate(name, float(speed), done, eval_s)


def format_estimates(estimates: list[Estimate], iterations: int, evals: int, eval_s: Optional[float],
                     hours: float) -> str:
    """The estimate table; eval_s None = evaluations not timed (counted as 0)."""
    timed = f"~{eval_s:.0f} s each" if eval_s is not None else "evaluation time not measured, counted as 0"
    eval_s = eval_s or 0.0
    lines = [f"time estimate at {iterations} iterations, {eval_count(iterations, evals)} evaluations per variant "
             f"({timed}); measured now, CPU load {_load_average()} on {os.cpu_count()} cores:",
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
            log(format_estimates(estimates, iterations, evals, eval_s, hours))
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
    from hcq_ros.train.ablation_report import write_report

    doc = write_report(suite, args.out, args.doc, args.iterations, args.evals, command, args.variants, args.set,
                       tie=args.tie)
    print(f"report: {doc}" + (f" (failed variants: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0

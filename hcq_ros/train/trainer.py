"""The training loop shared by HCQNet and PersonNet: iterations, AdamW + warmup/cosine, bf16 autocast on CPU,
checkpoint + resume, CSV/JSON logs, a PNG training curve, periodic evaluation, and torchrun DDP.

A *task* object supplies the model-specific parts (see ``hcq_ros.train.hcq_task.HCQTask``)::

    task.build_model() -> nn.Module             task.build_criterion() -> nn.Module
    task.batches(rank, world_size, start_iteration) -> iterator of batches (endless)
    task.loss(model, criterion, batch) -> dict of scalar tensors with "loss"
    task.evaluate(model) -> dict of metrics      task.checkpoint_extra() -> dict stored in every checkpoint
    task.HEADLINE_METRICS: the metric keys plotted and printed
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class TrainSchedule:
    """Optimisation settings (the ``train:`` section of a training YAML)."""
    iterations: int = 20000
    lr: float = 2e-4
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    warmup: int = 500
    min_lr_ratio: float = 0.05
    grad_clip: float = 0.1
    bf16: bool = True
    checkpoint_every: int = 250
    eval_every: int = 2000
    log_every: int = 10
    threads: int = 0            # torch intra-op threads; 0 = leave torch's default
    seed: int = 0
    init_backbone: str = ""     # checkpoint whose backbone.* weights start a fresh run (a pretrained backbone)
    init_weights: str = ""      # checkpoint whose same-name, same-shape tensors start a fresh run (warm start of
                                # an extended architecture); the new tensors are listed
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSchedule":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown train settings {unknown}; known: {sorted(known)}")
        return cls(**data)


def lr_factor(it: int, s: TrainSchedule) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio``."""
    if it < s.warmup:
        return (it + 1) / s.warmup
    progress = min(1.0, (it - s.warmup) / max(1, s.iterations - s.warmup))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _distributed() -> tuple[int, int]:
    """(rank, world_size); initialises the process group under torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class Trainer:
    def __init__(self, task, schedule: TrainSchedule, out_dir: str | Path, config_dump: dict):
        self.task, self.s, self.out = task, schedule, Path(out_dir)
        # the code the run started from (kept over resumes); git_commit_last is HEAD at each save
        self.start_commit = git_commit()
        self.config_dump = config_dump
        self.rank, self.world = _distributed()
        self.main = self.rank == 0
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                   if torch.cuda.is_available() else "cpu")
        if schedule.threads:
            torch.set_num_threads(schedule.threads)
        torch.manual_seed(schedule.seed + self.rank)
        self.model = task.build_model().to(self.device)
        self.criterion = task.build_criterion().to(self.device)
        params = [p for p in list(self.model.parameters()) + list(self.criterion.parameters()) if p.requires_grad]
        backbone = {id(p) for n, p in self.model.named_parameters() if n.startswith("backbone.")}
        groups = [{"params": [p for p in params if id(p) not in backbone], "lr_scale": 1.0},
                  {"params": [p for p in params if id(p) in backbone], "lr_scale": schedule.backbone_lr_scale}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=schedule.lr,
                                           weight_decay=schedule.weight_decay)
        self.iteration = 0
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    # ---------------------------------------------------------------------------------------- checkpoints
    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    def save(self, path: Path | None = None) -> None:
        if not self.main:
            return
        path = path or self.last_path
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                    "schedule": asdict(self.s), "config": self.config_dump, "git_commit": self.start_commit,
                    "git_commit_last": git_commit(), **self.task.checkpoint_extra()}, tmp)
        os.replace(tmp, path)   # atomic: an interrupted save never leaves a broken last.pt

    def resume(self, init: Path | None = None) -> bool:
        """Load ``last.pt`` if it exists, else the weights-only snapshot ``init`` (a shipped ``engines/*.pt``:
        model + criterion + iteration, fresh optimizer). Another config is an error naming the difference."""
        if not self.last_path.exists():
            return self._init_from(init) if init else False
        ckpt = torch.load(self.last_path, map_location=self.device, weights_only=False)
        mismatches = self._architecture_mismatches(ckpt)
        if mismatches:
            raise ValueError(f"{self.last_path} was trained with another model ({'; '.join(mismatches)}): use "
                             "another --out or delete it")
        self.model.load_state_dict(ckpt["model"])
        self.criterion.load_state_dict(ckpt["criterion"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.iteration = int(ckpt["iteration"])
        self.start_commit = ckpt.get("git_commit", self.start_commit)
        self.started_from = f"resumed from {self.last_path}"
        return True

    def _architecture_mismatches(self, ckpt: dict) -> list[str]:
        """What differs between the checkpoint's network and this run's (``task.architecture_mismatches``: loss
        settings inside HCQNet's model config may differ, so a run can continue under other loss weights)."""
        theirs, ours = (ckpt.get("config") or {}).get("model"), self.config_dump.get("model")
        if theirs is None:
            return ["the checkpoint records no model config"]
        return self.task.architecture_mismatches(theirs, ours)

    def _init_backbone(self, path: Path) -> str:
        """Copy ``backbone.*`` weights from a checkpoint into the fresh model (the rest stays random, the
        iteration stays 0): the stand-in for an ImageNet-pretrained backbone. Every backbone tensor must exist
        with the same shape, or ValueError names the first that does not."""
        if not path.is_file():
            raise FileNotFoundError(f"train.init_backbone: no checkpoint at {path}")
        source = torch.load(path, map_location=self.device, weights_only=False)["model"]
        own = {k: v for k, v in self.model.state_dict().items() if k.startswith("backbone.")}
        if not own:
            raise ValueError("train.init_backbone: this model has no backbone.* parameters")
        for key, value in own.items():
            if key not in source or tuple(source[key].shape) != tuple(value.shape):
                found = "missing" if key not in source else f"shape {tuple(source[key].shape)}"
                raise ValueError(f"train.init_backbone: {path} does not fit this backbone: {key} "
                                 f"{tuple(value.shape)} vs {found}")
        self.model.load_state_dict({k: source[k] for k in own}, strict=False)
        return f"backbone ({len(own)} tensors) initialised from {path}; the rest is new"

    def _init_weights(self, path: Path) -> str:
        """Copy every model (and criterion) tensor whose name and shape match from a checkpoint into the fresh
        model; iteration stays 0. For a model that extends the checkpoint's (e.g. query_init "encoder" after a
        "learned" run): the message names how many tensors are new. ValueError if nothing matches."""
        if not path.is_file():
            raise FileNotFoundError(f"train.init_weights: no checkpoint at {path}")
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        copied, new = 0, []
        for module, key in ((self.model, "model"), (self.criterion, "criterion")):
            source = ckpt.get(key) or {}
            own = module.state_dict()
            take = {k: source[k] for k, v in own.items() if k in source and tuple(source[k].shape) == tuple(v.shape)}
            module.load_state_dict(take, strict=False)
            copied += len(take)
            new += [k for k in own if k not in take]
        if not copied:
            raise ValueError(f"train.init_weights: no tensor of {path} fits this model")
        shown = ", ".join(sorted({k.rsplit(".", 2)[0] for k in new})[:6])
        return f"{copied} tensors initialised from {path}; {len(new)} new ({shown})"

    def _init_from(self, path: Path) -> bool:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        mismatches = self._architecture_mismatches(ckpt)
        if mismatches:
            raise ValueError(f"--init {path} is another model: {'; '.join(mismatches)}")
        self.model.load_state_dict(ckpt["model"])
        if "criterion" in ckpt:
            self.criterion.load_state_dict(ckpt["criterion"])
        self.iteration = int(ckpt.get("iteration", 0))
        self.started_from = f"initialised from {path} (--init)"
        return True

    def export_weights(self, path: Path) -> None:
        """Weights-only snapshot (no optimizer state) for shipping in engines/ and for ``--init``."""
        if not self.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                    "iteration": self.iteration, "config": self.config_dump, "git_commit": self.start_commit,
                    "git_commit_last": git_commit(), **self.task.checkpoint_extra()}, path)

    # ---------------------------------------------------------------------------------------- logging
    def _log_row(self, row: dict) -> None:
        """log.jsonl keeps every row whole; log.csv keeps the columns of its first row (terms that appear only
        later, e.g. in multi-source training, are in the jsonl)."""
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        path = self.out / "log.csv"
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
        else:
            header = None
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore", restval="")
            if header is None:
                w.writeheader()
            w.writerow(row)

    def _log_eval(self, metrics: dict) -> None:
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps({"iteration": self.iteration, **metrics}) + "\n")

    def plot(self) -> Path | None:
        """PNG of the loss terms (smoothed) and the eval metrics over iterations."""
        from hcq_ros.train.curves import plot_training_curves
        return plot_training_curves(self.out, metrics=self.task.HEADLINE_METRICS)

    # ---------------------------------------------------------------------------------------- loop
    def fit(self, progress: bool = True, init: Path | None = None) -> dict:
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume(init)
        if not resumed and self.s.init_backbone and self.s.init_weights:
            raise ValueError("train.init_backbone and train.init_weights are exclusive")
        if not resumed and self.s.init_backbone:
            self.started_from = self._init_backbone(Path(self.s.init_backbone))
            resumed = True
        if not resumed and self.s.init_weights:
            self.started_from = self._init_weights(Path(self.s.init_weights))
            resumed = True
        if self.main:
            (self.out / "config.json").write_text(json.dumps(self.config_dump, indent=2))
            if resumed:
                print(f"{self.started_from} at iteration {self.iteration}")
        batches = self.task.batches(self.rank, self.world, self.iteration)
        bar = tqdm(total=self.s.iterations, initial=self.iteration, disable=not (progress and self.main),
                   dynamic_ncols=True)
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}    # per term: multi-source batches do not all carry every loss
        n, t_last = 0, time.perf_counter()
        metrics: dict = {}
        while self.iteration < self.s.iterations:
            for g in self.optimizer.param_groups:
                g["lr"] = self.s.lr * g["lr_scale"] * lr_factor(self.iteration, self.s)
            batch = next(batches)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16):
                losses = self.task.loss(self.ddp_model, self.criterion, batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iteration}: "
                                         + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
            self.optimizer.step()
            self.iteration += 1
            for k, v in losses.items():
                if "_aux" not in k:
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                    counts[k] = counts.get(k, 0) + 1
            n += 1
            bar.update(1)
            if self.iteration % self.s.log_every == 0 or self.iteration == self.s.iterations:
                now = time.perf_counter()
                row = {"iteration": self.iteration, "lr": self.optimizer.param_groups[0]["lr"],
                       "s_per_it": round((now - t_last) / n, 4),
                       **{k: round(v / counts[k], 5) for k, v in sums.items()}}
                if self.main:
                    self._log_row(row)
                bar.set_postfix({k.replace("loss_", ""): f"{v / counts[k]:.3f}" for k, v in sums.items()})
                sums, counts, n, t_last = {}, {}, 0, now
            if self.iteration % self.s.checkpoint_every == 0:
                self.save()
            if self.s.eval_every and self.iteration % self.s.eval_every == 0 and self.main:
                metrics = self._evaluate()
        bar.close()
        self.save()
        if self.main and (not metrics or self.s.eval_every == 0 or self.iteration % self.s.eval_every):
            metrics = self._evaluate() if self.s.eval_every else {}
        if self.main:
            self.plot()
        if self.world > 1:
            dist.barrier()
        return metrics

    def _evaluate(self) -> dict:
        self.model.eval()
        try:
            metrics = self.task.evaluate(self.model)
        finally:
            self.model.train()
        self._log_eval(metrics)
        print(f"[eval @ {self.iteration}] " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                         if isinstance(v, float)))
        return metrics

"""The one training loop: any :class:`~.task.TrainTask`, alone or under torchrun.

Fast path: uint8 batches in pinned memory, augmentation and normalisation on the device,
channels_last, bf16 autocast on CUDA, losses summed on the device and read once per epoch (no
per-step host synchronisation). Every epoch reseeds the RNGs from (seed, epoch, rank) and the
schedules are closed-form or saved, so ``--resume`` continues the LR schedule, the task's own
schedules, the data order and the augmentation exactly where the run stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import PolynomialLR
from torch.utils.data import DataLoader, DistributedSampler

from histoseg_cli.core.atomic import NewPaths, check_writable
from histoseg_cli.core.data.format import InputLink
from histoseg_cli.core.data.inputs import DataSources
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import HistosegError, InputError, UsageError
from histoseg_cli.core.inference.engine import InferenceEngine, autocast_dtype
from histoseg_cli.core.models.base import has_depthwise_convolutions
from histoseg_cli.core.models.checkpoint import read_checkpoint, save_checkpoint
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.training.config import TrainConfig
from histoseg_cli.core.training.data import make_loader
from histoseg_cli.core.distributed import DistContext
from histoseg_cli.core.training.run_dir import RunDir
from histoseg_cli.core.training.step import TrainStep
from histoseg_cli.core.training.task import TRAIN_TASKS, PrepareSources, TrainTask

log = logging.getLogger("histoseg")


@dataclass
class TrainResult:
    """Where a run ended up; ``is_main`` is false on the other torchrun processes."""

    run_dir: Path
    checkpoint: Path
    best: Path | None
    epochs: int
    iterations: int
    last: dict[str, Any]
    is_main: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint),
                "best": str(self.best) if self.best else None, "epochs": self.epochs,
                "iterations": self.iterations, "last_epoch": self.last}


def make_optimizer(groups: list[dict[str, Any]], lr: float, momentum: float,
                   device: torch.device) -> torch.optim.SGD:
    """SGD over the task's parameter groups; on CUDA the fused kernel (one launch for all
    parameters instead of a few per tensor)."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=device.type == "cuda" or None)


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels (``--deterministic``) or cuDNN autotuning, restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = device.type == "cuda" and not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:]


@contextlib.contextmanager
def _quiet_logs(enabled: bool) -> Iterator[None]:
    """Silence info logs on the non-main torchrun processes (rank 0 speaks for all)."""
    level = log.level
    if enabled:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def run_train(config: TrainConfig, prepare: PrepareSources, reporter: Reporter = SILENT
              ) -> TrainResult:
    """Train the stage ``config`` asks for (its class picks the registered task)."""
    task = next((cls for cls in TRAIN_TASKS.values() if type(config) is cls.config_type), None)
    if task is None:
        raise TypeError(f"no training task takes a {type(config).__name__}")
    return train(task(config), prepare, reporter)


def train(task: TrainTask, prepare: PrepareSources, reporter: Reporter = SILENT) -> TrainResult:
    """Train (or resume) ``task`` into its ``config.run_dir``.

    ``prepare(data, val, dataset, cache_dir, workers, reporter)`` turns the command's inputs
    into artifacts; it runs on rank 0 only, after the run directory has been checked.
    """
    ctx = DistContext.from_env(task.config.device)
    try:
        with _quiet_logs(not ctx.is_main), determinism(task.config.deterministic, ctx.device):
            return _Loop(task, prepare, ctx, reporter if ctx.is_main else SILENT).run()
    finally:
        ctx.close()


def data_record(sources: DataSources) -> dict[str, Any]:
    """What a checkpoint records of the artifacts its run read: absolute path, hash of the
    patch names and their count (the identity derived artifacts link by)."""
    record = {}
    for role, path in (("train", sources.train), ("val", sources.val)):
        if path is not None:
            with Artifact(path) as art:
                record[role] = asdict(InputLink.to(art))
    return record


class _Loop:
    def __init__(self, task: TrainTask, prepare: PrepareSources, ctx: DistContext,
                 reporter: Reporter) -> None:
        self.task = task
        self.prepare = prepare
        self.ctx = ctx
        self.reporter = reporter
        self.run_dir = RunDir(task.config.run_dir, task)
        self.device = ctx.device
        self._payload: dict[str, Any] | None = None  # the checkpoint being resumed
        self._data: dict[str, Any] = {}  # what checkpoints record of the data (rank 0)

    # ----------------------------------------------------------------- set-up (rank 0)
    def _prepare(self) -> DataSources:
        """Check the run directory, resolve and validate the data; rank 0 only."""
        task, run = self.task, self.run_dir
        cfg = task.config
        check_writable(run.root, folder=True)
        if cfg.resume and not run.has_run() and run.config.is_file():
            log.info("%s: the run stopped before its first epoch ended; starting it again",
                     run.root)
            task.config = cfg = replace(cfg, resume=False, overwrite=True)
        if cfg.resume:
            if not run.has_run():
                raise InputError(run.root, f"nothing to resume (no {run.checkpoint.name}); "
                                 "start a new run without {resume}")
            self._payload = read_checkpoint(run.checkpoint)
            if self._payload["task"] != task.name:
                raise InputError(run.checkpoint, f"holds a {self._payload['task']} run; "
                                 f"expected a {task.name} run to resume")
            info = self._payload["info"]
            task.config = cfg = cfg.resumed_from(info["config"])
            log.info("resuming %s after epoch %d/%d (training options from the checkpoint)",
                     run.root, info["epoch"], cfg.epochs)
        elif run.has_run() and not cfg.overwrite:
            raise UsageError(f"{run.root} already holds a run ({run.checkpoint.name}); "
                             "pass {resume} to continue it or {overwrite} to start again")
        task.preflight()
        sources = self.prepare(cfg.data, cfg.val, cfg.dataset, run.root / "data", cfg.workers,
                               self.reporter)
        sources = task.check_data(sources)
        if cfg.resume:
            saved = self._payload["info"]["class_names"]
            names = list(sources.class_names)
            if saved != names:
                raise InputError(sources.train, f"has {len(names)} classes ({', '.join(names)}) "
                                 f"but the run in {run.root} was trained on {len(saved)} "
                                 f"({', '.join(saved)})")
        if cfg.batch_size % self.ctx.world_size:
            raise UsageError(f"{cfg.batch_size} is not divisible by the {self.ctx.world_size} "
                             "processes", "batch_size")
        return sources

    def _commit(self, sources: DataSources) -> None:
        """The inputs are accepted: clear a run being overwritten, record the config."""
        task, run, cfg = self.task, self.run_dir, self.task.config
        if cfg.overwrite and not cfg.resume:
            for path in (run.checkpoint, run.best, run.metrics, run.curve):
                path.unlink(missing_ok=True)
        self._data = data_record(sources)
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config({**cfg.as_dict(), "task": task.name,
                          "train_artifact": self._data["train"]["path"],
                          "val_artifact": self._data.get("val", {}).get("path"),
                          "world_size": self.ctx.world_size})

    def _build(self, sources: DataSources) -> nn.Module:
        torch.manual_seed(self.task.config.seed)
        return self.task.build_model(sources)

    def _share_setup(self) -> tuple[DataSources, nn.Module]:
        """Rank 0 prepares; every rank gets the config and sources, or rank 0's error."""
        task = self.task
        if self.ctx.is_main:
            made = NewPaths(self.run_dir.root, self.run_dir.root / "data")
            try:
                sources = self._prepare()
                model = self._build(sources)
                if task.config.pretrained and not task.config.resume:
                    task.load_pretrained(model)
                self._commit(sources)
            except BaseException as err:
                made.remove()  # a refused run leaves nothing behind (data imports included)
                if isinstance(err, Exception):
                    self.ctx.share(("error", str(err)))
                raise
            self.ctx.share(("ok", (task.config.as_dict(), sources)))
            return sources, model
        status, payload = self.ctx.share(None)
        if status == "error":
            raise HistosegError(f"stopped: rank 0 failed: {payload}")
        cfg_dict, sources = payload
        task.config = type(task.config).from_dict(cfg_dict)
        return sources, self._build(sources)

    # ----------------------------------------------------------------- training
    def run(self) -> TrainResult:
        sources, model = self._share_setup()
        task, ctx, run = self.task, self.ctx, self.run_dir
        cfg = task.config
        payload = self._payload
        if cfg.resume and payload is None:
            payload = read_checkpoint(run.checkpoint)
        if payload is not None:
            model.load_state_dict(payload["model"])
        if cfg.pretrained:
            task.freeze(model)
        depthwise = has_depthwise_convolutions(task.feature_extractor(model))
        channels_last = cfg.use_channels_last(self.device.type, depthwise)
        model.to(self.device,
                 memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        per_rank = cfg.batch_size // ctx.world_size
        dataset = task.train_dataset(sources)
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=cfg.seed)
        loader = make_loader(dataset, per_rank, sampler=sampler, workers=cfg.workers,
                             pin_memory=self.device.type == "cuda", drop_last=True,
                             seed=cfg.seed)
        steps = len(sampler) // per_rank
        optimizer = make_optimizer(task.parameter_groups(model), cfg.lr, cfg.momentum,
                                   self.device)
        scheduler = PolynomialLR(optimizer, total_iters=steps * cfg.epochs, power=cfg.poly_power)
        start_epoch, best_score = 0, None
        if payload is not None:
            training = payload["training"]
            if training["steps_per_epoch"] != steps:
                raise InputError(sources.train, f"gives {steps} steps per epoch, the saved run "
                                 f"used {training['steps_per_epoch']}; resume with the same "
                                 "data and batch size")
            optimizer.load_state_dict(training["optimizer"])
            scheduler.load_state_dict(training["scheduler"])
            start_epoch, best_score = payload["info"]["epoch"], training["best_score"]

        net: nn.Module = model
        if ctx.distributed:
            net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        step = TrainStep(net, optimizer, scheduler, task.input_norm(model), task.augment(),
                         task.loss, self.device, autocast_dtype(cfg.precision, self.device),
                         channels_last)
        val = self._val_loader(sources) if ctx.is_main else None
        rows = run.read_metrics(start_epoch) if ctx.is_main else []
        if start_epoch >= cfg.epochs:
            log.info("run already complete (%d epochs)", cfg.epochs)
        for epoch in range(start_epoch, cfg.epochs):
            row = self._epoch(epoch, model, step, loader, sampler, steps)
            if ctx.is_main:
                if val is not None:
                    engine = InferenceEngine(model, step.norm, self.device, step.dtype,
                                             channels_last)
                    row["val"] = task.validate(engine, val)
                    model.train()
                rows.append(row)
                best_score = self._save(model, sources, step, rows, best_score, steps)
            ctx.barrier()
        return TrainResult(run.root, run.checkpoint, run.best if run.best.is_file() else None,
                           cfg.epochs, steps * cfg.epochs, rows[-1] if rows else {}, ctx.is_main)

    def _epoch(self, epoch: int, model: nn.Module, step: TrainStep, loader: DataLoader,
               sampler: DistributedSampler, steps: int) -> dict[str, Any]:
        """Train one epoch; the metrics row (loss averaged over steps and processes)."""
        cfg = self.task.config
        extra = self.task.start_epoch(model, epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + self.ctx.rank)
        sampler.set_epoch(epoch)
        lr = step.optimizer.param_groups[0]["lr"]
        step.net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        title = f"epoch {epoch + 1}/{cfg.epochs}"
        with self.reporter.bar(title, "img") as bar:
            progress = bar.add_task(title, total=steps * cfg.batch_size)
            for batch in loader:
                loss_sum += step(*batch)
                bar.advance(progress, cfg.batch_size)
        train_loss = float(self.ctx.mean(loss_sum / steps).item())  # the epoch's one sync
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise HistosegError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); "
                                "lower {lr}")
        return {"epoch": epoch + 1, "iteration": (epoch + 1) * steps, "lr": lr,
                "head_lr": lr * cfg.head_lr_mult, **extra, "train_loss": round(train_loss, 6),
                "images_per_s": round(steps * cfg.batch_size / seconds, 2),
                "seconds": round(seconds, 2)}

    def _save(self, model: nn.Module, sources: DataSources, step: TrainStep,
              rows: list[dict[str, Any]], best_score: float | None, steps: int) -> float | None:
        """Checkpoint (with training state), best.pt when the validation score improved,
        metrics and curve."""
        task, run, row = self.task, self.run_dir, rows[-1]
        info = replace(task.info(model, sources, row), epoch=row["epoch"],
                       iteration=row["iteration"], data=self._data)
        score = (row.get("val") or {}).get(task.score_key)
        improved = score is not None and (best_score is None or score > best_score)
        best_score = score if improved else best_score
        # everything else first, the checkpoint last: it is what --resume continues from,
        # so a run killed in between redoes this epoch (the same way) and rewrites the rest
        if improved:
            save_checkpoint(run.best, model, info)
        run.write_metrics(rows)
        run.write_curve(rows)
        task.epoch_end(run.root, row)
        save_checkpoint(run.checkpoint, model, info, training={
            "optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
            "steps_per_epoch": steps, "best_score": best_score})
        log.info("epoch %d/%d  loss %.4f  lr %.2e  %.1f img/s%s", row["epoch"],
                 task.config.epochs, row["train_loss"], row["lr"], row["images_per_s"],
                 task.describe(row))
        return best_score

    def _val_loader(self, sources: DataSources) -> DataLoader | None:
        dataset = self.task.val_dataset(sources)
        if dataset is None:
            return None
        return make_loader(dataset, self.task.config.batch_size, sampler=None,
                           workers=min(self.task.config.workers, 2),
                           pin_memory=self.device.type == "cuda", drop_last=False)


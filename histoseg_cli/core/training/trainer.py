"""The train-cls loop: PDA classifier, SGD with poly decay, per-epoch checkpoints and metrics.

Fast path: uint8 batches in pinned memory, augmentation and normalisation on the device,
channels_last, bf16 autocast on CUDA, losses summed on the device and read once per epoch (no
per-step host synchronisation). Every epoch reseeds the RNGs from (seed, epoch, rank) and the
schedules are closed-form or saved, so ``--resume`` continues the LR and mu schedules, the data
order and the augmentation exactly where the run stopped.
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
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import PolynomialLR
from torch.utils.data import DataLoader, DistributedSampler

from histoseg_cli.core.artifact import Artifact
from histoseg_cli.core.errors import HistosegError, InputError, UsageError
from histoseg_cli.core.models import build_backbone
from histoseg_cli.core.models.base import PatchClassifier
from histoseg_cli.core.models.checkpoint import ClassifierInfo, read_checkpoint, save_classifier
from histoseg_cli.core.models.pda import ProgressiveDropoutAttention
from histoseg_cli.core.models.preprocess import InputNorm, to_input
from histoseg_cli.core.models.pretrained import load_pretrained
from histoseg_cli.core.progress import SILENT, Reporter
from histoseg_cli.core.training.config import TrainConfig
from histoseg_cli.core.training.data import (
    Augment,
    DataSources,
    PatchDataset,
    make_loader,
    prepare_sources,
    train_labels,
    val_labels,
)
from histoseg_cli.core.training.distributed import DistContext
from histoseg_cli.core.training.metrics import multilabel_metrics
from histoseg_cli.core.training.run_dir import RunDir
from histoseg_cli.core.training.step import TrainStep, autocast_dtype

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


def parameter_groups(model: PatchClassifier, lr: float, head_mult: float, weight_decay: float
                     ) -> list[dict[str, Any]]:
    """Backbone weights (decayed), backbone norms/biases (not decayed), head at ``head_mult``
    times the LR. Frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.backbone.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "backbone_norm"},
        {"params": list(model.fc8.parameters()), "lr": lr * head_mult,
         "weight_decay": weight_decay, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: PatchClassifier, lr: float, head_mult: float, weight_decay: float,
                   momentum: float, device: torch.device) -> torch.optim.SGD:
    """SGD over :func:`parameter_groups`; on CUDA the fused kernel (one launch for all
    parameters instead of a few per tensor)."""
    return torch.optim.SGD(parameter_groups(model, lr, head_mult, weight_decay), lr=lr,
                           momentum=momentum, fused=device.type == "cuda" or None)


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


def train_classifier(config: TrainConfig, reporter: Reporter = SILENT) -> TrainResult:
    """Train (or resume) a patch classifier into ``config.run_dir``; see docs/train-cls.md."""
    ctx = DistContext.from_env(config.device)
    try:
        with _quiet_logs(not ctx.is_main), determinism(config.deterministic, ctx.device):
            return _Trainer(config, ctx, reporter if ctx.is_main else SILENT).run()
    finally:
        ctx.close()


class _Trainer:
    def __init__(self, config: TrainConfig, ctx: DistContext, reporter: Reporter) -> None:
        self.config = config
        self.ctx = ctx
        self.reporter = reporter
        self.run_dir = RunDir(config.run_dir)
        self.device = ctx.device
        self._payload: dict[str, Any] | None = None  # the checkpoint being resumed

    # ----------------------------------------------------------------- set-up (rank 0)
    def _prepare(self) -> tuple[TrainConfig, DataSources]:
        """Check the run directory, import data, validate it; rank 0 only."""
        cfg, run = self.config, self.run_dir
        if cfg.resume:
            if not run.has_run():
                raise InputError(run.root, f"nothing to resume (no {run.checkpoint.name}); "
                                 "start a new run without --resume")
            self._payload = read_checkpoint(run.checkpoint)
            info = self._payload["info"]
            cfg = cfg.resumed_from(info["config"])
            log.info("resuming %s after epoch %d/%d (training options from the checkpoint)",
                     run.root, info["epoch"], cfg.epochs)
        elif run.has_run():
            if not cfg.overwrite:
                raise UsageError(f"{run.root} already holds a run ({run.checkpoint.name}); "
                                 "pass --resume to continue it or --overwrite to start again")
        sources = prepare_sources(cfg.data, cfg.val, cfg.dataset, run.root, cfg.workers,
                                  self.reporter)
        with Artifact(sources.train) as train:
            n = len(train_labels(train))
            names = train.class_names
            if n < cfg.batch_size:
                raise InputError(sources.train, f"holds {n} patches, fewer than the batch size "
                                 f"{cfg.batch_size}; lower --batch-size")
        if sources.val is not None:
            with Artifact(sources.val) as val:
                val_labels(val)
                if val.class_names != names:
                    raise InputError(sources.val, f"classes {val.class_names} differ from the "
                                     f"training data's {names}")
        if cfg.resume:
            saved = self._payload["info"]["class_names"]
            if saved != names:
                raise InputError(sources.train, f"has {len(names)} classes ({', '.join(names)}) "
                                 f"but the run in {run.root} was trained on {len(saved)} "
                                 f"({', '.join(saved)})")
        if cfg.batch_size % self.ctx.world_size:
            raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the "
                             f"{self.ctx.world_size} processes")
        if cfg.overwrite and not cfg.resume:  # only now that the new inputs are known good
            for path in (run.checkpoint, run.best, run.metrics, run.curve):
                path.unlink(missing_ok=True)
        sources = replace(sources, class_names=tuple(names))
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config({**cfg.as_dict(), "train_artifact": str(sources.train),
                          "val_artifact": str(sources.val) if sources.val else None,
                          "world_size": self.ctx.world_size})
        return cfg, sources

    def _share_setup(self) -> tuple[TrainConfig, DataSources, PatchClassifier]:
        """Rank 0 prepares; every rank gets its config and sources, or its error."""
        if self.ctx.is_main:
            try:
                cfg, sources = self._prepare()
                model = self._build(cfg, sources)
                if cfg.pretrained and not cfg.resume:
                    load_pretrained(model.backbone, cfg.pretrained)
            except Exception as err:
                self.ctx.share(("error", str(err)))
                raise
            self.ctx.share(("ok", (cfg.as_dict(), sources)))
            return cfg, sources, model
        status, payload = self.ctx.share(None)
        if status == "error":
            raise HistosegError(f"stopped: rank 0 failed: {payload}")
        cfg_dict, sources = payload
        cfg = TrainConfig.from_dict(cfg_dict)
        return cfg, sources, self._build(cfg, sources)

    @staticmethod
    def _build(cfg: TrainConfig, sources: DataSources) -> PatchClassifier:
        torch.manual_seed(cfg.seed)
        try:
            backbone = build_backbone(cfg.backbone, **cfg.backbone_kwargs)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--backbone {cfg.backbone}: {err}") from None
        pda = ProgressiveDropoutAttention() if cfg.pda else None
        return PatchClassifier(backbone, len(sources.class_names), pda=pda, dropout=cfg.dropout)

    # ----------------------------------------------------------------- training
    def run(self) -> TrainResult:
        cfg, sources, model = self._share_setup()
        ctx, run = self.ctx, self.run_dir
        train_art = Artifact(sources.train)
        labels = train_labels(train_art)
        payload = self._payload
        if cfg.resume and payload is None:
            payload = read_checkpoint(run.checkpoint)
        if payload is not None:
            model.load_state_dict(payload["model"])
        if cfg.pretrained:
            model.backbone.freeze_pretrained()
        channels_last = cfg.use_channels_last(self.device.type)
        model.to(self.device,
                 memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        per_rank = cfg.batch_size // ctx.world_size
        dataset = PatchDataset(train_art, labels)
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=cfg.seed)
        loader = make_loader(dataset, per_rank, sampler=sampler, workers=cfg.workers,
                             pin_memory=self.device.type == "cuda", drop_last=True)
        steps = len(sampler) // per_rank
        optimizer = make_optimizer(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay,
                                   cfg.momentum, self.device)
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
        step = TrainStep(net, optimizer, scheduler,
                         InputNorm.from_spec(model.backbone.normalisation),
                         Augment(cfg.flips, cfg.color_jitter), self.device,
                         autocast_dtype(cfg.precision, self.device), channels_last)
        val = self._val_loader(sources, cfg) if ctx.is_main and sources.val else None
        rows = run.read_metrics(start_epoch) if ctx.is_main else []
        if start_epoch >= cfg.epochs:
            log.info("run already complete (%d epochs)", cfg.epochs)
        base_info = ClassifierInfo(
            backbone=cfg.backbone, class_names=train_art.class_names,
            backbone_kwargs=cfg.backbone_kwargs, normalisation=model.backbone.normalisation,
            cam_layers=list(model.backbone.cam_layers), patch_size=train_art.meta.patch_size,
            background=sources.background or train_art.meta.extra.get("background"),
            dropout=cfg.dropout, config=cfg.as_dict())
        for epoch in range(start_epoch, cfg.epochs):
            row = self._epoch(epoch, cfg, model, step, loader, sampler, steps)
            if ctx.is_main:
                if val is not None:
                    row["val"] = self._validate(model, val, train_art.class_names, step)
                rows.append(row)
                best_score = self._save(model, replace(
                    base_info, pda={**asdict(cfg.mu), "enabled": cfg.pda, "mu": row["mu"]},
                    epoch=epoch + 1, iteration=row["iteration"]), step, rows, best_score, steps)
            ctx.barrier()
        train_art.close()
        return TrainResult(run.root, run.checkpoint, run.best if run.best.is_file() else None,
                           cfg.epochs, steps * cfg.epochs, rows[-1] if rows else {}, ctx.is_main)

    def _epoch(self, epoch: int, cfg: TrainConfig, model: PatchClassifier, step: TrainStep,
               loader: DataLoader, sampler: DistributedSampler, steps: int) -> dict[str, Any]:
        """Train one epoch; the metrics row (loss averaged over steps and processes)."""
        mu = cfg.mu.mu(epoch)
        if model.pda is not None:
            model.pda.mu = mu
        torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + self.ctx.rank)
        sampler.set_epoch(epoch)
        lr = step.optimizer.param_groups[0]["lr"]
        step.net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        title = f"epoch {epoch + 1}/{cfg.epochs}"
        with self.reporter.bar(title, "img") as bar:
            task = bar.add_task(title, total=steps * cfg.batch_size)
            for patches, targets in loader:
                loss_sum += step(patches, targets)
                bar.advance(task, cfg.batch_size)
        train_loss = float(self.ctx.mean(loss_sum / steps).item())  # the epoch's one sync
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise HistosegError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); "
                                "lower --lr")
        return {"epoch": epoch + 1, "iteration": (epoch + 1) * steps, "lr": lr,
                "head_lr": lr * cfg.head_lr_mult, "mu": mu, "train_loss": round(train_loss, 6),
                "images_per_s": round(steps * cfg.batch_size / seconds, 2),
                "seconds": round(seconds, 2)}

    def _save(self, model: PatchClassifier, info: ClassifierInfo, step: TrainStep,
              rows: list[dict[str, Any]], best_score: float | None, steps: int) -> float | None:
        """Checkpoint (with training state), best.pt when val mean F1 improved, metrics, curve."""
        run, row = self.run_dir, rows[-1]
        score = (row.get("val") or {}).get("mean_f1")
        improved = score is not None and (best_score is None or score > best_score)
        best_score = score if improved else best_score
        save_classifier(run.checkpoint, model, info, training={
            "optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
            "steps_per_epoch": steps, "best_score": best_score})
        if improved:
            save_classifier(run.best, model, info)
        run.write_metrics(rows)
        run.write_curve(rows)
        log.info("epoch %d/%d  loss %.4f  mu %.3f  lr %.2e  %.1f img/s%s", row["epoch"],
                 info.config["epochs"], row["train_loss"], row["mu"], row["lr"],
                 row["images_per_s"], _val_text(row.get("val")))
        return best_score

    def _val_loader(self, sources: DataSources, cfg: TrainConfig) -> DataLoader:
        art = Artifact(sources.val)
        dataset = PatchDataset(art, val_labels(art))
        return make_loader(dataset, cfg.batch_size, sampler=None, workers=min(cfg.workers, 2),
                           pin_memory=self.device.type == "cuda", drop_last=False)

    @torch.inference_mode()
    def _validate(self, model: PatchClassifier, loader: DataLoader, class_names: list[str],
                  step: TrainStep) -> dict[str, Any]:
        """Loss and multi-label metrics of the plain network (no PDA, no dropout)."""
        model.eval()
        logits, targets = [], []
        for patches, y in loader:
            x = to_input(patches, self.device, step.norm, step.channels_last)
            with torch.autocast(self.device.type, dtype=step.dtype or torch.float32,
                                enabled=step.dtype is not None):
                logits.append(model(x).float())
            targets.append(y.to(self.device, non_blocking=True))
        model.train()
        z, t = torch.cat(logits), torch.cat(targets)
        loss = float(F.multilabel_soft_margin_loss(z, t).item())
        metrics = multilabel_metrics(torch.sigmoid(z).cpu().numpy(), t.cpu().numpy(), class_names)
        return {"loss": round(loss, 6), **metrics}


def _val_text(val: dict[str, Any] | None) -> str:
    if not val:
        return ""
    f1, auc = val["mean_f1"], val["mean_auc"]
    return (f"  | val loss {val['loss']:.4f}  F1 {f1 if f1 is None else round(f1, 3)}  "
            f"AUC {auc if auc is None else round(auc, 3)}  exact {val['exact_match']:.3f}")


"""Stage 1 as a training task: the multi-label patch classifier with Progressive Dropout
Attention, multi-label soft margin loss, F1/AUC validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histoseg_cli.core.data.inputs import DataSources
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.metrics.multilabel import multilabel_metrics
from histoseg_cli.core.models.base import PatchClassifier, build_backbone
from histoseg_cli.core.models.classifier import ClassifierInfo
from histoseg_cli.core.models.pda import ProgressiveDropoutAttention
from histoseg_cli.core.models.preprocess import InputNorm
from histoseg_cli.core.models.pretrained import load_pretrained
from histoseg_cli.core.training.augment import PairedAugment
from histoseg_cli.core.training.config import ClassifierConfig
from histoseg_cli.core.training.data import PatchDataset, train_labels, val_labels
from histoseg_cli.core.training.task import TrainTask, backbone_and_head_groups, register_train_task


@register_train_task
class ClassifierTask(TrainTask):
    """``histoseg train-cls``."""

    name = "classifier"
    config_type = ClassifierConfig
    score_key = "mean_f1"
    curve_keys = ("mean_f1", "mean_auc", "exact_match")
    schedule_key = "mu"
    loss_name = "multi-label soft margin loss"
    config: ClassifierConfig

    def check_data(self, sources: DataSources) -> DataSources:
        cfg = self.config
        with Artifact(sources.train) as train:
            train_labels(train, cfg.batch_size)
            names = train.class_names
            self._patch_size = train.meta.patch_size
            self._mpp = train.meta.mpp
            self._palette = train.meta.resolved_palette().tolist()
            self._background = sources.background or train.meta.extra.get("background")
        if sources.val is not None:
            with Artifact(sources.val) as val:
                val_labels(val)
                if val.class_names != names:
                    raise InputError(sources.val, f"classes {val.class_names} differ from the "
                                     f"training data's {names}")
        return DataSources(sources.train, sources.val, self._background, tuple(names))

    def build_model(self, sources: DataSources) -> PatchClassifier:
        cfg = self.config
        try:
            stride = {"output_stride": cfg.output_stride} if cfg.output_stride else {}
            backbone = build_backbone(cfg.backbone, **cfg.backbone_kwargs, **stride)
        except (ValueError, TypeError) as err:
            raise UsageError(str(err), "backbone") from None
        pda = ProgressiveDropoutAttention(form=cfg.pda) if cfg.pda != "off" else None
        return PatchClassifier(backbone, len(sources.class_names), pda=pda, dropout=cfg.dropout,
                               input_scale=cfg.input_scale)

    def load_pretrained(self, model: nn.Module) -> None:
        assert self.config.pretrained is not None
        load_pretrained(model.backbone, self.config.pretrained)

    def freeze(self, model: nn.Module) -> None:
        model.backbone.freeze_pretrained()

    def feature_extractor(self, model: nn.Module) -> nn.Module:
        return model.backbone

    def input_norm(self, model: nn.Module) -> InputNorm:
        return InputNorm.from_spec(model.backbone.normalisation)

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        cfg = self.config
        return backbone_and_head_groups(list(model.backbone.parameters()),
                                        list(model.fc8.parameters()), cfg.lr, cfg.head_lr_mult,
                                        cfg.weight_decay)

    def train_dataset(self, sources: DataSources) -> Dataset:
        art = Artifact(sources.train)
        return PatchDataset(art, train_labels(art))

    def augment(self) -> PairedAugment:
        flips = self.config.flips
        return PairedAugment(hflip=flips, vflip=flips, color_jitter=self.config.color_jitter)

    def loss(self, output: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(output.float(), targets[0])

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        mu = self.config.mu.mu(epoch)
        if model.pda is not None:
            model.pda.mu = mu
        return {"mu": mu}

    def val_dataset(self, sources: DataSources) -> Dataset | None:
        if sources.val is None:
            return None
        art = Artifact(sources.val)
        return PatchDataset(art, val_labels(art))

    def validate(self, engine: InferenceEngine, loader: DataLoader) -> dict[str, Any]:
        """Loss and multi-label metrics of the plain network (no PDA, no dropout)."""
        logits, targets = [], []
        for z, y in engine.run_loader(loader):
            logits.append(z)
            targets.append(y.to(engine.device, non_blocking=True))
        z, t = torch.cat(logits), torch.cat(targets)
        loss = float(F.multilabel_soft_margin_loss(z, t).item())
        metrics = multilabel_metrics(torch.sigmoid(z).cpu().numpy(), t.cpu().numpy(),
                                     list(self._class_names(loader)))
        return {"loss": round(loss, 6), **metrics}

    def _class_names(self, loader: DataLoader) -> list[str]:
        return loader.dataset.artifact.class_names

    def info(self, model: nn.Module, sources: DataSources, row: dict[str, Any]
             ) -> ClassifierInfo:
        cfg = self.config
        backbone = model.backbone
        return ClassifierInfo(
            class_names=list(sources.class_names), palette=self._palette,
            normalisation=backbone.normalisation, patch_size=self._patch_size, mpp=self._mpp,
            config=cfg.as_dict(), backbone=cfg.backbone,
            # the stride as built, so a later default cannot change how cams rebuilds it
            backbone_kwargs={**cfg.backbone_kwargs, "output_stride": backbone.output_stride},
            cam_layers=list(backbone.cam_layers), background=self._background,
            dropout=cfg.dropout, pda={**asdict(cfg.mu), "enabled": cfg.pda != "off",
                                            "form": cfg.pda, "mu": row["mu"]},
            input_scale=cfg.input_scale)

    def describe(self, row: dict[str, Any]) -> str:
        text = f"  mu {row['mu']:.3f}"
        val = row.get("val")
        if not val:
            return text
        f1, auc = val["mean_f1"], val["mean_auc"]
        return (text + f"  | val loss {val['loss']:.4f}  F1 {f1 if f1 is None else round(f1, 3)}"
                f"  AUC {auc if auc is None else round(auc, 3)}  exact {val['exact_match']:.3f}")

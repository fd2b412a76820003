"""Stage 3 as a training task: DeepLabV3+ learning from the pseudo masks of several CAM layers
at once (or from ground-truth masks, the fully supervised upper bound), with an optional gate
head trained on the patch labels in the same run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histoseg_cli.core.data.inputs import DataSources
from histoseg_cli.core.data.linked import open_linked
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.metrics.confusion import ConfusionMatrix
from histoseg_cli.core.metrics.multilabel import multilabel_metrics
from histoseg_cli.core.models.checkpoint import read_checkpoint, resolve_checkpoint
from histoseg_cli.core.models.preprocess import InputNorm
from histoseg_cli.core.models.segmenter import ATROUS_RATES, Segmenter, SegmenterInfo, load_encoder_weights
from histoseg_cli.core.training.augment import PairedAugment
from histoseg_cli.core.training.config import SegmenterConfig
from histoseg_cli.core.training.data import Column, PatchDataset, train_labels, val_labels
from histoseg_cli.core.training.samples import write_samples
from histoseg_cli.core.training.task import TrainTask, backbone_and_head_groups, register_train_task

#: Default layer weights, shallow to deep (the reference: 0.2 b4_5, 0.2 b5_2, 0.6 bn7).
DEFAULT_LAMBDAS = (0.2, 0.2, 0.6)


def pseudo_supervision_loss(logits: torch.Tensor, targets: torch.Tensor,
                            lambdas: Sequence[float], ignore_index: int) -> torch.Tensor:
    """sum_i lambda_i * CE(logits, targets[:, i]), each CE averaged over the pixels that are
    not ``ignore_index``; a target with no such pixel contributes 0 (never NaN). No host sync.
    """
    logits = logits.float()
    total = logits.new_zeros(())
    for i, weight in enumerate(lambdas):
        target = targets[:, i].long()
        summed = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        count = (target != ignore_index).sum().clamp_min(1)
        total = total + weight * summed / count
    return total


@register_train_task
class SegmenterTask(TrainTask):
    """``histoseg train-seg``."""

    name = "segmenter"
    config_type = SegmenterConfig
    score_key = "miou"
    curve_keys = ("miou", "fwiou", "accuracy")
    loss_name = "pseudo-supervision loss"
    config: SegmenterConfig

    # ---------------------------------------------------------------- set-up
    def preflight(self) -> None:
        super().preflight()
        cfg = self.config
        self._classifier_classes: list[str] | None = None
        if cfg.classifier:
            path = resolve_checkpoint(cfg.classifier)
            payload = read_checkpoint(path, task="classifier")
            if payload["task"] != "classifier":
                raise InputError(path, f"holds a {payload['task']} model; expected a train-cls "
                                 "checkpoint or run directory")
            self._classifier_classes = list(payload["info"]["class_names"])

    def check_data(self, sources: DataSources) -> DataSources:
        cfg = self.config
        with Artifact(sources.train) as train:
            train_labels(train, cfg.batch_size)
            names, size = train.class_names, train.meta.patch_size
            self._meta = train.meta
            if cfg.masks and not train.has_masks:
                raise InputError(sources.train, "has no 'masks' dataset; {masks} trains on "
                                 "ground-truth masks (tile images with {masks} to keep them)")
        if size % cfg.output_stride:
            raise InputError(sources.train, f"patch size {size} is not divisible by the "
                             f"encoder's output stride {cfg.output_stride}; tile with a "
                             "multiple of it")
        classes = getattr(self, "_classifier_classes", None)
        if classes is not None and classes != list(names):
            raise InputError(cfg.classifier, f"classifies {', '.join(classes)}; the data has "
                             f"{', '.join(names)}")
        self._layers, self._layer_index, self._lambdas = ["masks"], [0], [1.0]
        if not cfg.masks:
            self._check_pseudo(sources.train, names, size)
        if sources.val is not None:
            with Artifact(sources.val) as val:
                if not val.has_masks:
                    raise InputError(sources.val, "has no 'masks' dataset; expected a "
                                     "pixel-labelled validation artifact")
                if val.class_names != names:
                    raise InputError(sources.val, f"classes {val.class_names} differ from the "
                                     f"training data's {names}")
                if val.meta.patch_size % cfg.output_stride:
                    raise InputError(sources.val, f"patch size {val.meta.patch_size} is not "
                                     f"divisible by the output stride {cfg.output_stride}")
        return DataSources(sources.train, sources.val, sources.background, tuple(names))

    def _check_pseudo(self, train: Path, names: list[str], size: int) -> None:
        cfg = self.config
        assert cfg.pseudo is not None
        derived, source = open_linked(cfg.pseudo, input_path=train)
        with derived, source:
            if derived.class_names != names:
                raise InputError(cfg.pseudo, f"classes {derived.class_names} differ from the "
                                 f"data's {names}")
            if derived.meta.patch_size != size:
                raise InputError(cfg.pseudo, f"patch size {derived.meta.patch_size} differs "
                                 f"from the data's {size}")
            available = list(derived.meta.extra.get("layers") or [])
        wanted = cfg.layers or available
        missing = [layer for layer in wanted if layer not in available]
        if missing:
            raise InputError(cfg.pseudo, f"has no pseudo masks of layer {', '.join(missing)} "
                             f"(it has {', '.join(available)})")
        if cfg.lambdas is not None and len(cfg.lambdas) != len(wanted):
            raise UsageError(f"{len(cfg.lambdas)} weights for {len(wanted)} layers "
                             f"({', '.join(wanted)})", "lambdas")
        lambdas = cfg.lambdas or _default_lambdas(len(wanted))
        self._layers, self._lambdas = list(wanted), list(lambdas)
        self._layer_index = [available.index(layer) for layer in wanted]

    def build_model(self, sources: DataSources) -> Segmenter:
        cfg = self.config
        try:
            return Segmenter(cfg.encoder, len(sources.class_names), cfg.output_stride,
                             gate_head=cfg.gate_head)
        except (KeyError, ValueError) as err:
            raise UsageError(f"not an encoder segmentation-models-pytorch knows ({err})",
                             f"{{encoder}} {cfg.encoder}") from None

    def load_pretrained(self, model: nn.Module) -> None:
        assert self.config.pretrained is not None
        load_encoder_weights(model, self.config.pretrained)

    def feature_extractor(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def input_norm(self, model: nn.Module) -> InputNorm:
        return InputNorm.from_spec("imagenet")

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        cfg = self.config
        return backbone_and_head_groups(list(model.encoder.parameters()),
                                        model.head_parameters(), cfg.lr, cfg.head_lr_mult,
                                        cfg.weight_decay)

    # ---------------------------------------------------------------- data and loss
    def train_dataset(self, sources: DataSources) -> Dataset:
        cfg = self.config
        art = Artifact(sources.train)
        if cfg.masks:
            self._layers, self._layer_index, self._lambdas = ["masks"], [0], [1.0]
            target = Column(art, "masks")
        else:
            if not hasattr(self, "_layer_index"):  # torchrun ranks > 0 skip check_data
                self._check_pseudo(sources.train, list(sources.class_names),
                                   art.meta.patch_size)
            target = Column(Artifact(cfg.pseudo), "pseudo_masks", select=self._layer_index)
        return PatchDataset(art, target, train_labels(art))

    def augment(self) -> PairedAugment:
        cfg = self.config
        return PairedAugment(hflip=cfg.hflip, vflip=cfg.vflip, blur=cfg.blur)

    def loss(self, output: dict[str, torch.Tensor], targets: Sequence[torch.Tensor]
             ) -> torch.Tensor:
        masks, labels = targets
        logits = output["masks"]
        c = logits.shape[1]
        if masks.ndim == 3:  # ground-truth masks: values >= C are background
            masks = masks.clamp(max=c)[:, None]
        loss = pseudo_supervision_loss(logits, masks, self._lambdas, ignore_index=c)
        if "gate" in output:
            loss = loss + self.config.gate_weight * F.multilabel_soft_margin_loss(
                output["gate"].float(), labels)
        return loss

    # ---------------------------------------------------------------- validation, records
    def val_dataset(self, sources: DataSources) -> Dataset | None:
        if sources.val is None:
            return None
        art = Artifact(sources.val)
        return PatchDataset(art, Column(art, "masks"), val_labels(art))

    def validate(self, engine: InferenceEngine, loader: DataLoader) -> dict[str, Any]:
        """mIoU/FwIoU/ACC with the same confusion matrix ``eval`` uses; the gate head's
        F1/AUC (and the stage-1 classifier's, with ``--classifier``) on the same patches."""
        art: Artifact = loader.dataset.artifact
        matrix = ConfusionMatrix(art.class_names)
        gate, labels, shown = [], [], []
        for out, truth, label in engine.run_loader(loader):
            pred = out["masks"].argmax(dim=1).to(torch.uint8).cpu().numpy()
            matrix.update(pred, truth.numpy())
            if "gate" in out:
                gate.append(torch.sigmoid(out["gate"]).cpu().numpy())
                labels.append(label.numpy())
            if len(shown) < self.config.samples:
                shown.extend(pred[: self.config.samples - len(shown)])
        result: dict[str, Any] = matrix.scores().as_dict()
        self._shown = (art, np.stack(shown)) if shown else None
        if gate:
            y = np.concatenate(labels)
            result["gate_head"] = multilabel_metrics(np.concatenate(gate), y, art.class_names)
            if self.config.classifier:
                result["classifier"] = self._classifier_metrics(art, y, engine.device)
        return result

    def _classifier_metrics(self, art: Artifact, labels: np.ndarray, device: torch.device
                            ) -> dict[str, Any]:
        if not hasattr(self, "_classifier"):
            self._classifier, _ = InferenceEngine.from_checkpoint(
                self.config.classifier, device, self.config.precision, task="classifier")
        patches = art.dataset("patches")
        probs = [torch.sigmoid(out).cpu().numpy() for *_, out in self._classifier.map(
            lambda b: patches[b[0]:b[1]], len(art), self.config.batch_size)]
        return multilabel_metrics(np.concatenate(probs), labels, art.class_names)

    def epoch_end(self, run_dir: Path, row: dict[str, Any]) -> None:
        """samples/epoch_NNN.png: image | reference mask | prediction for a few val patches."""
        shown = getattr(self, "_shown", None)
        if shown is None:
            return
        art, pred = shown
        n = len(pred)
        write_samples(run_dir / "samples" / f"epoch_{row['epoch']:03d}.png",
                      art.dataset("patches")[:n], art.dataset("masks")[:n], pred,
                      art.meta.resolved_palette(), art.names()[:n])

    def info(self, model: nn.Module, sources: DataSources, row: dict[str, Any]
             ) -> SegmenterInfo:
        cfg = self.config
        supervision = ({"masks": "ground truth"} if cfg.masks else
                       {"pseudo": str(Path(cfg.pseudo).resolve()), "layers": self._layers,
                        "lambdas": self._lambdas})
        return SegmenterInfo(
            class_names=list(sources.class_names),
            palette=self._meta.resolved_palette().tolist(), normalisation="imagenet",
            patch_size=self._meta.patch_size, mpp=self._meta.mpp, config=cfg.as_dict(),
            encoder=cfg.encoder, output_stride=cfg.output_stride,
            atrous_rates=list(ATROUS_RATES[cfg.output_stride]), gate_head=cfg.gate_head,
            supervision=supervision)

    def describe(self, row: dict[str, Any]) -> str:
        val = row.get("val")
        if not val:
            return ""
        text = (f"  | val mIoU {_pct(val['miou'])}  FwIoU {_pct(val['fwiou'])}  "
                f"ACC {_pct(val['accuracy'])}")
        if "gate_head" in val:
            text += f"  gate F1 {_pct(val['gate_head']['mean_f1'])}"
        return text


def _default_lambdas(n: int) -> list[float]:
    """0.2/0.2/0.6 for three layers (shallow to deep); otherwise the deepest gets 0.6 and the
    rest share 0.4 (one layer alone: 1.0)."""
    if n == len(DEFAULT_LAMBDAS):
        return list(DEFAULT_LAMBDAS)
    if n == 1:
        return [1.0]
    return [0.4 / (n - 1)] * (n - 1) + [0.6]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

"""The classifier as stage 2 needs it: network, class names, and its input normalisation.

``load_cam_model`` reads a classifier checkpoint through ``core.models`` (which owns the format
and the normalisation record); inputs and autocast come from the shared inference engine
(fp32 inputs, since Grad-CAM differentiates them; bf16 autocast inside the network when asked:
on GlaS the pseudo masks stayed within 0.001 mIoU of fp32). Everything else works on any
``PatchClassifier``, so the Grad-CAM core is tested with tiny models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.models.base import PatchClassifier
from histoseg_cli.core.models.preprocess import InputNorm


@dataclass
class CamModel:
    """A trained patch classifier ready for Grad-CAM (eval mode, on its device)."""

    model: PatchClassifier
    class_names: list[str]
    #: the input normalisation the classifier was trained with (default: ResNet-38's [0, 1])
    normalise: InputNorm = field(default_factory=InputNorm)
    source: str = ""  # checkpoint or run directory it came from
    background: str | None = None  # the background rule recorded at training, if any
    precision: str = "fp32"  # autocast: "auto" (bf16 on CUDA), "fp32", "bf16"

    def __post_init__(self) -> None:
        self.model.eval()
        # channels_last: with bf16 on CPU (oneDNN) 1.3x faster Grad-CAM, as on CUDA
        self.engine = InferenceEngine.for_model(self.model, self.normalise, self.device,
                                                self.precision, channels_last=True)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.model.backbone.cam_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self) -> torch.autocast:
        """The autocast context Grad-CAM runs in."""
        return self.engine.autocast()

    def inputs(self, patches: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 patches -> normalised (B, 3, H, W) float on the model's device."""
        return self.engine.inputs(patches)

    def fingerprint(self) -> str:
        """SHA-256 of every parameter and buffer: identifies the weights for resuming."""
        h = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def load_cam_model(path: str | Path, device: torch.device, precision: str = "fp32"
                   ) -> CamModel:
    """Load a classifier checkpoint (file or run directory) for Grad-CAM on ``device``."""
    from histoseg_cli.core.models.classifier import load_classifier

    loaded = load_classifier(path, device=device)
    return CamModel(
        model=loaded.model.to(device),
        class_names=list(loaded.info.class_names),
        normalise=loaded.input_norm,
        source=str(Path(loaded.path).resolve()),
        background=loaded.info.background,
        precision=precision,
    )

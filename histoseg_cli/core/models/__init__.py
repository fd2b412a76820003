"""Networks: backbones (through a registry) and the patch classifier built on them.

Importing this package registers every backbone (ResNet-38 and the timm encoders).
"""

from histoseg_cli.core.models import resnet38d, timm_backbones  # noqa: F401 - registration
from histoseg_cli.core.models.base import BACKBONES, Backbone, PatchClassifier, build_backbone, register_backbone
from histoseg_cli.core.models.checkpoint import (
    ClassifierInfo,
    LoadedClassifier,
    load_classifier,
    save_classifier,
)
from histoseg_cli.core.models.pda import MuSchedule, ProgressiveDropoutAttention
from histoseg_cli.core.models.preprocess import InputNorm, to_input

__all__ = ["BACKBONES", "Backbone", "ClassifierInfo", "InputNorm", "LoadedClassifier",
           "MuSchedule", "PatchClassifier", "ProgressiveDropoutAttention", "build_backbone",
           "load_classifier", "register_backbone", "save_classifier", "to_input"]

"""Networks: backbones (through a registry), the patch classifier, the segmenter, and the one
checkpoint format they share.

Importing this package registers every backbone and every checkpoint task.
"""

from histoseg_cli.core.models import resnet38d, timm_backbones  # noqa: F401 - registration
from histoseg_cli.core.models.base import BACKBONES, Backbone, PatchClassifier, build_backbone, register_backbone
from histoseg_cli.core.models.checkpoint import LoadedModel, ModelInfo, load_model, save_checkpoint
from histoseg_cli.core.models.classifier import ClassifierInfo, LoadedClassifier, load_classifier
from histoseg_cli.core.models.pda import MuSchedule, ProgressiveDropoutAttention
from histoseg_cli.core.models.segmenter import Segmenter, SegmenterInfo, load_segmenter
from histoseg_cli.core.models.preprocess import InputNorm, to_input

__all__ = ["BACKBONES", "Backbone", "ClassifierInfo", "InputNorm", "LoadedClassifier",
           "LoadedModel", "ModelInfo", "MuSchedule", "PatchClassifier",
           "ProgressiveDropoutAttention", "build_backbone", "load_classifier", "load_model",
           "Segmenter", "SegmenterInfo", "load_segmenter", "register_backbone",
           "save_checkpoint", "to_input"]

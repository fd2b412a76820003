"""Networks: backbones (through a registry) and the patch classifier built on them."""

from histoseg_cli.core.models.base import BACKBONES, Backbone, PatchClassifier, build_backbone, register_backbone

__all__ = ["BACKBONES", "Backbone", "PatchClassifier", "build_backbone", "register_backbone"]

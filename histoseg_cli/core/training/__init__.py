"""Training the stage-1 patch classifier (``histoseg train-cls``)."""

from histoseg_cli.core.training.config import TrainConfig
from histoseg_cli.core.training.trainer import TrainResult, train_classifier

__all__ = ["TrainConfig", "TrainResult", "train_classifier"]

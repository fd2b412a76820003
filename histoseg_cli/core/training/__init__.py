"""Training: one loop (``loop``) for every stage, parameterised by a task (``classifier``;
``segmenter``), with paired augmentation, data loading, run directories and torchrun support.
Dataset folders are resolved to artifacts by the caller (see ``run_train``'s ``prepare``).
Entry point: ``run_train(config)``; the config's class picks the task."""

from histoseg_cli.core.training.classifier import ClassifierTask
from histoseg_cli.core.training.config import ClassifierConfig, SegmenterConfig, TrainConfig
from histoseg_cli.core.training.loop import TrainResult, run_train, train
from histoseg_cli.core.training.segmenter import SegmenterTask
from histoseg_cli.core.training.task import TRAIN_TASKS, TrainTask

__all__ = ["TRAIN_TASKS", "ClassifierConfig", "ClassifierTask", "SegmenterConfig",
           "SegmenterTask", "TrainConfig", "TrainResult", "TrainTask", "run_train", "train"]

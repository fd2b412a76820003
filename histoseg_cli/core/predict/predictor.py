"""The gated segmenter behind every ``predict`` input: checkpoints in, window outputs out.

A :class:`Predictor` pairs the trained segmenter with its gate (the stage-1 classifier given
with ``--classifier``, else the segmenter's gate head when it has one) inside the inference
engine, and carries what outputs need from the checkpoint: class names, palette, patch size and
resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoseg_cli.core.errors import UsageError
from histoseg_cli.core.inference.card import ModelCard
from histoseg_cli.core.defaults import PRECISIONS, check_choice
from histoseg_cli.core.inference.engine import InferenceEngine, autocast_dtype
from histoseg_cli.core.inference.gate import GateConfig
from histoseg_cli.core.inference.loading import load_gated
from histoseg_cli.core.inference.onnx_runtime import OnnxEngine
from histoseg_cli.core.inference.tensorrt_runtime import TensorRTEngine
from histoseg_cli.core.models.checkpoint import resolve_checkpoint
from histoseg_cli.core.provenance import KEY, Provenance, file_sha256

log = logging.getLogger("histoseg")
#: Suffixes of exported models (``histoseg export``) that predict runs directly.
EXPORTED = (".onnx", ".engine")


@dataclass(frozen=True)
class PredictConfig:
    """How windows are run through the networks."""

    batch_size: int = 16
    precision: str = "auto"  # autocast: "auto" (bf16 on CUDA), "fp32", "bf16"
    compile: bool = False
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("must be at least 1", setting="batch_size")
        check_choice(self.precision, PRECISIONS, "precision")


@dataclass
class WindowOutput:
    """Network outputs for a batch of windows, on the engine's device."""

    probs: torch.Tensor  # (B, C, P, P) gated class probabilities
    gate: torch.Tensor | None  # (B, C) gate probabilities

    @property
    def labels(self) -> torch.Tensor:
        return self.probs.argmax(dim=1).to(torch.uint8)

    def to_host(self) -> HostOutput:
        """Start copying labels and gate to the host; on CUDA without waiting, so the next
        batch is queued before this one is written (:meth:`HostOutput.wait` first)."""
        cuda = self.probs.is_cuda
        labels = self.labels.to("cpu", non_blocking=cuda)
        gate = None if self.gate is None else self.gate.to("cpu", non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return HostOutput(labels, gate, event)


@dataclass
class HostOutput:
    """Labels (B, P, P) uint8 and gate (B, C) on the host, once :meth:`wait` returns."""

    labels: torch.Tensor
    gate: torch.Tensor | None
    event: Any = None

    def wait(self) -> HostOutput:
        if self.event is not None:
            self.event.synchronize()
        return self


class Predictor:
    """A gated segmenter ready to run on uint8 windows of its patch size: an engine (anything
    with ``device``, ``__call__`` and ``map`` giving ``{"probs", "gate"}``) and its card."""

    def __init__(self, engine: Any, card: ModelCard | None = None,
                 config: PredictConfig = PredictConfig()) -> None:
        self.engine = engine
        self.card = card or engine.card
        self.config = config
        self.provenance: Provenance | None = None  # what outputs record of how they were made

    @classmethod
    def load(cls, segmenter: Path, classifier: Path | None, device: torch.device,
             config: PredictConfig = PredictConfig()) -> Predictor:
        """Load the segmenter (and classifier) checkpoints, files or run directories, or an
        exported model (``.onnx``, ``.engine``) that carries its gate inside."""
        if segmenter.suffix.lower() in EXPORTED:
            return cls(open_exported(segmenter, classifier, device, config),
                       config=config)
        gated, card = load_gated(segmenter, classifier, device, config.gate, config.precision)
        # channels_last: measured faster for 224 px windows on CPU (oneDNN) as on CUDA
        engine = InferenceEngine.for_model(gated, None, device, config.precision,
                                           channels_last=True)
        if config.compile:
            engine.model = torch.compile(engine.model)
        if card.gate == "none" and config.gate.enabled:
            log.warning("no gate: %s has no gate head and no {classifier} was given; "
                        "predicting ungated", card.sources["segmenter"])
        return cls(engine, card, config)

    @property
    def gate_source(self) -> str:
        return self.card.gate

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def patch_size(self) -> int:
        return int(self.card.patch_size)

    @property
    def mpp(self) -> float | None:
        return self.card.mpp

    @property
    def palette(self) -> np.ndarray:
        """(C + 1, 3) uint8 colours, the last for background."""
        return self.card.palette_array()

    def __call__(self, windows: np.ndarray | torch.Tensor) -> WindowOutput:
        """Outputs for (B, P, P, 3) uint8 windows (through pinned memory on CUDA, so the copy
        to the device does not block)."""
        if self.engine.device.type == "cuda":
            windows = (torch.from_numpy(np.ascontiguousarray(windows))
                       if isinstance(windows, np.ndarray) else windows).pin_memory()
        out = self.engine(windows)
        return WindowOutput(out["probs"], out.get("gate"))

    def map(self, read: Callable[[tuple[int, int]], np.ndarray], start: int, stop: int
            ) -> Iterator[tuple[int, int, WindowOutput]]:
        """``(s, e, outputs)`` for rows ``[start, stop)`` in batches; ``read((s, e))`` gives
        the uint8 windows and runs ahead in a thread (decoding overlaps compute)."""
        for s, e, out in self.engine.map(read, stop, self.config.batch_size, start=start):
            yield s, e, WindowOutput(out["probs"], out.get("gate"))

    def describe(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """What produced a prediction (stored with it); ``settings``: this output's share of
        the run's settings (a slide's level-0 resolution)."""
        made = {} if self.provenance is None else {
            KEY: self.provenance.with_settings(settings or {}).as_dict()}
        return {**self.card.describe(), "device": str(self.engine.device), **made}

    def provenance_for(self, segmenter: Path, classifier: Path | None,
                       settings: dict[str, Any]) -> Provenance:
        """The models' content hashes and the settings that change this run's outputs."""
        dtype = autocast_dtype(self.config.precision, self.engine.device) \
            if isinstance(self.engine, InferenceEngine) else None
        models = {"segmenter": file_sha256(segmenter if segmenter.suffix.lower() in EXPORTED
                                           else resolve_checkpoint(segmenter)),
                  "classifier": None if classifier is None
                  else file_sha256(resolve_checkpoint(classifier))}
        gate = {"gate": self.gate_source, "gate_threshold": self.card.gate_threshold,
                "gate_enabled": self.config.gate.enabled}
        return Provenance("predict", models, {**gate, "precision": "bf16" if dtype else "fp32",
                                              **settings})


def open_exported(path: Path, classifier: Path | None, device: torch.device,
                  config: PredictConfig) -> Any:
    """The ONNX Runtime or TensorRT engine of an exported model; its gate is fixed inside."""
    if classifier is not None:
        raise UsageError(f"{path.name} carries its gate inside (exported with it); drop "
                         "{classifier}", setting="classifier")
    if path.suffix.lower() == ".onnx":
        engine = OnnxEngine.open(path, device)
    else:
        engine = TensorRTEngine.open(path)
    baked = engine.card.gate_threshold
    asked = config.gate.threshold if config.gate.enabled else None
    if engine.card.gate != "none" and baked != asked:
        raise UsageError(f"{{gate_threshold}}/{{no_gate}}: {path.name} was exported with the "
                         f"gate {'off' if baked is None else f'at {baked}'}; export it again "
                         "to change that")
    return engine

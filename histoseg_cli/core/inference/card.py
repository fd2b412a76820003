"""What a deployable gated segmenter says about itself, whatever runs it.

A checkpoint pair, an exported ONNX file and a TensorRT engine all describe the same things:
the classes and their colours, the patch size and resolution the model expects, the input
normalisation, where the gate comes from and its threshold, and what produced it. Prediction
reads outputs' names and colours from here; export writes it into ONNX metadata or an engine's
JSON sidecar, and reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from histoseg_cli import __version__

#: ONNX metadata_props key / sidecar field holding the card as JSON.
CARD_KEY = "histoseg"


@dataclass(frozen=True)
class ModelCard:
    """The description of a gated segmenter (JSON-serialisable)."""

    class_names: list[str]
    palette: list[list[int]]  # (C + 1) RGB rows, the last for background
    patch_size: int
    mpp: float | None = None
    gate: str = "none"  # "classifier", "head" or "none"
    gate_threshold: float | None = None  # applied threshold; None: not applied
    normalisation: dict[str, Any] = field(default_factory=dict)  # per network
    sources: dict[str, str | None] = field(default_factory=dict)  # checkpoint paths
    runtime: str = "pytorch"  # "pytorch", "onnx", "tensorrt"
    precision: str = "fp32"
    version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)  # runtime-specific (e.g. TensorRT build)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.uint8)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """A card from :meth:`to_json` output (unknown keys from newer versions ignored);
        ``ValueError`` when the text is not a card."""
        data = json.loads(text)
        if not isinstance(data, dict) or "class_names" not in data:
            raise ValueError("not a histoseg model description")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> dict[str, Any]:
        """What produced a prediction (stored with it)."""
        return {"segmenter": self.sources.get("segmenter"),
                "classifier": self.sources.get("classifier"), "gate": self.gate,
                "gate_threshold": self.gate_threshold,
                "gate_enabled": self.gate_threshold is not None,
                "runtime": self.runtime, "precision": self.precision}

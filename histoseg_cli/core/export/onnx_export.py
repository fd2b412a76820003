"""The fused gated segmenter as an ONNX file that ONNX Runtime and TensorRT's parser read.

Exported with ``torch.onnx.export`` (the dynamo exporter, opset 18: the maintained path, and
the smaller graph: constant-folded, no Identity/Shape chains), a dynamic batch axis and a
fixed patch size. The graph holds only operators TensorRT's ONNX parser supports
(Transpose, Cast, Conv, BatchNormalization, Resize, Softmax, ArgMax, Where, ...). ``fp16``
exports a float16 copy of the networks (normalisation and gating stay float32), inputs and
outputs as they are (uint8 in; uint8 labels, float32 probabilities out): a strongly typed
graph, as TensorRT 11 requires. The model card goes into the
file's ``metadata_props``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from histoseg_cli.core.atomic import atomic_path
from histoseg_cli.core.errors import HistosegError
from histoseg_cli.core.export.fused import INPUT, FusedGatedSegmenter
from histoseg_cli.core.inference.card import CARD_KEY, ModelCard

log = logging.getLogger("histoseg")
OPSET = 18


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise HistosegError("ONNX export needs the onnx extra: pip install 'histoseg-cli[onnx]'"
                            ) from None
    return onnx


def set_card(model: Any, card: ModelCard) -> None:
    """Make ``card`` the only entry of the ONNX ``model``'s metadata_props."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


def export_onnx(fused: FusedGatedSegmenter, card: ModelCard, path: Path, *,
                precision: str = "fp32", max_batch: int = 4096) -> Path:
    """Write ``fused`` as ONNX to ``path`` (atomically) with ``card`` in its metadata;
    ``fp16``: the networks' weights and activations in float16 (exported from a half copy, so
    every type in the graph is the exporter's own), normalisation and gating in float32."""
    onnx = _import_onnx()
    fused = copy.deepcopy(fused).cpu().eval()
    if precision == "fp16":
        fused.gated.segmenter.half()
        if fused.gated.classifier is not None:
            fused.gated.classifier.half()
    size = card.patch_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with atomic_path(path, sweep=True) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracing notes)
        program = torch.onnx.export(fused, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=fused.output_names,
                                    dynamic_shapes=({0: batch},), optimize=True,
                                    verbose=False)
        model = program.model_proto
        set_card(model, card)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    log.info("wrote %s (%d nodes, opset %d, %s)", path, len(model.graph.node), OPSET, precision)
    return path

"""INT8 ONNX for CPUs: ONNX Runtime's static quantizer, calibrated on real patches.

On a CPU, fp32 convolutions run in ONNX Runtime's kernels at about the speed of PyTorch's, so
the export itself buys little; 8-bit convolutions (VNNI on x86, dot-product instructions on
ARM) are where a CPU gets faster. The fp32 export is quantized with
``onnxruntime.quantization.quantize_static``: QDQ format (what ONNX Runtime fuses into integer
kernels and what TensorRT also reads), int8 per-channel weights in 7 bits, uint8 activations
whose ranges come from calibration patches (the training artifact, or ``--calib``) by their
min/max. The 7-bit weights (``reduce_range``) are what ONNX Runtime advises for CPUs without
VNNI, whose uint8 x int8 instruction saturates: on a 2-core AVX2-only EPYC the demo segmenter
kept 98.5% of PyTorch's labels with 8-bit weights and 99.6% with 7; an exported file may run
on either kind of CPU. (The
percentile method kept 98.9% of a GlaS segmenter's labels where min/max kept 98.6%, but it
holds every activation of every calibration patch in memory: 20 GB for the paper's networks on
32 patches.) Only convolutions are
quantized: the input normalisation, the gate's masked softmax and the argmax stay float32, so
the gating logic is exact. The result is verified against PyTorch like every export.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from histoseg_cli.core.atomic import atomic_path
from histoseg_cli.core.errors import HistosegError
from histoseg_cli.core.export.fused import INPUT
from histoseg_cli.core.export.onnx_export import set_card
from histoseg_cli.core.inference.card import ModelCard

log = logging.getLogger("histoseg")
#: Operators quantized; everything else (normalisation, gating, argmax) stays float32.
QUANTIZED_OPS = ("Conv",)


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise HistosegError("int8 export needs ONNX Runtime: pip install 'histoseg-cli[onnx]'"
                            ) from None
    return quantization


def _batches(patches: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(patches), batch_size):
        yield {INPUT: np.ascontiguousarray(patches[start:start + batch_size])}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints progress to stdout and advice to the root logger; stdout carries
    only results, and histoseg logs what was done itself, so both are dropped."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(fp32: Path, output: Path, card: ModelCard, calibration: np.ndarray,
                  batch_size: int = 8) -> Path:
    """Write an int8 (QDQ) copy of the fp32 export ``fp32`` to ``output`` (atomically),
    calibrated on ``calibration`` (N, P, P, 3) uint8 patches, with ``card`` in its metadata."""
    quantization = _quantization()
    import onnx

    class Reader(quantization.CalibrationDataReader):  # type: ignore[name-defined,misc]
        """Feeds the calibration patches batch by batch, as the quantizer asks."""

        def __init__(self) -> None:
            self.batches = _batches(calibration, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with atomic_path(output, sweep=True) as tmp:
        with _quiet():
            quantization.quantize_static(
                str(fp32), str(tmp), Reader(), quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax)
        model = onnx.load(str(tmp))
        set_card(model, card)
        onnx.save(model, str(tmp))
    log.info("wrote %s (int8 QDQ, calibrated on %d patches)", output, len(calibration))
    return output

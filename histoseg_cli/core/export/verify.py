"""Every export is checked against PyTorch on real patches before it is kept.

The exported file and the PyTorch gated segmenter label the same sample patches (from the
segmenter's training artifact, or ``--calib`` data); the share of pixels with the same label
and the largest difference of the gated probabilities are reported, and an fp32 export whose
agreement is below 99.9% is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import HistosegError, InputError

#: Least label agreement an export must reach, per precision (fp16 can overflow: a ResNet-38
#: with unlucky activations gives garbage in float16, and this is where it shows; int8 rounds
#: every convolution's input, which moves labels along class boundaries: a GlaS segmenter kept
#: 97.8-98.6% of its labels, and the same held-out mIoU, 0.605 int8 vs 0.603 PyTorch).
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}


@dataclass(frozen=True)
class Verification:
    """How an export compares with PyTorch on the sample patches."""

    patches: int
    agreement: float  # share of pixels with the same label
    max_prob_diff: float
    gate_max_diff: float | None
    source: str

    def as_dict(self) -> dict[str, object]:
        return {"patches": self.patches, "label_agreement": round(self.agreement, 6),
                "max_prob_diff": float(f"{self.max_prob_diff:.3g}"),
                "gate_max_diff": (None if self.gate_max_diff is None
                                  else float(f"{self.gate_max_diff:.3g}")),
                "source": self.source}


def sample_patches(path: Path, count: int, patch_size: int, seed: int = 0) -> np.ndarray:
    """``count`` patches spread over the patches artifact at ``path``."""
    with Artifact(path) as artifact:
        if "patches" not in artifact.datasets:
            raise InputError(path, f"a {artifact.kind} artifact without patches; expected "
                             "patches to verify the export on")
        if artifact.meta.patch_size != patch_size:
            raise InputError(path, f"has {artifact.meta.patch_size} px patches; the model "
                             f"takes {patch_size} px")
        n = len(artifact)
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(n, size=min(count, n), replace=False))
        return artifact.dataset("patches")[index]


def compare(reference: dict[str, torch.Tensor], exported: dict[str, torch.Tensor]
            ) -> tuple[float, float, float | None]:
    """Label agreement, max probability difference, max gate difference of one batch."""
    labels = reference["probs"].argmax(1).cpu() == exported["labels"].cpu().long()
    probs = (reference["probs"].cpu() - exported["probs"].cpu().float()).abs().max().item()
    gate = None
    if "gate" in reference and "gate" in exported:
        gate = (reference["gate"].cpu() - exported["gate"].cpu().float()).abs().max().item()
    return labels.float().mean().item(), probs, gate


def verify(reference, exported, patches: np.ndarray, source: str,  # noqa: ANN001
           precision: str, batch_size: int = 8) -> Verification:
    """Run both engines (callables: uint8 batch -> outputs) on ``patches`` and compare; an
    export below its precision's :data:`MIN_AGREEMENT` raises."""
    agree, pixels, worst, worst_gate = 0.0, 0, 0.0, None
    for s in range(0, len(patches), batch_size):
        batch = patches[s:s + batch_size]
        a, p, g = compare(reference(batch), exported(batch))
        n = batch.shape[0] * batch.shape[1] * batch.shape[2]
        agree, pixels, worst = agree + a * n, pixels + n, max(worst, p)
        if g is not None:
            worst_gate = max(worst_gate or 0.0, g)
    result = Verification(len(patches), agree / max(pixels, 1), worst, worst_gate, source)
    least = MIN_AGREEMENT[precision]
    if result.agreement < least:
        hint = "; try {precision} fp32" if precision != "fp32" else ""
        raise HistosegError(f"the export labels only {result.agreement:.4%} of pixels like "
                            f"PyTorch on {result.patches} patches of {source} (at least "
                            f"{least:.1%} expected for {precision}); not kept{hint}")
    return result

"""The reference implementation's Grad-CAM loop, kept as the baseline to measure against.

Batch 1; for every layer and every class a fresh forward pass and a full ``backward()``
(weight gradients included) with the layer's activation gradient retained: 3 x C passes per
patch. Used by benchmarks/bench_cams.py and by the tests proving :func:`gradcam` equivalent
(``layercam=True``: the same loop with Layer-CAM's position-wise weights, written out on its
own rather than through the batched code's helpers).
"""

from __future__ import annotations

import torch

from histoseg_cli.core.models.base import PatchClassifier


def naive_gradcam(model: PatchClassifier, x: torch.Tensor, layercam: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Raw Grad-CAM (or Layer-CAM) maps (B, C, h, w) per CAM layer, one patch, layer and
    class at a time."""
    names = model.backbone.cam_layers
    maps: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.enable_grad():
        for i in range(x.shape[0]):
            patch = x[i:i + 1].detach().requires_grad_(True)
            for name in names:
                per_class = []
                for k in range(model.num_classes):
                    model.zero_grad(set_to_none=True)
                    logits, acts = model.forward_layers(patch)
                    act = acts[name]
                    act.retain_grad()
                    logits[0, k].backward()
                    if layercam:
                        cam = torch.relu((torch.relu(act.grad) * act).sum(dim=1))
                    else:
                        cam = (act.grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1)
                    per_class.append(cam.detach())
                maps[name].append(torch.cat(per_class)[None])
    model.zero_grad(set_to_none=True)
    return {n: torch.cat(maps[n]) for n in names}

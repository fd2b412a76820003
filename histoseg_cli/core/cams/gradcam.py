"""Batched multi-layer Grad-CAM: all classes and all three layers from one forward pass.

Grad-CAM of class k at a layer with activation A: w_c = spatial mean of d logit_k / d A_c,
map = sum_c w_c A_c (no ReLU, as in the reference). Two facts make it cheap:

* At the final layer the gradient is known in closed form: logit_k = fc8_k . mean_hw(A), so
  d logit_k / d A = fc8_k / (H W) everywhere and the map is ``conv1x1(A, fc8) / (H W)``.
* The classifier runs in eval mode (BatchNorm on running statistics), so patches do not
  interact: the gradient of ``sum_b logit_{b,k}`` gives every patch's own gradient at once.

So one forward pass and one backward pass per class (only back to the shallowest CAM layer,
only with respect to the two activations, never the weights) replace the reference's
batch-1 loop of one forward and backward per class per layer. With ``vectorize=True`` the C
backward passes run as one through ``is_grads_batched`` (vmap over the class dimension).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from histoseg_cli.core.models.base import PatchClassifier


def final_layer_cams(features: torch.Tensor, fc8_weight: torch.Tensor) -> torch.Tensor:
    """Closed-form Grad-CAM (B, C, h, w) of the pooled feature map ``features`` (B, D, h, w)."""
    h, w = features.shape[-2:]
    return F.conv2d(features, fc8_weight) / (h * w)


def _weighted(grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """sum_c mean_hw(grad_c) * act_c for grad (..., B, D, h, w) -> (..., B, h, w)."""
    return torch.einsum("...bd,bdhw->...bhw", grad.mean(dim=(-2, -1)), act)


def gradcam(model: PatchClassifier, x: torch.Tensor, *, vectorize: bool = False
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (B, C) and raw Grad-CAM maps (B, C, h, w) per CAM layer, shallow to deep.

    ``model`` must be in eval mode (see the module docstring); ``x`` is the normalised input.
    """
    if model.training:
        raise ValueError("Grad-CAM needs the classifier in eval mode (model.eval())")
    names = model.backbone.cam_layers
    with torch.enable_grad():
        # the input requires grad so the activations are in the graph even when the loaded
        # weights are frozen; nothing ever asks for its gradient
        logits, acts = model.forward_layers(x.detach().requires_grad_(True))
        maps = {names[-1]: final_layer_cams(acts[names[-1]].detach(), model.fc8.weight.detach())}
        shallow = [acts[n] for n in names[:-1]]
        num_classes = logits.shape[1]
        if vectorize:
            eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
            seeds = eye[:, None, :].expand(num_classes, logits.shape[0], num_classes)
            grads = torch.autograd.grad(logits, shallow, grad_outputs=seeds,
                                        is_grads_batched=True)
            for name, act, grad in zip(names[:-1], shallow, grads):
                maps[name] = _weighted(grad, act.detach()).transpose(0, 1)
        else:
            per_class: list[list[torch.Tensor]] = [[] for _ in shallow]
            for k in range(num_classes):
                grads = torch.autograd.grad(logits[:, k].sum(), shallow,
                                            retain_graph=k < num_classes - 1)
                for out, act, grad in zip(per_class, shallow, grads):
                    out.append(_weighted(grad, act.detach()))
            for name, out in zip(names[:-1], per_class):
                maps[name] = torch.stack(out, dim=1)
    return logits.detach(), {n: maps[n] for n in names}

"""Starting weights for a backbone: a local file, or ImageNet weights fetched on request.

Accepted files: a PyTorch state dict (plain, ``module.``/``backbone.`` prefixed, or a histoseg
classifier checkpoint) and, for ResNet-38, the original MXNet "A1" ``.params`` file. Nothing is
downloaded unless the user says ``--pretrained imagenet``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from histoseg_cli.core.errors import HistosegError, InputError, UsageError
from histoseg_cli.core.models.checkpoint import FORMAT, LEGACY_FORMATS
from histoseg_cli.core.models.base import Backbone
from histoseg_cli.core.models.mxnet_params import load_resnet38d_params
from histoseg_cli.core.models.timm_backbones import TimmBackbone

log = logging.getLogger("histoseg")

_PREFIXES = ("module.", "backbone.", "_orig_mod.")
A1_HINT = ("download the MXNet 'A1' weights (ilsvrc-cls_rna-a1_cls1000_ep-0001.params, "
           "from the ademxapp project) and pass --pretrained PATH")


def load_pretrained(backbone: Backbone, spec: str) -> None:
    """Load ``spec`` ("imagenet" or a file path) into ``backbone`` in place."""
    if spec == "imagenet":
        state = _imagenet_state(backbone)
        source = "ImageNet"
    else:
        path = Path(spec)
        if not path.is_file():
            raise InputError(path, "no such file (expected a state dict, a histoseg checkpoint "
                             "or an MXNet .params file, or the word 'imagenet')")
        state = _read_file(path, backbone)
        source = str(path)
    matched = _match(state, backbone.state_dict())
    missing = [k for k in backbone.state_dict() if k not in matched
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(spec, f"{len(missing)} backbone parameters missing (e.g. "
                         f"{', '.join(missing[:3])}); expected weights for "
                         f"{type(backbone).__name__}")
    target = backbone.state_dict()
    for key, value in matched.items():
        if value.shape != target[key].shape:
            raise InputError(spec, f"'{key}' has shape {tuple(value.shape)}, expected "
                             f"{tuple(target[key].shape)} (weights of another architecture?)")
    backbone.load_state_dict(matched, strict=False)
    log.info("loaded %d backbone tensors from %s", len(matched), source)


def _read_file(path: Path, backbone: Backbone) -> dict[str, torch.Tensor]:
    if path.suffix == ".params":
        if not backbone.mxnet_weights:
            raise UsageError(f"{path}: MXNet .params weights are for resnet38d only")
        return load_resnet38d_params(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not weights"
        raise InputError(path, f"not a PyTorch state dict ({type(err).__name__})") from None
    if isinstance(obj, dict) and obj.get("format") in (FORMAT, *LEGACY_FORMATS):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict (expected a mapping of names to tensors)")
    return obj


def _match(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """Source tensors keyed by target names, tolerating wrapper and encoder prefixes."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        for candidate in (key, f"encoder.{key}"):
            if candidate in target:
                out[candidate] = value
                break
    return out


def _imagenet_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    if not isinstance(backbone, TimmBackbone):
        raise UsageError(f"no downloadable ImageNet weights for {type(backbone).__name__}: "
                         + A1_HINT)
    import timm

    try:
        model = timm.create_model(backbone.model_name, pretrained=True, features_only=True,
                                  out_indices=(-3, -2, -1), output_stride=backbone.output_stride)
    except Exception as err:  # noqa: BLE001 - network, hub or cache errors all mean "no weights"
        raise HistosegError(f"could not get ImageNet weights for {backbone.model_name} "
                            f"({type(err).__name__}; offline?): connect once to cache them, or "
                            "pass --pretrained PATH to a local state dict") from None
    return {f"encoder.{k}": v for k, v in model.state_dict().items()}

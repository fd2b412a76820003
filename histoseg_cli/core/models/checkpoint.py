"""Self-describing checkpoints: one format for every trained network, with a ``task`` field.

A checkpoint holds the weights plus an info record (a :class:`ModelInfo` subclass: class names,
palette, input normalisation, patch size, resolution, training config, package version and the
task's architecture fields), so later stages need nothing but the file. Each task registers its
info class and how to rebuild its network (:func:`register_task`), so loading is one function
for every task. Training state (optimizer, LR schedule) rides along for ``--resume`` and is
ignored by :func:`load_model`. Files are written atomically. Classifier checkpoints of the
first format (``histoseg.classifier``) still load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from histoseg_cli import __version__
from histoseg_cli.core.atomic import atomic_path
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.models.preprocess import InputNorm

FORMAT = "histoseg.checkpoint"
FORMAT_VERSION = 2
#: Earlier formats that are read as a given task.
LEGACY_FORMATS = {"histoseg.classifier": "classifier"}
LAST = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class ModelInfo:
    """What every trained network records; tasks add their architecture fields."""

    task: ClassVar[str] = ""
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] | None = None  # (C + 1) RGB rows, the last for background
    normalisation: str | dict[str, list[float]] = "scale01"
    patch_size: int = 224
    mpp: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: the artifacts the run actually read ("train", "val"): absolute path, names_sha256,
    #: num_patches; found from any working directory, e.g. by export's verification
    data: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps completed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_norm(self) -> InputNorm:
        return InputNorm.from_spec(self.normalisation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class CheckpointTask:
    """A registered task: its info class and how to build an untrained network from it."""

    name: str
    info: type[ModelInfo]
    build: Callable[[Any], nn.Module]
    produced_by: str  # the training command, for messages


TASKS: dict[str, CheckpointTask] = {}


def register_task(name: str, info: type[ModelInfo], build: Callable[[Any], nn.Module],
                  produced_by: str) -> None:
    """Make checkpoints of ``name`` loadable."""
    TASKS[name] = CheckpointTask(name, info, build, produced_by)


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode) and its description."""

    model: nn.Module
    info: Any  # the task's ModelInfo subclass
    path: Path

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def input_norm(self) -> InputNorm:
        return self.info.input_norm


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo,
                    training: dict[str, Any] | None = None) -> Path:
    """Write weights + ``info`` (+ optional training state) to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                               "task": info.task, "info": asdict(info), "model": state}
    if training is not None:
        payload["training"] = training
    with atomic_path(path, sweep=True) as tmp, open(tmp, "wb") as file:
        sink = _KeepWriteError(file)
        try:
            torch.save(payload, sink)
        except RuntimeError:
            if sink.error is not None:  # e.g. a full disk: say so, naming the checkpoint
                raise sink.error from None
            raise
    return Path(path)


class _KeepWriteError:
    """The file ``torch.save`` writes through, keeping the OS error of a failed write:
    torch reports one (a full disk) only as "unexpected pos" in a RuntimeError."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def resolve_checkpoint(path_or_run_dir: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file: the path itself, or in a run dir ``best.pt`` (when ``prefer`` is
    "best" and it exists) else ``checkpoint.pt``."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        order = (BEST, LAST) if prefer == "best" else (LAST,)
        for name in order:
            if (path / name).is_file():
                return path / name
        raise InputError(path, f"no {LAST} in this folder; expected a training run directory")
    if not path.is_file():
        raise InputError(path, "no such file (expected a histoseg checkpoint or run directory)")
    return path


def torch_load(path: Path, not_what: str = "not a PyTorch state dict") -> Any:
    """The one ``torch.load`` of the package (checkpoints and weight files alike): tensors
    only, so loading a file runs no code; a file that is not one is ``InputError`` saying
    ``not_what``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not weights"
        raise InputError(path, f"{not_what} ({type(err).__name__})") from None


def read_checkpoint(path: Path, task: str | None = None) -> dict[str, Any]:
    """The raw checkpoint payload, validated; ``payload["task"]`` is always set. ``task``
    only sharpens the messages (what the caller was expecting)."""
    what = f"histoseg {task} checkpoint" if task else "histoseg checkpoint"
    made_by = TASKS[task].produced_by if task in TASKS else "a histoseg training command"
    payload = torch_load(path, f"not a {what}")
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt in LEGACY_FORMATS:
        payload["task"] = LEGACY_FORMATS[fmt]
    elif fmt != FORMAT:
        raise InputError(path, f"not a {what} (expected {made_by} output)")
    elif int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, "written by a newer histoseg; upgrade histoseg to read it")
    if payload.get("task") not in TASKS:
        raise InputError(path, f"checkpoint of unknown task {payload.get('task')!r} (this "
                         f"histoseg knows {', '.join(TASKS)}): upgrade histoseg")
    return payload


def load_model(path_or_run_dir: str | Path, device: str | torch.device = "cpu",
               prefer: str = "best", task: str | None = None) -> LoadedModel:
    """Load any trained network in eval mode on ``device``; ``task`` asks for one kind."""
    path = resolve_checkpoint(path_or_run_dir, prefer)
    payload = read_checkpoint(path, task)
    spec = TASKS[payload["task"]]
    if task is not None and spec.name != task:
        raise InputError(path, f"is a {spec.name} checkpoint (from {spec.produced_by}); "
                         f"expected a {task} checkpoint (from {TASKS[task].produced_by})")
    info = spec.info.from_dict(payload["info"])
    try:
        model = spec.build(info)
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(path, f"cannot rebuild the network ({err})") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the recorded architecture: "
                         f"{str(err).splitlines()[0]}") from None
    return LoadedModel(model.to(device).eval(), info, path)

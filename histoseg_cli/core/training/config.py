"""The options of a training run as serialisable dataclasses: the loop's own, and one subclass
per task (the classifier's and the segmenter's), side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from histoseg_cli.core.errors import UsageError
from histoseg_cli.core.defaults import PRECISIONS
from histoseg_cli.core.models.classifier import UNRECORDED_STRIDE
from histoseg_cli.core.models.pda import PDA_FORMS, MuSchedule
from histoseg_cli.core.models.segmenter import ATROUS_RATES

#: Options that may differ when a run is resumed (where and how fast, not what is trained).
RUNTIME_FIELDS = ("data", "val", "run_dir", "device", "workers", "precision", "channels_last",
                  "compile", "resume", "overwrite")

#: Learning rates when --lr is not given: the paper's 0.01, except for a classifier started
#: from pretrained weights. There 0.01 wipes the ImageNet weights out (EfficientNet-Lite0 on the
#: demo data: loss 9-22, F1 0) and 0.001 fine-tunes them (F1 0.88 in 3 epochs). A segmenter's
#: ImageNet encoder under its fresh decoder needs the paper's rate (GlaS, fully supervised,
#: Lite0: held-out mIoU 0.733 at 0.001, 0.755 at 0.003, 0.780 at 0.01; docs/benchmarks.md).
PAPER_LR = 0.01
FINE_TUNE_LR = 0.001


def channels_last_default(device_type: str, precision: str, depthwise: bool) -> bool:
    """The training layout unless ``--[no-]channels-last`` says (see use_channels_last)."""
    return device_type == "cuda" or precision == "bf16" or depthwise


@dataclass
class TrainConfig:
    """What the one training loop needs, whatever it trains. Values are checked on creation
    (``UsageError`` naming the setting)."""

    data: str
    run_dir: str
    val: str | None = None
    dataset: str | None = None  # layout of a dataset folder given as data/val
    pretrained: str | None = None  # "imagenet" or a weights file
    epochs: int = 20
    batch_size: int = 20  # global: split across distributed processes
    lr: float | None = None  # None: PAPER_LR, or pretrained_lr with pretrained weights
    head_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: see use_channels_last
    compile: bool = False
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    overwrite: bool = False

    #: the learning rate when --lr is not given and training starts from pretrained weights
    pretrained_lr: ClassVar[float] = PAPER_LR

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = self.pretrained_lr if self.pretrained else PAPER_LR
        for ok, setting, message in self.checks():
            if not ok:
                raise UsageError(message, setting)

    def checks(self) -> list[tuple[bool, str, str]]:
        """``(valid, setting, message)`` per setting; subclasses add their own."""
        return [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be positive"),
            (self.precision in PRECISIONS, "precision",
             f"'{self.precision}' is not one of {', '.join(PRECISIONS)}"),
            (self.workers >= 0, "workers", "must be >= 0"),
            (not (self.resume and self.overwrite), "resume",
             "{resume} and {overwrite} exclude each other"),
        ]

    def use_channels_last(self, device_type: str, depthwise: bool = False) -> bool:
        """Unless set: on CUDA; on CPU with bf16 (oneDNN's bf16 kernels prefer it: 1.2x per
        train-cls epoch, 1.1x train-seg, on a 2-core Sapphire Rapids) or when the backbone
        or encoder has ``depthwise`` convolutions (EfficientNet-Lite0 in fp32 there: 1.11x
        per train-cls step, 1.23x train-seg). Not for dense fp32 ones: ResNet-38 and the
        ResNet-101 segmenter train 0.88x / 0.93x as fast in it (resnet10t 1.2x)."""
        if self.channels_last is not None:
            return self.channels_last
        return channels_last_default(device_type, self.precision, depthwise)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed_from(self, saved: dict[str, Any]) -> TrainConfig:
        """The saved run's training options with this invocation's runtime options."""
        return replace(type(self).from_dict(saved),
                       **{name: getattr(self, name) for name in RUNTIME_FIELDS})


@dataclass
class ClassifierConfig(TrainConfig):
    """A train-cls run. Defaults are the paper's stage-1 recipe (see docs/method.md)."""

    pretrained_lr: ClassVar[float] = FINE_TUNE_LR
    backbone: str = "resnet38d"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    output_stride: int | None = None  # 8 or 16; None: the backbone's own (registry default)
    dropout: float = 0.5
    pda: str = "normalised"  # a PDA form (models.pda.PDA_FORMS) or "off"
    mu: MuSchedule = field(default_factory=MuSchedule)
    flips: bool = True
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter, 0 = off
    input_scale: float = 1.0  # the network resizes its inputs by this factor first

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        # a run saved before the stride was an option was built at 8; resume it so
        return super().from_dict({"output_stride": UNRECORDED_STRIDE, **data})

    def __post_init__(self) -> None:
        if isinstance(self.mu, dict):
            self.mu = MuSchedule(**self.mu)
        if isinstance(self.pda, bool):  # runs saved before the forms: on = normalised
            self.pda = "normalised" if self.pda else "off"
        super().__post_init__()

    def checks(self) -> list[tuple[bool, str, str]]:
        from histoseg_cli.core.models.base import BACKBONES

        entry = BACKBONES.get(self.backbone)
        stride_error = (entry and self.output_stride is not None
                        and entry.stride_error(self.backbone, self.output_stride))
        return [*super().checks(),
                (0 <= self.dropout < 1, "dropout", "must be in [0, 1)"),
                (self.pda in (*PDA_FORMS, "off"), "pda",
                 f"choose one of {', '.join((*PDA_FORMS, 'off'))}"),
                (0 <= self.color_jitter < 1, "color_jitter", "must be in [0, 1)"),
                (0.25 <= self.input_scale <= 4, "input_scale", "must be in [0.25, 4]"),
                (self.backbone in BACKBONES, "backbone",
                 f"unknown backbone '{self.backbone}'; choose one of "
                 f"{', '.join(sorted(BACKBONES))}"),
                (not self.backbone_kwargs.get("width") or self.backbone == "resnet38d",
                 "width", "applies to {backbone} resnet38d only"),
                (not stride_error, "output_stride", stride_error or "")]


@dataclass
class SegmenterConfig(TrainConfig):
    """A train-seg run. Defaults are the paper's stage-3 recipe (see docs/method.md)."""

    epochs: int = 30
    pseudo: str | None = None  # pseudo-masks artifact; None with masks=True
    masks: bool = False  # fully supervised on the artifact's ground-truth masks
    layers: list[str] | None = None  # CAM layers to learn from (default: all)
    lambdas: list[float] | None = None  # their weights (default: 0.2/0.2/0.6 shallow to deep)
    encoder: str = "resnet101"
    output_stride: int = 16
    gate_head: bool = False
    gate_weight: float = 0.4
    classifier: str | None = None  # stage-1 checkpoint to compare the gate head with
    hflip: bool = True
    vflip: bool = True
    blur: float = 0.5  # probability of a random Gaussian blur
    samples: int = 4  # validation patches drawn per epoch in samples/

    def checks(self) -> list[tuple[bool, str, str]]:
        return [*super().checks(),
                ((self.pseudo is None) == self.masks, "masks",
                 "give PSEUDO (pseudo masks from cams) or {masks}, not both"),
                (self.output_stride in ATROUS_RATES, "output_stride", "must be 8 or 16"),
                (self.lambdas is None or all(v >= 0 for v in self.lambdas), "lambdas",
                 "weights must be >= 0"),
                (self.lambdas is None or sum(self.lambdas) > 0, "lambdas",
                 "at least one weight must be positive"),
                (0 <= self.blur <= 1, "blur", "must be a probability in [0, 1]"),
                (self.gate_weight >= 0, "gate_weight", "must be >= 0"),
                (self.classifier is None or self.gate_head, "classifier",
                 "compares with the gate head; add {gate_head}")]

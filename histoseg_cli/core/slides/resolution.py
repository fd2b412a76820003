"""Which pyramid level to read, and how much to shrink it, for a target mpp or magnification.

Magnification and mpp are tied by the usual convention 10x = 1.0 um/px (20x = 0.5, 40x = 0.25).
The slide's own resolution comes from its recorded mpp, else its objective power, else
``source_mpp`` (given for the slides of a cohort that record none; ``force`` applies it to every
slide, for a file that records a wrong one); a slide with none of these cannot be tiled at a
physical resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.slides.reader import SlideInfo

MPP_AT_10X = 1.0
#: Scale differences below this are treated as none (no resampling, level used as is).
TOLERANCE = 0.02


@dataclass(frozen=True)
class Target:
    """The resolution patches are wanted at: exactly one of ``mpp`` or ``magnification``."""

    mpp: float | None = None
    magnification: float | None = None

    def __post_init__(self) -> None:
        if (self.mpp is None) == (self.magnification is None):
            raise UsageError("give one of {mpp} or {magnification}, not both")
        if (self.mpp or 1.0) <= 0 or (self.magnification or 1.0) <= 0:
            raise UsageError("{mpp} and {magnification} must be positive")

    def describe(self) -> str:
        return f"{self.mpp:g} mpp" if self.mpp is not None else f"{self.magnification:g}x"


@dataclass(frozen=True)
class Resolution:
    """How one slide is read for one target."""

    source_mpp: float  # um/px at level 0
    source_magnification: float
    source_origin: str  # "recorded mpp", "objective power" or "given"
    downsample: float  # level-0 pixels per target pixel
    level: int  # pyramid level read
    level_downsample: float

    @property
    def scale(self) -> float:
        """Level pixels per target pixel (1.0: the level is used as is)."""
        return self.downsample / self.level_downsample

    @property
    def mpp(self) -> float:
        return self.source_mpp * self.downsample

    @property
    def magnification(self) -> float:
        return self.source_magnification / self.downsample


def _source(info: SlideInfo, source_mpp: float | None, force: bool = False
            ) -> tuple[float, float, str]:
    if source_mpp is not None and source_mpp <= 0:
        raise UsageError("{source_mpp} must be positive")
    if source_mpp is not None and (force or (info.mpp is None and info.objective_power is None)):
        return source_mpp, MPP_AT_10X * 10 / source_mpp, "given"
    if info.mpp is not None:
        power = info.objective_power or MPP_AT_10X * 10 / info.mpp
        return info.mpp, power, "recorded mpp"
    if info.objective_power is not None:
        return MPP_AT_10X * 10 / info.objective_power, info.objective_power, "objective power"
    raise InputError(info.path, "the slide records no resolution (no mpp, no objective power); "
                     "pass {source_mpp} with its level-0 um/px (e.g. 0.25 for 40x, 0.5 for 20x)")


def choose_resolution(info: SlideInfo, target: Target, source_mpp: float | None = None,
                      force: bool = False) -> Resolution:
    """The coarsest level at or finer than ``target`` and the remaining downsample."""
    mpp0, mag0, origin = _source(info, source_mpp, force)
    if target.mpp is not None:
        downsample = target.mpp / mpp0
    else:
        assert target.magnification is not None
        downsample = mag0 / target.magnification
    if downsample < 1 - TOLERANCE:
        raise InputError(info.path, f"target {target.describe()} is finer than the slide's "
                         f"level 0 ({mpp0:g} mpp, {mag0:g}x; from {origin}); choose a coarser "
                         "{mpp} or a lower {magnification}")
    levels = info.level_downsamples
    level = max((i for i, d in enumerate(levels) if d <= downsample * (1 + TOLERANCE)), default=0)
    if abs(downsample / levels[level] - 1) <= TOLERANCE:
        downsample = levels[level]
    return Resolution(mpp0, mag0, origin, downsample, level, levels[level])

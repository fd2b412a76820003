"""One slide -> one artifact (patches + level-0 coords) and its preview PNG.

The artifact is written through ``ArtifactWriter`` (hidden partial file renamed when complete),
the preview just before that rename, so a slide is either fully done or absent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from functools import partial
from pathlib import Path

import numpy as np

from histoseg_cli.core.data.format import ArtifactMeta

from histoseg_cli.core.data.writer import ENCODABLE, ArtifactWriter, encode_patches
from histoseg_cli.core.defaults import MAGNIFICATION, MIN_TISSUE, THUMBNAIL_SIZE
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.provenance import Provenance
from histoseg_cli.core.imageio import save_png
from histoseg_cli.core.slides.preview import render_preview
from histoseg_cli.core.slides.reader import SlideReader
from histoseg_cli.core.slides.resolution import Resolution, Target, choose_resolution
from histoseg_cli.core.slides.tiler import Encode, Grid, Strip, plan_strips
from histoseg_cli.core.slides.tissue import (TissueConfig, TissueMask, detect_tissue,
                                              tile_fractions)

log = logging.getLogger("histoseg")

#: ``progress(done, total)`` in tiles.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SlideConfig:
    """How slides are tiled."""

    target: Target = field(default_factory=lambda: Target(magnification=MAGNIFICATION))
    source_mpp: float | None = None  # level-0 um/px of slides that record no resolution
    force_source_mpp: bool = False  # source_mpp for every slide (a recorded one is wrong)
    patch_size: int = 224
    stride: int | None = None  # None: the patch size (no overlap)
    min_tissue: float = MIN_TISSUE  # keep tiles with at least this tissue fraction
    thumbnail_size: int = THUMBNAIL_SIZE  # longer side of the thumbnail for tissue detection
    tissue: TissueConfig = field(default_factory=TissueConfig)
    #: HDF5 filter for patches: "gzip" (the artifact default; chunks are encoded where the
    #: strips are read, in the workers), None or "lzf" (compressed by the writer process).
    compression: str | None = "gzip"

    @classmethod
    def with_defaults(cls, *, compression: str | None = "gzip", **options: object
                      ) -> SlideConfig:
        """A config from a command's options: those left out (``None``) take the defaults
        above, so ``tile`` and ``predict`` share them. (``compression`` is apart: ``None``
        means raw chunks there.)"""
        return cls(compression=compression,  # type: ignore[arg-type]
                   **{k: v for k, v in options.items() if v is not None})

    def settings(self) -> dict[str, object]:
        """The settings that change which tiles a slide gives and what they hold (not how
        they are stored): what outputs made from slides record of how they were made. Each
        slide's output replaces the level-0 part with its own (``TilePlan.level0_settings``):
        ``source_mpp`` counts only for the slides it was used for, so a rerun that adds it
        for the slides that need it keeps the others' outputs."""
        return {"resolution": self.target.describe(), **self.level0_settings(False),
                "patch_size": self.patch_size, "stride": self.stride or self.patch_size,
                "min_tissue": self.min_tissue, "thumbnail_size": self.thumbnail_size,
                "tissue": asdict(self.tissue)}

    def level0_settings(self, given: bool) -> dict[str, object]:
        """The level-0 resolution settings one slide's output records (``settings``)."""
        forced = {"force_source_mpp": True} if self.force_source_mpp else {}
        return {"source_mpp": self.source_mpp if given else None, **forced}

    def wanted(self, made: Provenance) -> Callable[[dict[str, Any] | None], Provenance]:
        """What a rerun that makes ``made`` wants of each complete output, given the
        provenance it records: ``made`` with the level-0 settings of that output's slide.
        ``source_mpp`` applies to it when forced or when it applied then (whether a slide
        records its resolution does not change between runs)."""
        def of(recorded: dict[str, Any] | None) -> Provenance:
            settings = (recorded or {}).get("settings") or {}
            given = self.force_source_mpp or settings.get("source_mpp") is not None
            return made.with_settings(self.level0_settings(given))
        return of

    def provenance(self) -> Provenance:
        """What a tile run records of how its artifacts were made (each with its slide's
        level-0 settings)."""
        return Provenance("tile", {}, self.settings())

    def __post_init__(self) -> None:
        if self.patch_size < 8:
            raise UsageError("{patch_size} must be at least 8")
        if self.stride is not None and self.stride < 1:
            raise UsageError("{stride} must be positive")
        if self.force_source_mpp and self.source_mpp is None:
            raise UsageError("{force_source_mpp} needs {source_mpp} (the level-0 um/px to use)")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise UsageError("{min_tissue} must be between 0 and 1")
        if self.thumbnail_size < 64:
            raise UsageError("{thumbnail_size} must be at least 64")
        if self.compression not in (None, "gzip", "lzf"):
            raise UsageError(f"{{compression}} {self.compression}: expected none, gzip or lzf")

    @property
    def step(self) -> int:
        return self.stride or self.patch_size


@dataclass
class SlideResult:
    """What tiling one slide produced."""

    slide: Path
    output: Path
    preview: Path
    patches: int
    grid_tiles: int
    resolution: Resolution
    tissue_fraction: float
    seconds: float  # the whole slide: opening, tissue detection, tiling, writing
    stream_seconds: float  # reading and writing the tiles only

    @property
    def tiles_per_s(self) -> float:
        """Streaming rate (what the progress bar shows)."""
        return self.patches / max(self.stream_seconds, 1e-9)


def _coords_attrs(name: str, config: SlideConfig, res: Resolution, reader: SlideReader,
                  grid: Grid) -> dict[str, object]:
    """Attributes of ``coords`` that CLAM and TRIDENT read, plus ours."""
    level_dim = reader.info.level_dimensions[res.level]
    return {
        "patch_size": config.patch_size,  # side at the target resolution (as stored)
        "patch_level": res.level,
        "downsample": np.array([res.level_downsample] * 2, dtype=np.float64),
        "level_dim": np.array(level_dim, dtype=np.int64),
        "downsampled_level_dim": np.array(level_dim, dtype=np.int64),
        "patch_size_level0": round(config.patch_size * res.downsample),
        "target_downsample": res.downsample,
        "target_mpp": res.mpp,
        "target_magnification": res.magnification,
        "level0_mpp": res.source_mpp,
        "level0_magnification": res.source_magnification,
        "stride": grid.stride,
        "overlap": config.patch_size - grid.stride,
        "name": name,
    }


@dataclass
class TilePlan:
    """Where a slide's tiles are, before any pixel of them is read."""

    resolution: Resolution
    grid: Grid
    thumbnail: np.ndarray
    tissue: TissueMask
    thumbnail_scale: tuple[float, float]  # level-0 pixels per thumbnail pixel (x, y)
    tiles: np.ndarray  # (N, 2) kept origins in target pixels, grid order
    level0_settings: dict[str, object]  # what its outputs record of the level-0 resolution

    @property
    def coords(self) -> np.ndarray:
        """Kept origins in level-0 pixels."""
        return np.round(self.tiles * self.resolution.downsample).astype(np.int64)

    @property
    def tile_size_level0(self) -> float:
        return self.grid.patch_size * self.resolution.downsample


def plan_tiles(reader: SlideReader, config: SlideConfig) -> TilePlan:
    """Resolution, grid, tissue mask and kept tiles of an open slide."""
    res = choose_resolution(reader.info, config.target, config.source_mpp,
                            config.force_source_mpp)
    w0, h0 = reader.info.dimensions
    grid = Grid(config.patch_size, config.step, int(w0 / res.downsample),
                int(h0 / res.downsample))
    if grid.width < grid.patch_size or grid.height < grid.patch_size:
        raise InputError(reader.path, f"slide is {grid.width}x{grid.height} px at "
                         f"{res.mpp:.3g} mpp, smaller than one {config.patch_size} px patch")
    thumbnail = reader.thumbnail(config.thumbnail_size)
    mask = detect_tissue(thumbnail, config.tissue)
    scale = (w0 / thumbnail.shape[1], h0 / thumbnail.shape[0])
    origins = grid.origins()
    size0 = config.patch_size * res.downsample
    fractions = tile_fractions(mask.tissue, scale, origins[:, 0] * res.downsample,
                               origins[:, 1] * res.downsample, size0)
    keep = fractions >= config.min_tissue
    return TilePlan(res, grid, thumbnail, mask, scale, origins[keep],
                    config.level0_settings(res.source_origin == "given"))


@dataclass
class PreparedSlide:
    """An open slide with its tile plan (and preview image): the work before any tile is read,
    done ahead (in a thread) while the previous slide is being tiled."""

    path: Path
    reader: SlideReader
    plan: TilePlan
    preview: np.ndarray | None
    seconds: float

    def close(self) -> None:
        self.reader.close()


def prepare_slide(path: Path, config: SlideConfig, preview: bool = True) -> PreparedSlide:
    """Open ``path``, plan its tiles, render its preview; an ``InputError`` when no tile has
    enough tissue."""
    start = time.perf_counter()
    reader = SlideReader(path)
    try:
        plan = plan_tiles(reader, config)
        if len(plan.tiles) == 0:
            n_grid = len(plan.grid.origins())
            raise InputError(path, f"no tissue found: none of the {n_grid} grid tiles has "
                             f"{config.min_tissue:.0%} tissue (tissue is "
                             f"{plan.tissue.fraction:.1%} of the thumbnail); lower "
                             "{min_tissue} or check the slide")
        image = (render_preview(plan.thumbnail, plan.tissue, plan.coords,
                                plan.tile_size_level0, plan.thumbnail_scale)
                 if preview else None)
    except BaseException:
        reader.close()
        raise
    return PreparedSlide(path, reader, plan, image, time.perf_counter() - start)


def slide_encoder(config: SlideConfig) -> Encode | None:
    """What the reading workers make of a strip's patches: stored chunks (gzip, raw), or
    nothing (patches are compressed by the writer)."""
    if config.compression in ENCODABLE:
        return partial(encode_patches, compression=config.compression)
    return None


class SlideTiling:
    """One prepared slide being written: its strip plan and open artifact writer. Strips'
    patches (or encoded chunks) are :meth:`add`-ed in plan order, then :meth:`finish` names
    the artifact and writes the preview, or :meth:`abort` leaves nothing."""

    def __init__(self, slide: PreparedSlide, output: Path, preview_path: Path,
                 config: SlideConfig, progress: Progress | None = None) -> None:
        self.slide, self.output, self.preview_path = slide, output, preview_path
        self.config, self.progress = config, progress
        self.start = time.perf_counter() - slide.seconds
        self.open = True  # until finished or aborted
        path, reader, plan = slide.path, slide.reader, slide.plan
        res, grid, mask = plan.resolution, plan.grid, plan.tissue
        self.grid_tiles = len(grid.origins())
        log.debug("%s: level %d (downsample %.3f), %d of %d tiles with tissue", path.name,
                  res.level, res.level_downsample, len(plan.tiles), self.grid_tiles)
        meta = ArtifactMeta(
            class_names=[], patch_size=config.patch_size, mpp=res.mpp,
            magnification=res.magnification, source=str(path), created_by="tile",
            extra={"kind": "slide", "slide": str(path), "vendor": reader.info.vendor,
                   "level_dimensions": [list(d) for d in reader.info.level_dimensions],
                   "source_mpp": res.source_mpp, "source_mpp_from": res.source_origin,
                   "target": config.target.describe(), "level": res.level,
                   "pixel_source": reader.pixel_source(res.level),
                   "downsample": res.downsample, "stride": grid.stride,
                   "min_tissue": config.min_tissue, "tissue_fraction": mask.fraction,
                   "tissue_threshold": mask.threshold, "grid_tiles": self.grid_tiles,
                   "provenance": config.provenance().with_settings(
                       plan.level0_settings).as_dict()},
        )
        self.strips = plan_strips(plan.tiles, grid, path=path, level=res.level,
                                  level_downsample=res.level_downsample, scale=res.scale,
                                  file_tile=reader.info.tile_size(res.level))
        self.encoded = slide_encoder(config) is not None
        self.writer = ArtifactWriter(output, meta, coords=True, compression=config.compression)
        self.done = 0
        self.streaming = time.perf_counter()

    @property
    def reader(self) -> SlideReader:
        """The open slide (strips read in this process use it)."""
        return self.slide.reader

    def add(self, strip: Strip, patches: Any) -> None:
        """Append one strip's patches (or chunks encoded by :func:`slide_encoder`)."""
        res = self.slide.plan.resolution
        c = np.round(strip.tiles * res.downsample).astype(np.int64)
        names = [f"{self.slide.path.stem}_{x}_{y}" for x, y in c]
        if self.encoded:
            self.writer.append_encoded(patches, names, coords=c)
        else:
            self.writer.append(patches, names, coords=c)
        self.done += len(c)
        if self.progress is not None:
            self.progress(self.done, len(self.slide.plan.tiles))

    def finish(self) -> SlideResult:
        """Name the artifact, write the preview, close the slide."""
        plan, stem = self.slide.plan, self.slide.path.stem
        try:
            stream_seconds = time.perf_counter() - self.streaming
            self.writer.set_attrs("coords", **_coords_attrs(stem, self.config, plan.resolution,
                                                            self.reader, plan.grid))
            save_png(self.preview_path, self.slide.preview)
            self.writer.close()
        except BaseException:
            self.abort()
            raise
        self.open = False
        self.slide.close()
        return SlideResult(self.slide.path, self.output, self.preview_path, len(plan.tiles),
                           self.grid_tiles, plan.resolution, plan.tissue.fraction,
                           time.perf_counter() - self.start, stream_seconds)

    def abort(self) -> None:
        """Remove the partial artifact and close the slide; nothing once finished or aborted
        (a stopped folder run reaches a slide both as the one in progress and as one its
        stream opened)."""
        if not self.open:
            return
        self.open = False
        self.writer.abort()
        self.slide.close()

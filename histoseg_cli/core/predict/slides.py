"""One whole slide -> predictions artifact with a stitched label map, overlay, areas, polygons.

The slide is prepared exactly as ``tile`` prepares it (resolution, tissue mask, kept tiles), read
strip by strip (in worker processes when asked), and its tiles run through the gated segmenter
in batches. Tiles go to the artifact (per-tile labels, gate probabilities, level-0 coords) and
to a band stitcher that averages overlaps and hands finished rows, tissue-masked, to the map
(a chunked dataset inside the artifact, written in whole chunk rows), to a thumbnail-sized
copy for the overlay, to per-class pixel counts and, with polygons asked for, to a bounded
copy from which they are traced. Nothing the size of the full map is held in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histoseg_cli.core.data.format import ArtifactMeta
from histoseg_cli.core.data.kinds import PREDICTIONS
from histoseg_cli.core.data.reader import recorded_provenance
from histoseg_cli.core.data.writer import ArtifactWriter, ItemSpec
from histoseg_cli.core.inference.stitch import BandStitcher, CountSink, DownsampledSink, RowSink
from histoseg_cli.core.parallel import lagged
from histoseg_cli.core.predict.geojson import label_features, write_geojson
from histoseg_cli.core.predict.map_tiff import write_map_tiff
from histoseg_cli.core.predict.outputs import (class_areas, file_safe, save_heatmap, save_overlay,
                                              write_areas_csv)
from histoseg_cli.core.predict.predictor import HostOutput, Predictor
from histoseg_cli.core.slides.extract import PreparedSlide, TilePlan
from histoseg_cli.core.slides.tiler import StripReader, plan_strips

#: The map datasets inside a slide's predictions artifact (labels (H, W); with heatmaps asked
#: for, the gated probabilities (C, H, W) as uint8 0-255), and their chunk side.
MAP_DATASET = "slide/labels"
PROBS_DATASET = "slide/probabilities"
MAP_CHUNK = 512
#: Longer side of the label-map copy that polygons are traced on.
POLYGON_MAX_SIDE = 4096


@dataclass(frozen=True)
class SlideTargets:
    """Where one slide's outputs go (all beside the artifact, named by its stem)."""

    artifact: Path
    geojson: bool = False
    labels_tiff: bool = False
    heatmaps: tuple[str, ...] = ()  # class names whose probability heatmaps are written

    def _beside(self, suffix: str) -> Path:
        return self.artifact.with_name(self.artifact.name.removesuffix(".h5") + suffix)

    @property
    def overlay(self) -> Path:
        return self._beside(".overlay.png")

    @property
    def areas(self) -> Path:
        return self._beside(".areas.csv")

    @property
    def polygons(self) -> Path:
        return self._beside(".geojson")

    @property
    def label_tiff(self) -> Path:
        return self._beside(".labels.tif")

    def heatmap_tiff(self, name: str) -> Path:
        return self._beside(f".heatmap-{file_safe(name)}.tif")

    def heatmap_png(self, name: str) -> Path:
        return self._beside(f".heatmap-{file_safe(name)}.png")

    @property
    def output(self) -> Path:
        return self.artifact

    def files(self) -> list[Path]:
        return [self.artifact, self.overlay, self.areas, *([self.polygons] if self.geojson
                                                             else []),
                *([self.label_tiff] if self.labels_tiff else []),
                *(f(n) for n in self.heatmaps for f in (self.heatmap_tiff, self.heatmap_png))]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.files())

    def recorded(self) -> dict[str, Any] | None:
        """The provenance the slide's artifact records."""
        return recorded_provenance(self.artifact)


class MapSink:
    """Writes finished rows into a chunked map dataset ((H, W), or (C, H, W) for
    probabilities) in whole chunk rows (a partial chunk row would be compressed, read back and
    rewritten), the rest at :meth:`close`."""

    def __init__(self, dataset: h5py.Dataset, rows: int = MAP_CHUNK) -> None:
        self.dataset = dataset
        self.rows = rows
        self._buffer = np.zeros((*dataset.shape[:-2], 0, dataset.shape[-1]), dtype=np.uint8)
        self._y0 = 0

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, rows], axis=-2)
        whole = self._buffer.shape[-2] // self.rows * self.rows
        if whole:
            self._write(self._buffer[..., :whole, :])
            self._buffer = self._buffer[..., whole:, :]

    def _write(self, block: np.ndarray) -> None:
        n = block.shape[-2]
        self.dataset[..., self._y0:self._y0 + n, :] = block
        self._y0 += n

    def close(self) -> None:
        if self._buffer.shape[-2]:
            self._write(self._buffer)
            self._buffer = self._buffer[..., :0, :]


class TissueGate:
    """Sets map pixels outside the slide's tissue mask to background, then passes rows on."""

    def __init__(self, plan: TilePlan, width: int, height: int, background: int,
                 sinks: Iterable[RowSink], prob_sinks: Iterable[RowSink] = ()) -> None:
        mask = plan.tissue.tissue
        th, tw = mask.shape
        ds = plan.resolution.downsample
        sx, sy = plan.thumbnail_scale
        self.mask = mask
        self.cols = np.minimum(((np.arange(width) + 0.5) * ds / sx).astype(np.int64), tw - 1)
        self.row_scale = ds / sy
        self.rows_max = th - 1
        self.background = background
        self.sinks = list(sinks)
        self.prob_sinks = list(prob_sinks)

    def _tissue(self, y0: int, n: int) -> np.ndarray:
        ty = np.minimum(((np.arange(y0, y0 + n) + 0.5) * self.row_scale).astype(np.int64),
                        self.rows_max)
        return self.mask[ty][:, self.cols]

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        rows = np.where(self._tissue(y0, len(rows)), rows, np.uint8(self.background))
        for sink in self.sinks:
            sink(y0, rows)

    def probabilities(self, y0: int, probs: np.ndarray) -> None:
        """(C, rows, W) probabilities: 0 outside tissue, then on to the probability sinks."""
        probs = np.where(self._tissue(y0, probs.shape[-2]), probs, np.uint8(0))
        for sink in self.prob_sinks:
            sink(y0, probs)


def _tile_batches(strips: Iterator[tuple[object, np.ndarray]], batch_size: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-cut ``(strip, patches)`` into ``(origins, windows)`` batches of ``batch_size``."""
    origins: list[np.ndarray] = []
    windows: list[np.ndarray] = []
    held = 0
    for strip, patches in strips:
        origins.append(strip.tiles)  # type: ignore[attr-defined]
        windows.append(patches)
        held += len(patches)
        while held >= batch_size:
            o, w = np.concatenate(origins), np.concatenate(windows)
            yield o[:batch_size], w[:batch_size]
            origins, windows, held = [o[batch_size:]], [w[batch_size:]], held - batch_size
    if held:
        yield np.concatenate(origins), np.concatenate(windows)


def _polygon_sink(width: int, height: int, background: int) -> DownsampledSink:
    f = max(1, math.ceil(max(width, height) / POLYGON_MAX_SIDE))
    return DownsampledSink(width, height, math.ceil(width / f), math.ceil(height / f),
                           background)


def predict_slide(slide: PreparedSlide, targets: SlideTargets, predictor: Predictor,
                  strips: StripReader, progress: Callable[[int, int], None] | None = None
                  ) -> dict[str, object]:
    """Predict one prepared slide into ``targets`` (the slide is closed afterwards); a summary
    (tiles, seconds, class areas)."""
    start = time.perf_counter() - slide.seconds
    c, p = predictor.num_classes, predictor.patch_size
    path, plan = slide.path, slide.plan
    with slide.reader as reader:
        res, grid, tiles = plan.resolution, plan.grid, plan.tiles
        meta = ArtifactMeta(
            class_names=predictor.class_names, patch_size=p, palette=predictor.palette,
            mpp=res.mpp, magnification=res.magnification, source=str(path),
            created_by="predict", kind=PREDICTIONS.name,
            extra={**predictor.describe(plan.level0_settings), "slide": str(path),
                   "level": res.level,
                   "downsample": res.downsample, "stride": grid.stride,
                   "tissue_fraction": plan.tissue.fraction,
                   "grid_tiles": len(grid.origins())})
        specs = {"predictions": ItemSpec((p, p), "uint8")}
        if predictor.gate_source != "none":
            specs["gate_probs"] = ItemSpec((c,), "float32")
        strip_plan = plan_strips(tiles, grid, path=path, level=res.level,
                                 level_downsample=res.level_downsample, scale=res.scale,
                                 file_tile=reader.info.tile_size(res.level),
                                 strip_height=max(512, math.ceil(2 * p * res.scale)))
        thumb_h, thumb_w = plan.thumbnail.shape[:2]
        overlay = DownsampledSink(grid.width, grid.height, thumb_w, thumb_h, c)
        counts = CountSink(c)
        polygons = _polygon_sink(grid.width, grid.height, c) if targets.geojson else None
        heat = (DownsampledSink(grid.width, grid.height, thumb_w, thumb_h, 0, channels=c)
                if targets.heatmaps else None)
        with (ArtifactWriter(targets.artifact, meta, coords=True, extra_datasets=specs) as writer,
              writer.writing()):  # the map datasets are written here, not by the writer
            dataset = writer.create_array(MAP_DATASET, (grid.height, grid.width), "uint8",
                                          (MAP_CHUNK, MAP_CHUNK))
            map_sink = MapSink(dataset)
            prob_map = None if heat is None else MapSink(writer.create_array(
                PROBS_DATASET, (c, grid.height, grid.width), "uint8", (1, MAP_CHUNK, MAP_CHUNK)))
            prob_sinks = [] if heat is None else [prob_map, heat]
            sinks = [map_sink, overlay, counts] + ([polygons] if polygons is not None else [])
            tissue = TissueGate(plan, grid.width, grid.height, c, sinks, prob_sinks)
            stitcher = BandStitcher(grid.width, grid.height, c, p, tiles, [tissue],
                                    predictor.engine.device, overlap=grid.stride < p,
                                    prob_sinks=[tissue.probabilities] if prob_sinks else [])
            batches = _tile_batches(strips.iter_read(strip_plan, reader),
                                    predictor.config.batch_size)

            def run() -> Iterator[tuple[np.ndarray, HostOutput]]:
                for origins, windows in batches:
                    out = predictor(windows)
                    stitcher.add(origins, out.probs)
                    yield origins, out.to_host()

            done = 0
            for _, finished in lagged(run()):  # batch k queued before k - 1 is written
                if finished is None:
                    continue
                origins, host = finished[0], finished[1].wait()
                level0 = np.round(origins * res.downsample).astype(np.int64)
                rows = {"predictions": host.labels.numpy(), "coords": level0}
                if "gate_probs" in specs:
                    rows["gate_probs"] = host.gate.numpy()
                writer.append_rows([f"{path.stem}_{x}_{y}" for x, y in level0], **rows)
                done += len(origins)
                if progress is not None:
                    progress(done, len(tiles))
            stitcher.finish()
            map_sink.close()
            if prob_map is not None:
                prob_map.close()
            dataset.attrs.update({"downsample": res.downsample, "mpp": res.mpp,
                                  "background": c})
            areas = class_areas(counts.counts, predictor.class_names, res.mpp)
            save_overlay(targets.overlay, plan.thumbnail, overlay.labels, predictor.palette,
                         predictor.class_names, counts.counts)
            write_areas_csv(targets.areas, areas)
            for i, name in enumerate(targets.heatmaps if heat is not None else ()):
                save_heatmap(targets.heatmap_png(name), plan.thumbnail, heat.labels[i],
                             predictor.palette[i])
            if polygons is not None:
                h, w = polygons.labels.shape
                scale = (grid.width / w * res.downsample, grid.height / h * res.downsample)
                write_geojson(targets.polygons, label_features(
                    polygons.labels, predictor.class_names, predictor.palette, scale))
    if targets.labels_tiff:  # from the finished artifact, tile row by tile row
        write_map_tiff(targets.artifact, MAP_DATASET, targets.label_tiff, res.mpp,
                       palette=predictor.palette)
    for i, name in enumerate(targets.heatmaps):
        write_map_tiff(targets.artifact, PROBS_DATASET, targets.heatmap_tiff(name), res.mpp,
                       plane=i)
    seconds = time.perf_counter() - start
    return {"input": str(path), "output": str(targets.artifact),
            "labels_tiff": str(targets.label_tiff) if targets.labels_tiff else None,
            "overlay": str(targets.overlay), "areas_csv": str(targets.areas),
            "geojson": str(targets.polygons) if targets.geojson else None,
            "heatmaps": {n: str(targets.heatmap_tiff(n)) for n in targets.heatmaps} or None,
            "tiles": len(tiles), "seconds": round(seconds, 3),
            "tiles_per_s": round(len(tiles) / seconds, 2),
            "mpp": res.mpp, "areas": areas}

"""Images of any size: a sliding window of the model's patch size, probabilities blended.

An image smaller than a window is padded by reflection and the prediction cropped back. The
windows are cut from the decoded image and batched; overlapping windows' gated probabilities
are averaged by the band stitcher, so memory stays near one band of windows even for large
images (the decoded image itself is held once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoseg_cli.core.atomic import write_csv_atomic
from histoseg_cli.core.imageio import read_png_text, read_rgb, save_label_png
from histoseg_cli.core.inference.stitch import ArraySink, BandStitcher, window_grid
from histoseg_cli.core.predict.outputs import save_overlay
from histoseg_cli.core.predict.predictor import Predictor
from histoseg_cli.core.provenance import KEY, parse

#: Folders inside the output folder: colour overlays, and the gate's probabilities per window.
OVERLAYS = "overlays"
GATES = "gates"


@dataclass
class ImagePrediction:
    """One image's label map and the gate probabilities of its windows."""

    labels: np.ndarray  # (H, W) uint8, background = C
    origins: np.ndarray  # (N, 2) window origins (x, y)
    gate: np.ndarray | None  # (N, C) gate probabilities per window


def _pad(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    return np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)),
                  mode="reflect" if min(h, w) > 1 else "edge")


def _batches(origins: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for s in range(0, len(origins), size):
        yield origins[s:s + size]


def predict_image(image: np.ndarray, predictor: Predictor, stride: int,
                  progress: Callable[[int], None] | None = None) -> ImagePrediction:
    """Label map of an (H, W, 3) uint8 image: windows every ``stride`` pixels, blended."""
    h, w = image.shape[:2]
    p = predictor.patch_size
    padded = _pad(image, p)
    ph, pw = padded.shape[:2]
    origins = window_grid(pw, ph, p, stride)
    sink = ArraySink(pw, ph, predictor.num_classes)
    stitcher = BandStitcher(pw, ph, predictor.num_classes, p, origins, [sink],
                            predictor.engine.device)
    gates = []
    for batch in _batches(origins, predictor.config.batch_size):
        windows = np.stack([padded[y:y + p, x:x + p] for x, y in batch])
        out = predictor(windows)
        stitcher.add(batch, out.probs)
        if out.gate is not None:
            gates.append(out.gate.cpu().numpy())
        if progress is not None:
            progress(len(batch))
    stitcher.finish()
    gate = np.concatenate(gates) if gates else None
    return ImagePrediction(sink.labels[:h, :w], origins, gate)


@dataclass(frozen=True)
class ImageTargets:
    """Where one image's outputs go: the label PNG (named by the image's stem) and overlay."""

    labels: Path
    overlay: Path
    gates: Path

    @classmethod
    def in_folder(cls, image: Path, out_dir: Path, name: str | None = None) -> ImageTargets:
        stem = Path(name).stem if name else image.stem
        return cls(out_dir / f"{stem}.png", out_dir / OVERLAYS / f"{stem}.png",
                   out_dir / GATES / f"{stem}.csv")

    @property
    def output(self) -> Path:
        return self.labels

    def files(self) -> list[Path]:
        return [self.labels, self.overlay]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.files())

    def recorded(self) -> dict[str, Any] | None:
        """The provenance the label PNG records."""
        return parse(read_png_text(self.labels, KEY))


def predict_image_file(path: Path, targets: ImageTargets, predictor: Predictor, stride: int,
                       progress: Callable[[int], None] | None = None) -> dict[str, object]:
    """Predict one image file and write its label PNG and overlay; a summary row."""
    start = time.perf_counter()
    image = read_rgb(path)
    result = predict_image(image, predictor, stride, progress)
    counts = np.bincount(result.labels.ravel(), minlength=predictor.num_classes + 1)
    save_overlay(targets.overlay, image, result.labels, predictor.palette,
                 predictor.class_names, counts)
    if result.gate is not None:
        write_csv_atomic(targets.gates, ["x", "y", *predictor.class_names], (
            {"x": int(x), "y": int(y), **{n: round(float(p), 6) for n, p in
                                          zip(predictor.class_names, probs)}}
            for (x, y), probs in zip(result.origins, result.gate)))
    made = {} if predictor.provenance is None else {KEY: predictor.provenance.to_json()}
    save_label_png(targets.labels, result.labels, predictor.palette, predictor.class_names,
                   made)
    pixels = {name: int(counts[i]) for i, name in enumerate(predictor.class_names)}
    seconds = time.perf_counter() - start
    return {"input": str(path), "output": str(targets.labels),
            "overlay": str(targets.overlay),
            "gates": str(targets.gates) if result.gate is not None else None, "height": int(image.shape[0]),
            "width": int(image.shape[1]), "tiles": len(result.origins),
            "seconds": round(seconds, 3), "tiles_per_s": round(len(result.origins) / seconds, 2),
            "pixels": pixels}

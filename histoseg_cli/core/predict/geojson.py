"""Class polygons of a label map as GeoJSON that QuPath imports as annotations.

Each class becomes one feature per connected region: a Polygon whose first ring is the outer
boundary and the others its holes, in level-0 pixel coordinates of the slide. Boundaries are
traced by contourpy (matplotlib's contouring library) on the binary mask of the class, padded
by one pixel so that regions on the border close.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from histoseg_cli.core.atomic import write_text_atomic


def class_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons of the ``True`` pixels of ``mask``: each a list of rings (outer first, then
    holes), each ring (K, 2) closed (x, y) in pixel-edge coordinates of ``mask``."""
    import contourpy  # matplotlib's own dependency

    if not mask.any():
        return []
    z = np.pad(mask.astype(np.float32), 1)
    gen = contourpy.contour_generator(z=z, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = gen.filled(0.5, 1.5)
    polygons = []
    for pts, offs in zip(points, offsets):
        # z is padded by one pixel; pixel centres are integers, edges at +-0.5
        pts = pts - 0.5
        rings = [pts[a:b] for a, b in zip(offs[:-1], offs[1:]) if b - a >= 4]
        if rings:
            polygons.append(rings)
    return polygons


def _ring(ring: np.ndarray, scale: tuple[float, float], precision: int) -> list[list[float]]:
    xy = np.round(ring * np.asarray(scale), precision)
    coords = xy.tolist()
    if coords[0] != coords[-1]:
        coords.append(coords[0])
    return coords


def label_features(labels: np.ndarray, class_names: list[str], palette: np.ndarray,
                   scale: tuple[float, float] = (1.0, 1.0), precision: int = 1
                   ) -> list[dict[str, Any]]:
    """GeoJSON features of every class in ``labels`` (labels >= C are background);
    ``scale`` maps label-map pixels to output coordinates (e.g. level-0 pixels)."""
    features = []
    for index, name in enumerate(class_names):
        colour = palette[index] if index < len(palette) else np.zeros(3, dtype=np.uint8)
        rgb = [int(v) for v in colour]
        for rings in class_polygons(labels == index):
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon",
                             "coordinates": [_ring(r, scale, precision) for r in rings]},
                "properties": {"objectType": "annotation",
                               "classification": {"name": name, "color": rgb}},
            })
    return features


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    """A FeatureCollection file, atomically."""
    doc = {"type": "FeatureCollection", "features": features}
    return write_text_atomic(path, json.dumps(doc, separators=(",", ":")))

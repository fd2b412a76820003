"""Sliding windows and band-by-band stitching of their probabilities into one label map.

Images of any size and whole slides are predicted window by window; where windows overlap,
their (gated) class probabilities are averaged, and each pixel's label is the argmax of that
average. The stitcher keeps probabilities only for the rows still open (rows some pending
window covers), on the device that made them, and hands finished rows, as uint8 labels, to the
caller's sinks: memory follows the width of the map and the height of a band of windows, never
the size of the whole map. Without overlap the open rows are held as labels, not probabilities,
unless the caller asks for the probabilities too (heatmaps): those go, averaged and scaled to
uint8 0-255, to probability sinks row band by row band like the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

#: ``sink(y0, labels)`` receives finished rows ``[y0, y0 + len(labels))`` of the map, uint8;
#: a probability sink gets ``(y0, probs)`` with probs (C, rows, W) uint8 (255 = 1.0).
RowSink = Callable[[int, np.ndarray], None]


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Window origins along one axis covering ``[0, length)``: every ``stride`` pixels, the
    last one moved back to end exactly at ``length`` (one origin 0 when ``length <= window``)."""
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
    if starts[-1] + window < length:
        starts = np.append(starts, length - window)
    return starts


def window_grid(width: int, height: int, window: int, stride: int) -> np.ndarray:
    """(N, 2) window origins (x, y), row by row, covering a ``width`` x ``height`` image."""
    xs, ys = np.meshgrid(window_starts(width, window, stride),
                         window_starts(height, window, stride))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


class BandStitcher:
    """Average overlapping window probabilities into a ``height`` x ``width`` label map.

    ``origins`` lists every window that will be added (any order of arrival); a row is
    finished once no pending window covers it, and is then labelled and passed to each sink.
    Pixels no window covers get ``background`` (e.g. outside tissue on a slide). When no two
    windows overlap (``overlap=False``: stride >= window) there is nothing to average and the
    open rows are kept as uint8 labels, 16x less memory than float probabilities, and, when
    ``prob_sinks`` want the probabilities, those beside them as uint8 too (a pixel no window
    covers has probability 0).
    """

    def __init__(self, width: int, height: int, num_classes: int, window: int,
                 origins: np.ndarray, sinks: Sequence[RowSink], device: torch.device,
                 background: int | None = None, overlap: bool = True,
                 prob_sinks: Sequence[RowSink] = ()) -> None:
        self.width, self.height, self.window = width, height, window
        self.num_classes = num_classes
        self.background = num_classes if background is None else background
        self.sinks = list(sinks)
        self.prob_sinks = list(prob_sinks)
        self.device = device
        self.overlap = overlap
        ys, counts = np.unique(np.asarray(origins)[:, 1], return_counts=True)
        self._pending = dict(zip(ys.tolist(), counts.tolist()))
        self._top = 0  # first row not yet handed to the sinks
        self._acc = self._blank(0)
        # without overlap each pixel has one window: its uint8 probabilities are final
        self._p8 = self._blank_p8(0) if self.prob_sinks and not overlap else None

    def _blank(self, rows: int) -> torch.Tensor:
        if self.overlap:  # summed probabilities; a pixel no window reached sums to 0
            return torch.zeros((self.num_classes, rows, self.width), device=self.device)
        return torch.full((rows, self.width), self.background, dtype=torch.uint8,
                          device=self.device)

    def _blank_p8(self, rows: int) -> torch.Tensor:
        return torch.zeros((self.num_classes, rows, self.width), dtype=torch.uint8,
                           device=self.device)

    @property
    def _rows(self) -> int:
        return self._acc.shape[-2]

    def _grow(self, bottom: int) -> None:
        if self._top + self._rows < bottom:
            extra = bottom - self._top - self._rows
            self._acc = torch.cat([self._acc, self._blank(extra)], dim=-2)
            if self._p8 is not None:
                self._p8 = torch.cat([self._p8, self._blank_p8(extra)], dim=-2)

    def add(self, origins: np.ndarray, probs: torch.Tensor) -> None:
        """Add windows at ``origins`` (K, 2) (x, y) with probabilities (K, C, P, P)."""
        w = self.window
        bottom = min(int(np.max(origins[:, 1])) + w, self.height)
        self._grow(bottom)
        p8 = (probs * 255).round_().to(torch.uint8) if self._p8 is not None else probs
        if not self.overlap:
            probs = probs.argmax(dim=1).to(torch.uint8)
        for (x, y), p, q in zip(origins.tolist(), probs, p8):
            if y < self._top:
                raise ValueError(f"window at y={y} arrived after row {self._top} was finished")
            h, wd = min(w, self.height - y), min(w, self.width - x)
            r = y - self._top
            if self.overlap:
                self._acc[:, r:r + h, x:x + wd] += p[:, :h, :wd].to(self._acc.device)
            else:
                self._acc[r:r + h, x:x + wd] = p[:h, :wd].to(self._acc.device)
                if self._p8 is not None:
                    self._p8[:, r:r + h, x:x + wd] = q[:, :h, :wd].to(self._p8.device)
            self._pending[y] -= 1
            if self._pending[y] == 0:
                del self._pending[y]
        self._flush(min(self._pending, default=self.height))

    def _labels(self, n: int) -> torch.Tensor:
        """uint8 labels of the first ``n`` open rows."""
        if not self.overlap:
            return self._acc[:n]
        band = self._acc[:, :n]
        labels = band.argmax(dim=0).to(torch.uint8)
        return labels.masked_fill_(band.sum(dim=0) == 0, self.background)

    def _probabilities(self, n: int, rows: int = 64) -> torch.Tensor:
        """uint8 (C, n, W) average probabilities of the first ``n`` open rows: each window's
        probabilities sum to 1 per pixel, so the sum over classes counts the windows.
        Computed ``rows`` rows at a time, so the float temporaries stay small."""
        if self._p8 is not None:
            return self._p8[:, :n]
        out = torch.empty((self.num_classes, n, self.width), dtype=torch.uint8,
                          device=self.device)
        for r in range(0, n, rows):
            band = self._acc[:, r:min(n, r + rows)]
            covered = band.sum(dim=0, keepdim=True).clamp_min(1e-6)
            out[:, r:r + band.shape[1]] = (band / covered * 255).round_()
        return out

    def _flush(self, frontier: int) -> None:
        frontier = min(frontier, self.height)
        if frontier <= self._top:
            return
        n = frontier - self._top
        self._grow(frontier)  # rows no window reached: background
        rows = self._labels(n).cpu().numpy()
        for sink in self.sinks:
            sink(self._top, rows)
        if self.prob_sinks:
            probs = self._probabilities(n).cpu().numpy()
            for sink in self.prob_sinks:
                sink(self._top, probs)
        self._acc = self._acc[..., n:, :].clone()
        if self._p8 is not None:
            self._p8 = self._p8[:, n:].clone()
        self._top = frontier

    def finish(self) -> None:
        """Hand over every remaining row (windows never added leave background)."""
        self._pending.clear()
        self._flush(self.height)


class ArraySink:
    """Collects finished rows into one (H, W) uint8 array (images: the whole label map)."""

    def __init__(self, width: int, height: int, fill: int) -> None:
        self.labels = np.full((height, width), fill, dtype=np.uint8)

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        self.labels[y0:y0 + len(rows)] = rows


class DownsampledSink:
    """Keeps a nearest-neighbour copy of the map at ``(out_w, out_h)`` (overlays, polygons):
    output pixel (i, j) takes the label of map pixel (floor((j + .5) * sx), floor((i + .5) * sy)).
    ``channels`` > 0: rows carry that many leading planes (probabilities, one per class)."""

    def __init__(self, width: int, height: int, out_w: int, out_h: int, fill: int,
                 channels: int = 0) -> None:
        lead = (channels,) if channels else ()
        self.labels = np.full((*lead, out_h, out_w), fill, dtype=np.uint8)
        self._cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64),
                                width - 1)
        self._rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64),
                                height - 1)

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        n = rows.shape[-2]
        picked = np.flatnonzero((self._rows >= y0) & (self._rows < y0 + n))
        if len(picked):
            self.labels[..., picked, :] = rows[..., self._rows[picked] - y0, :][..., self._cols]


class CountSink:
    """Pixels per label over the whole map (label ``num_classes`` = background)."""

    def __init__(self, num_classes: int) -> None:
        self.counts = np.zeros(num_classes + 1, dtype=np.int64)

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        self.counts += np.bincount(rows.ravel(), minlength=len(self.counts))[:len(self.counts)]

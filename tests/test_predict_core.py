"""The pieces under ``predict``: gating, window grids, band stitching, polygons, overlays."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from histoseg_cli.core.inference.gate import GateConfig, GatedSegmenter, gated_softmax
from histoseg_cli.core.inference.stitch import (ArraySink, BandStitcher, CountSink,
                                                DownsampledSink, window_grid, window_starts)
from histoseg_cli.core.models.preprocess import InputNorm
from histoseg_cli.core.predict.geojson import class_polygons, label_features
from histoseg_cli.core.predict.outputs import class_areas, colourise


def test_gate_masks_classes_out_instead_of_zeroing_their_logits():
    # pixel logits: class 1 is the largest, but the gate rules it out; every logit of the
    # allowed classes is negative, so multiplying class 1's logit by 0 would still pick it
    logits = torch.tensor([-2.0, 5.0, -1.0]).view(1, 3, 1, 1)
    gate = torch.tensor([[0.9, 0.05, 0.5]])
    probs = gated_softmax(logits, gate, 0.1)
    assert probs.argmax(1).item() == 2
    assert probs[0, 1].item() == 0.0
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 1, 1))
    zeroed = logits * (gate > 0.1).float().view(1, 3, 1, 1)
    assert zeroed.argmax(1).item() == 1  # the wrong way picks the gated-off class


def test_gate_falls_back_to_the_ungated_prediction_when_all_classes_are_off():
    logits = torch.randn(2, 4, 3, 3)
    gate = torch.tensor([[0.01, 0.02, 0.0, 0.1], [0.9, 0.0, 0.0, 0.0]])
    probs = gated_softmax(logits, gate, 0.1)
    torch.testing.assert_close(probs[0], logits[0].softmax(0))  # all off: ungated
    assert torch.all(probs[1].argmax(0) == 0)  # only class 0 on
    torch.testing.assert_close(gated_softmax(logits, None, 0.1), logits.softmax(1))
    torch.testing.assert_close(gated_softmax(logits, gate, None), logits.softmax(1))


class _Fixed(torch.nn.Module):
    """A 'segmenter' whose logits are a fixed function of the input: mean pixel per class."""

    def forward(self, x):  # noqa: ANN001, ANN201
        b, _, h, w = x.shape
        scores = torch.stack([x[:, 0], x[:, 1], x[:, 2]], dim=1)
        return {"masks": scores, "gate": torch.tensor([[3.0, -3.0, 3.0]]).expand(b, 3)}


def test_gated_segmenter_reads_the_gate_head_and_honours_no_gate():
    pixels = torch.zeros(2, 3, 4, 4)
    pixels[:, 1] = 200  # green would win ungated
    gated = GatedSegmenter(_Fixed(), InputNorm(), source="head")
    out = gated(pixels)
    assert out["gate"].shape == (2, 3) and torch.all(out["probs"].argmax(1) != 1)
    off = GatedSegmenter(_Fixed(), InputNorm(), source="head", config=GateConfig(0.1, False))
    out = off(pixels)
    assert torch.all(out["probs"].argmax(1) == 1) and "gate" in out
    assert GatedSegmenter(_Fixed(), InputNorm(), source="none")(pixels).keys() == {"probs"}


@pytest.mark.parametrize("length,window,stride", [(10, 4, 2), (11, 4, 3), (3, 4, 2), (8, 8, 4)])
def test_window_starts_cover_the_axis_and_end_at_its_edge(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered[:length].all() and starts[0] == 0
    assert starts[-1] + window == max(length, window)
    assert np.all(np.diff(starts) <= stride)


def test_band_stitcher_equals_averaging_the_whole_map_at_once():
    rng = np.random.default_rng(0)
    width, height, window, c = 37, 29, 8, 3
    origins = window_grid(width, height, window, 5)
    origins = origins[rng.permutation(len(origins))]  # hard case: any arrival order ...
    origins = origins[np.argsort(origins[:, 1], kind="stable")]  # ... within bands of rows
    probs = torch.from_numpy(rng.random((len(origins), c, window, window), dtype=np.float32))
    full = np.zeros((c, height, width), np.float32)
    for (x, y), p in zip(origins, probs.numpy()):
        full[:, y:y + window, x:x + window] += p
    sink, counts = ArraySink(width, height, c), CountSink(c)
    stitcher = BandStitcher(width, height, c, window, origins, [sink, counts],
                            torch.device("cpu"))
    most_rows = 0
    for s in range(0, len(origins), 4):
        stitcher.add(origins[s:s + 4], probs[s:s + 4])
        most_rows = max(most_rows, stitcher._acc.shape[1])
    stitcher.finish()
    assert np.array_equal(sink.labels, full.argmax(0))
    assert counts.counts.sum() == width * height
    assert most_rows <= 2 * window  # only open rows are held, not the whole map


def test_without_overlap_labels_are_kept_instead_of_probabilities():
    rng = np.random.default_rng(1)
    width, height, window, c = 20, 15, 5, 3  # whole windows: none overlaps
    origins = window_grid(width, height, window, window)
    probs = torch.from_numpy(rng.random((len(origins), c, window, window), dtype=np.float32))
    maps = []
    for overlap in (True, False):
        sink = ArraySink(width, height, c)
        stitcher = BandStitcher(width, height, c, window, origins, [sink], torch.device("cpu"),
                                overlap=overlap)
        for s in range(0, len(origins), 3):
            stitcher.add(origins[s:s + 3], probs[s:s + 3])
        stitcher.finish()
        maps.append(sink.labels)
        assert stitcher._acc.dtype == (torch.float32 if overlap else torch.uint8)
    assert np.array_equal(maps[0], maps[1])


def test_probability_rows_are_the_window_average_as_uint8():
    """Heatmap rows: overlapping windows' softmax outputs averaged, 0-255; uncovered pixels 0;
    the labels are unchanged by asking for them (also without overlap)."""
    rng = np.random.default_rng(2)
    window, c = 6, 3
    for width, height, stride in ((23, 19, 4), (24, 18, 6)):  # overlapping, then whole windows
        origins = window_grid(width, height, window, stride)
        probs = torch.softmax(torch.from_numpy(
            rng.normal(size=(len(origins), c, window, window)).astype(np.float32)), dim=1)
        full = np.zeros((c, height, width), np.float64)
        for (x, y), p in zip(origins, probs.numpy()):
            full[:, y:y + window, x:x + window] += p
        expected = np.round(full / full.sum(0, keepdims=True) * 255)
        labels, plain, heat = ArraySink(width, height, c), ArraySink(width, height, c), []
        with_probs = BandStitcher(width, height, c, window, origins, [labels],
                                  torch.device("cpu"), overlap=stride < window,
                                  prob_sinks=[lambda y0, rows: heat.append((y0, rows))])
        without = BandStitcher(width, height, c, window, origins, [plain],
                               torch.device("cpu"), overlap=stride < window)
        for s in range(0, len(origins), 5):
            with_probs.add(origins[s:s + 5], probs[s:s + 5])
            without.add(origins[s:s + 5], probs[s:s + 5])
        with_probs.finish()
        without.finish()
        got = np.concatenate([rows for _, rows in heat], axis=1)
        assert [y0 for y0, _ in heat] == sorted({y0 for y0, _ in heat})  # in row order
        assert got.dtype == np.uint8 and got.shape == (c, height, width)
        assert np.abs(got.astype(np.int64) - expected).max() <= 1  # float32 sums
        assert np.array_equal(labels.labels, plain.labels)


def test_rows_no_window_reaches_are_background():
    origins = np.array([[0, 0]])
    sink = ArraySink(6, 10, 2)
    stitcher = BandStitcher(6, 10, 2, 4, origins, [sink], torch.device("cpu"))
    stitcher.add(origins, torch.tensor([[[[1.0]] * 4] * 4, [[[0.0]] * 4] * 4]).reshape(
        1, 2, 4, 4).expand(1, 2, 4, 4))
    stitcher.finish()
    assert (sink.labels[:4, :4] == 0).all() and (sink.labels[4:] == 2).all()
    assert (sink.labels[:, 4:] == 2).all()


def test_downsampled_sink_samples_pixel_centres():
    labels = np.arange(8 * 6, dtype=np.uint8).reshape(6, 8)
    sink = DownsampledSink(8, 6, 4, 3, fill=255)
    sink(0, labels[:4])
    sink(4, labels[4:])
    assert np.array_equal(sink.labels, labels[1::2, 1::2])


def test_polygons_keep_holes_and_scale_to_level0():
    mask = np.zeros((10, 12), bool)
    mask[1:9, 2:10] = True
    mask[4:6, 5:7] = False  # a hole
    mask[0, 11] = True  # a one-pixel island on the border
    polygons = class_polygons(mask)
    assert len(polygons) == 2
    ring_counts = sorted(len(p) for p in polygons)
    assert ring_counts == [1, 2]
    outer = next(p for p in polygons if len(p) == 2)[0]
    assert outer[:, 0].min() >= 1.5 and outer[:, 0].max() <= 10.5
    features = label_features(mask.astype(np.uint8) * 0 + np.where(mask, 0, 1).astype(
        np.uint8), ["tumour"], np.array([[200, 0, 0], [255, 255, 255]], np.uint8),
        scale=(4.0, 4.0))
    assert {f["properties"]["classification"]["name"] for f in features} == {"tumour"}
    assert features[0]["properties"]["objectType"] == "annotation"
    assert features[0]["properties"]["classification"]["color"] == [200, 0, 0]
    for f in features:
        for ring in f["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]
    xs = [pt[0] for f in features for ring in f["geometry"]["coordinates"] for pt in ring]
    assert max(xs) <= 48 and max(xs) > 40  # level-0 units: 4 px per map pixel


def test_overlay_and_areas():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 2]], np.uint8)  # 2 classes + background
    palette = np.array([[255, 0, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    out = colourise(image, labels, palette, background=2)
    assert out[1, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 0, 0] > 100 and out[0, 0, 2] < 100
    rows = class_areas(np.array([3, 1, 4]), ["a", "b"], mpp=0.5)
    assert rows[0] == {"class": "a", "pixels": 3, "area_mm2": 3 * 0.25 / 1e6,
                       "fraction_of_tissue": 0.75}
    assert class_areas(np.array([3, 1, 4]), ["a", "b"], mpp=None)[1]["area_mm2"] is None


def test_cohort_summary_rows_fractions_and_ratios(tmp_path):
    from histoseg_cli.core.predict.cohort import (read_areas, summary_fields, summary_row,
                                                  write_summary)
    from histoseg_cli.core.predict.outputs import class_areas, write_areas_csv

    names = ["TE", "NEC", "LYM", "TAS"]
    counts = np.array([300, 0, 100, 100, 500])  # pixels per class, then background
    write_areas_csv(tmp_path / "a.areas.csv", class_areas(counts, names, mpp=1.0))
    areas = read_areas(tmp_path / "a.areas.csv")
    row = summary_row(tmp_path / "a.svs", "done", areas, names)
    assert row["tissue_mm2"] == pytest.approx(500e-6)
    assert row["TE_fraction"] == pytest.approx(0.6) and row["NEC_fraction"] == 0
    assert row["tumour_stroma_ratio"] == pytest.approx(300 / 400)
    assert row["lymphocyte_tumour_ratio"] == pytest.approx(100 / 400)
    failed = summary_row(tmp_path / "b.svs", "failed", None, names, "corrupt")
    assert "tissue_mm2" not in failed and failed["error"] == "corrupt"
    assert "tumour_stroma_ratio" not in summary_fields(["gland", "non-gland"])
    palette = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [255] * 3])
    table, figure = write_summary(tmp_path, [row, failed], names, palette)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("slide,status,tissue_mm2,TE_mm2") and len(lines) == 3
    assert figure.stat().st_size > 1000


@pytest.mark.parametrize("units", [False, True], ids=["emulated", "native"])
def test_bf16_on_a_cpu_without_bf16_units_warns_once(monkeypatch: pytest.MonkeyPatch,
                                                     units: bool):
    """bf16 without AVX-512 BF16 / AMX is emulated (0.16x fp32 measured on an AVX2 EPYC):
    asked for, it still runs, with one warning per process however many engines ask."""
    from histoseg_cli.core.inference import engine

    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: units, raising=False)
    engine._warn_emulated_bf16.cache_clear()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("histoseg")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    logger.addHandler(handler)
    cpu = torch.device("cpu")
    try:
        dtypes = [engine.autocast_dtype("bf16", cpu) for _ in range(3)]
        assert engine.autocast_dtype("auto", cpu) is None
    finally:
        logger.removeHandler(handler)
        engine._warn_emulated_bf16.cache_clear()
    assert dtypes == [torch.bfloat16] * 3
    assert len([r for r in records if "no bf16 units" in r.getMessage()]) == (0 if units else 1)

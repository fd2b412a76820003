"""The JPEG-tiled TIFF fast path (raw tiles decoded by Pillow) against OpenSlide, and the
OpenSlide fallback for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.slidegen import DATA, build_pyramid_tiff, real_tissue_images
from histoseg_cli.core.slides import reader as reader_module
from histoseg_cli.core.slides.reader import OpenSlideSource, SlideReader
from histoseg_cli.core.slides.tiler import Strip, read_strip

tifffile = pytest.importorskip("tifffile")
SLIDES = DATA / "slides"


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 1000 x 700: edge tiles of 256 px are partial on both axes
    return build_pyramid_tiff(tmp_path_factory.mktemp("fast") / "p.tiff", 1000, 700, 0.5,
                              min_level_side=256, images=real_tissue_images(limit=4))


def _openslide_only(reader: SlideReader) -> None:
    reader._levels = tuple(OpenSlideSource(reader._slide, i, reader._background)  # noqa: SLF001
                           for i in range(reader.info.level_count))


def _compare(path: Path, regions: list[tuple[int, int, int, int, int]]) -> list[float]:
    with SlideReader(path) as fast, SlideReader(path) as ref:
        _openslide_only(ref)
        diffs = []
        for level, x, y, w, h in regions:
            ds = fast.info.level_downsamples[level]
            a = fast.read_array(level, round(x * ds), round(y * ds), w, h)
            b = ref.read_array(level, round(x * ds), round(y * ds), w, h)
            assert a.shape == b.shape == (h, w, 3)
            diffs.append(float(np.abs(a.astype(np.int16) - b).mean()))
        return diffs


def test_fast_path_matches_openslide_on_a_jpeg_pyramid(pyramid: Path):
    with SlideReader(pyramid) as reader:
        assert reader.info.level_count >= 2
        assert {reader.pixel_source(i) for i in range(reader.info.level_count)} == {"jpeg-tiff"}
    # across tile borders, the partial edge tiles, and past the level's end (background)
    regions = [(0, 100, 50, 600, 400), (0, 700, 500, 300, 200), (0, 900, 600, 200, 200),
               (1, 0, 0, 500, 350), (1, 200, 100, 400, 300)]
    assert max(_compare(pyramid, regions)) < 0.5
    with SlideReader(pyramid) as reader:  # outside the slide: white, as OpenSlide's flattening
        outside = reader.read_array(0, 990, 690, 40, 40)
        assert (outside[15:, :] == 255).all() and (outside[:, 15:] == 255).all()


def test_non_jpeg_tiff_falls_back_to_openslide(tmp_path: Path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    path = tmp_path / "deflate.tiff"
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="zlib", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    with SlideReader(path) as reader:
        assert reader.info.vendor == "generic-tiff" and reader.pixel_source(0) == "openslide"
        np.testing.assert_array_equal(reader.read_array(0, 100, 200, 300, 150),
                                      pixels[200:350, 100:400])


def test_dct_downscale_is_close_to_lanczos(tmp_path: Path):
    # a single-level 0.5 mpp slide tiled at 1.0 mpp: shrink by 2, done in the JPEG decoder
    path = build_pyramid_tiff(tmp_path / "flat.tiff", 1024, 768, 0.5, min_level_side=4096,
                              images=real_tissue_images(limit=4))
    tiles = np.array([[x, y] for y in range(0, 384 - 64 + 1, 64) for x in range(0, 512 - 63, 64)])
    strip = Strip(path, 0, 1.0, 2.0, tiles, 64)
    with SlideReader(path) as fast, SlideReader(path) as ref:
        assert fast.reduction(0, 2.0) == 2
        _openslide_only(ref)
        assert ref.reduction(0, 2.0) == 1
        a, b = read_strip(fast, strip), read_strip(ref, strip)
    assert a.shape == b.shape == (len(tiles), 64, 64, 3)
    diff = np.abs(a.astype(np.int16) - b)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 20
    assert np.abs(a.mean(axis=(0, 1, 2)) - b.mean(axis=(0, 1, 2))).max() < 1.0  # no colour cast


def test_vendors_outside_the_registry_use_openslide(pyramid: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(reader_module, "FAST_PYRAMIDS", {})
    with SlideReader(pyramid) as reader:
        assert reader.pixel_source(0) == "openslide"


@pytest.mark.skipif(not (SLIDES / "cmu-1-small-region.svs").exists(),
                    reason="real slides not found in ../shared/data/slides")
def test_real_aperio_jpeg_slide_matches_openslide():
    path = SLIDES / "cmu-1-small-region.svs"
    with SlideReader(path) as reader:  # Aperio: abbreviated tiles + JPEGTables, RGB JPEG data
        assert reader.info.vendor == "aperio" and reader.pixel_source(0) == "jpeg-tiff"
    diffs = _compare(path, [(0, 0, 0, 700, 500), (0, 1500, 2500, 720, 467),
                            (0, 333, 1111, 1000, 900)])
    assert max(diffs) < 0.5


@pytest.mark.skipif(not (SLIDES / "tcga-cr-7395-01a-01-ts1.svs").exists(),
                    reason="real slides not found in ../shared/data/slides")
def test_jpeg2000_aperio_slide_uses_openslide():
    with SlideReader(SLIDES / "tcga-cr-7395-01a-01-ts1.svs") as reader:
        sources = {reader.pixel_source(i) for i in range(reader.info.level_count)}
        assert sources == {"openslide"}
        assert reader.read_array(0, 1000, 1000, 64, 64).shape == (64, 64, 3)

"""``histoseg tile`` on whole-slide images: pyramids built here with tifffile from real tissue
(../shared/data; generated texture when absent), plus the real Aperio slides when present."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.slidegen import DATA, build_pyramid_tiff, mosaic, real_tissue_images
from histoseg_cli.app import app
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.slides.reader import SlideInfo
from histoseg_cli.core.slides.resolution import Target, choose_resolution
from histoseg_cli.core.slides.tissue import detect_tissue

pytest.importorskip("tifffile")
runner = CliRunner()
SLIDES = DATA / "slides"


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    images = real_tissue_images(limit=8)
    return {
        "pyramid": build_pyramid_tiff(root / "in" / "a.tiff", 3072, 2048, 0.5, images=images),
        "other": build_pyramid_tiff(root / "in" / "sub" / "b.tiff", 1600, 1200, 0.5,
                                    min_level_side=512, images=images),
        "nompp": build_pyramid_tiff(root / "nompp" / "c.tiff", 1600, 1200, None, images=images),
    }


def tile(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, ["tile", *map(str, args)])
    return result.exit_code, " ".join(result.output.split())  # undo rich's line wrapping


def test_coords_attrs_and_pixels_match_the_level(slides: dict[str, Path], tmp_path: Path):
    code, output = tile(slides["pyramid"], "-o", tmp_path, "--patch-size", 64, "--min-tissue",
                        0, "--workers", 1, "-q")
    assert code == 0, output
    with Artifact(tmp_path / "a.h5") as art:
        assert art.class_names == [] and not art.has_labels
        assert art.meta.mpp == pytest.approx(1.0) and art.meta.magnification == pytest.approx(10)
        coords = art.file["coords"][:]
        attrs = dict(art.file["coords"].attrs)
        # 0.5 mpp slide at 1.0 mpp: level 1 (downsample 2) read as is; full tiles only
        assert len(art) == (1536 // 64) * (1024 // 64) == len(coords)
        assert attrs["patch_size"] == 64 and attrs["patch_level"] == 1
        assert attrs["patch_size_level0"] == 128 and list(attrs["downsample"]) == [2.0, 2.0]
        assert attrs["target_mpp"] == pytest.approx(1.0)
        assert attrs["target_magnification"] == pytest.approx(10.0)
        assert set(coords[:, 0] % 128) == {0} and coords[:, 0].max() == 3072 - 128
        i = len(art) // 2
        x, y = coords[i]
        with openslide.OpenSlide(slides["pyramid"]) as ref:
            expected = np.asarray(ref.read_region((int(x), int(y)), 1, (64, 64)).convert("RGB"))
        np.testing.assert_array_equal(art.patch(i), expected)
    assert (tmp_path / "a.thumbnail.png").exists()


def test_resampled_target_and_workers_give_the_same_artifact(slides: dict[str, Path],
                                                             tmp_path: Path):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, output = tile(slides["other"], "-o", out, "--mpp", 1.5, "--patch-size", 64,
                            "--workers", workers, "-q")
        assert code == 0, output
        with h5py.File(out / "b.h5") as f:
            runs[workers] = (f["patches"][:], f["coords"][:], dict(f["coords"].attrs))
    (p1, c1, attrs), (p2, c2, _) = runs[1], runs[2]
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(p1, p2)
    assert attrs["patch_level"] == 1 and attrs["patch_size_level0"] == 192  # 64 px * 3
    assert 0 < len(c1) <= (1600 // 3 // 64) * (1200 // 3 // 64)


def test_tissue_filter_drops_glass(slides: dict[str, Path], tmp_path: Path):
    code, output = tile(slides["pyramid"], "-o", tmp_path, "--patch-size", 64, "--min-tissue",
                        0.9, "-q")
    assert code == 0, output
    with Artifact(tmp_path / "a.h5") as art:
        coords = art.file["coords"][:]
        patches = art.file["patches"][:]
    grid = (1536 // 64) * (1024 // 64)
    assert 0.3 * grid < len(coords) < 0.8 * grid
    centre = (coords + 64) / np.array([3072, 2048]) - 0.5  # slidegen: ellipse of tissue
    assert np.all((centre[:, 0] / 0.42) ** 2 + (centre[:, 1] / 0.40) ** 2 < 1.05)
    glass = (patches.min(axis=-1) > 235).mean(axis=(1, 2))
    assert glass.mean() < 0.2


def test_detects_tissue_and_excludes_pen_marks():
    images = real_tissue_images(limit=4)
    rgb = np.full((400, 600, 3), 243, np.uint8)
    rgb[50:350, 50:350] = mosaic(images, 512)[:300, :300]
    rgb[100:300, 420:460] = (40, 90, 200)  # blue pen stroke on glass
    rgb[100:300, 500:540] = (30, 150, 60)  # green pen stroke
    mask = detect_tissue(rgb)
    assert mask.tissue[60:340, 60:340].mean() > 0.9
    assert not mask.tissue[:, 400:].any() and mask.pen[150:250, 430:450].all()
    assert not mask.tissue[:40].any()


def test_missing_mpp_asks_for_source_mpp(slides: dict[str, Path], tmp_path: Path):
    code, output = tile(slides["nompp"], "-o", tmp_path, "-q")
    assert code == 1
    assert "--source-mpp" in output and "records no resolution" in output
    assert "{source_mpp}" not in output  # the log line too names the flag
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # nothing half-written
    row = next(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert "pass source_mpp with" in row["error"]
    code, output = tile(slides["nompp"], "-o", tmp_path, "--source-mpp", 0.5, "-q")
    assert code == 0, output
    with Artifact(tmp_path / "c.h5") as art:
        assert art.meta.extra["source_mpp_from"] == "given" and len(art) > 0


def test_source_mpp_is_for_the_slides_that_need_it(slides: dict[str, Path], tmp_path: Path):
    """A cohort where one slide records no resolution: the rerun that adds --source-mpp
    tiles that slide and keeps the other's output (it records its own mpp, which wins); a
    rerun with another value refuses only the output it made; --force-source-mpp applies it
    to every slide."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.tiff").symlink_to(slides["other"])  # records 0.5 mpp
    (folder / "c.tiff").symlink_to(slides["nompp"])
    out = tmp_path / "out"
    base = (folder, "-o", out, "--patch-size", 112, "-q")
    code, output = tile(*base)
    assert code == 1 and "c.tiff" in output and "--source-mpp" in output
    code, output = tile(*base, "--source-mpp", 0.25)
    assert code == 0, output
    rows = {Path(r["slide"]).name: r["status"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert rows == {"b.tiff": "skipped", "c.tiff": "done"}
    with Artifact(out / "b.h5") as b, Artifact(out / "c.h5") as c:
        assert b.meta.extra["source_mpp"] == 0.5 and b.meta.extra["source_mpp_from"] == \
            "recorded mpp"
        assert c.meta.extra["source_mpp"] == 0.25 and c.meta.extra["source_mpp_from"] == "given"
        assert b.meta.extra["provenance"]["settings"]["source_mpp"] is None
        assert c.meta.extra["provenance"]["settings"]["source_mpp"] == 0.25
        assert len(c) < len(b)  # same pixel size; c's are 0.25 um wide, so half the tissue
    code, output = tile(*base, "--source-mpp", 0.3)
    assert code == 1 and "c.h5: made by another model or other settings" in output
    assert "source_mpp 0.25 -> 0.3" in output and "b.h5" not in output
    code, output = tile(*base, "--force-source-mpp")
    assert code == 2 and "--force-source-mpp needs --source-mpp" in output
    code, output = tile(*base, "--source-mpp", 0.25, "--force-source-mpp", "--overwrite")
    assert code == 0, output
    with Artifact(out / "b.h5") as b:
        assert b.meta.extra["source_mpp"] == 0.25 and b.meta.extra["source_mpp_from"] == "given"


@pytest.mark.slow
def test_folder_with_corrupt_slide_resume_and_overwrite(slides: dict[str, Path],
                                                        tmp_path: Path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.tiff").symlink_to(slides["pyramid"])
    (folder / "sub" / "b.tiff").symlink_to(slides["other"])
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    (folder / "notes.txt").write_text("not a slide")
    out = tmp_path / "out"
    code, output = tile(folder, "-o", out, "--patch-size", 112)
    assert code == 1 and "broken.svs" in output and "1 of 3 inputs failed" in output
    rows = {Path(r["slide"]).name: r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a.tiff": "done", "broken.svs": "failed", "b.tiff": "done"}
    assert "unsupported or corrupt" in rows["broken.svs"]["error"]
    assert int(rows["a.tiff"]["patches"]) == len(Artifact(out / "a.h5"))
    assert (out / "sub" / "b.h5").exists() and (out / "sub" / "b.thumbnail.png").exists()
    assert not [p for p in out.rglob(".*")]  # no partial or temporary files
    mtime = (out / "a.h5").stat().st_mtime_ns

    code, output = tile(folder, "-o", out, "--patch-size", 112)
    rows = {Path(r["slide"]).name: r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert code == 1 and rows["a.tiff"]["status"] == rows["b.tiff"]["status"] == "skipped"
    assert (out / "a.h5").stat().st_mtime_ns == mtime

    (folder / "broken.svs").unlink()
    code, output = tile(folder, "-o", out, "--patch-size", 112, "--overwrite", "-q")
    assert code == 0, output
    assert (out / "a.h5").stat().st_mtime_ns != mtime


@pytest.mark.slow
def test_plain_image_and_no_tissue(tmp_path: Path):
    images = real_tissue_images(limit=4)
    plain = tmp_path / "plain.png"
    Image.fromarray(mosaic(images, 1024)).save(plain)
    code, output = tile(plain, "-o", tmp_path / "out", "--source-mpp", 0.5, "--patch-size", 64,
                        "-q")
    assert code == 0, output
    with Artifact(tmp_path / "out" / "plain.h5") as art:
        assert art.file["coords"].attrs["patch_level"] == 0 and len(art) > 20
    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((600, 600, 3), 245, np.uint8)).save(glass)
    code, output = tile(glass, "-o", tmp_path / "out2", "--source-mpp", 0.5, "--patch-size",
                        64, "-q")
    assert code == 1 and "no tissue found" in output
    assert not (tmp_path / "out2" / "glass.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "luad", "--mpp", "1"], "--mpp applies to slides"),
    (["--classes", "a,b"], "--classes applies to --dataset/--masks"),
    (["--mpp", "1", "--magnification", "20"], "one of --mpp or --magnification"),
    (["-o", "x.h5"], "output folder"),
])
def test_mixed_options_are_usage_errors(tmp_path: Path, args: list[str], message: str):
    argv = ["-o", tmp_path / "o", *args] if "-o" not in args else args
    code, output = tile(tmp_path, *argv)
    assert code == 2 and message in output


@pytest.mark.slow
def test_compression_options_store_the_same_pixels(slides: dict[str, Path], tmp_path: Path):
    runs = {}
    for compression, workers in (("default", 2), ("none", 1), ("lzf", 1)):
        out = tmp_path / compression
        extra = [] if compression == "default" else ["--compression", compression]
        code, output = tile(slides["other"], "-o", out, "--patch-size", 64, "--workers",
                            workers, "-q", *extra)
        assert code == 0, output
        with h5py.File(out / "b.h5") as f:  # plain h5py reads what the workers encoded
            ds = f["patches"]
            sizes = [ds.id.get_chunk_info(i).size for i in range(ds.id.get_num_chunks())]
            runs[compression] = (ds.compression, ds[:], sum(sizes))
        assert len(Artifact(out / "b.h5")) == len(runs[compression][1])
    assert [r[0] for r in runs.values()] == ["gzip", None, "lzf"]
    np.testing.assert_array_equal(runs["default"][1], runs["none"][1])
    np.testing.assert_array_equal(runs["lzf"][1], runs["none"][1])
    assert runs["default"][2] < runs["none"][2] == runs["none"][1].nbytes


def test_strips_cover_each_tile_once_and_align_with_file_tiles():
    from histoseg_cli.core.slides.tiler import Grid, plan_strips

    grid = Grid(224, 224, 10240, 10240)
    origins = grid.origins()
    keep = origins[(origins[:, 0] - 5000) ** 2 + (origins[:, 1] - 5000) ** 2 < 4500 ** 2]
    strips = plan_strips(keep, grid, path=Path("s.tiff"), level=1, level_downsample=2.0,
                         scale=1.0, file_tile=(256, 256))
    got = np.concatenate([s.tiles for s in strips])
    assert sorted(map(tuple, got)) == sorted(map(tuple, keep))
    boxes = np.array([s.box for s in strips])  # (x0, y0, x1, y1)
    # each strip lies in one block of 1792 x 3584 px, 1792 = 224 * 8 = 256 * 7: strips meet on
    # file tile boundaries, so no file tile is decoded by two strips
    assert (boxes[:, 1] // 1792 == (boxes[:, 3] - 1) // 1792).all()
    assert (boxes[:, 0] // 3584 == (boxes[:, 2] - 1) // 3584).all()
    assert 10 < len(strips) < 40
    # two tissue pieces with glass between them in one aligned column block: each tile once
    pieces = origins[(origins[:, 0] // 224 % 10 < 3) | (origins[:, 0] // 224 % 10 > 6)]
    strips = plan_strips(pieces, grid, path=Path("s.tiff"), level=0, level_downsample=1.0,
                         scale=2.0, file_tile=(256, 256), strip_height=512)
    got = np.concatenate([s.tiles for s in strips])
    assert sorted(map(tuple, got)) == sorted(map(tuple, pieces))


@pytest.mark.parametrize("radius", [1, 2.5, 4, 8])
def test_disk_morphology_matches_the_distance_transform(radius: float):
    from scipy import ndimage

    from histoseg_cli.core.slides import tissue

    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((120, 160)), 3) > 0.5
    dilated = ndimage.distance_transform_edt(~mask) <= radius
    eroded = (ndimage.distance_transform_edt(np.pad(mask, 1)) > radius)[1:-1, 1:-1]
    np.testing.assert_array_equal(tissue._dilate(mask, radius), dilated)
    np.testing.assert_array_equal(tissue._erode(mask, radius), eroded)
    assert 0 < eroded.sum() < mask.sum() < dilated.sum()


def test_resolution_picks_the_level_at_or_finer_than_the_target():
    info = SlideInfo(Path("s.svs"), "aperio", ((40000, 30000), (10000, 7500), (2500, 1875)),
                     (1.0, 4.0, 16.0), 0.25, 40.0)
    ten = choose_resolution(info, Target(magnification=10))
    assert (ten.level, ten.scale, ten.mpp) == (1, 1.0, 1.0)
    twenty = choose_resolution(info, Target(magnification=20))
    assert (twenty.level, twenty.scale) == (0, 2.0)
    coarse = choose_resolution(info, Target(mpp=8.0))
    assert (coarse.level, coarse.scale) == (2, 2.0)
    # source_mpp is for slides that record no resolution; forced, it replaces the recorded one
    assert choose_resolution(info, Target(mpp=1.0), source_mpp=0.5).level == 1
    assert choose_resolution(info, Target(mpp=1.0), source_mpp=0.5, force=True).level == 0
    bare = SlideInfo(Path("s.tif"), "generic-tiff", ((4000, 3000),), (1.0,), None, None)
    assert choose_resolution(bare, Target(mpp=1.0), source_mpp=0.5).source_origin == "given"


@pytest.mark.skipif(not (SLIDES / "cmu-1-small-region.svs").exists(),
                    reason="real slides not found in ../shared/data/slides")
def test_real_aperio_slide(tmp_path: Path):
    code, output = tile(SLIDES / "cmu-1-small-region.svs", "-o", tmp_path, "-q")
    assert code == 0, output
    with Artifact(tmp_path / "cmu-1-small-region.h5") as art:
        assert art.meta.mpp == pytest.approx(0.998) and art.meta.magnification == 10
        assert 5 < len(art) < 24  # 24 grid tiles at 10x, about half of the slide is glass
        assert art.file["coords"].attrs["patch_size_level0"] == 448


def test_error_while_reading_leaves_nothing(slides: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch):
    from histoseg_cli.core.errors import InputError
    from histoseg_cli.core.slides import tiler

    calls = []

    def failing(reader, strip):  # the second strip is unreadable
        calls.append(strip)
        if len(calls) > 1:
            raise InputError(strip.path, "unreadable region (test)")
        return real(reader, strip)

    real = tiler.read_strip
    monkeypatch.setattr(tiler, "read_strip", failing)
    monkeypatch.setattr(tiler, "STRIP_HEIGHT", 64)  # many strips: fail after one is written
    code, output = tile(slides["pyramid"], "-o", tmp_path, "--patch-size", 32, "--workers", 1,
                        "-q")
    assert code == 1 and "unreadable region (test)" in output and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_one_slide_to_one_named_artifact(slides: dict[str, Path], tmp_path: Path):
    out = tmp_path / "sub" / "one.h5"
    code, output = tile(slides["pyramid"], "-o", out, "--patch-size", 64, "--min-tissue",
                        0.1, "-q")
    assert code == 0, output
    assert output.strip().splitlines() == [str(out)]
    assert Artifact(out).has_coords and len(Artifact(out)) > 0
    assert (tmp_path / "sub" / "one.thumbnail.png").is_file()


def test_missing_input_is_named_before_the_output(tmp_path: Path):
    code, output = tile(tmp_path / "nothere", "-o", tmp_path / "x.h5")
    assert code == 1 and "nothere: no such file or folder" in output

"""``histoseg predict`` as users run it: artifacts, image folders, slides; gate, resume, errors.

The networks are small and untrained (their outputs are arbitrary but deterministic): these
tests check the plumbing and the rules. That training + predict beats an untrained model is
checked end to end in test_pipeline.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.slidegen import build_pyramid_tiff, real_tissue_images
from histoseg_cli.app import app
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.metrics.evaluate import EvalRequest, run_eval
from tests.conftest import write_patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")
from tests.conftest import MODEL_CLASSES as CLASSES
from tests.conftest import MODEL_PATCH as PATCH


def run(*args: object):
    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_artifact_predictions_follow_the_gate(models: dict[str, Path], tmp_path: Path):
    data = write_patches(tmp_path / "test.h5", n=12, size=PATCH)
    code, stdout, err = run(models["seg"], data, "-o", tmp_path / "pred.h5", "--classifier",
                            models["cls"], "--gate-threshold", "0.5", "--device", "cpu",
                            "--json", "-q")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["inputs"][0]["tiles"] == 12
    with Artifact(tmp_path / "pred.h5") as pred, Artifact(data) as source:
        assert pred.kind == "predictions" and pred.names() == source.names()
        assert pred.meta.link.path == str(data.resolve())
        labels, gate = pred.dataset("predictions")[:], pred.dataset("gate_probs")[:]
        assert labels.shape == (12, PATCH, PATCH) and gate.shape == (12, 4)
        assert pred.meta.extra["gate"] == "classifier"
    for patch_labels, probs in zip(labels, gate):
        allowed = np.flatnonzero(probs > 0.5)
        if len(allowed):  # else the ungated fallback
            assert set(np.unique(patch_labels)) <= set(allowed.tolist())
    code, _, err = run(models["seg"], data, "-o", tmp_path / "ungated.h5", "--no-gate",
                       "--device", "cpu", "-q")
    assert code == 0, err
    with Artifact(tmp_path / "ungated.h5") as ungated:
        assert ungated.meta.extra["gate"] == "head" and not ungated.meta.extra["gate_enabled"]
        assert "gate_probs" in ungated.datasets  # recorded even when not applied


def test_image_folder_blends_windows_resumes_and_survives_a_bad_file(
        models: dict[str, Path], tmp_path: Path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "labels"
    code, stdout, err = run(models["seg"], images, "-o", out, "--device", "cpu", "-q")
    assert code == 1 and f"{images / 'broken.png'}: unreadable image" in err
    assert stdout.split() == [str(out / "a.png"), str(out / "b.png")]
    assert Image.open(out / "a.png").size == (70, 50) and Image.open(out / "b.png").size == (20, 20)
    assert Image.open(out / "a.png").mode == "P"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]
    gates = list(csv.DictReader(open(out / "gates" / "a.csv")))  # one row per window
    assert list(gates[0]) == ["x", "y", *CLASSES] and len(gates) == 4 * 3  # x 0/16/32/38, y 0/16/18
    assert {(int(r["x"]), int(r["y"])) for r in gates} >= {(0, 0), (38, 18)}
    rows = {r["input"]: r["status"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert rows == {str(images / "a.png"): "done", str(images / "b.jpg"): "done",
                    str(images / "broken.png"): "failed"}
    (images / "broken.png").unlink()
    before = (out / "a.png").stat().st_mtime_ns
    code, _, err = run(models["seg"], images, "-o", out, "--device", "cpu", "--json", "-q")
    assert code == 0, err
    assert (out / "a.png").stat().st_mtime_ns == before  # complete outputs are skipped
    code, stdout, _ = run(models["seg"], images, "-o", out, "--device", "cpu", "--overwrite",
                          "--json", "-q")
    assert [i["status"] for i in json.loads(stdout)["inputs"]] == ["done", "done"]


def test_artifact_folder_mirrors_sub_folders_resumes_and_survives_a_bad_file(
        models: dict[str, Path], tmp_path: Path):
    """A folder of patches artifacts (what tile writes for a folder of slides, thumbnails
    beside them): one predictions artifact each, as predicting each one alone gives."""
    tiles = tmp_path / "tiles"
    write_patches(tiles / "p1" / "a.h5", n=6, size=PATCH, seed=1)
    write_patches(tiles / "p2" / "a.h5", n=5, size=PATCH, seed=2)
    (tiles / "bad.h5").write_bytes(b"not an artifact")
    Image.new("RGB", (20, 20)).save(tiles / "a.thumbnail.png")  # not an input
    out = tmp_path / "pred"
    args = [models["seg"], tiles, "-o", out, "--classifier", models["cls"], "--device", "cpu",
            "-q"]
    code, stdout, err = run(*args)
    assert code == 1 and str(tiles / "bad.h5") in err
    assert stdout.split() == [str(out / "p1" / "a.h5"), str(out / "p2" / "a.h5")]
    code, _, err = run(models["seg"], tiles / "p2" / "a.h5", "-o", tmp_path / "alone.h5",
                       "--classifier", models["cls"], "--device", "cpu", "-q")
    assert code == 0, err
    with Artifact(out / "p2" / "a.h5") as folder_run, Artifact(tmp_path / "alone.h5") as alone:
        assert folder_run.kind == "predictions" and len(folder_run) == 5
        for name in ("predictions", "gate_probs"):
            assert np.array_equal(folder_run.dataset(name)[:], alone.dataset(name)[:])
    rows = {r["input"]: r["status"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert rows == {str(tiles / "bad.h5"): "failed", str(tiles / "p1" / "a.h5"): "done",
                    str(tiles / "p2" / "a.h5"): "done"}
    (tiles / "bad.h5").unlink()
    before = (out / "p1" / "a.h5").stat().st_mtime_ns
    code, stdout, err = run(*args, "--json")
    assert code == 0, err
    assert [i["status"] for i in json.loads(stdout)["inputs"]] == ["skipped", "skipped"]
    assert (out / "p1" / "a.h5").stat().st_mtime_ns == before
    # eval pairs the two folders by relative path (the thumbnail is not a label map): one
    # matrix, the sum of scoring each pair alone
    whole = run_eval(EvalRequest(out, tiles))
    pairs = [run_eval(EvalRequest(out / p / "a.h5", tiles / p / "a.h5")) for p in ("p1", "p2")]
    assert np.array_equal(whole.matrix.matrix, pairs[0].matrix.matrix + pairs[1].matrix.matrix)
    assert [r["name"] for r in whole.per_image] == (
        [f"p1/a/p{i:03d}" for i in range(6)] + [f"p2/a/p{i:03d}" for i in range(5)])
    (out / "p2" / "a.h5").unlink()
    assert run_eval(EvalRequest(out, tiles, only_predicted=True)).unpredicted == 5


def test_a_patch_sized_image_matches_the_artifact_prediction(models: dict[str, Path],
                                                             tmp_path: Path):
    data = write_patches(tmp_path / "p.h5", n=2, size=PATCH)
    with Artifact(data) as art:
        patch = art.patch(1)
    Image.fromarray(patch).save(tmp_path / "p001.png")
    assert run(models["seg"], data, "-o", tmp_path / "pred.h5", "--device", "cpu",
               "-q")[0] == 0
    assert run(models["seg"], tmp_path / "p001.png", "-o", tmp_path / "out",
               "--device", "cpu", "-q")[0] == 0
    with Artifact(tmp_path / "pred.h5") as pred:
        expected = pred.dataset("predictions")[1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "p001.png")), expected)


@pytest.mark.slow
def test_slide_map_overlay_areas_and_geojson(models: dict[str, Path], tmp_path: Path):
    build_pyramid_tiff(tmp_path / "in" / "s.tiff", 1600, 1200, 0.5,
                               images=real_tissue_images(limit=4))
    out = tmp_path / "out"
    code, stdout, err = run(models["seg"], tmp_path / "in", "-o", out, "--geojson",
                            "--device", "cpu", "--workers", "1", "--json", "-q")
    assert code == 0, err
    result = json.loads(stdout)["inputs"][0]
    with Artifact(out / "s.h5") as pred:
        labels = pred.file["slide/labels"]
        assert labels.shape == (600, 800)  # 1 mpp from a 0.5 mpp slide
        assert labels.attrs["downsample"] == 2.0
        full = labels[:]
        tiles = pred.dataset("predictions")[:]
        coords = pred.dataset("coords")[:] // 2
        assert len(tiles) == result["tiles"] > 0
    # no overlap: each tile's labels are the map inside it, where the tissue mask keeps them
    for (x, y), tile in zip(coords, tiles):
        window = full[y:y + PATCH, x:x + PATCH]
        tissue = window < 4
        assert np.array_equal(window[tissue], tile[tissue])
    assert (full == 4).any()  # glass around the ellipse is background
    areas = list(csv.DictReader(open(out / "s.areas.csv")))
    assert [r["class"] for r in areas] == CLASSES + ["background"]
    assert sum(int(r["pixels"]) for r in areas) == full.size
    assert float(areas[0]["area_mm2"]) == pytest.approx(int(areas[0]["pixels"]) / 1e6)
    assert Image.open(out / "s.overlay.png").size[1] >= 500
    doc = json.loads((out / "s.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    for feature in doc["features"]:
        assert feature["properties"]["classification"]["name"] in CLASSES
        assert len(feature["properties"]["classification"]["color"]) == 3
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and max(p[0] for p in ring) <= 1600
    manifest = list(csv.DictReader(open(out / "manifest.csv")))
    assert manifest[0]["status"] == "done"


@pytest.mark.slow
def test_real_slide(models: dict[str, Path], shared_data: Path, tmp_path: Path):
    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    code, stdout, err = run(models["seg"], slide, "-o", tmp_path / "cmu.h5", "--geojson",
                            "--device", "cpu", "--json", "-q")
    assert code == 0, err
    assert (tmp_path / "cmu.overlay.png").is_file() and (tmp_path / "cmu.areas.csv").is_file()
    doc = json.loads((tmp_path / "cmu.geojson").read_text())
    assert all("name" in f["properties"]["classification"] for f in doc["features"])
    with h5py.File(tmp_path / "cmu.h5") as f:
        assert f["slide/labels"].attrs["mpp"] == pytest.approx(1.0, rel=0.05)


def test_bad_inputs_are_one_line_errors(models: dict[str, Path], tmp_path: Path):
    data = write_patches(tmp_path / "d.h5", n=2, size=PATCH)
    code, _, err = run(tmp_path / "nothere", data, "-o", tmp_path / "x.h5")
    assert code == 1 and f"{tmp_path / 'nothere'}: no such file or folder" in err
    code, _, err = run(models["seg"], tmp_path / "missing", "-o", tmp_path / "x.h5")
    assert code == 1 and f"{tmp_path / 'missing'}: no such file or folder" in err
    code, _, err = run(models["seg"], data, "-o", tmp_path / "x.h5", "--classifier",
                       models["other"], "--device", "cpu")
    assert code == 1 and "differ from the segmenter's" in err and "Traceback" not in err
    small = write_patches(tmp_path / "s.h5", n=2, size=16)
    code, _, err = run(models["seg"], small, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert code == 1 and "has 16 px patches; the segmenter was trained on 32 px" in err
    code, _, err = run(models["seg"], data, "-o", tmp_path / "x.h5", "--gate-threshold", "1.5")
    assert code == 2 and "--gate-threshold" in err
    (tmp_path / "img.png").write_bytes(b"")  # a folder of images, predicted into itself
    code, _, err = run(models["seg"], tmp_path, "-o", tmp_path, "--device", "cpu")
    assert code == 2 and "is the input folder" in err
    code, _, err = run(models["plain"], data, "-o", tmp_path / "y.h5", "--device", "cpu")
    assert code == 0 and "no gate" in err
    # a slide that records no resolution beside a corrupt one (two reasons: each failure is
    # logged): the log line, the manifest and the cohort summary say which setting to pass,
    # none in the core's {field} form
    build_pyramid_tiff(tmp_path / "slides" / "n.tiff", 600, 400, None,
                       images=real_tissue_images(limit=1))
    (tmp_path / "slides" / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    code, _, err = run(models["seg"], tmp_path / "slides", "-o", tmp_path / "pred",
                       "--device", "cpu")
    assert code == 1 and "2 of 2 inputs failed" in err  # the closing line names broken.svs
    assert "pass --source-mpp with" in err and "{source_mpp}" not in err  # n.tiff's log line
    for table, column in (("manifest.csv", "input"), ("summary.csv", "slide")):
        rows = {Path(r[column]).name: r for r in csv.DictReader(open(tmp_path / "pred" / table))}
        assert rows["n.tiff"]["status"] == "failed" == rows["broken.svs"]["status"]
        assert "pass source_mpp with" in rows["n.tiff"]["error"], table


@pytest.mark.slow
def test_torchrun_splits_a_folder_across_ranks(models: dict[str, Path], tmp_path: Path):
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            images / f"im{i}.png")
    out = tmp_path / "out"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "histoseg_cli", "predict", str(models["seg"]), str(images), "-o", str(out),
         "--device", "cpu", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(result.stdout.split()) == [str(out / f"im{i}.png") for i in range(3)]
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [Path(r["input"]).name for r in rows] == ["im0.png", "im1.png", "im2.png"]
    assert all(r["status"] == "done" for r in rows)
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png", "im2.png"]


@pytest.mark.slow
def test_shards_of_a_slide_folder_merge_into_one_manifest_and_summary(
        models: dict[str, Path], tmp_path: Path):
    """Two array jobs (--shard 0/2, 1/2) over three slides: each writes its shard manifest
    and merges what it finds; after both, manifest.csv and summary.csv cover the cohort."""
    images = real_tissue_images(limit=2)
    for name in ("a", "b", "c"):
        build_pyramid_tiff(tmp_path / "in" / f"{name}.tiff", 800, 600, 0.5,
                           min_level_side=256, images=images)
    out = tmp_path / "out"
    base = [models["seg"], tmp_path / "in", "-o", out, "--mpp", 1.0, "--device", "cpu", "-q"]
    assert run(*base, "--shard", "1/2")[0] == 0  # takes b
    merged = {Path(r["input"]).name: r["status"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert merged == {"a.tiff": "pending", "b.tiff": "done", "c.tiff": "pending"}
    assert run(*base, "--shard", "0/2")[0] == 0  # takes a and c, then merges all
    merged = {Path(r["input"]).name: r["status"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert merged == {"a.tiff": "done", "b.tiff": "done", "c.tiff": "done"}
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [Path(r["slide"]).name for r in summary] == ["a.tiff", "b.tiff", "c.tiff"]
    assert all(float(r["tissue_mm2"]) > 0 for r in summary)
    shards = sorted(p.name for p in out.glob("manifest.shard-*"))
    assert shards == ["manifest.shard-0-of-2.csv", "manifest.shard-1-of-2.csv"]
    # a shard spec out of range is a usage error; another model is refused before any work
    code, _, err = run(*base, "--shard", "2/2")
    assert code == 2 and "--shard" in err
    code, _, err = run(*base, "--no-gate", "--shard", "1/2", "--overwrite")
    assert code == 1 and "different models or settings" in err


@pytest.mark.slow
def test_source_mpp_added_for_a_cohort_keeps_the_other_slides(models: dict[str, Path],
                                                               tmp_path: Path):
    """The rerun that adds --source-mpp for the slide that records no resolution predicts it
    and keeps the other slide's outputs; another value refuses only the output it made."""
    images = real_tissue_images(limit=2)
    build_pyramid_tiff(tmp_path / "in" / "s.tiff", 800, 600, 0.5, images=images)
    build_pyramid_tiff(tmp_path / "in" / "n.tiff", 800, 600, None, images=images)
    out = tmp_path / "out"
    base = [models["seg"], tmp_path / "in", "-o", out, "--mpp", 2.0, "--device", "cpu", "-q"]
    code, _, err = run(*base)
    assert code == 1 and "n.tiff" in err and "--source-mpp" in err
    made = (out / "s.h5").stat().st_mtime_ns
    code, _, err = run(*base, "--source-mpp", 0.5)
    assert code == 0, err
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {"n.tiff": "done", "s.tiff": "skipped"}
    assert rows["n.tiff"]["made_by"] == rows["s.tiff"]["made_by"]  # one run's settings
    assert (out / "s.h5").stat().st_mtime_ns == made
    with Artifact(out / "n.h5") as n, Artifact(out / "s.h5") as s:
        assert n.meta.extra["provenance"]["settings"]["source_mpp"] == 0.5
        assert s.meta.extra["provenance"]["settings"]["source_mpp"] is None
        assert n.file["slide/labels"].shape == s.file["slide/labels"].shape == (150, 200)
    summary = {Path(r["slide"]).name: r["status"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert summary == {"n.tiff": "done", "s.tiff": "skipped"}
    code, _, err = run(*base, "--source-mpp", 0.25)
    assert code == 1 and "n.h5: made by another model or other settings" in err
    assert "source_mpp 0.5 -> 0.25" in err and "s.h5" not in err


@pytest.mark.slow
def test_labels_tiff_opens_in_openslide_and_equals_the_map(models: dict[str, Path],
                                                           tmp_path: Path):
    import openslide
    import tifffile

    slide = build_pyramid_tiff(tmp_path / "in" / "s.tiff", 1600, 1200, 0.5,
                               images=real_tissue_images(limit=4))
    out = tmp_path / "out"
    code, _, err = run(models["seg"], tmp_path / "in", "-o", out, "--mpp", 2.0, "--device",
                       "cpu", "--labels-tiff", "-q")
    assert code == 0, err
    with Artifact(out / "s.h5") as art:
        labels = art.file["slide/labels"][:]
        palette = art.meta.resolved_palette()
    with tifffile.TiffFile(out / "s.labels.tif") as tif:
        pages = tif.pages
        assert np.array_equal(pages[0].asarray(), labels)  # the indices, unchanged
        assert pages[0].is_tiled and pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert [p.shape for p in pages][:2] == [labels.shape, tuple(-(-s // 2) for s in
                                                                   labels.shape)]
        assert np.array_equal(pages[1].asarray(), labels[::2, ::2])  # nearest, never blended
    viewer = openslide.OpenSlide(out / "s.labels.tif")
    assert float(viewer.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(2.0)
    source = openslide.OpenSlide(slide)
    # the same physical size as the slide (within one map pixel)
    width_um = viewer.dimensions[0] * 2.0
    assert abs(width_um - source.dimensions[0] * 0.5) <= 2.0
    region = np.asarray(viewer.read_region((0, 0), 0, viewer.dimensions).convert("RGB"))
    assert np.array_equal(region, palette[labels][..., :3])  # colours from the palette


def test_heatmaps_are_the_gated_probabilities_as_pyramids_and_pngs(models: dict[str, Path],
                                                                   tmp_path: Path):
    import openslide
    import tifffile

    build_pyramid_tiff(tmp_path / "in" / "s.tiff", 1600, 1200, 0.5,
                       images=real_tissue_images(limit=4))
    out = tmp_path / "out"
    code, stdout, err = run(models["seg"], tmp_path / "in" / "s.tiff", "-o", out, "--mpp", 2.0,
                            "--device", "cpu", "--heatmaps", "--json", "-q")
    assert code == 0, err
    result = json.loads(stdout)["inputs"][0]
    with Artifact(out / "s.h5") as art:
        labels = art.file["slide/labels"][:]
        probs = art.file["slide/probabilities"][:]
    assert probs.shape == (len(CLASSES), *labels.shape) and probs.dtype == np.uint8
    tissue = labels < len(CLASSES)
    assert tissue.any() and (probs[:, ~tissue] == 0).all()  # nothing outside tissue
    total = probs[:, tissue].astype(np.int64).sum(0)
    assert np.abs(total - 255).max() <= len(CLASSES)  # a distribution, rounded per class
    top2 = np.sort(probs[:, tissue].astype(np.int64), axis=0)[-2:]
    clear = top2[1] - top2[0] > 1  # not a tie after rounding to 0-255
    # (the tiny test model is close to uniform: few pixels have a clear winner)
    assert clear.sum() > 1000 and (probs.argmax(0)[tissue] == labels[tissue])[clear].all()
    for i, name in enumerate(CLASSES):
        tif = out / f"s.heatmap-{name}.tif"
        assert result["heatmaps"][name] == str(tif)
        with tifffile.TiffFile(tif) as f:
            assert np.array_equal(f.pages[0].asarray(), probs[i])
            assert f.pages[0].is_tiled and f.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
            assert np.array_equal(f.pages[1].asarray(), probs[i, ::2, ::2])
        viewer = openslide.OpenSlide(tif)
        assert float(viewer.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(2.0)
        overlay = Image.open(out / "s.overlay.png")
        png = Image.open(out / f"s.heatmap-{name}.png")
        assert png.height == overlay.height and png.width < overlay.width  # no legend strip
    # a rerun keeps them; heatmaps of an image are a usage error
    code, _, err = run(models["seg"], tmp_path / "in" / "s.tiff", "-o", out, "--mpp", 2.0,
                       "--device", "cpu", "--heatmaps")
    assert code == 0 and "skipped" in err
    image = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    code, _, err = run(models["seg"], image, "-o", tmp_path / "img-out", "--heatmaps")
    assert code == 2 and "--heatmaps: applies to whole slides" in err



@pytest.mark.slow
def test_two_torchrun_nodes_share_a_slide_folder(models: dict[str, Path], tmp_path: Path):
    """The multi-node form docs/predict.md gives (--nnodes 2, c10d rendezvous), as two
    launchers on this machine: every slide done once, one manifest and one cohort summary
    (rank 0 merges), the paths on stdout once."""
    import os
    import socket
    import subprocess
    import sys

    for i, size in enumerate((900, 700, 800)):
        build_pyramid_tiff(tmp_path / "in" / f"s{i}.tiff", size, 600, 0.5,
                           images=real_tissue_images(limit=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
         "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
         "cohort", "-m", "histoseg_cli", "predict", str(models["seg"]), str(tmp_path / "in"),
         "-o", str(out), "--mpp", "2.0", "--device", "cpu", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(node.wait(timeout=600), *node.communicate()) for node in nodes]
    assert all(code == 0 for code, _, _ in results), [err[-1500:] for _, _, err in results]
    printed = sorted(line for _, stdout, _ in results for line in stdout.split())
    assert printed == [str(out / f"s{i}.h5") for i in range(3)]  # once, from rank 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [
        (f"s{i}.tiff", "done") for i in range(3)]
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [Path(r["slide"]).name for r in summary] == [f"s{i}.tiff" for i in range(3)]
    assert all(float(r["tissue_mm2"]) > 0 for r in summary)

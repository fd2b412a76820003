"""A disk that fills up while histoseg writes: one line naming the input and the output that
did not fit ("no space left on the device"), exit 1, no partial file left behind, and in a
folder run the other inputs go on and the process ends normally (HDF5 crashed the process
when a file whose writes had failed was closed and freed). The full disk is real: a small
tmpfs mounted in a private user and mount namespace (``unshare``), sized from an
unconstrained run."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.slidegen import build_pyramid_tiff, real_tissue_images
from conftest import write_patches
from histoseg_cli.app import app

pytestmark = pytest.mark.slow
PAGE = 4096


def _in_small_disk(folder: Path, size: int, command: list[str], kept: Path | None = None
                   ) -> subprocess.CompletedProcess:
    """``command`` with a ``size``-byte tmpfs mounted on ``folder``, visible to it alone; what
    the tmpfs holds afterwards, hidden files included, is copied to ``kept`` (the tmpfs goes
    with the namespace)."""
    after = f'; rc=$?; cp -a "{folder}/." "{kept}/"; exit $rc' if kept else ""
    script = f'mount -t tmpfs -o size={size} tmpfs "{folder}" || exit 99; "$@"{after}'
    if kept:
        kept.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           "sh", *command], capture_output=True, text=True, timeout=300)


def _need_namespaces(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    probe = tmp_path / "probe"
    probe.mkdir()
    if _in_small_disk(probe, 1 << 20, ["true"]).returncode != 0:
        pytest.skip("user and mount namespaces are not allowed here")


def _on_tmpfs(files: list[Path]) -> int:
    """Bytes the files take on a tmpfs (whole pages)."""
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)


def test_a_full_disk_while_writing_the_labels_tiff_leaves_no_tiff(models: dict[str, Path],
                                                                   tmp_path: Path):
    _need_namespaces(tmp_path)
    slide = build_pyramid_tiff(tmp_path / "in" / "s.tiff", 2400, 1800, 0.5,
                               images=real_tissue_images(limit=4))
    predict = [sys.executable, "-m", "histoseg_cli", "predict", str(models["seg"]), str(slide),
               "--mpp", "1.0", "--device", "cpu", "--labels-tiff", "-q"]
    free = tmp_path / "free"  # the unconstrained run, in this process
    done = CliRunner().invoke(app, [*predict[3:], "-o", str(free / "s.h5")])
    assert done.exit_code == 0, done.output
    tiff = (free / "s.labels.tif").stat().st_size
    others = sum(p.stat().st_size for p in free.iterdir() if p.suffix != ".tif")
    assert tiff > 3 * 4096  # large enough to be cut off part way
    full = tmp_path / "full"
    full.mkdir()
    kept = tmp_path / "kept"
    res = _in_small_disk(full, others + 8 * 4096 + tiff // 2,
                         [*predict, "-o", str(full / "s.h5")], kept)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and "no space left on the device" in lines[0], res.stderr
    assert str(slide) in lines[0] and "Traceback" not in res.stderr
    left = [p.name for p in kept.iterdir()]
    assert "s.h5" in left  # the artifact fitted; the TIFF, half written, was removed
    assert not [name for name in left if ".tif" in name or name.startswith(".")], left


@pytest.mark.parametrize("command", ["tile", "predict"])
def test_a_slide_folder_that_fills_the_disk(models: dict[str, Path], tmp_path: Path,
                                            command: str):
    """Slide a fits, the disk fills during b, and c starts on a full disk: a is kept, b and c
    fail with one line each, nothing partial is left, and the process ends with exit 1 (it
    crashed, or stopped at b with HDF5's message, before)."""
    _need_namespaces(tmp_path)
    images = real_tissue_images(limit=4) or None
    for name in "abc":
        build_pyramid_tiff(tmp_path / "in" / f"{name}.tiff", 1400, 1100, 0.5, images=images)
    args = {"tile": ["tile", tmp_path / "in", "--mpp", 1.0, "--patch-size", 32,
                     "--min-tissue", 0],
            "predict": ["predict", models["seg"], tmp_path / "in", "--mpp", 1.0,
                        "--device", "cpu"]}[command]
    base = [*map(str, args), "-q"]
    free = tmp_path / "free"  # the unconstrained run, in this process (no start-up to pay)
    done = CliRunner().invoke(app, [*base, "-o", str(free)])
    assert done.exit_code == 0, done.output
    slide_a = _on_tmpfs([p for p in free.iterdir() if p.name.startswith("a.")])
    artifact_b = (free / "b.h5").stat().st_size
    assert artifact_b > 8 * PAGE  # large enough to be cut off part way
    shared = _on_tmpfs([p for p in free.iterdir() if p.name[:2] not in ("a.", "b.", "c.")])
    full, kept = tmp_path / "full", tmp_path / "kept"
    full.mkdir()
    # room for a, the folder's own files twice (rewritten atomically), half of b's artifact
    res = _in_small_disk(full, slide_a + 2 * shared + artifact_b // 2,
                         [sys.executable, "-m", "histoseg_cli", *base, "-o", str(full)], kept)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    rows = {Path(r[next(iter(r))]).stem: r for r in csv.DictReader(open(kept / "manifest.csv"))}
    assert [rows[n]["status"] for n in "abc"] == ["done", "failed", "failed"], rows
    for name in "bc":
        assert "no space left on the device" in rows[name]["error"], rows[name]
        assert f"{name}.tiff" in res.stderr
    assert not [p.name for p in kept.iterdir() if p.name.startswith(".")]  # no partial file
    assert (kept / "a.h5").is_file() and not (kept / "b.h5").exists()


@pytest.mark.parametrize("command", ["cams", "train-cls"])
def test_a_full_disk_names_the_output_in_one_line(models: dict[str, Path], tmp_path: Path,
                                                  command: str):
    """cams (a resumable artifact: HDF5 reports the full disk as a RuntimeError) and
    train-cls (torch.save reports it as "unexpected pos"): one line naming the output."""
    _need_namespaces(tmp_path)
    patches = write_patches(tmp_path / "p.h5", n=1000 if command == "cams" else 32, masks=False)
    full, kept = tmp_path / "full", tmp_path / "kept"
    full.mkdir()
    args, output = {
        "cams": (["cams", models["cls"], patches, "-o", full / "pm.h5", "--tta", "none",
                  "--gallery", 0], full / "pm.h5"),
        "train-cls": (["train-cls", patches, "-o", full / "run", "--backbone", "resnet18",
                       "--epochs", 1, "-b", 16, "-j", 0], full / "run" / "checkpoint.pt"),
    }[command]
    room = {"cams": 32 * 1024, "train-cls": 256 * 1024}[command]  # a fraction of the output
    res = _in_small_disk(full, room, [sys.executable, "-m", "histoseg_cli", *map(str, args),
                                      "-q"], kept)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0] == f"error: {output}: no space left on the device"
    left = [p.relative_to(kept).as_posix() for p in kept.rglob("*")]
    assert not [name for name in left if Path(name).name.startswith(".")], left

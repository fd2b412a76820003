"""A disk that fills up while predict writes a slide's labels TIFF: one line naming the slide
and the full disk, exit 1, and no TIFF left that looks complete (the temporary file is gone
too). The full disk is real: a small tmpfs mounted in a private user and mount namespace
(``unshare``), sized from an unconstrained run so the artifact fits and the TIFF does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.slidegen import build_pyramid_tiff, real_tissue_images

pytestmark = pytest.mark.slow


def _in_small_disk(folder: Path, size: int, command: list[str], listing: Path | None = None
                   ) -> subprocess.CompletedProcess:
    """``command`` with a ``size``-byte tmpfs mounted on ``folder``, visible to it alone; what
    the tmpfs holds afterwards is listed into ``listing`` (it goes with the namespace)."""
    after = f'; rc=$?; ls -A "{folder}" > "{listing}"; exit $rc' if listing else ""
    script = f'mount -t tmpfs -o size={size} tmpfs "{folder}" || exit 99; "$@"{after}'
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           "sh", *command], capture_output=True, text=True, timeout=300)


def test_a_full_disk_while_writing_the_labels_tiff_leaves_no_tiff(models: dict[str, Path],
                                                                   tmp_path: Path):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    probe = tmp_path / "probe"
    probe.mkdir()
    if _in_small_disk(probe, 1 << 20, ["true"]).returncode != 0:
        pytest.skip("user and mount namespaces are not allowed here")
    slide = build_pyramid_tiff(tmp_path / "in" / "s.tiff", 2400, 1800, 0.5,
                               images=real_tissue_images(limit=4))
    predict = [sys.executable, "-m", "histoseg_cli", "predict", str(models["seg"]), str(slide),
               "--mpp", "1.0", "--device", "cpu", "--labels-tiff", "-q"]
    free = tmp_path / "free"
    done = subprocess.run([*predict, "-o", str(free / "s.h5")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tiff = (free / "s.labels.tif").stat().st_size
    others = sum(p.stat().st_size for p in free.iterdir() if p.suffix != ".tif")
    assert tiff > 3 * 4096  # large enough to be cut off part way
    full = tmp_path / "full"
    full.mkdir()
    listing = tmp_path / "left.txt"
    res = _in_small_disk(full, others + 8 * 4096 + tiff // 2,
                         [*predict, "-o", str(full / "s.h5")], listing)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and "no space left on the device" in lines[0], res.stderr
    assert str(slide) in lines[0] and "Traceback" not in res.stderr
    left = listing.read_text().split()
    assert "s.h5" in left  # the artifact fitted; the TIFF, half written, was removed
    assert not [name for name in left if ".tif" in name or name.startswith(".")], left

"""Benchmark ``histoseg tile`` on a whole slide: tiles/s and peak RSS vs the naive way.

Builds (once, cached outside the repo) a pyramidal JPEG TIFF of --size x --size px at 0.5 mpp
from real tissue in ../shared/data, then in the same run measures, at --patch-size px and
--mpp (default 224 px at 1.0 mpp = 10x):

* ours: ``histoseg tile`` with each --workers value (on the slide, or with --slides N on a
  folder of N copies of it, as users tile folders), in a fresh process each (peak RSS summed
  over the process tree, workers included): the whole command (Python start-up, opening,
  tissue detection, tiling, writing the artifact) and its tiling phase alone (reading +
  writing tiles: the rate the progress bar and manifest report);
* naive: ``read_region`` per tile at level 0 + resize, one process, same tiles, no writing;
* TIAToolbox SlidingWindowPatchExtractor, when tiatoolbox is importable (not a dependency).

Prints tiles/s, ratios to naive, CPU seconds (the process tree's user + system time: on a
machine shared with other work, tiles per CPU-second compares methods more fairly than
wall-clock rates) and peak RSS. Runs on CPU (reading slides does not use a GPU;
--device is accepted for symmetry with the other benchmarks and ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import run_tree  # noqa: E402


NAIVE = r"""
import sys, time, json, numpy as np, openslide, h5py
from PIL import Image
slide = openslide.OpenSlide(sys.argv[1]); coords = h5py.File(sys.argv[2])["coords"][:]
size0, size = int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter(); total = 0
for x, y in coords:
    tile = slide.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
    arr = np.asarray(tile.resize((size, size), Image.Resampling.LANCZOS)); total += arr[0, 0, 0]
print(json.dumps({"seconds": time.perf_counter() - t, "tiles": len(coords)}))
"""

TIA = r"""
import sys, time, json
from tiatoolbox.tools.patchextraction import SlidingWindowPatchExtractor
from tiatoolbox.wsicore.wsireader import WSIReader
reader = WSIReader.open(sys.argv[1])
t = time.perf_counter()
ext = SlidingWindowPatchExtractor(reader, patch_size=(int(sys.argv[2]),) * 2,
    resolution=float(sys.argv[3]), units="mpp", input_mask="otsu", min_mask_ratio=0.25)
n = sum(1 for _ in ext)
print(json.dumps({"seconds": time.perf_counter() - t, "tiles": n}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20480, help="slide side in px (level 0)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=1.0, help="target um/px")
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values")
    parser.add_argument("--slides", type=int, default=1,
                        help="tile a folder of this many copies of the slide (one command)")
    parser.add_argument("--magnification", type=float,
                        help="pass --magnification instead of --mpp (10 = 1.0 mpp)")
    parser.add_argument("--level-factor", type=int, default=2,
                        help="pyramid downsample between levels (2: libvips style, 4: Aperio)")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "histoseg-bench")
    parser.add_argument("--naive-limit", type=int, default=600,
                        help="naive: time this many tiles and extrapolate the rate")
    parser.add_argument("--compression", choices=("gzip", "none", "lzf"),
                        help="--compression for histoseg tile (default: its own, gzip)")
    parser.add_argument("--device", default="cpu", help="ignored: slide reading is CPU work")
    args = parser.parse_args()

    from benchmarks.slidegen import build_pyramid_tiff

    slide = args.cache / f"bench-{args.size}-f{args.level_factor}.tiff"
    if not slide.exists():
        t = time.perf_counter()
        build_pyramid_tiff(slide, args.size, args.size, 0.5, factor=args.level_factor)
        print(f"built {slide} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"slide: {slide.name}, {args.size}x{args.size} px at 0.5 mpp, levels x"
          f"{args.level_factor}; target {args.patch_size} px at {args.mpp} mpp; "
          f"{os.cpu_count()} CPUs")

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[tuple[str, float, float, int, float | None]] = []
    artifact = None
    source = slide
    if args.slides > 1:  # a folder of copies (hard links): the command as users run it
        source = args.cache / f"folder-{args.slides}"
        source.mkdir(exist_ok=True)
        for k in range(args.slides):
            copy = source / f"slide{k}.tiff"
            if not copy.exists():
                os.link(slide, copy)
    resolution = (["--magnification", str(args.magnification)] if args.magnification
                  else ["--mpp", str(args.mpp)])
    for w in [int(x) for x in args.workers.split(",")]:
        out_dir = args.cache / f"out-w{w}"
        cmd = [sys.executable, "-m", "histoseg_cli", "tile", str(source), "-o", str(out_dir),
               *resolution, "--patch-size", str(args.patch_size), "--workers",
               str(w), "--overwrite", "--quiet", "--json"]
        if args.compression:
            cmd += ["--compression", args.compression]
        seconds, peak, out, cpu = run_tree(cmd)
        done = json.loads(out)["slides"]
        n = sum(int(r["patches"]) for r in done)
        what = f"{len(done)} slides, " if len(done) > 1 else ""
        rows.append((f"histoseg tile --workers {w} ({what}whole command)", n / seconds, peak,
                     n, cpu))
        phase = n / sum(int(r["patches"]) / float(r["tiles_per_s"]) for r in done)
        rows.append((f"histoseg tile --workers {w} (tiling phase)", phase, peak, n, None))
        artifact = Path(done[0]["output"])

    import h5py

    with h5py.File(artifact) as f:
        size0 = int(f["coords"].attrs["patch_size_level0"])
        limited = artifact.with_name("naive-coords.h5")
        with h5py.File(limited, "w") as g:
            g["coords"] = f["coords"][: args.naive_limit]
    seconds, peak, out, cpu = run_tree([sys.executable, "-c", NAIVE, str(slide), str(limited),
                                        str(size0), str(args.patch_size)])
    naive = json.loads(out)
    naive_rate = naive["tiles"] / naive["seconds"]
    rows.append(("naive read_region + resize", naive_rate, peak, naive["tiles"], cpu))
    try:
        import tiatoolbox  # noqa: F401
    except ImportError:
        print("TIAToolbox not installed: skipped")
    else:
        seconds, peak, out, cpu = run_tree([sys.executable, "-c", TIA, str(slide),
                                            str(args.patch_size), str(args.mpp)])
        tia = json.loads(out)
        rows.append(("TIAToolbox SlidingWindowPatchExtractor", tia["tiles"] / tia["seconds"],
                     peak, tia["tiles"], cpu))

    print(f"{'method':52s} {'tiles':>7s} {'tiles/s':>9s} {'x naive':>8s} {'CPU s':>7s} "
          f"{'tiles/CPU-s':>11s} {'peak RSS MB':>12s}")
    for name, rate, peak, n, cpu in rows:
        cpu_cols = f"{cpu:7.1f} {n / cpu:11.1f}" if cpu else f"{'':7s} {'':11s}"
        print(f"{name:52s} {n:7d} {rate:9.1f} {rate / naive_rate:8.2f} {cpu_cols} {peak:12.0f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ours = [r for r in rows if r[0].endswith("(tiling phase)")]
    if len(ours) > 1:
        print(f"scaling --workers {args.workers}: "
              + ", ".join(f"{r[1] / ours[0][1]:.2f}x" for r in ours))


if __name__ == "__main__":
    main()

"""Real ``histoseg`` processes for the fault suite: started, killed with SIGKILL at chosen
moments, rerun; and the tiny pipeline (demo data, artifacts, models, slides) they run on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset

ROOT = Path(__file__).resolve().parents[2]
#: Moments of the kills of one chain: seconds after the start (interpreter start-up), then
#: fractions of an uninterrupted run's duration (the middle, near the final write).
KILL_AT = (1.0, 0.5, 0.9)


def argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "histoseg_cli", *map(str, args)]


def run(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``histoseg ARGS`` to the end."""
    return subprocess.run(argv(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def timed(*args: object, cwd: Path) -> float:
    """Run ``histoseg ARGS`` uninterrupted (it must succeed); its wall time in seconds."""
    start = time.perf_counter()
    done = run(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_after(seconds: float, *args: object, cwd: Path) -> list[int]:
    """Start ``histoseg ARGS``, SIGKILL it (the command only, as a crash would) after
    ``seconds`` unless it ended first; its child processes at that moment."""
    proc = subprocess.Popen(argv(*args), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        proc.wait(timeout=seconds)
        return []
    except subprocess.TimeoutExpired:
        kids = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return kids


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing columns (which differ between any two runs)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def build_pipeline(root: Path) -> dict[str, Path]:
    """Demo data, its artifacts, a 1-epoch classifier, pseudo masks and a 1-epoch segmenter,
    two small pyramidal slides: everything at 32 px, in seconds."""
    cli = CliRunner()

    def invoke(*args: object) -> None:
        result = cli.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    data = root / "D"
    write_demo_dataset(data, DemoConfig(patch_size=32, train=40, val=4, test=6))
    invoke("tile", data, "-o", root / "art", "-q")
    invoke("train-cls", root / "art" / "train.h5", "-o", root / "cls", "--backbone",
           "resnet18", "--epochs", 1, "-b", 10, "-j", 0, "-q")
    invoke("cams", root / "cls", root / "art" / "train.h5", "-o", root / "pm.h5", "--tta",
           "none", "--gallery", 0, "-q")
    invoke("train-seg", root / "art" / "train.h5", root / "pm.h5", "-o", root / "seg",
           "--encoder", "resnet18", "--epochs", 1, "-b", 10, "-j", 0, "-q")
    from benchmarks.slidegen import build_pyramid_tiff, texture

    images = [texture(512, seed) for seed in range(2)]
    for name, (w, h) in {"a": (1600, 1200), "b": (1200, 1000)}.items():
        build_pyramid_tiff(root / "slides" / f"{name}.tiff", w, h, 0.5, min_level_side=512,
                           images=images)
    return {"root": root, "data": data, "art": root / "art", "cls": root / "cls",
            "pm": root / "pm.h5", "seg": root / "seg", "slides": root / "slides"}


def same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))

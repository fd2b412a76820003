"""``tile FOLDER`` without --dataset/--masks: the layout train-cls detects, plain images
refused with one line, a folder whose inputs all fail for one reason summarised once."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset

#: Attributes that say when an artifact was written, not what it holds.
WHEN = {"created", "created_at", "timestamp", "histoseg_version"}


def _histoseg(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histoseg_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _contents(path: Path) -> dict[str, object]:
    """Every dataset's bytes and every attribute of an artifact, except write times."""
    found: dict[str, object] = {}
    with h5py.File(path) as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                found[name] = (value.tolist() if value.dtype == object else value.tobytes()) \
                    if obj.shape else value
            for key, value in obj.attrs.items():
                if key not in WHEN:
                    found[f"{name}@{key}"] = str(value)
        f.visititems(visit)
        found.update({f"@{k}": str(v) for k, v in f.attrs.items() if k not in WHEN})
    return found


def test_demo_folder_with_and_without_dataset_gives_identical_artifacts(cli, tmp_path):
    write_demo_dataset(tmp_path / "D", DemoConfig(patch_size=32, train=12, val=2, test=2))
    named = cli("tile", tmp_path / "D", "--dataset", "luad", "-o", tmp_path / "named")
    assert named.exit_code == 0, named.stderr
    detected = cli("tile", tmp_path / "D", "-o", tmp_path / "detected")
    assert detected.exit_code == 0, detected.stderr
    assert "detected the luad layout" in detected.stderr
    names = sorted(p.name for p in (tmp_path / "named").glob("*.h5"))
    assert names == ["test.h5", "train.h5", "val.h5"]
    assert names == sorted(p.name for p in (tmp_path / "detected").glob("*.h5"))
    for name in names:
        a, b = _contents(tmp_path / "named" / name), _contents(tmp_path / "detected" / name)
        assert a.keys() == b.keys() and len(a) > 3
        differ = [k for k in a if a[k] != b[k] and not k.endswith("source")]
        assert not differ, (name, differ)
    # the training split alone is detected too
    one = cli("tile", tmp_path / "D" / "train", "-o", tmp_path / "train.h5")
    assert one.exit_code == 0 and "detected the luad layout" in one.stderr


def test_logs_to_a_file_or_pipe_are_one_line_per_message(tmp_path):
    """stderr redirected (not a terminal): a message longer than 80 columns stays on one
    line, so a log can be grepped; rich would wrap it and pad it with spaces."""
    deep = tmp_path / ("a_folder_name_long_enough_to_push_the_message_past_eighty_columns" * 2)
    write_demo_dataset(deep / "D", DemoConfig(patch_size=32, train=4, val=1, test=1))
    done = _histoseg("tile", deep / "D", "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if "detected the luad layout" in line)
    assert line.startswith("INFO") and str(deep / "D") in line
    assert line.endswith("(--dataset luad)"), line


def test_plain_images_without_masks_or_layout_are_refused_in_one_line(cli, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    res = cli("tile", folder, "-o", tmp_path / "out")
    assert res.exit_code == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert str(folder) in line and "3 plain images" in line
    for flag in ("--dataset", "--masks", "--source-mpp", "[1 0 0 1]", "[1001]"):
        assert flag in line
    assert not (tmp_path / "out").exists()


def test_every_input_failing_for_one_reason_is_one_line(tmp_path):
    folder = tmp_path / "tifs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # plain TIFFs: tried as slides, none records a resolution
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(
            folder / f"s{i}.tif")
    res = _histoseg("tile", folder, "-o", tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, res.stderr
    assert "6 of 6 inputs: the slide records no resolution" in errors[0]
    assert "--source-mpp" in errors[0] and "Traceback" not in res.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert [r["status"] for r in rows] == ["failed"] * 6


def test_failure_log_holds_one_reason_back_until_something_else_happens(caplog):
    from histoseg_cli.core.errors import InputError
    from histoseg_cli.core.folder_run import FailureLog

    def err(name: str, why: str) -> InputError:
        return InputError(Path(name), why)

    same = FailureLog(3)
    for name in ("a", "b", "c"):
        e = err(name, "no resolution")
        same.failure(Path(name), str(e), e)
    assert not caplog.records and same.all_one_reason
    assert same.closing_message(Path("m.csv")) == "3 of 3 inputs: no resolution; see m.csv"

    mixed = FailureLog(4)
    for name in ("a", "b"):
        e = err(name, "no resolution")
        mixed.failure(Path(name), str(e), e)
    assert not caplog.records
    mixed.success()  # a success releases what was held, in order
    assert [r.getMessage() for r in caplog.records] == ["a: no resolution", "b: no resolution"]
    e = err("d", "corrupt")
    mixed.failure(Path("d"), str(e), e)
    assert caplog.records[-1].getMessage() == "d: corrupt" and not mixed.all_one_reason
    assert mixed.closing_message() == "3 of 4 inputs failed (first: a: no resolution)"

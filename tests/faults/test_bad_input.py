"""Bad input, table-driven, for every command: the exit code (1 bad input, 2 usage), one line
on stderr naming the file or flag, no traceback, and nothing written anywhere."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_patches
from histoseg_cli.app import app
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset

pytestmark = pytest.mark.slow

#: (id, argv with {placeholders}, exit code, text the error line must contain)
CASES = {
    "tile": [
        ("missing", "tile {tmp}/nope -o {tmp}/out", 1, "nope"),
        ("empty-folder", "tile {empty} -o {tmp}/out", 1, "empty"),
        ("plain-images", "tile {plain} -o {tmp}/out", 2, "plain"),
        ("patch-size", "tile {slides} -o {tmp}/out --patch-size 4", 2, "--patch-size"),
        ("compression", "tile {slides} -o {tmp}/out --compression zstd", 2, "--compression"),
        ("mpp-and-mag", "tile {slides} -o {tmp}/out --mpp 1 --magnification 20", 2, "--mpp"),
        ("out-is-file", "tile {slides} -o {afile}", 1, "afile"),
        ("out-under-file", "tile {slides} -o {afile}/sub", 1, "afile"),
        ("unknown-dataset", "tile {data} --dataset nope -o {tmp}/out", 2, "nope"),
        ("masks-no-classes", "tile {data}/test/img --masks {data}/test/mask -o {tmp}/o.h5",
         2, "--classes"),
        ("classes-on-slides", "tile {slides} -o {tmp}/out --classes a,b", 2, "--classes"),
        ("splits-into-file", "tile {data} -o {tmp}/one.h5", 2, "one.h5"),
        ("slide-option-on-dataset", "tile {data} -o {tmp}/out --mpp 1", 2,
         "--mpp applies to slides only"),
    ],
    "train-cls": [
        ("missing", "train-cls {tmp}/nope.h5 -o {tmp}/out {cls_opts}", 1, "nope.h5"),
        ("empty-folder", "train-cls {empty} -o {tmp}/out {cls_opts}", 1, "empty"),
        ("truncated", "train-cls {trunc_h5} -o {tmp}/out {cls_opts}", 1, "trunc.h5"),
        ("foreign-h5", "train-cls {foreign} -o {tmp}/out {cls_opts}", 1, "foreign.h5"),
        ("text-file", "train-cls {notes} -o {tmp}/out {cls_opts}", 1, "notes.txt"),
        ("val-other-classes", "train-cls {art}/train.h5 --val {other} -o {tmp}/out {cls_opts}",
         1, "other.h5"),
        ("epochs-0", "train-cls {art}/train.h5 -o {tmp}/out --epochs 0", 2, "--epochs"),
        ("backbone", "train-cls {art}/train.h5 -o {tmp}/out --backbone nope", 2, "nope"),
        ("pretrained-missing", "train-cls {art}/train.h5 -o {tmp}/out {cls_opts} --pretrained "
         "{tmp}/w.pt", 1, "w.pt"),
        ("out-is-file", "train-cls {art}/train.h5 -o {afile} {cls_opts}", 1, "afile"),
        ("batch-too-big", "train-cls {art}/val.h5 -o {tmp}/out --backbone resnet18 -b 500",
         1, "val.h5"),
        ("resume-nothing", "train-cls {art}/train.h5 -o {tmp}/out {cls_opts} --resume", 1,
         "out"),
    ],
    "cams": [
        ("missing-classifier", "cams {tmp}/nope {art}/train.h5 -o {tmp}/o.h5", 1, "nope"),
        ("truncated-checkpoint", "cams {trunc_pt} {art}/train.h5 -o {tmp}/o.h5", 1, "trunc.pt"),
        ("segmenter-given", "cams {seg} {art}/train.h5 -o {tmp}/o.h5", 1, "seg"),
        ("missing-data", "cams {cls} {tmp}/nope.h5 -o {tmp}/o.h5", 1, "nope.h5"),
        ("foreign-h5", "cams {cls} {foreign} -o {tmp}/o.h5", 1, "foreign.h5"),
        ("other-classes", "cams {cls} {other} -o {tmp}/o.h5", 1, "other.h5"),
        ("empty-folder", "cams {cls} {empty} -o {tmp}/o.h5", 1, "empty"),
        ("tta", "cams {cls} {art}/train.h5 -o {tmp}/o.h5 --tta nope", 2, "--tta"),
        ("cam", "cams {cls} {art}/train.h5 -o {tmp}/o.h5 --cam nope", 2, "--cam"),
        ("out-is-input", "cams {cls} {art}/train.h5 -o {art}/train.h5", 2, "train.h5"),
        ("out-under-file", "cams {cls} {art}/train.h5 -o {afile}/o.h5", 1, "afile"),
    ],
    "train-seg": [
        ("missing-pseudo", "train-seg {art}/train.h5 {tmp}/nope.h5 -o {tmp}/out {seg_opts}",
         1, "nope.h5"),
        ("pseudo-of-other-data", "train-seg {art}/val.h5 {pm} -o {tmp}/out {seg_opts}", 1,
         "val.h5"),
        ("truncated-pseudo", "train-seg {art}/train.h5 {trunc_h5} -o {tmp}/out {seg_opts}", 1,
         "trunc.h5"),
        ("classifier-missing", "train-seg {art}/train.h5 {pm} -o {tmp}/out {seg_opts} "
         "--gate-head --classifier {tmp}/nope", 1, "nope"),
        ("classifier-wrong-kind", "train-seg {art}/train.h5 {pm} -o {tmp}/out {seg_opts} "
         "--gate-head --classifier {seg}", 1, "seg"),
        ("classifier-no-head", "train-seg {art}/train.h5 {pm} -o {tmp}/out {seg_opts} "
         "--classifier {cls}", 2, "--classifier"),
        ("output-stride", "train-seg {art}/train.h5 {pm} -o {tmp}/out --output-stride 4", 2,
         "--output-stride"),
        ("lambdas", "train-seg {art}/train.h5 {pm} -o {tmp}/out {seg_opts} --lambdas 1,1", 2,
         "--lambdas"),
        ("masks-and-pseudo", "train-seg {art}/train.h5 {pm} --masks -o {tmp}/out", 2,
         "--masks"),
        ("val-without-masks", "train-seg {art}/train.h5 {pm} --val {art}/train.h5 "
         "-o {tmp}/out {seg_opts}", 1, "train.h5"),
        ("encoder", "train-seg {art}/train.h5 {pm} -o {tmp}/out --encoder nope -j 0", 2,
         "nope"),
        ("empty-folder", "train-seg {empty} {pm} -o {tmp}/out {seg_opts}", 1, "empty"),
        ("other-dataset-folder", "train-seg {other_folder} {pm} -o {tmp}/out {seg_opts}", 1,
         "pm.h5"),
    ],
    "predict": [
        ("missing-segmenter", "predict {tmp}/nope {art}/test.h5 -o {tmp}/p.h5", 1, "nope"),
        ("truncated-segmenter", "predict {trunc_pt} {art}/test.h5 -o {tmp}/p.h5", 1,
         "trunc.pt"),
        ("classifier-as-segmenter", "predict {cls} {art}/test.h5 -o {tmp}/p.h5", 1, "cls"),
        ("missing-input", "predict {seg} {tmp}/nope.h5 -o {tmp}/p.h5 --classifier {cls}", 1,
         "nope.h5"),
        ("empty-folder", "predict {seg} {empty} -o {tmp}/out --classifier {cls}", 1, "empty"),
        ("other-classes", "predict {seg} {other} -o {tmp}/p.h5 --classifier {cls}", 1,
         "other.h5"),
        ("stride-over-window", "predict {seg} {data}/test/img -o {tmp}/out --classifier {cls} "
         "--stride 1000", 2, "--stride"),
        ("png-for-artifact", "predict {seg} {art}/test.h5 -o {tmp}/p.png --classifier {cls}",
         2, "p.png"),
        ("folder-into-file", "predict {seg} {data}/test/img -o {afile} --classifier {cls}", 1,
         "afile"),
        ("batch-size", "predict {seg} {art}/test.h5 -o {tmp}/p.h5 -b 0", 2, "--batch-size"),
        ("precision", "predict {seg} {art}/test.h5 -o {tmp}/p.h5 --classifier {cls} "
         "--precision fp64", 2, "--precision"),
        ("truncated-input", "predict {seg} {trunc_h5} -o {tmp}/p.h5 --classifier {cls}", 1,
         "trunc.h5"),
    ],
    "eval": [
        ("missing-pred", "eval {tmp}/nope.h5 {art}/test.h5", 1, "nope.h5"),
        ("missing-truth", "eval {art}/test.h5 {tmp}/nope.h5", 1, "nope.h5"),
        ("truncated", "eval {trunc_h5} {art}/test.h5", 1, "trunc.h5"),
        ("foreign-h5", "eval {foreign} {art}/test.h5", 1, "foreign.h5"),
        ("empty-folder", "eval {empty} {art}/test.h5", 1, "empty"),
        ("text-file", "eval {notes} {art}/test.h5", 1, "notes.txt"),
        ("other-names", "eval {art}/val.h5 {art}/test.h5", 1, "val.h5"),
        ("other-classes", "eval {other} {art}/test.h5", 1, "other.h5"),
        ("out-under-file", "eval {art}/test.h5 {art}/test.h5 -o {afile}/m.json", 1, "afile"),
        ("out-is-folder", "eval {art}/test.h5 {art}/test.h5 -o {empty}", 1, "empty"),
    ],
    "clashes": [  # a complete output made by another model or other settings is in the way
        ("predict-other-gate", "predict {seg} {art}/test.h5 -o {made}/p.h5 --no-gate", 1,
         "p.h5"),
        ("predict-other-model", "predict {seg2} {art}/test.h5 -o {made}/p.h5 --classifier "
         "{cls}", 1, "p.h5"),
        ("predict-images-other-stride", "predict {seg} {data}/test/img -o {made}/imgs "
         "--classifier {cls} --stride 8", 1, "imgs"),
        ("predict-slides-other-resolution", "predict {seg} {slides} -o {made}/pslides "
         "--classifier {cls} --mpp 2", 1, "pslides"),
        ("tile-slides-other-tissue", "tile {slides} -o {made}/tiles --mpp 1 --patch-size 32 "
         "--min-tissue 0.5", 1, "tiles"),
        ("tile-dataset-other-patch", "tile {data}/test --dataset luad -o {made}/test.h5 "
         "--patch-size 16", 1, "test.h5"),
        ("cams-other-tta", "cams {cls} {art}/train.h5 -o {made}/pm.h5 --tta flips", 1,
         "pm.h5"),
        ("cams-other-classifier", "cams {cls2} {art}/train.h5 -o {made}/pm.h5 --tta none", 1,
         "pm.h5"),
        ("eval-onto-folder", "eval {art}/test.h5 {art}/test.h5 -o {made}", 1, "made"),
        ("train-seg-into-file", "train-seg {art}/train.h5 {pm} -o {made}/p.h5 {seg_opts}", 1,
         "p.h5"),
    ],
    "export": [
        ("missing-segmenter", "export {tmp}/nope -o {tmp}/m.onnx", 1, "nope"),
        ("suffix", "export {seg} -o {tmp}/m.bin", 2, "m.bin"),
        ("precision", "export {seg} -o {tmp}/m.onnx --precision int4", 2, "--precision"),
        ("int8-engine", "export {seg} -o {tmp}/m.engine --precision int8", 2, "--precision"),
        ("calib-missing", "export {seg} -o {tmp}/m.onnx --calib {tmp}/nope.h5", 1, "nope.h5"),
        ("calib-truncated", "export {seg} -o {tmp}/m.onnx --calib {trunc_h5}", 1, "trunc.h5"),
        ("classifier-wrong-kind", "export {seg} --classifier {seg} -o {tmp}/m.onnx", 1, "seg"),
        ("out-under-file", "export {seg} -o {afile}/m.onnx", 1, "afile"),
        ("truncated-segmenter", "export {trunc_pt} -o {tmp}/m.onnx", 1, "trunc.pt"),
        ("samples", "export {seg} -o {tmp}/m.onnx --samples 0", 2, "--samples"),
    ],
}


@pytest.fixture(scope="module")
def paths(pipeline: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, str]:
    extra = tmp_path_factory.mktemp("bad-input")
    bad = extra / "bad"
    bad.mkdir()
    (bad / "empty").mkdir()
    (bad / "plain").mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 100 + i, np.uint8)).save(bad / "plain" / f"{i}.png")
    (bad / "trunc.h5").write_bytes((pipeline["art"] / "test.h5").read_bytes()[:300])
    (bad / "trunc.pt").write_bytes((pipeline["cls"] / "checkpoint.pt").read_bytes()[:1000])
    with h5py.File(bad / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    (bad / "notes.txt").write_text("not data\n")
    (bad / "afile").write_text("a file where a folder would go\n")
    write_patches(bad / "other.h5", n=12, size=32)  # classes c0..c3, not the demo's
    # another demo dataset: imported fine, but not what the pseudo masks were made from
    write_demo_dataset(bad / "other-demo", DemoConfig(patch_size=32, train=30, val=2, test=2,
                                                       seed=7))
    made = _made(pipeline, extra / "made")
    return {
        **{k: str(v) for k, v in pipeline.items()},
        "empty": str(bad / "empty"), "plain": str(bad / "plain"),
        "trunc_h5": str(bad / "trunc.h5"), "trunc_pt": str(bad / "trunc.pt"),
        "foreign": str(bad / "foreign.h5"), "notes": str(bad / "notes.txt"),
        "afile": str(bad / "afile"), "other": str(bad / "other.h5"), **made,
        "other_folder": str(bad / "other-demo"), "extra": str(extra),
        "cls_opts": "--backbone resnet18 --epochs 1 -b 10 -j 0",
        "seg_opts": "--encoder resnet18 --epochs 1 -b 10 -j 0",
    }


def _made(pipe: dict[str, Path], made: Path) -> dict[str, str]:
    """Complete outputs of each command, and a second segmenter and classifier (other
    weights), for the clashes."""
    def invoke(*args: object) -> None:
        result = CliRunner().invoke(app, [str(a) for a in args] + ["-q"])
        assert result.exit_code == 0, result.output

    art, seg, cls = pipe["art"], pipe["seg"], pipe["cls"]
    invoke("predict", seg, art / "test.h5", "-o", made / "p.h5", "--classifier", cls)
    invoke("predict", seg, pipe["data"] / "test" / "img", "-o", made / "imgs", "--classifier",
           cls)
    invoke("predict", seg, pipe["slides"], "-o", made / "pslides", "--classifier", cls,
           "--mpp", 1)
    invoke("tile", pipe["slides"], "-o", made / "tiles", "--mpp", 1, "--patch-size", 32)
    invoke("tile", pipe["data"] / "test", "--dataset", "luad", "-o", made / "test.h5")
    invoke("cams", cls, art / "train.h5", "-o", made / "pm.h5", "--tta", "none")
    invoke("train-cls", art / "train.h5", "-o", made / "cls2", "--backbone", "resnet18",
           "--epochs", 1, "-b", 10, "-j", 0, "--seed", 1)
    invoke("train-seg", art / "train.h5", pipe["pm"], "-o", made / "seg2", "--encoder",
           "resnet18", "--epochs", 1, "-b", 10, "-j", 0, "--seed", 1)
    return {"made": str(made), "seg2": str(made / "seg2"), "cls2": str(made / "cls2")}


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1
            for p in root.rglob("*")}


@pytest.mark.parametrize("command, case, argv, code, needle", [
    (command, *case) for command, cases in CASES.items() for case in cases],
    ids=[f"{command}-{case[0]}" for command, cases in CASES.items() for case in cases])
def test_bad_input(paths: dict[str, str], tmp_path: Path, command: str, case: str, argv: str,
                   code: int, needle: str):
    args = argv.format(tmp=tmp_path, **paths).split() + ["-q"]
    roots = [tmp_path, Path(paths["root"]), Path(paths["extra"])]
    before = [_tree(r) for r in roots]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert [_tree(r) for r in roots] == before, "something was written"


def test_every_command_has_ten_cases():
    assert all(len(cases) >= 10 for cases in CASES.values())
    assert sum(len(cases) for cases in CASES.values()) >= 80
    assert set(CASES) >= {"tile", "train-cls", "cams", "train-seg", "predict", "eval",
                          "export"}

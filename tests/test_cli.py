import json
import os
import signal
import time

import pytest
from typer.testing import CliRunner

from histoseg_cli import __version__
from histoseg_cli.app import app
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset

COMMANDS = sorted(c.name for c in app.registered_commands)


def test_version(cli):
    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"histoseg {__version__}"


def test_no_arguments_shows_help(cli):
    res = cli()
    assert "Usage" in res.output
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(cli, name):
    res = cli(name, "--help")
    assert res.exit_code == 0
    assert "Usage" in res.stdout and "--json" in res.stdout and "--quiet" in res.stdout


def test_help_prose_wraps_to_the_terminal_and_examples_keep_their_lines():
    """A docstring's line breaks inside a paragraph do not reach --help (in an 80-column
    terminal they wrapped into ragged lines); example lines stay one per line."""
    from histoseg_cli.commands.runner import help_text

    doc = """Summary line.

    A paragraph written over
    two lines.

    [b]Examples[/b]

      histoseg a x
      histoseg b y
    """
    assert help_text(doc).split("\n\n") == [
        "Summary line.", "A paragraph written over two lines.", "[b]Examples[/b]",
        "  histoseg a x\n  histoseg b y"]
    res = CliRunner().invoke(app, ["eval", "--help"], terminal_width=80)
    assert any("Prints the written paths" in line for line in res.stdout.splitlines())


def test_usage_error_exit_2(cli, tmp_path):
    res = cli("tile", tmp_path, "-o", tmp_path / "x.h5")  # no --dataset/--masks: slides
    assert res.exit_code == 2
    assert "slides need an output folder" in res.stderr and res.stdout == ""
    res = cli("tile", tmp_path, "--dataset", "luad", "--mpp", "0.5", "-o", tmp_path / "x.h5")
    assert res.exit_code == 2 and "--mpp" in res.stderr
    assert cli("tile", tmp_path, "-o", "x.h5", "--masks", tmp_path).exit_code == 2


def test_runtime_error_is_one_line_exit_1(cli, tmp_path):
    res = cli("tile", tmp_path / "missing", "--dataset", "luad", "-o", tmp_path / "x.h5")
    assert res.exit_code == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing: no such folder" in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("sig, code, words", [
    (signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGHUP, 129, "hung up (SIGHUP)")])
def test_stop_signals_stop_a_command_like_ctrl_c(cli, tmp_path, monkeypatch, sig, code, words):
    """SIGTERM or SIGHUP during a command: one line and exit 128 + the signal; the process's
    own handler (here one that ignores the signal, so that a command that does not catch it
    fails this test instead of ending pytest) is back afterwards."""
    import histoseg_cli.core.data.demo as demo

    def stopped_while_writing(out_dir, config, reporter=None):
        (out_dir / "train").mkdir(parents=True)
        os.kill(os.getpid(), sig)
        time.sleep(2)  # the command's handler raises at once
        raise AssertionError(f"{sig.name} did not stop the command")

    monkeypatch.setattr(demo, "write_demo_dataset", stopped_while_writing)
    def ours(signum, frame):
        pass

    original = signal.signal(sig, ours)
    try:
        res = cli("demo-data", tmp_path / "demo")
        assert signal.getsignal(sig) is ours
    finally:
        signal.signal(sig, original)
    assert res.exit_code == code, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"{words}; rerun the command to resume or redo it"]


def test_an_ignored_sighup_stays_ignored(cli, tmp_path, monkeypatch):
    """Under ``nohup`` (SIGHUP ignored) a closing terminal does not stop the command."""
    import histoseg_cli.core.data.demo as demo

    seen = []

    def hung_up_while_writing(out_dir, config, reporter=None):
        seen.append(signal.getsignal(signal.SIGHUP))
        os.kill(os.getpid(), signal.SIGHUP)
        (out_dir / "train").mkdir(parents=True)
        return {"train": 0}

    monkeypatch.setattr(demo, "write_demo_dataset", hung_up_while_writing)
    original = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        res = cli("demo-data", tmp_path / "demo")
    finally:
        signal.signal(signal.SIGHUP, original)
    assert res.exit_code == 0, res.stderr
    assert seen == [signal.SIG_IGN] and (tmp_path / "demo" / "train").is_dir()


def test_bad_label_names_the_file(cli, tmp_path):
    write_demo_dataset(tmp_path / "d", DemoConfig(patch_size=32, train=3, val=1, test=1))
    bad = next((tmp_path / "d" / "train").iterdir())
    bad.rename(bad.with_name("no-label.png"))
    res = cli("tile", tmp_path / "d" / "train", "--dataset", "luad", "-o", tmp_path / "t.h5")
    assert res.exit_code == 1
    assert "no-label.png: file name carries no label" in res.stderr
    assert not (tmp_path / "t.h5").exists()
    verbose = cli("tile", tmp_path / "d" / "train", "--dataset", "luad", "-o",
                  tmp_path / "t.h5", "--verbose")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_demo_data_then_tile_all_splits(cli, tmp_path):
    res = cli("demo-data", tmp_path / "demo", "--patch-size", "32", "--train", "24", "--val",
              "6", "--test", "6", "-q")
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "demo")
    assert "SYNTHETIC" in (tmp_path / "demo" / "README.txt").read_text()
    res = cli("tile", tmp_path / "demo", "--dataset", "luad", "-o", tmp_path / "h5", "--json",
              "-q")
    assert res.exit_code == 0, res.output
    outputs = json.loads(res.stdout)["outputs"]
    assert [o["output"] for o in outputs] == [str(tmp_path / "h5" / f"{s}.h5")
                                              for s in ("train", "val", "test")]
    train = Artifact(tmp_path / "h5" / "train.h5")
    assert len(train) == 24 and train.class_names == ["TE", "NEC", "LYM", "TAS"]
    assert len({tuple(r) for r in train.labels().tolist()}) > 1
    assert not train.has_masks
    val = Artifact(tmp_path / "h5" / "val.h5")
    assert len(val) == 6 and val.has_masks and val.meta.patch_size == 32
    assert train.meta.extra["background"] == val.meta.extra["background"] == "white"
    # demo masks use all four classes and the background index 4
    masks = val.file["masks"][:]
    assert masks.max() <= 4 and len(set(masks.ravel().tolist())) >= 3


def test_help_lists_every_registered_backbone():
    from histoseg_cli.commands.train_cls import BACKBONE_HELP
    from histoseg_cli.core.models import BACKBONES

    for name in BACKBONES:
        assert name in BACKBONE_HELP.replace(",", " ").split()


def test_cli_starts_without_torch():
    """Help and the data commands (and tile's reading workers) must not pay for importing torch."""
    import subprocess
    import sys

    code = ("import sys, histoseg_cli.app; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_patch_options_do_not_apply_to_labelled_training_patches(cli, tmp_path):
    write_demo_dataset(tmp_path / "d", DemoConfig(patch_size=32, train=4, val=2, test=2))
    res = cli("tile", tmp_path / "d", "--dataset", "luad", "--patch-size", "16", "-o",
              tmp_path / "out")
    assert res.exit_code == 2 and "--patch-size applies to images with masks" in res.stderr
    # a single val split with masks may be cut, into a file inside an existing folder
    (tmp_path / "out").mkdir()
    res = cli("tile", tmp_path / "d" / "val", "--dataset", "luad", "--patch-size", "16",
              "--stride", "16", "-o", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "out" / "val.h5")
    assert Artifact(tmp_path / "out" / "val.h5").meta.patch_size == 16


def test_output_that_is_a_folder_fails_before_any_work(cli, tmp_path):
    write_demo_dataset(tmp_path / "d", DemoConfig(patch_size=32, train=2, val=2, test=2))
    (tmp_path / "o").mkdir()
    res = cli("tile", tmp_path / "d" / "val" / "img", "--masks", tmp_path / "d" / "val" / "mask",
              "--classes", "a,b,c,d", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "is a folder; expected the artifact's file name" in res.stderr
    assert list((tmp_path / "o").iterdir()) == []


def test_shared_options_read_the_same_in_every_command():
    """One definition per shared option: the same help text and default wherever it appears
    (export's --precision, train-seg's --classifier and the kinds of --workers/--overwrite
    are other options)."""
    import typer

    group = typer.main.get_command(app)
    seen: dict[str, set[tuple[str, object]]] = {}
    for name, command in group.commands.items():
        for param in command.params:
            flag = max(param.opts, key=len)
            if name == "export" and flag == "--precision":
                continue
            seen.setdefault(flag, set()).add((param.help or "", param.default))
    for flag in ("--device", "--precision", "--gate-threshold", "--no-gate", "--mpp",
                 "--magnification", "--source-mpp", "--min-tissue", "--thumbnail-size"):
        assert len(seen[flag]) == 1, (flag, seen[flag])
    assert len(seen["--overwrite"]) == 2  # outputs (tile, cams, predict) and training runs
    assert any("0.1" in str(default) for _, default in seen["--gate-threshold"])

"""The structure the pipeline stands on: layering, layout detection, one input function,
one checkpoint format (old files still load), paired augmentation, the inference engine."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histoseg_cli.app import app
from histoseg_cli.core.data.datasets import detect_dataset
from histoseg_cli.core.data.demo import DemoConfig, write_demo_dataset
from histoseg_cli.core.errors import UsageError
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.models import InputNorm, load_classifier
from histoseg_cli.core.training.augment import PairedAugment
from tests.conftest import make_tiny_classifier

PACKAGE = Path(__file__).resolve().parents[1] / "histoseg_cli"

#: Layers from bottom to top; a module may import its own layer and the ones below.
LAYERS = [
    {"errors", "atomic", "interrupts", "progress", "parallel", "device", "distributed",
     "figures", "imageio", "morphology", "folder_run", "provenance", "defaults"},
    {"data", "models"},
    {"metrics", "slides"},
    {"inference"},
    {"ingest", "training", "cams", "predict", "export"},
]
#: The pipeline stages on the top layer: none imports another.
STAGES = ("ingest", "training", "cams", "predict", "export")


def _layer(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def _core_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "histoseg_cli"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("histoseg_cli"))
    return found


def test_core_layers_import_only_downwards():
    bad = []
    for path in (PACKAGE / "core").rglob("*.py"):
        rel = path.relative_to(PACKAGE / "core")
        own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
        if own == "__init__":
            continue
        for module in _core_imports(path):
            parts = module.split(".")
            if module == "histoseg_cli":  # __version__
                continue
            if parts[1] != "core":
                bad.append(f"{rel} imports the CLI ({module})")
                continue
            if len(parts) < 3:
                continue
            if own in STAGES and parts[2] in STAGES and parts[2] != own:
                bad.append(f"{rel} imports {module} (sibling stage)")
            elif _layer(parts[2]) > _layer(own):
                bad.append(f"{rel} imports {module} (a higher layer)")
    assert not bad, bad


def test_no_core_file_is_over_about_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long


@pytest.fixture(scope="module")
def luad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch") / "data"
    write_demo_dataset(root, DemoConfig(patch_size=32, train=16, val=8, test=1, seed=3))
    return root


def test_layout_detection(luad: Path, tmp_path: Path):
    assert detect_dataset(luad).name == "luad"
    assert detect_dataset(luad / "train").name == "luad"
    bcss = tmp_path / "bcss"
    bcss.mkdir()
    src = next((luad / "train").iterdir())  # any image will do as pixels
    for i, label in enumerate(("1001", "0110")):
        (bcss / f"x{i}[{label}].png").write_bytes(src.read_bytes())
    assert detect_dataset(bcss).name == "bcss"
    (bcss / "y[1 0 0 1].png").write_bytes(src.read_bytes())
    with pytest.raises(UsageError, match="no layout fits.*luad: names ending in"):
        detect_dataset(bcss)
    with pytest.raises(UsageError, match="no labelled training images.*tile IMAGES masks MASKS"):
        detect_dataset(luad / "val")  # e.g. images/ + masks/ (GlaS): says how to make data


@pytest.mark.slow
def test_train_cls_and_cams_take_the_dataset_folder(luad: Path, tmp_path: Path,
                                                    one_torch_thread: None):
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train-cls", str(luad), "-o", str(run), "--backbone",
                                  "resnet38d", "--width", "0.0625", "--epochs", "1",
                                  "--batch-size", "8", "--workers", "0", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    assert "detected the luad layout" in " ".join(trained.stderr.split())
    assert (run / "data" / "train.h5").is_file() and (run / "data" / "val.h5").is_file()
    out = tmp_path / "pseudo.h5"
    cams = runner.invoke(app, ["cams", str(run), str(luad), "-o", str(out), "--json", "-q",
                               "--device", "cpu", "--gallery", "0"])
    assert cams.exit_code == 0, cams.output
    assert json.loads(cams.stdout)["num_patches"] == 16
    assert (tmp_path / "pseudo.data" / "train.h5").is_file()


def test_old_classifier_checkpoints_still_load(tmp_path: Path):
    model = make_tiny_classifier(3)
    info = {"backbone": "resnet38d", "class_names": ["a", "b", "c"], "cam_layers": [],
            "patch_size": 32, "normalisation": "scale01", "dropout": 0.5, "epoch": 1}
    torch.save({"format": "histoseg.classifier", "format_version": 1, "info": info,
                "model": model.state_dict()}, tmp_path / "old.pt")
    from histoseg_cli.core.models import checkpoint

    payload = checkpoint.read_checkpoint(tmp_path / "old.pt")
    assert payload["task"] == "classifier"
    with pytest.raises(Exception, match="weights do not fit"):
        load_classifier(tmp_path / "old.pt")  # tiny test backbone is not a resnet38d


def test_paired_augment_moves_masks_with_images():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    masks = x[:, 0].clone()  # a mask equal to channel 0 must stay equal to it
    stack = x[:, :2].clone()  # (B, L, H, W) pseudo masks too
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    flipped = 0
    for _ in range(8):
        y, (m, s, l) = PairedAugment(hflip=True, vflip=True)(x, [masks, stack, labels])
        assert torch.equal(y[:, 0], m) and torch.equal(y[:, :2], s) and torch.equal(l, labels)
        flipped += int(not torch.equal(y, x))
    assert flipped > 0
    blurred, _ = PairedAugment(hflip=False, vflip=False, blur=1.0)(x * 10)
    assert not torch.equal(blurred, x * 10)


def test_engine_normalises_and_runs_eval_mode():
    model = make_tiny_classifier(4)
    model.train()
    engine = InferenceEngine.for_model(model, InputNorm.from_spec("imagenet"),
                                       torch.device("cpu"), "fp32")
    patches = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    out = engine(patches)
    model.eval()
    x = InputNorm.from_spec("imagenet")(torch.from_numpy(patches).permute(0, 3, 1, 2))
    torch.testing.assert_close(out, model(x))
    rows = list(engine.map(lambda b: patches[b[0]:b[1]], 3, batch_size=2))
    assert [(s, e) for s, e, _ in rows] == [(0, 2), (2, 3)]
    torch.testing.assert_close(torch.cat([o for *_, o in rows]), out)


def test_the_command_line_starts_without_heavy_modules():
    """``histoseg --help`` must answer fast: building the app imports no numerical stack."""
    import subprocess
    import sys

    code = ("import sys, histoseg_cli.app; heavy = ('torch', 'numpy', 'scipy', 'openslide', "
            "'matplotlib', 'segmentation_models_pytorch', 'h5py', 'PIL'); "
            "print(','.join(m for m in heavy if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == ""


def test_timm_is_imported_only_to_build_a_timm_network():
    """Importing timm costs seconds (it pulls in torchvision): ``predict`` with an ONNX or
    TensorRT model, and ``cams`` with a ResNet-38 classifier, build no timm network and must
    not pay for it."""
    import subprocess
    import sys

    code = ("import sys, histoseg_cli.core.predict.run, histoseg_cli.core.cams.run; "
            "from histoseg_cli.core.models import build_backbone; "
            "build_backbone('resnet38d', width=0.0625); "
            "print(','.join(m for m in ('timm', 'torchvision') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == ""


def _package_sources() -> dict[Path, str]:
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def test_one_manifest_writer_and_one_torch_load():
    """Folder runs write their manifests through core/folder_run.py; checkpoints and weight
    files are read by one torch.load (models/checkpoint.py)."""
    sources = _package_sources()
    manifests = [p.name for p, text in sources.items() if "MANIFEST = " in text]
    assert manifests == ["folder_run.py"]
    loads = [p.name for p, text in sources.items() if "torch.load(" in text]
    assert loads == ["checkpoint.py"]


def _core_messages() -> dict[Path, list[str]]:
    """The string literals of core modules, docstrings left out."""
    found: dict[Path, list[str]] = {}
    for path in (PACKAGE / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr)}
        found[path] = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                       and isinstance(n.value, str) and id(n) not in docs]
    return found


def test_core_names_settings_not_flags():
    """Core messages say ``{batch_size}``; the CLI names the flag. A string that spells a
    flag (``--x`` or ``-o``) in core is a renamed flag waiting to go stale; other tools'
    commands (pip, vips) are quoted as they are."""
    import re

    spelled = [(p.name, text) for p, texts in _core_messages().items() for text in texts
               if re.search(r"(?<![\w-])(--[a-z]|-o\b)", text)
               and not re.search(r"pip install|vips tiffsave", text)]
    assert spelled == []


def test_every_setting_in_core_messages_is_a_flag():
    """Each ``{setting}`` a core message names is a parameter of some command, so users see
    a flag they can type, and the flag's name comes from the command's declaration."""
    import re

    import logging

    from histoseg_cli.commands.runner import _FlagNames, flag_table
    from histoseg_cli.core.errors import render_settings

    flags: dict[str, str] = {}
    for registered in app.registered_commands:
        flags.update(flag_table(registered.callback))
    named = {name for texts in _core_messages().values() for text in texts
             for name in re.findall(r"\{([a-z][a-z0-9_]*)\}", text)}
    assert named and named <= set(flags), sorted(named - set(flags))
    assert flags["batch_size"] == "--batch-size" and flags["output"] == "--output"
    by_command = {r.name: flag_table(r.callback) for r in app.registered_commands}
    assert by_command["train-seg"]["classifier"] == "--classifier"  # an option there ...
    assert by_command["cams"]["classifier"] == "CLASSIFIER"  # ... an argument here
    assert render_settings("lower {batch_size}", flags.get) == "lower --batch-size"
    record = logging.LogRecord("histoseg", logging.INFO, "", 0,
                               "%s: skipped ({overwrite} redoes it)", ("a.svs",), None)
    _FlagNames(flags.get).filter(record)  # what the runner puts on every command's log
    assert record.getMessage() == "a.svs: skipped (--overwrite redoes it)"
    record = logging.LogRecord("histoseg", logging.ERROR, "", 0, "%s",
                               ("a.svs: pass {source_mpp}",), None)  # a folder's failed input
    _FlagNames(flags.get).filter(record)
    assert record.getMessage() == "a.svs: pass --source-mpp"

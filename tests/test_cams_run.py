"""cams end to end on a tiny model: linked artifact, resume, metrics, PNGs, gallery, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny_classifier, write_patches
from histoseg_cli.app import app
from histoseg_cli.core.data.linked import open_linked
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.provenance import StaleOutputs
from histoseg_cli.core.cams import run as cams_run
from histoseg_cli.core.cams.model import CamModel
from histoseg_cli.core.cams.run import CamsConfig, generate_pseudo_masks
from histoseg_cli.core.errors import InputError, UsageError


def cam_model(num_classes: int = 4, precision: str = "fp32") -> CamModel:
    return CamModel(make_tiny_classifier(num_classes), [f"c{k}" for k in range(num_classes)],
                    source="tiny", precision=precision)


def test_pseudo_artifact_links_to_its_input(tmp_path):
    data = write_patches(tmp_path / "train.h5")
    out = tmp_path / "pseudo.h5"
    summary = generate_pseudo_masks(cam_model(), data, out,
                                    CamsConfig(batch_size=4, save_cams=True, gallery=0))
    derived, source = open_linked(out)
    assert derived.kind == "pseudo-masks" and source.path == data.resolve()
    assert derived.names() == source.names()
    masks = derived.dataset("pseudo_masks")
    assert masks.shape == (10, 3, 32, 32) and masks.dtype == np.uint8
    assert [s.decode() if isinstance(s, bytes) else s for s in masks.attrs["layers"]] == \
        ["b4_5", "b5_2", "bn7"]
    cams = derived.dataset("cams")
    assert cams.shape == (10, 3, 4, 32, 32) and cams.dtype == np.float16
    labels = source.labels()
    m = masks[:]
    # absent classes never appear; glass corners (every third patch) are background = 4
    for i in range(10):
        allowed = set(np.flatnonzero(labels[i]).tolist()) | {4}
        assert set(np.unique(m[i]).tolist()) <= allowed
        assert np.all(cams[i][:, labels[i] == 0] == 0)
    assert (m[::3, :, :16, :16] == 4).all()
    assert summary.background == {"rule": "white", "threshold": 200.0, "min_size": 50,
                                  "from": "input artifact"}
    # ground truth present: metrics per layer stored and reported
    assert set(summary.metrics) == {"b4_5", "b5_2", "bn7"}
    assert masks.attrs["iou"].shape == (3, 4)
    assert np.allclose(masks.attrs["miou"],
                       [summary.metrics[l]["miou"] for l in ("b4_5", "b5_2", "bn7")], atol=1e-6)
    with pytest.raises(InputError, match="patches"):
        Artifact(out).patch(0)


def test_link_check_rejects_a_different_input(tmp_path):
    data = write_patches(tmp_path / "train.h5", masks=False)
    out = tmp_path / "pseudo.h5"
    generate_pseudo_masks(cam_model(), data, out, CamsConfig(gallery=0))
    names = [f"p{i:03d}" for i in range(10)]
    names[3], names[4] = names[4], names[3]
    other = write_patches(tmp_path / "other.h5", names=names, masks=False)
    with pytest.raises(InputError, match="first difference at row 3"):
        open_linked(out, other)
    # moved together: the input is found beside the pseudo masks
    moved = tmp_path / "moved"
    moved.mkdir()
    data.rename(moved / "train.h5")
    out.rename(moved / "pseudo.h5")
    derived, source = open_linked(moved / "pseudo.h5")
    assert source.path == moved / "train.h5"
    (moved / "train.h5").unlink()
    with pytest.raises(InputError, match="missing"):
        open_linked(moved / "pseudo.h5")
    with pytest.raises(InputError, match="expected 'pseudo-masks'"):
        open_linked(other)


def test_class_mismatch_and_missing_labels_are_clear(tmp_path):
    data = write_patches(tmp_path / "three.h5", num_classes=3)
    with pytest.raises(InputError, match="differ from the classifier"):
        generate_pseudo_masks(cam_model(4), data, tmp_path / "o.h5", CamsConfig(gallery=0))


def test_resume_after_interruption_matches_one_run(tmp_path, monkeypatch):
    data = write_patches(tmp_path / "val.h5", n=11)
    config = CamsConfig(batch_size=3, save_cams=True, gallery=0)
    whole = generate_pseudo_masks(cam_model(), data, tmp_path / "whole.h5", config)

    real = cams_run.compute_batch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(cams_run, "compute_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_pseudo_masks(cam_model(), data, out, config)
    assert not out.exists() and (tmp_path / ".resumed.h5.partial").exists()
    monkeypatch.setattr(cams_run, "compute_batch", real)
    png_dir = tmp_path / "png"  # asked for only on the rerun: kept rows get their PNGs too
    resumed = generate_pseudo_masks(cam_model(), data, out, replace(config, png_dir=png_dir))
    assert resumed.resumed_at == 6
    assert sorted(p.stem for p in (png_dir / "b4_5").iterdir()) == [f"p{i:03d}" for i in range(11)]
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(out) as b:
        assert np.array_equal(a["pseudo_masks"][:], b["pseudo_masks"][:])
        assert np.array_equal(a["cams"][:], b["cams"][:])
        assert list(a["names"][:]) == list(b["names"][:])
    assert resumed.metrics == whole.metrics
    # different settings do not continue a partial file: they start over
    monkeypatch.setattr(cams_run, "compute_batch", interrupted)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        generate_pseudo_masks(cam_model(), data, out, config)
    monkeypatch.setattr(cams_run, "compute_batch", real)
    changed = CamsConfig(batch_size=3, min_size=10, save_cams=True, gallery=0)
    with pytest.raises(StaleOutputs, match="min_size"):  # the complete output is not replaced
        generate_pseudo_masks(cam_model(), data, out, changed)
    other = generate_pseudo_masks(cam_model(), data, out, replace(changed, overwrite=True))
    assert other.resumed_at == 0
    # so does another CAM method, which the artifact records
    monkeypatch.setattr(cams_run, "compute_batch", interrupted)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        generate_pseudo_masks(cam_model(), data, out, replace(config, overwrite=True))
    monkeypatch.setattr(cams_run, "compute_batch", real)
    grad = generate_pseudo_masks(cam_model(), data, out, replace(config, cam="gradcam",
                                                                 overwrite=True))
    assert grad.resumed_at == 0
    with Artifact(tmp_path / "whole.h5") as a, Artifact(out) as b:
        assert (a.meta.extra["cam"], b.meta.extra["cam"]) == ("layercam", "gradcam")
        assert not np.array_equal(a.dataset("cams")[:], b.dataset("cams")[:])


def test_cli_writes_artifact_pngs_gallery_and_json(tmp_path, monkeypatch):
    data = write_patches(tmp_path / "val.h5", n=6)
    monkeypatch.setattr(cams_run, "load_cam_model", lambda path, device, precision: cam_model())
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    out = tmp_path / "pseudo.h5"
    result = CliRunner().invoke(app, ["cams", str(ckpt), str(data), "-o", str(out), "--json",
                                      "-q", "--png-dir", str(tmp_path / "png"), "--gallery",
                                      "3", "--background", "none", "--device", "cpu",
                                      "--vmap-classes"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["num_patches"] == 6 and payload["background"]["rule"] == "none"
    assert set(payload["metrics"]) == {"b4_5", "b5_2", "bn7"}
    assert 0.0 <= payload["metrics"]["bn7"]["miou"] <= 1.0
    assert (tmp_path / "pseudo.gallery.png").stat().st_size > 1000
    pngs = sorted(p.relative_to(tmp_path / "png").as_posix()
                  for p in (tmp_path / "png").rglob("*.png"))
    assert len(pngs) == 18 and pngs[0] == "b4_5/p000.png"
    with h5py.File(out) as f:
        assert (f["pseudo_masks"][0, 0] < 4).all()  # no background rule: no label 4


def test_cli_bad_input_is_one_line(tmp_path):
    bogus = tmp_path / "x.h5"
    bogus.write_text("not hdf5")
    result = CliRunner().invoke(app, ["cams", str(tmp_path), str(bogus), "-o",
                                      str(tmp_path / "o.h5")])
    assert result.exit_code == 1
    assert "not an HDF5 file" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["cams", str(tmp_path / "nope"), str(bogus), "-o",
                                       str(tmp_path / "o.h5")])
    assert missing.exit_code == 1 and "train-cls run directory" in missing.output


def test_cli_end_to_end_with_a_train_cls_checkpoint(tmp_path):
    pytest.importorskip("histoseg_cli.core.models.checkpoint",
                        reason="needs core.models.checkpoint (train-cls)")
    data = write_patches(tmp_path / "train.h5", n=8)
    runner = CliRunner()
    trained = runner.invoke(app, ["train-cls", str(data), "-o", str(tmp_path / "run"),
                                  "--backbone", "resnet38d", "--width", "0.0625", "--epochs", "1",
                                  "--batch-size", "4", "--workers", "0", "--device", "cpu", "-q"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "pseudo.h5"
    result = runner.invoke(app, ["cams", str(tmp_path / "run"), str(data), "-o", str(out),
                                 "--json", "-q", "--device", "cpu", "--gallery", "2"])
    assert result.exit_code == 0, result.output
    derived, source = open_linked(out)
    assert derived.dataset("pseudo_masks").shape == (8, 3, 32, 32)
    assert json.loads(result.stdout)["metrics"] is not None


def test_output_must_not_be_the_input(tmp_path):
    data = write_patches(tmp_path / "train.h5", n=2)
    with pytest.raises(UsageError, match="is the input artifact"):
        generate_pseudo_masks(cam_model(), data, tmp_path / "." / "train.h5")
    assert Artifact(data).kind == "patches"

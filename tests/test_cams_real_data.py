"""cams on real H&E (GlaS) patches with ground truth: metrics pooled across batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_tiny_classifier
from histoseg_cli.core.data.linked import open_linked
from histoseg_cli.core.cams.model import CamModel
from histoseg_cli.core.cams.run import CamsConfig, generate_pseudo_masks
from histoseg_cli.core.metrics.confusion import ConfusionMatrix
from histoseg_cli.core.ingest.patches import TileConfig, tile_masked_images

GLAS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glas" / "train"


@pytest.mark.skipif(not GLAS.is_dir(), reason="real data ../shared/data/glas absent")
def test_pseudo_mask_metrics_on_real_glas_patches(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in ("train_1.png", "train_2.png"):
            shutil.copy(GLAS / sub / name, tmp_path / sub / name)  # two images, in tmp only
    data = tmp_path / "glas.h5"
    tile_masked_images(tmp_path / "images", tmp_path / "masks", data, ["non-gland", "gland"],
                       TileConfig(patch_size=64, stride=64))
    model = CamModel(make_tiny_classifier(2), ["non-gland", "gland"])
    out = tmp_path / "pseudo.h5"
    summary = generate_pseudo_masks(model, data, out, CamsConfig(batch_size=16, gallery=4,
                                                                 background="white"))
    derived, source = open_linked(out)
    masks = derived.dataset("pseudo_masks")[:]
    truth = source.dataset("masks")[:]
    assert masks.shape == (len(source), 3, 64, 64)
    for j, layer in enumerate(summary.layers):
        cm = ConfusionMatrix(["non-gland", "gland"])
        cm.update(masks[:, j], truth)
        assert summary.metrics[layer] == cm.scores().as_dict()
    with h5py.File(out) as f:
        assert np.allclose(f["pseudo_masks"].attrs["miou"],
                           [summary.metrics[l]["miou"] for l in summary.layers])
    assert summary.gallery is not None and summary.gallery.stat().st_size > 5000

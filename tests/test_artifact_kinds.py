"""The pseudo-masks artifact kind next to plain patch artifacts (backward compatible)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import write_patches
from histoseg_cli.core.data.format import ArtifactMeta, InputLink, names_digest
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.data.writer import ArtifactWriter, ItemSpec
from histoseg_cli.core.errors import InputError


def test_patch_artifacts_without_kind_attribute_still_read(tmp_path):
    path = write_patches(tmp_path / "a.h5", n=3)
    with h5py.File(path, "a") as f:
        del f.attrs["kind"]  # as written before kinds existed
    art = Artifact(path)
    assert art.kind == "patches" and len(art) == 3 and art.patch(0).shape == (32, 32, 3)
    assert art.meta.link is None


def test_derived_kind_needs_a_link_and_its_dataset(tmp_path):
    source = Artifact(write_patches(tmp_path / "a.h5", n=3))
    link = InputLink.to(source)
    assert link.names_sha256 == names_digest(["p000", "p001", "p002"]) and link.num_patches == 3
    meta = ArtifactMeta(["c0", "c1", "c2", "c3"], 32, kind="pseudo-masks")
    with pytest.raises(ValueError, match="needs one"):
        ArtifactWriter(tmp_path / "b.h5", meta)
    meta.link = link
    with pytest.raises(ValueError, match="pseudo_masks"):
        ArtifactWriter(tmp_path / "b.h5", meta)
    spec = {"pseudo_masks": ItemSpec((3, 32, 32), "uint8")}
    with ArtifactWriter(tmp_path / "b.h5", meta, extra_datasets=spec) as writer:
        writer.append_rows(["p000", "p001", "p002"],
                           pseudo_masks=np.zeros((3, 3, 32, 32), np.uint8))
    derived = Artifact(tmp_path / "b.h5")
    assert derived.kind == "pseudo-masks" and derived.meta.link == link and len(derived) == 3
    derived.close()
    with h5py.File(tmp_path / "b.h5", "a") as f:
        f.attrs["kind"] = "embeddings"
    with pytest.raises(InputError, match="unknown artifact kind 'embeddings'"):
        Artifact(tmp_path / "b.h5")

import pickle

import h5py
import numpy as np
import pytest

from histoseg_cli.core.data.format import SCHEMA_VERSION, ArtifactMeta

from histoseg_cli.core.data.reader import Artifact

from histoseg_cli.core.data.writer import ArtifactWriter, ItemSpec, encode_patches
from histoseg_cli.core.errors import InputError

META = ArtifactMeta(class_names=["a", "b", "c"], patch_size=8, mpp=1.0, magnification=10.0,
                    source="test", created_by="test")


def _write(path, n=5, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, (n, 8, 8), dtype=np.uint8)
    coords = rng.integers(0, 1000, (n, 2))
    with ArtifactWriter(path, META, labels=True, masks=True, coords=True, **kwargs) as w:
        w.append(patches[:2], ["p0", "p1"], labels=labels[:2], masks=masks[:2], coords=coords[:2])
        w.append(patches[2:], [f"p{i}" for i in range(2, n)], labels=labels[2:], masks=masks[2:],
                 coords=coords[2:])
    return patches, labels, masks, coords


def test_round_trip(tmp_path):
    path = tmp_path / "a.h5"
    patches, labels, masks, coords = _write(path)
    art = Artifact(path)
    assert len(art) == 5
    assert art.class_names == ["a", "b", "c"]
    assert art.meta.patch_size == 8 and art.meta.mpp == 1.0 and art.meta.magnification == 10.0
    assert art.meta.created_by.startswith("histoseg test")
    assert art.meta.palette.shape == (4, 3)
    np.testing.assert_array_equal(art.file["patches"][:], patches)
    np.testing.assert_array_equal(art.labels(), labels)
    np.testing.assert_array_equal(art.mask(3), masks[3])
    np.testing.assert_array_equal(art.file["coords"][:], coords)
    assert art.names() == [f"p{i}" for i in range(5)]
    assert art.file["patches"].chunks == (1, 8, 8, 3)
    assert art.file["patches"].compression == "gzip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


@pytest.mark.parametrize("compression", ["gzip", None])
def test_pre_encoded_patches_read_back_identically(tmp_path, compression):
    rng = np.random.default_rng(1)
    ramp = np.arange(8, dtype=np.uint8)[None, :, None, None] * 30  # compressible
    patches = (ramp + rng.integers(0, 4, (6, 1, 8, 3), dtype=np.uint8)).transpose(0, 2, 1, 3)
    patches = np.ascontiguousarray(patches)
    coords = rng.integers(0, 1000, (6, 2))
    path = tmp_path / "e.h5"
    with ArtifactWriter(path, META, coords=True, compression=compression) as w:
        w.append_encoded(encode_patches(patches[:4], compression), [f"p{i}" for i in range(4)],
                         coords=coords[:4])
        w.append(patches[4:], ["p4", "p5"], coords=coords[4:])  # both paths in one file
    with h5py.File(path, "r") as f:  # plain h5py, no histoseg code
        np.testing.assert_array_equal(f["patches"][:], patches)
        np.testing.assert_array_equal(f["patches"][2], patches[2])
        np.testing.assert_array_equal(f["coords"][:], coords)
        assert f["patches"].compression == compression
        stored = f["patches"].id.get_chunk_info(0).size
        assert (stored < patches[0].nbytes) if compression else stored == patches[0].nbytes
    with Artifact(path) as art:
        assert len(art) == 6 and art.names() == [f"p{i}" for i in range(6)]
        np.testing.assert_array_equal(art.patch(3), patches[3])


def test_pre_encoding_is_refused_where_it_cannot_match(tmp_path):
    patches = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="lzf"):
        encode_patches(patches, "lzf")
    with ArtifactWriter(tmp_path / "l.h5", META, compression="lzf") as w:
        with pytest.raises(ValueError, match="lzf"):
            w.append_encoded(encode_patches(patches, None), ["a", "b"])
    with ArtifactWriter(tmp_path / "n.h5", META, compression=None) as w:
        with pytest.raises(ValueError, match="192 bytes"):
            w.append_encoded([b"x", b"y"], ["a", "b"])
        with pytest.raises(ValueError, match="2 encoded chunks"):
            w.append_encoded(encode_patches(patches[:1], None), ["a", "b"])


def test_reader_survives_pickling_into_another_process(tmp_path):
    path = tmp_path / "a.h5"
    patches, *_ = _write(path)
    art = Artifact(path)
    art.patch(0)
    clone = pickle.loads(pickle.dumps(art))
    clone._pid = -2  # as if unpickled in a worker process: it must open its own handle
    np.testing.assert_array_equal(clone.patch(4), patches[4])
    assert clone.file is not art.file


def test_interrupted_write_leaves_no_artifact(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(path, META, labels=True) as w:
            w.append(np.zeros((1, 8, 8, 3), np.uint8), ["x"], labels=np.ones((1, 3), np.uint8))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_resumable_write_continues_after_interruption(tmp_path):
    path = tmp_path / "out.h5"
    rows = np.arange(6 * 8 * 8 * 3, dtype=np.uint8).reshape(6, 8, 8, 3)
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(path, META, resumable=True) as w:
            w.append(rows[:2], ["r0", "r1"])
            raise KeyboardInterrupt
    assert not path.exists()
    partial = [p for p in tmp_path.iterdir()]
    assert len(partial) == 1 and partial[0].name.startswith(".")
    with pytest.raises(InputError, match="incomplete"):
        Artifact(partial[0])
    with ArtifactWriter(path, META, resumable=True) as w:
        assert w.rows_done == 2
        w.append(rows[2:], [f"r{i}" for i in range(2, 6)])
    art = Artifact(path)
    np.testing.assert_array_equal(art.file["patches"][:], rows)
    assert art.names() == [f"r{i}" for i in range(6)]
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_extra_datasets_and_shape_checks(tmp_path):
    path = tmp_path / "x.h5"
    spec = {"pseudo": ItemSpec((3, 8, 8), "uint8")}
    with ArtifactWriter(path, META, extra_datasets=spec) as w:
        with pytest.raises(ValueError, match="missing"):
            w.append(np.zeros((1, 8, 8, 3), np.uint8), ["x"])
        with pytest.raises(ValueError, match="expected shape"):
            w.append(np.zeros((1, 8, 8, 3), np.uint8), ["x"], pseudo=np.zeros((1, 3, 4, 4)))
        w.append(np.zeros((1, 8, 8, 3), np.uint8), ["x"], pseudo=np.ones((1, 3, 8, 8)))
    assert Artifact(path).dataset("pseudo").shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("hello"), "not an HDF5 file"),
        (lambda p: h5py.File(p, "w").close(), "not a histoseg artifact"),
    ],
)
def test_rejects_foreign_files(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(InputError, match=message) as err:
        Artifact(path)
    assert str(path) in str(err.value)


def test_rejects_newer_schema_and_incomplete(tmp_path):
    path = tmp_path / "a.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(InputError, match="newer histoseg"):
        Artifact(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete"):
        Artifact(path)


def test_rejects_corrupt_and_inconsistent(tmp_path):
    path = tmp_path / "a.h5"
    _write(path)
    data = path.read_bytes()
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="trunc.h5"):
        Artifact(truncated)
    with h5py.File(path, "a") as f:
        del f["labels"]
        f.create_dataset("labels", data=np.zeros((5, 2), np.uint8))
    with pytest.raises(InputError, match="'labels' has shape"):
        Artifact(path)


def test_missing_optional_dataset_is_a_clear_error(tmp_path):
    path = tmp_path / "a.h5"
    with ArtifactWriter(path, META) as w:
        w.append(np.zeros((1, 8, 8, 3), np.uint8), ["x"])
    art = Artifact(path)
    assert not art.has_labels
    with pytest.raises(InputError, match="has no 'labels' dataset"):
        art.labels()

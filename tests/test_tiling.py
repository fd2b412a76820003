import numpy as np
import pytest
from PIL import Image

from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.data.labels import labels_from_masks
from histoseg_cli.core.imageio import read_mask, save_palette_png
from histoseg_cli.core.ingest.patches import (
    TileConfig,
    grid_positions,
    tile_masked_images,
)


def test_grid_covers_the_far_edge():
    assert grid_positions(10, 4, 4) == [0, 4, 6]
    assert grid_positions(8, 4, 2) == [0, 2, 4]
    assert grid_positions(3, 4, 2) == [0]


def test_labels_from_masks_hand_made():
    masks = np.full((3, 10, 10), 3, np.uint8)  # 3 classes; value 3 = background
    masks[0, :5] = 0  # 50 % class 0
    masks[0, 5, :5] = 1  # 5 %: not more than 5 % -> absent
    masks[1, :, :6] = 2  # 60 % class 2
    masks[1, 0, 6] = 1  # 1 %: absent at 5 %, present at 0
    masks[2, 0, 0] = 200  # out-of-range values are background too
    assert labels_from_masks(masks, 3, 0.05).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert labels_from_masks(masks, 3, 0.0).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def _save(folder, name, image, mask, palette=False):
    (folder / "img").mkdir(exist_ok=True)
    (folder / "mask").mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / "img" / name)
    if palette:
        save_palette_png(folder / "mask" / name, mask, np.array([[255, 0, 0], [0, 255, 0],
                                                                 [255, 255, 255]], np.uint8))
    else:
        Image.fromarray(mask, mode="L").save(folder / "mask" / name)


def test_tile_masked_images_cuts_labels_and_pads(tmp_path):
    big = np.zeros((40, 64, 3), np.uint8)
    big_mask = np.zeros((40, 64), np.uint8)
    big_mask[:, 32:] = 1
    small = np.full((20, 24, 3), 100, np.uint8)  # smaller than a patch: padded, not dropped
    small_mask = np.ones((20, 24), np.uint8)
    _save(tmp_path, "big.png", big, big_mask, palette=True)
    _save(tmp_path, "small.png", small, small_mask)
    assert read_mask(tmp_path / "mask" / "big.png").max() == 1
    out = tmp_path / "o.h5"
    summary = tile_masked_images(tmp_path / "img", tmp_path / "mask", out, ["a", "b"],
                                 TileConfig(patch_size=32, stride=16, min_fraction=0.05))
    art = Artifact(out)
    names = art.names()
    # big: x in {0, 16, 32}, y in {0, 8}: 6 patches; small: 1 padded patch
    assert summary.patches == len(art) == 7 and summary.images == 2
    assert "big_32_8" in names and "small" in names
    labels = dict(zip(names, art.labels().tolist()))
    assert labels["big_0_0"] == [1, 0] and labels["big_32_0"] == [0, 1]
    assert labels["big_16_0"] == [1, 1]
    assert labels["small"] == [0, 1]
    i = names.index("small")
    padded_mask = art.mask(i)
    assert (padded_mask[:20, :24] == 1).all() and (padded_mask[20:] == 2).all()
    assert (art.patch(i)[20:] == 255).all()
    assert art.file["coords"][names.index("big_32_8")].tolist() == [32, 8]
    assert art.file["coords"].attrs["patch_size"] == 32


def test_tile_masked_images_errors(tmp_path):
    _save(tmp_path, "a.png", np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8), np.uint8))
    with pytest.raises(InputError, match="expected the same size"):
        tile_masked_images(tmp_path / "img", tmp_path / "mask", tmp_path / "o.h5", ["x"],
                           TileConfig(patch_size=8))
    (tmp_path / "img" / "a.png").unlink()
    (tmp_path / "img" / "b.png").write_bytes(b"not a png")
    (tmp_path / "mask" / "b.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="b.png: unreadable image"):
        tile_masked_images(tmp_path / "img", tmp_path / "mask", tmp_path / "o.h5", ["x"],
                           TileConfig(patch_size=8))
    assert not (tmp_path / "o.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _subset(src, dst, names):
    for sub in ("img", "mask"):
        (dst / sub).mkdir(parents=True)
        for n in names:
            (dst / sub / n).symlink_to(src / sub / n)


def test_wsss4luad_masks_to_labels(shared_data, tmp_path, cli):
    src = shared_data / "wsss4luad" / "dev"
    names = sorted(p.name for p in (src / "img").iterdir())[:6]
    _subset(src, tmp_path / "d", names)
    out = tmp_path / "w.h5"
    res = cli("tile", tmp_path / "d" / "img", "--masks", tmp_path / "d" / "mask",
              "--classes", "tumour,stroma,normal", "--patch-size", "224", "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    art = Artifact(out)
    labels = art.labels()
    assert len({tuple(r) for r in labels.tolist()}) > 1
    # every label agrees with the stored mask under the 5 % rule
    np.testing.assert_array_equal(labels, labels_from_masks(art.file["masks"][:], 3, 0.05))


def test_glas_patch_benchmark_layout(shared_data, tmp_path, cli):
    src = shared_data / "glas" / "train"
    d = tmp_path / "g"
    for sub, target in (("img", "images"), ("mask", "masks")):
        (d / sub).mkdir(parents=True)
        for n in ("train_1.png", "train_2.png"):
            (d / sub / n).symlink_to(src / target / n)
    res = cli("tile", d / "img", "--masks", d / "mask", "--classes", "non-gland,gland",
              "--patch-size", "112", "--stride", "56", "-o", tmp_path / "g.h5", "--json")
    assert res.exit_code == 0, res.output
    art = Artifact(tmp_path / "g.h5")
    assert art.meta.patch_size == 112 and art.class_names == ["non-gland", "gland"]
    assert len({tuple(r) for r in art.labels().tolist()}) > 1
    assert len(art) > 100

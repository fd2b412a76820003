"""Grad-CAM core: batched == reference loop, closed form, normalisation, background, argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoseg_cli.core.cams.gradcam import final_layer_cams, gradcam
from histoseg_cli.core.cams.run import CamsConfig, compute_batch
from histoseg_cli.core.cams.tta import TTA_VIEWS, averaged_maps
from benchmarks.naive_gradcam import naive_gradcam
from histoseg_cli.core.cams.background import BackgroundConfig, background_mask
from histoseg_cli.core.cams.pseudo import (
    BACKGROUND_SCORE,
    label_masks,
    minmax_normalise,
    pseudo_masks,
)
from histoseg_cli.core.errors import UsageError


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
@pytest.mark.parametrize("vectorize", [False, True])
def test_batched_gradcam_matches_reference_loop(tiny_classifier, vectorize, method):
    torch.manual_seed(1)
    x = torch.rand(4, 3, 48, 48)
    logits, fast = gradcam(tiny_classifier, x, vectorize=vectorize, method=method)
    slow = naive_gradcam(tiny_classifier, x, layercam=method == "layercam")
    assert list(fast) == list(tiny_classifier.backbone.cam_layers)
    assert logits.shape == (4, 4)
    labels = torch.ones(4, 4)
    no_bg = torch.zeros(4, 48, 48, dtype=torch.bool)
    for name in fast:
        assert fast[name].shape == slow[name].shape == (4, 4, 12, 12)
        scale = slow[name].abs().max()
        assert scale > 0
        assert (fast[name] - slow[name]).abs().max() <= 1e-4 * scale
    # the maps users get (upsampled, min-max normalised to [0, 1]) agree to 1e-4 absolute
    a = pseudo_masks(fast, labels, no_bg, 48).cams
    b = pseudo_masks(slow, labels, no_bg, 48).cams
    assert (a - b).abs().max().item() <= 1e-4


def test_layercam_keeps_where_the_gradient_points():
    """Two positions, two channels: Grad-CAM pools the gradient over positions and loses
    which channel matters where; Layer-CAM weights each position by its own gradient."""
    act = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (B=1, D=2, h=1, w=2)
    grad = torch.tensor([[[[1.0, 0.0]], [[0.0, -1.0]]]])  # channel 0 up at left, 1 down at right
    from histoseg_cli.core.cams.gradcam import CAM_METHODS

    pooled = CAM_METHODS["gradcam"].combine(grad, act)
    positive = CAM_METHODS["layercam"].combine(grad, act)
    assert torch.allclose(pooled, torch.tensor([[[0.5, -0.5]]]))
    assert torch.allclose(positive, torch.tensor([[[1.0, 0.0]]]))
    # a negative gradient never counts: flipped, only the right position is left
    assert torch.allclose(CAM_METHODS["layercam"].combine(-grad, act), torch.tensor([[[0.0, 1.0]]]))


def test_final_layer_closed_form_matches_autograd(tiny_classifier):
    x = torch.rand(3, 3, 32, 32)
    logits, acts = tiny_classifier.forward_layers(x)
    deep = acts["bn7"]
    for k in range(4):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), deep, retain_graph=True)
        expected = (grad.mean(dim=(2, 3), keepdim=True) * deep).sum(dim=1)
        closed = final_layer_cams(deep.detach(), tiny_classifier.fc8.weight.detach())[:, k]
        assert torch.allclose(closed, expected.detach(), atol=1e-7, rtol=1e-5)


def test_gradcam_refuses_training_mode(tiny_classifier):
    with pytest.raises(ValueError, match="eval mode"):
        gradcam(tiny_classifier.train(), torch.rand(1, 3, 32, 32))


def test_gradcam_works_with_frozen_weights(tiny_classifier):
    x = torch.rand(2, 3, 32, 32)
    _, reference = gradcam(tiny_classifier, x)
    tiny_classifier.requires_grad_(False)
    _, frozen = gradcam(tiny_classifier, x)
    for name in reference:
        assert torch.equal(reference[name], frozen[name])


def test_minmax_is_over_the_whole_stack_not_per_class():
    cams = torch.tensor([[[[0.0, 1.0]], [[2.0, 4.0]]]])  # (1, 2, 1, 2)
    out = minmax_normalise(cams)
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.25]], [[0.5, 1.0]]]]))
    assert torch.equal(minmax_normalise(torch.full((1, 2, 2, 2), 3.0)), torch.zeros(1, 2, 2, 2))


def test_absent_classes_are_zeroed_after_normalising_the_stack():
    raw = {"l": torch.tensor([[[[-1.0, 3.0]], [[1.0, 0.0]]]])}  # min in class 0, which is absent
    out = pseudo_masks(raw, torch.tensor([[0, 1]]), torch.zeros(1, 2, 2, dtype=torch.bool), 2)
    # upsampling 1x2 -> 2x2 keeps the values per column; stack min -1, max 3
    assert torch.equal(out.cams[0, 0, 0], torch.zeros(2, 2))
    assert torch.allclose(out.cams[0, 0, 1], torch.tensor([[0.5, 0.25], [0.5, 0.25]]))
    assert torch.equal(out.masks[0, 0], torch.ones(2, 2, dtype=torch.uint8))


def test_argmax_background_label_and_absent_classes_never_win():
    cams = torch.tensor([[[[0.9, 0.0, 0.3]], [[0.0, 0.0, 0.7]], [[0.0, 0.0, 0.0]]]])
    present = torch.tensor([[True, True, False]])
    background = torch.tensor([[[False, False, True]]])
    masks = label_masks(cams, present, background)
    # pixel 1: all zero, class 0 present wins the tie; pixel 2: background = C = 3
    assert masks.tolist() == [[[0, 0, 3]]]
    only_second = label_masks(cams, torch.tensor([[False, True, False]]), background)
    assert only_second.tolist() == [[[1, 1, 3]]]
    nothing = label_masks(cams, torch.zeros(1, 3, dtype=torch.bool), background)
    assert nothing.tolist() == [[[3, 3, 3]]]
    assert BACKGROUND_SCORE > 1.0


def test_white_background_rule_keeps_large_components_only():
    img = np.full((1, 40, 40, 3), 120, dtype=np.uint8)
    img[0, 0:10, 0:10] = 255  # 100 px white: background
    img[0, 20:23, 20:23] = 255  # 9 px white speck: stays tissue
    # two 5x5 squares touching at a corner: 25 px each under 4-connectivity -> removed
    img[0, 30:35, 0:5] = 255
    img[0, 35:40, 5:10] = 255
    img[0, 30:40, 30:40] = 201  # grey 201 > 200: background; 200 would not be
    img[0, 0:10, 30:40] = 200
    bg = background_mask(img, BackgroundConfig("white", threshold=200, min_size=50))[0]
    expected = np.zeros((40, 40), bool)
    expected[0:10, 0:10] = True
    expected[30:40, 30:40] = True
    assert np.array_equal(bg, expected)
    small = background_mask(img, BackgroundConfig("white", threshold=200, min_size=9))[0]
    assert small[20:23, 20:23].all() and small[30:35, 0:5].all()
    assert not background_mask(img, BackgroundConfig("none")).any()


def test_background_rule_becomes_label_c_in_pseudo_masks():
    raw = {"l": torch.rand(1, 2, 4, 4)}
    bg = torch.zeros(1, 4, 4, dtype=torch.bool)
    bg[0, :2] = True
    masks = pseudo_masks(raw, torch.tensor([[1, 1]]), bg, 4).masks[0, 0]
    assert (masks[:2] == 2).all() and (masks[2:] < 2).all()


@pytest.mark.parametrize("name", ["hflip", "flips", "d4"])
def test_tta_maps_follow_the_patch_when_it_is_flipped(tiny_classifier, name):
    """The views form a group, so the averaged maps of a flipped patch are the flipped
    averaged maps, whatever the network (the tiny one is not flip-equivariant itself)."""
    views = TTA_VIEWS[name]
    x = torch.rand(2, 3, 32, 32)

    def maps_of(batch):
        return gradcam(tiny_classifier, batch)[1]

    plain = averaged_maps(maps_of, x, views)
    for view in views[1:]:
        moved = averaged_maps(maps_of, view.apply(x), views)
        for layer in plain:
            scale = plain[layer].abs().max()
            assert (moved[layer] - view.apply(plain[layer])).abs().max() <= 1e-4 * scale
    # one view alone is not equivariant: the maps of a flipped patch differ by far more
    single = views[1].invert(maps_of(views[1].apply(x))["bn7"])
    alone = maps_of(x)["bn7"]
    assert (single - alone).abs().max() > 0.1 * alone.abs().max()


def test_tta_none_is_the_single_pass_and_views_invert(tiny_classifier):
    x = torch.rand(2, 3, 32, 32)
    _, reference = gradcam(tiny_classifier, x)
    once = averaged_maps(lambda b: gradcam(tiny_classifier, b)[1], x, TTA_VIEWS["none"])
    for layer in reference:
        assert torch.equal(once[layer], reference[layer])
    for view in TTA_VIEWS["d4"]:
        assert torch.equal(view.invert(view.apply(x)), x)
    with pytest.raises(ValueError, match="square"):
        averaged_maps(lambda b: gradcam(tiny_classifier, b)[1], torch.rand(1, 3, 32, 48),
                      TTA_VIEWS["d4"])


def test_cams_config_names_the_bad_option():
    with pytest.raises(UsageError, match="^tta: "):
        CamsConfig(tta="rot45")
    with pytest.raises(UsageError, match="^precision: "):
        CamsConfig(precision="fp8")
    with pytest.raises(UsageError, match="^cam: "):
        CamsConfig(cam="scorecam")


def test_bf16_pseudo_masks_agree_with_fp32():
    from tests.test_cams_run import cam_model

    patches = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.ones((6, 4), dtype=np.int64)
    no_bg = np.zeros((6, 32, 32), dtype=bool)
    fp32 = compute_batch(cam_model(), patches, labels, no_bg, tta="flips").masks
    bf16 = compute_batch(cam_model(precision="bf16"), patches, labels, no_bg, tta="flips").masks
    assert (fp32 == bf16).float().mean().item() >= 0.9

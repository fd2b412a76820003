"""``histoseg train-seg``: DeepLabV3+ with multi-layer pseudo-supervision (stage 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands import options as opt

DATA, MODEL, LOSS = "Data", "Model", "Loss"


def _floats(text: str | None, setting: str) -> list[float] | None:
    from histoseg_cli.core.errors import UsageError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"'{text}': expected comma-separated numbers", setting) from None


@command(app, "train-seg", panel="Training")
def train_seg(
    data: Annotated[Path, typer.Argument(help="Patches artifact (or dataset folder) the pseudo "
                                         "masks were made from.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory to write.",
                                         show_default=False, rich_help_panel=opt.OUTPUT)],
    pseudo: Annotated[Path | None, typer.Argument(
        help="Pseudo-masks artifact from histoseg cams (omit with --masks).",
        show_default=False)] = None,
    masks: Annotated[bool, typer.Option(
        "--masks", help="Fully supervised: train on DATA's ground-truth masks instead of pseudo "
        "masks.", rich_help_panel=DATA)] = False,
    val: Annotated[Path | None, typer.Option(
        "--val", help="Pixel-labelled validation artifact or dataset folder: mIoU, FwIoU, ACC "
        "each epoch, best.pt by mIoU.", show_default=False, rich_help_panel=DATA)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Layout of a dataset folder \\[default: detected].",
        rich_help_panel=DATA)] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="CAM layers to learn from, comma-separated \\[default: all in PSEUDO].",
        show_default=False, rich_help_panel=LOSS)] = None,
    lambdas: Annotated[str | None, typer.Option(
        "--lambdas", help="Their weights, comma-separated \\[default: 0.2,0.2,0.6 shallow to "
        "deep].", show_default=False, rich_help_panel=LOSS)] = None,
    encoder: Annotated[str, typer.Option(
        "--encoder", help="Any segmentation-models-pytorch encoder (tu-NAME for timm's), or "
        "efficientnet_lite0/1/2 (the train-cls backbones of the same name).",
        rich_help_panel=MODEL)] = "resnet101",
    output_stride: Annotated[int, typer.Option("--output-stride", help="8 or 16 (ASPP rates "
                                               "12/24/36 or 6/12/18).",
                                               rich_help_panel=MODEL)] = 16,
    pretrained: Annotated[str | None, typer.Option(
        "--pretrained", help="Encoder weights: 'imagenet' (efficientnet_lite0/1/2: offline "
        "from the weights extra; others: downloaded), a state-dict file, or a train-cls "
        "checkpoint of the same architecture.",
        show_default=False, rich_help_panel=MODEL)] = None,
    gate_head: Annotated[bool, typer.Option(
        "--gate-head", help="Train a classification head on the encoder with the patch labels "
        "(gate with one network).", rich_help_panel=MODEL)] = False,
    gate_weight: Annotated[float, typer.Option("--gate-weight", min=0.0,
                                               help="Weight of the gate head's loss.",
                                               rich_help_panel=LOSS)] = 0.4,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="Stage-1 checkpoint whose F1/AUC on --val is recorded beside the "
        "gate head's.", show_default=False, rich_help_panel=MODEL)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, rich_help_panel=opt.OPTIM)] = 30,
    batch_size: opt.BatchSize = 20,
    lr: Annotated[float | None, typer.Option(
        "--lr", min=0.0, help="Encoder learning rate \\[default: 0.01, from scratch and from "
        "--pretrained weights].", show_default=False, rich_help_panel=opt.OPTIM)] = None,
    head_lr_mult: Annotated[float, typer.Option(
        "--head-lr-mult", min=0.0, help="LR multiplier of decoder and heads (the paper's 10; "
        "from scratch 1 can be steadier, see docs/method.md).", rich_help_panel=opt.OPTIM)] = 10.0,
    weight_decay: opt.WeightDecay = 5e-4,
    momentum: opt.Momentum = 0.9,
    poly_power: opt.PolyPower = 0.9,
    blur: Annotated[float, typer.Option("--blur", min=0.0, max=1.0,
                                        help="Probability of a random Gaussian blur.",
                                        rich_help_panel=opt.OPTIM)] = 0.5,
    vflip: Annotated[bool, typer.Option("--vflip/--no-vflip", help="Random vertical flips "
                                        "(horizontal ones are always on).",
                                        rich_help_panel=opt.OPTIM)] = True,
    seed: opt.Seed = 0,
    deterministic: opt.Deterministic = False,
    device: opt.Device = "auto",
    workers: opt.LoaderWorkers = 4,
    precision: opt.Precision = "auto",
    channels_last: opt.ChannelsLast = None,
    compile_: opt.Compile = False,
    resume: opt.Resume = False,
    overwrite: opt.OverwriteRun = False,
    *,
    out: Output,
) -> None:
    """Train DeepLabV3+ on multi-layer pseudo masks (stage 3), or on ground-truth masks.

    Writes RUN_DIR/checkpoint.pt (self-describing; best.pt by val mIoU with --val),
    metrics.jsonl, curve.png, samples/ and config.json; prints the checkpoint path.

    [b]Examples[/b]

      histoseg train-seg train.h5 pseudo.h5 --val val.h5 -o runs/seg

      histoseg train-seg train.h5 pseudo.h5 --layers bn7 -o runs/seg-bn7   (one layer)

      histoseg train-seg train.h5 --masks --val val.h5 -o runs/seg-full   (fully supervised)
    """
    from histoseg_cli.core.ingest.sources import resolve_sources  # torch: only when running
    from histoseg_cli.core.training import SegmenterConfig, run_train

    config = SegmenterConfig(
        data=str(data), run_dir=str(output), val=str(val) if val else None, dataset=dataset,
        pseudo=str(pseudo) if pseudo else None, masks=masks,
        layers=[v.strip() for v in layers.split(",") if v.strip()] if layers else None,
        lambdas=_floats(lambdas, "lambdas"), encoder=encoder, output_stride=output_stride,
        gate_head=gate_head, gate_weight=gate_weight,
        classifier=str(classifier) if classifier else None, pretrained=pretrained,
        epochs=epochs, batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult,
        weight_decay=weight_decay, momentum=momentum, poly_power=poly_power, blur=blur,
        vflip=vflip, precision=precision, channels_last=channels_last, compile=compile_,
        workers=workers, device=device, seed=seed, deterministic=deterministic, resume=resume,
        overwrite=overwrite)
    result = run_train(config, resolve_sources, out.reporter)
    if result.is_main:
        out.result(result.as_dict(), paths=[str(result.checkpoint)])

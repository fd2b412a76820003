"""``histoseg train-cls``: train the multi-label patch classifier with PDA (stage 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoseg_cli.app import app
from histoseg_cli.commands.runner import Output, command
from histoseg_cli.commands import options as opt
from histoseg_cli.core.data.layouts import DATASETS

#: Shown in --help without importing torch; tests check it lists every registered backbone.
BACKBONE_HELP = ("resnet38d (the paper's ResNet-38), resnet10t, resnet18, resnet34, resnet50, "
                 "resnet101, resnext50_32x4d, efficientnet_lite0, efficientnet_lite1, "
                 "efficientnet_lite2 (timm, dilated; the Lite ones with ImageNet weights "
                 "offline from the weights extra)")

DATA, MODEL, PDA = "Data", "Model", "PDA"


@command(app, "train-cls", panel="Training")
def train_cls(
    data: Annotated[Path, typer.Argument(help="Training artifact (.h5 with labels), folder of "
                                         "artifacts (train.h5, val.h5) or dataset folder "
                                         "(layout detected, or --dataset).",
                                         show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory to write.",
                                         show_default=False, rich_help_panel=opt.OUTPUT)],
    val: Annotated[Path | None, typer.Option(
        "--val", help="Validation artifact (labels or masks) or split folder; per-class F1, AUC "
        "and exact match each epoch \\[default: the dataset's val/ split when DATA is a dataset "
        "root].", show_default=False, rich_help_panel=DATA)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help=f"Layout of a dataset folder: {', '.join(DATASETS)} \\[default: detected "
        "from the label style of the file names].",
        rich_help_panel=DATA)] = None,
    flips: Annotated[bool, typer.Option("--flips/--no-flips", help="Random horizontal and "
                                        "vertical flips.", rich_help_panel=DATA)] = True,
    color_jitter: Annotated[float, typer.Option(
        "--color-jitter", min=0.0, max=0.99, help="Brightness/contrast/saturation jitter "
        "strength (0 = off).", rich_help_panel=DATA)] = 0.0,
    backbone: Annotated[str, typer.Option(
        "--backbone", help=f"Network: {BACKBONE_HELP}.",
        rich_help_panel=MODEL)] = "resnet38d",
    width: Annotated[float, typer.Option(
        "--width", min=0.01, max=1.0, help="resnet38d channel multiplier (1 = the paper's "
        "network; smaller only for quick tries).", rich_help_panel=MODEL)] = 1.0,
    output_stride: Annotated[int | None, typer.Option(
        "--output-stride", help="8, 16 or 32: input size / CAM size (the timm networks, dilated "
        "below 32; resnet38d is 8) \\[default: 16 for efficientnet_lite0/1/2, 8 otherwise].",
        show_default=False, rich_help_panel=MODEL)] = None,
    input_scale: Annotated[float, typer.Option(
        "--input-scale", min=0.25, max=4.0, help="Resize each patch by this factor inside the "
        "network (cams and the gate do the same): 2 shows a 112 px patch to ImageNet weights "
        "at 224 px, for about 4x the compute.", rich_help_panel=MODEL)] = 1.0,
    pretrained: Annotated[str | None, typer.Option(
        "--pretrained", help="Starting weights: a state dict / checkpoint / safetensors / MXNet "
        ".params file, or 'imagenet' (efficientnet_lite0/1/2: offline from the weights extra; "
        "others: downloaded from timm's hub). Freezes the stem and BatchNorm.",
        show_default=False, rich_help_panel=MODEL)] = None,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.99,
                                           help="Dropout2d before pooling.",
                                           rich_help_panel=MODEL)] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", min=1, rich_help_panel=opt.OPTIM)] = 20,
    batch_size: opt.BatchSize = 20,
    lr: Annotated[float | None, typer.Option(
        "--lr", min=0.0, help="Backbone learning rate \\[default: 0.01 from scratch, 0.001 from "
        "--pretrained weights].", show_default=False, rich_help_panel=opt.OPTIM)] = None,
    head_lr_mult: Annotated[float, typer.Option("--head-lr-mult", min=0.0,
                                                help="LR multiplier of fc8.",
                                                rich_help_panel=opt.OPTIM)] = 10.0,
    weight_decay: opt.WeightDecay = 5e-4,
    momentum: opt.Momentum = 0.9,
    poly_power: opt.PolyPower = 0.9,
    seed: opt.Seed = 0,
    deterministic: opt.Deterministic = False,
    pda: Annotated[str, typer.Option(
        "--pda", help="Progressive Dropout Attention: normalised (attention divided by its "
        "per-patch maximum; steady from scratch), paper (the published raw mean) or off.",
        rich_help_panel=PDA)] = "normalised",
    no_pda: Annotated[bool, typer.Option("--no-pda", help="Same as --pda off (the ablation).",
                                         rich_help_panel=PDA)] = False,
    pda_sigma: Annotated[float, typer.Option("--pda-sigma", min=0.01, max=1.0,
                                             help="mu decay per epoch.",
                                             rich_help_panel=PDA)] = 0.985,
    pda_floor: Annotated[float, typer.Option("--pda-floor", min=0.0, max=1.0,
                                             help="Lowest mu.", rich_help_panel=PDA)] = 0.65,
    pda_warmup: Annotated[int, typer.Option("--pda-warmup", min=0,
                                            help="Epochs with PDA off (mu = 1).",
                                            rich_help_panel=PDA)] = 3,
    pda_decay_in_warmup: Annotated[bool, typer.Option(
        "--pda-decay-in-warmup", help="Decay mu during warm-up too (reference code; with "
        "--pda-sigma 0.98).", rich_help_panel=PDA)] = False,
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
    """Train the multi-label patch classifier with Progressive Dropout Attention (stage 1).

    Writes RUN_DIR/checkpoint.pt (self-describing; best.pt with --val), metrics.jsonl,
    curve.png and config.json; prints the checkpoint path. Runs distributed under torchrun.

    [b]Examples[/b]

      histoseg train-cls LUAD-HistoSeg -o runs/cls --pretrained a1.params

      histoseg train-cls train.h5 --val val.h5 -o runs/r18 --backbone resnet18 --pretrained imagenet

      torchrun --nproc_per_node=4 -m histoseg_cli train-cls train.h5 -o runs/cls
    """
    from histoseg_cli.core.ingest.sources import resolve_sources  # torch: only when running
    from histoseg_cli.core.models import MuSchedule
    from histoseg_cli.core.training import ClassifierConfig, run_train

    config = ClassifierConfig(
        data=str(data), run_dir=str(output), val=str(val) if val else None, dataset=dataset,
        backbone=backbone, backbone_kwargs={"width": width} if width != 1.0 else {},
        output_stride=output_stride, input_scale=input_scale,
        pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
        head_lr_mult=head_lr_mult, weight_decay=weight_decay, momentum=momentum,
        poly_power=poly_power, dropout=dropout, pda="off" if no_pda else pda,
        mu=MuSchedule(pda_sigma, pda_floor, pda_warmup, pda_decay_in_warmup),
        flips=flips, color_jitter=color_jitter, precision=precision,
        channels_last=channels_last, compile=compile_, workers=workers, device=device,
        seed=seed, deterministic=deterministic, resume=resume, overwrite=overwrite)
    result = run_train(config, resolve_sources, out.reporter)
    if result.is_main:
        out.result(result.as_dict(), paths=[str(result.checkpoint)])

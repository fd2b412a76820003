"""Training-step throughput of train-cls: our default path vs a reference-style loop.

Both run the same network (ResNet-38 + PDA + fc8, stem and BatchNorm frozen as when starting
from the pretrained A1 weights) on synthetic 224 px batches, each in its own process so peak
memory is measured cleanly:

* default: the train-cls step (histoseg_cli.core.training.step.TrainStep): uint8 batch from
  pinned memory, flips + normalisation on the device, bf16 autocast and channels_last on CUDA,
  loss accumulated on the device (no per-step host sync); optionally --compile.
* channels_last / contiguous: the default step in that memory layout (``--modes
  channels_last,contiguous`` compares them; the default picks one as train-cls does).
* reference: what the reference code does per step: float32 NCHW inputs normalised on the
  host, copied unpinned, fp32 eager forward/backward (TF32 off, like the PyTorch the reference
  was written for, unless --reference-tf32), and ``loss.item()`` every step.

Prints images/s, ms per step and peak memory of both, and their ratio.

    python benchmarks/bench_train.py --device cuda                      # paper setting
    python benchmarks/bench_train.py --device cpu --batch-size 4 --steps 2 --warmup 1 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import step_arguments, step_main, time_train_step  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = step_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet38d")
    p.add_argument("--width", type=float, default=1.0, help="resnet38d channel multiplier")
    p.add_argument("--from-scratch", action="store_true",
                   help="train stem and BatchNorm too (default: frozen, as with A1 weights)")
    p.add_argument("--reference-tf32", action="store_true",
                   help="let the reference loop use TF32 (PyTorch's default on Ampere+)")
    return p.parse_args(argv)


def run_child(args: argparse.Namespace) -> dict[str, object]:
    """Time one mode in this process: the train-cls step or the reference loop."""
    import torch
    import torch.nn.functional as F

    from histoseg_cli.core.models import PatchClassifier, ProgressiveDropoutAttention, build_backbone
    from histoseg_cli.core.models.base import has_depthwise_convolutions
    from histoseg_cli.core.models.preprocess import InputNorm
    from histoseg_cli.core.training.augment import PairedAugment
    from histoseg_cli.core.training.task import backbone_and_head_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.backbone == "resnet38d" and args.width != 1 else {}
    model = PatchClassifier(build_backbone(args.backbone, **kwargs), args.classes,
                            pda=ProgressiveDropoutAttention(mu=0.9))
    if not args.from_scratch:
        model.backbone.freeze_pretrained()
    groups = backbone_and_head_groups(list(model.backbone.parameters()),
                                      list(model.fc8.parameters()), 0.01, 10.0, 5e-4)
    labels = (torch.rand(args.batch_size, args.classes) > 0.5).float()
    return time_train_step(
        args, model, groups, InputNorm.from_spec(model.backbone.normalisation), PairedAugment(),
        lambda z, ys: F.multilabel_soft_margin_loss(z.float(), ys[0]), [labels],
        lambda z, ys: F.multilabel_soft_margin_loss(z, ys[0]), args.reference_tf32,
        has_depthwise_convolutions(model.backbone))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    step_main(__file__, args, argv, run_child, f"train-cls step, {args.backbone} (width {args.width})")


if __name__ == "__main__":
    main()

"""Training-step throughput of train-seg: our default path vs a reference-style loop.

Both train the same DeepLabV3+ (smp, output stride 16, ASPP 6/12/18) on synthetic batches with
three pseudo masks per patch, each mode in its own process:

* default: the train-seg step (histoseg_cli.core.training.step.TrainStep with the segmenter
  task's loss and augmentation): uint8 batch and masks (pinned on CUDA), flips and blur on the
  device, bf16 autocast and channels_last on CUDA, loss kept on the device; optionally --compile.
* channels_last / contiguous: the default step in that memory layout (``--modes
  channels_last,contiguous`` compares them; the default picks one as train-cls does).
* reference: float32 NCHW inputs normalised on the host, copied unpinned, fp32 eager, three
  cross-entropies with ignore_index, ``loss.item()`` every step.

    python benchmarks/bench_train_seg.py --device cuda                 # paper setting (R101)
    python benchmarks/bench_train_seg.py --device cpu --encoder resnet18 --size 64 --batch-size 4
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
    p.add_argument("--encoder", default="resnet101")
    return p.parse_args(argv)


def run_child(args: argparse.Namespace) -> dict[str, object]:
    """Time one mode in this process: the train-seg step or the reference loop."""
    import torch
    import torch.nn.functional as F

    from histoseg_cli.core.models.base import has_depthwise_convolutions
    from histoseg_cli.core.models.preprocess import InputNorm
    from histoseg_cli.core.models.segmenter import Segmenter
    from histoseg_cli.core.training.augment import PairedAugment
    from histoseg_cli.core.training.segmenter import DEFAULT_LAMBDAS, pseudo_supervision_loss
    from histoseg_cli.core.training.task import backbone_and_head_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, b, s = args.classes, args.batch_size, args.size
    model = Segmenter(args.encoder, c, 16)
    groups = backbone_and_head_groups(list(model.encoder.parameters()),
                                      model.head_parameters(), 0.01, 10.0, 5e-4)
    pseudo = torch.randint(0, c + 1, (b, 3, s, s), dtype=torch.uint8)
    labels = (torch.rand(b, c) > 0.5).float()

    def reference_loss(out: dict, ys: list) -> torch.Tensor:
        return sum(w * F.cross_entropy(out["masks"], ys[0][:, i].long(), ignore_index=c)
                   for i, w in enumerate(DEFAULT_LAMBDAS))

    return time_train_step(
        args, model, groups, InputNorm.from_spec("imagenet"), PairedAugment(blur=0.5),
        lambda out, ys: pseudo_supervision_loss(out["masks"], ys[0], DEFAULT_LAMBDAS, c),
        [pseudo, labels], reference_loss, depthwise=has_depthwise_convolutions(model.encoder))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    step_main(__file__, args, argv, run_child, f"train-seg step, DeepLabV3+ {args.encoder} (OS 16)")


if __name__ == "__main__":
    main()

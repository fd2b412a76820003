"""Pseudo-mask Grad-CAM speed: batched multi-layer Grad-CAM vs the reference-style loop.

Both run in the same process on the same randomly initialised classifier and inputs (speed
does not depend on the weights). The reference loop does batch 1 and one forward + full
backward per class per layer (3 x C passes per patch); ours does one forward per batch and
one input-only backward per class back to the shallowest CAM layer (or one vmapped backward
for all classes with --vectorize). It also times ours under bf16 autocast with channels_last
(``cams --precision bf16``). Prints patches/s, the ratios, the largest difference of the
normalised maps on the patches both computed, and peak memory.

    PYTHONPATH=. python benchmarks/bench_cams.py --size 224 --batch 8 --patches 16 --naive-patches 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import time

import torch

from histoseg_cli.core.cams.gradcam import gradcam
from benchmarks.naive_gradcam import naive_gradcam
from histoseg_cli.core.cams.pseudo import pseudo_masks
from histoseg_cli.core.device import resolve_device
from histoseg_cli.core.inference.engine import InferenceEngine
from histoseg_cli.core.models import BACKBONES, PatchClassifier, build_backbone


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet38d",
                        choices=sorted(BACKBONES), help="registered backbone")
    parser.add_argument("--size", type=int, default=224, help="patch side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="batch size of ours")
    parser.add_argument("--patches", type=int, default=16, help="patches timed for ours")
    parser.add_argument("--naive-patches", type=int, default=2,
                        help="patches timed for the reference loop (it is slow)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="auto|cpu|cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; best is kept")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone)
    model = PatchClassifier(backbone, args.classes).to(device).eval()
    x = torch.rand(max(args.patches, args.naive_patches), 3, args.size, args.size, device=device)
    print(f"backbone {args.backbone}, {args.size} px, {args.classes} classes, device {device}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}")

    naive_x = x[:args.naive_patches]
    holder: dict[str, dict[str, torch.Tensor]] = {}

    # What ``cams --precision bf16`` runs: the engine's channels_last model and autocast.
    bf16 = InferenceEngine.for_model(copy.deepcopy(model), None, device, "bf16",
                                     channels_last=True)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def ours(vectorize: bool = False, engine: InferenceEngine | None = None) -> None:
        net, inputs = (model, x) if engine is None else (engine.model, x_cl)
        with contextlib.nullcontext() if engine is None else engine.autocast():
            for s in range(0, args.patches, args.batch):
                gradcam(net, inputs[s:s + args.batch], vectorize=vectorize)

    def naive() -> None:
        holder["maps"] = naive_gradcam(model, naive_x)

    runs = {"ours (backward per class)": (lambda: ours(False), args.patches),
            "ours (vmapped classes)": (lambda: ours(True), args.patches),
            "ours, bf16 + channels_last": (lambda: ours(engine=bf16), args.patches),
            "reference loop (batch 1)": (naive, args.naive_patches)}
    gradcam(model, x[:1])  # warm-up (allocator, kernels)
    ours(engine=bf16)
    best = {label: float("inf") for label in runs}
    peak = {label: "" for label in runs}
    for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
        for label, (fn, _count) in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            best[label] = min(best[label], timed(fn, device))
            if device.type == "cuda":
                peak[label] = f"; peak memory {peak_memory_mb(device):,.0f} MiB"
    rates = {label: runs[label][1] / best[label] for label in runs}
    for label, rate in rates.items():
        print(f"{label:28s} {rate:8.3f} patches/s   (best of {args.repeats}: {best[label]:.1f} s "
              f"for {runs[label][1]}{peak[label]})")
    naive_rate = rates.pop("reference loop (batch 1)")
    for label, rate in rates.items():
        print(f"speed-up {label}: {rate / naive_rate:.1f}x")
    fp32 = rates["ours (backward per class)"]
    bf16_rate = rates["ours, bf16 + channels_last"]
    print(f"bf16 + channels_last vs fp32 (ours): {bf16_rate / fp32:.1f}x")

    if device.type == "cpu":
        print(f"peak memory (process RSS): {peak_memory_mb(device):,.0f} MiB")
    _, fast = gradcam(model, naive_x)
    labels = torch.ones(len(naive_x), args.classes, device=device)
    bg = torch.zeros(len(naive_x), args.size, args.size, dtype=torch.bool, device=device)
    a = pseudo_masks(fast, labels, bg, args.size).cams
    b = pseudo_masks(holder["maps"], labels, bg, args.size).cams
    print(f"max |ours - reference| of the normalised maps: {(a - b).abs().max().item():.2e}")


if __name__ == "__main__":
    main()

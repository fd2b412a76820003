"""Benchmark ``predict``: gated patches/s vs the reference-style pipeline, and whole slides.

Patches (in-process, same random weights and inputs for every method; speed does not depend
on the weights):

* ours: ``predict``'s Predictor (checkpoints loaded as the command loads them; the gated
  segmenter with the stage-1 classifier as gate in the inference engine), batched, channels
  last, per --precision ("auto": bf16 autocast on CUDA, fp32 on CPU), labels to the host;
* ours, gate head: the same with the segmenter's own gate head instead of a classifier;
* reference-style: separate classifier and segmenter, fp32 eager, batch 1, the segmenter run
  once for the mask and the classifier once for the gate, gating applied on the host.

The label agreement of ours and the reference on the patches both ran is printed (fp32 on CPU:
expect 100%).

Slides (``--slide``): the whole ``histoseg predict SEG slide -o OUT`` command on the 20k px
pyramidal TIFF of the tile benchmark (built once, cached), in a fresh process: tiles/s with
reading included, start-up included, and the peak RSS of the process tree (workers included).
``--large W,H`` runs the same on a synthetic slide of that size (at ``--large-mpp``) for the
peak RSS: the stitched map is written band by band, so memory follows the map's width, not
its area. ``--slide-outputs labels-tiff,heatmaps`` adds those outputs to the command (their
TIFFs are streamed from the artifact; the peak RSS shows whether that holds).

Beside ours on each slide, a reference-style slide loop in a fresh process on the same tissue
tiles (the first ``--reference-tiles``): OpenSlide ``read_region`` per tile, resized to the
patch, batch 1, the classifier and the segmenter run separately in fp32 with gating on the
host, and the whole label map held in memory, as WSSS reference code does. Ours is timed with
the same two networks (the classifier as gate) and with the segmenter's gate head.

    PYTHONPATH=. python benchmarks/bench_predict.py --encoder resnet18 --width 0.25 --patches 32
    PYTHONPATH=. python benchmarks/bench_predict.py --encoder resnet101 --patches 64 --device cuda
    PYTHONPATH=. python benchmarks/bench_predict.py --patches 0 --slide --large 100000,80000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine, parse_cached, run_tree  # noqa: E402
from histoseg_cli.core.models.checkpoint import load_model, save_checkpoint  # noqa: E402
from histoseg_cli.core.models.classifier import ClassifierInfo, build_classifier  # noqa: E402
from histoseg_cli.core.models.preprocess import InputNorm  # noqa: E402
from histoseg_cli.core.models.segmenter import SegmenterInfo, build_segmenter  # noqa: E402
from histoseg_cli.core.predict.predictor import PredictConfig, Predictor  # noqa: E402

CLASSES = ["TE", "NEC", "LYM", "TAS"]
THRESHOLD = 0.1


def build(args: argparse.Namespace, gate_head: bool = False):  # noqa: ANN201
    torch.manual_seed(0)
    cinfo = ClassifierInfo(class_names=CLASSES, patch_size=args.size, backbone="resnet38d",
                           backbone_kwargs={"width": args.width} if args.width != 1 else {})
    sinfo = SegmenterInfo(class_names=CLASSES, patch_size=args.size, mpp=1.0,
                          encoder=args.encoder, gate_head=gate_head)
    return (build_classifier(cinfo).eval(), cinfo), (build_segmenter(sinfo).eval(), sinfo)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference(classifier, segmenter, patches: np.ndarray, device: torch.device) -> np.ndarray:  # noqa: ANN001
    """Batch 1, fp32 eager, two networks, gating on the host."""
    seg_norm, cls_norm = InputNorm.from_spec("imagenet"), InputNorm()
    out = []
    with torch.no_grad():
        for patch in patches:
            x = torch.from_numpy(patch).permute(2, 0, 1)[None].float().to(device)
            logits = segmenter(seg_norm(x))["masks"][0].cpu().numpy()
            gate = torch.sigmoid(classifier(cls_norm(x)))[0].cpu().numpy()
            on = gate > THRESHOLD
            if on.any():
                logits = np.where(on[:, None, None], logits, -np.inf)
            out.append(logits.argmax(0).astype(np.uint8))
    return np.stack(out)


def ours(predictor: Predictor, patches: np.ndarray) -> np.ndarray:
    out = []
    batch = predictor.config.batch_size
    for s in range(0, len(patches), batch):
        out.append(predictor(patches[s:s + batch]).labels.cpu())
    return torch.cat(out).numpy()


def checkpoints(args: argparse.Namespace) -> dict[str, Path]:
    """Random-weight checkpoints of the configuration, saved once into the cache."""
    (classifier, cinfo), (segmenter, sinfo) = build(args)
    _, (head, hinfo) = build(args, gate_head=True)
    tag = f"{args.encoder}-{args.width}-{args.size}"
    return {"cls": save_checkpoint(args.cache / f"cls-{tag}.pt", classifier, cinfo),
            "seg": save_checkpoint(args.cache / f"seg-{tag}.pt", segmenter, sinfo),
            "head": save_checkpoint(args.cache / f"head-{tag}.pt", head, hinfo)}


def bench_patches(args: argparse.Namespace, device: torch.device) -> None:
    files = checkpoints(args)
    methods = {}
    for precision in args.precision.split(","):
        config = PredictConfig(batch_size=args.batch, precision=precision)
        methods[f"ours ({precision}, classifier gate)"] = Predictor.load(
            files["seg"], files["cls"], device, config)
        methods[f"ours ({precision}, gate head)"] = Predictor.load(
            files["head"], None, device, config)
    classifier = load_model(files["cls"], device, task="classifier").model
    segmenter = load_model(files["seg"], device, task="segmenter").model
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (args.patches, args.size, args.size, 3), dtype=np.uint8)
    ref_patches = patches[:args.reference_patches]
    for predictor in methods.values():
        ours(predictor, patches[:args.batch])  # warm-up
    reference(classifier, segmenter, ref_patches[:1], device)
    runs = {name: ((lambda p=p: ours(p, patches)), len(patches)) for name, p in methods.items()}
    runs["reference"] = (lambda: reference(classifier, segmenter, ref_patches, device),
                         len(ref_patches))
    best = {name: np.inf for name in runs}
    labels: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
        for name, (fn, n) in runs.items():
            sync(device)
            t = time.perf_counter()
            labels[name] = fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t) / n)
    print(f"patches: resnet38d (width {args.width}) gate + DeepLabV3+ {args.encoder}, "
          f"{args.size} px, batch {args.batch}, on {machine(str(device))}")
    for name, seconds in best.items():
        print(f"  {name:34s} {1 / seconds:9.2f} patches/s  "
              f"({best['reference'] / seconds:.2f}x reference)")
        if name != "reference" and "classifier" in name:
            agree = (labels[name][:len(ref_patches)] == labels["reference"]).mean()
            print(f"  {'':34s} label agreement with the reference: {agree:.4%} of pixels")


def reference_slide(args: argparse.Namespace) -> None:
    """The reference-style loop (this process is the child ``run_tree`` measures)."""
    import openslide
    from PIL import Image

    from histoseg_cli.core.slides.extract import SlideConfig, prepare_slide
    from histoseg_cli.core.slides.resolution import Target

    paths = checkpoints(args)
    classifier = load_model(paths["cls"], torch.device("cpu")).model.eval()
    segmenter = load_model(paths["seg"], torch.device("cpu")).model.eval()
    slide = Path(args.reference_slide)
    config = SlideConfig(target=Target(mpp=args.reference_mpp), patch_size=args.size)
    prepared = prepare_slide(slide, config, preview=False)
    plan = prepared.plan
    prepared.reader.close()
    res = plan.resolution
    labels = np.full((plan.grid.height, plan.grid.width), len(CLASSES), np.uint8)  # in RAM
    osr = openslide.OpenSlide(str(slide))
    side = round(args.size * res.scale)
    start = time.perf_counter()
    tiles = plan.tiles[:args.reference_tiles]
    for x, y in tiles:
        x0, y0 = (int(round(v * res.downsample)) for v in (x, y))
        region = osr.read_region((x0, y0), res.level, (side, side)).convert("RGB")
        patch = np.asarray(region.resize((args.size, args.size), Image.BILINEAR))
        labels[y:y + args.size, x:x + args.size] = reference(classifier, segmenter,
                                                             patch[None], torch.device("cpu"))[0]
    print(json.dumps({"tiles": len(tiles), "seconds": time.perf_counter() - start}))


def bench_slide(args: argparse.Namespace, device: str) -> None:
    from benchmarks.slidegen import build_pyramid_tiff

    cache = args.cache
    paths = checkpoints(args)
    slides = [(cache / "bench-20480-f2.tiff", (20480, 20480), 1.0)]
    if args.large:
        w, h = (int(v) for v in args.large.split(","))
        slides.append((cache / f"bench-large-{w}x{h}.tiff", (w, h), args.large_mpp))
    if args.skip_20k:
        slides = slides[1:]
    for slide, (w, h), mpp in slides:
        if not slide.exists():
            t = time.perf_counter()
            build_pyramid_tiff(slide, w, h, 0.5)
            print(f"built {slide} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        outputs = [f"--{o.strip()}" for o in args.slide_outputs.split(",") if o.strip()]
        gates = {"head": ("ours, gate head", ["head"]),
                 "classifier": ("ours, classifier gate", ["seg", "cls"])}
        for name, model in (gates[g.strip()] for g in args.gates.split(",") if g.strip()):
            out = cache / f"pred-{slide.stem}"
            cmd = [sys.executable, "-m", "histoseg_cli", "predict", str(paths[model[0]]),
                   str(slide), "-o", str(out), "--workers", str(args.workers), "--batch-size",
                   str(args.batch), "--device", device, "--precision",
                   args.precision.split(",")[0], "--mpp", str(mpp), "--overwrite", "--json",
                   "-q", *outputs,
                   *(["--classifier", str(paths[model[1]])] if len(model) > 1 else [])]
            seconds, peak, stdout, cpu = run_tree(cmd)
            row = json.loads(stdout)["inputs"][0]
            with h5py.File(out / f"{slide.stem}.h5") as f:
                shape = f["slide/labels"].shape
            print(f"slide {slide.name} ({w}x{h} px at 0.5 mpp -> {mpp:g} mpp, map {shape[1]}x"
                  f"{shape[0]}, {row['tiles']} tiles of {args.size} px, --workers "
                  f"{args.workers}, {' '.join(outputs) or 'no extra outputs'}) {name}: "
                  f"{row['tiles'] / seconds:.1f} tiles/s whole command ({seconds:.1f} s, "
                  f"start-up included), {row['tiles_per_s']} tiles/s in the slide loop; peak RSS "
                  f"{peak:,.0f} MB (process tree); CPU {cpu:.0f} s", flush=True)
        if args.reference_tiles:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--reference-slide",
                   str(slide), "--reference-mpp", str(mpp), "--reference-tiles",
                   str(args.reference_tiles), "--encoder", args.encoder, "--width",
                   str(args.width), "--size", str(args.size), "--threads", str(args.threads),
                   "--cache", str(cache), "--patches", "0"]
            seconds, peak, stdout, cpu = run_tree(cmd)
            ref = json.loads(stdout)
            print(f"slide {slide.name} reference-style (read_region per tile, batch 1, two "
                  f"networks, fp32, map in memory): {ref['tiles'] / ref['seconds']:.1f} "
                  f"tiles/s over {ref['tiles']} tiles ({ref['seconds']:.1f} s in the loop, "
                  f"{seconds:.1f} s whole process); peak RSS {peak:,.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet101", help="segmenter encoder (smp)")
    parser.add_argument("--width", type=float, default=1.0, help="resnet38d width multiplier")
    parser.add_argument("--size", type=int, default=224, help="patch side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patches", type=int, default=32, help="patches timed for ours")
    parser.add_argument("--reference-patches", type=int, default=8,
                        help="patches timed for the reference (it is slow)")
    parser.add_argument("--precision", default="auto",
                        help="comma-separated precisions of ours: auto|fp32|bf16")
    parser.add_argument("--device", default="cpu", help="auto|cpu|cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; best is kept")
    parser.add_argument("--slide", action="store_true", help="also time whole slides")
    parser.add_argument("--large", help="W,H of an extra synthetic slide for peak RSS")
    parser.add_argument("--large-mpp", type=float, default=1.0,
                        help="prediction resolution of the --large slide")
    parser.add_argument("--skip-20k", action="store_true", help="only the --large slide")
    parser.add_argument("--workers", type=int, default=2, help="slide-reading processes")
    parser.add_argument("--gates", default="head,classifier",
                        help="which of our gated models the slides run: head, classifier")
    parser.add_argument("--slide-outputs", default="",
                        help="extra predict outputs for the slides, e.g. labels-tiff,heatmaps")
    parser.add_argument("--reference-tiles", type=int, default=200,
                        help="tiles the reference-style slide loop runs (0: skip it)")
    parser.add_argument("--reference-slide", help=argparse.SUPPRESS)  # the child's slide
    parser.add_argument("--reference-mpp", type=float, default=1.0, help=argparse.SUPPRESS)
    args, device = parse_cached(parser)
    if args.reference_slide:
        reference_slide(args)
        return
    if args.patches:
        bench_patches(args, device)
    if args.slide:
        bench_slide(args, str(device.type))


if __name__ == "__main__":
    main()

"""The whole method on real H&E, through the CLI: results, ablations and the supervised bound.

For each dataset in ../shared/data the images are split the same way every time (every 5th
image, sorted by name, is held out), the training images are cut into patches whose labels say
only which classes are present (> 5% of the patch), and the pipeline runs as a user runs it:

  tile -> train-cls -> cams -> train-seg -> predict (held-out images, gated) -> eval

Measured on the held-out images: the pseudo masks' mIoU per CAM layer (cams on held-out
patches; beside it the same on the training patches, the labels train-seg actually learns
from), and the final segmentation's mIoU, FwIoU, ACC and IoU per class for

* the method (PDA, all three CAM layers, classification gate),
* no PDA (train-cls --no-pda, the rest unchanged),
* with a pretrained classifier, also the paper's raw PDA (train-cls --pda paper),
* single-layer supervision (train-seg --layers: the deepest CAM layer only),
* no gate (predict --no-gate with the method's segmenter),
* the fully supervised upper bound (train-seg --masks on the same training images, no gate),

plus wall time per stage. The cpu configuration trains from scratch; cpu-pretrained starts
both stages from ImageNet EfficientNet-Lite0 weights (installed offline with the weights
extra); cpu-hybrid trains the cpu classifier from scratch and the segmenter from ImageNet
Lite0. Held-out images are never used to choose a checkpoint. ``--seeds 0,1`` repeats every
training with each seed, so run-to-run noise sits beside the differences between variants;
``--add`` adds variants to an earlier run's folder without training its runs again.
Results go to OUT/results.json, to stdout as a table, and into docs/benchmarks.md (this
configuration's section, replaced) with docs/wsss_real_CONFIG.json beside it.

The CPU configuration takes 38 minutes per seed on 2 quiet cores for both datasets; the
paper-sized one (ResNet-38 classifier, DeepLabV3+ ResNet-101, 20/30 epochs) is for a GPU.

    python benchmarks/wsss_real.py --config cpu -o /tmp/wsss          # both datasets
    python benchmarks/wsss_real.py --config cpu --datasets glas --seeds 0,1 -o /tmp/wsss
    python benchmarks/wsss_real.py --config cpu-pretrained --seeds 0,1 -o /tmp/wsss-pre
    python benchmarks/wsss_real.py --config cpu-hybrid --seeds 0,1 -o /tmp/wsss-hybrid
    python benchmarks/wsss_real.py --config paper --device cuda -o /tmp/wsss-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    """Where a dataset's images and masks are, how it is cut and scored, and its settings."""

    name: str
    images: Path
    masks: Path
    classes: tuple[str, ...]
    patch: int
    background: str  # cams background rule: "white" where glass is a label of its own
    published: str  # pretrained figures from the literature, for the table
    settings: dict[str, dict[str, object]]  # per configuration: stride, epochs


#: Per configuration, what differs from the paper-sized run. The CPU one takes 38 minutes on
#: 2 quiet cores for both datasets: small timm/smp ResNets, fewer epochs (GlaS segmenter:
#: 3, which scored as 4 did: 0.633 vs 0.636), and bf16 autocast for training, cams and
#: predict (the CPU's AVX-512 BF16 / AMX path: 2-4x fp32;
#: pseudo masks within 0.001 mIoU of fp32). From scratch the decoder trains at the encoder's LR
#: (train-seg --head-lr-mult 1, not the paper's 10x: steadier on GlaS; docs/benchmarks.md).
#: ``cls_weights`` / ``seg_weights``: each stage's ``--pretrained`` (None: from scratch);
#: ``settings``: which of a dataset's epoch and stride settings it runs with.
CONFIGS: dict[str, dict[str, object]] = {
    "cpu": {"backbone": "resnet10t", "encoder": "tu-resnet10t", "deepest": "layer4",
            "batch": 16, "cams_batch": 32, "precision": "bf16", "head_lr_mult": 1,
            "settings": "cpu"},
    # ImageNet EfficientNet-Lite0 in both stages (offline, from the weights extra; the
    # classifier at its default output stride 16), the paper's 10x decoder LR, cams on one
    # view (flips added 0.004-0.010 mIoU pretrained, for 3.2x the time: docs/benchmarks.md);
    # train-cls picks its pretrained LR (0.001) itself.
    "cpu-pretrained": {"backbone": "efficientnet_lite0", "encoder": "efficientnet_lite0",
                       "deepest": "bn2", "batch": 16, "cams_batch": 32, "tta": "none",
                       "precision": "bf16", "head_lr_mult": 10, "cls_weights": "imagenet",
                       "seg_weights": "imagenet", "settings": "cpu-pretrained"},
    # ImageNet where it pays on a CPU: the small ResNet classifier from scratch (finer CAMs
    # than ImageNet Lite0's, 5x faster to train) and the ImageNet Lite0 segmenter.
    "cpu-hybrid": {"backbone": "resnet10t", "encoder": "efficientnet_lite0", "deepest": "layer4",
                   "batch": 16, "cams_batch": 32, "precision": "bf16", "head_lr_mult": 10,
                   "seg_weights": "imagenet", "settings": "cpu"},
    "paper": {"backbone": "resnet38d", "encoder": "resnet101", "deepest": "bn7", "batch": 20,
              "cams_batch": 32, "precision": "auto", "head_lr_mult": 10, "settings": "paper"},
}
# cpu-pretrained with each GlaS patch shown to the classifier at 2x (the dataset's
# "cpu-scaled" settings: train-cls --input-scale 2, ImageNet scale for 112 px patches, 3
# epochs; WSSS4LUAD's 224 px patches stay at 1x).
CONFIGS["cpu-scaled"] = {**CONFIGS["cpu-pretrained"], "settings": "cpu-scaled"}


def _starts(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """The classifier's and the segmenter's ``--pretrained`` of a stored run (None: from
    scratch); runs stored before the per-stage keys name one ``pretrained`` for both."""
    both = run.get("pretrained")
    return run.get("cls_pretrained", both), run.get("seg_pretrained", both)


def _start(run: dict[str, Any]) -> str:
    """Where a run's two stages started, in words."""
    cls, seg = _starts(run)
    if cls and cls == seg:
        return f"{cls} weights in both stages"
    if not (cls or seg):
        return "No pretrained weights"
    return (f"classifier {f'from {cls} weights' if cls else 'from scratch'}, segmenter "
            f"{f'from {seg} weights' if seg else 'from scratch'}")


DATASETS = {
    "glas": Dataset(
        "glas", DATA / "glas" / "train" / "images", DATA / "glas" / "train" / "masks",
        ("non-gland", "gland"), 112, "none",
        "GlaS test set, ImageNet-pretrained ResNet-38: SC-CAM 0.715, OEEM 0.776 mIoU",
        {"cpu": {"stride": 112, "cls_epochs": 3, "pda_warmup": 1, "seg_epochs": 3},
         # 6 classifier epochs: +0.03 held-out pseudo-mask mIoU over 3 at the deeper layers
         "cpu-pretrained": {"stride": 112, "cls_epochs": 6, "pda_warmup": 1, "seg_epochs": 3},
         "cpu-scaled": {"stride": 112, "cls_epochs": 3, "pda_warmup": 1, "seg_epochs": 3,
                        "input_scale": 2},
         "paper": {"stride": 56, "cls_epochs": 20, "pda_warmup": 3, "seg_epochs": 30}}),
    "wsss4luad": Dataset(
        "wsss4luad", DATA / "wsss4luad" / "dev" / "img", DATA / "wsss4luad" / "dev" / "mask",
        ("tumour", "stroma", "normal"), 224, "white",
        "closest published: this method on LUAD-HistoSeg (4 classes, ImageNet-pretrained "
        "ResNet-38), test mIoU 0.736",
        {"cpu": {"stride": 224, "cls_epochs": 5, "pda_warmup": 1, "seg_epochs": 5},
         "paper": {"stride": 112, "cls_epochs": 20, "pda_warmup": 3, "seg_epochs": 30}}),
}


class Pipeline:
    """Runs ``histoseg`` commands, timing each stage."""

    def __init__(self, out: Path, device: str, seconds: dict[str, float] | None = None) -> None:
        self.out = out
        self.device = device
        self.seconds: dict[str, float] = seconds or {}

    def __call__(self, stage: str, *args: object) -> str:
        cmd = [sys.executable, "-m", "histoseg_cli", *map(str, args), "-q"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.seconds[stage] = round(self.seconds.get(stage, 0.0)
                                    + time.perf_counter() - start, 1)
        if proc.returncode != 0:
            sys.exit(f"{stage} failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        print(f"  {stage}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return proc.stdout.strip()


def split(ds: Dataset, work: Path) -> dict[str, Path]:
    """Every 5th image (sorted) held out; links in WORK/{train,test}/{images,masks}."""
    images = sorted(p for p in ds.images.iterdir() if p.suffix.lower() in (".png", ".jpg",
                                                                          ".tif", ".bmp"))
    folders = {}
    for part in ("train", "test"):
        for kind in ("images", "masks"):
            folder = work / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            folders[f"{part}_{kind}"] = folder
    for i, image in enumerate(images):
        part = "test" if i % 5 == 4 else "train"
        mask = next(ds.masks.glob(image.stem + ".*"))
        for src, folder in ((image, folders[f"{part}_images"]),
                            (mask, folders[f"{part}_masks"])):
            link = folder / src.name
            if not link.exists():
                link.symlink_to(src)
    return folders


VARIANTS = ("method", "no_pda", "pda_paper", "no_gate", "single_layer", "fully_supervised")


def run_dataset(ds: Dataset, config: str, out: Path, device: str, seed: int,
                wanted: tuple[str, ...] = VARIANTS, patch: int | None = None,
                earlier: dict[str, Any] | None = None,
                precision: str | None = None) -> dict[str, object]:
    """Every stage and wanted variant for one dataset and seed; results, pseudo-mask scores
    and stage times. no_gate and single_layer reuse the method's classifier and masks.

    ``earlier``: this dataset and seed's result from an earlier run into the same folder.
    Its variants are kept, and the classifiers, pseudo masks and segmenters it left there
    are reused instead of trained again, so missing variants can be added later.
    ``precision``: every stage's ``--precision`` instead of the configuration's."""
    cfg = CONFIGS[config]
    settings = ds.settings.get(cfg["settings"]) or ds.settings["cpu"]
    if patch:  # another patch size, cut at a stride of one patch
        ds, settings = replace(ds, patch=patch), {**settings, "stride": patch}
    work = out / ds.name / f"seed-{seed}"
    if earlier is None:
        shutil.rmtree(work, ignore_errors=True)
    f = split(ds, work)
    run = Pipeline(work, device, dict(earlier["seconds"]) if earlier else None)
    dev = ["--device", device]
    cls_weights = ["--pretrained", cfg["cls_weights"]] if cfg.get("cls_weights") else []
    seg_weights = ["--pretrained", cfg["seg_weights"]] if cfg.get("seg_weights") else []
    precision_used = precision or str(cfg["precision"])
    precision = ["--precision", precision_used]
    classes = ",".join(ds.classes)
    cut = ["--classes", classes, "--patch-size", ds.patch]
    if earlier is None:
        run("tile", "tile", f["train_images"], "--masks", f["train_masks"], *cut, "--stride",
            settings["stride"], "-o", work / "train.h5")
        run("tile", "tile", f["test_images"], "--masks", f["test_masks"], *cut, "--stride",
            ds.patch, "-o", work / "test.h5")
    train = ["--epochs", settings["cls_epochs"], "--pda-warmup", settings["pda_warmup"],
             "--batch-size", cfg["batch"], "--backbone", cfg["backbone"], "--seed", seed,
             *cls_weights, *precision, *dev]
    if settings.get("input_scale"):
        train += ["--input-scale", settings["input_scale"]]
    # No --val: the held-out images are for scoring only, never for choosing a checkpoint.
    seg_args = ["--encoder", cfg["encoder"], "--epochs", settings["seg_epochs"],
                "--batch-size", cfg["batch"], "--head-lr-mult", cfg["head_lr_mult"],
                "--seed", seed, *seg_weights, *precision, *dev]
    cams = ["--background", ds.background, "--gallery", "0", "--batch-size", cfg["cams_batch"],
            "--tta", cfg.get("tta", "flips"), *precision, *dev]
    results: dict[str, object] = dict(earlier["results"]) if earlier else {}

    def train_seg(name: str, *args: object) -> str:
        """The segmenter run ``seg-NAME``; one an earlier run started there is resumed (at
        once when it is complete)."""
        folder = work / f"seg-{name}"
        if earlier is not None and (folder / "config.json").is_file():
            return run("train-seg", "train-seg", work / "train.h5", *args, "-o", folder,
                       "--resume", *precision, *dev)
        return run("train-seg", "train-seg", work / "train.h5", *args, "-o", folder,
                   "--overwrite", *seg_args)

    def evaluate(name: str, seg: str, extra: list[object]) -> None:
        pred = work / "pred" / name
        run("predict", "predict", seg, f["test_images"], "-o", pred, *extra, *precision, *dev)
        results[name] = json.loads(run("eval", "eval", pred, f["test_masks"], "--classes",
                                       classes, "--json"))

    layers = dict(earlier["pseudo_mask_miou"]) if earlier else {}
    train_layers = dict(earlier["pseudo_mask_miou_train"]) if earlier else {}
    wanted = tuple(v for v in wanted if v not in results)
    variants = [("method", []), ("no_pda", ["--no-pda"])]
    if cfg.get("cls_weights"):  # the published PDA beside the per-patch normalised default
        variants.append(("pda_paper", ["--pda", "paper"]))
    needs_method = {"method", "no_gate", "single_layer"} & set(wanted)
    variants = [(v, pda) for v, pda in variants if v in wanted or (v == "method" and needs_method)]
    for variant, pda in variants:
        cls = work / f"cls-{variant}" / "checkpoint.pt"
        if variant not in layers or not cls.is_file():
            cls = run("train-cls", "train-cls", work / "train.h5", "-o", cls.parent,
                      "--overwrite", *pda, *train)
            made = json.loads(run("cams", "cams", cls, work / "train.h5", "-o",
                                  work / f"pseudo-{variant}.h5", "--json", *cams))
            train_layers[variant] = {k: v["miou"] for k, v in made["metrics"].items()}
            held = json.loads(run("cams", "cams", cls, work / "test.h5", "-o",
                                  work / f"pseudo-test-{variant}.h5", "--json", *cams))
            layers[variant] = {k: v["miou"] for k, v in held["metrics"].items()}
        if variant in wanted or (variant == "method" and "no_gate" in wanted):
            seg = train_seg(variant, work / f"pseudo-{variant}.h5")
        if variant in wanted:
            evaluate(variant, seg, ["--classifier", cls])
        if variant == "method" and "no_gate" in wanted:
            evaluate("no_gate", seg, ["--no-gate"])
        if variant == "method" and "single_layer" in wanted:
            single = train_seg("single", work / "pseudo-method.h5", "--layers", cfg["deepest"])
            evaluate("single_layer", single, ["--classifier", cls])
    if "fully_supervised" in wanted:
        evaluate("fully_supervised", train_seg("full", "--masks"), ["--no-gate"])
    with h5py.File(work / "train.h5", "r") as artifact:
        patches = len(artifact["labels"])
    return {"config": config, "seed": seed, "backbone": cfg["backbone"],
            "encoder": cfg["encoder"], "cls_pretrained": cfg.get("cls_weights"),
            "seg_pretrained": cfg.get("seg_weights"), "settings": settings,
            "tta": cfg.get("tta", "flips"), "precision": precision_used,
            "train_patches": patches, "patch": ds.patch,
            "published": ds.published, "pseudo_mask_miou": layers,
            "pseudo_mask_miou_train": train_layers, "results": results,
            "seconds": run.seconds, "total_seconds": round(sum(run.seconds.values()))}


def _spread(values: list[float]) -> str:
    """``0.612`` for one run; ``0.605 (0.598 / 0.612)``: the mean and each seed's value."""
    mean = f"{sum(values) / len(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.3f}' for v in values)})"


def _only(have: list[dict[str, Any]]) -> str:
    """``seed 0 only``: which seeds a variant ran with, when not all of them."""
    return f"seed {', '.join(str(r['seed']) for r in have)} only"


def _by_variant(runs: list[dict[str, Any]], key: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each variant under ``key`` in any run, in VARIANTS order, with the runs that have it."""
    named = {v for r in runs for v in r.get(key, {})}
    return [(v, [r for r in runs if v in r.get(key, {})])
            for v in sorted(named, key=lambda v: (VARIANTS + (v,)).index(v))]


def table(name: str, runs: list[dict[str, Any]]) -> str:
    """The dataset's section of docs/benchmarks.md: each figure as the mean over seeds, with
    every seed's value beside it when there are several."""
    first = runs[0]
    st = first["settings"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    scale = f" at {st['input_scale']}x (--input-scale)" if st.get("input_scale") else ""
    rows = [f"#### {name}: {first['config']} configuration, "
            f"{'pretrained' if any(_starts(first)) else 'from scratch'}", "",
            f"{first['train_patches']} training patches ({first.get('patch', '')} px, stride "
            f"{st['stride']}); classifier "
            f"{first['backbone']}{scale}, {st['cls_epochs']} epochs; segmenter DeepLabV3+ / "
            f"{first['encoder']}, {st['seg_epochs']} epochs; cams --tta "
            f"{first.get('tta', 'flips')}; {first.get('precision', 'bf16')}; "
            f"seed{'s' if len(runs) > 1 else ''} "
            f"{seeds}. {_start(first)}; "
            f"{first['published']}.", "",
            "| variant | mIoU | FwIoU | ACC | IoU per class |", "|---|---:|---:|---:|---|"]
    for variant, have in _by_variant(runs, "results"):
        got = [r["results"][variant] for r in have]
        ious = ", ".join(f"{k} {sum(g['iou'][k] for g in got) / len(got):.3f}"
                         for k, v in got[0]["iou"].items() if v is not None)
        if len(have) < len(runs):
            variant += f" ({_only(have)})"
        rows.append(f"| {variant} | {_spread([g['miou'] for g in got])} | "
                    f"{_spread([g['fwiou'] for g in got])} | "
                    f"{_spread([g['accuracy'] for g in got])} | {ious} |")
    for key, where in (("pseudo_mask_miou", "held-out"), ("pseudo_mask_miou_train", "training")):
        for variant, have in _by_variant(runs, key):
            layers = have[0][key][variant]
            cells = " / ".join(_spread([r[key][variant][layer] for r in have])
                               for layer in layers)
            if len(have) < len(runs):
                variant += f", {_only(have)}"
            rows.append(f"| pseudo masks ({variant}), {where} patches | {cells} | | | "
                        f"mIoU per layer: {', '.join(layers)} |")
    total = sum(r["total_seconds"] for r in runs) / len(runs)
    seconds = {k: sum(r["seconds"][k] for r in runs) / len(runs) for k in first["seconds"]}
    rows += ["", "Wall time per stage (s, all variants, per seed): " + ", ".join(
        f"{k} {v:.0f}" for k, v in seconds.items()) + f"; total {total / 60:.1f} min.", ""]
    return "\n".join(rows)


def write_docs(docs: Path, config: str, results: dict[str, Any], machine: str) -> None:
    """Replace this configuration's section of docs/benchmarks.md; the JSON goes beside it.
    Datasets not in ``results`` keep their figures from the JSON, so one can be rerun alone."""
    stored = docs.parent / f"wsss_real_{config}.json"
    if stored.is_file():  # datasets of an earlier run in this layout (a list of seeds each)
        kept = {k: v for k, v in json.loads(stored.read_text()).items() if isinstance(v, list)}
        results = {**kept, **results}
    stored.write_text(json.dumps(results, indent=2) + "\n")
    begin, end = f"<!-- wsss-real {config} begin -->", f"<!-- wsss-real {config} end -->"
    body = "\n".join([begin, f"Measured on {machine}, {time.strftime('%Y-%m-%d')}:", "",
                      *(table(name, r) for name, r in results.items()), end])
    text = docs.read_text()
    if begin in text:
        text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    docs.write_text(text)


def _precision_here(config: str, device: str) -> str | None:
    """fp32 for a bf16 configuration on a CPU that would emulate bf16, else None (the
    configuration's own)."""
    if CONFIGS[config]["precision"] != "bf16" or device not in ("auto", "cpu"):
        return None
    import torch

    from histoseg_cli.core.inference.engine import cpu_has_bf16_units

    if (device == "auto" and torch.cuda.is_available()) or cpu_has_bf16_units():
        return None
    print("this CPU has no bf16 units (AVX-512 BF16, AMX): every stage runs in fp32 "
          "(--precision bf16 to run the configuration as written)", file=sys.stderr)
    return "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--datasets", default="glas,wsss4luad")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default="0", help="Comma-separated training seeds; every "
                        "variant is trained once per seed.")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"Comma-separated subset of {', '.join(VARIANTS)} (pda_paper runs "
                        "only with a pretrained classifier).")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="Cut every dataset at this patch size (stride = one patch) "
                        "instead of its own (GlaS 112, WSSS4LUAD 224).")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core {platform.machine()} "
                        "machine", help="What to call the machine in the docs.")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="Markdown file whose section for this configuration is replaced "
                        "('' to leave the docs alone).")
    parser.add_argument("--add", action="store_true",
                        help="Keep the variants already in OUTPUT/results.json and add the "
                        "missing ones, reusing the classifiers, masks and segmenters there.")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="Every stage's --precision [default: the configuration's; fp32 "
                        "for a bf16 configuration on a CPU without bf16 units, where bf16 is "
                        "emulated and several times slower].")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    precision = args.precision or _precision_here(args.config, args.device)
    if not DATA.is_dir():
        sys.exit(f"{DATA}: no real data here; this benchmark needs ../shared/data")
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    stored = args.output / "results.json"
    before = json.loads(stored.read_text()) if args.add and stored.is_file() else {}
    results: dict[str, Any] = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        # with --add, every seed's earlier result (of this configuration: a table never
        # mixes two) stays until its new one replaces it
        results[name] = [r for r in before.get(name, []) if r["config"] == args.config]
        for seed in seeds:
            print(f"{name}, seed {seed}:", file=sys.stderr)
            earlier = next((r for r in results[name] if r["seed"] == seed), None)
            made = run_dataset(DATASETS[name], args.config, args.output, args.device, seed,
                               tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                               args.patch_size, earlier, precision)
            results[name] = sorted([r for r in results[name] if r["seed"] != seed] + [made],
                                   key=lambda r: r["seed"])
            stored.write_text(json.dumps({**before, **results}, indent=2) + "\n")
        print(table(name, results[name]) + "\n")
    if str(args.docs) not in ("", "."):
        write_docs(args.docs, args.config, results, args.machine)


if __name__ == "__main__":
    main()

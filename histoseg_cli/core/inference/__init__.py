"""Inference: the one engine that feeds uint8 patches to any trained network (cams, training-
time validation, predict and export all go through it)."""

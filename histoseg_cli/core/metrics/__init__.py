"""Scores: the pixel confusion matrix behind IoU/mIoU/FwIoU/ACC and multi-label F1/AUC."""

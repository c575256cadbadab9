"""Leakage metrics: image quality after optimal matching, and label accuracy."""

from fedattack.metrics.images import match_and_score, psnr, ssim
from fedattack.metrics.labels import label_accuracy
from fedattack.metrics.score import score

__all__ = ["match_and_score", "psnr", "ssim", "label_accuracy", "score"]

"""Leakage metrics: image quality after optimal matching, and label accuracy."""

from fedattack.metrics.images import ImageScores, match_and_score, psnr, ssim
from fedattack.metrics.labels import label_accuracy
from fedattack.metrics.score import Score, score

__all__ = ["ImageScores", "match_and_score", "psnr", "ssim", "label_accuracy", "Score", "score"]

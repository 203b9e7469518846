"""Image similarity (SSIM, the chest-data label) and the paper's agreement metrics.

``ssim`` matches ``skimage.metrics.structural_similarity`` with its defaults (7x7
uniform window, K1 = 0.01, K2 = 0.03, sample covariance), as used for the paper's labels.
Agreement metrics between predictions and labels: PLCC (Pearson), SROCC (Spearman,
average ranks for ties), KROCC (Kendall's tau-b, ties handled), overall = their sum,
MAE, MSE. Higher is better for the correlations, lower for the errors.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def ssim(reference: np.ndarray | torch.Tensor, image: np.ndarray | torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2D images (the same values as scikit-image's defaults)."""
    return float(ssim_batch(torch.as_tensor(reference)[None], torch.as_tensor(image)[None], data_range)[0])


def ssim_batch(reference: torch.Tensor, image: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each pair in ``(B, H, W)`` batches (float64 inside for accuracy)."""
    x = reference.double().unsqueeze(1)
    y = image.double().unsqueeze(1)
    count = SSIM_WINDOW * SSIM_WINDOW
    covariance_norm = count / (count - 1.0)

    def local_mean(values):
        return F.avg_pool2d(values, SSIM_WINDOW, stride=1)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = covariance_norm * (local_mean(x * x) - mean_x * mean_x)
    var_y = covariance_norm * (local_mean(y * y) - mean_y * mean_y)
    cov_xy = covariance_norm * (local_mean(x * y) - mean_x * mean_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def plcc(prediction: np.ndarray, label: np.ndarray) -> float:
    prediction = np.asarray(prediction, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    a, b = prediction - prediction.mean(), label - label.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def srocc(prediction: np.ndarray, label: np.ndarray) -> float:
    return plcc(_average_ranks(np.asarray(prediction, dtype=np.float64)),
                _average_ranks(np.asarray(label, dtype=np.float64)))


def krocc(prediction: np.ndarray, label: np.ndarray, chunk: int = 512) -> float:
    """Kendall's tau-b (accounts for ties in either variable)."""
    x = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    concordant_minus_discordant = 0.0
    ties_x = ties_y = pairs = 0.0
    for start in range(0, len(x), chunk):
        dx = np.sign(x[start:start + chunk, None] - x[None, :])
        dy = np.sign(y[start:start + chunk, None] - y[None, :])
        concordant_minus_discordant += (dx * dy).sum()
        ties_x += (dx == 0).sum()
        ties_y += (dy == 0).sum()
    n = len(x)
    pairs = n * n  # ordered pairs, the diagonal included in the tie counts
    untied_x = pairs - ties_x
    untied_y = pairs - ties_y
    if untied_x <= 0 or untied_y <= 0:
        return 0.0
    return float(concordant_minus_discordant / np.sqrt(untied_x * untied_y))


def agreement(prediction: np.ndarray, label: np.ndarray) -> Dict[str, float]:
    """The paper's metrics of ``prediction`` against ``label``."""
    prediction = np.asarray(prediction, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    values = {"PLCC": plcc(prediction, label), "SROCC": srocc(prediction, label), "KROCC": krocc(prediction, label)}
    values["overall"] = values["PLCC"] + values["SROCC"] + values["KROCC"]
    values["MAE"] = float(np.abs(prediction - label).mean())
    values["MSE"] = float(((prediction - label) ** 2).mean())
    return values

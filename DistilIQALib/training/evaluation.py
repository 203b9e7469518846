"""Evaluation: the paper's metrics of one or more models on a dataset split.

Writes ``eval_info.csv`` (one row per model and image: label, prediction, raw outputs),
appends one row per model to ``accumulate_metrics.csv`` (PLCC, SROCC, KROCC, overall, MAE,
MSE) and draws ``scatter_<model>.png`` (prediction against label).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.outputs import plots_available
from ..quality.device import resolve_device
from ..quality.metrics import agreement
from ..quality.model import QualityViT, score_from_outputs
from ..quality.weights import ModelInfo, load_weights
from .datasets import LabelledImages, load_images, load_split
from .training import predict


@dataclass
class Prediction:
    """One model's predictions on a split: raw outputs ``(N, num_outputs)`` and scores ``(N,)``."""

    path: Path
    model: QualityViT
    info: ModelInfo
    outputs: np.ndarray
    scores: np.ndarray


def predict_split(weights: Sequence[Path | str], split: LabelledImages, device: torch.device) -> List[Prediction]:
    """Predictions of each weights file on ``split`` (images loaded once per input size)."""
    cache: Dict[tuple, torch.Tensor] = {}
    predictions = []
    for path in weights:
        model, info = load_weights(path, device)
        key = (info.input_size, info.extra_windows)
        if key not in cache:
            cache[key] = load_images(split, info.input_size, extra_windows=info.extra_windows)
        outputs = predict(model, cache[key], device)
        predictions.append(Prediction(Path(path), model, info, outputs,
                                      score_from_outputs(torch.from_numpy(outputs)).numpy()))
    return predictions


def evaluate(weights: Sequence[Path | str], data_dir: Path | str, output_dir: Path | str,
             split_name: str = "test", device_spec: str = "auto",
             plot: Optional[bool] = None) -> List[Dict[str, float]]:
    """Metrics of each weights file on a split: ``eval_info.csv`` (per image), ``accumulate_metrics.csv``
    (one row per model, appended) and ``scatter_<model>.png`` (where matplotlib is installed, see
    :func:`write_evaluation`)."""
    split = load_split(data_dir, split_name)
    if len(split) < 2:
        raise InputError(f"the {split_name} split of {data_dir} has fewer than 2 images")
    predictions = predict_split(weights, split, resolve_device(device_spec))
    return write_evaluation(predictions, split, output_dir, split_name, plot)


def write_evaluation(predictions: Sequence[Prediction], split: LabelledImages, output_dir: Path | str,
                     split_name: str = "test", plot: Optional[bool] = None) -> List[Dict[str, float]]:
    """Write the evaluation files for ``predictions`` on ``split``; returns each model's metrics. ``plot``: a
    scatter plot per model (``None``: where matplotlib is installed; the metrics never depend on it)."""
    output_dir = Path(output_dir)
    plot = plots_available() if plot is None else plot
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    rows = []
    for prediction in predictions:
        name = prediction.path.name
        metrics = {"model": name, "split": split_name, "images": len(split),
                   **agreement(prediction.scores, split.labels)}
        results.append(metrics)
        for n, image in enumerate(split.paths):
            rows.append([name, image, split.patients[n], f"{split.labels[n]:.6f}", f"{prediction.scores[n]:.6f}"]
                        + [f"{value:.6f}" for value in prediction.outputs[n]])
        if plot:
            _scatter(prediction.scores, split.labels, metrics, output_dir / f"scatter_{prediction.path.stem}.png",
                     prediction.info)
    with (output_dir / "eval_info.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["model", "image", "patient", "label", "prediction", "outputs..."])
        writer.writerows(rows)
    accumulate = output_dir / "accumulate_metrics.csv"
    columns = ["model", "split", "images", "PLCC", "SROCC", "KROCC", "overall", "MAE", "MSE"]
    new_file = not accumulate.is_file()
    with accumulate.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        for metrics in results:
            writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in metrics.items()})
    return results


def _scatter(prediction: np.ndarray, label: np.ndarray, metrics: Dict, path: Path, info: ModelInfo) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 4.6), dpi=110)
    try:
        axis.scatter(label, prediction, s=10, alpha=0.6, color="#1f4e9c")
        low = float(min(label.min(), prediction.min()))
        high = float(max(label.max(), prediction.max()))
        axis.plot([low, high], [low, high], color="#7f7f7f", linewidth=1, linestyle="--")
        axis.set_xlabel(f"label ({info.score.name})")
        axis.set_ylabel("prediction")
        axis.set_title(f"{metrics['model']}: PLCC {metrics['PLCC']:.3f}, SROCC {metrics['SROCC']:.3f}, "
                       f"KROCC {metrics['KROCC']:.3f}", fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)

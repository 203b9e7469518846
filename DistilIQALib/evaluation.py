"""Evaluation: the paper's metrics of one or more models on a dataset split.

Writes ``eval_info.csv`` (one row per model and image: label, prediction, raw outputs),
appends one row per model to ``accumulate_metrics.csv`` (PLCC, SROCC, KROCC, overall, MAE,
MSE) and draws ``scatter_<model>.png`` (prediction against label).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from .datasets import load_images, load_split
from .device import resolve_device
from .errors import InputError
from .metrics import agreement
from .model import score_from_outputs
from .training import predict
from .weights import ModelInfo, load_weights


def evaluate(weights: Sequence[Path | str], data_dir: Path | str, output_dir: Path | str,
             split_name: str = "test", device_spec: str = "auto", plot: bool = True) -> List[Dict[str, float]]:
    """Metrics of each weights file on a split: ``eval_info.csv`` (per image), ``accumulate_metrics.csv``
    (one row per model, appended) and ``scatter_<model>.png``."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device_spec)
    split = load_split(data_dir, split_name)
    if len(split) < 2:
        raise InputError(f"the {split_name} split of {data_dir} has fewer than 2 images")
    cache: Dict[int, torch.Tensor] = {}
    results = []
    rows = []
    for path in weights:
        path = Path(path)
        model, info = load_weights(path, device)
        if info.input_size not in cache:
            cache[info.input_size] = load_images(split, info.input_size)
        outputs = predict(model, cache[info.input_size], device)
        scores = score_from_outputs(torch.from_numpy(outputs)).numpy()
        metrics = {"model": path.name, "split": split_name, "images": len(split), **agreement(scores, split.labels)}
        results.append(metrics)
        for n, name in enumerate(split.paths):
            rows.append([path.name, name, split.patients[n], f"{split.labels[n]:.6f}", f"{scores[n]:.6f}"]
                        + [f"{value:.6f}" for value in outputs[n]])
        if plot:
            _scatter(scores, split.labels, metrics, output_dir / f"scatter_{path.stem}.png", info)
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

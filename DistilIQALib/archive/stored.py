"""What a batch run stored, read back: one series' per-slice results as :class:`SliceScores` (shown in Slicer
without rescoring) and the series table as CSV. No PyTorch: Slicer's own process reads these."""
from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np

from ..errors import InputError
from ..quality.model_info import read_info, resolve_weights
from ..quality.region_labels import UNKNOWN, SliceRegions
from ..quality.results import EFFECTIVE_NOISE, SliceScores, verdict_ssde
from .store import ResultStore

SUMMARY_COLUMNS = ("status", "reason", "patient_id", "study_date", "description", "scanner_model", "kernel", "kvp",
                   "slice_thickness_mm", "exposure_mas", "num_slices", "region", "mean_score", "min_score",
                   "worst_slice", "mean_noise_hu", "median_dose_equivalent", "fraction_inadequate",
                   "fraction_above_routine", "above_routine_basis", "artefact_slices", "series_uid", "weights_id",
                   "folder")


def write_summary_csv(store_path: os.PathLike[str] | str, csv_path: os.PathLike[str] | str) -> int:
    with ResultStore(store_path) as store:
        rows = store.series_rows()
    with open(csv_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def stored_scores(store_path: os.PathLike[str] | str, series_uid: str, weights: Optional[str] = None) -> SliceScores:
    """The per-slice results a batch run stored for one series, as :class:`SliceScores` (no rescoring).

    ``weights`` is the model whose results to take (default: the shipped model); its metadata gives the
    adequacy bands and dose calibration. The store keeps each slice's score and the spread of the
    student's outputs, so ``outputs`` holds two columns, ``score -/+ spread``, with that mean and spread.
    """
    info = read_info(resolve_weights(weights))
    with ResultStore(store_path) as store:
        rows = store.slice_rows(series_uid, info.weights_id)
        series = [r for r in store.series_rows(info.weights_id) if r["series_uid"] == series_uid]
    if not rows:
        raise InputError(f"series {series_uid} has no stored scores from model {info.weights_id}; score it again")
    score = np.array([_or_nan(r["score"]) for r in rows], dtype=np.float32)
    spread = np.array([r["score_spread"] or 0.0 for r in rows], dtype=np.float32)
    noise = np.array([_or_nan(r["noise_hu"]) for r in rows], dtype=np.float32)
    diameter = np.array([_or_nan(r.get("water_diameter_cm")) for r in rows], dtype=np.float32)
    # a learned model's effective noise (NULL for other models, and in stores written before it was kept)
    effective = np.array([_or_nan(r.get("effective_noise_hu")) for r in rows], dtype=np.float64)
    learned = info.score.name == EFFECTIVE_NOISE or bool(np.isfinite(effective).any())
    record = series[0] if series else {}
    thickness = record.get("slice_thickness_mm")
    regions = SliceRegions([r.get("region") or UNKNOWN for r in rows], [""] * len(rows), source="stored")
    return SliceScores(slice_index=np.array([r["slice_index"] for r in rows]),
                       z_mm=np.array([r["z_mm"] for r in rows], dtype=np.float64), score=score,
                       outputs=_outputs(score, spread), noise_hu=noise, info=info,
                       source=record.get("description") or series_uid, device="stored",
                       elapsed_s=float(record.get("seconds") or 0.0), diameter_cm=diameter,
                       thickness_mm=float("nan") if thickness is None else float(thickness), regions=regions,
                       effective_noise_hu=effective if learned else None, kernel=record.get("kernel") or "",
                       manufacturer=record.get("manufacturer") or "",
                       series_description=record.get("description") or "",
                       ssde_mgy=verdict_ssde(record.get("ssde_mgy"), [r.get("ssde_mgy") for r in rows]),
                       ssde_upper_bound=bool(record.get("dw_truncated")))


def _outputs(score: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Two outputs, ``score -/+ spread``, whose spread is the stored one (around 0 where a slice has no score)."""
    centre = np.nan_to_num(score)
    return np.stack([centre - spread, centre + spread], axis=1)


def _or_nan(value) -> float:
    return float("nan") if value is None else float(value)

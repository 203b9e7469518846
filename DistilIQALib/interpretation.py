"""Turning scores into words a reader acts on: adequacy bands and dose equivalents.

Both come from the weights file's metadata, so a model trained on another score scale
brings its own thresholds. Without them the result simply has no verdict.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np


def adequacy_labels(scores: np.ndarray, adequacy: Optional[Dict[str, Any]]) -> Optional[List[str]]:
    """Band name for each score; bands are ordered best first, each with ``min_score``
    (the last band's ``min_score`` may be ``None``: everything below)."""
    if not adequacy or not adequacy.get("bands"):
        return None
    bands = adequacy["bands"]
    labels = []
    for score in np.asarray(scores, dtype=np.float64):
        label = bands[-1]["name"]
        if np.isfinite(score):
            for band in bands:
                threshold = band.get("min_score")
                if threshold is None or score >= threshold:
                    label = band["name"]
                    break
        labels.append(label)
    return labels


def lowest_adequate_score(adequacy: Optional[Dict[str, Any]]) -> Optional[float]:
    """The score below which a slice is in the worst band (``None`` without bands)."""
    if not adequacy or not adequacy.get("bands") or len(adequacy["bands"]) < 2:
        return None
    return float(adequacy["bands"][-2]["min_score"])


def dose_equivalent(scores: np.ndarray, calibration: Optional[Dict[str, List[float]]]) -> Optional[np.ndarray]:
    """Estimated fraction of a full dose that a score looks like (linear in the table, clipped
    to its ends); ``None`` without a calibration."""
    if not calibration:
        return None
    table_scores = np.asarray(calibration["score"], dtype=np.float64)
    table_doses = np.asarray(calibration["dose_fraction"], dtype=np.float64)
    order = np.argsort(table_scores)
    return np.interp(np.asarray(scores, dtype=np.float64), table_scores[order], table_doses[order])

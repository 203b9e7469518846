"""Writing results: per-slice CSV, JSON summary and a PNG plot of score, noise and dose equivalent against z."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Dict, Optional, Sequence

import numpy as np

from ..quality.interpretation import DRIVER_ARTEFACTS, adequacy_measure, band_threshold
from ..quality.results import SliceScores

#: ``ctdivol_mgy``, ``dw_cm``, ``ssde_mgy``: the scanner's dose per slice (CTDIvol from the slice's header, AAPM
#: Report 220 water-equivalent diameter, SSDE), given by the caller (``extra_rows``); empty where not known.
DOSE_COLUMNS = ("ctdivol_mgy", "dw_cm", "ssde_mgy")
CSV_COLUMNS = ("slice_index", "z_mm", "score", "score_spread", "noise_hu", "water_diameter_cm", "dose_equivalent",
               "adequacy", "region", "above_routine", "verdict_note", "effective_noise_hu", "driver") + DOSE_COLUMNS + (
                   "above_routine_basis",)


def write_csv(scores: SliceScores, destination: os.PathLike[str] | str | IO[str],
              extra_rows: Optional[Sequence[Dict[str, Any]]] = None) -> None:
    """One row per axial slice with :data:`CSV_COLUMNS` (empty cells where not available). ``extra_rows``: one
    dict per slice of further values of those columns (the dose columns), in slice order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    rows = scores.rows()
    if extra_rows is not None and len(extra_rows) != len(rows):
        raise ValueError(f"{len(extra_rows)} extra rows for {len(rows)} slices")
    for n, row in enumerate(rows):
        row["above_routine"] = "yes" if row["above_routine"] else ""
        if extra_rows is not None:
            row.update(extra_rows[n])
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    _write_text(buffer.getvalue(), destination)


def write_json(scores: SliceScores, destination: os.PathLike[str] | str | IO[str],
               extra: Optional[Dict[str, Any]] = None) -> None:
    """The summary of ``scores``, with the caller's ``extra`` keys (the scanner's dose) added."""
    _write_text(json.dumps({**scores.summary(), **(extra or {})}, indent=2) + "\n", destination)


def plots_available() -> bool:
    """Whether matplotlib is installed (Slicer does not bundle it): plots that are extras to a job's results are
    skipped without it, so a job never fails, after hours of work, for a missing picture."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_plot(scores: SliceScores, path: os.PathLike[str] | str, title: Optional[str] = None) -> None:
    """Score against slice position z (mm), with the noise index (HU) on a second axis. When the model's
    verdicts rest on the dose equivalent, a panel below shows it with the adequacy bands (and, for a learned
    model, its learned dose equivalent beside the one from the noise); otherwise the bands are drawn behind the
    score. Slices without a score (a learned model's without a verdict) leave gaps; slices whose verdict was set
    by artefacts are marked with triangles."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    info = scores.info
    order = np.argsort(scores.z_mm)
    z = scores.z_mm[order]
    dose = scores.dose_equivalent
    on_dose = adequacy_measure(info.adequacy) == "dose_equivalent" and dose is not None
    learned = scores.effective_noise_hu is not None
    artefacts = np.array([driver == DRIVER_ARTEFACTS for driver in scores.driver], dtype=bool)
    if on_dose:
        figure, (axis, dose_axis) = plt.subplots(2, 1, figsize=(9, 5.6), dpi=110, sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 2]})
    else:
        figure, axis = plt.subplots(figsize=(9, 4.2), dpi=110)
    try:
        if not on_dose:
            _draw_bands(axis, info.adequacy, info.score.minimum, info.score.maximum)
        score = np.asarray(scores.score, dtype=np.float64)
        known = np.isfinite(score)
        axis.plot(z, score[order], color="#1f4e9c", marker="o", markersize=2.5, linewidth=1.4,
                  label="learned dose equivalent" if learned else f"quality score ({info.score.name})")
        worst = [n for n in np.argsort(score, kind="stable") if known[n]][:3]
        if worst:
            axis.scatter(scores.z_mm[worst], score[worst], s=40, facecolors="none", edgecolors="#c0392b",
                         linewidths=1.5, zorder=5, label="worst slices")
        marked = artefacts & known
        if marked.any():
            axis.scatter(scores.z_mm[marked], score[marked], s=28, marker="^", color=_ARTEFACT_COLOUR, zorder=6,
                         label="verdict set by artefacts")
        axis.set_ylabel("learned dose equivalent\n(routine doses)" if learned
                        else f"score ({'higher' if info.score.higher_is_better else 'lower'} is better)")
        if learned:  # a dose equivalent, on the dose panel's scale
            _dose_scale(axis)
        else:
            low = min([info.score.minimum] + ([float(score[known].min())] if known.any() else []))
            high = max([info.score.maximum] + ([float(score[known].max())] if known.any() else []))
            axis.set_ylim(low - 0.02 * (high - low), high + 0.02 * (high - low))
        noise_axis = axis.twinx()
        if np.isfinite(scores.noise_hu).any():
            noise_axis.plot(z, scores.noise_hu[order], color="#7f7f7f", linewidth=1.0, linestyle="--",
                            label="noise index (HU)")
        noise_axis.set_ylabel("global noise index (HU)")
        handles = axis.get_legend_handles_labels()
        noise_handles = noise_axis.get_legend_handles_labels()
        axis.legend(handles[0] + noise_handles[0], handles[1] + noise_handles[1], loc="lower left", fontsize=8)
        axis.set_title(title or f"DistilIQA per-slice quality: {Path(scores.source).name or scores.source}",
                       fontsize=10)
        bottom = axis
        if on_dose:
            _draw_dose_panel(dose_axis, scores, z, dose[order], order, artefacts[order])
            dose_axis.legend(loc="lower left", fontsize=8, ncol=4)
            bottom = dose_axis
        bottom.set_xlabel("slice position z (mm, superior +)")
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)


_BAND_COLOURS = ("#d5f5e3", "#fcf3cf", "#fadbd8", "#f2f3f4")
_ABOVE_COLOUR = "#d6eaf8"
_ARTEFACT_COLOUR = "#d35400"


def _draw_dose_panel(axis, scores: SliceScores, z: np.ndarray, dose: np.ndarray, order: np.ndarray,
                     artefacts: np.ndarray) -> None:
    """Dose equivalent (log scale, 0.05-4 routine doses) with the bands of the scan's main body region and the
    range above its routine level; slices above routine are marked. A learned model's dose equivalent is drawn
    beside the one from the noise, with triangles where it set the verdict (artefacts). ``dose`` and
    ``artefacts`` are in z order already."""
    from ..quality.interpretation import DOSE_RANGE, region_references

    judged = scores.judged_region
    regions = [judged[n] for n in order]
    references = region_references(scores.info.noise_reference, scores.info.adequacy)
    known = [region for region in regions if region in references]
    main = max(set(known), key=known.count) if known else None
    adequacy = {"bands": references[main]["bands"]} if main else scores.info.adequacy
    _draw_bands(axis, adequacy, DOSE_RANGE[0] / 2.0, DOSE_RANGE[1])
    above_from = float(references[main].get("above_routine_from", 2.0)) if main else None
    if above_from:
        axis.axhspan(above_from, DOSE_RANGE[1] * 2.0, color=_ABOVE_COLOUR, zorder=0, label="above routine")
    learned = scores.verdicts.learned_dose_equivalent if scores.verdicts is not None else None
    axis.plot(z, dose, color="#6c3483", marker="o", markersize=2.0, linewidth=1.2,
              label="dose equivalent (noise)" if learned is not None else "dose equivalent")
    if learned is not None:
        learned = learned[order]
        axis.plot(z, learned, color=_ARTEFACT_COLOUR, marker="o", markersize=1.5, linewidth=1.0, linestyle="-.",
                  label="learned dose equivalent")
        marked = artefacts & np.isfinite(learned)
        if marked.any():
            axis.scatter(z[marked], learned[marked], s=26, marker="^", color=_ARTEFACT_COLOUR, zorder=6,
                         label="verdict set by artefacts")
    above = scores.above_routine[order]
    if above.any():
        axis.scatter(z[above], dose[above], s=22, color="#1a5276", zorder=5, label="above routine: could be lowered")
    _dose_scale(axis)
    axis.set_ylabel("dose equivalent\n(routine doses" + (f", {main}" if main else "") + ")")


def _dose_scale(axis) -> None:
    """Log scale over the reported dose equivalents, 0.05-4 routine doses."""
    from ..quality.interpretation import DOSE_RANGE

    axis.set_yscale("log")
    axis.set_ylim(DOSE_RANGE[0] * 0.9, DOSE_RANGE[1] * 1.1)
    axis.set_yticks([0.05, 0.1, 0.25, 0.5, 1, 2, 4])
    axis.set_yticklabels(["0.05", "0.1", "0.25", "0.5", "1", "2", "4"])


def _draw_bands(axis, adequacy, lowest: float, highest: float) -> None:
    if not adequacy or not adequacy.get("bands"):
        return
    upper = highest + 1.0
    for n, band in enumerate(adequacy["bands"]):
        lower = band_threshold(band)
        lower = lowest - 1.0 if lower is None else lower
        axis.axhspan(lower, upper, color=_BAND_COLOURS[min(n, len(_BAND_COLOURS) - 1)], zorder=0,
                     label=f"{band['name']}")
        upper = lower


def _write_text(text: str, destination: os.PathLike[str] | str | IO[str]) -> None:
    if hasattr(destination, "write"):
        destination.write(text)
        return
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(text)
    os.replace(temporary, path)

"""One volume's per-slice results (:class:`SliceScores`) and their verdicts, summary and summary line: plain
numpy and the interpretation rules, no PyTorch, so that Slicer's own process reads a scoring run's results back
without loading it (the scorer that makes them is :mod:`.scoring`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .interpretation import (
    BASIS_NOISE,
    BASIS_SSDE,
    DRIVER_ARTEFACTS,
    DRIVER_NOISE,
    UNKNOWN,
    Verdicts,
    adequacy_labels,
    adequacy_measure,
    dose_equivalent,
    lowest_adequate_value,
    reference_ssde_mgy,
    region_references,
    region_verdicts,
)
from .model_info import ModelInfo
from .region_labels import SliceRegions, exam_regions

#: ``score.name`` of a model whose outputs are the log of an effective noise (HU), turned into a learned dose
#: equivalent through the routine reference of each slice's region.
EFFECTIVE_NOISE = "effective_noise"
WORST_SLICES = 5


@dataclass
class SliceScores:
    """Per-slice results of one volume (arrays of length ``num_slices``)."""

    slice_index: np.ndarray
    z_mm: np.ndarray
    score: np.ndarray
    #: Raw outputs ``(num_slices, num_outputs)``; a student has one per teacher.
    outputs: np.ndarray
    noise_hu: np.ndarray
    info: ModelInfo
    source: str = ""
    device: str = ""
    elapsed_s: float = 0.0
    matrix: tuple = ()
    spacing_mm: tuple = ()
    warnings: List[str] = field(default_factory=list)
    #: Patient size at each slice (cm; the measure the noise reference names, water-equivalent diameter by
    #: default); NaN where unknown.
    diameter_cm: Optional[np.ndarray] = None
    #: Reconstructed slice thickness (mm); NaN where unknown.
    thickness_mm: float = float("nan")
    #: Each slice's own thickness (mm) where the series' slices differ in it (a thin and a thick part); the
    #: verdicts rest on it, ``None``: every slice has :attr:`thickness_mm`.
    thickness_per_slice_mm: Optional[np.ndarray] = None
    #: The DICOM ConvolutionKernel and Manufacturer: a sharp kernel gets no soft-tissue verdict.
    kernel: str = ""
    manufacturer: str = ""
    #: The DICOM SeriesDescription: it names an iterative reconstruction, whose lower noise is judged for what it is.
    series_description: str = ""
    #: Body region of each slice (read from the image, or given by the user); ``None``: not determined.
    regions: Optional[SliceRegions] = None
    #: A learned model's effective noise of each slice (HU): the noise of a pure dose reduction that would degrade
    #: it as much as what it shows; ``None`` for models whose score is something else.
    effective_noise_hu: Optional[np.ndarray] = None
    #: The scanner's delivered dose of each slice's series (SSDE, mGy; NaN where unknown), which the caller reads
    #: from the headers (the dose package): where it is known, "above routine" is judged from it against the
    #: region's reference dose, else from the noise. ``None``: not known for any slice.
    ssde_mgy: Optional[np.ndarray] = None
    #: Whether :attr:`ssde_mgy` is only an upper bound (the body cut by the field of view: Dw too small).
    ssde_upper_bound: bool = False
    _verdicts: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    @property
    def region(self) -> List[str]:
        """Body region of each slice (``unknown`` where it was not determined)."""
        return list(self.regions.region) if self.regions else [UNKNOWN] * len(self.score)

    @property
    def judged_region(self) -> List[str]:
        """The region whose routine level each slice is judged against: its own, or that of the exam a short end of
        a chest or abdominal scan belongs to (:func:`~DistilIQALib.quality.region_labels.exam_regions`)."""
        return exam_regions(self.z_mm, self.region)[0]

    @property
    def verdicts(self) -> Optional[Verdicts]:
        """Per-region verdicts from the model's noise reference, and the learned dose equivalent of a model that
        gives an effective noise (``None`` when the bands are on the score). Computed once for the same inputs."""
        inputs = (self.info, self.regions, self.noise_hu, self.diameter_cm, self.thickness_mm, self.effective_noise_hu,
                  self.thickness_per_slice_mm, self.kernel, self.ssde_mgy, self.ssde_upper_bound,
                  self.series_description, self.z_mm)
        cached = self._verdicts
        if cached is None or len(cached[0]) != len(inputs) or any(a is not b for a, b in zip(cached[0], inputs)):
            self._verdicts = cached = (inputs, self._compute_verdicts())
        return cached[1]

    def _compute_verdicts(self) -> Optional[Verdicts]:
        if adequacy_measure(self.info.adequacy) != "dose_equivalent" or not self.info.noise_reference:
            return None
        diameter = self.diameter_cm if self.diameter_cm is not None else np.full(len(self.score), np.nan)
        reasons = list(self.regions.reason) if self.regions else ["not determined"] * len(self.score)
        thickness = self.thickness_mm if self.thickness_per_slice_mm is None else self.thickness_per_slice_mm
        return region_verdicts(self.noise_hu, thickness, diameter, self.region, reasons,
                               region_references(self.info.noise_reference, self.info.adequacy),
                               self.effective_noise_hu, self.info.artefact_margin, self.kernel, self.manufacturer,
                               self.ssde_mgy, self.ssde_upper_bound, self.series_description, self.z_mm)

    @property
    def driver(self) -> List[str]:
        """What set each slice's verdict: ``noise`` (the measured noise), ``artefacts`` (the network sees worse than
        the noise explains); '' without a verdict."""
        verdicts = self.verdicts
        if verdicts is None or verdicts.driver is None:
            return [""] * len(self.score)
        return list(verdicts.driver)

    @property
    def above_routine(self) -> np.ndarray:
        """Whether each slice's dose equivalent is above the routine level of its region (the dose could be
        lowered)."""
        verdicts = self.verdicts
        return verdicts.above_routine if verdicts else np.zeros(len(self.score), dtype=bool)

    @property
    def above_routine_basis(self) -> List[str]:
        """What each slice's "above routine" was judged from: ``ssde`` (the delivered dose against the region's
        reference dose), ``noise`` (the dose equivalent, no SSDE known), '' (neither)."""
        verdicts = self.verdicts
        if verdicts is None or verdicts.above_basis is None:
            return [""] * len(self.score)
        return list(verdicts.above_basis)

    @property
    def verdict_note(self) -> List[str]:
        """Why a slice has no verdict, that its dose could be lowered, or that its routine level is from the
        literature ('' otherwise)."""
        verdicts = self.verdicts
        return list(verdicts.note) if verdicts else [""] * len(self.score)

    @property
    def score_spread(self) -> np.ndarray:
        """Standard deviation across the outputs: how much the distilled teachers disagree."""
        if self.outputs.shape[1] < 2:
            return np.zeros(len(self.score))
        return self.outputs.std(axis=1)

    @property
    def dose_equivalent(self) -> Optional[np.ndarray]:
        """From the model's noise reference (noise, size and thickness) when it has one, else from its
        score table."""
        verdicts = self.verdicts
        if verdicts is not None:
            return verdicts.dose_equivalent
        return dose_equivalent(self.score, self.info.dose_calibration)

    @property
    def adequacy(self) -> Optional[List[str]]:
        verdicts = self.verdicts
        if verdicts is not None:
            return verdicts.adequacy
        if adequacy_measure(self.info.adequacy) == "dose_equivalent":
            return adequacy_labels(np.full(len(self.score), np.nan), self.info.adequacy)
        return adequacy_labels(self.score, self.info.adequacy)

    def rows(self) -> List[Dict[str, Any]]:
        """One dict per slice: the columns of the CSV and of Slicer's table."""
        verdicts = self.verdicts
        dose = verdicts.dose_equivalent if verdicts else self.dose_equivalent
        adequacy = verdicts.adequacy if verdicts else self.adequacy
        above = verdicts.above_routine if verdicts else np.zeros(len(self.score), dtype=bool)
        notes = verdicts.note if verdicts else [""] * len(self.score)
        regions = self.region
        spread = self.score_spread
        drivers = self.driver
        basis = self.above_routine_basis
        effective = self.effective_noise_hu
        rows = []
        for n in range(len(self.score)):
            rows.append({
                "slice_index": int(self.slice_index[n]),
                "z_mm": round(float(self.z_mm[n]), 3),
                "score": round(float(self.score[n]), 5) if np.isfinite(self.score[n]) else None,
                "score_spread": round(float(spread[n]), 5),
                "noise_hu": None if np.isnan(self.noise_hu[n]) else round(float(self.noise_hu[n]), 1),
                "water_diameter_cm": (round(float(self.diameter_cm[n]), 1) if self.diameter_cm is not None
                                      and np.isfinite(self.diameter_cm[n]) else None),
                "dose_equivalent": None if dose is None or not np.isfinite(dose[n]) else round(float(dose[n]), 3),
                "adequacy": None if adequacy is None else adequacy[n],
                "region": regions[n],
                "above_routine": bool(above[n]),
                "above_routine_basis": basis[n],
                "verdict_note": notes[n],
                "effective_noise_hu": (round(float(effective[n]), 2) if effective is not None
                                       and np.isfinite(effective[n]) else None),
                "driver": drivers[n],
            })
        return rows

    def summary(self) -> Dict[str, Any]:
        finite = np.isfinite(self.score)
        order = [n for n in np.argsort(self.score, kind="stable") if finite[n]]
        worst = [{"slice_index": int(self.slice_index[n]), "z_mm": round(float(self.z_mm[n]), 3),
                  "score": round(float(self.score[n]), 5)} for n in order[:WORST_SLICES]]
        known_scores = self.score[finite]

        def statistic(function) -> Optional[float]:
            return round(float(function(known_scores)), 5) if known_scores.size else None

        noise = self.noise_hu[np.isfinite(self.noise_hu)]
        labels = self.adequacy
        worst_band = self.info.adequacy["bands"][-1]["name"] if labels else None
        known = [label for label in labels or [] if label != UNKNOWN]
        summary = {
            "source": self.source,
            "num_slices": int(len(self.score)),
            "matrix": list(self.matrix),
            "spacing_mm": [round(float(s), 4) for s in self.spacing_mm],
            "score_name": self.info.score.name,
            "score_description": self.info.score.description,
            "score_range": [self.info.score.minimum, self.info.score.maximum],
            "higher_is_better": self.info.score.higher_is_better,
            "mean_score": statistic(np.mean),
            "median_score": statistic(np.median),
            "min_score": statistic(np.min),
            "max_score": statistic(np.max),
            "worst_slices": worst,
            "mean_noise_hu": round(float(noise.mean()), 2) if noise.size else None,
            "fraction_inadequate": (round(sum(label == worst_band for label in known) / len(known), 4)
                                    if known else None),
            "adequacy_measure": adequacy_measure(self.info.adequacy) if labels else None,
            "adequacy_threshold": lowest_adequate_value(self.info.adequacy),
            "median_dose_equivalent": self._median_dose_equivalent(),
            "drivers": {name: self.driver.count(name) for name in (DRIVER_NOISE, DRIVER_ARTEFACTS)
                        if name in self.driver},
            **self._region_summary(),
            "slice_thickness_mm": round(float(self.thickness_mm), 3) if np.isfinite(self.thickness_mm) else None,
            # what the verdicts read from the headers beside the pixels: the kernel's class, a named reconstruction
            "kernel": self.kernel, "manufacturer": self.manufacturer, "series_description": self.series_description,
            "model_preset": self.info.preset,
            "weights_id": self.info.weights_id,
            "device": self.device,
            "elapsed_s": round(self.elapsed_s, 3),
            "warnings": self.warnings,
        }
        return summary

    def _region_summary(self) -> Dict[str, Any]:
        """Slices per body region, where the regions came from, the reference each rests on, the share of slices
        above the routine level (the series is flagged when more than half are) and why slices got no verdict."""
        regions = self.region
        counts: Dict[str, int] = {}
        for region in regions:
            counts[region] = counts.get(region, 0) + 1
        references = region_references(self.info.noise_reference, self.info.adequacy)
        verdicts = self.verdicts
        unknown: Dict[str, int] = {}
        above = None
        bases: List[str] = []
        if verdicts is not None:
            for label, note in zip(verdicts.adequacy, verdicts.note):
                if label == UNKNOWN:
                    unknown[note] = unknown.get(note, 0) + 1
            basis = self.above_routine_basis
            known = np.array([bool(b) for b in basis], dtype=bool)
            above = round(float(verdicts.above_routine[known].mean()), 4) if known.any() else None
            bases = sorted({b for b in basis if b}, key=lambda b: b != BASIS_SSDE)
        ssde = None if self.ssde_mgy is None else np.asarray(self.ssde_mgy, dtype=np.float64)
        return {
            "regions": counts,
            "region_source": self.regions.source if self.regions else None,
            "references": {region: {"basis": references[region].get("basis", "fitted"),
                                    "patients": references[region].get("patients")}
                           for region in counts if region in references},
            "fraction_above_routine": above,
            "above_routine": bool(above is not None and above > 0.5),
            # what "above routine" was judged from: "ssde", "noise", "ssde+noise" (some slices each), None
            "above_routine_basis": "+".join(bases) or None,
            "ssde_mgy": (round(float(np.nanmedian(ssde)), 2) if ssde is not None and np.isfinite(ssde).any()
                         else None),
            "reference_ssde_mgy": {region: reference_ssde_mgy(region) for region in counts
                                   if reference_ssde_mgy(region) is not None},
            "unknown_reasons": unknown,
        }

    def _median_dose_equivalent(self) -> Optional[float]:
        dose = self.dose_equivalent
        if dose is None or not np.isfinite(dose).any():
            return None
        return round(float(np.nanmedian(dose)), 3)


def verdict_line(summary: Dict[str, Any]) -> str:
    """One line of a :meth:`SliceScores.summary`: slices per body region, the median dose equivalent, whether the
    series is above routine, literature-based levels, and why slices have no verdict."""
    if not summary.get("regions"):
        return ""
    regions = ", ".join(f"{count} {region}" for region, count in sorted(summary["regions"].items()))
    parts = [f"regions: {regions}" + (" (as given)" if summary.get("region_source") == "user" else "")]
    if summary.get("median_dose_equivalent") is not None:
        parts.append(f"median dose equivalent {summary['median_dose_equivalent']:.2f} of a routine dose")
    basis = summary.get("above_routine_basis")
    if summary.get("above_routine"):
        parts.append("above routine: the dose could be lowered" + _basis_words(summary))
    elif basis:
        parts.append("not above routine" + _basis_words(summary))
    literature = [region for region, ref in summary.get("references", {}).items() if ref.get("basis") == "literature"]
    if literature:
        parts.append(f"routine level from published measurements for: {', '.join(literature)}")
    for reason, count in sorted(summary.get("unknown_reasons", {}).items(), key=lambda item: -item[1])[:2]:
        parts.append(f"{count} slice(s) unknown: {reason}")
    return "; ".join(parts)


def _basis_words(summary: Dict[str, Any]) -> str:
    """What a summary's "above routine" was judged from, in words."""
    basis = summary.get("above_routine_basis")
    references = ", ".join(f"{region} {value:.1f} mGy" for region, value in
                           sorted((summary.get("reference_ssde_mgy") or {}).items()))
    if basis == BASIS_SSDE:
        return (f" (judged from the delivered dose: SSDE {summary['ssde_mgy']:.1f} mGy against the reference "
                f"{references})")
    if basis == BASIS_NOISE:
        return " (judged from the noise: no SSDE that decides it)"
    if basis:
        return (f" (judged from the delivered dose, SSDE {summary.get('ssde_mgy') or float('nan'):.1f} mGy against "
                f"{references}, where known, elsewhere from the noise)")
    return ""


def verdict_ssde(series_ssde: Optional[float], slice_ssde: Sequence[Optional[float]]) -> Optional[np.ndarray]:
    """The SSDE (mGy) each slice's "above routine" is judged from (:attr:`SliceScores.ssde_mgy`): the series' (mean
    CTDIvol and Dw at mid-scan, the exam-level dose a reference level is compared with) where it is known, else the
    slice's own; NaN where neither is known, ``None`` where no slice has one. Where the body is cut by the field of
    view (``dw_truncated``) it is an upper bound."""
    if series_ssde is not None:
        return np.full(len(slice_ssde), float(series_ssde))
    ssde = np.array([np.nan if v in (None, "") else float(v) for v in slice_ssde], dtype=np.float64)
    return ssde if np.isfinite(ssde).any() else None

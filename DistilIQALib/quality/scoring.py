"""The scorer: the one path from a CT volume to per-slice quality scores.

Used by the command line, the batch runner and Slicer alike. Slices go through the
model a batch at a time (each batch converted to float32 on the device, so memory
stays bounded whatever the scan length), with autocast on GPUs, an automatic smaller
batch when the GPU runs out of memory (and the CPU as last resort), and a progress
callback that can cancel. On the CPU results are deterministic.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..progress import Progress
from ..volume import CTVolume
from .device import describe_device, resolve_device
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
from .model import score_from_outputs
from .noise import global_noise_index, size_for_reference
from .preprocessing import hu_to_tensor, prepare_batch
from .regions import RegionFeatures, SliceRegions, detect_regions, given_regions, region_features
from .weights import ModelInfo, load_weights, resolve_weights

log = logging.getLogger(__name__)

#: ``score.name`` of a model whose outputs are the log of an effective noise (HU), turned into a learned dose
#: equivalent through the routine reference of each slice's region.
EFFECTIVE_NOISE = "effective_noise"

#: Slices per forward pass on a GPU, and on the CPU, where small batches are faster: the activations of the
#: full-resolution convolution stay in cache (``benchmarks/speed.py --batch-size``). On an H200
#: (``benchmarks/gpu.py``) the fast model scored 0.59 ms per slice at batch 8, 0.23 at 16, 0.195 at 32 and
#: 0.17 at 64-128: 32 gets nearly all of it while needing well under 1 GiB, and out-of-memory halves it.
DEFAULT_BATCH_SIZE = 32
CPU_BATCH_SIZE = 2
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
    def verdicts(self) -> Optional[Verdicts]:
        """Per-region verdicts from the model's noise reference, and the learned dose equivalent of a model that
        gives an effective noise (``None`` when the bands are on the score). Computed once for the same inputs."""
        inputs = (self.info, self.regions, self.noise_hu, self.diameter_cm, self.thickness_mm, self.effective_noise_hu,
                  self.thickness_per_slice_mm, self.kernel, self.ssde_mgy, self.ssde_upper_bound)
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
                               self.ssde_mgy, self.ssde_upper_bound)

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


class Scorer:
    """Loads a weights file once and scores volumes with it.

    Args:
        weights: weights file; ``None`` for the shipped default model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: slices per forward pass (halved automatically on GPU out-of-memory); ``None``:
            ``DEFAULT_BATCH_SIZE`` on a GPU, ``CPU_BATCH_SIZE`` on the CPU.
        use_amp: mixed precision (float16 autocast) on GPUs; ignored on the CPU.
    """

    def __init__(self, weights: Optional[str] = None, device: str = "auto",
                 batch_size: Optional[int] = None, use_amp: bool = True) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.device = resolve_device(device)
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self.device.type == "cpu" else DEFAULT_BATCH_SIZE
        self.weights_path = resolve_weights(weights)
        self.model, self.info = load_weights(self.weights_path, self.device)
        self.batch_size = batch_size
        self.use_amp = use_amp

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    def score_volume(self, volume: CTVolume, progress: Optional[Progress] = None, region: str = "auto") -> SliceScores:
        """Score every axial slice of ``volume``; ``region`` is ``auto`` (each slice's body region read from the
        image) or one region for every slice (``head``, ``neck``, ``chest``, ``abdomen``)."""
        if region != "auto":
            given_regions(region, 0)  # a wrong name fails before the work
        progress = progress or Progress()
        started = time.monotonic()
        total = volume.num_slices
        outputs = np.zeros((total, self.info.num_outputs), dtype=np.float32)
        noise = np.zeros(total, dtype=np.float32)
        diameter = np.zeros(total, dtype=np.float32)
        features = []
        start = 0
        progress.update(0, total, "scoring")
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                outputs[start:stop], noise[start:stop], diameter[start:stop], found = self._score_batch(
                    volume, start, stop, region == "auto")
            except torch.OutOfMemoryError:
                self._shrink_after_out_of_memory()
                continue
            features.append(found)
            start = stop
            progress.update(start, total, "scoring")
        scores = score_from_outputs(torch.from_numpy(outputs)).numpy()
        learned = self.info.score.name == EFFECTIVE_NOISE
        if region == "auto":
            regions = detect_regions(RegionFeatures.concatenate(features), volume.z_mm(), volume.hu.shape[1:],
                                     volume.spacing_mm[:2])
        else:
            regions = given_regions(region, total)
        result = SliceScores(
            slice_index=np.arange(total), z_mm=volume.z_mm(), score=scores, outputs=outputs, noise_hu=noise,
            info=self.info, source=volume.source, device=self.device_name, elapsed_s=time.monotonic() - started,
            matrix=tuple(volume.hu.shape[:0:-1]), spacing_mm=tuple(volume.spacing_mm),
            warnings=self._warnings(volume), diameter_cm=diameter, thickness_mm=volume.slice_thickness_mm,
            regions=regions, effective_noise_hu=np.exp(scores.astype(np.float64)) if learned else None,
            thickness_per_slice_mm=_per_slice(volume.metadata.get("slice_thickness_per_slice_mm"), total),
            kernel=str(volume.metadata.get("kernel", "")), manufacturer=str(volume.metadata.get("manufacturer", "")),
        )
        if learned:
            # the score of a learned model is its dose equivalent: one scale for every region, NaN without a verdict
            verdicts = result.verdicts
            result.score = verdicts.learned_dose_equivalent if verdicts is not None else np.full(total, np.nan)
        return result

    def _score_batch(self, volume: CTVolume, start: int, stop: int, find_region: bool = True):
        with torch.inference_mode():
            hu = hu_to_tensor(volume.hu[start:stop], self.device)
            noise = global_noise_index(hu, volume.spacing_mm[:2])
            diameter = size_for_reference(hu, volume.spacing_mm[:2], self.info.noise_reference)
            found = region_features(hu, volume.spacing_mm[:2]) if find_region else None
            batch = prepare_batch(hu, self.info.window, self.info.input_size, extra_windows=self.info.extra_windows)
            with self._autocast():
                outputs = self.model(batch).float()
        return outputs.cpu().numpy(), noise.cpu().numpy(), diameter.cpu().numpy(), found

    def _autocast(self):
        if self.use_amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _shrink_after_out_of_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory on %s: retrying with batch size %d", self.device_name, self.batch_size)
            return
        if self.device.type == "cpu":
            raise MemoryError("not enough memory to score even one slice on the CPU")
        log.warning("out of memory on %s even with batch size 1: continuing on the CPU", self.device_name)
        self.device = torch.device("cpu")
        self.model = self.model.to(self.device)

    def _warnings(self, volume: CTVolume) -> List[str]:
        warnings = []
        nz, ny, nx = volume.hu.shape
        if (ny, nx) != (self.info.input_size, self.info.input_size):
            warnings.append(f"matrix {nx}x{ny} was fitted to the model's {self.info.input_size}x"
                            f"{self.info.input_size} input; scores are less comparable with "
                            f"{self.info.input_size}-matrix scans")
        for below, above in volume.metadata.get("z_gaps_mm", []):
            warnings.append(f"slices missing between z {below:.1f} and {above:.1f} mm (a gap of {above - below:.1f} "
                            "mm in the series); every slice keeps the z its file states")
        if self.info.provenance.get("purpose") == "test":
            warnings.append("this model is marked 'test' (trained only to check the software): its scores are not "
                            "quality judgements")
        return warnings


def _per_slice(values, count: int) -> Optional[np.ndarray]:
    """A per-slice list of ``count`` numbers as an array, else ``None``."""
    return None if values is None or len(values) != count else np.asarray(values, dtype=np.float64)


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

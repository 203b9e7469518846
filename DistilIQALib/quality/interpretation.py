"""Turning scores into words a reader acts on: adequacy bands and dose equivalents.

Both come from the weights file's metadata, so a model trained on another score scale
brings its own thresholds. Without them the result simply has no verdict.

Two kinds of dose equivalent exist:

* a *noise reference* (``ModelInfo.noise_reference``): the noise a routine full dose leaves in a patient
  of a given size at a given slice thickness, fitted on real clinical scans. A slice's dose equivalent is
  that reference variance over its own (quantum noise variance goes as 1 / (dose x thickness)), so a
  thin-slice scan or a large patient is not mistaken for a low dose;
* a *score table* (``ModelInfo.dose_calibration``): score -> dose fraction from simulated doses, used by
  models that carry no noise reference.

Adequacy bands are thresholds on the quantity named by ``adequacy["on"]``: ``"score"`` (the default,
``min_score`` per band) or ``"dose_equivalent"`` (``min_value`` per band).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .kernels import SHARP, iterative_reconstruction, kernel_class
from .region_labels import exam_regions

#: Dose equivalents are reported between these ends: below 5% the estimate means little, and above four
#: routine doses the noise (half the routine level) is too low to measure the difference reliably.
DOSE_RANGE = (0.05, 4.0)
#: Label of a slice whose verdict quantity could not be measured (no soft tissue to read noise from).
UNKNOWN = "unknown"


def adequacy_measure(adequacy: Optional[Dict[str, Any]]) -> str:
    """``"score"`` or ``"dose_equivalent"``: what the bands threshold."""
    return (adequacy or {}).get("on", "score")


def band_threshold(band: Dict[str, Any]) -> Optional[float]:
    """A band's lower bound on the adequacy measure (``None``: everything below the previous band)."""
    value = band.get("min_value", band.get("min_score"))
    return None if value is None else float(value)


def adequacy_labels(values: np.ndarray, adequacy: Optional[Dict[str, Any]]) -> Optional[List[str]]:
    """Band name for each value of the adequacy measure; bands are ordered best first, each with its lower
    bound (the last band's may be ``None``: everything below). A value that is not finite gets the last
    band when the measure is the score (a broken slice) and :data:`UNKNOWN` for a dose equivalent
    (nothing to measure noise on)."""
    if not adequacy or not adequacy.get("bands"):
        return None
    bands = adequacy["bands"]
    missing = bands[-1]["name"] if adequacy_measure(adequacy) == "score" else UNKNOWN
    labels = []
    for value in np.asarray(values, dtype=np.float64):
        label = missing
        if np.isfinite(value):
            label = bands[-1]["name"]
            for band in bands:
                threshold = band_threshold(band)
                if threshold is None or value >= threshold:
                    label = band["name"]
                    break
        labels.append(label)
    return labels


def lowest_adequate_value(adequacy: Optional[Dict[str, Any]]) -> Optional[float]:
    """The value of the adequacy measure below which a slice is in the worst band (``None`` without bands)."""
    if not adequacy or not adequacy.get("bands") or len(adequacy["bands"]) < 2:
        return None
    return band_threshold(adequacy["bands"][-2])


def lowest_adequate_score(adequacy: Optional[Dict[str, Any]]) -> Optional[float]:
    """The *score* below which a slice is in the worst band; ``None`` without bands or when the bands are
    on the dose equivalent rather than the score."""
    if adequacy_measure(adequacy) != "score":
        return None
    return lowest_adequate_value(adequacy)


def dose_equivalent(scores: np.ndarray, calibration: Optional[Dict[str, List[float]]]) -> Optional[np.ndarray]:
    """Estimated fraction of a full dose that a score looks like (linear in the table, clipped
    to its ends); ``None`` without a calibration."""
    if not calibration:
        return None
    table_scores = np.asarray(calibration["score"], dtype=np.float64)
    table_doses = np.asarray(calibration["dose_fraction"], dtype=np.float64)
    order = np.argsort(table_scores)
    return np.interp(np.asarray(scores, dtype=np.float64), table_scores[order], table_doses[order])


def reference_variance(diameter_cm: np.ndarray, reference: Dict[str, Any]) -> np.ndarray:
    """Noise variance x slice thickness (HU^2 mm) a routine full dose leaves at water-equivalent
    diameter ``diameter_cm``: ``exp(intercept + per_cm * D_w)``."""
    return np.exp(float(reference["intercept"]) + float(reference["per_cm"]) * np.asarray(diameter_cm, np.float64))


def noise_dose_equivalent(noise_hu: np.ndarray, thickness_mm, diameter_cm: np.ndarray,
                          reference: Optional[Dict[str, Any]]) -> Optional[np.ndarray]:
    """Fraction of a routine full dose whose noise the slice shows: reference variance over the slice's
    own, ``V_ref(D_w) / (noise^2 x thickness)``, clipped to :data:`DOSE_RANGE`; NaN where the noise or
    the size is unknown. ``thickness_mm`` is one value or one per slice. ``None`` without a reference."""
    if not reference:
        return None
    noise = np.asarray(noise_hu, dtype=np.float64)
    diameter = np.broadcast_to(np.asarray(diameter_cm, dtype=np.float64), noise.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = reference_variance(diameter, reference) / (noise * noise * np.asarray(thickness_mm, np.float64))
    known = np.isfinite(fraction) & (noise > 0) & np.isfinite(diameter)
    return np.where(known, np.clip(fraction, *DOSE_RANGE), np.nan)


def fit_noise_reference(noise_hu: Sequence[float], thickness_mm: Sequence[float], diameter_cm: Sequence[float],
                        groups: Sequence[str], per_cm: Optional[float] = None) -> Dict[str, Any]:
    """Least-squares fit of ``log(noise^2 x thickness) = intercept + per_cm * D_w`` over routine full-dose
    slices, every group (patient) weighing the same however many slices it gives; slices without a noise
    figure are left out. With ``per_cm`` given only the intercept is fitted (one patient is enough);
    otherwise at least 3 patients are needed. Returns the reference with the residual spread and the
    counts it rests on."""
    noise, thickness, diameter = (np.asarray(v, dtype=np.float64) for v in (noise_hu, thickness_mm, diameter_cm))
    groups = np.asarray(groups)
    keep = np.isfinite(noise) & (noise > 0) & np.isfinite(diameter) & np.isfinite(thickness) & (thickness > 0)
    noise, thickness, diameter, groups = noise[keep], thickness[keep], diameter[keep], groups[keep]
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < (1 if per_cm is not None else 3):
        raise ValueError(f"a noise reference needs full-dose slices of at least {1 if per_cm is not None else 3} "
                         f"patient(s) with soft tissue, got {len(names)}")
    weights = 1.0 / counts[np.searchsorted(names, groups)]
    target = np.log(noise * noise * thickness)
    if per_cm is None:
        design = np.stack([np.ones_like(diameter), diameter], axis=1)
        root = np.sqrt(weights)[:, None]
        (intercept, per_cm), *_ = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)
    else:
        intercept = float(np.sum(weights * (target - per_cm * diameter)) / np.sum(weights))
    residual = target - (intercept + per_cm * diameter)
    spread = float(np.sqrt(np.sum(weights * residual ** 2) / np.sum(weights)))
    reference = {"intercept": round(float(intercept), 5), "per_cm": round(float(per_cm), 5),
                 "residual_sd_log_variance": round(spread, 4), "patients": int(len(names)), "slices": int(len(noise)),
                 "diameter_range_cm": [round(float(diameter.min()), 1), round(float(diameter.max()), 1)],
                 "thickness_range_mm": [round(float(thickness.min()), 2), round(float(thickness.max()), 2)]}
    if len(names) >= MIN_PATIENTS_FOR_RANGE:
        # a routine slice's own dose equivalent (unclipped) is exp(-residual)
        reference["routine_range"] = [round(weighted_quantile(np.exp(-residual), weights, q), 4)
                                      for q in ROUTINE_RANGE_QUANTILES]
        reference["routine_p75"] = round(weighted_quantile(np.exp(-residual), weights, ABOVE_ROUTINE_QUANTILE), 4)
    return reference


#: The part of routine full-dose scans the bands are set around: the 5th to 95th percentile of their dose
#: equivalents (patients weighing alike), measured when the reference rests on this many patients or more.
ROUTINE_RANGE_QUANTILES = (0.05, 0.95)
MIN_PATIENTS_FOR_RANGE = 5
#: The dose, as a fraction of a routine scan's, that must read as inadequate.
INADEQUATE_AT = 0.1


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest of ``values`` whose cumulative share of ``weights`` (in ascending order of value)
    reaches ``q``."""
    order = np.argsort(values, kind="stable")
    shares = np.cumsum(np.asarray(weights, np.float64)[order]) / np.sum(weights)
    position = min(int(np.searchsorted(shares, q - 1e-12)), len(order) - 1)
    return float(np.asarray(values, np.float64)[order][position])


def adequacy_from_reference(reference: Dict[str, Any]) -> Dict[str, Any]:
    """Bands on the dose equivalent set by how routine scans spread around the reference (its
    ``routine_range``, 5th and 95th percentile): *good* down to the 5th percentile (a slice as quiet as 95% of
    routine full-dose scans), *inadequate* below a tenth (:data:`INADEQUATE_AT`) of the 95th percentile (a
    tenth of the dose of all but the quietest 5% of routine scans), rounded outwards to 0.01; without a range
    (too few patients), good from 0.5 and inadequate below 0.2. Where routine scans spread over more than a tenfold
    dose the two meet at the inadequate line, good rising to it: a tenth of a routine dose must not read good, and
    the noisiest few routine slices reading inadequate is the safer error."""
    if not reference.get("routine_range"):
        return dose_equivalent_adequacy()
    low, high = (float(v) for v in reference["routine_range"])
    inadequate = min(1.0, math.ceil(high * INADEQUATE_AT * 100.0 - 1e-9) / 100.0)
    quiet = min(1.0, math.floor(low * 100.0 + 1e-9) / 100.0)
    good = max(inadequate, quiet)
    adequacy = dose_equivalent_adequacy(good, inadequate)
    spread = ("as quiet as 95% of routine full-dose scans" if quiet >= inadequate else
              f"raised from the 5th percentile of routine full-dose scans ({low:.2f}) to the inadequate line, since "
              "routine scans spread over more than a tenfold dose")
    adequacy["reasoning"] = (
        f"good: noise no worse than {good:.0%} of a routine full dose would leave in a patient of this size at this "
        f"slice thickness, {spread} (noise at most {good ** -0.5:.1f}x the routine "
        f"level); inadequate: below {inadequate:.0%}, what a tenth of the dose gives all but the quietest 5% of "
        f"routine scans (noise above {inadequate ** -0.5:.1f}x the routine level). The routine level and its "
        "spread are fitted on real clinical full-dose scans.")
    return adequacy


def dose_equivalent_adequacy(good_dose: float = 0.5, inadequate_dose: float = 0.2) -> Dict[str, Any]:
    """Bands on the noise dose equivalent: good from ``good_dose``, inadequate below ``inadequate_dose``."""
    return {"on": "dose_equivalent", "bands": region_bands(good_dose, inadequate_dose),
            "reasoning": (f"good: noise no worse than {good_dose:.0%} of a routine full dose would leave in a "
                          f"patient of this size at this slice thickness (noise at most {good_dose ** -0.5:.1f}x "
                          f"the routine level); inadequate: below {inadequate_dose:.0%} (noise above "
                          f"{inadequate_dose ** -0.5:.1f}x), where low-contrast detectability degrades markedly. "
                          "The routine level is fitted on real clinical full-dose scans.")}


# --- Verdicts per body region ------------------------------------------------------------------------------------
#
# A version-3 noise reference holds one routine level per body region (``{"size": ..., "regions": {name: {...}}}``),
# each with its own bands, the dose equivalent above which a slice is "above routine", the ranges of patient size
# and slice thickness it may be applied to, and whether it was fitted on real scans or taken from the literature.
# An older reference (one level, fitted on chest and abdomen) is read as that level for those two regions only.

#: The share of routine full-dose scans that the "above routine" mark leaves below it: diagnostic reference
#: levels are set at the 75th percentile of a practice's doses (ICRP Publication 135).
ABOVE_ROUTINE_QUANTILE = 0.75
#: Without a measured spread, "above routine" starts at twice the routine dose (noise under 0.71x routine).
ABOVE_ROUTINE_DEFAULT = 2.0
#: A fitted size dependence holds this share beyond the diameters it was fitted on; slice thickness enters by
#: the quantum-noise law (variance as 1 / thickness), trusted from half the thinnest to twice the thickest
#: slices fitted, within 0.5-10 mm.
DIAMETER_MARGIN = 0.15
THICKNESS_LAW_MM = (0.5, 10.0)
ABOVE_ROUTINE_NOTE = "above routine: the dose could be lowered"


def valid_ranges(reference: Dict[str, Any]) -> Dict[str, List[float]]:
    """Patient sizes (cm) and slice thicknesses (mm) a fitted reference may be applied to, from the ranges of
    the slices it was fitted on."""
    ranges = {}
    if reference.get("diameter_range_cm"):
        low, high = (float(v) for v in reference["diameter_range_cm"])
        ranges["valid_diameter_cm"] = [round(low * (1.0 - DIAMETER_MARGIN), 1),
                                       round(high * (1.0 + DIAMETER_MARGIN), 1)]
    if reference.get("thickness_range_mm"):
        low, high = (float(v) for v in reference["thickness_range_mm"])
        ranges["valid_thickness_mm"] = [max(THICKNESS_LAW_MM[0], round(low / 2.0, 2)),
                                        min(THICKNESS_LAW_MM[1], round(high * 2.0, 2))]
    return ranges


def region_references(reference: Optional[Dict[str, Any]],
                      adequacy: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """The routine reference of each body region a model carries (empty without a noise reference). An older,
    single reference applies to the chest and abdomen it was fitted on, with the model's bands."""
    if not reference:
        return {}
    if "regions" in reference:
        return dict(reference["regions"])
    single = dict(reference, basis="fitted", bands=(adequacy or {}).get("bands") or dose_equivalent_adequacy()["bands"])
    single.update(valid_ranges(reference))
    single.setdefault("above_routine_from", ABOVE_ROUTINE_DEFAULT)
    return {"chest": single, "abdomen": single}


#: Bands per region from dose-reduction reader studies, as fractions of a routine dose: (good from, inadequate
#: below, source). Fletcher JG et al., "Estimation of observer performance for reduced radiation dose levels in CT",
#: Acad Radiol 2017;24(7), read routine head, abdomen and chest CT at reduced doses: for the head only 10% failed
#: non-inferiority (20% passed); for the abdomen (liver metastases) 30% failed non-inferiority and reader agreement
#: was inadequate below 50%; Jensen CT et al., Radiology 2019;290(2):400-409, found liver lesions detected 82% of the
#: time at about 46% of the standard dose against 97% at it. The neck is read like the abdomen (a soft-tissue task).
#: The chest's soft-tissue verdict has no reader study of its own here (lung nodules, a high-contrast task, failed
#: only at 4%): its inadequate line is the spread rule's, and good starts :data:`MIN_BORDERLINE_RATIO` above it.
READER_STUDY_BANDS = {
    "head": (0.30, 0.14, "Fletcher et al., Acad Radiol 2017: only 10% of a routine head dose failed "
             "non-inferiority and 20% passed (inadequate below 14%, between the two); good from 30%, a margin above "
             "the 20% that passed"),
    "abdomen": (0.50, 0.33, "Fletcher et al., Acad Radiol 2017: 30% of a routine abdominal dose failed "
                "non-inferiority for liver metastases (inadequate below 33%) and reader agreement was inadequate below "
                "50% (good from 50%); Jensen et al., Radiology 2019: liver lesions detected 82% of the time at about "
                "46% of the standard dose against 97% at it"),
    "neck": (0.50, 0.33, "read like the abdomen (a soft-tissue task; no neck reader study here): Fletcher et al., "
             "Acad Radiol 2017"),
    "chest": (0.0, 0.20, "no soft-tissue reader study of the chest here (Fletcher et al. 2017's lung-nodule task "
              "failed only at 4% of a routine dose): inadequate from the spread of routine scans, at least 20%"),
}
#: Good starts at least this factor of dose above the inadequate line (noise 1.22x), so that every region has a
#: borderline band: the two lines never meet.
MIN_BORDERLINE_RATIO = 1.5


def reader_study_bands(region: str, spread_inadequate: float = 0.0) -> Tuple[List[Dict[str, Any]], str]:
    """good / borderline / inadequate bands of ``region`` (each a non-empty interval) and their reasoning: the
    region's reader-study lines (:data:`READER_STUDY_BANDS`), the inadequate line raised to ``spread_inadequate``
    (what a tenth of the dose leaves all but the quietest 5% of routine scans) where that is higher, and good at
    least :data:`MIN_BORDERLINE_RATIO` above inadequate."""
    good, inadequate, source = READER_STUDY_BANDS.get(region, READER_STUDY_BANDS["abdomen"])
    reasons = [source]
    if spread_inadequate > inadequate:
        inadequate = spread_inadequate
        reasons.append(f"inadequate below {inadequate:.0%}: a tenth of the dose of all but the quietest 5% of routine "
                       "scans reads below it")
    floor = math.ceil(inadequate * MIN_BORDERLINE_RATIO * 100.0 - 1e-9) / 100.0
    if good < floor:
        good = floor
        reasons.append(f"good from {good:.0%}, {MIN_BORDERLINE_RATIO:g}x the inadequate line, so that borderline is "
                       "never empty")
    return region_bands(good, inadequate), "; ".join(reasons)


def region_bands(good: float, inadequate: float) -> List[Dict[str, Any]]:
    """good / borderline / inadequate bands on the dose equivalent."""
    return [{"name": "good", "min_value": good}, {"name": "borderline", "min_value": inadequate},
            {"name": "inadequate", "min_value": None}]


#: What "above routine" rests on: the scanner's delivered dose (SSDE from the header's CTDIvol and phantom and
#: the patient's water-equivalent diameter) or, where that is not known, the noise's dose equivalent.
BASIS_SSDE = "ssde"
BASIS_NOISE = "noise"

#: The reference dose of each region as an SSDE (mGy): a series whose SSDE exceeds it is above routine (its dose
#: could be lowered). Each is a national diagnostic reference level (UKHSA, "National diagnostic reference levels
#: (NDRLs)", 2024; CTDIvol, the 75th percentile of national practice, for a standard-sized adult) converted to
#: SSDE with AAPM Report 204's factor for its phantom at the standard adult's water-equivalent diameter
#: (:data:`REFERENCE_DW_CM`): head (adult head, 16 cm phantom) 47 mGy, cervical spine (for the neck) 16 mGy,
#: chest 8.5 mGy and abdomen-pelvis 10 mGy on the 32 cm phantom. ``Testing/Python/test_above_routine.py`` checks
#: the arithmetic against the dose package's own conversion.
REFERENCE_DRL_MGY = {"head": (47.0, "head16"), "neck": (16.0, "body32"), "chest": (8.5, "body32"),
                     "abdomen": (10.0, "body32")}
#: The water-equivalent diameter per region (cm) at which a DRL's CTDIvol is turned into an SSDE: the median AAPM
#: Report 220 Dw of the corpus' real patients of that region in the fit split (the training and calibration roles,
#: every slice whose body is within the field of view; ``benchmarks/real_ct.py --fit-sizes`` prints it). It rests
#: on few patients (chest 2, abdomen 2, head 1); the neck has none and takes the head's.
REFERENCE_DW_CM = {"head": 20.3, "neck": 20.3, "chest": 30.1, "abdomen": 26.5}
#: AAPM Report 204's SSDE conversion, f = a exp(-b Dw) with Dw in cm: (a, b) per phantom. Defined here, where
#: ``quality`` needs it without SimpleITK; the dose package's SSDE uses the same (``dose.size``).
AAPM204 = {"body32": (3.704369, 0.03671937), "head16": (1.874799, 0.03871313)}


def reference_ssde_mgy(region: str) -> Optional[float]:
    """The region's reference dose as an SSDE (mGy): its DRL's CTDIvol times AAPM Report 204's conversion at the
    standard adult's Dw (:data:`REFERENCE_DRL_MGY`, :data:`REFERENCE_DW_CM`); ``None`` for another region."""
    if region not in REFERENCE_DRL_MGY:
        return None
    ctdivol, phantom = REFERENCE_DRL_MGY[region]
    a, b = AAPM204[phantom]
    return round(ctdivol * a * math.exp(-b * REFERENCE_DW_CM[region]), 1)


#: What drove a verdict: the measured noise (the physics estimate), or what the network sees beyond it.
DRIVER_NOISE = "noise"
DRIVER_ARTEFACTS = "artefacts"


@dataclass
class Verdicts:
    """What the user reads for each slice: dose equivalent (fraction of a routine dose for its region, from the
    measured noise; NaN where there is none), the learned dose equivalent (from the network's effective noise; NaN
    where there is none), adequacy band (the worse of the two), what drove it (:data:`DRIVER_NOISE` or
    :data:`DRIVER_ARTEFACTS`; '' without a verdict), whether it is above the routine level, and a note (why
    ``unknown``, that the dose could be lowered, that artefacts set the verdict, or that the routine level is from
    the literature)."""

    dose_equivalent: np.ndarray
    adequacy: List[str]
    above_routine: np.ndarray
    note: List[str]
    learned_dose_equivalent: Optional[np.ndarray] = None
    driver: Optional[List[str]] = None
    #: What "above routine" was judged from on each slice: :data:`BASIS_SSDE` (the delivered dose against the
    #: region's reference dose), :data:`BASIS_NOISE` (the dose equivalent, where no SSDE is known), '' (neither).
    above_basis: Optional[List[str]] = None


#: Without a fitted margin: how far the network's effective noise may exceed the measured noise on a slice without
#: artefacts (a share of the measured noise).
DEFAULT_ARTEFACT_MARGIN = 0.15


def effective_noise(noise_hu, network_noise_hu, margin: Optional[float] = None) -> np.ndarray:
    """The noise a slice's score rests on: the larger of the measured noise and the network's effective noise
    divided by ``1 + margin``. The margin is how far the network's noise exceeds the measured noise on slices
    without artefacts (95 times in 100), so the division makes the network's figure a lower bound: it counts where
    it sees clearly more than the noise index can (streaks, rings, motion), by as much as it is sure of, and it
    joins the measured noise without a jump. NaN where the measured noise is unknown."""
    noise = np.asarray(noise_hu, dtype=np.float64)
    network = np.asarray(network_noise_hu, dtype=np.float64)
    margin = DEFAULT_ARTEFACT_MARGIN if margin is None else float(margin)
    with np.errstate(invalid="ignore"):
        bound = network / (1.0 + margin)
        beyond = np.isfinite(bound) & np.isfinite(noise) & (bound > noise)
    return np.where(beyond, bound, noise)


#: The global-noise thresholds (HU) of the routine category of each region in the US CMS CT measure (CMS1074 /
#: CMS1206 / CMS1056; ``input/cql/AlaraCommonFunctions.cql``, function "CT Scan Qualifies", in GitHub
#: cqframework/ecqm-content-qicore-2025 at db5a7e143304b19b70cbf6a89e5ebeab9e40df61): a series whose global noise
#: reaches its category's threshold is out of range for image quality, so it is never good. The measure leaves the
#: noise algorithm open; here the series' global noise is the median of its slices' noise index in that region.
CMS_ROUTINE_NOISE_HU = {"head": (115.0, "Head Routine Dose"), "neck": (25.0, "Neck or Cervical Spine"),
                        "chest": (49.0, "Chest Routine Dose"), "abdomen": (29.0, "Abdomen and Pelvis Routine Dose")}


def region_verdicts(noise_hu, thickness_mm, diameter_cm, regions: Sequence[str], region_reasons: Sequence[str],
                    references: Dict[str, Dict[str, Any]], effective_noise_hu=None,
                    artefact_margin: Optional[float] = None, kernel: str = "", manufacturer: str = "",
                    ssde_mgy=None, ssde_upper_bound: bool = False, series_description: str = "",
                    z_mm=None) -> Verdicts:
    """Verdicts of each slice against the routine reference of its body region; ``unknown`` with its reason
    wherever the slice lies outside what that reference was fitted on (region, size, thickness) or has no
    noise figure. Never an extrapolation.

    With ``effective_noise_hu`` (a learned model's: the noise of a pure dose reduction that degrades the slice as
    much as what it shows) each slice also gets a learned dose equivalent: that of :func:`effective_noise` (the
    network's, discounted by ``artefact_margin``, where it sees clearly more than the measured noise), through the
    same reference. The verdict rests on it, so it is the worse of the physics' and the network's; the driver is
    ``artefacts`` where the network moved the slice into a worse band than its noise gives, ``noise`` otherwise.

    A series reconstructed with a sharp kernel (``kernel`` and ``manufacturer``, the DICOM names; see
    :func:`~DistilIQALib.quality.kernels.kernel_class`) gets no soft-tissue verdict: every slice is ``unknown`` with
    that reason. Where the series' global noise in a region reaches that region's CMS threshold
    (:data:`CMS_ROUTINE_NOISE_HU`) no slice of it is good: good becomes borderline, with that reason.

    ``ssde_mgy`` (one value or one per slice, NaN or ``None`` where unknown) is the scanner's delivered dose,
    which the caller reads from the headers: where it is known, "above routine" is judged from it against the
    region's reference dose (:func:`reference_ssde_mgy`), sharp kernels included, and from the noise's dose
    equivalent only where it is not; :attr:`Verdicts.above_basis` says which. With ``ssde_upper_bound`` (the body
    cut by the field of view, so Dw is too small and SSDE too large) an SSDE at or below the reference still shows
    the dose is not above it, and one above it decides nothing: the noise decides there.

    An iterative reconstruction named in ``series_description`` or the kernel
    (:func:`~DistilIQALib.quality.kernels.iterative_reconstruction`) leaves less noise than filtered back-projection
    at the same dose, which is what the references were fitted on, and its lower noise does not bring the same
    low-contrast detection. Where its noise reduction is known, the slice is judged at the noise filtered
    back-projection would leave (measured noise / factor; the network's likewise), with that note; where it is not,
    the note says that the noise overstates the dose. The CMS check takes the measured noise, as the measure does.

    With ``z_mm`` (each slice's position, the slices one series) a short end of a chest or abdominal scan in the
    other region is judged as part of its exam (:func:`~DistilIQALib.quality.region_labels.exam_regions`): against
    that exam's routine level, reference dose and CMS category, with a note."""
    noise = np.asarray(noise_hu, dtype=np.float64)
    count = len(noise)
    exam_notes = [""] * count
    if z_mm is not None:
        regions, exam_notes = exam_regions(z_mm, regions)
    delivered = np.full(count, np.nan) if ssde_mgy is None else np.broadcast_to(
        np.asarray([np.nan if v is None else v for v in np.atleast_1d(ssde_mgy)], dtype=np.float64), (count,))
    klass, described = kernel_class(kernel, manufacturer)
    if klass == SHARP:
        why = (f"no soft-tissue verdict: {described}, a lung or bone reconstruction whose noise says nothing of "
               "soft-tissue quality or dose")
        above, basis, notes = np.zeros(count, dtype=bool), [""] * count, [why] * count
        for n in range(count):
            above[n], basis[n], remark = _above_from_ssde(regions[n], delivered[n], ssde_upper_bound)
            notes[n] = "; ".join(part for part in (why, remark, exam_notes[n]) if part)
        return Verdicts(np.full(count, np.nan), [UNKNOWN] * count, above, notes,
                        None if effective_noise_hu is None else np.full(count, np.nan), [""] * count, basis)
    thickness = np.broadcast_to(np.asarray(thickness_mm, dtype=np.float64), (count,))
    diameter = np.broadcast_to(np.asarray(diameter_cm, dtype=np.float64), (count,))
    factor, reconstruction = iterative_reconstruction(series_description, kernel, manufacturer)
    corrected = bool(np.isfinite(factor)) and factor != 1.0
    judged = noise / factor if corrected else noise  # the noise of filtered back-projection at the same dose
    if reconstruction:
        reconstruction += (": judged at the noise filtered back-projection would leave" if corrected else
                           ": its noise reads more dose than filtered back-projection at that dose would show")
    combined = None if effective_noise_hu is None else effective_noise(
        judged, np.asarray(effective_noise_hu, dtype=np.float64) / (factor if corrected else 1.0), artefact_margin)
    dose = np.full(count, np.nan)
    learned = np.full(count, np.nan)
    labels, notes, drivers = [UNKNOWN] * count, [""] * count, [""] * count
    above = np.zeros(count, dtype=bool)
    basis = [""] * count
    for n in range(count):
        region = regions[n]
        reference = references.get(region)
        why = _why_unknown(region, region_reasons[n] if region_reasons else "", reference, noise[n], thickness[n],
                           diameter[n])
        if why:
            above[n], basis[n], remark = _above_from_ssde(region, delivered[n], ssde_upper_bound)
            notes[n] = "; ".join(part for part in (why, remark) if part)
            continue
        bands = {"on": "dose_equivalent", "bands": reference["bands"]}
        dose[n] = noise_dose_equivalent(judged[n:n + 1], thickness[n], diameter[n:n + 1], reference)[0]
        labels[n] = adequacy_labels(dose[n:n + 1], bands)[0]
        drivers[n] = DRIVER_NOISE
        value = dose[n]
        remarks = []
        if combined is not None:
            learned[n] = value = noise_dose_equivalent(combined[n:n + 1], thickness[n], diameter[n:n + 1],
                                                       reference)[0]
            seen = adequacy_labels(learned[n:n + 1], bands)[0]
            if seen != labels[n]:
                labels[n], drivers[n] = seen, DRIVER_ARTEFACTS
                remarks.append(f"artefacts (streaks, rings or motion): it looks like {learned[n]:.2f} of a routine "
                               f"dose while its noise reads {dose[n]:.2f}")
        above[n], basis[n], remark = _above_from_ssde(region, delivered[n], ssde_upper_bound)
        if not basis[n]:
            above[n], basis[n] = value > float(reference.get("above_routine_from", ABOVE_ROUTINE_DEFAULT)), BASIS_NOISE
            remark = f"{ABOVE_ROUTINE_NOTE} (judged from the noise)" if above[n] else ""
        if remark:
            remarks.insert(0, remark)
        if reconstruction:
            remarks.append(reconstruction + (f" ({judged[n]:.1f} HU)" if corrected else ""))
        if exam_notes[n]:
            remarks.append(exam_notes[n])
        if reference.get("basis") == "literature":
            remarks.append(f"{region} routine level from published measurements")
        notes[n] = "; ".join(remarks)
    _cap_at_cms_threshold(noise, regions, labels, notes)
    return Verdicts(dose, labels, above, notes, learned if combined is not None else None, drivers, basis)


def _above_from_ssde(region: str, ssde: float, upper_bound: bool = False) -> Tuple[bool, str, str]:
    """``(above routine, basis, note)`` of a slice of ``region`` from its series' SSDE (mGy): basis '' where the
    SSDE or the region's reference dose is not known, or where an SSDE that is only an upper bound exceeds the
    reference (then the noise decides, where it can)."""
    reference = reference_ssde_mgy(region)
    if reference is None or not np.isfinite(ssde) or (upper_bound and ssde > reference):
        return False, "", ""
    if ssde > reference:
        return True, BASIS_SSDE, (f"{ABOVE_ROUTINE_NOTE} (SSDE {ssde:.1f} mGy above the {region}'s reference "
                                  f"{reference:.1f} mGy)")
    return False, BASIS_SSDE, ""


def _cap_at_cms_threshold(noise: np.ndarray, regions: Sequence[str], labels: List[str], notes: List[str]) -> None:
    """Good slices of a region whose series' global noise (the median noise index of its slices there) reaches the
    region's CMS threshold become borderline, with the reason (in place)."""
    names = np.asarray(list(regions))
    for region, (threshold, category) in CMS_ROUTINE_NOISE_HU.items():
        chosen = (names == region) & np.isfinite(noise)
        if not chosen.any():
            continue
        series_noise = float(np.median(noise[chosen]))
        if series_noise < threshold:
            continue
        remark = (f"global noise {series_noise:.1f} HU reaches the CMS CT measure's {category} threshold "
                  f"({threshold:g} HU): not good")
        for n in np.nonzero(names == region)[0]:
            if labels[n] == "good":
                labels[n] = "borderline"
                notes[n] = "; ".join(part for part in (notes[n], remark) if part)


def _why_unknown(region: str, region_reason: str, reference: Optional[Dict[str, Any]], noise: float,
                 thickness: float, diameter: float) -> str:
    """Why a slice gets no verdict ('' when it gets one)."""
    if region not in ("head", "neck", "chest", "abdomen"):
        return f"body region unknown: {region_reason}" if region_reason else "body region unknown"
    if reference is None:
        return f"no routine level for the {region} in this model"
    if not (np.isfinite(noise) and noise > 0):
        return "no soft tissue to measure noise on"
    if not (np.isfinite(thickness) and thickness > 0):
        return "slice thickness unknown"
    low, high = reference.get("valid_diameter_cm", (0.0, math.inf))
    if not (np.isfinite(diameter) and low <= diameter <= high):
        return (f"patient size {diameter:.1f} cm is outside the {region} reference ({low:g}-{high:g} cm "
                "noise-equivalent diameter)")
    low, high = reference.get("valid_thickness_mm", THICKNESS_LAW_MM)
    if not low <= thickness <= high:
        return f"slice thickness {thickness:g} mm is outside the {region} reference ({low:g}-{high:g} mm)"
    return ""

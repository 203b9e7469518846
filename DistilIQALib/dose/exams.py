"""The exam (DICOM study) as a unit: one row per study from its series and its dose reports.

Everything is computed from stored rows alone (the series rows, their slices' regions and noise, the dose report
and irradiation event rows), never from the order they were made in, so the exam table of stores merged from
``--shard k/n`` parts is the one a single run gives, wherever a study's series and reports landed.

Per study:

* ``exam_category`` and ``category_source``: :func:`~DistilIQALib.dose.categories.exam_category`;
* the **global-noise series** (:func:`global_noise_series`): the scored series with a soft-tissue kernel, 2 mm or
  thicker where the study has one, with the most slices; ``global_noise_hu`` is the median of its slices' global
  noise index, and ``ctdivol_mgy``, ``dw_cm`` and ``ssde_mgy`` are that series' (its own acquisition);
* ``dlp_total_mgycm``: the sum over the study's unique irradiation events (``dlp_source`` ``report``), else an
  estimate, ``dlp_source`` ``estimate``: CTDIvol times the scanned length of each acquisition, the series of one
  acquisition told apart by their CTDIvol (reconstructions of one acquisition share it), localizers not counted;
* ``size_adjusted_dlp_mgycm``: the size adjustment (default :func:`~DistilIQALib.dose.cms.size_specific_dlp`) of
  that DLP at the global-noise series' Dw;
* ``cms_out_of_range`` and ``cms_reason``: :func:`~DistilIQALib.dose.cms.check_exam`, with notes on the values
  (a Dw cut by the field of view, a report total that disagrees).

A study with a dose report and no image series gets its row (its noise is then unknown).
"""
from __future__ import annotations

import statistics
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from . import cms
from .categories import ExamFacts, Mapping, exam_category, is_soft_tissue_kernel, load_mapping, texts_of

#: The exam table's columns, in order; users' scripts and the measure depend on these names.
EXAM_COLUMNS = ("study_uid", "study_date", "patient_age", "scanner", "exam_category", "category_source",
                "ctdivol_mgy", "dlp_total_mgycm", "dlp_source", "dw_cm", "ssde_mgy", "size_adjusted_dlp_mgycm",
                "global_noise_hu", "cms_out_of_range", "cms_reason")
#: Where the study has a soft-tissue series this thick or thicker, thinner ones are not used for its global noise:
#: soft tissue is read at 2-5 mm, and noise grows as 1/sqrt(thickness).
MIN_NOISE_THICKNESS_MM = 2.0
#: Acquisitions of one study are told apart by CTDIvol to this many decimals (mGy) for the DLP estimate.
CTDI_DECIMALS = 2

SliceSource = Callable[[str, str], Sequence[Dict]]


def _first(values: Iterable) -> Optional[object]:
    for value in values:
        if value not in (None, ""):
            return value
    return None


def _round(value: Optional[float], digits: int = 1) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def global_noise_series(series: Sequence[Dict], mapping: Mapping) -> Optional[Dict]:
    """The series whose slices give the study's global noise: scored, with a noise figure and a soft-tissue kernel
    (see the mapping's ``soft_tissue_kernels_exclude``), 2 mm or thicker where one is, then the most slices (ties:
    the thicker, then the series UID). ``None`` when no series qualifies."""
    usable = [row for row in series if row.get("status") == "scored" and row.get("mean_noise_hu") is not None
              and is_soft_tissue_kernel(row.get("kernel"), mapping)]
    thick = [row for row in usable if (row.get("slice_thickness_mm") or 0.0) >= MIN_NOISE_THICKNESS_MM]
    candidates = thick or usable
    if not candidates:
        return None
    return max(candidates, key=lambda row: (row.get("num_slices") or 0, row.get("slice_thickness_mm") or 0.0,
                                            row["series_uid"]))


def _median_noise(slices: Sequence[Dict], fallback: Optional[float]) -> Optional[float]:
    noise = [row["noise_hu"] for row in slices if row.get("noise_hu") is not None]
    return float(statistics.median(noise)) if noise else fallback


def estimated_dlp(series: Sequence[Dict]) -> Optional[float]:
    """DLP (mGy.cm) estimated from the image headers: per acquisition (series grouped by CTDIvol) CTDIvol times
    the longest scanned length among its series; ``None`` when no series has both."""
    longest: Dict[float, float] = {}
    for row in series:
        ctdi, length = row.get("ctdivol_mgy"), row.get("scan_length_mm")
        if ctdi is None or length is None or row.get("status") not in ("scored", "skipped"):
            continue
        key = round(float(ctdi), CTDI_DECIMALS)
        longest[key] = max(longest.get(key, 0.0), float(length))
    if not longest:
        return None
    return sum(ctdi * length / 10.0 for ctdi, length in longest.items())


def _one_per_series(series: Sequence[Dict], weights_id: Optional[str]) -> List[Dict]:
    """One row per series: the ``weights_id`` one when given, else a scored row before others (by weights id)."""
    chosen: Dict[str, Dict] = {}
    rank = {"scored": 0, "skipped": 1, "failed": 2}
    for row in sorted(series, key=lambda r: (rank.get(r.get("status"), 3), str(r.get("weights_id")))):
        if weights_id and row.get("weights_id") != weights_id:
            continue
        chosen.setdefault(row["series_uid"], row)
    return [chosen[uid] for uid in sorted(chosen)]


def exam_rows(series_rows: Sequence[Dict], report_rows: Sequence[Dict] = (), event_rows: Sequence[Dict] = (),
              slices_of: Optional[SliceSource] = None, mapping: Optional[Mapping] = None,
              exam_category_override: Optional[str] = None,
              size_adjustment: cms.SizeAdjustment = cms.size_specific_dlp,
              weights_id: Optional[str] = None) -> List[Dict]:
    """The exam table: one row per study (columns :data:`EXAM_COLUMNS`), sorted by study date and UID.

    ``slices_of(series_uid, weights_id)`` gives a series' slice rows (their ``region`` and ``noise_hu``); without
    it the series' stored region and mean noise stand in. ``size_adjustment`` replaces the default size
    adjustment (:data:`~DistilIQALib.dose.cms.SizeAdjustment`)."""
    mapping = mapping or load_mapping()
    studies: Dict[str, Dict[str, list]] = OrderedDict()

    def study(uid):
        return studies.setdefault(uid, {"series": [], "reports": [], "events": []})

    for row in _one_per_series([r for r in series_rows if r.get("study_uid")], weights_id):
        study(row["study_uid"])["series"].append(row)
    for row in report_rows:
        if row.get("study_uid"):
            study(row["study_uid"])["reports"].append(row)
    for row in event_rows:
        if row.get("study_uid"):
            study(row["study_uid"])["events"].append(row)
    rows = [_exam_row(uid, parts["series"], parts["reports"], parts["events"], slices_of, mapping,
                      exam_category_override, size_adjustment) for uid, parts in studies.items()]
    return sorted(rows, key=lambda row: (row["study_date"] or "", row["study_uid"]))


def _exam_row(study_uid: str, series: List[Dict], reports: List[Dict], events: List[Dict],
              slices_of: Optional[SliceSource], mapping: Mapping, override: Optional[str],
              size_adjustment: cms.SizeAdjustment) -> Dict:
    notes: List[str] = []
    slices = {row["series_uid"]: list(slices_of(row["series_uid"], row["weights_id"])) if slices_of else []
              for row in series if row.get("status") == "scored"}
    dose = None
    if reports:
        from .reports import study_dose

        dose = study_dose(reports, events)
        notes += list(dose.notes or [])
    unique_events = list(dose.events) if dose is not None else []

    series_regions = [[s.get("region") or "unknown" for s in slices[row["series_uid"]]]
                      or [row.get("region") or "unknown"] for row in series if row.get("status") == "scored"]
    texts = texts_of([row.get("study_description") for row in series],
                     [row.get("protocol_name") for row in series]
                     + [event.get("protocol") for event in unique_events],
                     [row.get("description") for row in series],
                     [row.get("body_part") for row in series]
                     + [event.get("target_region") for event in unique_events])
    acquisitions = [event.get("acquisition_type") for event in unique_events
                    if not event.get("localizer")]
    category, source = exam_category(ExamFacts(series_regions, texts, acquisitions), mapping, override)

    noise_series = global_noise_series(series, mapping)
    noise = ctdivol = dw = ssde = phantom = None
    if noise_series is not None:
        noise = _median_noise(slices.get(noise_series["series_uid"], []), noise_series.get("mean_noise_hu"))
        ctdivol, dw, ssde = (noise_series.get(k) for k in ("ctdivol_mgy", "dw_cm", "ssde_mgy"))
        phantom = noise_series.get("ctdi_phantom")
        if noise_series.get("dw_truncated"):
            notes.append("Dw cut by the field of view (too small)")
    elif any(row.get("status") == "scored" for row in series):
        notes.append("no scored soft-tissue series for the global noise")
    elif not series:
        notes.append("dose report only: no image series")
    diagnostic = [e for e in unique_events if not e.get("localizer")]
    if ctdivol is None and diagnostic:
        weighted = [(e.get("ctdivol_mgy"), e.get("dlp_mgycm")) for e in diagnostic
                    if e.get("ctdivol_mgy") is not None and e.get("dlp_mgycm")]
        if weighted:
            ctdivol = sum(c * d for c, d in weighted) / sum(d for _, d in weighted)
    if phantom is None:
        phantom = _first(e.get("phantom") for e in sorted(diagnostic, key=lambda e: -(
            e.get("dlp_mgycm") or 0.0)))
    if dose is not None and dose.dlp_total_mgycm is not None:
        dlp, dlp_source = dose.dlp_total_mgycm, "report"
    else:
        dlp = estimated_dlp(series)
        dlp_source = "estimate" if dlp is not None else None
    if ssde is None and ctdivol is not None and dw is not None and phantom:
        from .size import ssde_mgy

        ssde = ssde_mgy(ctdivol, phantom, dw)
    adjusted = size_adjustment(dlp, dw, phantom) if dlp is not None else None
    check = cms.check_exam(category, noise, adjusted, _first(
        [row.get("patient_age") for row in series] + [row.get("patient_age") for row in reports]))
    reason = check.reason + "".join(f"; {note}" for note in notes)
    scanner = _scanner(series, reports)
    return {"study_uid": study_uid,
            "study_date": _first([row.get("study_date") for row in series] + [r.get("study_date") for r in reports]),
            "patient_age": _first([row.get("patient_age") for row in series]
                                  + [row.get("patient_age") for row in reports]),
            "scanner": scanner, "exam_category": category.name if category else None, "category_source": source,
            "ctdivol_mgy": _round(ctdivol, 2), "dlp_total_mgycm": _round(dlp, 1), "dlp_source": dlp_source,
            "dw_cm": _round(dw, 1), "ssde_mgy": _round(ssde, 2),
            "size_adjusted_dlp_mgycm": _round(adjusted, cms.DECIMALS), "global_noise_hu": _round(noise, cms.DECIMALS),
            "cms_out_of_range": check.out_of_range, "cms_reason": reason}


def _scanner(series: Sequence[Dict], reports: Sequence[Dict]) -> Optional[str]:
    for rows in (series, reports):
        for row in rows:
            maker, model = (row.get("manufacturer") or "").strip(), (row.get("scanner_model") or "").strip()
            if model.lower().startswith(maker.lower()):
                maker = ""  # a series' scanner_model already starts with its manufacturer (SeriesEntry.from_facts)
            if maker or model:
                return " ".join(part for part in (maker, model) if part)
    return None

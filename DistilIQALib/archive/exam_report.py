"""The exam sections of the archive report: per exam category against the CMS CT measure's thresholds, per protocol
against national diagnostic reference levels, and per scanner a monthly trend.

National DRLs (CTDIvol per sequence, standard adult, mGy): UK Health Security Agency national DRLs (2024): head
(stroke) 47, cervical spine 16, chest 8.5, abdomen and pelvis 10 (as gathered in the project's
REGION_REFERENCES.md). A DRL is a level of CTDIvol for a standard-sized patient: SSDE is shown beside it for size,
not compared with it.
"""
from __future__ import annotations

import html
import statistics
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from ..dose import cms
from ..dose.exams import EXAM_COLUMNS

#: Engine region -> (national DRL of CTDIvol in mGy, what it is for, source).
NATIONAL_DRLS = {
    "head": (47.0, "head (stroke)", "UKHSA national DRLs 2024"),
    "neck": (16.0, "cervical spine", "UKHSA national DRLs 2024"),
    "chest": (8.5, "chest", "UKHSA national DRLs 2024"),
    "abdomen": (10.0, "abdomen and pelvis", "UKHSA national DRLs 2024"),
}


def stored_exam_rows(store) -> Optional[List[Dict]]:
    """The store's ``exams`` table (as the last batch or merge left it), ``None`` when it has none."""
    tables = {name for (name,) in store.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "exams" not in tables:
        return None
    rows = store.connection.execute(f"SELECT {', '.join(EXAM_COLUMNS)} FROM exams ORDER BY study_date, study_uid")
    return [dict(zip(EXAM_COLUMNS, row)) for row in rows]


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [float(v) for v in values if v is not None]
    return statistics.median(known) if known else None


def _text(value, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return (f'<div class="wide"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def category_summary(exams: Sequence[Dict]) -> List[Dict]:
    """Per exam category: exams, how many the check counts (yes or no), the share out of range among those,
    the median global noise and size-adjusted DLP and the category's thresholds."""
    groups: Dict[str, List[Dict]] = OrderedDict()
    for row in sorted(exams, key=lambda r: r.get("exam_category") or "~"):
        groups.setdefault(row.get("exam_category") or "no category", []).append(row)
    summary = []
    for name, members in groups.items():
        category = cms.BY_NAME.get(name)
        counted = [r for r in members if r["cms_out_of_range"] in ("yes", "no")]
        out = sum(r["cms_out_of_range"] == "yes" for r in counted)
        summary.append({"category": name, "exams": len(members), "counted": len(counted), "out_of_range": out,
                        "share_out": out / len(counted) if counted else None,
                        "median_noise_hu": _median([r.get("global_noise_hu") for r in members]),
                        "noise_threshold_hu": category.noise_hu if category else None,
                        "median_size_adjusted_dlp": _median([r.get("size_adjusted_dlp_mgycm") for r in members]),
                        "dose_threshold_mgycm": category.dose_mgycm if category else None})
    return summary


def protocol_dose_summary(series: Sequence[Dict]) -> List[Dict]:
    """Per protocol (the series' protocol name, else its description, with the region the engine read): series
    with a CTDIvol, median CTDIvol and SSDE, the national DRL and how many series are above it."""
    groups: Dict[tuple, List[Dict]] = OrderedDict()
    for row in series:
        if row.get("status") != "scored" or row.get("ctdivol_mgy") is None:
            continue
        key = (row.get("protocol_name") or row.get("description") or "unnamed", row.get("region") or "unknown")
        groups.setdefault(key, []).append(row)
    summary = []
    for (protocol, region), members in sorted(groups.items()):
        drl = NATIONAL_DRLS.get(region)
        summary.append({"protocol": protocol, "region": region, "series": len(members),
                        "median_ctdivol_mgy": _median([r["ctdivol_mgy"] for r in members]),
                        "median_ssde_mgy": _median([r.get("ssde_mgy") for r in members]),
                        "drl_mgy": drl[0] if drl else None,
                        "above_drl": sum(r["ctdivol_mgy"] > drl[0] for r in members) if drl else None,
                        "drl_source": f"{drl[2]}, {drl[1]}" if drl else "no national DRL for this region"})
    return summary


def monthly_trend(exams: Sequence[Dict]) -> List[Dict]:
    """Per scanner and month (YYYY-MM of the study date): exams, median CTDIvol, SSDE, global noise and
    size-adjusted DLP, and the share out of range among the exams the check counts."""
    groups: Dict[tuple, List[Dict]] = OrderedDict()
    for row in exams:
        date = str(row.get("study_date") or "")
        month = f"{date[:4]}-{date[4:6]}" if len(date) >= 6 and date[:6].isdigit() else "undated"
        groups.setdefault((row.get("scanner") or "unknown scanner", month), []).append(row)
    trend = []
    for (scanner, month), members in sorted(groups.items()):
        counted = [r for r in members if r["cms_out_of_range"] in ("yes", "no")]
        trend.append({"scanner": scanner, "month": month, "exams": len(members),
                      "median_ctdivol_mgy": _median([r.get("ctdivol_mgy") for r in members]),
                      "median_ssde_mgy": _median([r.get("ssde_mgy") for r in members]),
                      "median_noise_hu": _median([r.get("global_noise_hu") for r in members]),
                      "median_size_adjusted_dlp": _median([r.get("size_adjusted_dlp_mgycm") for r in members]),
                      "share_out": (sum(r["cms_out_of_range"] == "yes" for r in counted) / len(counted)
                                    if counted else None)})
    return trend


def _percent(share: Optional[float]) -> Optional[str]:
    return None if share is None else f"{100 * share:.0f}%"


def exam_sections(exams: Sequence[Dict], series: Sequence[Dict]) -> str:
    """The report's exam sections (HTML), with the measure's caveat and licence terms."""
    if not exams:
        return "<h2>Exams</h2><p>No exam (no study with a series or a dose report).</p>"
    categories = category_summary(exams)
    protocols = protocol_dose_summary(series)
    trend = monthly_trend(exams)
    parts = [f"<h2>Exams and the CMS CT measure ({len(exams)} exams)</h2>",
             f"<p>{html.escape(cms.NOT_CERTIFIED)} The steward's terms: {html.escape(cms.LICENCE)}</p>",
             "<p>Out of range: global noise or size-adjusted DLP at or above the category's threshold. Exams under "
             "18, Full Body exams and exams without a category or value are not counted (unknown).</p>",
             _table(["exam category", "exams", "counted", "out of range", "share out of range",
                     "median global noise (HU)", "noise threshold (HU)", "median size-adjusted DLP (mGy.cm)",
                     "dose threshold (mGy.cm)"],
                    [[c["category"], c["exams"], c["counted"], c["out_of_range"], _percent(c["share_out"]),
                      c["median_noise_hu"], c["noise_threshold_hu"], c["median_size_adjusted_dlp"],
                      c["dose_threshold_mgycm"]] for c in categories]),
             "<h2>Protocols against national diagnostic reference levels</h2>",
             "<p>CTDIvol of each scored series against the national DRL of the region the engine read (UKHSA "
             "national DRLs 2024, set on CTDIvol for a standard-sized adult); SSDE beside it for patient size.</p>",
             _table(["protocol", "region", "series", "median CTDIvol (mGy)", "median SSDE (mGy)", "national DRL (mGy)",
                     "series above the DRL", "DRL"],
                    [[p["protocol"], p["region"], p["series"], p["median_ctdivol_mgy"], p["median_ssde_mgy"],
                      p["drl_mgy"], p["above_drl"], p["drl_source"]] for p in protocols])
             if protocols else "<p>No scored series carries CTDIvol.</p>",
             "<h2>Monthly trend per scanner</h2>",
             _table(["scanner", "month", "exams", "median CTDIvol (mGy)", "median SSDE (mGy)",
                     "median global noise (HU)", "median size-adjusted DLP (mGy.cm)", "share out of range"],
                    [[t["scanner"], t["month"], t["exams"], t["median_ctdivol_mgy"], t["median_ssde_mgy"],
                      t["median_noise_hu"], t["median_size_adjusted_dlp"], _percent(t["share_out"])] for t in trend]),
             "<h2>Exam table</h2>",
             _table(list(EXAM_COLUMNS), [[row.get(column) for column in EXAM_COLUMNS] for row in exams])]
    return "".join(parts)

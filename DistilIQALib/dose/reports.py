"""The scanner's radiation dose structured reports (DICOM TID 10011, "CT Radiation Dose").

Read: X-Ray Radiation Dose SR, Enhanced X-Ray Radiation Dose SR, and the Enhanced SR that GE scanners write with
the same template. Concepts are matched by (coding scheme, code value) from pydicom's code dictionary, never by
their meaning text, which vendors spell differently; so are units, after normalising their spellings.

Per irradiation event (a CT Acquisition container): acquisition type (localizers marked), protocol, target region,
mean CTDIvol, DLP, phantom, scanning length and the Irradiation Event UID. Per report: the DLP total and the number
of events it declares. A study's reports are joined by :func:`study_dose`: cumulative reports repeat events
(the same Irradiation Event UID), continuation reports add new ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

#: SOP classes that can hold a CT dose report.
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
ENHANCED_XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.76"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
DOSE_REPORT_CLASSES = (XRAY_DOSE_SR, ENHANCED_XRAY_DOSE_SR, ENHANCED_SR)

STATUS_READ, STATUS_NOT_READ, STATUS_PROBLEM = "read", "not read", "problem"


@dataclass
class StudyDose:
    """A study's dose from all its reports.

    ``dlp_total_mgycm``: the sum of DLP over the study's unique irradiation events (localizers included, as the
    scanner's own total includes them), None when no event has a DLP; ``events``: one row per unique event UID
    (the first report's), localizers kept and marked; ``reports``: the study's report rows; ``notes``: where a
    report's own DLP total disagrees with the sum of its events, or the study's events are not all read.
    """

    dlp_total_mgycm: Optional[float]
    events: List[Dict] = field(default_factory=list)
    reports: List[Dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


#: A report's own total and the sum of its events agree within this (mGy.cm, relative): the scanner rounds each.
TOTAL_TOLERANCE = 0.01


def study_dose(report_rows: Sequence[Dict], event_rows: Sequence[Dict]) -> StudyDose:
    """Join one study's report rows and event rows (as the store gives them) into its dose."""
    reports = [row for row in report_rows if row.get("status") == STATUS_READ]
    order = {row["sop_uid"]: n for n, row in enumerate(sorted(reports, key=_report_order))}
    unique: Dict[str, Dict] = {}
    for event in sorted((e for e in event_rows if e.get("report_sop_uid") in order),
                        key=lambda e: (order[e["report_sop_uid"]], e.get("event_uid") or "")):
        unique.setdefault(event.get("event_uid") or f"{event['report_sop_uid']}/{len(unique)}", event)
    events = list(unique.values())
    doses = [e["dlp_mgycm"] for e in events if e.get("dlp_mgycm") is not None]
    total = float(sum(doses)) if doses else None
    notes = []
    for report in sorted(reports, key=_report_order):
        own = report.get("dlp_total_mgycm")
        if own is None:
            continue
        if total is None or abs(own - total) > max(0.05, TOTAL_TOLERANCE * own):
            shown = "no event DLP" if total is None else f"{total:.2f} mGy.cm"
            notes.append(f"report {report['sop_uid']} states a DLP total of {own:.2f} mGy.cm; the study's unique "
                         f"events add up to {shown}")
    missing = [e.get("event_uid") for e in events if e.get("dlp_mgycm") is None]
    if missing and doses:
        notes.append(f"{len(missing)} event(s) without a readable DLP are left out of the total")
    for row in report_rows:
        if row.get("status") != STATUS_READ:
            notes.append(f"{row.get('sop_uid')}: {row.get('status')} ({row.get('reason')})")
    return StudyDose(total, events, list(report_rows), notes)


def _report_order(row: Dict):
    """Reports in a fixed order that does not depend on when or in which run they were read (a merged store
    gives the same study dose as one run)."""
    return row.get("sop_uid") or ""

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

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from pydicom.sr.codedict import codes

#: SOP classes that can hold a CT dose report.
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
ENHANCED_XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.76"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
DOSE_REPORT_CLASSES = (XRAY_DOSE_SR, ENHANCED_XRAY_DOSE_SR, ENHANCED_SR)

STATUS_READ, STATUS_NOT_READ, STATUS_PROBLEM = "read", "not read", "problem"


SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SCREEN_REASON = ("a dose screen (a picture of the console's dose page): reading it needs character "
                      "recognition, not read")


def _dcm(keyword: str, value: str, *alternatives: str) -> Tuple[str, str]:
    """``("DCM", value)`` of a concept named by pydicom's code dictionary. pydicom 2.4 lists a few keywords under
    two values (Irradiation Event UID: 113769 and 113853) and names some differently from pydicom 3; ``value``
    says which concept is meant, and a keyword that names another concept is a mistake here."""
    for keyword_tried in (keyword, *alternatives):
        try:
            code = getattr(codes.DCM, keyword_tried)
        except (AttributeError, RuntimeError):  # unknown in this version, or ambiguous in pydicom 2.4
            continue
        if code.value != value:
            raise ValueError(f"pydicom's DCM {keyword_tried} is {code.value}, not {value}")
        return "DCM", value
    return "DCM", value


DOSE_REPORT_ROOT = _dcm("XRayRadiationDoseReport", "113701")
CT_ACCUMULATED = _dcm("CTAccumulatedDoseData", "113811")
EVENTS_TOTAL = _dcm("TotalNumberOfIrradiationEvents", "113812")
DLP_TOTAL = _dcm("CTDoseLengthProductTotal", "113813")
CT_ACQUISITION = _dcm("CTAcquisition", "113819")
EVENT_UID = _dcm("IrradiationEventUID", "113769")
PROTOCOL = _dcm("AcquisitionProtocol", "125203")
TARGET_REGION = _dcm("TargetRegion", "123014")
ACQUISITION_TYPE = _dcm("CTAcquisitionType", "113820")
ACQUISITION_PARAMETERS = _dcm("CTAcquisitionParameters", "113822")
SCANNING_LENGTH = _dcm("ScanningLength", "113825")
CT_DOSE = _dcm("CTDose", "113829")
MEAN_CTDIVOL = _dcm("MeanCtdivol", "113830", "MeanCTDIvol")
DLP = _dcm("DLP", "113838")
PHANTOM_TYPE = _dcm("CtdiwPhantomType", "113835", "CTDIwPhantomType")
LOCALIZER = _dcm("ConstantAngleAcquisition", "113805")
#: CT acquisition types (CID 10013) by (scheme, code); spiral is SNOMED CT's, older reports use SNOMED RT's code.
ACQUISITION_TYPES = {LOCALIZER: "Constant Angle Acquisition",
                     _dcm("SequencedAcquisition", "113804"): "Sequenced Acquisition",
                     _dcm("StationaryAcquisitionCT", "113806", "StationaryAcquisition"): "Stationary Acquisition",
                     _dcm("FreeAcquisition", "113807"): "Free Acquisition",
                     ("SCT", codes.SCT.SpiralAcquisition.value): "Spiral Acquisition",
                     ("SRT", "P5-08001"): "Spiral Acquisition",
                     ("SCT", "702569007"): "Cone Beam Acquisition"}
PHANTOMS = {_dcm("IECHeadDosimetryPhantom", "113690"): "head16",
            _dcm("IECBodyDosimetryPhantom", "113691"): "body32"}

#: Unit spellings scanners write (UCUM code value or its look-alikes), folded to one form: the factor to mGy.cm,
#: mGy or mm. Compared lower-case with spaces, dots, asterisks and middle dots removed.
_DLP_UNITS = {"mgycm": 1.0, "mgy.cm": 1.0, "cgycm": 10.0, "gycm": 1000.0, "mgymm": 0.1, "mgym": 100.0}
_DOSE_UNITS = {"mgy": 1.0, "cgy": 10.0, "gy": 1000.0, "ugy": 0.001}
_LENGTH_UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def _folded_unit(unit: Optional[str]) -> str:
    return "".join(ch for ch in (unit or "").lower() if ch not in " .*\u00b7\u22c5").replace("\u00b5", "u")


def _in_unit(value: Optional[float], unit: Optional[str], table: Dict[str, float], what: str,
             notes: List[str]) -> Optional[float]:
    """``value`` converted by ``table`` (mGy.cm, mGy or mm), or None with a note when its unit is not one
    of them."""
    if value is None:
        return None
    factor = table.get(_folded_unit(unit))
    if factor is None:
        notes.append(f"{what} unit {unit!r} not understood" if unit else f"{what} has no unit")
        return None
    return value * factor


@dataclass
class DoseEvent:
    """One irradiation event (a CT Acquisition) of a report; None where the report does not state it."""

    event_uid: Optional[str] = None
    acquisition_type: Optional[str] = None
    localizer: bool = False
    protocol: Optional[str] = None
    target_region: Optional[str] = None
    ctdivol_mgy: Optional[float] = None
    dlp_mgycm: Optional[float] = None
    phantom: Optional[str] = None
    scanning_length_mm: Optional[float] = None

    def row(self) -> Dict:
        return {"event_uid": self.event_uid, "acquisition_type": self.acquisition_type,
                "localizer": int(self.localizer), "protocol": self.protocol, "target_region": self.target_region,
                "ctdivol_mgy": self.ctdivol_mgy, "dlp_mgycm": self.dlp_mgycm, "phantom": self.phantom,
                "scanning_length_mm": self.scanning_length_mm}


@dataclass
class DoseReport:
    """One dose report file as read: its row for the store (``status`` read / not read / problem, ``reason``)
    and its events."""

    sop_uid: str
    status: str
    reason: Optional[str] = None
    study_uid: Optional[str] = None
    series_uid: Optional[str] = None
    path: Optional[str] = None
    sop_class: Optional[str] = None
    manufacturer: Optional[str] = None
    scanner_model: Optional[str] = None
    study_date: Optional[str] = None
    patient_id: Optional[str] = None
    patient_age: Optional[str] = None
    dlp_total_mgycm: Optional[float] = None
    events_declared: Optional[int] = None
    events: List[DoseEvent] = field(default_factory=list)

    def row(self) -> Dict:
        names = ("sop_uid", "status", "reason", "study_uid", "series_uid", "path", "sop_class", "manufacturer",
                 "scanner_model", "study_date", "patient_id", "patient_age", "dlp_total_mgycm", "events_declared")
        return {**{name: getattr(self, name) for name in names}, "events_found": len(self.events)}

    def event_rows(self) -> List[Dict]:
        rows, seen = [], set()
        for n, event in enumerate(self.events):
            row = event.row()
            # the store keys events by UID: one without a UID (a malformed report) gets a stable stand-in
            if not row["event_uid"] or row["event_uid"] in seen:
                row["event_uid"] = f"{self.sop_uid}#event{n + 1}"
            seen.add(row["event_uid"])
            rows.append(row)
        return rows


# --- reading the content tree ------------------------------------------------------------------------


def _code_key(item, sequence: str = "ConceptNameCodeSequence") -> Optional[Tuple[str, str]]:
    codes_found = getattr(item, sequence, None)
    if not codes_found:
        return None
    code = codes_found[0]
    scheme = str(getattr(code, "CodingSchemeDesignator", "") or "").strip()
    value = str(getattr(code, "CodeValue", "") or getattr(code, "LongCodeValue", "") or "").strip()
    return scheme, value


def _meaning(item, sequence: str = "ConceptCodeSequence") -> Optional[str]:
    found = getattr(item, sequence, None)
    return str(found[0].get("CodeMeaning", "")).strip() or None if found else None


def _children(item, name: Tuple[str, str]) -> list:
    return [child for child in (getattr(item, "ContentSequence", None) or []) if _code_key(child) == name]


def _child(item, name: Tuple[str, str]):
    found = _children(item, name)
    return found[0] if found else None


def _numeric(item) -> Tuple[Optional[float], Optional[str]]:
    """A NUM item's value and its unit code value; (None, None) when it holds none."""
    measured = getattr(item, "MeasuredValueSequence", None) if item is not None else None
    if not measured:
        return None, None
    try:
        value = float(measured[0].NumericValue)
    except (AttributeError, TypeError, ValueError):
        return None, None
    units = getattr(measured[0], "MeasurementUnitsCodeSequence", None)
    unit = str(units[0].get("CodeValue", "")).strip() if units else None
    return value, unit


def _event(acquisition, notes: List[str], number: int) -> DoseEvent:
    event = DoseEvent()
    uid_item = _child(acquisition, EVENT_UID)
    event.event_uid = str(getattr(uid_item, "UID", "") or "").strip() or None if uid_item is not None else None
    protocol = _child(acquisition, PROTOCOL)
    event.protocol = str(getattr(protocol, "TextValue", "") or "").strip() or None if protocol is not None else None
    region = _child(acquisition, TARGET_REGION)
    event.target_region = _meaning(region) if region is not None else None
    kind = _child(acquisition, ACQUISITION_TYPE)
    if kind is not None:
        key = _code_key(kind, "ConceptCodeSequence")
        event.acquisition_type = ACQUISITION_TYPES.get(key) or _meaning(kind)
        event.localizer = key == LOCALIZER
    where = f"event {number}" + (f" ({event.event_uid})" if event.event_uid else "")
    event_notes: List[str] = []
    parameters = _child(acquisition, ACQUISITION_PARAMETERS)
    if parameters is not None:
        event.scanning_length_mm = _in_unit(*_numeric(_child(parameters, SCANNING_LENGTH)), _LENGTH_UNITS,
                                            "scanning length", event_notes)
    dose = _child(acquisition, CT_DOSE)
    if dose is not None:
        event.ctdivol_mgy = _in_unit(*_numeric(_child(dose, MEAN_CTDIVOL)), _DOSE_UNITS, "CTDIvol", event_notes)
        event.dlp_mgycm = _in_unit(*_numeric(_child(dose, DLP)), _DLP_UNITS, "DLP", event_notes)
        phantom = _child(dose, PHANTOM_TYPE)
        if phantom is not None:
            event.phantom = PHANTOMS.get(_code_key(phantom, "ConceptCodeSequence"))
    elif not event.localizer:
        event_notes.append("no CT Dose data")
    notes.extend(f"{where}: {note}" for note in event_notes)
    return event


def _text(ds, keyword: str) -> Optional[str]:
    value = getattr(ds, keyword, None)
    text = str(value).strip() if value is not None else ""
    return text or None


def _base(ds, path: Optional[str]) -> DoseReport:
    return DoseReport(sop_uid=_text(ds, "SOPInstanceUID") or (f"file:{path}" if path else "unknown"),
                      status=STATUS_READ, study_uid=_text(ds, "StudyInstanceUID"),
                      series_uid=_text(ds, "SeriesInstanceUID"), path=path, sop_class=_text(ds, "SOPClassUID"),
                      manufacturer=_text(ds, "Manufacturer"), scanner_model=_text(ds, "ManufacturerModelName"),
                      study_date=_text(ds, "StudyDate"), patient_id=_text(ds, "PatientID"),
                      patient_age=_text(ds, "PatientAge"))


def is_dose_screen(ds) -> bool:
    """A secondary capture of the console's dose page (GE "Dose Report", Siemens "Patient Protocol", ...)."""
    sop_class = _text(ds, "SOPClassUID") or ""
    kinds = (_text(ds, "ImageType") or "").upper()
    description = " ".join(filter(None, (_text(ds, "SeriesDescription"), _text(ds, "ImageComments")))).lower()
    captured = sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or "SCREEN SAVE" in kinds
    return captured and ("dose" in description or "patient protocol" in description)


def report_from_dataset(ds, path: Optional[str] = None) -> DoseReport:
    """Read one dose report (or say why it is not one) from a pydicom dataset; never raises on bad content."""
    report = _base(ds, path)
    if is_dose_screen(ds):
        report.status, report.reason = STATUS_NOT_READ, DOSE_SCREEN_REASON
        return report
    try:
        return _read_content(ds, report)
    except Exception as error:  # malformed content: the report is a problem row, the study goes on
        report.status, report.reason = STATUS_PROBLEM, f"malformed dose report ({type(error).__name__}: {error})"
        report.events = []
        return report


def _read_content(ds, report: DoseReport) -> DoseReport:
    root = _code_key(ds)
    if report.sop_class not in DOSE_REPORT_CLASSES or root != DOSE_REPORT_ROOT:
        shown = f"{root[0]} {root[1]}" if root else "none"
        report.status = STATUS_PROBLEM
        report.reason = f"not an X-ray radiation dose report (SOP class {report.sop_class}, root concept {shown})"
        return report
    notes: List[str] = []
    accumulated = _child(ds, CT_ACCUMULATED)
    acquisitions = _children(ds, CT_ACQUISITION)
    if accumulated is None and not acquisitions:
        report.status = STATUS_NOT_READ
        report.reason = "a projection X-ray dose report (no CT dose data): not CT"
        return report
    if accumulated is not None:
        report.dlp_total_mgycm = _in_unit(*_numeric(_child(accumulated, DLP_TOTAL)), _DLP_UNITS, "DLP total",
                                          notes)
        declared, _unit = _numeric(_child(accumulated, EVENTS_TOTAL))
        report.events_declared = int(round(declared)) if declared is not None else None
    else:
        notes.append("no CT Accumulated Dose Data")
    report.events = [_event(item, notes, n + 1) for n, item in enumerate(acquisitions)]
    if not report.events:
        report.status = STATUS_PROBLEM
        notes.insert(0, "the report lists no irradiation event (CT Acquisition)")
    elif report.events_declared is not None and report.events_declared != len(report.events):
        notes.append(f"the report declares {report.events_declared} events and lists {len(report.events)}")
    report.reason = "; ".join(notes) or None
    return report


def read_dose_report(path: os.PathLike[str] | str) -> DoseReport:
    """Read a dose report file; a file that is not DICOM or is truncated gives a problem row with the reason."""
    import pydicom

    path = str(path)
    try:
        ds = pydicom.dcmread(path)
        ds.get("ContentSequence")  # parse it now: a truncated file fails here, not half-way through the tree
    except Exception as error:  # any file may be anything
        return DoseReport(sop_uid=f"file:{path}", status=STATUS_PROBLEM, path=path,
                          reason=f"not a readable DICOM file ({type(error).__name__}: {error})")
    return report_from_dataset(ds, path)


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
    """Join one study's report rows and event rows (as the store gives them) into its dose.

    Events are unique by Irradiation Event UID (a cumulative report repeats earlier events). The DLP total is
    the sum of DLP over the unique events; where one report lists every unique event and states its own total,
    that total is taken instead (the scanner adds its unrounded event values; the listed ones are rounded), and
    a difference of more than 1% from the sum is noted.
    """
    reports = sorted((row for row in report_rows if row.get("status") == STATUS_READ), key=_report_order)
    order = {row["sop_uid"]: n for n, row in enumerate(reports)}
    unique: Dict[str, Dict] = {}
    by_report: Dict[str, set] = {}
    for event in sorted((e for e in event_rows if e.get("report_sop_uid") in order),
                        key=lambda e: (order[e["report_sop_uid"]], e.get("event_uid") or "")):
        unique.setdefault(event["event_uid"], event)
        by_report.setdefault(event["report_sop_uid"], set()).add(event["event_uid"])
    events = list(unique.values())
    doses = [e["dlp_mgycm"] for e in events if e.get("dlp_mgycm") is not None]
    summed = float(sum(doses)) if doses else None
    total, notes = summed, []
    covering = [r for r in reports if r.get("dlp_total_mgycm") is not None
                and by_report.get(r["sop_uid"], set()) == set(unique) and unique]
    if covering:
        total = float(covering[-1]["dlp_total_mgycm"])
    for report in reports:
        own = report.get("dlp_total_mgycm")
        if own is None:
            continue
        if summed is None or abs(own - summed) > max(0.05, TOTAL_TOLERANCE * own):
            shown = "no event DLP" if summed is None else f"{summed:.2f} mGy.cm"
            notes.append(f"report {report['sop_uid']} states a DLP total of {own:.2f} mGy.cm; the study's unique "
                         f"events add up to {shown}")
    missing = [e for e in events if e.get("dlp_mgycm") is None and not e.get("localizer")]
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

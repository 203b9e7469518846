"""The scanner's dose as CT image headers state it, per slice and per series.

Per slice: CTDIvol (0018,9345, mGy) with the phantom it refers to (CTDIPhantomTypeCodeSequence (0018,9346): DCM
113690 IEC Head Dosimetry Phantom -> 'head16', 113691 IEC Body Dosimetry Phantom -> 'body32'), kVp, exposure (mAs),
tube current (mA), exposure time and the tube-current modulation type. Enhanced CT keeps them per frame in
CTExposureSequence (0018,9321) of the per-frame or shared functional groups; both are read. A value the header does
not give stays empty and the reason is kept. Works with pydicom 2.4 and 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

#: The CTDIvol phantoms by their DICOM code (DCM 113690 IEC Head, 113691 IEC Body Dosimetry Phantom), written out:
#: pydicom's code dictionary takes a third of a second to load, on every start of ``score``.
PHANTOMS = {("DCM", "113690"): "head16", ("DCM", "113691"): "body32"}
#: The attributes a header read must keep for the dose (``specific_tags`` of a header-only read).
DOSE_TAGS = ["CTDIvol", "CTDIPhantomTypeCodeSequence", "KVP", "Exposure", "XRayTubeCurrent", "ExposureTime",
             "ExposureModulationType", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
             "PatientAge", "BodyPartExamined", "StudyDescription", "ProtocolName"]
NO_CTDIVOL = "no CTDIvol in the image headers"


@dataclass
class SliceDose:
    """One slice's (or frame's) dose facts; None where the header does not state them."""

    ctdivol_mgy: Optional[float] = None
    phantom: Optional[str] = None
    kvp: Optional[float] = None
    exposure_mas: Optional[float] = None
    tube_current_ma: Optional[float] = None
    exposure_time_ms: Optional[float] = None
    modulation: Optional[str] = None
    notes: List[str] = field(default_factory=list)


@dataclass
class SeriesDose:
    """A series' dose from its slices: the mean CTDIvol of the slices that state one, the phantom they share."""

    ctdivol_mgy: Optional[float] = None
    phantom: Optional[str] = None
    modulation: Optional[str] = None
    kvp: Optional[float] = None
    exposure_mas: Optional[float] = None
    slices_with_ctdivol: int = 0
    num_slices: int = 0
    note: Optional[str] = None


def _number(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def phantom_of(item) -> tuple:
    """``(phantom, note)`` from a dataset's CTDIPhantomTypeCodeSequence, matched by (scheme, code)."""
    sequence = _get(item, "CTDIPhantomTypeCodeSequence")
    if not sequence:
        return None, "the CTDIvol phantom is not stated (no CTDIPhantomTypeCodeSequence)"
    code = sequence[0]
    key = (_text(_get(code, "CodingSchemeDesignator")), _text(_get(code, "CodeValue")))
    if key in PHANTOMS:
        return PHANTOMS[key], None
    return None, f"CTDIvol phantom code {key[0]} {key[1]} is neither the IEC head nor the body phantom"


def _get(item, keyword):
    """An attribute of a dataset, None when absent or when its encoding cannot be parsed."""
    try:
        return getattr(item, keyword, None)
    except Exception:  # an attribute whose value does not decode (a malformed sequence): treat as absent
        return None


def _dose_from(item, into: SliceDose) -> None:
    """Fill what ``item`` (a dataset or a CTExposureSequence item) states into ``into`` (earlier values win)."""
    values = {"ctdivol_mgy": _number(_get(item, "CTDIvol")), "kvp": _number(_get(item, "KVP")),
              "exposure_mas": _number(_get(item, "Exposure")),
              "tube_current_ma": _number(_get(item, "XRayTubeCurrent")),
              "exposure_time_ms": _number(_get(item, "ExposureTime")),
              "modulation": _text(_get(item, "ExposureModulationType"))}
    # enhanced CT names them differently inside CTExposureSequence
    values["exposure_mas"] = values["exposure_mas"] or _number(_get(item, "ExposureInmAs"))
    values["tube_current_ma"] = values["tube_current_ma"] or _number(_get(item, "XRayTubeCurrentInmA"))
    values["exposure_time_ms"] = values["exposure_time_ms"] or _number(_get(item, "ExposureTimeInms"))
    for name, value in values.items():
        if getattr(into, name) is None and value is not None:
            setattr(into, name, value)
    if into.phantom is None and values["ctdivol_mgy"] is not None:
        into.phantom, note = phantom_of(item)
        if note:
            into.notes.append(note)


def _functional_items(group, keyword: str) -> list:
    try:
        return list(_get(group, keyword) or [])
    except TypeError:
        return []


def frame_doses(ds) -> List[SliceDose]:
    """The dose of every slice of ``ds``: one for a classic CT image, one per frame for an enhanced CT image
    (per-frame functional groups first, then the shared ones, then the top level)."""
    shared = _functional_items((_get(ds, "SharedFunctionalGroupsSequence") or [None])[0], "CTExposureSequence")
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence") or []
    doses = []
    for group in (per_frame or [None]):
        dose = SliceDose()
        for item in _functional_items(group, "CTExposureSequence") + shared + [ds]:
            _dose_from(item, dose)
        # KVP of enhanced CT sits in CTXRayDetailsSequence
        if dose.kvp is None:
            for details in (_functional_items(group, "CTXRayDetailsSequence")
                            + _functional_items((_get(ds, "SharedFunctionalGroupsSequence") or [None])[0],
                                                "CTXRayDetailsSequence")):
                dose.kvp = dose.kvp or _number(_get(details, "KVP"))
        if dose.ctdivol_mgy is None:
            dose.notes.append(NO_CTDIVOL)
        doses.append(dose)
    return doses


def read_slice_doses(path: str) -> List[SliceDose]:
    """The dose facts of one image file (its pixels are not read); a file that cannot be read gives one empty
    slice with the reason."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=DOSE_TAGS)
    except Exception as error:  # any file may be anything
        return [SliceDose(notes=[f"header not readable ({type(error).__name__})"])]
    return frame_doses(ds)


def series_dose(slices: Sequence[SliceDose]) -> SeriesDose:
    """A series' dose from its slices' (see :class:`SeriesDose`); ``note`` says why a value is empty."""
    with_ctdi = [s for s in slices if s.ctdivol_mgy is not None]
    phantoms = {s.phantom for s in with_ctdi if s.phantom}
    modulations = {s.modulation for s in slices if s.modulation}
    result = SeriesDose(num_slices=len(slices), slices_with_ctdivol=len(with_ctdi),
                        modulation="\\".join(sorted(modulations)) or None,
                        kvp=_median([s.kvp for s in slices]), exposure_mas=_median([s.exposure_mas for s in slices]))
    if not with_ctdi:
        result.note = NO_CTDIVOL
        return result
    result.ctdivol_mgy = float(np.mean([s.ctdivol_mgy for s in with_ctdi]))
    if len(phantoms) == 1:
        result.phantom = phantoms.pop()
    elif phantoms:
        result.note = f"the slices state different CTDIvol phantoms ({', '.join(sorted(phantoms))})"
    else:
        notes = [n for s in with_ctdi for n in s.notes if n != NO_CTDIVOL]
        result.note = notes[0] if notes else "the CTDIvol phantom is not stated"
    return result


def _median(values) -> Optional[float]:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None

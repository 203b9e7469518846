"""The dose of one scored series: each slice's CTDIvol (from its own file's header, matched by position), its
AAPM Report 220 water-equivalent diameter and SSDE, and the series' values (mean CTDIvol, Dw at mid-scan, SSDE
from them, as Leng et al., Radiology 2015, found a good stand-in for the mean of per-slice SSDE).

A slice's Dw is measured only where its SSDE needs it (the slice states a CTDIvol); the mid-scan slice's always.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..quality.results import verdict_ssde  # noqa: F401  (the dose a verdict is judged from)
from ..volume import CTVolume
from .headers import SeriesDose, SliceDose, read_slice_doses, series_dose
from .size import ssde, water_equivalent_diameters_cm

#: Dw is measured on the slice averaged in blocks to at most this many pixels a side: Aw is a sum, which block
#: means keep (air adds about nothing), and the outline moves by under a block; it keeps the dose under 5% of a run.
DW_MATRIX = 128
#: Slices measured together (one copy of this many full slices at a time).
DW_CHUNK = 32


#: The series' dose values a summary gives, named as the store's series columns.
SUMMARY_FIELDS = ("ctdivol_mgy", "ctdi_phantom", "tube_current_modulation", "dw_cm", "dw_truncated", "ssde_mgy",
                  "scan_length_mm", "dose_note")
#: Why a volume or picture file has no dose values.
NOT_DICOM = "not a DICOM input: a volume or picture file carries no scanner dose (CTDIvol) in its header"


@dataclass
class ScanDose:
    """Per-slice lists (one value per volume slice, None where unknown) and the series' store fields."""

    ctdivol_mgy: List[Optional[float]] = field(default_factory=list)
    dw_cm: List[Optional[float]] = field(default_factory=list)
    ssde_mgy: List[Optional[float]] = field(default_factory=list)
    series: Dict = field(default_factory=dict)

    def slice_rows(self) -> List[Dict]:
        return [{"ctdivol_mgy": c, "dw_cm": d, "ssde_mgy": s}
                for c, d, s in zip(self.ctdivol_mgy, self.dw_cm, self.ssde_mgy)]

    def verdict_ssde(self) -> Optional[np.ndarray]:
        """The SSDE (mGy) each slice's "above routine" is judged from (see :func:`verdict_ssde`)."""
        return verdict_ssde(self.series.get("ssde_mgy"), self.ssde_mgy)

    def summary(self) -> Dict:
        """The series' values for a JSON summary (``dw_truncated`` true or false, None without a Dw)."""
        truncated = self.series.get("dw_truncated")
        return {name: self.series.get(name) for name in SUMMARY_FIELDS} | {
            "dw_truncated": None if truncated is None else bool(truncated)}


def _block_means(hu: np.ndarray, step: int) -> np.ndarray:
    """Each slice of ``hu`` ``(n, y, x)`` averaged in ``step`` x ``step`` blocks (the ragged edge dropped), as a
    sum of ``step`` x ``step`` strided views: numpy's mean over the reshaped block axes is several times slower,
    and torch's pooling would compete with the model for its threads while the series is read ahead."""
    hu = np.asarray(hu, dtype=np.float32)
    if step <= 1:
        return hu
    rows, columns = (hu.shape[1] // step) * step, (hu.shape[2] // step) * step
    total = np.zeros((len(hu), rows // step, columns // step), dtype=np.float32)
    for row in range(step):
        for column in range(step):
            total += hu[:, row:rows:step, column:columns:step]
    return total / np.float32(step * step)


def slice_water_diameters(volume: CTVolume, wanted: Optional[Sequence[bool]] = None) -> List[tuple]:
    """``(dw_cm, truncated)`` of every axial slice of ``volume`` (``(None, False)`` where ``wanted`` is false),
    measured on the :data:`DW_MATRIX` block means of the slices, all at once."""
    indices = [k for k in range(volume.num_slices) if wanted is None or wanted[k]]
    sizes: List[tuple] = [(None, False)] * volume.num_slices
    if not indices:
        return sizes
    step = max(1, int(np.ceil(max(volume.hu.shape[1:]) / DW_MATRIX)))
    spacing = (volume.spacing_mm[0] * step, volume.spacing_mm[1] * step)
    for start in range(0, len(indices), DW_CHUNK):
        chunk = indices[start:start + DW_CHUNK]
        for k, size in zip(chunk, water_equivalent_diameters_cm(_block_means(volume.hu[chunk], step), spacing)):
            sizes[k] = size
    return sizes


def _match_slices(volume: CTVolume, doses: Sequence[SliceDose], positions_mm: Optional[Sequence]) -> list:
    """The header dose of each volume slice: by position along the volume's slice normal where the files' LPS
    positions are known, else in order when the counts agree."""
    if not doses:
        return [None] * volume.num_slices
    if len(doses) == 1:
        return list(doses) * volume.num_slices if volume.num_slices == 1 else [doses[0]] * volume.num_slices
    if positions_mm is not None and len(positions_mm) == len(doses):
        normal = np.asarray(volume.direction)[:, 2]
        centres = volume.slice_centres_mm() @ normal
        files = np.asarray(positions_mm, dtype=np.float64).reshape(len(doses), 3) @ normal
        return [doses[int(np.argmin(np.abs(files - c)))] for c in centres]
    if len(doses) == volume.num_slices:
        return list(doses)
    return [None] * volume.num_slices


def scan_dose(volume: CTVolume, doses: Sequence[SliceDose], positions_mm: Optional[Sequence] = None,
              header: Optional[SeriesDose] = None) -> ScanDose:
    """Dose per slice and per series of a read volume. ``doses``: the header dose of each file (or frame);
    ``positions_mm``: each one's LPS position (ImagePositionPatient, mm), to match them to the volume's slices."""
    matched = _match_slices(volume, doses, positions_mm)
    header = header or series_dose([d for d in matched if d is not None] or list(doses))
    middle = volume.num_slices // 2
    wanted = [dose is not None and dose.ctdivol_mgy is not None for dose in matched]
    if volume.num_slices:
        wanted[middle] = True  # the series' Dw
    sizes = slice_water_diameters(volume, wanted)
    result = ScanDose()
    for dose, (dw, _truncated) in zip(matched, sizes):
        ctdi = dose.ctdivol_mgy if dose is not None else None
        phantom = (dose.phantom if dose is not None else None) or header.phantom
        result.ctdivol_mgy.append(ctdi)
        result.dw_cm.append(dw if ctdi is not None else None)
        result.ssde_mgy.append(ssde(ctdi, phantom, dw)[0])
    dw_mid, truncated = sizes[middle] if volume.num_slices else (None, False)
    value, why = ssde(header.ctdivol_mgy, header.phantom, dw_mid)
    notes = [n for n in (header.note, None if value is not None or header.note else why) if n]
    if truncated:
        notes.append("the body is cut by the field of view at mid-scan: Dw is too small and SSDE too large")
    z = volume.slice_centres_mm() @ np.asarray(volume.direction)[:, 2]
    length = float(abs(z[-1] - z[0]) + abs(volume.spacing_mm[2])) if len(z) else None
    result.series = {"ctdivol_mgy": header.ctdivol_mgy, "ctdi_phantom": header.phantom,
                     "tube_current_modulation": header.modulation, "dw_cm": dw_mid,
                     "dw_truncated": int(bool(truncated)) if dw_mid is not None else None, "ssde_mgy": value,
                     "scan_length_mm": length, "dose_note": "; ".join(notes) or None}
    return result


def empty_dose(num_slices: int, note: str) -> ScanDose:
    """No dose values for any of ``num_slices`` slices, with the reason."""
    empty = [None] * num_slices
    return ScanDose(list(empty), list(empty), list(empty), {**{name: None for name in SUMMARY_FIELDS},
                                                             "dose_note": note})


def volume_dose(volume: CTVolume) -> ScanDose:
    """The dose of a volume read from DICOM (``read_volume``), from its files' headers (``metadata['dicom_files']``
    and ``['file_positions_mm']``, as the reader keeps them); a volume from another format has none, with the
    reason."""
    files = volume.metadata.get("dicom_files") or []
    if not files:
        return empty_dose(volume.num_slices, NOT_DICOM)
    stated = volume.metadata.get("file_positions_mm") or []
    doses, positions = [], []
    for n, path in enumerate(files):
        file_doses = read_slice_doses(path)
        doses.extend(file_doses)
        positions.extend([stated[n] if n < len(stated) else None] * len(file_doses))
    known = len(doses) == len(files) and all(position is not None for position in positions)
    return scan_dose(volume, doses, positions if known else None)

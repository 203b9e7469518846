"""Finding the CT series of an archive: a DICOM folder tree or a Slicer DICOM database.

Headers are read with pydicom (pixel data skipped); files are grouped by
SeriesInstanceUID. Only axial CT image series are worth scoring; everything else is
listed with the reason it is skipped (localizers/scouts, dose reports, secondary captures,
other modalities, non-axial or tiny series). Unreadable files are counted and reported,
never fatal.
"""
from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

SLICER_DATABASE_FILE = "ctkDICOM.sql"
MIN_SERIES_SLICES = 3
MIN_MATRIX = 64
#: The slice normal must be within about 25 degrees of the patient's z axis to count as axial.
AXIAL_MIN_COSINE = 0.9
CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")

_HEADER_TAGS = ["Modality", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "ImageType",
                "PatientID", "PatientName", "StudyDate", "SeriesDescription", "SeriesNumber", "ConvolutionKernel",
                "KVP", "Exposure", "ExposureTime", "XRayTubeCurrent", "Rows", "Columns",
                "ImageOrientationPatient", "ImagePositionPatient"]


@dataclass
class SeriesEntry:
    """One series of the archive: its files and the header facts a report needs."""

    uid: str
    files: List[str] = field(default_factory=list)
    modality: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_uid: str = ""
    study_date: str = ""
    description: str = ""
    kernel: str = ""
    kvp: Optional[float] = None
    exposure_mas: Optional[float] = None
    image_types: set = field(default_factory=set)
    sop_classes: set = field(default_factory=set)
    normals: List[Tuple[float, float, float]] = field(default_factory=list)
    matrix: Tuple[int, int] = (0, 0)
    sop_uids: set = field(default_factory=set)
    duplicates: int = 0
    positions: List[Tuple[float, float, float]] = field(default_factory=list)

    def sorted_files(self) -> List[str]:
        """The files ordered along the slice normal (image position), as a reader must stack them."""
        if not self.normals or len(self.positions) != len(self.files):
            return list(self.files)
        normal = np.asarray(self.normals[0])
        keys = [float(np.dot(position, normal)) for position in self.positions]
        return [name for _, name in sorted(zip(keys, self.files))]

    def skip_reason(self) -> Optional[str]:
        """Why this series is not scored, or ``None`` when it is an axial CT image series."""
        if self.modality != "CT":
            return f"modality {self.modality or 'unknown'}"
        if any("LOCALIZER" in kind for kind in self.image_types):
            return "localizer/scout"
        if self.sop_classes and not self.sop_classes & set(CT_IMAGE_STORAGE):
            return f"not a CT image storage object ({', '.join(sorted(self.sop_classes))})"
        if len(self.files) < MIN_SERIES_SLICES:
            return f"only {len(self.files)} image(s)"
        if min(self.matrix) < MIN_MATRIX:
            return f"matrix {self.matrix[1]}x{self.matrix[0]} below {MIN_MATRIX}"
        if self.normals and np.median([abs(n[2]) for n in self.normals]) < AXIAL_MIN_COSINE:
            return "not axial"
        return None


@dataclass
class ArchiveScan:
    series: Dict[str, SeriesEntry] = field(default_factory=dict)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)


def _read_header(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS), None
    except Exception as error:  # any file may be anything: a report, a truncated file, a non-DICOM file
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _add(scan: ArchiveScan, path: str, ds) -> None:
    uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
    if not uid:
        scan.unreadable.append((path, "no SeriesInstanceUID"))
        return
    entry = scan.series.get(uid)
    if entry is None:
        entry = scan.series[uid] = SeriesEntry(
            uid=uid, modality=str(getattr(ds, "Modality", "") or ""), patient_id=str(getattr(ds, "PatientID", "")),
            patient_name=str(getattr(ds, "PatientName", "")), study_uid=str(getattr(ds, "StudyInstanceUID", "")),
            study_date=str(getattr(ds, "StudyDate", "")), description=str(getattr(ds, "SeriesDescription", "")),
            kernel=str(getattr(ds, "ConvolutionKernel", "") or ""), kvp=_number(getattr(ds, "KVP", None)),
            exposure_mas=_number(getattr(ds, "Exposure", None)),
            matrix=(int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)))
    sop = str(getattr(ds, "SOPInstanceUID", "") or path)
    if sop in entry.sop_uids:
        entry.duplicates += 1
        return
    entry.sop_uids.add(sop)
    entry.files.append(path)
    entry.image_types.update(str(v).upper() for v in (getattr(ds, "ImageType", None) or []))
    if getattr(ds, "SOPClassUID", None):
        entry.sop_classes.add(str(ds.SOPClassUID))
    position = getattr(ds, "ImagePositionPatient", None)
    entry.positions.append(tuple(float(v) for v in position) if position is not None and len(position) == 3
                           else (0.0, 0.0, float(len(entry.positions))))
    orientation = getattr(ds, "ImageOrientationPatient", None)
    if orientation is not None and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
        entry.normals.append(tuple(normal))


def scan_folder(root: Path | str, workers: int = 4, files: Optional[Iterable[str]] = None) -> ArchiveScan:
    """Group every DICOM file under ``root`` (any nesting, any names, DICOMDIR ignored) by series."""
    root = Path(root)
    scan = ArchiveScan()
    if files is None:
        files = []

        def unreadable_folder(error: OSError) -> None:
            scan.unreadable.append((str(error.filename), f"unreadable folder: {error.strerror}"))

        for directory, _subdirectories, names in os.walk(root, onerror=unreadable_folder):
            files.extend(os.path.join(directory, name) for name in sorted(names) if name.upper() != "DICOMDIR")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, (ds, error) in zip(files, pool.map(_read_header, files)):
            if ds is None:
                scan.unreadable.append((path, error))
            else:
                _add(scan, path, ds)
    return scan


def is_slicer_database(root: Path | str) -> bool:
    return (Path(root) / SLICER_DATABASE_FILE).is_file()


def slicer_database_files(root: Path | str) -> List[str]:
    """Every image file indexed by a Slicer (CTK) DICOM database folder; relative names are taken
    relative to that folder."""
    root = Path(root)
    connection = sqlite3.connect(f"file:{root / SLICER_DATABASE_FILE}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT Filename FROM Images ORDER BY SeriesInstanceUID, Filename").fetchall()
    finally:
        connection.close()
    return [name if os.path.isabs(name) else str(root / name) for (name,) in rows]


def scan_archive(root: Path | str, workers: int = 4) -> ArchiveScan:
    """A folder tree, or the files a Slicer DICOM database indexes."""
    if is_slicer_database(root):
        return scan_folder(root, workers, slicer_database_files(root))
    return scan_folder(root, workers)

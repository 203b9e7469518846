"""Finding the CT series of an archive: a DICOM folder tree or a Slicer DICOM database.

Headers are read with pydicom (pixel data skipped), in worker processes or threads, and
files are grouped by SeriesInstanceUID. Files without one (anonymisers strip it) are grouped
by a stable fallback key: folder, StudyInstanceUID (or empty), SeriesNumber, modality, matrix
and orientation. An instance (SOPInstanceUID) found twice is kept once: the copy that
decodes and is largest wins, the other is listed as a problem. Only axial CT image series
are worth scoring; everything else is listed with the reason it is skipped (localizers/
scouts, secondary captures, other modalities, non-axial or tiny series). Structured reports and
dose screens are set apart for the dose reader (:mod:`DistilIQALib.dose.reports`).
Unreadable files are counted and reported, never fatal.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..dose.headers import DOSE_TAGS, SliceDose, frame_doses
from ..dose.reports import is_dose_screen

SLICER_DATABASE_FILE = "ctkDICOM.sql"
MIN_SERIES_SLICES = 3
MIN_MATRIX = 64
#: The slice normal must be within about 25 degrees of the patient's z axis to count as axial.
AXIAL_MIN_COSINE = 0.9
CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
#: Prefix of the key of a series grouped without SeriesInstanceUID (stored in place of the UID).
FALLBACK_KEY_PREFIX = "nouid-"
NO_UID_NOTE = "no SeriesInstanceUID: grouped by folder"
#: Files per task sent to a scanning process (amortises the inter-process traffic).
PROCESS_SCAN_CHUNK = 64

_HEADER_TAGS = ["Modality", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "ImageType",
                "PatientID", "PatientName", "StudyDate", "SeriesDescription", "SeriesNumber", "ConvolutionKernel",
                "KVP", "Exposure", "ExposureTime", "XRayTubeCurrent", "Rows", "Columns", "SliceThickness",
                "Manufacturer", "ManufacturerModelName", "ImageOrientationPatient", "ImagePositionPatient",
                "ImageComments", *DOSE_TAGS]
#: Structured reports (SOP classes 1.2.840.10008.5.1.4.1.1.88.*) go to the dose reader, which reads dose reports
#: and says why any other is not one.
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


#: A DICOM UID: dotted digits (PS3.5 9.1); what a server or a sender may use as a folder or file name.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


def dicom_text(value) -> str:
    """A DICOM value as DICOM writes it: a multi-valued attribute joined by backslashes (``Br38f\\3``),
    never as a Python list; ``None`` is empty."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(dicom_text(v) for v in value)
    return str(value).strip()


def _number(value) -> Optional[float]:
    """A numeric attribute; the first value of a multi-valued one."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class HeaderFacts:
    """What the scan needs from one file's header, as plain values (cheap to send between processes)."""

    path: str
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    sop_class: str = ""
    sop_uid: str = ""
    image_types: Tuple[str, ...] = ()
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    description: str = ""
    series_number: str = ""
    kernel: str = ""
    kvp: Optional[float] = None
    exposure_mas: Optional[float] = None
    slice_thickness_mm: Optional[float] = None
    manufacturer: str = ""
    scanner_model: str = ""
    matrix: Tuple[int, int] = (0, 0)
    orientation: Optional[Tuple[float, ...]] = None
    position: Optional[Tuple[float, float, float]] = None
    #: the header's dose, one per frame (one for a classic CT image)
    doses: Tuple[SliceDose, ...] = ()
    patient_age: str = ""
    body_part: str = ""
    study_description: str = ""
    protocol_name: str = ""
    #: a structured report or a dose screen: read by the dose reader, not scored
    is_dose_object: bool = False

    @property
    def is_image(self) -> bool:
        return bool(self.modality) and min(self.matrix) > 0


def read_header(path: str) -> Tuple[Optional[HeaderFacts], Optional[str]]:
    """The header facts of one file, or ``None`` and a short reason (the same text for the same trouble,
    so that a report can group files by it)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except pydicom.errors.InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as error:  # any file may be anything: a truncated file, a folder entry we cannot read
        return None, f"truncated or corrupt DICOM header ({type(error).__name__})"
    try:
        return _facts(path, ds), None
    except Exception as error:  # values that do not parse: a corrupt header
        return None, f"corrupt DICOM header ({type(error).__name__})"


def _facts(path: str, ds) -> HeaderFacts:
    def text(keyword: str) -> str:
        return dicom_text(getattr(ds, keyword, None))

    orientation = getattr(ds, "ImageOrientationPatient", None)
    position = getattr(ds, "ImagePositionPatient", None)
    return HeaderFacts(
        path=path, modality=text("Modality"), series_uid=text("SeriesInstanceUID"), study_uid=text("StudyInstanceUID"),
        sop_class=text("SOPClassUID"), sop_uid=text("SOPInstanceUID"),
        image_types=tuple(v.upper() for v in text("ImageType").split("\\") if v),
        patient_id=text("PatientID"), patient_name=text("PatientName"), study_date=text("StudyDate"),
        description=text("SeriesDescription"), series_number=text("SeriesNumber"), kernel=text("ConvolutionKernel"),
        kvp=_number(getattr(ds, "KVP", None)), exposure_mas=_number(getattr(ds, "Exposure", None)),
        slice_thickness_mm=_number(getattr(ds, "SliceThickness", None)), manufacturer=text("Manufacturer"),
        scanner_model=text("ManufacturerModelName"),
        matrix=(int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)),
        orientation=tuple(float(v) for v in orientation) if orientation is not None and len(orientation) == 6
        else None,
        position=tuple(float(v) for v in position) if position is not None and len(position) == 3 else None,
        doses=tuple(frame_doses(ds)) if text("Modality") == "CT" else (), patient_age=text("PatientAge"),
        body_part=text("BodyPartExamined"), study_description=text("StudyDescription"),
        protocol_name=text("ProtocolName"),
        is_dose_object=text("SOPClassUID").startswith(SR_CLASS_PREFIX) or is_dose_screen(ds))


def _read_headers(paths: List[str]) -> List[Tuple[str, Optional[HeaderFacts], Optional[str]]]:
    return [(path, *read_header(path)) for path in paths]


def fallback_key(facts: HeaderFacts, root: Path | str) -> str:
    """The stable key of a series without SeriesInstanceUID: a hash of the folder (relative to the archive
    root, so moving the archive keeps it), StudyInstanceUID or empty, SeriesNumber, modality, matrix and
    orientation (rounded to 0.01). The same files give the same key on every run and machine."""
    folder = os.path.relpath(os.path.dirname(os.path.abspath(facts.path)), os.path.abspath(root))
    orientation = ",".join(f"{v:.2f}".replace("-0.00", "0.00") for v in facts.orientation or ())
    parts = [Path(folder).as_posix(), facts.study_uid, facts.series_number, facts.modality,
             f"{facts.matrix[0]}x{facts.matrix[1]}", orientation]
    return FALLBACK_KEY_PREFIX + hashlib.sha1("|".join(parts).encode()).hexdigest()[:24]


@dataclass
class SeriesEntry:
    """One series of the archive: its files and the header facts a report needs."""

    uid: str
    files: List[str] = field(default_factory=list)
    grouped_by_folder: bool = False
    modality: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_uid: str = ""
    study_date: str = ""
    description: str = ""
    kernel: str = ""
    kvp: Optional[float] = None
    exposure_mas: Optional[float] = None
    slice_thickness_mm: Optional[float] = None
    scanner_model: str = ""
    image_types: set = field(default_factory=set)
    sop_classes: set = field(default_factory=set)
    normals: List[Tuple[float, float, float]] = field(default_factory=list)
    matrix: Tuple[int, int] = (0, 0)
    positions: List[Tuple[float, float, float]] = field(default_factory=list)
    #: the header dose of each file, in the order of :attr:`files` (a tuple per file: one per frame)
    doses: List[Tuple[SliceDose, ...]] = field(default_factory=list)
    manufacturer: str = ""
    patient_age: str = ""
    body_part: str = ""
    study_description: str = ""
    protocol_name: str = ""
    #: Where the series came from when its files are a temporary copy (a DICOM server's address of the series).
    location: Optional[str] = None

    @classmethod
    def from_facts(cls, key: str, facts: HeaderFacts, grouped_by_folder: bool) -> SeriesEntry:
        model = " ".join(part for part in (facts.manufacturer, facts.scanner_model) if part)
        return cls(uid=key, grouped_by_folder=grouped_by_folder, modality=facts.modality,
                   patient_id=facts.patient_id, patient_name=facts.patient_name, study_uid=facts.study_uid,
                   study_date=facts.study_date, description=facts.description, kernel=facts.kernel, kvp=facts.kvp,
                   exposure_mas=facts.exposure_mas, slice_thickness_mm=facts.slice_thickness_mm, scanner_model=model,
                   matrix=facts.matrix, manufacturer=facts.manufacturer, patient_age=facts.patient_age,
                   body_part=facts.body_part, study_description=facts.study_description,
                   protocol_name=facts.protocol_name)

    def add(self, facts: HeaderFacts) -> int:
        """Add one instance; returns its index in :attr:`files`."""
        self.files.append(facts.path)
        self.doses.append(facts.doses)
        self.image_types.update(facts.image_types)
        if facts.sop_class:
            self.sop_classes.add(facts.sop_class)
        self.positions.append(facts.position if facts.position is not None
                              else (0.0, 0.0, float(len(self.positions))))
        if facts.orientation is not None:
            row, column = np.asarray(facts.orientation[:3]), np.asarray(facts.orientation[3:])
            self.normals.append(tuple(np.cross(row, column)))
        return len(self.files) - 1

    def sorted_files(self) -> List[str]:
        """The files ordered along the slice normal (image position), as a reader must stack them."""
        if not self.normals or len(self.positions) != len(self.files):
            return list(self.files)
        normal = np.asarray(self.normals[0])
        keys = [float(np.dot(position, normal)) for position in self.positions]
        return [name for _, name in sorted(zip(keys, self.files))]

    def shown(self, path: str) -> str:
        """How a file of this series is named in the results: its path, or, for a series copied from a DICOM
        server (files named by SOPInstanceUID), the server's address of the instance."""
        if not self.location:
            return path
        return f"{self.location}/instances/{Path(path).stem}"

    def notes(self) -> List[str]:
        """Facts about how the series was put together that a reader of the results must know."""
        return [NO_UID_NOTE] if self.grouped_by_folder else []

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
    #: ``(path, reason)`` of files that are not usable images.
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    #: ``(path, series key, reason)`` of duplicate instances that were not used.
    duplicates: List[Tuple[str, str, str]] = field(default_factory=list)
    #: SOPInstanceUID -> (series key, index in that series' files)
    instances: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    #: ``(path, SOPInstanceUID or the path)`` of structured reports and dose screens, for the dose reader
    dose_objects: List[Tuple[str, str]] = field(default_factory=list)


def instance_decodes(path: str) -> bool:
    """True when the image reader can parse the whole file (a truncated copy cannot)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


def _copy_rank(path: str) -> Tuple[bool, int]:
    try:
        size = os.path.getsize(path)
    except OSError:
        return False, -1
    return instance_decodes(path), size


def _add(scan: ArchiveScan, facts: HeaderFacts, root: Path) -> None:
    if facts.is_dose_object:
        _add_dose_object(scan, facts)
        return
    if facts.series_uid:
        key, by_folder = facts.series_uid, False
    elif facts.is_image:
        key, by_folder = fallback_key(facts, root), True
    else:
        scan.unreadable.append((facts.path, "no SeriesInstanceUID and no image attributes (truncated or not an "
                                            "image)"))
        return
    if facts.sop_uid and facts.sop_uid in scan.instances:
        _keep_better_copy(scan, facts)
        return
    entry = scan.series.get(key)
    if entry is None:
        entry = scan.series[key] = SeriesEntry.from_facts(key, facts, by_folder)
    index = entry.add(facts)
    if facts.sop_uid:
        scan.instances[facts.sop_uid] = (key, index)


def _add_dose_object(scan: ArchiveScan, facts: HeaderFacts) -> None:
    """A structured report or dose screen for the dose reader; of two copies of one instance the larger is
    kept (a truncated copy is smaller) and the other listed as a duplicate."""
    key = facts.sop_uid or f"file:{facts.path}"
    for n, (path, known) in enumerate(scan.dose_objects):
        if known == key:
            loser, winner = (facts.path, path) if _size(path) >= _size(facts.path) else (path, facts.path)
            scan.dose_objects[n] = (winner, key)
            scan.duplicates.append((loser, key, f"duplicate instance (same SOPInstanceUID), not used (the copy "
                                                f"kept is {winner})"))
            return
    scan.dose_objects.append((facts.path, key))


def _keep_better_copy(scan: ArchiveScan, facts: HeaderFacts) -> None:
    """Two files hold the same instance: keep the one that decodes and is larger (a complete copy)."""
    key, index = scan.instances[facts.sop_uid]
    entry = scan.series[key]
    kept = entry.files[index]
    same_size = _size(kept) == _size(facts.path)
    if same_size or _copy_rank(kept) >= _copy_rank(facts.path):
        loser, winner = facts.path, kept
    else:
        entry.files[index] = facts.path
        entry.doses[index] = facts.doses
        if facts.position is not None:
            entry.positions[index] = facts.position
        loser, winner = kept, facts.path
    why = "an identical copy" if same_size else ("truncated or corrupt" if not instance_decodes(loser)
                                                  else "a smaller copy")
    scan.duplicates.append((loser, key, f"duplicate instance (same SOPInstanceUID): {why}, not used "
                                        f"(the copy kept is {winner})"))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _executor(kind: str, workers: int) -> Tuple[Executor, int]:
    """The pool that reads headers and the number of files per task. ``auto`` is threads: measured on a
    2,000-file tree (``benchmarks/scan_speed.py``), threads overlap the file reads and beat processes, whose
    start and result transfer cost more than the parsing they share out."""
    if kind == "auto":
        kind = "thread"
    if kind == "process":
        import multiprocessing

        # 'spawn': the parent may hold threads (PyTorch, the decoding pool) that 'fork' would copy half-made.
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")), \
            PROCESS_SCAN_CHUNK
    if kind != "thread":
        raise ValueError(f"unknown scan executor {kind!r}: thread, process or auto")
    return ThreadPoolExecutor(max_workers=max(1, workers)), 1


def list_files(root: Path | str, unreadable: Optional[List[Tuple[str, str]]] = None) -> List[str]:
    """Every file under ``root`` in a stable order (any nesting, any names, DICOMDIR left out)."""
    files: List[str] = []

    def unreadable_folder(error: OSError) -> None:
        if unreadable is not None:
            unreadable.append((str(error.filename), f"unreadable folder: {error.strerror}"))

    for directory, subdirectories, names in os.walk(root, onerror=unreadable_folder):
        subdirectories.sort()
        files.extend(os.path.join(directory, name) for name in sorted(names) if name.upper() != "DICOMDIR")
    return files


def scan_folder(root: Path | str, workers: int = 4, files: Optional[Iterable[str]] = None,
                executor: str = "auto") -> ArchiveScan:
    """Group every DICOM file under ``root`` (or the ``files`` given) by series.

    ``executor`` is ``thread``, ``process`` or ``auto`` (threads, the faster where measured).
    """
    root = Path(root)
    scan = ArchiveScan()
    files = list_files(root, scan.unreadable) if files is None else list(files)
    workers = max(1, workers)
    pool, chunk = _executor(executor, workers)
    chunks = [files[start:start + chunk] for start in range(0, len(files), chunk)]
    with pool:
        for results in pool.map(_read_headers, chunks):
            for path, facts, error in results:
                if facts is None:
                    scan.unreadable.append((path, error))
                else:
                    _add(scan, facts, root)
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


def scan_archive(root: Path | str, workers: int = 4, executor: str = "auto") -> ArchiveScan:
    """A folder tree, or the files a Slicer DICOM database indexes."""
    if is_slicer_database(root):
        return scan_folder(root, workers, slicer_database_files(root), executor)
    return scan_folder(root, workers, executor=executor)

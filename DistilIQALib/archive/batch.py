"""Batch quality control of a DICOM archive (a folder tree or a Slicer DICOM database).

Series are found by header (see :mod:`DistilIQALib.archive.archive`), split into shards when
asked (``--shard k/n``: a stable hash of the SeriesInstanceUID, so every process or machine
agrees), read in background threads while the model scores the previous series, and
written to the :class:`~DistilIQALib.archive.store.ResultStore` one series per transaction. A rerun
skips what the store already holds for the same weights.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..dose.reports import DoseReport, read_dose_report
from ..dose.series import ScanDose, scan_dose
from ..errors import DistilIQAError, InputError
from ..io.reading import read_dicom_files
from ..progress import Progress
from ..quality.interpretation import DRIVER_ARTEFACTS
from ..quality.preprocessing import window_to_unit
from ..quality.scoring import Scorer, SliceScores
from ..volume import CTVolume
from .archive import MIN_SERIES_SLICES, SeriesEntry, instance_decodes, scan_archive, scan_folder
from .report import write_html_report  # noqa: F401  (the report was part of this module)
from .store import ResultStore
from .stored import SUMMARY_COLUMNS, stored_scores, write_summary_csv  # noqa: F401  (were defined here)

THUMBNAIL_PIXELS = 128
#: A series of dose reports (or other structured reports): recorded in the dose tables, not a series row.
DOSE_SERIES = "dose report series"
#: The start of the note on a scored series whose slices are not all there.
Z_GAP_NOTE = "z gap"


@dataclass
class BatchSummary:
    scored: int = 0
    skipped: int = 0
    failed: int = 0
    already_done: int = 0
    unreadable_files: int = 0
    #: dose reports (and dose screens, non-dose structured reports) recorded in the store's dose tables
    dose_reports: int = 0
    slices: int = 0
    seconds: float = 0.0
    skip_reasons: Dict[str, int] = field(default_factory=dict)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"k/n"`` -> ``(k, n)`` with 1 <= k <= n; ``None`` is the whole archive."""
    if not text:
        return 1, 1
    try:
        part, parts = (int(value) for value in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like k/n (e.g. 2/4), not {text!r}") from None
    if not 1 <= part <= parts:
        raise InputError(f"--shard {text}: k must be between 1 and n")
    return part, parts


def in_shard(series_uid: str, shard: Tuple[int, int]) -> bool:
    part, parts = shard
    return int(hashlib.sha1(series_uid.encode()).hexdigest(), 16) % parts == part - 1


def _record(entry: SeriesEntry, weights_id: str, status: str, reason: Optional[str] = None) -> Dict:
    return {"series_uid": entry.uid, "weights_id": weights_id, "status": status, "reason": reason,
            "patient_id": entry.patient_id, "patient_name": entry.patient_name, "study_uid": entry.study_uid,
            "study_date": entry.study_date, "description": entry.description, "kernel": entry.kernel,
            "kvp": entry.kvp, "exposure_mas": entry.exposure_mas, "slice_thickness_mm": entry.slice_thickness_mm,
            "scanner_model": entry.scanner_model, "num_files": len(entry.files),
            "manufacturer": entry.manufacturer or None, "patient_age": entry.patient_age or None,
            "body_part": entry.body_part or None, "study_description": entry.study_description or None,
            "protocol_name": entry.protocol_name or None,
            "folder": entry.location or (os.path.dirname(entry.files[0]) if entry.files else None)}


def _joined(notes: List[str]) -> Optional[str]:
    return "; ".join(notes) or None


def _thumbnail_png(hu_slice: np.ndarray) -> bytes:
    from PIL import Image

    unit = window_to_unit(np.asarray(hu_slice, dtype=np.float32))
    image = Image.fromarray(np.rint(unit * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class SeriesRead:
    """A series read for scoring: the volume (or why not) and the files left out as corrupt."""

    volume: Optional[CTVolume] = None
    error: Optional[str] = None
    corrupt_files: List[str] = field(default_factory=list)
    #: the scanner's dose per slice and for the series (headers' CTDIvol, Dw, SSDE)
    dose: Optional[ScanDose] = None


def _decodes(path: str) -> bool:
    import SimpleITK as sitk

    try:
        sitk.ReadImage(path)
    except RuntimeError:
        return False
    return True


def _read(entry: SeriesEntry) -> SeriesRead:
    """Read a series, leaving out the slice files that cannot be read (their z stays a gap: every slice keeps
    the z its own file states)."""
    files = entry.sorted_files()
    corrupt = [name for name in files if not instance_decodes(name)]
    try:
        try:
            readable = _enough([name for name in files if name not in corrupt], len(files), entry)
            volume = read_dicom_files(readable, f"series {entry.uid}")
        except InputError:
            # A file whose header parses but whose pixels do not decode: find it, then read the others.
            undecodable = [name for name in files if name not in corrupt and not _decodes(name)]
            if not undecodable:
                raise
            corrupt += undecodable
            readable = _enough([name for name in files if name not in corrupt], len(files), entry)
            volume = read_dicom_files(readable, f"series {entry.uid}")
        return SeriesRead(volume, None, corrupt, _dose(entry, readable, volume))
    except DistilIQAError as error:
        return SeriesRead(None, str(error), corrupt)
    except Exception as error:  # a broken archive file must not stop the run
        return SeriesRead(None, f"{type(error).__name__}: {error}", corrupt)


def _dose(entry: SeriesEntry, files: List[str], volume: CTVolume) -> ScanDose:
    """The series' dose from the header facts the scan kept (no file is read again) and the volume's pixels."""
    index = {path: n for n, path in enumerate(entry.files)}
    doses, positions = [], []
    for path in files:
        n = index.get(path)
        file_doses = entry.doses[n] if n is not None and n < len(entry.doses) else ()
        doses.extend(file_doses)
        positions.extend([entry.positions[n]] * len(file_doses))
    try:
        return scan_dose(volume, doses, positions if len(doses) == len(files) else None)
    except Exception as error:  # the dose must never cost the series its scores
        empty = [None] * volume.num_slices
        return ScanDose(empty, empty, empty, {"dose_note": f"dose not computed ({type(error).__name__}: {error})"})


def _enough(readable: List[str], total: int, entry: SeriesEntry) -> List[str]:
    if len(readable) < MIN_SERIES_SLICES:
        raise InputError(f"only {len(readable)} of the {total} files of series {entry.uid} can be read")
    return readable


def _gap_note(volume: CTVolume, corrupt: List[str]) -> Optional[str]:
    """What a reader of the results must know about slices missing from a scored series."""
    gaps = volume.metadata.get("z_gaps_mm") or []
    if not gaps and not corrupt:
        return None
    parts = []
    if gaps:
        parts.append("slices missing between z " + ", ".join(f"{a:.1f} and {b:.1f} mm" for a, b in gaps))
    if corrupt:
        names = ", ".join(os.path.basename(name) for name in corrupt[:3]) + (" ..." if len(corrupt) > 3 else "")
        parts.append(f"{len(corrupt)} corrupt slice file(s) not scored ({names})")
    return f"{Z_GAP_NOTE}: " + "; ".join(parts)


def run_batch(root: os.PathLike[str] | str, store_path: os.PathLike[str] | str, scorer: Scorer,
              shard: Tuple[int, int] = (1, 1), rescore: bool = False, workers: int = 2,
              progress: Optional[Progress] = None, scan_executor: str = "auto", region: str = "auto") -> BatchSummary:
    """Score every axial CT series under ``root`` into the store at ``store_path``.

    ``region`` is ``auto`` (each slice's body region read from the image) or one region for every series.

    ``workers`` threads decode series ahead of the model and at least 2 workers read the headers
    (``scan_executor``: ``thread``, ``process`` or ``auto``, see :func:`~DistilIQALib.archive.archive.scan_folder`).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"no such folder: {root}")
    progress = progress or Progress()
    summary = BatchSummary()
    started = time.monotonic()
    scan = scan_archive(root, workers=max(2, workers), executor=scan_executor)
    weights_id = scorer.info.weights_id
    with ResultStore(store_path) as store:
        store.add_problems((path, None, f"unreadable: {message}") for path, message in scan.unreadable)
        store.add_problems(scan.duplicates)
        summary.unreadable_files = len(scan.unreadable)
        record_dose_objects(store, scan.dose_objects, shard, rescore, summary)
        done = set() if rescore else store.done(weights_id)
        to_score: List[SeriesEntry] = []
        for uid in sorted(scan.series):
            entry = scan.series[uid]
            if not in_shard(uid, shard):
                continue
            if uid in done:
                summary.already_done += 1
                continue
            reason = entry.skip_reason()
            if reason:
                _write_skipped(store, entry, weights_id, reason, summary)
            else:
                to_score.append(entry)
        total = len(to_score)
        progress.update(0, total, "series")
        # Keep a few series decoding ahead of the model.
        for n, (entry, read) in enumerate(zip(to_score, ahead(to_score, _read, workers))):
            _score_series(store, scorer, entry, read, summary, region)
            summary.seconds = time.monotonic() - started
            progress.update(n + 1, total, f"series ({summary.slices_per_second:.1f} slices/s)")
    summary.seconds = time.monotonic() - started
    return summary


def record_dose_objects(store: ResultStore, objects: Sequence[Tuple[str, str]], shard: Tuple[int, int] = (1, 1),
                        rescore: bool = False, summary: Optional[BatchSummary] = None,
                        shown: Optional[Callable[[str], str]] = None) -> int:
    """Read each ``(path, key)`` dose report, dose screen or other structured report of this shard into the
    store's dose tables (a rerun skips those already there); returns how many were recorded."""
    done = set() if rescore else store.dose_reports_done()
    reports = read_dose_objects([(path, key) for path, key in objects if key not in done and in_shard(key, shard)],
                                shown)
    for report in reports:
        store.write_dose_report(report.row(), report.event_rows())
    if summary is not None:
        summary.dose_reports += len(reports)
    return len(reports)


def read_dose_objects(objects: Sequence[Tuple[str, str]],
                      shown: Optional[Callable[[str], str]] = None) -> List[DoseReport]:
    """Read each ``(path, key)`` dose report, dose screen or other structured report (``shown`` names its path
    in the results)."""
    reports = []
    for path, _key in objects:
        report = read_dose_report(path)
        if shown is not None:
            report.path = shown(path)
        reports.append(report)
    return reports


def _write_skipped(store: ResultStore, entry: SeriesEntry, weights_id: str, reason: str,
                   summary: BatchSummary) -> Dict:
    record = _record(entry, weights_id, "skipped", _joined([reason] + entry.notes()))
    store.write_series(record)
    summary.skipped += 1
    summary.skip_reasons[reason] = summary.skip_reasons.get(reason, 0) + 1
    return record


Loaded = TypeVar("Loaded")


def ahead(items: Sequence, load: Callable[..., Loaded], workers: int) -> Iterator[Loaded]:
    """``load(item)`` for each item, in order, with up to ``workers + 1`` loads running ahead in threads
    (decoding or downloading the next series while the model scores this one)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = deque(pool.submit(load, item) for item in items[:workers + 1])
        following = len(pending)
        while pending:
            result = pending.popleft().result()
            if following < len(items):
                pending.append(pool.submit(load, items[following]))
                following += 1
            yield result


def _score_series(store: ResultStore, scorer: Scorer, entry: SeriesEntry, read: SeriesRead,
                  summary: BatchSummary, region: str = "auto") -> Dict:
    """Score one series read ahead and write it, with its problems, to the store; returns its series record."""
    weights_id = scorer.info.weights_id
    started = time.monotonic()
    store.add_problems((entry.shown(name), entry.uid, "corrupt slice file (cannot be decoded), not scored")
                       for name in read.corrupt_files)
    if read.volume is None:
        record = _record(entry, weights_id, "failed", _joined([read.error] + entry.notes()))
        store.write_series(record)
        store.add_problems([(entry.shown(entry.files[0]) if entry.files else entry.location, entry.uid,
                             read.error)])
        summary.failed += 1
        return record
    volume = read.volume
    scores = scorer.score_volume(volume, region=region)
    if read.dose is not None:
        # "above routine" from the delivered dose where it is known
        scores.ssde_mgy, scores.ssde_upper_bound = read.dose.verdict_ssde(), bool(read.dose.series.get("dw_truncated"))
    notes = entry.notes() + [note for note in [_gap_note(volume, read.corrupt_files)] if note]
    record = _record(entry, weights_id, "scored", _joined(notes))
    fields = _summary_fields(scores)
    # the worst slice with a score; a learned model's score is NaN without a verdict, and may be NaN everywhere
    worst = fields["worst_slice"] if fields["worst_slice"] is not None else len(scores.score) // 2
    record.update(fields, seconds=time.monotonic() - started, worst_thumbnail_png=_thumbnail_png(volume.hu[worst]))
    if np.isfinite(scores.thickness_mm):
        # the thickness the verdicts rest on: the header's when it states a positive one, else the slice spacing
        record["slice_thickness_mm"] = scores.thickness_mm
    rows = scores.rows()
    if read.dose is not None:
        record.update(read.dose.series)
        rows = [{**row, **dose} for row, dose in zip(rows, read.dose.slice_rows())]
    store.write_series(record, rows)
    summary.scored += 1
    summary.slices += len(scores.score)
    return record


@dataclass
class FolderSeries:
    """One series whose files sit in a folder of their own (a copy fetched from a DICOM server, or what the
    listener received), read and ready to score, or to record as skipped or failed."""

    entry: SeriesEntry
    read: Optional[SeriesRead] = None
    skip_reason: Optional[str] = None
    #: Why the series could not be had at all (e.g. its transfer broke off): recorded as failed.
    error: Optional[str] = None
    #: ``(path, series key, message)`` of files that were not used.
    problems: List[Tuple[str, Optional[str], str]] = field(default_factory=list)
    #: ``(path, key)`` of the dose reports, dose screens and other structured reports among the files
    dose_objects: List[Tuple[str, str]] = field(default_factory=list)
    #: those objects as read while their files are there (a server's copy is deleted before the series is stored)
    dose_reports: List[DoseReport] = field(default_factory=list)


def read_series_folder(folder: os.PathLike[str] | str, entry: SeriesEntry,
                       files: Optional[List[str]] = None) -> FolderSeries:
    """Read the series ``entry.uid`` from the files in ``folder`` (or the ``files`` given) as a folder of an
    archive is read: headers, duplicates, skip reasons, corrupt slices. ``entry`` holds what was known
    beforehand (e.g. a server's answer to a query) and stands for the series when none of its files can be read;
    its ``location`` names the files in the results."""
    scan = scan_folder(folder, workers=2, files=files)
    problems = [(entry.shown(path), entry.uid, f"unreadable: {message}") for path, message in scan.unreadable]
    problems += [(entry.shown(path), key, message) for path, key, message in scan.duplicates]
    dose = {"dose_objects": scan.dose_objects, "dose_reports": read_dose_objects(scan.dose_objects, entry.shown)}
    found = scan.series.get(entry.uid)
    if found is None and scan.dose_objects:
        return FolderSeries(entry, skip_reason=DOSE_SERIES, problems=problems, **dose)
    if found is None:
        return FolderSeries(entry, error=f"no readable image of series {entry.uid} among the files received",
                            problems=problems, **dose)
    found.location = entry.location
    reason = found.skip_reason()
    if reason:
        return FolderSeries(found, skip_reason=reason, problems=problems, **dose)
    return FolderSeries(found, _read(found), problems=problems, **dose)


def store_folder_series(store: ResultStore, scorer: Scorer, series: FolderSeries, summary: BatchSummary) -> Dict:
    """Score a :class:`FolderSeries` (or record why not) into the store, replacing what it held for the
    series; returns the series record."""
    store.add_problems(series.problems)
    entry, weights_id = series.entry, scorer.info.weights_id
    for report in series.dose_reports:
        store.write_dose_report(report.row(), report.event_rows())
    summary.dose_reports += len(series.dose_reports)
    if series.skip_reason == DOSE_SERIES:
        return {"series_uid": entry.uid, "status": "dose report", "reason": _dose_series_line(store, series)}
    if series.skip_reason:
        return _write_skipped(store, entry, weights_id, series.skip_reason, summary)
    read = series.read if series.error is None else SeriesRead(None, series.error)
    return _score_series(store, scorer, entry, read, summary)


def _dose_series_line(store: ResultStore, series: FolderSeries) -> str:
    keys = {key for _, key in series.dose_objects}
    rows = [row for row in store.dose_report_rows() if row["sop_uid"] in keys]
    return "; ".join(f"{row['status']}" + (f", DLP total {row['dlp_total_mgycm']:.2f} mGy.cm in "
                                           f"{row['events_found']} event(s)" if row["dlp_total_mgycm"] is not None
                                           else "") + (f" ({row['reason']})" if row["reason"] else "")
                     for row in rows) or "no dose report read"


def _summary_fields(scores: SliceScores) -> Dict:
    """The series' summary numbers the store keeps. ``worst_slice`` is ``None`` when no slice has a score (a
    learned model gives none without a verdict); ``artefact_slices`` is ``None`` when no slice has a verdict."""
    facts = scores.summary()
    regions = facts["regions"]
    drivers = facts.get("drivers") or {}
    worst = facts["worst_slices"]
    return {"num_slices": facts["num_slices"], "mean_score": facts["mean_score"], "min_score": facts["min_score"],
            "worst_slice": worst[0]["slice_index"] if worst else None, "mean_noise_hu": facts["mean_noise_hu"],
            "fraction_inadequate": facts["fraction_inadequate"],
            "region": max(regions, key=regions.get) if regions else None,
            "median_dose_equivalent": facts["median_dose_equivalent"],
            "fraction_above_routine": facts["fraction_above_routine"],
            "above_routine_basis": facts["above_routine_basis"],
            "artefact_slices": drivers.get(DRIVER_ARTEFACTS, 0) if drivers else None}

"""The batch results store: one SQLite file, written one series per transaction.

Tables: ``series`` (one row per series and weights: status scored / skipped / failed, the
header facts, the scanner's dose, summary numbers and a thumbnail of the worst slice), ``slices``
(one row per scored slice), ``problems`` (unreadable files and other non-fatal trouble), and the
scanner's dose reports: ``dose_reports`` (one row per report file, read or not and why) and
``dose_events`` (one row per irradiation event of each report). A crash loses
at most the series in progress; :meth:`ResultStore.done` tells a rerun what to skip.
"""
from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from ..errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL,
    weights_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    patient_id TEXT, patient_name TEXT, study_uid TEXT, study_date TEXT, description TEXT,
    kernel TEXT, kvp REAL, exposure_mas REAL, slice_thickness_mm REAL, scanner_model TEXT,
    num_files INTEGER, num_slices INTEGER,
    mean_score REAL, min_score REAL, worst_slice INTEGER, mean_noise_hu REAL, fraction_inadequate REAL,
    region TEXT, median_dose_equivalent REAL, fraction_above_routine REAL, artefact_slices INTEGER,
    folder TEXT, seconds REAL, written_at TEXT, worst_thumbnail_png BLOB,
    PRIMARY KEY (series_uid, weights_id)
);
CREATE TABLE IF NOT EXISTS slices (
    series_uid TEXT NOT NULL,
    weights_id TEXT NOT NULL,
    slice_index INTEGER NOT NULL,
    z_mm REAL, score REAL, score_spread REAL, noise_hu REAL, dose_equivalent REAL, adequacy TEXT,
    region TEXT, above_routine INTEGER, verdict_note TEXT, effective_noise_hu REAL, driver TEXT,
    PRIMARY KEY (series_uid, weights_id, slice_index)
);
CREATE TABLE IF NOT EXISTS problems (
    path TEXT, series_uid TEXT, message TEXT, written_at TEXT
);
"""

SERIES_COLUMNS = ("series_uid", "weights_id", "status", "reason", "patient_id", "patient_name", "study_uid",
                  "study_date", "description", "kernel", "kvp", "exposure_mas", "slice_thickness_mm",
                  "scanner_model", "num_files", "num_slices",
                  "mean_score", "min_score", "worst_slice", "mean_noise_hu", "fraction_inadequate", "region",
                  "median_dose_equivalent", "fraction_above_routine", "artefact_slices", "folder",
                  "seconds", "written_at", "worst_thumbnail_png",
                  "ctdivol_mgy", "ctdi_phantom", "tube_current_modulation", "dw_cm", "dw_truncated", "ssde_mgy",
                  "scan_length_mm", "dose_note", "patient_age", "manufacturer", "body_part", "study_description",
                  "protocol_name", "above_routine_basis")
#: Columns added after the first release, with their type: an older store gains them when opened.
ADDED_SERIES_COLUMNS = {"slice_thickness_mm": "REAL", "scanner_model": "TEXT", "region": "TEXT",
                        "median_dose_equivalent": "REAL", "fraction_above_routine": "REAL",
                        "artefact_slices": "INTEGER",
                        # the scanner's dose (dose/): CTDIvol from the headers (mean of the slices, mGy), its
                        # phantom ('head16' or 'body32'), AAPM Report 220 water-equivalent diameter at mid-scan
                        # (cm; not the noise-equivalent water_diameter_cm of the slices), SSDE (mGy), and why a
                        # dose value is empty
                        "ctdivol_mgy": "REAL", "ctdi_phantom": "TEXT", "tube_current_modulation": "TEXT",
                        "dw_cm": "REAL", "dw_truncated": "INTEGER", "ssde_mgy": "REAL", "scan_length_mm": "REAL",
                        "dose_note": "TEXT", "patient_age": "TEXT", "manufacturer": "TEXT", "body_part": "TEXT",
                        "study_description": "TEXT", "protocol_name": "TEXT",
                        # what "above routine" was judged from: 'ssde' (the delivered dose against the region's
                        # reference dose), 'noise' (no SSDE known), 'ssde+noise' (some slices each), NULL (neither)
                        "above_routine_basis": "TEXT"}
ADDED_SLICE_COLUMNS = {"water_diameter_cm": "REAL", "region": "TEXT", "above_routine": "INTEGER",
                       "verdict_note": "TEXT", "effective_noise_hu": "REAL", "driver": "TEXT",
                       "ctdivol_mgy": "REAL", "dw_cm": "REAL", "ssde_mgy": "REAL", "above_routine_basis": "TEXT"}
#: ``effective_noise_hu``: a learned model's effective noise (HU), NULL for other models; ``driver``: what set the
#: slice's verdict, ``noise`` (the measured noise) or ``artefacts`` (the network sees worse), '' or NULL without one.
#: ``artefact_slices`` (series): how many of its slices had their verdict set by artefacts (NULL: no verdicts).
SLICE_COLUMNS = ("series_uid", "weights_id", "slice_index", "z_mm", "score", "score_spread", "noise_hu",
                 "water_diameter_cm", "dose_equivalent", "adequacy", "region", "above_routine", "verdict_note",
                 "effective_noise_hu", "driver", "ctdivol_mgy", "dw_cm", "ssde_mgy", "above_routine_basis")


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


#: When each DICOM server was last queried to the end with a given query (``batch --dicomweb --since``
#: starts from there). ``server`` is its address without credentials.
SERVER_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS server_runs (
    server TEXT NOT NULL, query TEXT NOT NULL, started_at TEXT NOT NULL, PRIMARY KEY (server, query)
);
"""


#: The scanner's dose reports (X-Ray Radiation Dose SR and its kin): ``status`` is 'read', 'not read' (a dose
#: screen, a picture of the console) or 'problem' (malformed, not a dose report), ``reason`` says why.
#: ``events_declared``: the report's own Total Number of Irradiation Events; ``events_found``: CT Acquisitions read.
DOSE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dose_reports (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT, series_uid TEXT, path TEXT, sop_class TEXT,
    manufacturer TEXT, scanner_model TEXT, study_date TEXT, patient_id TEXT, patient_age TEXT,
    dlp_total_mgycm REAL, events_declared INTEGER, events_found INTEGER,
    status TEXT, reason TEXT, written_at TEXT
);
CREATE TABLE IF NOT EXISTS dose_events (
    study_uid TEXT, event_uid TEXT, report_sop_uid TEXT, acquisition_type TEXT, localizer INTEGER,
    protocol TEXT, target_region TEXT, ctdivol_mgy REAL, dlp_mgycm REAL, phantom TEXT, scanning_length_mm REAL,
    PRIMARY KEY (study_uid, event_uid, report_sop_uid)
);
"""
DOSE_REPORT_COLUMNS = ("sop_uid", "study_uid", "series_uid", "path", "sop_class", "manufacturer", "scanner_model",
                       "study_date", "patient_id", "patient_age", "dlp_total_mgycm", "events_declared",
                       "events_found", "status", "reason", "written_at")
DOSE_EVENT_COLUMNS = ("study_uid", "event_uid", "report_sop_uid", "acquisition_type", "localizer", "protocol",
                      "target_region", "ctdivol_mgy", "dlp_mgycm", "phantom", "scanning_length_mm")


class ResultStore:
    """An open results file; safe to reopen after a crash (SQLite's journal rolls back a half write)."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(self.path), timeout=60)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.executescript(SCHEMA)
        self.connection.executescript(SERVER_RUNS_SCHEMA)
        self.connection.executescript(DOSE_SCHEMA)
        self._add_missing_columns("main")

    def _add_missing_columns(self, schema: str) -> None:
        with self.connection:
            for table, added in (("series", ADDED_SERIES_COLUMNS), ("slices", ADDED_SLICE_COLUMNS)):
                present = {row[1] for row in self.connection.execute(f"PRAGMA {schema}.table_info({table})")}
                for column, kind in added.items():
                    if column not in present:
                        self.connection.execute(f"ALTER TABLE {schema}.{table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, weights_id: str) -> Set[str]:
        """Series already scored or skipped with these weights (failed ones are tried again)."""
        rows = self.connection.execute(
            "SELECT series_uid FROM series WHERE weights_id = ? AND status IN ('scored', 'skipped')", (weights_id,))
        return {uid for (uid,) in rows}

    def write_series(self, record: Dict, slices: Sequence[Dict] = ()) -> None:
        """Replace this series' rows (and its slices) in one transaction."""
        record = {**record, "written_at": _now()}
        key = (record["series_uid"], record["weights_id"])
        with self.connection:
            self.connection.execute("DELETE FROM slices WHERE series_uid = ? AND weights_id = ?", key)
            self.connection.execute(
                f"INSERT OR REPLACE INTO series ({', '.join(SERIES_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(SERIES_COLUMNS))})",
                [record.get(column) for column in SERIES_COLUMNS])
            self.connection.executemany(
                f"INSERT INTO slices ({', '.join(SLICE_COLUMNS)}) VALUES ({', '.join('?' * len(SLICE_COLUMNS))})",
                [[row.get(column) if column not in ("series_uid", "weights_id") else key[i]
                  for i, column in enumerate(SLICE_COLUMNS)] for row in slices])

    def add_problems(self, problems: Iterable[tuple]) -> None:
        """Record ``(path, series_uid, message)`` entries once each."""
        problems = list(problems)
        if not problems:
            return
        with self.connection:
            known = set(self.connection.execute("SELECT path, series_uid, message FROM problems"))
            self.connection.executemany("INSERT INTO problems VALUES (?, ?, ?, ?)",
                                        [(*p, _now()) for p in problems if tuple(p) not in known])

    def series_rows(self, weights_id: Optional[str] = None) -> List[Dict]:
        query = f"SELECT {', '.join(SERIES_COLUMNS)} FROM series"
        parameters: tuple = ()
        if weights_id:
            query += " WHERE weights_id = ?"
            parameters = (weights_id,)
        query += (" ORDER BY CASE status WHEN 'scored' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END, "
                  "fraction_inadequate DESC, mean_score, series_uid")
        return [dict(zip(SERIES_COLUMNS, row)) for row in self.connection.execute(query, parameters)]

    def slice_rows(self, series_uid: str, weights_id: str) -> List[Dict]:
        rows = self.connection.execute(
            f"SELECT {', '.join(SLICE_COLUMNS)} FROM slices WHERE series_uid = ? AND weights_id = ? "
            "ORDER BY slice_index", (series_uid, weights_id))
        return [dict(zip(SLICE_COLUMNS, row)) for row in rows]

    def problem_rows(self) -> List[Dict]:
        rows = self.connection.execute("SELECT path, series_uid, message FROM problems ORDER BY path")
        return [{"path": p, "series_uid": s, "message": m} for p, s, m in rows]

    def write_dose_report(self, report: Dict, events: Sequence[Dict] = ()) -> None:
        """Replace one dose report's row and its events in one transaction (``report['sop_uid']`` is the key)."""
        report = {**report, "written_at": _now()}
        with self.connection:
            self.connection.execute("DELETE FROM dose_events WHERE report_sop_uid = ?", (report["sop_uid"],))
            self.connection.execute(
                f"INSERT OR REPLACE INTO dose_reports ({', '.join(DOSE_REPORT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(DOSE_REPORT_COLUMNS))})",
                [report.get(column) for column in DOSE_REPORT_COLUMNS])
            self.connection.executemany(
                f"INSERT OR REPLACE INTO dose_events ({', '.join(DOSE_EVENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(DOSE_EVENT_COLUMNS))})",
                [[{**event, "study_uid": report.get("study_uid"), "report_sop_uid": report["sop_uid"]}.get(column)
                  for column in DOSE_EVENT_COLUMNS] for event in events])

    def dose_reports_done(self) -> Set[str]:
        """SOP instance UIDs of the dose reports already recorded (a rerun does not read them again)."""
        return {uid for (uid,) in self.connection.execute("SELECT sop_uid FROM dose_reports")}

    def dose_report_rows(self) -> List[Dict]:
        rows = self.connection.execute(
            f"SELECT {', '.join(DOSE_REPORT_COLUMNS)} FROM dose_reports ORDER BY study_uid, sop_uid")
        return [dict(zip(DOSE_REPORT_COLUMNS, row)) for row in rows]

    def dose_event_rows(self, study_uid: Optional[str] = None) -> List[Dict]:
        query = f"SELECT {', '.join(DOSE_EVENT_COLUMNS)} FROM dose_events"
        parameters: tuple = ()
        if study_uid is not None:
            query += " WHERE study_uid = ?"
            parameters = (study_uid,)
        query += " ORDER BY study_uid, report_sop_uid, event_uid"
        return [dict(zip(DOSE_EVENT_COLUMNS, row)) for row in self.connection.execute(query, parameters)]

    def merge_from(self, other: os.PathLike[str] | str) -> int:
        """Copy every row of another store into this one (its series replace ours); returns its series count."""
        try:
            self.connection.execute("ATTACH DATABASE ? AS other", (str(other),))
        except sqlite3.DatabaseError:
            raise InputError(f"{other} is not a DistilIQA results store (not an SQLite file)") from None
        try:
            _check_is_store(self.connection, other)
            with self.connection:
                count = self.connection.execute("SELECT COUNT(*) FROM other.series").fetchone()[0]
                self.connection.execute("DELETE FROM slices WHERE (series_uid, weights_id) IN "
                                        "(SELECT series_uid, weights_id FROM other.series)")
                # By name: the other store may be older, with fewer columns.
                present = {row[1] for row in self.connection.execute("PRAGMA other.table_info(series)")}
                columns = ", ".join(column for column in SERIES_COLUMNS if column in present)
                self.connection.execute(f"INSERT OR REPLACE INTO series ({columns}) SELECT {columns} FROM other.series")
                present = {row[1] for row in self.connection.execute("PRAGMA other.table_info(slices)")}
                slice_columns = ", ".join(column for column in SLICE_COLUMNS if column in present)
                self.connection.execute(f"INSERT OR REPLACE INTO slices ({slice_columns}) "
                                        f"SELECT {slice_columns} FROM other.slices")
                self.connection.execute("INSERT INTO problems SELECT * FROM other.problems WHERE (path, series_uid, "
                                        "message) NOT IN (SELECT path, series_uid, message FROM problems)")
                self._merge_dose_tables()
        finally:
            self.connection.execute("DETACH DATABASE other")
        return count

    def _merge_dose_tables(self) -> None:
        """Copy the attached store's dose reports and events (insert-or-replace by key); an older store has none."""
        tables = {name for (name,) in self.connection.execute(
            "SELECT name FROM other.sqlite_master WHERE type = 'table'")}
        for table, columns in (("dose_reports", DOSE_REPORT_COLUMNS), ("dose_events", DOSE_EVENT_COLUMNS)):
            if table in tables:
                names = ", ".join(columns)
                if table == "dose_reports":  # a report's events come with it, replacing ours
                    self.connection.execute("DELETE FROM dose_events WHERE report_sop_uid IN "
                                            "(SELECT sop_uid FROM other.dose_reports)")
                self.connection.execute(f"INSERT OR REPLACE INTO {table} ({names}) SELECT {names} FROM other.{table}")

    def last_server_run(self, server: str, query: str) -> Optional[str]:
        """When the last complete run of ``query`` against ``server`` started (ISO date and time), if any."""
        row = self.connection.execute("SELECT started_at FROM server_runs WHERE server = ? AND query = ?",
                                      (server, query)).fetchone()
        return row[0] if row else None

    def record_server_run(self, server: str, query: str, started_at: str) -> None:
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO server_runs VALUES (?, ?, ?)", (server, query, started_at))


def _check_is_store(connection: sqlite3.Connection, attached: os.PathLike[str] | str) -> None:
    """The database attached as ``other`` must be a results store (any version), not another database."""
    tables = {name for (name,) in connection.execute("SELECT name FROM other.sqlite_master WHERE type = 'table'")}
    missing = sorted({"series", "slices", "problems"} - tables)
    if missing:
        raise InputError(f"{attached} is not a DistilIQA results store (no {', '.join(missing)} table)")

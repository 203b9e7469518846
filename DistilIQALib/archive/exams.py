"""The exam table of a results store: built from its stored rows (:func:`DistilIQALib.dose.exams.exam_rows`),
kept in the store's ``exams`` table, written as CSV and as the CMS CT measure's FHIR Bundle.

The table is rebuilt from the whole store after every ``batch`` and ``merge``, so that it is the same whichever
shard scored which series or read which dose report.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

from ..dose import cms
from ..dose.categories import load_mapping
from ..dose.exams import EXAM_COLUMNS, exam_rows
from ..dose.fhir import write_bundle
from .store import ResultStore

EXAMS_SCHEMA = ("CREATE TABLE IF NOT EXISTS exams (study_uid TEXT PRIMARY KEY, "
                + ", ".join(f"{column} {'REAL' if column.endswith(('_mgy', '_mgycm', '_cm', '_hu')) else 'TEXT'}"
                            for column in EXAM_COLUMNS[1:]) + ")")


def store_exam_rows(store: ResultStore, weights_id: Optional[str] = None, category_map: Optional[str] = None,
                    exam_category: Optional[str] = None, size_adjustment: cms.SizeAdjustment = cms.size_specific_dlp
                    ) -> List[Dict]:
    """The exam table of an open store (computed, not read from its ``exams`` table)."""
    return exam_rows(store.series_rows(weights_id), store.dose_report_rows(), store.dose_event_rows(),
                     slices_of=store.slice_rows, mapping=load_mapping(category_map),
                     exam_category_override=exam_category, size_adjustment=size_adjustment, weights_id=weights_id)


def save_exam_table(store: ResultStore, rows: List[Dict]) -> None:
    """Replace the store's ``exams`` table with ``rows`` in one transaction."""
    with store.connection:
        store.connection.execute(EXAMS_SCHEMA)
        store.connection.execute("DELETE FROM exams")
        store.connection.executemany(
            f"INSERT INTO exams ({', '.join(EXAM_COLUMNS)}) VALUES ({', '.join('?' * len(EXAM_COLUMNS))})",
            [[row.get(column) for column in EXAM_COLUMNS] for row in rows])


def write_exams_csv(rows: List[Dict], path: os.PathLike) -> int:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=EXAM_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def patient_ids(store: ResultStore) -> Dict[str, Optional[str]]:
    """Study UID -> patient ID, from the series rows, else the dose reports (the first in UID order)."""
    found: Dict[str, Optional[str]] = {}
    rows = sorted(store.series_rows(), key=lambda r: r["series_uid"]) + store.dose_report_rows()
    for row in rows:
        if row.get("study_uid") and row.get("patient_id") and row["study_uid"] not in found:
            found[row["study_uid"]] = row["patient_id"]
    return found


def write_exam_outputs(store_path: os.PathLike, exams_csv: Optional[os.PathLike] = None,
                       fhir_path: Optional[os.PathLike] = None, weights_id: Optional[str] = None,
                       category_map: Optional[str] = None, exam_category: Optional[str] = None,
                       identify_patients: bool = False, fhir_key: Optional[bytes] = None) -> List[Dict]:
    """Rebuild the store's exam table and write the CSV and FHIR Bundle asked for; returns the rows."""
    with ResultStore(store_path) as store:
        rows = store_exam_rows(store, weights_id, category_map, exam_category)
        save_exam_table(store, rows)
        ids = patient_ids(store) if fhir_path else {}
    if exams_csv:
        write_exams_csv(rows, exams_csv)
    if fhir_path:
        write_bundle(fhir_path, rows, ids, identify_patients, fhir_key)
    return rows

"""The exam table: built from a real batch store (real DICOM series scored by a real model) and its dose tables,
the same from merged shards as from one run, with the exact columns users' scripts read; CSV, FHIR and report."""
import csv
import json
import subprocess
import sys

import pytest
from pydicom.uid import generate_uid

from DistilIQALib.archive.batch import in_shard, run_batch
from DistilIQALib.archive.exams import store_exam_rows, write_exam_outputs
from DistilIQALib.archive.report import write_html_report
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.dose import cms
from DistilIQALib.dose.categories import load_mapping
from DistilIQALib.dose.exams import EXAM_COLUMNS, exam_rows, global_noise_series
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import write_untrained_weights

SPACING = (3.5, 3.5, 5.0)


def _uid(name):
    return generate_uid(entropy_srcs=["distiliqa-exam-test", name])


def _split_pair(study):
    """Two series UIDs of one study that land in different halves of ``--shard k/2``."""
    first = _uid(f"{study} soft")
    for n in range(100):
        second = _uid(f"{study} lung {n}")
        if in_shard(first, (1, 2)) != in_shard(second, (1, 2)):
            return first, second
    raise AssertionError("no split pair")


STUDY_A, STUDY_B, STUDY_C = _uid("study A"), _uid("study B"), _uid("study C (report only)")


def _report(sop, study, total, events, **extra):
    row = {"sop_uid": sop, "study_uid": study, "series_uid": _uid(f"sr {sop}"), "path": f"/reports/{sop}",
           "sop_class": "1.2.840.10008.5.1.4.1.1.88.67", "manufacturer": "GE MEDICAL SYSTEMS",
           "scanner_model": "Revolution CT", "study_date": "20260315", "patient_id": "PA", "patient_age": "052Y",
           "dlp_total_mgycm": total, "events_declared": len(events), "events_found": len(events), "status": "read",
           "reason": None, **extra}
    return row, [{"study_uid": study, "report_sop_uid": sop, "acquisition_type": kind, "localizer": int(kind ==
                  "Constant Angle Acquisition"), "protocol": "ABD PELVIS", "target_region": "Abdomen",
                  "ctdivol_mgy": ctdi, "dlp_mgycm": dlp, "phantom": "body32", "scanning_length_mm": length,
                  "event_uid": event} for event, kind, ctdi, dlp, length in events]


#: Study A: a cumulative report (the scout and first phase) and a later one repeating them and adding a phase.
EVENTS_1 = [("1.9.1", "Constant Angle Acquisition", 0.1, 5.0, 500.0), ("1.9.2", "Spiral Acquisition", 10.0, 450.0,
                                                                        450.0)]
EVENTS_2 = EVENTS_1 + [("1.9.3", "Spiral Acquisition", 12.0, 540.0, 450.0)]
REPORTS = [_report("2.1", STUDY_A, 455.0, EVENTS_1), _report("2.2", STUDY_A, 995.0, EVENTS_2),
           _report("2.3", STUDY_C, 301.0, [("1.8.1", "Spiral Acquisition", 20.0, 300.0, 150.0)],
                   patient_id="PC", study_date="20260402")]


@pytest.fixture(scope="module")
def exam_archive(tmp_path_factory):
    """Two studies of two series each (a soft-tissue 5 mm and a lung-kernel one), each study split across the two
    halves of ``--shard k/2``; study B's patient is 12."""
    root = tmp_path_factory.mktemp("exam_archive")
    for study, patient, age, seed in ((STUDY_A, "PA", "052Y", 1), (STUDY_B, "PB", "012Y", 2)):
        soft, lung = _split_pair(study)
        for uid, kernel, noise in ((soft, "B30f", 12.0), (lung, "B70f", 60.0)):
            volume = phantom_volume(6, size=96, pixel_mm=3.5, noise_sd_hu=noise, seed=seed)
            write_series(volume, root / uid, spacing_mm=SPACING, series_uid=uid, study_uid=study, patient_id=patient,
                         series_description=f"CT ABDOMEN PELVIS {kernel}",
                         extra={"ConvolutionKernel": kernel, "PatientAge": age, "StudyDate": "20260315", "CTDIvol": 9.5,
                                "Manufacturer": "Siemens", "ManufacturerModelName": "SOMATOM Force"})
    weights = write_untrained_weights(root.parent / "exam_weights.safetensors")
    return root, Scorer(str(weights), device="cpu")


def series_facts_read(store_path) -> bool:
    """Whether the batch that wrote the store read the dose and exam facts of the image headers."""
    with ResultStore(store_path) as store:
        return any(row.get("patient_age") for row in store.series_rows())


def _add_reports(store_path, reports):
    with ResultStore(store_path) as store:
        for report, events in reports:
            store.write_dose_report(report, events)


@pytest.fixture(scope="module")
def one_run(exam_archive, tmp_path_factory):
    root, scorer = exam_archive
    store = tmp_path_factory.mktemp("one") / "all.sqlite"
    run_batch(root, store, scorer)
    _add_reports(store, REPORTS)
    return store


def test_exam_rows_have_the_fixed_columns_and_values(one_run):
    with ResultStore(one_run) as store:
        rows = {row["study_uid"]: row for row in store_exam_rows(store)}
    assert all(tuple(row) == EXAM_COLUMNS for row in rows.values())
    assert set(rows) == {STUDY_A, STUDY_B, STUDY_C}
    a, b, c = rows[STUDY_A], rows[STUDY_B], rows[STUDY_C]
    # study A: the DLP is the sum over its unique events (the second report repeats the first two)
    assert a["dlp_total_mgycm"] == 995.0 and a["dlp_source"] == "report"
    # its global noise is the soft-tissue series' (12 HU added), not the B70f one's (60 HU)
    assert a["global_noise_hu"] is not None and a["global_noise_hu"] < 30
    assert a["patient_age"] == "052Y" and a["scanner"] == "Siemens SOMATOM Force"
    assert a["exam_category"] is not None and a["category_source"]
    # study B has no report: its DLP is estimated from the headers' CTDIvol (9.5 mGy, both series one
    # acquisition) over the scanned 6 x 5 mm; the batch read its patient's age (12) from the headers
    assert series_facts_read(one_run)
    assert (b["dlp_source"], b["dlp_total_mgycm"], b["ctdivol_mgy"]) == ("estimate", 28.5, 9.5)
    assert b["patient_age"] == "012Y" and b["cms_reason"].startswith("excluded: patient under 18")
    assert b["cms_out_of_range"] == "unknown"
    # study C has a dose report and no image series: its row is there, its noise unknown; its one report lists
    # every event and states 301 mGy.cm (its event adds up to 300: within the scanner's rounding), so its total
    assert c["dlp_total_mgycm"] == 301.0 and c["dlp_source"] == "report" and c["global_noise_hu"] is None
    assert c["cms_out_of_range"] == "unknown" and "dose report only" in c["cms_reason"]
    assert c["scanner"] == "GE MEDICAL SYSTEMS Revolution CT" and c["study_date"] == "20260402"


def test_a_size_adjustment_can_be_replaced(one_run):
    with ResultStore(one_run) as store:
        series, reports, events = store.series_rows(), store.dose_report_rows(), store.dose_event_rows()
    rows = exam_rows(series, reports, events, size_adjustment=lambda dlp, dw, phantom: dlp / 2.0,
                     exam_category_override="Abdomen and Pelvis Routine Dose")
    a = next(row for row in rows if row["study_uid"] == STUDY_A)
    assert a["size_adjusted_dlp_mgycm"] == 497.5
    assert a["exam_category"] == "Abdomen and Pelvis Routine Dose" and a["category_source"].startswith("override")
    assert a["cms_out_of_range"] in ("yes", "no")
    expected = a["global_noise_hu"] >= 29 or 497.5 >= 644
    assert a["cms_out_of_range"] == ("yes" if expected else "no")


def test_global_noise_series_prefers_soft_thick_long_series():
    mapping = load_mapping()
    base = {"status": "scored", "mean_noise_hu": 10.0}
    series = [{**base, "series_uid": "1", "kernel": "LUNG", "slice_thickness_mm": 5.0, "num_slices": 90},
              {**base, "series_uid": "2", "kernel": "STANDARD", "slice_thickness_mm": 0.625, "num_slices": 700},
              {**base, "series_uid": "3", "kernel": "STANDARD", "slice_thickness_mm": 2.5, "num_slices": 180},
              {**base, "series_uid": "4", "kernel": "SOFT", "slice_thickness_mm": 5.0, "num_slices": 90}]
    assert global_noise_series(series, mapping)["series_uid"] == "3"
    assert global_noise_series(series[:2], mapping)["series_uid"] == "2"
    assert global_noise_series(series[:1], mapping) is None


def test_merged_shards_give_the_exam_table_of_one_run(exam_archive, one_run, tmp_path):
    root, scorer = exam_archive
    parts = [tmp_path / f"part{k}.sqlite" for k in (1, 2)]
    for k, part in enumerate(parts, start=1):
        run_batch(root, part, scorer, shard=(k, 2))
    # the reports of study A land in different parts, and neither part holds all of study A's series
    _add_reports(parts[0], REPORTS[:1])
    _add_reports(parts[1], REPORTS[1:])
    merged = tmp_path / "merged.sqlite"
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "merge", str(merged), *map(str, parts),
                             "--exams", str(tmp_path / "merged.csv"), "--fhir", str(tmp_path / "merged.json"),
                             "--report", str(tmp_path / "merged.html")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exam(s)" in result.stderr and "not the certified measure" in result.stderr
    write_exam_outputs(one_run, tmp_path / "one.csv", tmp_path / "one.json", fhir_key=b"x")
    assert (tmp_path / "merged.csv").read_text() == (tmp_path / "one.csv").read_text()
    with open(tmp_path / "merged.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == EXAM_COLUMNS
        assert len(list(reader)) == 3
    # the store keeps the table, as the report reads it
    with ResultStore(merged) as store:
        kept = store.connection.execute("SELECT study_uid, cms_out_of_range FROM exams ORDER BY study_uid").fetchall()
    assert len(kept) == 3
    bundle = json.loads((tmp_path / "merged.json").read_text())
    assert bundle["resourceType"] == "Bundle"
    page = (tmp_path / "merged.html").read_text()
    assert "Exams and the CMS CT measure (3 exams)" in page and "Monthly trend per scanner" in page
    assert cms.LICENCE.split('"')[1][:40] in page


def test_report_of_a_store_without_an_exam_table(one_run, tmp_path):
    write_html_report(one_run, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "Exams and the CMS CT measure (3 exams)" in page and "2026-03" in page


def test_bad_exam_options_fail_in_one_line(one_run, tmp_path):
    for options, message in ((["--exam-category", "Chest Medium"], "not one of the measure's categories"),
                             (["--category-map", str(tmp_path / "none.json")], "no such category mapping file"),
                             (["--fhir-key-env", "DISTILIQA_NO_SUCH_VARIABLE"], "is not set")):
        result = subprocess.run([sys.executable, "-m", "DistilIQALib", "merge", str(tmp_path / "m.sqlite"),
                                 str(one_run), *options], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr

"""The batch results store: a series and its slices are written together or not at all (even when the
process is killed in the middle), reruns know what is done, merges replace, problems are kept once."""
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from DistilIQALib.archive import store as store_module
from DistilIQALib.archive.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]


def _record(uid, status="scored", weights="w1", **values):
    return {"series_uid": uid, "weights_id": weights, "status": status, **values}


def _slices(count, start=0):
    return [{"slice_index": n, "z_mm": 2.5 * n, "score": 0.5 + n / 100, "score_spread": 0.01, "noise_hu": 10.0,
             "water_diameter_cm": 30.0 + n, "dose_equivalent": 0.3, "adequacy": "borderline"}
            for n in range(start, start + count)]


def _count(path, sql, *parameters):
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, parameters).fetchone()[0]
    finally:
        connection.close()


def test_rewriting_a_series_replaces_its_row_and_its_slices(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write_series(_record("A", mean_score=0.7, kvp=120.0), _slices(3))
        store.write_series(_record("B"), _slices(2))
        store.write_series(_record("A", mean_score=0.6), _slices(2, start=5))
        rows = {row["series_uid"]: row for row in store.series_rows()}
        assert set(rows) == {"A", "B"}
        assert rows["A"]["mean_score"] == 0.6 and rows["A"]["kvp"] is None  # the whole row was replaced
        assert len(rows["A"]["written_at"]) == 19 and rows["A"]["written_at"][10] == "T"
        assert [row["slice_index"] for row in store.slice_rows("A", "w1")] == [5, 6]
        assert store.slice_rows("A", "w1")[1] == {"series_uid": "A", "weights_id": "w1", "slice_index": 6,
                                                  "z_mm": 15.0, "score": 0.56, "score_spread": 0.01,
                                                  "noise_hu": 10.0, "water_diameter_cm": 36.0,
                                                  "dose_equivalent": 0.3, "adequacy": "borderline",
                                                  "region": None, "above_routine": None, "verdict_note": None,
                                                  "effective_noise_hu": None, "driver": None,
                                                  "ctdivol_mgy": None, "dw_cm": None, "ssde_mgy": None,
                                                  "above_routine_basis": None}
        assert len(store.slice_rows("B", "w1")) == 2 and store.slice_rows("B", "w2") == []


def test_a_series_whose_slices_fail_to_write_leaves_no_trace(tmp_path):
    """The slice rows fail half way (a repeated slice index breaks the key): the series row written just
    before them in the same call is rolled back, and an earlier good version of the series stays."""
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        store.write_series(_record("keep", mean_score=0.9), _slices(3))
        broken = _slices(3) + _slices(1)
        with pytest.raises(sqlite3.IntegrityError):
            store.write_series(_record("new"), broken)
        with pytest.raises(sqlite3.IntegrityError):
            store.write_series(_record("keep", mean_score=0.1), broken)
    assert _count(path, "SELECT COUNT(*) FROM series WHERE series_uid = 'new'") == 0
    assert _count(path, "SELECT COUNT(*) FROM slices WHERE series_uid = 'new'") == 0
    assert _count(path, "SELECT mean_score FROM series WHERE series_uid = 'keep'") == 0.9
    assert _count(path, "SELECT COUNT(*) FROM slices WHERE series_uid = 'keep'") == 3


WRITER = """
import sys
from DistilIQALib.archive.store import ResultStore
store = ResultStore(sys.argv[1])
store.write_series({"series_uid": "first", "weights_id": "w", "status": "scored"},
                   [{"slice_index": n, "score": 0.5} for n in range(4)])
rows = [{"slice_index": n, "z_mm": n * 0.5, "score": 0.5, "score_spread": 0.0, "noise_hu": 9.5,
         "dose_equivalent": 0.25, "adequacy": "borderline"} for n in range(int(sys.argv[2]))]
print("writing", flush=True)
store.write_series({"series_uid": "big", "weights_id": "w", "status": "scored", "num_slices": len(rows)}, rows)
print("written", flush=True)
"""


def test_a_process_killed_while_writing_a_series_leaves_none_of_it(tmp_path):
    """SIGKILL lands while the slice rows of a long series are going into the file (the write-ahead log is
    growing): on reopening, the series is absent with all its slices, and the series before it is whole."""
    path = tmp_path / "killed.sqlite"
    wal = Path(str(path) + "-wal")
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "800000"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        size_at_start = wal.stat().st_size
        deadline = time.monotonic() + 120
        while wal.stat().st_size < size_at_start + 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the write finished before it could be interrupted"
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL and "written" not in rest
    with ResultStore(path) as store:
        assert [row["series_uid"] for row in store.series_rows()] == ["first"]
        assert len(store.slice_rows("first", "w")) == 4 and store.slice_rows("big", "w") == []
    assert _count(path, "SELECT COUNT(*) FROM slices") == 4


def test_done_means_scored_or_skipped_with_the_same_weights(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write_series(_record("scored"), _slices(1))
        store.write_series(_record("skipped", status="skipped"))
        store.write_series(_record("failed", status="failed"))
        store.write_series(_record("other", weights="w2"), _slices(1))
        assert store.done("w1") == {"scored", "skipped"}
        assert store.done("w2") == {"other"} and store.done("w3") == set()


def test_series_rows_put_the_worst_scored_series_first(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write_series(_record("a skipped", status="skipped"))
        store.write_series(_record("fail", status="failed"))
        store.write_series(_record("good", fraction_inadequate=0.0, mean_score=0.9))
        store.write_series(_record("bad", fraction_inadequate=0.5, mean_score=0.6))
        store.write_series(_record("fair", fraction_inadequate=0.0, mean_score=0.7))
        store.write_series(_record("elsewhere", weights="w2", fraction_inadequate=0.9))
        # scored (most inadequate first, then lowest mean), then failed, then skipped
        assert [r["series_uid"] for r in store.series_rows("w1")] == ["bad", "fair", "good", "fail", "a skipped"]
        assert [r["series_uid"] for r in store.series_rows()][0] == "elsewhere"
        assert len(store.series_rows()) == 6


def test_problems_are_recorded_once(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_problems([("/b/2.dcm", None, "unreadable"), ("/a/1.dcm", "S", "corrupt")])
        store.add_problems([("/a/1.dcm", "S", "corrupt"), ("/a/1.dcm", "S", "another reason")])
        store.add_problems([])
        assert store.problem_rows() == [{"path": "/a/1.dcm", "series_uid": "S", "message": "corrupt"},
                                        {"path": "/a/1.dcm", "series_uid": "S", "message": "another reason"},
                                        {"path": "/b/2.dcm", "series_uid": None, "message": "unreadable"}]


def test_merging_replaces_the_series_the_other_store_has(tmp_path):
    with ResultStore(tmp_path / "other.sqlite") as other:
        other.write_series(_record("A", mean_score=0.2), _slices(2, start=10))
        other.write_series(_record("C", mean_score=0.4), _slices(1))
        other.add_problems([("/x.dcm", "A", "corrupt"), ("/y.dcm", None, "unreadable")])
    with ResultStore(tmp_path / "main.sqlite") as store:
        store.write_series(_record("A", mean_score=0.8), _slices(3))
        store.write_series(_record("B", mean_score=0.6), _slices(2))
        store.add_problems([("/x.dcm", "A", "corrupt")])
        assert store.merge_from(tmp_path / "other.sqlite") == 2
        scores = {row["series_uid"]: row["mean_score"] for row in store.series_rows()}
        assert scores == {"A": 0.2, "B": 0.6, "C": 0.4}
        assert [row["slice_index"] for row in store.slice_rows("A", "w1")] == [10, 11]
        assert len(store.slice_rows("B", "w1")) == 2 and len(store.slice_rows("C", "w1")) == 1
        assert [p["path"] for p in store.problem_rows()] == ["/x.dcm", "/y.dcm"]
        assert store.merge_from(tmp_path / "other.sqlite") == 2  # merging again changes nothing
        assert len(store.series_rows()) == 3 and len(store.problem_rows()) == 2


def test_a_store_of_the_first_release_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE series (series_uid TEXT NOT NULL, weights_id TEXT NOT NULL, status TEXT "
                       "NOT NULL, reason TEXT, patient_id TEXT, patient_name TEXT, study_uid TEXT, study_date TEXT, "
                       "description TEXT, kernel TEXT, kvp REAL, exposure_mas REAL, num_files INTEGER, "
                       "num_slices INTEGER, mean_score REAL, min_score REAL, worst_slice INTEGER, "
                       "mean_noise_hu REAL, fraction_inadequate REAL, folder TEXT, seconds REAL, written_at TEXT, "
                       "worst_thumbnail_png BLOB, PRIMARY KEY (series_uid, weights_id))")
    connection.execute("INSERT INTO series (series_uid, weights_id, status) VALUES ('old', 'w1', 'scored')")
    connection.commit()
    connection.close()
    with ResultStore(path) as store:
        store.write_series(_record("new", slice_thickness_mm=2.5, scanner_model="Siemens Force"))
        rows = {row["series_uid"]: row for row in store.series_rows()}
    assert rows["new"]["slice_thickness_mm"] == 2.5 and rows["new"]["scanner_model"] == "Siemens Force"
    assert rows["old"]["scanner_model"] is None
    with ResultStore(path) as again:  # opening twice adds nothing twice
        assert len(again.series_rows()) == 2


def test_merging_something_that_is_not_a_store_is_refused_with_the_reason(tmp_path):
    from DistilIQALib.errors import InputError

    (tmp_path / "notes.txt").write_text("not a database at all, just some text that is long enough" * 20)
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE series (series_uid TEXT)")
    other.commit()
    other.close()
    with ResultStore(tmp_path / "main.sqlite") as store:
        store.write_series(_record("A"), _slices(1))
        with pytest.raises(InputError, match="notes.txt is not a DistilIQA results store \\(not an SQLite file\\)"):
            store.merge_from(tmp_path / "notes.txt")
        with pytest.raises(InputError, match="other.sqlite is not a DistilIQA results store \\(no problems, slices "
                                             "table\\)"):
            store.merge_from(tmp_path / "other.sqlite")
        assert [row["series_uid"] for row in store.series_rows()] == ["A"]  # unchanged, and still usable
        store.write_series(_record("B"))
        assert len(store.series_rows()) == 2


def test_a_store_in_a_new_folder_is_created_with_its_folders(tmp_path):
    with ResultStore(tmp_path / "new" / "nested" / "s.sqlite") as store:
        store.write_series(_record("A"))
    assert _count(tmp_path / "new" / "nested" / "s.sqlite", "SELECT COUNT(*) FROM series") == 1


def test_a_writer_waits_for_another_process_holding_the_store(tmp_path):
    """Processes that share one store (shards) take turns: a write waits while another holds the lock, well past
    SQLite's default 5 s wait."""
    import threading

    path = tmp_path / "shared.sqlite"
    ResultStore(path).close()
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other process is writing
    release = threading.Timer(6.0, other.commit)
    release.start()
    started = time.monotonic()
    try:
        with ResultStore(path) as store:
            store.write_series(_record("A"), _slices(2))
    finally:
        release.join()
        other.close()
    assert time.monotonic() - started >= 5.5
    assert _count(path, "SELECT COUNT(*) FROM slices") == 2


#: The tables as the release before the learned dose equivalent wrote them (no effective noise, driver or count
#: of slices artefacts set).
PREVIOUS_SCHEMA = """
CREATE TABLE series (series_uid TEXT NOT NULL, weights_id TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    patient_id TEXT, patient_name TEXT, study_uid TEXT, study_date TEXT, description TEXT, kernel TEXT, kvp REAL,
    exposure_mas REAL, slice_thickness_mm REAL, scanner_model TEXT, num_files INTEGER, num_slices INTEGER,
    mean_score REAL, min_score REAL, worst_slice INTEGER, mean_noise_hu REAL, fraction_inadequate REAL, region TEXT,
    median_dose_equivalent REAL, fraction_above_routine REAL, folder TEXT, seconds REAL, written_at TEXT,
    worst_thumbnail_png BLOB, PRIMARY KEY (series_uid, weights_id));
CREATE TABLE slices (series_uid TEXT NOT NULL, weights_id TEXT NOT NULL, slice_index INTEGER NOT NULL, z_mm REAL,
    score REAL, score_spread REAL, noise_hu REAL, dose_equivalent REAL, adequacy TEXT, water_diameter_cm REAL,
    region TEXT, above_routine INTEGER, verdict_note TEXT, PRIMARY KEY (series_uid, weights_id, slice_index));
CREATE TABLE problems (path TEXT, series_uid TEXT, message TEXT, written_at TEXT);
INSERT INTO series (series_uid, weights_id, status, mean_score) VALUES ('old', 'w1', 'scored', 0.7);
INSERT INTO slices (series_uid, weights_id, slice_index, z_mm, score, verdict_note) VALUES ('old', 'w1', 0, 0.0, 0.7,
    'above routine: the dose could be lowered');
"""


def _learned_slices():
    return [dict(row, effective_noise_hu=12.5 + n, driver="artefacts" if n == 1 else "noise")
            for n, row in enumerate(_slices(3))]


def test_a_store_of_the_previous_release_gains_the_effective_noise_driver_and_artefact_count(tmp_path):
    path = tmp_path / "previous.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript(PREVIOUS_SCHEMA)
    connection.close()
    with ResultStore(path) as store:
        store.write_series(_record("new", artefact_slices=1), _learned_slices())
        rows = {row["series_uid"]: row for row in store.series_rows()}
        old_slices, new_slices = store.slice_rows("old", "w1"), store.slice_rows("new", "w1")
    assert rows["new"]["artefact_slices"] == 1 and rows["old"]["artefact_slices"] is None
    assert [row["driver"] for row in new_slices] == ["noise", "artefacts", "noise"]
    assert [row["effective_noise_hu"] for row in new_slices] == [12.5, 13.5, 14.5]
    assert old_slices[0]["driver"] is None and old_slices[0]["effective_noise_hu"] is None
    assert old_slices[0]["verdict_note"] == "above routine: the dose could be lowered"  # what it held is kept
    connection = sqlite3.connect(path)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(slices)")}
    finally:
        connection.close()
    assert {"effective_noise_hu", "driver"} <= columns
    with ResultStore(path) as again:  # opening twice adds nothing twice
        assert len(again.slice_rows("new", "w1")) == 3


def test_merging_a_store_of_the_previous_release_leaves_the_new_columns_empty(tmp_path):
    previous = tmp_path / "previous.sqlite"
    connection = sqlite3.connect(previous)
    connection.executescript(PREVIOUS_SCHEMA)
    connection.close()
    with ResultStore(tmp_path / "main.sqlite") as store:
        store.write_series(_record("new", artefact_slices=1), _learned_slices())
        assert store.merge_from(previous) == 1
        assert store.slice_rows("old", "w1")[0]["driver"] is None
        assert store.slice_rows("new", "w1")[1]["driver"] == "artefacts"
    # and the other way round: the previous store, opened (upgraded), takes the new one's rows
    with ResultStore(previous) as store:
        assert store.merge_from(tmp_path / "main.sqlite") == 2
        assert [row["effective_noise_hu"] for row in store.slice_rows("new", "w1")] == [12.5, 13.5, 14.5]


def _report(sop_uid, study_uid="S1", **values):
    return {"sop_uid": sop_uid, "study_uid": study_uid, "series_uid": "R" + sop_uid, "status": "read",
            "dlp_total_mgycm": values.pop("dlp", None), **values}


def test_dose_reports_and_their_events_are_kept_replaced_and_merged(tmp_path):
    events = [{"event_uid": "E1", "dlp_mgycm": 10.0, "ctdivol_mgy": 2.0, "localizer": 1},
              {"event_uid": "E2", "dlp_mgycm": 500.0, "ctdivol_mgy": 12.5, "localizer": 0, "phantom": "body32"}]
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.write_dose_report(_report("1", dlp=510.0, events_found=2), events)
        store.write_dose_report(_report("1", dlp=510.0, events_found=1), events[1:])  # a rerun replaces it
        assert [e["event_uid"] for e in store.dose_event_rows()] == ["E2"]
        assert store.dose_event_rows("S1")[0] == {"study_uid": "S1", "event_uid": "E2", "report_sop_uid": "1",
                                                  "acquisition_type": None, "localizer": 0, "protocol": None,
                                                  "target_region": None, "ctdivol_mgy": 12.5, "dlp_mgycm": 500.0,
                                                  "phantom": "body32", "scanning_length_mm": None}
        assert store.dose_event_rows("other") == []
        assert store.dose_reports_done() == {"1"}
    with ResultStore(tmp_path / "b.sqlite") as other:
        other.write_dose_report(_report("1", dlp=510.0, events_found=2), events)
        other.write_dose_report(_report("2", study_uid="S2", status="problem", reason="not a dose report"))
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.merge_from(tmp_path / "b.sqlite")
        assert [(r["sop_uid"], r["status"], r["events_found"]) for r in store.dose_report_rows()] == [
            ("1", "read", 2), ("2", "problem", None)]
        assert [e["event_uid"] for e in store.dose_event_rows()] == ["E1", "E2"]


def test_an_older_store_gains_the_dose_columns_and_merges(tmp_path):
    old = tmp_path / "old.sqlite"
    connection = sqlite3.connect(old)
    connection.executescript(store_module.SCHEMA)  # the first release's tables, without dose columns or tables
    connection.execute("INSERT INTO series (series_uid, weights_id, status) VALUES ('A', 'w1', 'scored')")
    connection.commit()
    connection.close()
    with ResultStore(tmp_path / "new.sqlite") as store:
        assert store.merge_from(old) == 1
        assert store.series_rows()[0]["ssde_mgy"] is None and store.dose_report_rows() == []
    with ResultStore(old) as store:
        store.write_series(_record("B", ctdivol_mgy=18.5, ctdi_phantom="body32", dw_cm=29.0, ssde_mgy=24.0))
        row = [r for r in store.series_rows() if r["series_uid"] == "B"][0]
        assert (row["ctdivol_mgy"], row["ctdi_phantom"], row["dw_cm"], row["ssde_mgy"]) == (18.5, "body32", 29.0,
                                                                                            24.0)

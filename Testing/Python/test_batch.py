"""Batch QC of a generated archive: real DICOM files, real SQLite, a real kill and resume."""
import csv
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from DistilIQALib.archive.archive import NO_UID_NOTE, scan_folder
from DistilIQALib.archive.batch import in_shard, parse_shard, run_batch, write_summary_csv
from DistilIQALib.archive.report import OUTLIER_Z, group_problems, robust_z, write_html_report
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.errors import InputError
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import query_rows

ROOT = Path(__file__).resolve().parents[2]
GOOD_CT = 24
SPACING = (3.5, 3.5, 5.0)
#: Series scored besides the GOOD_CT intact ones: without UIDs, one corrupt slice, one slice without pixels.
DAMAGED_CT = 3
SCORED = GOOD_CT + DAMAGED_CT
#: Series rows of a run: the scored ones, 5 skipped, 1 failed (the structured report goes to the dose tables).
SERIES_ROWS = SCORED + 6
NO_UID = "series without UIDs"  # its key is made by the scan; the tests find it by its note
FORCE = {"Manufacturer": "Siemens", "ManufacturerModelName": "SOMATOM Force", "KVP": "100",
         "ConvolutionKernel": ["Br38f", "3"]}


def _uid(name):
    return generate_uid(entropy_srcs=["distiliqa-batch-test", name])


def _volume(seed, slices=4):
    return phantom_volume(slices, size=96, pixel_mm=3.5, noise_sd_hu=5.0 + 3 * (seed % 7), seed=seed)


def build_archive(root: Path) -> dict:
    """A few dozen series of mixed kinds, in a tree with meaningless names; returns the expected outcomes:
    series key -> (status, start of the reason, number of slice rows)."""
    expected = {}
    for n in range(GOOD_CT):
        uid = _uid(f"ct{n}")
        volume = _volume(n) if n != 9 else phantom_volume(4, size=96, pixel_mm=3.5, noise_sd_hu=250.0, seed=n)
        write_series(volume, root / f"p{n % 5}" / f"s{n:02d}x", spacing_mm=SPACING, series_uid=uid,
                     patient_id=f"P{n % 5}", series_description=f"abdomen {n}", extra=FORCE if n % 4 == 0 else None)
        expected[uid] = ("scored", None, 4)
    # anonymised: no SeriesInstanceUID, no StudyInstanceUID
    for path in write_series(_volume(30), root / "anon" / "export", spacing_mm=SPACING, series_uid=_uid("anon"),
                             extra={"SeriesNumber": 3}):
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID, ds.StudyInstanceUID
        ds.save_as(path)
    expected[NO_UID] = ("scored", NO_UID_NOTE, 4)
    # a truncated partial copy of one slice of an intact series, met first in the walk
    intact = sorted((root / "p2" / "s02x").iterdir())[1].read_bytes()
    (root / "p2" / "a_partial").mkdir()
    (root / "p2" / "a_partial" / "copy.dcm").write_bytes(intact[:len(intact) * 2 // 3])
    # one corrupt slice (pixels cut short) in the middle of a 5-slice series: 4 slices scored, the gap kept
    uid = _uid("corrupt")
    paths = write_series(_volume(31, 5), root / "p3" / "corrupt", spacing_mm=SPACING, series_uid=uid)
    middle = min(paths, key=lambda path: abs(float(pydicom.dcmread(path).ImagePositionPatient[2]) - 10.0))
    middle.write_bytes(middle.read_bytes()[:-3000])
    expected[uid] = ("scored", "z gap", 4)
    uid = _uid("scout")
    write_series(_volume(1, 3), root / "p0" / "scout", spacing_mm=SPACING, series_uid=uid,
                 extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    expected[uid] = ("skipped", "localizer/scout", 0)
    uid = _uid("mr")
    write_series(_volume(2, 3), root / "p1" / "mr", spacing_mm=SPACING, series_uid=uid, modality="MR")
    expected[uid] = ("skipped", "modality MR", 0)
    uid = _uid("sc")
    write_series(_volume(3, 3), root / "p2" / "capture", spacing_mm=SPACING, series_uid=uid,
                 extra={"SOPClassUID": SecondaryCaptureImageStorage})
    expected[uid] = ("skipped", "not a CT image storage object", 0)
    uid = _uid("tiny")
    write_series(_volume(4, 2), root / "p3" / "two", spacing_mm=SPACING, series_uid=uid)
    expected[uid] = ("skipped", "only 2 image(s)", 0)
    uid = _uid("coronal")
    write_series(_volume(5, 4), root / "p3" / "cor", spacing_mm=SPACING, series_uid=uid,
                 row_direction=(1, 0, 0), column_direction=(0, 0, -1))
    expected[uid] = ("skipped", "not axial", 0)
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    report.file_meta.MediaStorageSOPInstanceUID = _uid("dose-sop")
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    report.SOPInstanceUID = _uid("dose-sop")
    report.Modality = "SR"
    report.SeriesInstanceUID = _uid("dose")
    report.save_as(root / "p4" / "dose_report", enforce_file_format=True)  # empty: a dose-table problem row
    # a series whose pixel data are missing in one file, and one with mixed matrix sizes
    uid = _uid("nopixels")
    paths = write_series(_volume(6), root / "p4" / "broken", spacing_mm=SPACING, series_uid=uid)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    expected[uid] = ("scored", "z gap", 3)  # the slice without pixels is left out, its z stays a gap
    uid = _uid("mixed")
    write_series(_volume(7), root / "p4" / "mixed", spacing_mm=SPACING, series_uid=uid)
    extra = write_series(phantom_volume(1, size=80, pixel_mm=3.5), root / "p4" / "mixed_extra",
                         spacing_mm=SPACING, series_uid=_uid("other"), origin_mm=(-179.0, -179.0, 20.0))[0]
    ds = pydicom.dcmread(extra)
    ds.SeriesInstanceUID = uid  # same series, another matrix size
    ds.save_as(extra)
    expected[uid] = ("failed", None, 0)
    # a duplicate instance, a truncated file, garbage and a text note
    first = sorted((root / "p0" / "s00x").iterdir())[0]
    shutil.copy(first, root / "p0" / "copy_of_one.dcm")
    truncated = sorted((root / "p1" / "s01x").iterdir())[0]
    (root / "p1" / "truncated.dcm").write_bytes(truncated.read_bytes()[:200])
    (root / "p2" / "garbage.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "notes.txt").write_text("scanned on the old machine")
    return expected


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    return root, build_archive(root)


@pytest.fixture(scope="module")
def single_run(archive, tiny_weights, tmp_path_factory):
    root, _ = archive
    store = tmp_path_factory.mktemp("single") / "results.sqlite"
    summary = run_batch(root, store, Scorer(str(tiny_weights), device="cpu"), workers=2)
    return store, summary


def _series(store):
    return {uid: (status, reason, mean) for uid, status, reason, mean in
            query_rows(store, "SELECT series_uid, status, reason, mean_score FROM series")}


def _keyed(rows):
    """The rows with the key of the series grouped without UIDs replaced by NO_UID (checked unique)."""
    no_uid = [key for key, (_, reason, _) in rows.items() if reason and NO_UID_NOTE in reason]
    assert len(no_uid) == 1, no_uid
    assert no_uid[0].startswith("nouid-")
    return {NO_UID if key == no_uid[0] else key: value for key, value in rows.items()}


def _slice_counts(store):
    return dict(query_rows(store, "SELECT series_uid, COUNT(*) FROM slices GROUP BY series_uid"))


def _check_outcomes(store, expected):
    rows = _series(store)
    keyed = _keyed(rows)
    assert set(keyed) == set(expected)
    for uid, (status, reason, _) in expected.items():
        assert keyed[uid][0] == status, (uid, keyed[uid])
        if reason:
            assert keyed[uid][1].startswith(reason), keyed[uid]
    no_uid = next(key for key in rows if key.startswith("nouid-"))
    counts = {NO_UID if key == no_uid else key: count for key, count in _slice_counts(store).items()}
    assert counts == {uid: n for uid, (_, _, n) in expected.items() if n}


def test_every_series_has_the_expected_outcome(archive, single_run):
    _, expected = archive
    store, summary = single_run
    _check_outcomes(store, expected)
    assert summary.scored == SCORED and summary.failed == 1 and summary.skipped == 5
    with ResultStore(store) as results:  # the empty structured report is a problem row of the dose tables
        reports = {row["sop_uid"]: row for row in results.dose_report_rows()}
    assert reports[_uid("dose-sop")]["status"] == "problem" and summary.dose_reports == 1
    assert reports[_uid("dose-sop")]["reason"].startswith("not an X-ray radiation dose report")
    with ResultStore(store) as results:
        weights_id = results.series_rows()[0]["weights_id"]
        assert len(results.slice_rows(_uid("ct3"), weights_id)) == 4
        # the slices around the corrupt one keep the z their files state: the gap at 10 mm stays a gap
        assert [row["z_mm"] for row in results.slice_rows(_uid("corrupt"), weights_id)] == [0.0, 5.0, 15.0, 20.0]
        rows = {row["series_uid"]: row for row in results.series_rows()}
        problems = results.problem_rows()
    assert "slices missing between z 5.0 and 15.0 mm" in rows[_uid("corrupt")]["reason"]
    assert "1 corrupt slice file(s) not scored" in rows[_uid("corrupt")]["reason"]
    # multi-valued attributes are DICOM text in the store
    assert rows[_uid("ct4")]["kernel"] == "Br38f\\3" and rows[_uid("ct4")]["kvp"] == 100.0
    assert rows[_uid("ct4")]["scanner_model"] == "Siemens SOMATOM Force" and rows[_uid("ct3")]["kernel"] == "STANDARD"
    messages = {Path(p["path"]).name: p["message"] for p in problems}
    assert summary.unreadable_files == 3  # truncated header, garbage, text
    assert messages["copy.dcm"].startswith("duplicate instance") and "truncated or corrupt" in messages["copy.dcm"]
    assert "copy.dcm" not in messages["copy.dcm"] and "(the copy kept is " in messages["copy.dcm"]
    assert sum(m.startswith("duplicate instance (same SOPInstanceUID): an identical copy") for m in messages.values()) \
        == 1
    assert messages["garbage.bin"] == messages["notes.txt"] == "unreadable: not a DICOM file"
    assert "no SeriesInstanceUID and no image attributes" in messages["truncated.dcm"]
    assert sum("corrupt slice file" in m for m in messages.values()) == 2


def test_no_uid_key_is_stable_and_sharding_uses_it(archive, tmp_path):
    root, _ = archive
    keys = [key for key in scan_folder(root).series if key.startswith("nouid-")]
    moved = tmp_path / "moved"
    shutil.copytree(root / "anon", moved / "anon")
    assert len(keys) == 1 and [key for key in scan_folder(moved).series if key.startswith("nouid-")] == keys


def test_header_scan_in_processes_equals_threads(archive):
    root, _ = archive
    threads, processes = scan_folder(root, 2, executor="thread"), scan_folder(root, 2, executor="process")
    assert {k: v.files for k, v in threads.series.items()} == {k: v.files for k, v in processes.series.items()}
    assert threads.unreadable == processes.unreadable and threads.duplicates == processes.duplicates
    with pytest.raises(ValueError):
        scan_folder(root, 2, executor="fibres")


def test_summary_csv_and_html_report(single_run, tmp_path):
    store, _ = single_run
    assert write_summary_csv(store, tmp_path / "summary.csv") == SERIES_ROWS
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert rows[0]["status"] == "scored" and {"mean_score", "series_uid", "kernel", "scanner_model"} <= set(rows[0])
    assert "Br38f\\3" in {row["kernel"] for row in rows}
    assert not any("[" in row["kernel"] for row in rows)
    write_html_report(store, tmp_path / "report.html", threshold=0.8)
    page = (tmp_path / "report.html").read_text()
    assert page.count('<tr class="') == SERIES_ROWS
    flagged = query_rows(store, "SELECT COUNT(*) FROM series WHERE fraction_inadequate > 0")[0][0]
    assert flagged > 0 and page.count('<tr class="inadequate') == flagged
    assert page.count("data:image/png;base64,") == SCORED + 1 and "<svg" in page and "localizer/scout" in page
    assert "Br38f\\3" in page and "[&#x27;Br38f" not in page and "['Br38f" not in page
    assert "SOMATOM Force / Br38f\\3 / 100 kV / 5 mm" in page and "unknown / STANDARD / 120 kV / 5 mm" in page
    assert NO_UID_NOTE in page and "z gap" in page
    # the very noisy series is the outlier of its protocol
    outliers = page.split("<h2>Outliers")[1].split("<h2>")[0]
    assert "abdomen 9<" in outliers.split("<tbody>")[1].split("</tr>")[0]  # the most extreme first
    # problems grouped by folder and reason, expandable
    problems = page.split("<h2>Problems")[1]
    with ResultStore(store) as results:
        assert problems.count("<details>") == len(group_problems(results.problem_rows())) >= 5
    assert "http://" not in page and "https://" not in page  # self-contained


def test_robust_z_and_problem_groups():
    z = robust_z([0.80, 0.82, 0.78, 0.81, 0.79, 0.20])
    assert abs(z[-1]) > OUTLIER_Z and all(abs(v) < 1.5 for v in z[:-1])
    assert robust_z([0.5] * 5 + [0.9])[-1] == pytest.approx(0.4 / (1.2533 * 0.4 / 6))  # MAD 0: mean deviation
    assert list(robust_z([0.5, 0.5, 0.5])) == [0, 0, 0]
    groups = group_problems([{"path": "/a/1.dcm", "message": "unreadable: not a DICOM file"},
                             {"path": "/a/2.dcm", "message": "unreadable: not a DICOM file"},
                             {"path": "/b/3.dcm", "message": "unreadable: not a DICOM file"},
                             {"path": "/a/4.dcm", "message": "duplicate instance: x (the copy kept is /c/4.dcm)"},
                             {"path": "/a/5.dcm", "message": "duplicate instance: x (the copy kept is /c/5.dcm)"}])
    assert [(g["folder"], g["reason"], len(g["paths"])) for g in groups] == [
        ("/a", "duplicate instance: x", 2), ("/a", "unreadable: not a DICOM file", 2),
        ("/b", "unreadable: not a DICOM file", 1)]


def _bands(mask, min_pixels):
    """(first row, height) of every run of screenshot rows with at least ``min_pixels`` pixels in ``mask``."""
    rows = mask.sum(axis=1) >= min_pixels
    bands, start = [], None
    for y, on in enumerate(list(rows) + [False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            bands.append((start, y - start))
            start = None
    return bands


def test_report_renders_in_headless_chromium(single_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it)")
    write_html_report(single_run[0], tmp_path / "report.html", threshold=0.8)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1400,2600", (tmp_path / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert picture.shape[:2] == (2600, 1400)

    def near(colour, tolerance):
        return np.abs(picture - colour).sum(axis=2) <= tolerance

    # Table headings (#eef) are one line high: no heading breaks inside a word or onto a second line.
    headings = _bands(near([238, 238, 255], 4), 200)
    assert len(headings) >= 3, headings  # protocols, outliers, series
    assert all(height <= 28 for _, height in headings), headings
    # The distribution plots are drawn between the protocol table and the next one: series as dots and boxes,
    # scores (blue) in the top row above noise (red) in the bottom row.
    plot = picture[headings[0][0] + headings[0][1]:headings[1][0]]
    score_marks = np.nonzero(np.abs(plot - [31, 78, 156]).sum(axis=2) < 60)
    noise_marks = np.nonzero(np.abs(plot - [192, 57, 43]).sum(axis=2) < 60)
    assert len(score_marks[0]) > 300 and len(noise_marks[0]) > 300
    assert np.median(score_marks[0]) + 100 < np.median(noise_marks[0])
    assert plot.shape[0] > 400 and (plot.std(axis=2) > 0).sum() > 10000  # not blank
    # The series with inadequate slices, sorted first in the series table, are the highlighted rows: every
    # highlighted screen row lies below the series table's heading (the last heading), and there are some.
    highlighted = np.nonzero(near([250, 219, 216], 6).sum(axis=1) >= 300)[0]
    assert len(highlighted) > 0 and highlighted.min() > headings[-1][0] + headings[-1][1], (highlighted, headings)


def test_rerun_skips_what_is_done_and_rescore_redoes(archive, single_run, tiny_weights, tmp_path):
    root, _ = archive
    store = tmp_path / "copy.sqlite"
    shutil.copy(single_run[0], store)
    scorer = Scorer(str(tiny_weights), device="cpu")
    again = run_batch(root, store, scorer)
    assert again.scored == 0 and again.already_done == SERIES_ROWS - 1 and again.failed == 1
    redo = run_batch(root, store, scorer, rescore=True)
    assert redo.scored == SCORED and _series(store) == _series(single_run[0])


def test_store_of_an_older_version_is_upgraded_and_merged(single_run, tmp_path):
    old = tmp_path / "old.sqlite"
    shutil.copy(single_run[0], old)
    connection = sqlite3.connect(old)
    connection.execute("ALTER TABLE series DROP COLUMN scanner_model")
    connection.execute("ALTER TABLE series DROP COLUMN slice_thickness_mm")
    connection.execute("ALTER TABLE slices DROP COLUMN water_diameter_cm")
    connection.commit()
    connection.close()
    merged = tmp_path / "merged.sqlite"
    with ResultStore(merged) as store:
        assert store.merge_from(old) == SERIES_ROWS
        scored = [row for row in store.series_rows() if row["status"] == "scored"][0]
        uid, weights_id = scored["series_uid"], scored["weights_id"]
        merged_slices = store.slice_rows(uid, weights_id)
    assert _series(merged) == _series(single_run[0])
    assert merged_slices and all(row["water_diameter_cm"] is None for row in merged_slices)
    with ResultStore(single_run[0]) as store:  # what the current version stores: each slice's size
        current = store.slice_rows(uid, weights_id)
    assert [row["score"] for row in current] == [row["score"] for row in merged_slices]
    assert all(row["water_diameter_cm"] > 5 for row in current)
    with ResultStore(old) as store:  # opening an old store adds the new columns
        assert all(row["scanner_model"] is None for row in store.series_rows())
        assert "water_diameter_cm" in store.slice_rows(uid, weights_id)[0]


def test_shards_merged_equal_a_single_run(archive, single_run, tiny_weights, tmp_path):
    root, _ = archive
    scorer = Scorer(str(tiny_weights), device="cpu")
    parts = [tmp_path / f"part{k}.sqlite" for k in (1, 2, 3)]
    for k, part in enumerate(parts, start=1):
        run_batch(root, part, scorer, shard=(k, 3))
    sizes = [len(_series(part)) for part in parts]
    assert all(size > 0 for size in sizes) and sum(sizes) == SERIES_ROWS
    merged = tmp_path / "merged.sqlite"
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "merge", str(merged), *map(str, parts)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _series(merged) == _series(single_run[0])
    assert parse_shard("2/3") == (2, 3) and sum(in_shard(u, (k, 3)) for u in _series(merged) for k in (1, 2, 3)) \
        == SERIES_ROWS
    with pytest.raises(InputError):
        parse_shard("4/3")


def test_killed_run_resumes_with_every_series_exactly_once(archive, tiny_weights, tmp_path):
    """The archive holds a series without UIDs, a truncated duplicate, a corrupt slice, junk, MR and a scout:
    a run killed with SIGKILL and run again scores every CT series exactly once, with the expected status."""
    root, expected = archive
    store = tmp_path / "killed.sqlite"
    arguments = [sys.executable, "-m", "DistilIQALib", "batch", str(root), "--db", str(store), "--weights",
                 str(tiny_weights), "--device", "cpu", "--workers", "1"]
    process = subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    scored = 0
    while time.monotonic() < deadline and process.poll() is None:
        if store.is_file():
            try:
                scored = sum(status == "scored" for status, _, _ in _series(store).values())
            except sqlite3.OperationalError:
                scored = 0
            if scored >= 3:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= scored < SCORED
    first_written = {uid: written for uid, written in _written_at(store).items()}
    result = subprocess.run(arguments + ["--csv", str(tmp_path / "s.csv"), "--report", str(tmp_path / "r.html")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "already in the store" in result.stderr and "Traceback" not in result.stderr
    _check_outcomes(store, expected)
    assert sum(status == "scored" for status, _, _ in _series(store).values()) == SCORED
    # what the killed run finished was kept, not scored again
    assert all(_written_at(store)[uid] == written for uid, written in first_written.items())
    assert query_rows(store, "SELECT COUNT(*) FROM (SELECT DISTINCT series_uid, slice_index FROM slices)") == \
        query_rows(store, "SELECT COUNT(*) FROM slices")


def _written_at(store):
    # INSERT OR REPLACE gives a rewritten row a new rowid
    return dict(query_rows(store, "SELECT series_uid, rowid FROM series WHERE status = 'scored'"))


def test_slicer_dicom_database_folder(tmp_path, tiny_weights):
    """A database in CTK's schema (ctkDICOM.sql) with relative file names, as Slicer keeps it."""
    database = tmp_path / "SlicerDICOMDatabase"
    uids = [_uid(f"db{n}") for n in range(3)]
    for n, uid in enumerate(uids):
        write_series(_volume(10 + n), database / "dicom" / f"study{n}" / uid, spacing_mm=SPACING, series_uid=uid)
    write_series(_volume(20), tmp_path / "not_indexed", spacing_mm=SPACING, series_uid=_uid("outside"))
    connection = sqlite3.connect(database / "ctkDICOM.sql")
    connection.executescript("""
        CREATE TABLE SchemaInfo (Version VARCHAR(1024) NOT NULL);
        INSERT INTO SchemaInfo VALUES ('0.8.0');
        CREATE TABLE Images (SOPInstanceUID VARCHAR(64) NOT NULL, Filename VARCHAR(1024) NOT NULL,
            SeriesInstanceUID VARCHAR(64) NOT NULL, InsertTimestamp VARCHAR(20) NOT NULL,
            DisplayedFieldsUpdatedTimestamp DATETIME NULL, PRIMARY KEY (SOPInstanceUID));
        CREATE TABLE Patients (UID INTEGER PRIMARY KEY AUTOINCREMENT, PatientsName VARCHAR(255) NULL,
            PatientID VARCHAR(255) NULL, InsertTimestamp VARCHAR(20) NOT NULL);
        CREATE TABLE Studies (StudyInstanceUID VARCHAR(64) NOT NULL, PatientsUID INT NOT NULL,
            StudyDate DATE NULL, InsertTimestamp VARCHAR(20) NOT NULL, PRIMARY KEY (StudyInstanceUID));
        CREATE TABLE Series (SeriesInstanceUID VARCHAR(64) NOT NULL, StudyInstanceUID VARCHAR(64) NOT NULL,
            SeriesDescription VARCHAR(255) NULL, Modality VARCHAR(20) NULL, InsertTimestamp VARCHAR(20) NOT NULL,
            PRIMARY KEY (SeriesInstanceUID));
    """)
    for path in sorted((database / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        connection.execute("INSERT INTO Images VALUES (?, ?, ?, '2024-01-01', NULL)",
                           (ds.SOPInstanceUID, str(path.relative_to(database)), ds.SeriesInstanceUID))
    connection.commit()
    connection.close()
    store = tmp_path / "db.sqlite"
    summary = run_batch(database, store, Scorer(str(tiny_weights), device="cpu"))
    assert summary.scored == 3 and set(_series(store)) == set(uids)

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

from DistilIQALib.batch import in_shard, parse_shard, run_batch, write_html_report, write_summary_csv
from DistilIQALib.dicom_writing import write_series
from DistilIQALib.errors import InputError
from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.scoring import Scorer
from DistilIQALib.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]
GOOD_CT = 24
SPACING = (3.5, 3.5, 5.0)


def _uid(name):
    return generate_uid(entropy_srcs=["distiliqa-batch-test", name])


def _volume(seed, slices=4):
    return phantom_volume(slices, size=96, pixel_mm=3.5, noise_sd_hu=5.0 + 3 * (seed % 7), seed=seed)


def build_archive(root: Path) -> dict:
    """A few dozen series of mixed kinds, in a tree with meaningless names; returns the expected outcomes."""
    expected = {}
    for n in range(GOOD_CT):
        uid = _uid(f"ct{n}")
        write_series(_volume(n), root / f"p{n % 5}" / f"s{n:02d}x", spacing_mm=SPACING, series_uid=uid,
                     patient_id=f"P{n % 5}", series_description=f"abdomen {n}")
        expected[uid] = ("scored", None)
    uid = _uid("scout")
    write_series(_volume(1, 3), root / "p0" / "scout", spacing_mm=SPACING, series_uid=uid,
                 extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    expected[uid] = ("skipped", "localizer/scout")
    uid = _uid("mr")
    write_series(_volume(2, 3), root / "p1" / "mr", spacing_mm=SPACING, series_uid=uid, modality="MR")
    expected[uid] = ("skipped", "modality MR")
    uid = _uid("sc")
    write_series(_volume(3, 3), root / "p2" / "capture", spacing_mm=SPACING, series_uid=uid,
                 extra={"SOPClassUID": SecondaryCaptureImageStorage})
    expected[uid] = ("skipped", "not a CT image storage object")
    uid = _uid("tiny")
    write_series(_volume(4, 2), root / "p3" / "two", spacing_mm=SPACING, series_uid=uid)
    expected[uid] = ("skipped", "only 2 image(s)")
    uid = _uid("coronal")
    write_series(_volume(5, 4), root / "p3" / "cor", spacing_mm=SPACING, series_uid=uid,
                 row_direction=(1, 0, 0), column_direction=(0, 0, -1))
    expected[uid] = ("skipped", "not axial")
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    report.file_meta.MediaStorageSOPInstanceUID = _uid("dose-sop")
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    report.SOPInstanceUID = _uid("dose-sop")
    report.Modality = "SR"
    report.SeriesInstanceUID = _uid("dose")
    report.save_as(root / "p4" / "dose_report", enforce_file_format=True)
    expected[_uid("dose")] = ("skipped", "modality SR")
    # a series whose pixel data are missing in one file, and one with mixed matrix sizes
    uid = _uid("nopixels")
    paths = write_series(_volume(6), root / "p4" / "broken", spacing_mm=SPACING, series_uid=uid)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    expected[uid] = ("failed", None)
    uid = _uid("mixed")
    write_series(_volume(7), root / "p4" / "mixed", spacing_mm=SPACING, series_uid=uid)
    extra = write_series(phantom_volume(1, size=80, pixel_mm=3.5), root / "p4" / "mixed_extra",
                         spacing_mm=SPACING, series_uid=_uid("other"), origin_mm=(-179.0, -179.0, 20.0))[0]
    ds = pydicom.dcmread(extra)
    ds.SeriesInstanceUID = uid  # same series, another matrix size
    ds.save_as(extra)
    expected[uid] = ("failed", None)
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
    connection = sqlite3.connect(store)
    try:
        return {uid: (status, reason, mean) for uid, status, reason, mean in
                connection.execute("SELECT series_uid, status, reason, mean_score FROM series")}
    finally:
        connection.close()


def test_every_series_has_the_expected_outcome(archive, single_run):
    _, expected = archive
    store, summary = single_run
    rows = _series(store)
    assert set(rows) == set(expected)
    for uid, (status, reason) in expected.items():
        assert rows[uid][0] == status, (uid, rows[uid])
        if reason:
            assert rows[uid][1].startswith(reason), rows[uid]
    assert summary.scored == GOOD_CT and summary.failed == 2 and summary.skipped == 6
    with ResultStore(store) as results:
        assert len(results.slice_rows(_uid("ct3"), results.series_rows()[0]["weights_id"])) == 4
        problems = results.problem_rows()
    messages = " ".join(p["message"] for p in problems)
    assert summary.unreadable_files == 3  # truncated, garbage, text
    assert "duplicate instance" in messages and "unreadable" in messages


def test_summary_csv_and_html_report(single_run, tmp_path):
    store, _ = single_run
    assert write_summary_csv(store, tmp_path / "summary.csv") == GOOD_CT + 8
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert rows[0]["status"] == "scored" and {"mean_score", "series_uid", "kernel"} <= set(rows[0])
    write_html_report(store, tmp_path / "report.html", threshold=0.8)
    page = (tmp_path / "report.html").read_text()
    assert page.count('<tr class="') == GOOD_CT + 8
    assert page.count("data:image/png;base64,") == GOOD_CT and "<svg" in page and "localizer/scout" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_renders_in_headless_chromium(single_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it)")
    write_html_report(single_run[0], tmp_path / "report.html", threshold=0.8)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,900",
                    (tmp_path / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert picture.shape[:2] == (900, 1400)
    inadequate_pink = (np.abs(picture - [250, 219, 216]).sum(axis=2) < 12).sum()
    table_header = (np.abs(picture - [238, 238, 255]).sum(axis=2) < 6).sum()
    assert table_header > 500 and (inadequate_pink > 0 or picture.std() > 10)


def test_rerun_skips_what_is_done_and_rescore_redoes(archive, single_run, tiny_weights, tmp_path):
    root, _ = archive
    store = tmp_path / "copy.sqlite"
    shutil.copy(single_run[0], store)
    scorer = Scorer(str(tiny_weights), device="cpu")
    again = run_batch(root, store, scorer)
    assert again.scored == 0 and again.already_done == GOOD_CT + 6 and again.failed == 2
    redo = run_batch(root, store, scorer, rescore=True)
    assert redo.scored == GOOD_CT and _series(store) == _series(single_run[0])


def test_shards_merged_equal_a_single_run(archive, single_run, tiny_weights, tmp_path):
    root, _ = archive
    scorer = Scorer(str(tiny_weights), device="cpu")
    parts = [tmp_path / f"part{k}.sqlite" for k in (1, 2, 3)]
    for k, part in enumerate(parts, start=1):
        run_batch(root, part, scorer, shard=(k, 3))
    sizes = [len(_series(part)) for part in parts]
    assert all(size > 0 for size in sizes) and sum(sizes) == GOOD_CT + 8
    merged = tmp_path / "merged.sqlite"
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "merge", str(merged), *map(str, parts)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _series(merged) == _series(single_run[0])
    assert parse_shard("2/3") == (2, 3) and sum(in_shard(u, (k, 3)) for u in _series(merged) for k in (1, 2, 3)) \
        == GOOD_CT + 8
    with pytest.raises(InputError):
        parse_shard("4/3")


def test_killed_run_resumes_with_every_series_exactly_once(archive, tiny_weights, tmp_path):
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
    assert 3 <= scored < GOOD_CT
    result = subprocess.run(arguments + ["--csv", str(tmp_path / "s.csv")], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "already in the store" in result.stderr
    rows = _series(store)
    assert set(rows) == set(expected)
    assert sum(status == "scored" for status, _, _ in rows.values()) == GOOD_CT
    connection = sqlite3.connect(store)
    counts = connection.execute("SELECT series_uid, COUNT(*) FROM slices GROUP BY series_uid").fetchall()
    connection.close()
    assert len(counts) == GOOD_CT and all(count == 4 for _, count in counts)


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

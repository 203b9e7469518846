"""batch --dicomweb against a real Orthanc with its DICOMweb plugin: query, retrieve, score; resume after a
kill; and a server that is down, refuses, is slow, cuts a transfer off or loses a series mid-run (the slow and
broken network is a TCP proxy in front of the real server)."""
import base64
import datetime
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from DistilIQALib.archive.batch import run_batch
from DistilIQALib.archive.dicomweb import SeriesQuery, Server, ServerConfig, run_dicomweb, server_name
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.cli import main
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.progress import Progress
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import ORTHANC_PASSWORD, ORTHANC_USER, query_rows
from .orthanc_server import FaultyProxy, free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH = "Basic " + base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
SPACING = (3.5, 3.5, 5.0)
#: The archive's dates, and not write_series' default date (20240101) that other tests' series on the shared
#: server carry (the receiver tests upload theirs).
ARCHIVE_DATES = "20240102-20241231"


def _uid(name):
    return generate_uid(entropy_srcs=["distiliqa-dicomweb-test", name])


def write_ct(root, name, patient, date, slices=4, seed=0, study=None, modality="CT", extra=None):
    """A phantom series written as real DICOM files; returns its SeriesInstanceUID and files."""
    uid = _uid(name)
    volume = phantom_volume(slices, size=96, pixel_mm=3.5, noise_sd_hu=5.0 + 4 * seed, seed=seed)
    paths = write_series(volume, Path(root) / name, spacing_mm=SPACING, series_uid=uid, patient_id=patient,
                         series_description=name, study_uid=study, modality=modality,
                         extra={"StudyDate": date, **(extra or {})})
    return uid, paths


@pytest.fixture(scope="module")
def archive(orthanc, tmp_path_factory):
    """Five series on the server, also kept as a folder: three CT (two in one study), a CT scout and an MR."""
    root = tmp_path_factory.mktemp("server_archive")
    study1, study2 = _uid("study1"), _uid("study2")
    series = {}
    for name, patient, date, study, slices, seed, modality, extra in [
            ("chest", "QC1", "20240105", study1, 4, 1, "CT", None),
            ("abdomen", "QC1", "20240105", study1, 5, 2, "CT", None),
            ("pelvis", "QC2", "20240320", study2, 4, 3, "CT", None),
            ("scout", "QC2", "20240320", study2, 3, 4, "CT", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}),
            ("knee", "QC2", "20240320", study2, 3, 5, "MR", None)]:
        uid, paths = write_ct(root, name, patient, date, slices, seed, study, modality, extra)
        orthanc.upload(paths)
        series[name] = uid
    return root, series, {"study1": study1, "study2": study2}


def _config(url, **settings):
    return ServerConfig(url, AUTH, **settings)


def _statuses(store):
    return {uid: (status, reason) for uid, status, reason in
            query_rows(store, "SELECT series_uid, status, reason FROM series")}


def _slices(store, uids):
    rows = query_rows(store, "SELECT series_uid, slice_index, z_mm, score, noise_hu FROM slices ORDER BY 1, 2")
    return [row for row in rows if row[0] in uids]


def test_server_series_are_scored_as_from_a_folder_and_never_twice(orthanc, archive, tiny_weights, tmp_path,
                                                                     monkeypatch):
    root, series, _ = archive
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    scorer = Scorer(str(tiny_weights), device="cpu")
    store = tmp_path / "server.sqlite"
    summary = run_dicomweb(_config(orthanc.dicomweb_url), SeriesQuery(study_date=ARCHIVE_DATES), store, scorer)
    assert summary.found == 4  # the MR is not a CT series: the server does not list it
    assert (summary.scored, summary.skipped, summary.failed) == (3, 1, 0)
    statuses = _statuses(store)
    assert statuses[series["scout"]] == ("skipped", "localizer/scout") and series["knee"] not in statuses
    ct = {series[name] for name in ("chest", "abdomen", "pelvis")}
    assert {uid for uid, (status, _) in statuses.items() if status == "scored"} == ct
    # the same files from a folder give the same rows, through the same path
    from_folder = tmp_path / "folder.sqlite"
    run_batch(root, from_folder, scorer)
    assert _slices(store, ct) == _slices(from_folder, ct) and len(_slices(store, ct)) == 13
    folders = dict(query_rows(store, "SELECT series_uid, folder FROM series"))
    assert folders[series["pelvis"]] == (f"{orthanc.dicomweb_url}/studies/{archive[2]['study2']}/series/"
                                         f"{series['pelvis']}")
    # the folder run into the same store finds the server's series done: nothing is scored twice
    again = run_batch(root, store, scorer)
    assert (again.scored, again.already_done, again.skipped) == (0, 4, 1)  # the MR is new, and skipped
    # and the server run finds them done without fetching them
    assert run_dicomweb(_config(orthanc.dicomweb_url), SeriesQuery(study_date=ARCHIVE_DATES), store,
                        scorer).already_done == 4
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary folders are gone


def test_query_filters(orthanc, archive):
    _, series, studies = archive
    server = Server(_config(orthanc.dicomweb_url))

    def found(query, study_date=None):
        return {remote.entry.description for remote in server.find_series(query, study_date)}

    assert found(SeriesQuery(patient_id="QC2")) == {"pelvis", "scout"}
    assert found(SeriesQuery(study_uids=[studies["study1"]])) == {"chest", "abdomen"}
    assert found(SeriesQuery(series_uids=[series["pelvis"], series["chest"]])) == {"pelvis", "chest"}
    assert found(SeriesQuery(patient_id="QC1"), study_date="20240301-") == set()
    assert found(SeriesQuery(patient_id="QC2"), study_date="20240301-20240331") == {"pelvis", "scout"}
    remote = {r.entry.description: r for r in server.find_series(SeriesQuery(patient_id="QC1"), None)}
    assert remote["abdomen"].instances == 5 and remote["abdomen"].entry.patient_id == "QC1"
    assert remote["abdomen"].entry.study_date == "20240105"


def test_since_asks_only_for_studies_from_the_last_complete_run_on(orthanc, tiny_weights, tmp_path):
    scorer = Scorer(str(tiny_weights), device="cpu")
    store, config, query = tmp_path / "since.sqlite", _config(orthanc.dicomweb_url), SeriesQuery(since="last",
                                                                                                 patient_id="SINCE")
    orthanc.upload(write_ct(tmp_path, "since-old", "SINCE", "20230101")[1])
    first = run_dicomweb(config, query, store, scorer)
    assert "no earlier complete run" in first.note and (first.found, first.scored) == (1, 1)
    today = datetime.date.today().strftime("%Y%m%d")
    orthanc.upload(write_ct(tmp_path, "since-new", "SINCE", today, seed=1)[1])
    late = write_ct(tmp_path, "since-late", "SINCE", "20230102", seed=2)  # acquired long ago, sent today
    orthanc.upload(late[1])
    second = run_dicomweb(config, query, store, scorer)
    assert (second.found, second.scored) == (1, 1) and f"dated {today} or later" in second.note
    # --since relies on study dates: a study dated before the last run but sent later is found by a full run
    full = run_dicomweb(config, SeriesQuery(patient_id="SINCE"), store, scorer)
    assert (full.found, full.scored, full.already_done) == (3, 1, 2) and late[0] in _statuses(store)
    assert run_dicomweb(config, SeriesQuery(since="20230102", patient_id="SINCE"), store, scorer).found == 2


def _written_at(store):
    return dict(query_rows(store, "SELECT series_uid, written_at || rowid FROM series"))


def test_killed_run_resumes_and_never_shows_the_credentials(orthanc, tiny_weights, tmp_path):
    uids = []
    for n in range(8):
        uid, paths = write_ct(tmp_path / "files", f"resume{n}", "RESUME", "20240601", seed=n)
        orthanc.upload(paths)
        uids.append(uid)
    secret = tmp_path / "credentials"
    secret.write_text(AUTH + "\n")
    proxy = FaultyProxy(orthanc.http_port, delay_s=0.8)  # a slow link: the run is still going when it is killed
    store, temporary = tmp_path / "resume.sqlite", tmp_path / "tmp"
    temporary.mkdir()
    arguments = [sys.executable, "-m", "DistilIQALib", "batch", "--db", str(store), "--patient-id", "RESUME",
                 "--auth-file", str(secret), "--weights", str(tiny_weights), "--device", "cpu", "--workers", "1"]
    environment = {**__import__("os").environ, "TMPDIR": str(temporary)}
    process = subprocess.Popen(arguments + ["--dicomweb", f"http://127.0.0.1:{proxy.port}/dicom-web"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    deadline, scored = time.monotonic() + 120, 0
    while time.monotonic() < deadline and process.poll() is None and scored < 2:
        if store.is_file():
            try:
                scored = query_rows(store, "SELECT COUNT(*) FROM series WHERE status = 'scored'")[0][0]
            except Exception:  # the first transaction may not be there yet
                scored = 0
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    killed_output = process.communicate()[1].decode()
    proxy.close()
    scored = query_rows(store, "SELECT COUNT(*) FROM series WHERE status = 'scored'")[0][0]
    assert 2 <= scored < len(uids), scored
    assert [path.name for path in temporary.iterdir()] == [f"distiliqa-dicomweb-{process.pid}"]  # left by the kill
    first = _written_at(store)
    result = subprocess.run(arguments + ["--dicomweb", orthanc.dicomweb_url, "--csv", str(tmp_path / "s.csv")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    assert f"{len(uids) - scored} series scored" in result.stderr and f"{scored} already in the store" in result.stderr
    assert sorted(uid for uid, (status, _) in _statuses(store).items() if status == "scored") == sorted(uids)
    assert all(_written_at(store)[uid] == written for uid, written in first.items())  # kept, not redone
    assert list(temporary.iterdir()) == []  # the killed run's folder is removed by the next run
    password = ORTHANC_PASSWORD.encode()
    for text in (killed_output, result.stderr, (tmp_path / "s.csv").read_text()):
        assert ORTHANC_PASSWORD not in text and AUTH.split()[1] not in text
    assert password not in store.read_bytes() and AUTH.split()[1].encode() not in store.read_bytes()


def _cli(capsys, *arguments):
    code = main(["batch", *arguments])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1]


def test_server_trouble_is_one_line_naming_the_server(orthanc, tiny_weights, tmp_path, capsys, monkeypatch):
    common = ["--db", str(tmp_path / "r.sqlite"), "--weights", str(tiny_weights), "--device", "cpu"]
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    started = time.monotonic()
    assert _cli(capsys, "--dicomweb", down, "--retries", "1", *common) == (
        3, f"distiliqa: error: cannot reach the DICOMweb server {down} (connection refused) (2 tries)")
    assert time.monotonic() - started >= 1.0  # one pause of 1 s before the second try
    assert _cli(capsys, "--dicomweb", orthanc.dicomweb_url, *common) == (
        3, f"distiliqa: error: {orthanc.dicomweb_url} refused the series query: 401 Unauthorized (credentials "
           "missing, wrong or expired; give them with --auth-env VAR or --auth-file FILE)")
    wrong = "Basic " + base64.b64encode(f"{ORTHANC_USER}:wrong-password-81".encode()).decode()
    monkeypatch.setenv("PACS_AUTH", wrong)
    code, line = _cli(capsys, "--dicomweb", orthanc.dicomweb_url, "--auth-env", "PACS_AUTH", *common)
    assert code == 3 and "401 Unauthorized" in line and wrong.split()[1] not in line
    monkeypatch.setenv("PACS_AUTH", AUTH)
    code, line = _cli(capsys, "--dicomweb", f"{orthanc.url}/no-dicomweb-here", "--auth-env", "PACS_AUTH", *common)
    assert (code, line) == (3, f"distiliqa: error: {orthanc.url}/no-dicomweb-here answered 404 Not Found to the "
                                f"series query: is {orthanc.url}/no-dicomweb-here the DICOMweb root (e.g. "
                                "http://pacs:8042/dicom-web)?")
    proxy = FaultyProxy(orthanc.http_port, delay_s=3.0)
    slow = f"http://127.0.0.1:{proxy.port}/dicom-web"
    try:
        assert _cli(capsys, "--dicomweb", slow, "--auth-env", "PACS_AUTH", "--timeout", "0.5", "--retries", "0",
                    *common) == (3, f"distiliqa: error: the DICOMweb server {slow} did not answer the series query "
                                    "within 0.5 s")
    finally:
        proxy.close()
    assert _cli(capsys, "--dicomweb", "http://qc:hunter2@pacs/dicom-web", *common) == (
        2, "distiliqa: error: put no credentials or query in the URL of http://pacs/dicom-web: give the credentials "
           "with --auth-env VAR or --auth-file FILE")
    assert _cli(capsys, "--dicomweb", down, "--study-date", "2024-01", *common)[1] == (
        "distiliqa: error: --study-date must look like 20240101-20240131 (either end may be left open), not "
        "'2024-01'")
    assert _cli(capsys, str(tmp_path), "--since", *common)[1] == "distiliqa: error: --since needs --dicomweb URL"
    assert _cli(capsys, "--dicomweb", down, "--auth-env", "NOT_SET_ANYWHERE", *common)[1] == (
        "distiliqa: error: the environment variable NOT_SET_ANYWHERE (--auth-env) is not set")
    monkeypatch.setenv("PACS_AUTH", "Bearer first-half\nsecond-half")
    code, line = _cli(capsys, "--dicomweb", down, "--auth-env", "PACS_AUTH", *common)
    assert (code, line) == (2, "distiliqa: error: the credentials in the environment variable PACS_AUTH contain a "
                               "line break or another control character")
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)
    monkeypatch.setitem(sys.modules, "dicomweb_client.api", None)
    assert _cli(capsys, "--dicomweb", down, *common) == (
        2, "distiliqa: error: reading from a DICOMweb server needs the package dicomweb-client: pip install "
           "dicomweb-client (or pip install 'DistilIQALib[server]')")


def test_a_transfer_cut_off_fails_that_series_and_a_rerun_scores_it(orthanc, archive, tiny_weights, tmp_path):
    _, series, _ = archive
    scorer, store = Scorer(str(tiny_weights), device="cpu"), tmp_path / "cut.sqlite"
    query = SeriesQuery(series_uids=[series["pelvis"], series["abdomen"]])
    proxy = FaultyProxy(orthanc.http_port, cut_after_bytes=30_000)  # passes the query, cuts each series
    cut_url = f"http://127.0.0.1:{proxy.port}/dicom-web"
    try:
        summary = run_dicomweb(_config(cut_url, retries=1, backoff_s=0.01), query, store, scorer)
    finally:
        proxy.close()
    assert (summary.found, summary.failed, summary.scored) == (2, 2, 0) and proxy.cuts == 4  # each tried twice
    for uid in (series["pelvis"], series["abdomen"]):
        status, reason = _statuses(store)[uid]
        assert status == "failed" and reason.startswith(f"the transfer of series {uid} from {cut_url} broke off ")
        assert reason.endswith(" (2 tries)")
    problems = query_rows(store, "SELECT path, series_uid FROM problems")
    assert {uid for _, uid in problems} == {series["pelvis"], series["abdomen"]}
    assert all(path.startswith(f"{cut_url}/studies/") for path, _ in problems)
    rerun = run_dicomweb(_config(orthanc.dicomweb_url), query, store, scorer)
    assert (rerun.scored, rerun.failed) == (2, 0)
    assert {status for status, _ in _statuses(store).values()} == {"scored"}


def test_series_deleted_or_thinned_during_the_run(orthanc, tiny_weights, tmp_path):
    uids = {}
    for n, name in enumerate(("kept", "deleted", "thinned")):
        uids[name], paths = write_ct(tmp_path, f"gone-{name}", "GONE", "20240701", slices=5, seed=n)
        orthanc.upload(paths)

    def meanwhile(done, total, stage):
        # after the query and before any transfer: one series is deleted, two images of another
        if done == 0:
            orthanc.delete(orthanc.lookup(uids["deleted"]))
            for instance in orthanc.instance_ids(uids["thinned"])[:2]:
                orthanc.delete(instance, "instances")

    scorer, store, query = Scorer(str(tiny_weights), device="cpu"), tmp_path / "gone.sqlite", SeriesQuery(
        patient_id="GONE")
    config = _config(orthanc.dicomweb_url, retries=1, backoff_s=0.01)
    summary = run_dicomweb(config, query, store, scorer, progress=Progress(meanwhile))
    assert (summary.found, summary.scored, summary.failed) == (3, 1, 2)
    with ResultStore(store) as results:  # a run with failures does not move --since on
        assert results.last_server_run(config.name, query.key()) is None
    statuses = _statuses(store)
    assert statuses[uids["kept"]] == ("scored", None)
    assert statuses[uids["deleted"]] == ("failed", f"{server_name(orthanc.dicomweb_url)} answered 404 Not Found to "
                                                   f"series {uids['deleted']} (deleted since the query?)")
    assert statuses[uids["thinned"]] == ("failed", f"the transfer of series {uids['thinned']} from "
                                                   f"{orthanc.dicomweb_url} broke off (3 of the 5 instances the "
                                                   "query announced arrived) (2 tries)")
    rerun = run_dicomweb(config, query, store, scorer)
    assert (rerun.found, rerun.scored, rerun.already_done) == (2, 1, 1)
    assert query_rows(store, "SELECT num_slices FROM series WHERE series_uid = ?", (uids["thinned"],)) == [(3,)]
    with ResultStore(store) as results:
        assert results.last_server_run(config.name, query.key()) is not None


def test_a_studys_dose_report_series_is_retrieved_into_the_dose_tables(orthanc, tiny_weights, tmp_path):
    import pydicom

    study = _uid("dose-study")
    uid, paths = write_ct(tmp_path, "dose-ct", "DOSE1", "20220601", study=study, extra={"CTDIvol": 9.5})
    report = pydicom.dcmread(ROOT / "Testing" / "Data" / "dose" / "ge_revolution_rdsr.dcm")
    report.StudyInstanceUID, report.PatientID, report.StudyDate = study, "DOSE1", "20220601"
    report.SeriesInstanceUID, report.SOPInstanceUID = _uid("dose-sr-series"), _uid("dose-sr")
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.save_as(tmp_path / "rdsr.dcm")
    orthanc.upload(paths + [tmp_path / "rdsr.dcm"])
    store = tmp_path / "dose.sqlite"
    try:
        summary = run_dicomweb(_config(orthanc.dicomweb_url), SeriesQuery(study_uids=[study]), store,
                               Scorer(str(tiny_weights), device="cpu"))
    finally:  # other tests count the session's series
        orthanc.delete(orthanc.lookup(study, "Study"), "studies")
    assert summary.scored == 1 and summary.failed == 0 and summary.dose_reports == 1
    with ResultStore(store) as results:
        [row] = results.dose_report_rows()
        events = results.dose_event_rows(study)
        [series] = results.series_rows()
    assert (row["sop_uid"], row["study_uid"], row["status"]) == (_uid("dose-sr"), study, "read"), row["reason"]
    assert row["dlp_total_mgycm"] == pytest.approx(1174.95) and row["events_found"] == 12 and len(events) == 12
    assert row["path"].startswith(f"{orthanc.dicomweb_url}/studies/{study}/series/{_uid('dose-sr-series')}")
    assert series["series_uid"] == uid and series["ctdivol_mgy"] == 9.5


def test_a_server_error_quoting_the_requests_headers_shows_no_credentials(tmp_path, capsys, monkeypatch):
    """A gateway before the archive whose error quotes the request's headers in its status line (as some proxies
    do): the one-line error names the server and the status, never the credentials."""
    import http.server

    from .conftest import write_untrained_weights

    heard = []

    class QuotingGateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            authorization = self.headers.get("Authorization", "")
            heard.append(authorization)
            self.send_response(502, f"Bad Gateway (upstream refused GET with Authorization: {authorization}; "
                                    f"token {authorization.split()[-1]})")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *arguments):
            pass

    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuotingGateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{gateway.server_address[1]}/dicom-web"
    weights = write_untrained_weights(tmp_path / "w.safetensors", input_size=64)
    monkeypatch.setenv("PACS_AUTH", AUTH)
    try:
        code = main(["batch", "--dicomweb", url, "--auth-env", "PACS_AUTH", "--retries", "0", "--db",
                     str(tmp_path / "r.sqlite"), "--weights", str(weights), "--device", "cpu"])
    finally:
        gateway.shutdown()
        gateway.server_close()
    output = capsys.readouterr()
    assert heard and heard[0] == AUTH  # the credentials were sent, and quoted back
    assert (code, output.err.strip().splitlines()[-1]) == (
        3, f"distiliqa: error: {url} answered the series query with 502 Bad Gateway (upstream refused GET with "
           "Authorization: <credentials>; token <credentials>)")
    for text in (output.err, output.out):
        assert AUTH.split()[1] not in text and ORTHANC_PASSWORD not in text

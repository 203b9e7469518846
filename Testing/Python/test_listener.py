"""listen: the DICOM C-STORE receiver in a process of its own, fed by a real Orthanc (``/modalities/{id}/store``)
and by pynetdicom senders (one of them killed halfway through a series); stopped with SIGTERM and SIGKILL."""
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from DistilIQALib.archive.listener import PARTIAL_SUFFIX, SCORED_MARKER, Receiver, image_storage_classes
from DistilIQALib.cli import main
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import RECEIVER_AET, RECEIVER_MODALITY, query_rows

ROOT = Path(__file__).resolve().parents[2]
CT_IMAGE_STORAGE, BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.11"


def _series(folder, name, slices, seed=0):
    uid = generate_uid(entropy_srcs=["distiliqa-listener-test", name])
    paths = write_series(phantom_volume(slices, size=96, pixel_mm=3.5, noise_sd_hu=5.0 + 4 * seed, seed=seed),
                         Path(folder) / name, spacing_mm=(3.5, 3.5, 5.0), series_uid=uid, series_description=name)
    return uid, sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


class Listener:
    """``python -m DistilIQALib listen`` in a child process, its log lines read as they come."""

    def __init__(self, port, db, weights, series_timeout_s, *options):
        arguments = [sys.executable, "-m", "DistilIQALib", "listen", "--port", str(port), "--ae-title", RECEIVER_AET,
                     "--db", str(db), "--host", "127.0.0.1", "--series-timeout", str(series_timeout_s),
                     "--weights", str(weights), "--device", "cpu", *map(str, options)]
        self.process = subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines = []
        self._new = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("listening on 127.0.0.1 port")

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line.rstrip("\n"))

    def wait_for(self, text, timeout_s=90):
        deadline = time.monotonic() + timeout_s
        for line in self.lines:
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None and self._new.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {self.lines}")

    def stop(self, number=signal.SIGTERM):
        self.process.send_signal(number)
        return self.process.wait(30)


def _send(port, paths, then="release"):
    """A modality sending ``paths`` over one association (asking also for an SR context, which must be
    refused); ``then`` is ``release`` or ``hang`` (keep the association open: the test kills the sender)."""
    code = textwrap.dedent(f"""
        import sys, time, pydicom
        from pynetdicom import AE
        ae = AE(ae_title="SCANNER")
        for uid in ({CT_IMAGE_STORAGE!r}, {BASIC_TEXT_SR!r}, "1.2.840.10008.1.1"):
            ae.add_requested_context(uid)
        assoc = ae.associate("127.0.0.1", {port}, ae_title={RECEIVER_AET!r})
        assert assoc.is_established
        print("rejected", *sorted(cx.abstract_syntax for cx in assoc.rejected_contexts), flush=True)
        print("echo", hex(assoc.send_c_echo().Status), flush=True)
        for path in sys.argv[1:]:
            print("stored", hex(assoc.send_c_store(pydicom.dcmread(path)).Status), flush=True)
        if {then!r} == "hang":
            time.sleep(120)
        assoc.release()
    """)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, paths)], stdout=subprocess.PIPE, text=True)


def test_pushed_series_are_scored_once_quiet_and_again_when_more_arrive(orthanc, tiny_weights, tmp_path):
    port = orthanc.modalities[RECEIVER_MODALITY][1]
    db, storage = tmp_path / "received.sqlite", tmp_path / "received_received"
    pushed, pushed_files = _series(tmp_path / "files", "pushed", 5, seed=1)
    half, half_files = _series(tmp_path / "files", "half", 6, seed=2)
    orthanc.upload(pushed_files)
    listener = Listener(port, db, tiny_weights, series_timeout_s=1)
    try:
        orthanc.rest("POST", f"/modalities/{RECEIVER_MODALITY}/echo", json={})  # C-ECHO from the PACS
        answer = orthanc.push(RECEIVER_MODALITY, pushed)
        assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (5, 0)
        # acknowledged means on disk: every image is there when the PACS hears back, before any scoring
        assert len(list((storage / pushed).glob("*.dcm"))) == 5
        line = listener.wait_for(f"series {pushed} (pushed), 5 image(s): scored 5 slices: ")
        assert line.startswith("distiliqa: listen: ") and ", mean score " in line and ", worst slice " in line
        row = query_rows(db, "SELECT status, num_slices FROM series WHERE series_uid = ?", (pushed,))
        assert row == [("scored", 5)]

        # a modality that dies after 3 of 6 images: the 3 are scored, the receiver lives on
        sender = _send(port, half_files[:3], then="hang")
        replies = [sender.stdout.readline().split() for _ in range(5)]
        assert replies[0] == ["rejected", BASIC_TEXT_SR]  # not an image storage class: refused
        assert replies[1:] == [["echo", "0x0"]] + [["stored", "0x0"]] * 3
        sender.send_signal(signal.SIGKILL)
        sender.wait()
        listener.wait_for(f"series {half} (half), 3 image(s): scored 3 slices")
        # the rest arrives later: scored again with all 6
        rest = _send(port, half_files[3:])
        assert rest.communicate(timeout=60)[0].split().count("0x0") == 4 and rest.returncode == 0
        listener.wait_for(f"series {half} (half), 6 image(s): scored 6 slices")
        assert query_rows(db, "SELECT COUNT(*) FROM slices WHERE series_uid = ?", (half,)) == [(6,)]
        assert sorted(query_rows(db, "SELECT z_mm FROM slices WHERE series_uid = ?", (half,))) == [
            (5.0 * n,) for n in range(6)]
    finally:
        code = listener.stop(signal.SIGTERM)
    assert code == 0 and listener.lines[-1] == "distiliqa: listen: stopped"
    assert not [line for line in listener.lines if "Traceback" in line or "error" in line.lower()]
    assert len([line for line in listener.lines if f"series {half}" in line]) == 2


def test_a_restart_scores_what_was_received_and_not_yet_scored(orthanc, tiny_weights, tmp_path):
    port = orthanc.modalities[RECEIVER_MODALITY][1]
    db, storage = tmp_path / "restart.sqlite", tmp_path / "restart_received"
    uid, files = _series(tmp_path / "files", "restart", 4, seed=3)
    orthanc.upload(files)
    listener = Listener(port, db, tiny_weights, series_timeout_s=600)
    orthanc.push(RECEIVER_MODALITY, uid)
    assert listener.stop(signal.SIGKILL) == -signal.SIGKILL  # killed before the series was quiet long enough
    assert len(list((storage / uid).glob("*.dcm"))) == 4 and not (storage / uid / SCORED_MARKER).exists()
    (storage / uid / f"never-acknowledged.dcm{PARTIAL_SUFFIX}").write_bytes(b"half an image")
    started = time.monotonic()
    again = Listener(port, db, tiny_weights, series_timeout_s=600)
    try:
        again.wait_for("1 series received earlier and not scored: scoring them now")
        again.wait_for(f"series {uid} (restart), 4 image(s): scored 4 slices")
        assert time.monotonic() - started < 600
    finally:
        assert again.stop(signal.SIGTERM) == 0
    assert not list((storage / uid).glob("*" + PARTIAL_SUFFIX))
    # scored and marked: the next start finds nothing to do
    receiver = Receiver(storage, db, Scorer(str(tiny_weights), device="cpu"), host="127.0.0.1")
    receiver._pick_up_unscored()
    assert receiver.pending() == []


def test_receiver_trouble_is_one_line(tiny_weights, tmp_path, capsys, monkeypatch):
    common = ["--db", str(tmp_path / "r.sqlite"), "--weights", str(tiny_weights), "--device", "cpu",
              "--host", "127.0.0.1"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["listen", "--port", str(port), "--ae-title", "QC", *common]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"distiliqa: error: cannot listen on port {port}: Address already in use")
    assert main(["listen", "--port", "11112", "--ae-title", "A_TITLE_FAR_TOO_LONG", *common]) == 2
    assert capsys.readouterr().err.strip() == (
        "distiliqa: error: --ae-title 'A_TITLE_FAR_TOO_LONG': an AE title has 1 to 16 ASCII characters, no backslash")
    monkeypatch.setitem(sys.modules, "pynetdicom", None)
    assert main(["listen", "--port", "11112", "--ae-title", "QC", *common]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "distiliqa: error: the DICOM receiver needs the package pynetdicom: pip install pynetdicom (or pip install "
        "'DistilIQALib[server]')")


def test_only_image_storage_classes_are_offered():
    offered = set(image_storage_classes())
    assert {CT_IMAGE_STORAGE, "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.7"} <= offered  # CT, enhanced, SC
    assert BASIC_TEXT_SR not in offered and "1.2.840.10008.5.1.4.1.1.88.67" not in offered  # SR, dose report
    assert "1.2.840.10008.1.1" not in offered  # verification is offered on its own


def test_a_dose_report_sent_by_storescu_lands_in_the_dose_tables(tiny_weights, tmp_path):
    import shutil

    from .orthanc_server import free_port

    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (Debian package dcmtk)")
    report = ROOT / "Testing" / "Data" / "dose" / "ge_revolution_rdsr.dcm"
    port, db = free_port(), tmp_path / "dose.sqlite"
    listener = Listener(port, db, tiny_weights, series_timeout_s=0.5)
    try:
        sent = subprocess.run(["storescu", "-aet", "SCANNER", "-aec", RECEIVER_AET, "127.0.0.1", str(port),
                               str(report)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        series = pydicom.dcmread(report, stop_before_pixels=True).SeriesInstanceUID
        line = listener.wait_for(f"series {series}")
    finally:
        assert listener.stop(signal.SIGTERM) == 0
    assert line.endswith("1 image(s): dose report: read, DLP total 1174.95 mGy.cm in 12 event(s)")
    rows = query_rows(db, "SELECT status, dlp_total_mgycm, events_found FROM dose_reports")
    assert rows == [("read", 1174.95, 12)]
    assert query_rows(db, "SELECT COUNT(*) FROM dose_events WHERE localizer = 1") == [(1,)]

"""listen on a hospital network: who may send (allow-list, called AE title), DICOM TLS, the free-space floor,
retention, the association limit and idle timeout, and senders delivering one series at once. The senders are
real tools this project did not write: DCMTK's storescu and echoscu (with and without +tls) and Orthanc pushing
through ``/modalities/{id}/store``."""
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests

from DistilIQALib.archive import listener as receiving
from DistilIQALib.archive.listener import PARTIAL_SUFFIX, SCORED_MARKER, Receiver, ReceiverRules, run_listener
from DistilIQALib.cli import main
from DistilIQALib.quality.scoring import Scorer

from .conftest import RECEIVER_AET, RECEIVER_MODALITY, query_rows, write_untrained_weights
from .orthanc_server import free_port
from .test_listener import Listener, _send, _series

STORESCU, ECHOSCU = shutil.which("storescu"), shutil.which("echoscu")
pytestmark = pytest.mark.skipif(not (STORESCU and ECHOSCU), reason="DCMTK is not installed (apt-get install dcmtk; "
                                                                    ".ci/run installs it)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An untrained tiny model: these tests check what is received and that it is scored, not the scores."""
    return write_untrained_weights(tmp_path_factory.mktemp("weights") / "quick.safetensors", input_size=64)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The hospital's certificate authority (the receiver's and a scanner's certificates) and another one."""
    from .certificates import Authority

    folder = tmp_path_factory.mktemp("pki")
    hospital, other = Authority(folder, "hospital"), Authority(folder, "other")
    return {"ca": hospital.certificate, "server": hospital.issue("receiver", server=True),
            "client": hospital.issue("scanner"), "stranger": other.issue("stranger")}


def dcmtk(tool, port, *arguments, aet="STORESCU", called=RECEIVER_AET, tls=()):
    """Run storescu or echoscu (verbose) against the receiver on loopback: ``(exit code, its output)``."""
    command = [tool, "-v", "-aet", aet, "-aec", called, "-to", "20", "-ta", "20", "-td", "20", *map(str, tls),
               "127.0.0.1", str(port), *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    return result.returncode, result.stdout + result.stderr


def _folders(storage):
    return sorted(path.name for path in Path(storage).iterdir()) if Path(storage).is_dir() else []


def _forget(orthanc, *series_uids):
    """Remove what a test uploaded from the session's Orthanc (the DICOMweb tests count the series it holds)."""
    for uid in series_uids:
        orthanc.delete(orthanc.lookup(uid))


def test_only_allowed_senders_calling_this_receiver_are_accepted(orthanc, weights, tmp_path):
    port = orthanc.modalities[RECEIVER_MODALITY][1]
    db, storage = tmp_path / "allow.sqlite", tmp_path / "allow_received"
    (a, a_files), (b, b_files), (c, c_files), (d, d_files) = (
        _series(tmp_path / "files", name, 3, seed=n) for n, name in enumerate(("allowed", "anyone", "pacs", "late")))
    orthanc.upload(c_files + d_files)
    listener = Listener(port, db, weights, 1, "--allow", "STORESCU@127.0.0.1", "--allow", "ECHOSCU@127.0.0.0/8",
                        "--allow", "ORTHANC@localhost", "--allow", "FARAWAY@10.9.9.9")
    try:
        assert dcmtk(ECHOSCU, port, aet="ECHOSCU")[0] == 0  # the C-ECHO health check
        code, output = dcmtk(STORESCU, port, *a_files)
        assert code == 0 and output.count("Received Store Response (Success)") == 3, output
        listener.wait_for(f"series {a} (allowed), 3 image(s): scored 3 slices")
        code, output = dcmtk(STORESCU, port, *b_files, aet="ANYONE")
        assert code != 0 and "Reason: Calling AE Title Not Recognized" in output, output
        line = listener.wait_for("from 'ANYONE'")
        assert line.startswith("distiliqa: listen: rejected an association from 'ANYONE' at 127.0.0.1 port ")
        assert line.endswith(f"calling '{RECEIVER_AET}': calling AE title not recognised (not on the allow-list)")
        code, output = dcmtk(STORESCU, port, *b_files, aet="FARAWAY")  # allowed from another address only
        assert code != 0 and "Reason: Calling AE Title Not Recognized" in output, output
        assert listener.wait_for("from 'FARAWAY'").endswith("calling AE title not recognised from this address")
        code, output = dcmtk(STORESCU, port, *b_files, called="SOMEONE_ELSE")
        assert code != 0 and "Reason: Called AE Title Not Recognized" in output, output
        assert listener.wait_for("calling 'SOMEONE_ELSE'").endswith(
            f"called AE title not recognised (this receiver is {RECEIVER_AET})")
        answer = orthanc.push(RECEIVER_MODALITY, c)  # ORTHANC (the PACS) is allowed from localhost
        assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (3, 0)
        listener.wait_for(f"series {c} (pacs), 3 image(s): scored 3 slices")
    finally:
        assert listener.stop() == 0
    assert _folders(storage) == sorted([a, c])  # nothing of the rejected ones on disk
    assert sorted(uid for (uid,) in query_rows(db, "SELECT series_uid FROM series")) == sorted([a, c])

    # the PACS no longer on the list: its push fails and nothing is written; any called AE title if told so
    listener = Listener(port, db, weights, 1, "--allow", "STORESCU", "--any-called-aet")
    try:
        with pytest.raises(requests.HTTPError):
            orthanc.push(RECEIVER_MODALITY, d)
        assert "(not on the allow-list)" in listener.wait_for("rejected an association from 'ORTHANC' at 127.0.0.1")
        code, output = dcmtk(STORESCU, port, *b_files, called="SOMEONE_ELSE")
        assert code == 0 and output.count("Received Store Response (Success)") == 3, output
    finally:
        assert listener.stop() == 0
        _forget(orthanc, c, d)
    assert _folders(storage) == sorted([a, b, c])
    assert not [line for line in listener.lines if "Traceback" in line or "error" in line.lower()]


def test_tls_needs_a_client_certificate_from_the_hospitals_authority(pki, weights, tmp_path):
    port, db, storage = free_port(), tmp_path / "tls.sqlite", tmp_path / "tls_received"
    (good, good_files), (_, bad_files) = _series(tmp_path / "f", "tls", 3, 1), _series(tmp_path / "f", "bad", 2, 2)
    key, certificate = pki["server"]
    listener = Listener(port, db, weights, 1, "--allow", "STORESCU", "--allow", "ECHOSCU", "--tls-cert", certificate,
                        "--tls-key", key, "--tls-ca", pki["ca"])
    trust = ("+cf", pki["ca"])
    try:
        assert " over TLS " in listener.lines[-1]
        assert dcmtk(ECHOSCU, port, aet="ECHOSCU", tls=("+tls", *pki["client"], *trust))[0] == 0
        code, output = dcmtk(STORESCU, port, *good_files, tls=("+tls", *pki["client"], *trust))
        assert code == 0 and output.count("Received Store Response (Success)") == 3, output
        listener.wait_for(f"series {good} (tls), 3 image(s): scored 3 slices")
        for tls, reason in ((("+tla", *trust), "PEER_DID_NOT_RETURN_A_CERTIFICATE"),  # no client certificate
                            (("+tls", *pki["stranger"], *trust), "CERTIFICATE_VERIFY_FAILED"),  # another CA's
                            ((), "WRONG_VERSION_NUMBER")):  # plaintext against TLS
            code, output = dcmtk(STORESCU, port, *bad_files, tls=tls)
            assert code != 0 and "Association Request Failed" in output and "Success" not in output, output
            line = listener.wait_for(f"TLS handshake failed ({reason})")
            assert line.startswith("distiliqa: listen: refused a connection from 127.0.0.1 port ")
    finally:
        assert listener.stop() == 0
    assert _folders(storage) == [good]


def _in_process(storage, db, weights, rules, series_timeout_s=0.5):
    """A receiver in a thread of this process, its log lines in a list: ``(receiver, lines, thread)``."""
    lines = []
    receiver = Receiver(storage, db, Scorer(str(weights), device="cpu"), RECEIVER_AET, "127.0.0.1", free_port(),
                        series_timeout_s, log=lines.append, rules=rules)
    thread = threading.Thread(target=run_listener, args=(receiver,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("listening on") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    return receiver, lines, thread


def _wait(condition, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_below_the_free_space_floor_stores_are_refused_before_anything_is_written(weights, tmp_path):
    storage, db = tmp_path / "floor_received", tmp_path / "floor.sqlite"
    uid, files = _series(tmp_path / "f", "floor", 3, seed=4)
    free_mb = shutil.disk_usage(tmp_path).free / 1e6
    receiver, lines, thread = _in_process(storage, db, weights, ReceiverRules(min_free_mb=free_mb * 10))
    try:
        port = receiver._server.server_address[1]
        for _ in range(2):
            code, output = dcmtk(STORESCU, port, "--no-halt", *files)
            assert output.count("Received Store Response (Refused: OutOfResources)") == 3, output
        assert _folders(storage) == []  # the sender keeps its copy; nothing here
        floor = [line for line in lines if "below the floor" in line]
        assert len(floor) == 1 and "refusing images (out of resources) until there is room" in floor[0]  # once
        receiver.rules.min_free_mb = free_mb / 100  # room again
        code, output = dcmtk(STORESCU, port, *files)
        assert code == 0 and output.count("Received Store Response (Success)") == 3, output
        assert [line for line in lines if "back above" in line and line.endswith(": storing again")]
        assert _wait(lambda: any(line.startswith(f"series {uid} (floor), 3 image(s): scored") for line in lines))
    finally:
        receiver.stop()
        thread.join(30)
    assert len([line for line in lines if "below the floor" in line or "back above" in line]) == 2


def test_retention_removes_old_scored_series_and_keeps_unscored_ones(weights, tmp_path):
    port, db, storage = free_port(), tmp_path / "keep.sqlite", tmp_path / "keep_received"
    (old, old_files), (grown, grown_files), (fresh, fresh_files), (unscored, unscored_files) = (
        _series(tmp_path / "f", name, 4 if name == "grown" else 3, seed=n)
        for n, name in enumerate(("old", "grown", "fresh", "unscored")))
    listener = Listener(port, db, weights, 0.5, "--allow", "STORESCU")
    try:
        for uid, files, name in ((old, old_files, "old"), (grown, grown_files[:3], "grown"),
                                 (fresh, fresh_files, "fresh")):
            assert dcmtk(STORESCU, port, *files)[0] == 0
            listener.wait_for(f"series {uid} ({name}), {len(files)} image(s): scored")
    finally:
        assert listener.stop() == 0
    # received before a crash, never scored: one series, and one more image of a series scored earlier
    (storage / unscored).mkdir()
    for path in unscored_files:
        shutil.copy(path, storage / unscored / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm")
    extra = pydicom.dcmread(grown_files[3]).SOPInstanceUID
    shutil.copy(grown_files[3], storage / grown / f"{extra}.dcm")
    three_days_ago = time.time() - 3 * 86400
    for uid in (old, grown):  # scored three days ago
        os.utime(storage / uid / SCORED_MARKER, (three_days_ago, three_days_ago))
    os.utime(storage / unscored, (three_days_ago, three_days_ago))
    listener = Listener(port, db, weights, 600, "--allow", "STORESCU", "--retention-days", "1")
    try:
        line = listener.wait_for(f"retention: removed the 3 image(s) of series {old}, scored ")
        assert line.endswith("(3.0 days ago, more than 1)")
        listener.wait_for(f"series {unscored} (unscored), 3 image(s): scored 3 slices")
        listener.wait_for(f"series {grown} (grown), 4 image(s): scored 4 slices")
    finally:
        assert listener.stop() == 0
    assert _folders(storage) == sorted([fresh, grown, unscored])
    assert len(list((storage / grown).glob("*.dcm"))) == 4
    assert len([line for line in listener.lines if "retention:" in line]) == 1
    assert query_rows(db, "SELECT status FROM series WHERE series_uid = ?", (old,)) == [("scored",)]  # results stay


def test_association_limit_and_idle_senders(weights, tmp_path):
    port, db, storage = free_port(), tmp_path / "limit.sqlite", tmp_path / "limit_received"
    (uid, files), (other, other_files) = _series(tmp_path / "f", "idle", 3, 5), _series(tmp_path / "f", "next", 3, 6)
    listener = Listener(port, db, weights, 0.5, "--allow", "SCANNER", "--allow", "STORESCU",
                        "--max-associations", "1", "--idle-timeout", "3")
    try:
        hung = _send(port, files[:1], then="hang")  # a sender that stalls with its association open
        assert [hung.stdout.readline().split()[0] for _ in range(3)] == ["rejected", "echo", "stored"]
        code, output = dcmtk(STORESCU, port, *other_files)
        assert code != 0 and "Reason: Local Limit Exceeded" in output, output
        assert listener.wait_for("from 'STORESCU'").endswith("1 association(s) already open (the limit)")
        started = time.monotonic()
        while True:  # the idle association is aborted after 3 s: the slot is free again
            code, output = dcmtk(STORESCU, port, *other_files)
            if code == 0 or time.monotonic() - started > 30:
                break
            time.sleep(0.5)
        assert code == 0 and output.count("Received Store Response (Success)") == 3, output
        assert time.monotonic() - started < 30
        assert listener.wait_for("aborted the association from 'SCANNER' at 127.0.0.1 port ").endswith(
            ": silent for 3 s (the idle timeout)")
        hung.kill()
        hung.wait()
        with socket.create_connection(("127.0.0.1", port)) as silent:  # connects and never asks for an association
            silent.settimeout(30)
            started = time.monotonic()
            assert silent.recv(1) == b""  # closed by the receiver
            assert time.monotonic() - started < 10
        listener.wait_for(f"series {other} (next), 3 image(s): scored 3 slices")
    finally:
        assert listener.stop() == 0
    assert len(list((storage / uid).glob("*.dcm"))) == 1  # acknowledged before the stall: kept
    assert not [line for line in listener.lines if "Traceback" in line or "error" in line.lower()]


def test_three_senders_pushing_one_series_at_once(orthanc, weights, tmp_path):
    port = orthanc.modalities[RECEIVER_MODALITY][1]
    db, storage = tmp_path / "three.sqlite", tmp_path / "three_received"
    uid, files = _series(tmp_path / "f", "together", 40, seed=7)
    orthanc.upload(files)
    listener = Listener(port, db, weights, 3, "--allow", "STORESCU", "--allow", "CT2", "--allow", "ORTHANC")
    outputs, answers = [], []

    def scanner(aet):
        outputs.append(dcmtk(STORESCU, port, *files, aet=aet))

    try:
        senders = [threading.Thread(target=scanner, args=(aet,)) for aet in ("STORESCU", "CT2")]
        senders.append(threading.Thread(target=lambda: answers.append(orthanc.push(RECEIVER_MODALITY, uid))))
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(300)
        assert [(answer["InstancesCount"], answer["FailedInstancesCount"]) for answer in answers] == [(40, 0)]
        for code, output in outputs:
            assert code == 0 and output.count("Received Store Response (Success)") == 40, output
        listener.wait_for(f"series {uid} (together), 40 image(s): scored 40 slices")
        time.sleep(4)  # longer than the series timeout: it is not scored again
    finally:
        assert listener.stop() == 0
        _forget(orthanc, uid)
    assert len(list((storage / uid).glob("*.dcm"))) == 40 and not list(storage.rglob("*" + PARTIAL_SUFFIX))
    assert len([line for line in listener.lines if line.startswith(f"distiliqa: listen: series {uid}")]) == 1
    assert query_rows(db, "SELECT COUNT(*) FROM slices WHERE series_uid = ?", (uid,)) == [(40,)]


def test_settings_from_a_file_and_the_command_line_and_check(pki, tmp_path, capsys):
    key, certificate = pki["server"]
    (tmp_path / "tls").mkdir()
    for source, name in ((key, "key.pem"), (certificate, "cert.pem"), (pki["ca"], "ca.pem")):
        shutil.copy(source, tmp_path / "tls" / name)
    config = tmp_path / "distiliqa-listen.json"
    config.write_text(json.dumps({
        "port": 11112, "ae_title": "DISTILIQA", "host": "0.0.0.0", "db": "results.sqlite",
        "senders": ["CT_ROOM_1@10.20.0.5", {"ae_title": "PACS", "host": "10.20.0.0/24"}],
        "tls": {"certificate": "tls/cert.pem", "key": "tls/key.pem", "ca": "tls/ca.pem"},
        "retention_days": 30, "max_associations": 4, "idle_timeout": 120}))
    assert main(["listen", "--config", str(config), "--min-free", "2048", "--allow", "QA_LAPTOP", "--check"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:8] == [
        "address: 0.0.0.0 port 11112, AE title DISTILIQA",
        "called AE title: must be DISTILIQA",
        "senders: only CT_ROOM_1 from 10.20.0.5 (10.20.0.5/32); PACS from 10.20.0.0/24; QA_LAPTOP (from any address)",
        f"TLS: on, plaintext refused: certificate {tmp_path / 'tls/cert.pem'}, key {tmp_path / 'tls/key.pem'}; "
        f"client certificates required, signed by {tmp_path / 'tls/ca.pem'}",
        printed[4],
        "retention: images of series scored more than 30 days ago are removed (unscored series are kept)",
        "associations: at most 4 at once; idle timeout 120 s",
        f"series: scored 30 s after their last image, into {tmp_path / 'results.sqlite'}"]
    assert printed[4].startswith(f"images: {tmp_path / 'results_received'} (") and printed[4].endswith(
        "free now); stores refused below 2.0 GB free")
    classes = len(receiving.accepted_sop_classes())
    assert printed[8] == f"SOP classes accepted: {classes} storage classes, and verification (C-ECHO)"

    def error(*arguments):
        assert main(["listen", *map(str, arguments)]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    common = ["--port", "11112", "--ae-title", "QC", "--db", str(tmp_path / "r.sqlite")]
    assert error(*common) == (
        "distiliqa: error: listening on every interface needs an allow-list of senders: --allow AET[@HOST] (or "
        "\"senders\" in --config), or --allow-any-sender to accept anyone who can reach it")
    assert error(*common, "--host", "10.1.2.3").startswith(
        "distiliqa: error: listening on 10.1.2.3 needs an allow-list")
    assert main(["listen", *common, "--allow-any-sender", "--check"]) == 0
    assert "senders: any (--allow-any-sender)" in capsys.readouterr().out
    assert main(["listen", *common, "--host", "127.0.0.1", "--check"]) == 0
    assert "senders: any (on loopback: from this machine only)" in capsys.readouterr().out
    assert error(*common, "--allow", "CT@no-such-host.invalid").startswith(
        "distiliqa: error: --allow 'CT@no-such-host.invalid': cannot resolve the host 'no-such-host.invalid'")
    assert error(*common, "--allow", "A_TITLE_FAR_TOO_LONG") == (
        "distiliqa: error: --allow 'A_TITLE_FAR_TOO_LONG': the AE title 'A_TITLE_FAR_TOO_LONG': an AE title has 1 "
        "to 16 ASCII characters, no backslash")
    assert error(*common, "--allow", "CT", "--tls-cert", certificate, "--tls-key", pki["ca"]).startswith(
        f"distiliqa: error: --tls-cert {certificate} / --tls-key {pki['ca']}: cannot load the certificate and its key")
    assert error(*common, "--allow", "CT", "--tls-ca", pki["ca"]) == (
        "distiliqa: error: --tls-ca checks the senders' certificates over TLS: give --tls-cert and --tls-key too")
    config.write_text(json.dumps({"port": 11112, "ae_title": "QC", "db": "r.sqlite", "allow": ["CT"]}))
    assert error("--config", str(config)) == f"distiliqa: error: --config {config}: unknown setting(s) allow"
    assert error("--ae-title", "QC", "--db", "x.sqlite") == (
        "distiliqa: error: --port is required (on the command line or as \"port\" in --config)")


def test_the_rules_hold_for_every_class_the_receiver_accepts(weights, tmp_path):
    """The allow-list, TLS and the limits act on the association, and the floor in the one place every accepted
    object is written: whatever :func:`accepted_sop_classes` holds (the image classes, and more as they come)."""
    assert set(receiving.image_storage_classes()) <= set(receiving.accepted_sop_classes())
    storage, db = tmp_path / "all_received", tmp_path / "all.sqlite"
    receiver, lines, thread = _in_process(storage, db, weights, ReceiverRules(min_free_mb=1e15))
    try:
        offered = {context.abstract_syntax for context in receiver._server.contexts}
        assert offered == set(receiving.accepted_sop_classes()) | {"1.2.840.10008.1.1"}
        uid = "1.2.826.0.1.3680043.8.498.36"
        assert receiver.file_instance(uid, "1.2.826.0.1.3680043.8.498.36.1", b"any accepted object") == 0xA700
        assert _folders(storage) == []
    finally:
        receiver.stop()
        thread.join(30)

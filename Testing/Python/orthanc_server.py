"""A real Orthanc DICOM server (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages) on free loopback ports,
with its own storage folder, for the server tests and ``benchmarks/dicomweb_speed.py``; and a TCP proxy that
puts a slow or broken network between a client and it."""
from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import requests

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
PLUGIN_PATTERNS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                   "/usr/lib/x86_64-linux-gnu/orthanc/libOrthancDicomWeb.so*",
                   "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
MISSING = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run installs them)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dicomweb_plugin() -> str:
    for pattern in PLUGIN_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError("the Orthanc DICOMweb plugin (package orthanc-dicomweb) is not installed")


class Orthanc:
    """One Orthanc process: HTTP (REST and DICOMweb at ``/dicom-web``) and DICOM on free loopback ports,
    storage and index in ``folder``; ``users`` turns on HTTP basic authentication; ``modalities`` maps a
    name to ``(AE title, port)`` of DICOM peers on loopback (where ``/modalities/{name}/store`` sends)."""

    def __init__(self, folder: Path, users: Optional[Dict[str, str]] = None,
                 modalities: Optional[Dict[str, Tuple[str, int]]] = None) -> None:
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.users = users or {}
        self.modalities = modalities or {}
        self.process: Optional[subprocess.Popen] = None
        self.session = requests.Session()
        if self.users:
            self.session.auth = next(iter(self.users.items()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> Dict:
        storage = str(self.folder / "storage")
        config = {"Name": "DistilIQA test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
                  "DicomAet": "ORTHANC", "StorageDirectory": storage, "IndexDirectory": storage,
                  "Plugins": [dicomweb_plugin()], "RemoteAccessAllowed": False, "HttpCompressionEnabled": False,
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
                  "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in self.modalities.items()},
                  "DicomScuTimeout": 10, "ConcurrentJobs": 2}
        if self.users:
            config.update(AuthenticationEnabled=True, RegisteredUsers=self.users)
        return config

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                                   f"{(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.session.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- its REST API

    def rest(self, method: str, path: str, **arguments) -> requests.Response:
        response = self.session.request(method, f"{self.url}{path}", timeout=120, **arguments)
        response.raise_for_status()
        return response

    def upload(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.rest("POST", "/instances", data=Path(path).read_bytes(),
                      headers={"Content-Type": "application/dicom"})

    def lookup(self, uid: str, level: str = "Series") -> str:
        """Orthanc's own ID of a series (or another ``level``) from its DICOM UID."""
        for match in self.rest("POST", "/tools/lookup", data=uid).json():
            if match["Type"] == level:
                return match["ID"]
        raise KeyError(uid)

    def instance_ids(self, series_uid: str) -> List[str]:
        return [item["ID"] for item in self.rest("GET", f"/series/{self.lookup(series_uid)}/instances").json()]

    def delete(self, orthanc_id: str, level: str = "series") -> None:
        self.rest("DELETE", f"/{level}/{orthanc_id}")

    def push(self, modality: str, series_uid: str) -> Dict:
        """C-STORE the series to a configured modality; returns when the peer has answered every instance."""
        body = {"Resources": [self.lookup(series_uid)], "Synchronous": True}
        return self.rest("POST", f"/modalities/{modality}/store", json=body).json()


class FaultyProxy:
    """A TCP proxy on a free loopback port in front of ``target_port``: the network a slow or failing server
    sits behind. ``delay_s`` holds every answer back that long before its first byte; ``cut_after_bytes`` closes
    a connection once that many bytes of answers have passed on it (a transfer that breaks off)."""

    def __init__(self, target_port: int, delay_s: float = 0.0, cut_after_bytes: Optional[int] = None) -> None:
        self.target_port, self.delay_s, self.cut_after_bytes = target_port, delay_s, cut_after_bytes
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            asked = threading.Event()  # a request went up since the last answer began
            threading.Thread(target=self._pump, args=(client, upstream, asked, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, asked, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, asked: threading.Event, answers: bool) -> None:
        passed = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not answers:
                    asked.set()
                elif asked.is_set():
                    asked.clear()
                    time.sleep(self.delay_s)
                if answers and self.cut_after_bytes is not None and passed + len(data) > self.cut_after_bytes:
                    target.sendall(data[:self.cut_after_bytes - passed])
                    self.cuts += 1
                    break
                target.sendall(data)
                passed += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()

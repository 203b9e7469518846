"""A DICOM C-STORE receiver that scores CT series as a scanner or a PACS pushes them.

Every instance is written to disk (``STORAGE/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, written beside,
flushed to the disk and renamed) before it is acknowledged, so an acknowledged image is never lost. A series
is scored once no new instance of it has come for ``series_timeout_s`` seconds, through the same path as a
series folder of a batch run, into the same store; more instances later score it again with them. After
scoring, a marker in the series folder lists the files scored and the model: a restart scores every series
whose files or model differ from its marker. Verification (C-ECHO) is answered; only image storage SOP
classes and the three that carry CT dose reports are accepted (any other is refused when the association is
negotiated); a dose report goes to the store's dose tables.

The DICOM network protocol is spoken by ``pynetdicom``, imported only when the receiver starts.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..dose.reports import DOSE_REPORT_CLASSES
from ..errors import InputError, MissingPackageError
from ..quality.scoring import Scorer
from .archive import UID_PATTERN, SeriesEntry, dicom_text
from .batch import BatchSummary, read_series_folder, store_folder_series
from .store import ResultStore

DEFAULT_SERIES_TIMEOUT_S = 30.0
#: Written into a series folder once the series is scored: the files scored and the model.
SCORED_MARKER = ".distiliqa-scored.json"
#: An instance being written; renamed to ``.dcm`` once it is on the disk.
PARTIAL_SUFFIX = ".part"
POLL_S = 0.2
#: C-STORE statuses (PS3.4 GG.4-1 and B.2.3).
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def _pynetdicom():
    try:
        import pynetdicom
    except ImportError:
        raise MissingPackageError("the DICOM receiver needs the package pynetdicom: pip install pynetdicom "
                                  "(or pip install 'DistilIQALib[server]')") from None
    return pynetdicom


def image_storage_classes() -> List[str]:
    """The UIDs of every image storage SOP class pydicom knows (CT, enhanced CT, MR, secondary capture, ...)."""
    from pydicom.uid import UID_dictionary

    return sorted(uid for uid, (name, kind, *_rest) in UID_dictionary.items()
                  if kind == "SOP Class" and "Image Storage" in name)


def checked_ae_title(text: str) -> str:
    if not 1 <= len(text) <= 16 or not text.strip() or "\\" in text or not text.isascii():
        raise InputError(f"--ae-title {text!r}: an AE title has 1 to 16 ASCII characters, no backslash")
    return text


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` so that it is whole on the disk when this returns (or absent)."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(partial, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)
    if os.name == "posix":  # the rename itself must reach the disk too
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def verdict_line(record: Dict, images: int) -> str:
    """One log line on a series: what it is, how it was judged, and why."""
    description = record.get("description") or ""
    head = f"series {record['series_uid']}" + (f" ({description})" if description else "") + f", {images} image(s): "
    reason = record.get("reason")
    if record["status"] != "scored":
        return head + f"{record['status']}: {reason}"
    fraction = record.get("fraction_inadequate")
    verdict = ("adequacy unknown" if fraction is None
               else f"inadequate ({fraction:.0%} of slices)" if fraction > 0 else "adequate (no slice inadequate)")
    scores = ("no slice has a score" if record.get("mean_score") is None else
              f"mean score {record['mean_score']:.4f}, worst slice {record['worst_slice']} ({record['min_score']:.4f})")
    return head + f"scored {record['num_slices']} slices: {verdict}, {scores}" + (f"; {reason}" if reason else "")


class Receiver:
    """The C-STORE receiver: files what arrives, and scores a series once it has been quiet for a while.

    ``log`` receives one line per series scored (and the start and stop lines of :func:`run_listener`)."""

    def __init__(self, storage: os.PathLike[str] | str, store_path: os.PathLike[str] | str, scorer: Scorer,
                 ae_title: str = "DISTILIQA", host: str = "", port: int = 11112,
                 series_timeout_s: float = DEFAULT_SERIES_TIMEOUT_S,
                 log: Optional[Callable[[str], None]] = None) -> None:
        if series_timeout_s < 0:
            raise InputError("--series-timeout must be at least 0")
        self.storage = Path(storage)
        self.store_path = Path(store_path)
        self.scorer = scorer
        self.ae_title = checked_ae_title(ae_title)
        self.address = (host, int(port))
        self.series_timeout_s = float(series_timeout_s)
        self.log = log or (lambda line: None)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        #: series UID -> monotonic time of its latest instance, for series with instances not scored yet
        self._last_arrival: Dict[str, float] = {}
        self._server = None

    # -- receiving

    def start(self) -> int:
        """Open the port and pick up series received earlier and not scored; returns the port listened on."""
        pynetdicom = _pynetdicom()
        self.storage.mkdir(parents=True, exist_ok=True)
        self._pick_up_unscored()
        ae = pynetdicom.AE(ae_title=self.ae_title)
        for uid in image_storage_classes() + list(DOSE_REPORT_CLASSES):
            ae.add_supported_context(uid, pynetdicom.ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(pynetdicom.sop_class.Verification)
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._on_store)]
        try:
            self._server = ae.start_server(self.address, block=False, evt_handlers=handlers)
        except OSError as error:
            raise InputError(f"cannot listen on port {self.address[1]}: {error.strerror or error}") from None
        return self._server.server_address[1]

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            series_uid = dicom_text(getattr(dataset, "SeriesInstanceUID", None))
            instance_uid = dicom_text(getattr(dataset, "SOPInstanceUID", None))
        except Exception:  # whatever a sender may send: refuse it, never fall over
            return CANNOT_UNDERSTAND
        if not UID_PATTERN.fullmatch(series_uid) or not UID_PATTERN.fullmatch(instance_uid):
            return CANNOT_UNDERSTAND  # no usable UIDs: nothing to file it under
        folder = self.storage / series_uid
        try:
            folder.mkdir(exist_ok=True)
            _write_durably(folder / f"{instance_uid}.dcm", event.encoded_dataset())
        except OSError:
            return OUT_OF_RESOURCES  # the sender keeps it and may send it again
        with self._lock:
            self._last_arrival[series_uid] = time.monotonic()
        return SUCCESS

    # -- scoring

    def _files(self, folder: Path) -> List[str]:
        return sorted(path.name for path in folder.glob("*.dcm"))

    def _pick_up_unscored(self) -> None:
        """Series whose files or model differ from their marker are due at once (a restart after a crash, a
        stop, or a new model); half-written instances (never acknowledged) are removed."""
        due = time.monotonic() - self.series_timeout_s
        for folder in sorted(self.storage.iterdir()):
            if not folder.is_dir() or not UID_PATTERN.fullmatch(folder.name):
                continue
            for partial in folder.glob("*" + PARTIAL_SUFFIX):
                partial.unlink()
            files = self._files(folder)
            if files and _marker(folder) != {"weights_id": self.scorer.info.weights_id, "files": files}:
                self._last_arrival[folder.name] = due

    def score_due(self) -> List[str]:
        """Score every series that has been quiet for the series timeout; returns their UIDs."""
        now = time.monotonic()
        with self._lock:
            ready = sorted(uid for uid, last in self._last_arrival.items() if now - last >= self.series_timeout_s)
            for uid in ready:
                del self._last_arrival[uid]  # an instance arriving from now on makes it due again
        for uid in ready:
            if self.stopping.is_set():
                with self._lock:  # left for the next start
                    self._last_arrival.setdefault(uid, now)
                continue
            try:
                self.score_series(uid)
            except Exception as error:  # one series must not stop the receiver; no marker: the next start retries
                self.log(f"series {uid}: not scored: {type(error).__name__}: {error}")
        return ready

    def score_series(self, series_uid: str) -> Dict:
        """Score (again) the files received for one series, log its line and mark it scored."""
        folder = self.storage / series_uid
        files = self._files(folder)
        series = read_series_folder(folder, SeriesEntry(uid=series_uid), [str(folder / name) for name in files])
        with ResultStore(self.store_path) as store:
            record = store_folder_series(store, self.scorer, series, BatchSummary())
        marker = {"weights_id": self.scorer.info.weights_id, "files": files}
        _write_durably(folder / SCORED_MARKER, json.dumps(marker).encode())
        self.log(verdict_line(record, len(files)))
        return record

    def pending(self) -> List[str]:
        with self._lock:
            return sorted(self._last_arrival)

    def serve(self) -> None:
        """Score quiet series until :meth:`stop` (or SIGTERM under :func:`run_listener`)."""
        while not self.stopping.wait(POLL_S):
            self.score_due()

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _marker(folder: Path) -> Optional[Dict]:
    try:
        return json.loads((folder / SCORED_MARKER).read_text())
    except (OSError, ValueError):
        return None


def run_listener(receiver: Receiver) -> int:
    """Start ``receiver``, score until SIGTERM or SIGINT, then close the port; series not scored yet are
    scored by the next start. Returns the exit code (0)."""
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for number in stop_signals:
            previous[number] = signal.signal(number, lambda *_: receiver.stop())
    try:
        port = receiver.start()
        receiver.log(f"listening on {receiver.address[0] or 'all interfaces'} port {port} as {receiver.ae_title}; "
                     f"images go to {receiver.storage}, results to {receiver.store_path}; a series is scored "
                     f"{receiver.series_timeout_s:g} s after its last image")
        pending = receiver.pending()
        if pending:
            receiver.log(f"{len(pending)} series received earlier and not scored: scoring them now")
        receiver.serve()
    finally:
        receiver.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    left = receiver.pending()
    receiver.log("stopped" + (f"; {len(left)} series not scored yet (the next start scores them)" if left else ""))
    return 0

"""A DICOM C-STORE receiver that scores CT series as a scanner or a PACS pushes them.

Every instance is written to disk (``STORAGE/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, written to a
temporary file of its own, flushed to the disk and renamed) before it is acknowledged, so an acknowledged image
is never lost, and senders delivering the same instance at once never share a file. A series is scored once no
new instance of it has come for ``series_timeout_s`` seconds, through the same path as a series folder of a
batch run, into the same store; more instances later score it again with them. After scoring, a marker in the
series folder lists the files scored and the model: a restart scores every series whose files or model differ
from its marker. Verification (C-ECHO) is answered; only the SOP classes of :func:`accepted_sop_classes` are
accepted: image storage and the three that carry CT dose reports (any other is refused when the
association is negotiated); a dose report goes to the store's dose tables.

Who may send is decided when an association is requested (:class:`ReceiverRules`): the calling AE title (and
the address it connects from) must be on the allow-list, and the called AE title must be the receiver's own;
anyone else is rejected with the standard's reason (PS3.8 9.3.4) and a log line. With TLS, each connection's
handshake happens in its own thread, bounded by the idle timeout; with a CA, client certificates are required.
Below the free-space floor every store is answered "out of resources" before anything is written.

The DICOM network protocol is spoken by ``pynetdicom``, imported only when the receiver starts.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..dose.reports import DOSE_REPORT_CLASSES
from ..errors import InputError, MissingPackageError
from ..quality.scoring import Scorer
from .archive import UID_PATTERN, SeriesEntry, dicom_text
from .batch import BatchSummary, read_series_folder, store_folder_series
from .receiver_limits import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ASSOCIATIONS, DEFAULT_MIN_FREE_MB
from .store import ResultStore

DEFAULT_SERIES_TIMEOUT_S = 30.0
#: Written into a series folder once the series is scored: the files scored and the model. Its modification
#: time is when the series was last scored (what retention counts from).
SCORED_MARKER = ".distiliqa-scored.json"
#: An instance being written (each write its own file); renamed to ``.dcm`` once it is on the disk.
PARTIAL_SUFFIX = ".part"
POLL_S = 0.2
#: How often retention looks for series to remove (and once at start).
RETENTION_EVERY_S = 600.0
#: C-STORE statuses (PS3.4 GG.4-1 and B.2.3; 0x0110 is the general "processing failure", PS3.7 C).
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, PROCESSING_FAILURE = 0x0000, 0xA700, 0xC000, 0x0110
#: Errors of a full disk or quota: the only ones answered "out of resources".
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
REJECT_CALLING = (0x01, 0x01, 0x03)  # permanent, service user: calling AE title not recognised
REJECT_CALLED = (0x01, 0x01, 0x07)  # permanent, service user: called AE title not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service provider (presentation): local limit exceeded
#: The Verification SOP class (C-ECHO), accepted beside the storage classes.
VERIFICATION = "1.2.840.10008.1.1"


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


def accepted_sop_classes() -> List[str]:
    """Every storage SOP class the receiver accepts: the one place that decides it. Whatever it holds, the
    receiver's rules (who may send, TLS, the free-space floor, the limits) apply to it alike: every image storage
    class, and the three that carry CT dose reports."""
    return image_storage_classes() + list(DOSE_REPORT_CLASSES)


def checked_ae_title(text: str, what: str = "--ae-title") -> str:
    if not 1 <= len(text) <= 16 or not text.strip() or "\\" in text or not text.isascii():
        raise InputError(f"{what} {text!r}: an AE title has 1 to 16 ASCII characters, no backslash")
    return text


# --- who may send -------------------------------------------------------------------------------------------


def _address(text: str):
    """An IP address as the allow-list compares it (an IPv4 address mapped into IPv6 as IPv4)."""
    address = ipaddress.ip_address(text.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


@dataclass(frozen=True)
class Sender:
    """One allowed sender: its calling AE title and, optionally, the host or network it connects from."""

    ae_title: str
    host: str = ""  # as given: an address, a network (10.1.0.0/16) or a host name; empty: from anywhere
    networks: Tuple = ()  # the networks ``host`` stands for (a host name's addresses, resolved at start)

    @classmethod
    def parse(cls, text: str, what: str = "--allow") -> Sender:
        """``AET`` or ``AET@HOST``, HOST an address, a network in CIDR notation, or a host name."""
        title, _, host = str(text).strip().partition("@")
        checked_ae_title(title, f"{what} {text!r}: the AE title")
        host = host.strip()
        if not host:
            return cls(title.strip())
        try:
            networks: Tuple = (ipaddress.ip_network(host, strict=False),)
        except ValueError:
            try:
                found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except OSError as error:
                raise InputError(f"{what} {text!r}: cannot resolve the host {host!r} "
                                 f"({error.strerror or error})") from None
            networks = tuple(sorted({ipaddress.ip_network(_address(info[4][0])) for info in found}, key=str))
        return cls(title.strip(), host, networks)

    def admits(self, ae_title: str, address: str) -> bool:
        if ae_title.strip() != self.ae_title:
            return False
        if not self.networks:
            return True
        try:
            peer = _address(address)
        except ValueError:
            return False
        return any(peer.version == network.version and peer in network for network in self.networks)

    def __str__(self) -> str:
        if not self.host:
            return f"{self.ae_title} (from any address)"
        resolved = ", ".join(map(str, self.networks))
        return f"{self.ae_title} from {self.host}" + ("" if resolved == self.host else f" ({resolved})")


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only ('' is every interface)."""
    if not host:
        return False
    try:
        return _address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(found) and all(_address(info[4][0]).is_loopback for info in found)


@dataclass
class ReceiverRules:
    """What the receiver accepts, from whom, and how much: the allow-list, TLS, disk and association limits.

    With no allow-list only a receiver on a loopback address accepts any sender, unless ``any_sender`` says so;
    ``any_called_aet`` accepts associations addressed to another AE title than the receiver's own.
    ``min_free_mb`` is the free space below which stores are refused; ``retention_days`` removes the images of
    series scored longer ago than that (never an unscored one)."""

    senders: Sequence[Sender] = ()
    any_sender: bool = False
    any_called_aet: bool = False
    tls_certificate: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    min_free_mb: float = DEFAULT_MIN_FREE_MB
    retention_days: Optional[float] = None
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    _tls_context: object = field(default=None, repr=False, compare=False)

    def check(self, host: str) -> None:
        """Refuse settings that would not do what they say (one-line :class:`InputError`)."""
        if self.min_free_mb < 0:
            raise InputError("--min-free must be at least 0 (MB)")
        if self.retention_days is not None and self.retention_days <= 0:
            raise InputError("--retention-days must be more than 0")
        if self.max_associations < 1:
            raise InputError("--max-associations must be at least 1")
        if self.idle_timeout_s <= 0:
            raise InputError("--idle-timeout must be more than 0 seconds")
        if self.senders and self.any_sender:
            raise InputError("--allow-any-sender and an allow-list (--allow) contradict each other: give one")
        if not self.senders and not self.any_sender and not is_loopback(host):
            where = f"on {host}" if host else "on every interface"
            raise InputError(f"listening {where} needs an allow-list of senders: --allow AET[@HOST] (or "
                             "\"senders\" in --config), or --allow-any-sender to accept anyone who can reach it")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise InputError("TLS needs both --tls-cert and --tls-key")
        if self.tls_ca and not self.tls_certificate:
            raise InputError("--tls-ca checks the senders' certificates over TLS: give --tls-cert and --tls-key too")
        self.tls_context()

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    def tls_context(self):
        """The server's :class:`ssl.SSLContext` (TLS 1.2 or later), or None without TLS; with a CA, a client
        certificate signed by it is required."""
        if not self.tls or self._tls_context is not None:
            return self._tls_context
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_certificate, self.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise InputError(f"--tls-cert {self.tls_certificate} / --tls-key {self.tls_key}: cannot load the "
                             f"certificate and its key ({_tls_reason(error)})") from None
        if self.tls_ca:
            try:
                context.load_verify_locations(cafile=self.tls_ca)
            except (OSError, ssl.SSLError) as error:
                raise InputError(f"--tls-ca {self.tls_ca}: cannot load the certificate authority "
                                 f"({_tls_reason(error)})") from None
            context.verify_mode = ssl.CERT_REQUIRED
        self._tls_context = context
        return context

    def refusal(self, calling: str, called: str, address: str, own_ae_title: str):
        """Why an association from ``calling`` at ``address`` addressed to ``called`` is refused, as
        ``(A-ASSOCIATE-RJ result, source, reason), words``; None when it is accepted."""
        if not self.any_called_aet and called.strip() != own_ae_title.strip():
            return REJECT_CALLED, f"called AE title not recognised (this receiver is {own_ae_title.strip()})"
        if self.senders and not any(sender.admits(calling, address) for sender in self.senders):
            known = any(sender.ae_title == calling.strip() for sender in self.senders)
            return REJECT_CALLING, ("calling AE title not recognised from this address" if known
                                    else "calling AE title not recognised (not on the allow-list)")
        return None


def _tls_reason(error: BaseException) -> str:
    return getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error) or type(error).__name__


class _HandshakeInTheConnectionsThread:
    """Hands pynetdicom's server TLS sockets whose handshake is left to :meth:`Receiver._on_connect`, in the
    connection's own thread with a timeout, so that a client stalling in the handshake holds up no other."""

    def __init__(self, context) -> None:
        self.context = context

    def wrap_socket(self, sock, server_side: bool = True, **_unused):
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


# --- the disk -----------------------------------------------------------------------------------------------


class _DropIdleTimeoutRecords(logging.Filter):
    """pynetdicom logs an idle association's abort as an error; the receiver logs its own line for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Network timeout reached"


def _quiet_idle_timeouts() -> None:
    logger = logging.getLogger("pynetdicom.association")  # where pynetdicom logs it
    if not any(isinstance(known, _DropIdleTimeoutRecords) for known in logger.filters):
        logger.addFilter(_DropIdleTimeoutRecords())


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` so that it is whole on the disk when this returns (or absent). The data goes first to a
    temporary file of this write's own (never shared with another writer of the same path), then is renamed."""
    descriptor, partial = tempfile.mkstemp(prefix=path.name + ".", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with open(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    if os.name == "posix":  # the rename itself must reach the disk too
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _megabytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


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

    ``log`` receives one line per series scored, per association or connection refused, on the free space
    (once when it falls below the floor, once when it is back), per series removed by retention, and the start
    and stop lines of :func:`run_listener`."""

    def __init__(self, storage: os.PathLike[str] | str, store_path: os.PathLike[str] | str, scorer: Scorer,
                 ae_title: str = "DISTILIQA", host: str = "", port: int = 11112,
                 series_timeout_s: float = DEFAULT_SERIES_TIMEOUT_S,
                 log: Optional[Callable[[str], None]] = None, rules: Optional[ReceiverRules] = None) -> None:
        if series_timeout_s < 0:
            raise InputError("--series-timeout must be at least 0")
        self.storage = Path(storage)
        self.store_path = Path(store_path)
        self.scorer = scorer
        self.ae_title = checked_ae_title(ae_title)
        self.address = (host, int(port))
        self.series_timeout_s = float(series_timeout_s)
        self.rules = rules if rules is not None else ReceiverRules()
        self.rules.check(host)
        self.log = log or (lambda line: None)
        self.stopping = threading.Event()
        self._lock = threading.Condition()
        #: series UID -> monotonic time of its latest instance, for series with instances not scored yet
        self._last_arrival: Dict[str, float] = {}
        #: series UID -> instances of it being written now; series whose folder retention is removing now
        self._writing: Dict[str, int] = {}
        self._removing: Set[str] = set()
        self._short_of_space = False
        self._next_retention = 0.0
        self._server = None

    # -- receiving

    def start(self) -> int:
        """Open the port and pick up series received earlier and not scored; returns the port listened on."""
        pynetdicom = _pynetdicom()
        self.storage.mkdir(parents=True, exist_ok=True)
        self._pick_up_unscored()
        ae = pynetdicom.AE(ae_title=self.ae_title)
        for uid in accepted_sop_classes():
            ae.add_supported_context(uid, pynetdicom.ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        ae.maximum_associations = self.rules.max_associations
        idle = self.rules.idle_timeout_s
        ae.network_timeout = idle  # no PDU for this long: the association is aborted
        ae.dimse_timeout = idle
        ae.acse_timeout = min(idle, 30.0)  # a connection that asks for no association
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._on_store), (pynetdicom.evt.EVT_REQUESTED, self._on_request),
                    (pynetdicom.evt.EVT_ABORTED, self._on_abort)]
        _quiet_idle_timeouts()
        context = self.rules.tls_context()
        if context is not None:
            handlers.append((pynetdicom.evt.EVT_CONN_OPEN, self._on_connect))
            context = _HandshakeInTheConnectionsThread(context)
        try:
            self._server = ae.start_server(self.address, block=False, evt_handlers=handlers, ssl_context=context)
        except OSError as error:
            raise InputError(f"cannot listen on port {self.address[1]}: {error.strerror or error}") from None
        return self._server.server_address[1]

    def _on_connect(self, event) -> None:
        """A new connection under TLS: its handshake, here in its own thread, within the idle timeout."""
        sock = event.assoc.dul.socket
        host, port = event.address[0], event.address[1]
        try:
            sock.socket.settimeout(self.rules.idle_timeout_s)
            sock.socket.do_handshake()
            sock.socket.settimeout(None)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            self.log(f"refused a connection from {host} port {port}: TLS handshake failed "
                     f"({_tls_reason(error)})")
            sock.close()  # no association on it: its thread ends within the ACSE timeout

    def _on_request(self, event) -> None:
        """An A-ASSOCIATE request: rejected here (with the standard's reason and a log line) unless the caller
        is allowed, addressed this receiver, and a slot is free."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        host, port = assoc.requestor.address, assoc.requestor.port
        refusal = self.rules.refusal(calling, called, host, self.ae_title)
        if refusal is None:
            busy = [other for other in assoc.ae.active_associations if other.is_acceptor]
            if len(busy) > self.rules.max_associations:
                refusal = REJECT_BUSY, f"{self.rules.max_associations} association(s) already open (the limit)"
        if refusal is None:
            return
        (result, source, reason), words = refusal
        self.log(f"rejected an association from {calling!r} at {host} port {port}, calling {called!r}: {words}")
        assoc.acse.send_reject(result, source, reason)
        assoc.kill()

    def _on_abort(self, event) -> None:
        assoc = event.assoc
        if assoc.is_acceptor and assoc.dul.idle_timer_expired():
            calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()
            self.log(f"aborted the association from {calling!r} at {assoc.requestor.address} port "
                     f"{assoc.requestor.port}: silent for {self.rules.idle_timeout_s:g} s (the idle timeout)")

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            series_uid = dicom_text(getattr(dataset, "SeriesInstanceUID", None))
            instance_uid = dicom_text(getattr(dataset, "SOPInstanceUID", None))
        except Exception:  # whatever a sender may send: refuse it, never fall over
            return CANNOT_UNDERSTAND
        if not UID_PATTERN.fullmatch(series_uid) or not UID_PATTERN.fullmatch(instance_uid):
            return CANNOT_UNDERSTAND  # no usable UIDs: nothing to file it under
        return self.file_instance(series_uid, instance_uid, event.encoded_dataset())

    def file_instance(self, series_uid: str, instance_uid: str, data: bytes) -> int:
        """Write one received object into its series folder and answer its C-STORE status: what every accepted
        SOP class goes through. Below the free-space floor nothing is written and the answer is "out of
        resources" (the sender keeps it and retries); a duplicate overwrites its copy and is acknowledged."""
        if not self._room_for(len(data)):
            return OUT_OF_RESOURCES
        with self._lock:
            while series_uid in self._removing:
                self._lock.wait()
            self._writing[series_uid] = self._writing.get(series_uid, 0) + 1
        written = False
        try:
            folder = self.storage / series_uid
            folder.mkdir(exist_ok=True)
            _write_durably(folder / f"{instance_uid}.dcm", data)
            written = True
        except OSError as error:
            if error.errno in _NO_SPACE:
                return OUT_OF_RESOURCES  # the sender keeps it and may send it again
            self.log(f"series {series_uid}: instance {instance_uid} not stored: {error.strerror or error}")
            return PROCESSING_FAILURE
        finally:
            with self._lock:
                left = self._writing[series_uid] - 1
                if left:
                    self._writing[series_uid] = left
                else:
                    del self._writing[series_uid]
                if written:
                    self._last_arrival[series_uid] = time.monotonic()
        return SUCCESS

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes leave the free-space floor; logs the change when it falls short or
        comes back."""
        try:
            free = shutil.disk_usage(self.storage).free
        except OSError:
            return True  # the write itself will say what is wrong
        floor = self.rules.min_free_mb * 1e6
        room = free - size >= floor
        if room == self._short_of_space:  # a change: say it once
            with self._lock:
                if room == self._short_of_space:
                    self._short_of_space = not room
                    self.log(f"free space on {self.storage} is back above {_megabytes(floor)} "
                             f"({_megabytes(free)}): storing again" if room else
                             f"free space on {self.storage} is {_megabytes(free)}, below the floor of "
                             f"{_megabytes(floor)}: refusing images (out of resources) until there is room")
        return room

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
            ready = sorted(uid for uid, last in self._last_arrival.items()
                           if now - last >= self.series_timeout_s and uid not in self._writing)
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

    # -- retention

    def remove_expired(self, now: Optional[float] = None) -> List[str]:
        """With ``retention_days``: remove the received images of every series scored (with the files it
        holds now) longer ago than that, and log each; a series not scored, or with images come since, is
        kept. Returns the UIDs removed."""
        days = self.rules.retention_days
        if days is None:
            return []
        now = time.time() if now is None else now
        removed = []
        for folder in sorted(self.storage.iterdir()):
            uid = folder.name
            if not folder.is_dir() or not UID_PATTERN.fullmatch(uid):
                continue
            try:
                scored_at = (folder / SCORED_MARKER).stat().st_mtime
            except OSError:
                continue  # never scored
            marker = _marker(folder)
            files = self._files(folder)
            if now - scored_at <= days * 86400 or marker is None or marker.get("files") != files:
                continue
            with self._lock:
                if uid in self._writing or uid in self._last_arrival:
                    continue  # images are coming: it will be scored again
                self._removing.add(uid)
            try:
                for path in folder.iterdir():
                    path.unlink()
                folder.rmdir()
            except OSError as error:
                self.log(f"retention: series {uid}: not all removed: {error.strerror or error}")
                continue
            finally:
                with self._lock:
                    self._removing.discard(uid)
                    self._lock.notify_all()
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(scored_at))
            self.log(f"retention: removed the {len(files)} image(s) of series {uid}, scored {when} "
                     f"({(now - scored_at) / 86400:.1f} days ago, more than {days:g})")
            removed.append(uid)
        return removed

    def pending(self) -> List[str]:
        with self._lock:
            return sorted(self._last_arrival)

    def serve(self) -> None:
        """Score quiet series (and apply retention) until :meth:`stop` (or SIGTERM under :func:`run_listener`)."""
        while not self.stopping.wait(POLL_S):
            if self.rules.retention_days is not None and time.monotonic() >= self._next_retention:
                self._next_retention = time.monotonic() + RETENTION_EVERY_S
                self.remove_expired()
            self.score_due()

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def settings(self) -> List[str]:
        """The effective settings, one per line (``listen --check``)."""
        rules, host = self.rules, self.address[0]
        try:
            free = f"{_megabytes(shutil.disk_usage(_existing(self.storage)).free)} free now"
        except OSError as error:
            free = f"free space unknown: {error.strerror or error}"
        if rules.senders:
            senders = "only " + "; ".join(map(str, rules.senders))
        elif rules.any_sender:
            senders = "any (--allow-any-sender)" if not is_loopback(host) else "any (on loopback)"
        else:
            senders = "any (on loopback: from this machine only)"
        tls = "off (plaintext)"
        if rules.tls:
            tls = (f"on, plaintext refused: certificate {rules.tls_certificate}, key {rules.tls_key}; " +
                   (f"client certificates required, signed by {rules.tls_ca}" if rules.tls_ca
                    else "client certificates not asked for (no --tls-ca)"))
        return [
            f"address: {host or 'all interfaces'} port {self.address[1]}, AE title {self.ae_title}",
            "called AE title: " + ("any (--any-called-aet)" if rules.any_called_aet else f"must be {self.ae_title}"),
            f"senders: {senders}",
            f"TLS: {tls}",
            f"images: {self.storage} ({free}); stores refused below {_megabytes(rules.min_free_mb * 1e6)} free",
            "retention: " + (f"images of series scored more than {rules.retention_days:g} days ago are removed "
                             "(unscored series are kept)" if rules.retention_days is not None
                             else "images are kept (no --retention-days)"),
            f"associations: at most {rules.max_associations} at once; idle timeout {rules.idle_timeout_s:g} s",
            f"series: scored {self.series_timeout_s:g} s after their last image, into {self.store_path}",
            f"SOP classes accepted: {len(accepted_sop_classes())} storage classes, and verification (C-ECHO)",
        ]


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


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
        rules = receiver.rules
        senders = (f"{len(rules.senders)} allowed sender(s)" if rules.senders else "any sender")
        receiver.log(f"listening on {receiver.address[0] or 'all interfaces'} port {port} as {receiver.ae_title}"
                     f"{' over TLS' if rules.tls else ''} for {senders}; images go to {receiver.storage}, "
                     f"results to {receiver.store_path}; a series is scored {receiver.series_timeout_s:g} s after "
                     "its last image")
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

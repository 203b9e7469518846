"""Batch quality control straight from a DICOMweb server (a PACS or a vendor-neutral archive).

QIDO-RS lists the CT series (filtered by study date, patient, study or series UIDs, or only what is new
since the last complete run); WADO-RS streams each series, one instance at a time, into a temporary folder
that is removed once the series is read; the series is then scored through the same path as a folder of an
archive (:func:`~DistilIQALib.archive.batch.read_series_folder`) into the same store. The key is the
SeriesInstanceUID, so a series already scored from a folder (or an earlier run) is not fetched again.

Connection failures, timeouts and the server's 5xx and 429 answers are retried with exponential back-off;
what remains ends the run with one line naming the server. What concerns one series only (deleted since
the query, a transfer that broke off, a truncated instance) is that series' ``failed`` row, retried by the
next run. Credentials come from an environment variable or a file and never appear in a message, a log or
the store.

The protocol is spoken by ``dicomweb-client`` (on ``requests``), imported only when a server is used.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError, MissingPackageError, ServerError
from ..io.pydicom_compat import save_file
from ..progress import Progress
from ..quality.scoring import Scorer
from .archive import UID_PATTERN, SeriesEntry, dicom_text
from .batch import BatchSummary, FolderSeries, ahead, in_shard, read_series_folder, store_folder_series
from .store import ResultStore

#: Answers worth asking again after a pause (Part 18 names 503 and 429 for a busy origin server).
RETRIABLE_STATUS = (408, 429, 500, 502, 503, 504)
#: The longest pause between two tries, s.
MAX_BACKOFF_S = 60.0
#: Series asked for per QIDO-RS request (a server may return fewer: the next page starts where it ended).
QIDO_PAGE = 500
QIDO_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "PatientID", "PatientName", "StudyDate")
#: Instances in the transfer syntax the server holds them in (no decompression on the server).
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
#: Folders of one retrieving process under the system's temporary folder: ``distiliqa-dicomweb-<pid>``.
WORK_FOLDER_PREFIX = "distiliqa-dicomweb-"
CHUNK_BYTES = 1 << 20
_DATE = re.compile(r"\d{8}")


def _packages():
    """``requests`` and dicomweb-client's client class, or one line naming the package to install."""
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise MissingPackageError("reading from a DICOMweb server needs the package dicomweb-client: "
                                  "pip install dicomweb-client (or pip install 'DistilIQALib[server]')") from None
    return requests, DICOMwebClient


# --- what to connect to and what to ask for -------------------------------------------------------------


def server_name(url: str) -> str:
    """The server's address as messages, logs and the store show it: scheme, host, port and path, never
    credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


@dataclass
class ServerConfig:
    """How to reach a DICOMweb server: its root URL (e.g. ``http://pacs:8042/dicom-web``), the value of the
    ``Authorization`` header (never shown), TLS verification (``True``, ``False`` or a CA bundle file), the
    timeout of each request in s, and how often a failed request is tried again, ``backoff_s`` apart at first
    and twice as long each time."""

    url: str
    authorization: Optional[str] = field(default=None, repr=False)
    verify_tls: Union[bool, str] = True
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--dicomweb needs an http:// or https:// URL of the server's DICOMweb root, not "
                             f"{server_name(self.url) or 'that'}")
        if parts.username or parts.password or parts.query:
            raise InputError(f"put no credentials or query in the URL of {server_name(self.url)}: give the "
                             "credentials with --auth-env VAR or --auth-file FILE")
        if self.timeout_s <= 0 or self.retries < 0:
            raise InputError("--timeout must be positive and --retries at least 0")

    @property
    def name(self) -> str:
        return server_name(self.url)


def authorization(environment_variable: Optional[str] = None, file: Optional[str] = None) -> Optional[str]:
    """The ``Authorization`` header value from an environment variable or a file (first line): a value with a
    space is used as it is (``Basic dXNlcjpwYXNz``, ``Bearer eyJ...``), anything else is a bearer token."""
    if environment_variable and file:
        raise InputError("give the credentials once: --auth-env or --auth-file")
    if environment_variable:
        value = os.environ.get(environment_variable)
        if not value:
            raise InputError(f"the environment variable {environment_variable} (--auth-env) is not set")
    elif file:
        try:
            lines = Path(file).read_text().strip().splitlines()
        except OSError as error:
            raise InputError(f"cannot read the credentials file {file}: {error.strerror}") from None
        value = lines[0] if lines else ""
        if not value.strip():
            raise InputError(f"the credentials file {file} is empty")
    else:
        return None
    value = value.strip()
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        where = f"the environment variable {environment_variable}" if environment_variable else f"the file {file}"
        raise InputError(f"the credentials in {where} contain a line break or another control character")
    return value if " " in value else f"Bearer {value}"


def date_range(text: str) -> str:
    """A DICOM date range (``YYYYMMDD-YYYYMMDD``, open at either end, or one date), checked."""
    ends = text.split("-")
    if len(ends) > 2 or not any(ends) or not all(_DATE.fullmatch(end) for end in ends if end):
        raise InputError(f"--study-date must look like 20240101-20240131 (either end may be left open), not {text!r}")
    for end in ends:
        if end:
            try:
                datetime.datetime.strptime(end, "%Y%m%d")
            except ValueError:
                raise InputError(f"--study-date: {end} is not a date") from None
    return text


def checked_uid(text: str, option: str) -> str:
    if len(text) > 64 or not UID_PATTERN.fullmatch(text):
        raise InputError(f"{option} {text!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return text


@dataclass
class SeriesQuery:
    """Which CT series to fetch. ``study_date`` is a DICOM date range; ``since`` is ``"last"`` (from the day
    the last complete run of the same query began) or a date (``YYYYMMDD``); the UIDs are each asked for."""

    study_date: Optional[str] = None
    since: Optional[str] = None
    patient_id: Optional[str] = None
    study_uids: Sequence[str] = ()
    series_uids: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.study_date and self.since:
            raise InputError("give --study-date or --since, not both")
        if self.study_date:
            date_range(self.study_date)
        if self.since not in (None, "last"):
            date_range(self.since)
            if "-" in self.since:
                raise InputError(f"--since takes one date (YYYYMMDD) or nothing, not {self.since!r}")
        for uid in self.study_uids:
            checked_uid(uid, "--study-uid")
        for uid in self.series_uids:
            checked_uid(uid, "--series-uid")

    def key(self) -> str:
        """The query without its dates: the runs that ``since`` follows on are those of the same key."""
        parts = [f"PatientID={self.patient_id}"] if self.patient_id else []
        parts += [f"StudyInstanceUID={uid}" for uid in sorted(self.study_uids)]
        parts += [f"SeriesInstanceUID={uid}" for uid in sorted(self.series_uids)]
        return "&".join(parts) or "all CT"

    def requests(self, study_date: Optional[str]) -> List[Tuple[Optional[str], Dict[str, str]]]:
        """``(study UID or None, QIDO-RS filters)`` of each request to make."""
        filters = {"Modality": "CT"}
        if study_date:
            filters["StudyDate"] = study_date
        if self.patient_id:
            filters["PatientID"] = self.patient_id
        studies: Sequence[Optional[str]] = list(self.study_uids) or [None]
        series: Sequence[Optional[str]] = list(self.series_uids) or [None]
        return [(study, {**filters, **({"SeriesInstanceUID": uid} if uid else {})}) for study in studies
                for uid in series]


@dataclass
class RemoteSeries:
    """A series as the server's query answer describes it."""

    study_uid: str
    series_uid: str
    #: NumberOfSeriesRelatedInstances, when the server gives it: fewer received means the transfer lost some.
    instances: Optional[int]
    entry: SeriesEntry


# --- talking to the server --------------------------------------------------------------------------------


class _BrokenTransfer(Exception):
    """A series arrived incomplete: its transfer broke off, an instance was cut short, or instances are missing."""


Result = TypeVar("Result")


def _timed_session(requests, timeout_s: float):
    """A requests session that gives every request ``timeout_s``: dicomweb-client 0.59.1 (what Slicer 5.8 bundles)
    takes no timeout, and later releases pass their own (20 s) to each request, so the session sets it."""

    class TimedSession(requests.Session):
        def request(self, method, url, **options):
            options["timeout"] = timeout_s
            return super().request(method, url, **options)

    return TimedSession()


class Server:
    """A DICOMweb server as this module uses it: one client per thread (requests' sessions are not meant
    to be shared between threads), every request tried again on transient failures."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.requests, self._client_class = _packages()
        self._local = threading.local()

    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            session = _timed_session(self.requests, self.config.timeout_s)
            session.verify = self.config.verify_tls
            headers = {"Authorization": self.config.authorization} if self.config.authorization else None
            client = self._client_class(self.config.url, session=session, headers=headers, chunk_size=CHUNK_BYTES)
            client.set_http_retry_params(retry=False)  # tries are counted here, for every kind of failure
            self._local.client = client
        return client

    def _transient(self, error: BaseException) -> bool:
        exceptions = self.requests.exceptions
        if isinstance(error, exceptions.SSLError):
            return False
        if isinstance(error, exceptions.HTTPError):
            return error.response is not None and error.response.status_code in RETRIABLE_STATUS
        return isinstance(error, (exceptions.ConnectionError, exceptions.Timeout, exceptions.ChunkedEncodingError,
                                  _BrokenTransfer))

    def call(self, attempt: Callable[[], Result]) -> Result:
        """``attempt()``, tried again after a pause while it fails in a way that may pass."""
        for n in range(self.config.retries + 1):
            try:
                return attempt()
            except Exception as error:
                if n == self.config.retries or not self._transient(error):
                    raise
                time.sleep(min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** n))
        raise AssertionError("unreachable")

    def fatal(self, error: BaseException) -> bool:
        """Whether ``error`` concerns the server as a whole (unreachable, too slow, refusing the credentials,
        failing) rather than one series (gone, cut off in transfer, not DICOM)."""
        exceptions = self.requests.exceptions
        if isinstance(error, exceptions.ChunkedEncodingError):
            return False
        if isinstance(error, (exceptions.ConnectionError, exceptions.Timeout)):
            return True
        status = self.status(error)
        return status is not None and (status in (401, 403) or status in RETRIABLE_STATUS)

    def status(self, error: BaseException) -> Optional[int]:
        if isinstance(error, self.requests.exceptions.HTTPError) and error.response is not None:
            return error.response.status_code
        return None

    def explain(self, error: BaseException, what: str) -> str:
        """One line saying what went wrong with ``what`` (e.g. "the series query"), naming the server and never
        the credentials (some errors quote the request's headers)."""
        text = self._explain(error, what)
        secret = self.config.authorization
        for part in ([secret, *secret.split()[1:]] if secret else []):
            text = text.replace(part, "<credentials>")
        return text

    def _explain(self, error: BaseException, what: str) -> str:
        exceptions, server, timeout = self.requests.exceptions, self.config.name, f"{self.config.timeout_s:g}"
        tries = f" ({self.config.retries + 1} tries)" if self.config.retries else ""
        status = self.status(error)
        if isinstance(error, exceptions.SSLError):
            return (f"cannot verify the TLS certificate of {server} ({_reason(error)}); give the hospital's "
                    "certificate authority with --ca-bundle FILE")
        if isinstance(error, exceptions.ConnectTimeout):
            return f"cannot reach the DICOMweb server {server}: no connection within {timeout} s{tries}"
        if isinstance(error, exceptions.Timeout):
            return f"the DICOMweb server {server} did not answer {what} within {timeout} s{tries}"
        if isinstance(error, exceptions.ChunkedEncodingError) or isinstance(error, _BrokenTransfer):
            return f"the transfer of {what} from {server} broke off ({_reason(error)}){tries}"
        if isinstance(error, exceptions.ConnectionError):
            return f"cannot reach the DICOMweb server {server} ({_reason(error)}){tries}"
        if status == 401:
            return (f"{server} refused {what}: 401 Unauthorized (credentials missing, wrong or expired; give them "
                    "with --auth-env VAR or --auth-file FILE)")
        if status == 403:
            return f"{server} refused {what}: 403 Forbidden (these credentials may not read it)"
        if status == 404:
            return f"{server} answered 404 Not Found to {what}"
        if status is not None:
            return f"{server} answered {what} with {status} {error.response.reason or ''}".rstrip() + tries
        return f"{server} sent something that is not DICOM for {what} ({type(error).__name__}: {_reason(error)})"

    # -- QIDO-RS

    def find_series(self, query: SeriesQuery, study_date: Optional[str]) -> List[RemoteSeries]:
        """Every series that answers ``query`` (CT only, as the server filters), in a stable order."""
        return self._find(query.requests(study_date))

    def find_dose_series(self, study_uids: Sequence[str]) -> List[RemoteSeries]:
        """The structured-report series (dose reports among them) of the studies given, in a stable order."""
        return self._find([(uid, {"Modality": "SR"}) for uid in sorted(set(study_uids)) if uid])

    def _find(self, requests: List[Tuple[Optional[str], Dict[str, str]]]) -> List[RemoteSeries]:
        found: Dict[str, RemoteSeries] = {}
        for study_uid, filters in requests:
            offset = 0
            while True:
                page = self._query_page(study_uid, filters, offset)
                new = [series for series in map(self._remote, page) if series.series_uid not in found]
                found.update((series.series_uid, series) for series in new)
                # Servers may cap a page below the limit asked for: ask on until a page brings nothing new
                # (empty, or the same again from a server that ignores offsets).
                if not new:
                    break
                offset += len(page)
        return [found[uid] for uid in sorted(found)]

    def _query_page(self, study_uid: Optional[str], filters: Dict[str, str], offset: int) -> List[Dict]:
        def attempt():
            return self.client().search_for_series(study_instance_uid=study_uid, fields=list(QIDO_FIELDS),
                                                   search_filters=dict(filters), limit=QIDO_PAGE, offset=offset)

        try:
            return self.call(attempt)
        except Exception as error:
            message = self.explain(error, "the series query")
            if self.status(error) == 404:
                message += f": is {self.config.name} the DICOMweb root (e.g. http://pacs:8042/dicom-web)?"
            raise ServerError(message) from None

    def _remote(self, answer: Dict) -> RemoteSeries:
        from pydicom import Dataset

        ds = Dataset.from_json(answer)

        def text(keyword: str) -> str:
            return dicom_text(getattr(ds, keyword, None))

        study_uid, series_uid = text("StudyInstanceUID"), text("SeriesInstanceUID")
        count = getattr(ds, "NumberOfSeriesRelatedInstances", None)
        entry = SeriesEntry(uid=series_uid, modality=text("Modality"), patient_id=text("PatientID"),
                            patient_name=text("PatientName"), study_uid=study_uid, study_date=text("StudyDate"),
                            description=text("SeriesDescription"),
                            location=f"{self.config.name}/studies/{study_uid}/series/{series_uid}")
        return RemoteSeries(study_uid, series_uid, int(count) if count not in (None, "") else None, entry)

    # -- WADO-RS

    def fetch(self, series: RemoteSeries, folder: Path) -> int:
        """Stream the series' instances into ``folder``, one file each (named by SOPInstanceUID); returns how
        many arrived. A broken or incomplete transfer is tried again from the start."""

        def attempt() -> int:
            for old in folder.iterdir():
                old.unlink()
            count = 0
            instances = self.client().iter_series(series.study_uid, series.series_uid,
                                                  media_types=ANY_TRANSFER_SYNTAX)
            for dataset in instances:
                _check_complete(dataset)
                name = dicom_text(getattr(dataset, "SOPInstanceUID", None))
                name = name if UID_PATTERN.fullmatch(name) else f"instance{count:05d}"
                save_file(dataset, folder / f"{name}.dcm")
                count += 1
            if series.instances is not None and count < series.instances:
                raise _BrokenTransfer(f"{count} of the {series.instances} instances the query announced arrived")
            return count

        return self.call(attempt)


def _check_complete(dataset) -> None:
    """An uncompressed image whose pixel data are shorter than its matrix needs was cut off in transfer."""
    if "Rows" not in dataset:
        return
    if "PixelData" not in dataset:
        raise _BrokenTransfer(f"instance {dicom_text(getattr(dataset, 'SOPInstanceUID', ''))} has no pixel data")
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return  # the image reader finds a cut-off compressed frame
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    expected = (int(dataset.Rows) * int(dataset.Columns) * int(getattr(dataset, "SamplesPerPixel", 1) or 1)
                * ((int(getattr(dataset, "BitsAllocated", 16) or 16) + 7) // 8) * frames)
    if len(dataset.PixelData) < expected:
        raise _BrokenTransfer(f"instance {dicom_text(dataset.SOPInstanceUID)} arrived cut short "
                              f"({len(dataset.PixelData)} of {expected} bytes of pixel data)")


def _reason(error: BaseException) -> str:
    """The root cause of a requests/urllib3 error in a few words (``connection refused``)."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip().lower()
    for known in ("Connection refused", "Connection reset by peer", "Connection aborted", "IncompleteRead",
                  "Response ended prematurely", "certificate verify failed"):
        if known.lower() in text.lower():
            return known.lower()
    return text.splitlines()[0][:160] if text else type(error).__name__


# --- the run ------------------------------------------------------------------------------------------------


def _work_folder() -> Path:
    """This process's folder for series in transfer, after removing those that killed runs left behind."""
    base = Path(tempfile.gettempdir())
    if os.name == "posix":
        for old in base.glob(WORK_FOLDER_PREFIX + "*"):
            pid = old.name[len(WORK_FOLDER_PREFIX):]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{WORK_FOLDER_PREFIX}{os.getpid()}"
    folder.mkdir(exist_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _since_date(store: ResultStore, server: str, query: SeriesQuery) -> Tuple[Optional[str], Optional[str]]:
    """The study date range to ask for and a note on it, from ``--study-date`` or ``--since``."""
    if query.study_date or not query.since:
        return query.study_date, None
    if query.since != "last":
        return f"{query.since}-", None
    started = store.last_server_run(server, query.key())
    if started is None:
        return None, f"no earlier complete run of this query against {server} in the store: asking for every study"
    day = started[:10].replace("-", "")
    return f"{day}-", f"only studies dated {day} or later (the last complete run began {started})"


@dataclass
class ServerSummary(BatchSummary):
    """A batch summary with what the server's query found."""

    found: int = 0
    note: Optional[str] = None


def run_dicomweb(config: ServerConfig, query: SeriesQuery, store_path: os.PathLike[str] | str, scorer: Scorer,
                 shard: Tuple[int, int] = (1, 1), rescore: bool = False, workers: int = 2,
                 progress: Optional[Progress] = None) -> ServerSummary:
    """Score the CT series on a DICOMweb server that answer ``query`` into the store at ``store_path``.

    ``workers`` series are fetched and decoded ahead of the model. Raises :class:`ServerError` when the server
    cannot be used at all (what was scored before stays in the store; a rerun resumes)."""
    progress = progress or Progress()
    summary = ServerSummary()
    started, started_at = time.monotonic(), datetime.datetime.now().isoformat(timespec="seconds")
    server = Server(config)
    weights_id = scorer.info.weights_id
    with ResultStore(store_path) as store:
        study_date, summary.note = _since_date(store, config.name, query)
        found = server.find_series(query, study_date)
        summary.found = len(found)
        # the studies' dose reports: SR series, read into the dose tables (a rerun reads them again: they are small)
        found += [series for series in server.find_dose_series([s.study_uid for s in found])
                  if series.series_uid not in {s.series_uid for s in found}]
        done = set() if rescore else store.done(weights_id)
        to_fetch: List[RemoteSeries] = []
        for series in found:
            if not in_shard(series.series_uid, shard):
                continue
            if series.series_uid in done:
                summary.already_done += 1
            elif series.entry.modality not in ("CT", "SR", ""):  # a server that ignores the modality filter
                store_folder_series(store, scorer, FolderSeries(series.entry,
                                                                skip_reason=series.entry.skip_reason()), summary)
            else:
                to_fetch.append(series)
        total = len(to_fetch)
        progress.update(0, total, "series")
        work = _work_folder()
        try:
            load = _loader(server, work)
            for n, loaded in enumerate(ahead(to_fetch, load, workers)):
                store_folder_series(store, scorer, loaded, summary)
                summary.seconds = time.monotonic() - started
                progress.update(n + 1, total, f"series ({summary.slices_per_second:.1f} slices/s)")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not summary.failed:
            # Only a run without failures moves --since on: a failed series stays inside the next run's dates.
            store.record_server_run(config.name, query.key(), started_at)
    summary.seconds = time.monotonic() - started
    return summary


def _loader(server: Server, work: Path) -> Callable[[RemoteSeries], FolderSeries]:
    def load(series: RemoteSeries) -> FolderSeries:
        folder = Path(tempfile.mkdtemp(dir=work))
        try:
            try:
                server.fetch(series, folder)
            except Exception as error:  # anything a server may send: only what ends the run is raised
                what = f"series {series.series_uid}"
                if server.fatal(error):
                    raise ServerError(server.explain(error, what)) from None
                reason = server.explain(error, what)
                if server.status(error) == 404:
                    reason += " (deleted since the query?)"
                return FolderSeries(series.entry, error=reason)
            return read_series_folder(folder, series.entry)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return load

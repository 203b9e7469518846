"""Batch quality control of a DICOM archive (a folder tree or a Slicer DICOM database).

Series are found by header (see :mod:`DistilIQALib.archive`), split into shards when
asked (``--shard k/n``: a stable hash of the SeriesInstanceUID, so every process or machine
agrees), read in background threads while the model scores the previous series, and
written to the :class:`~DistilIQALib.store.ResultStore` one series per transaction. A rerun
skips what the store already holds for the same weights.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .archive import SeriesEntry, scan_archive
from .errors import DistilIQAError, InputError
from .preprocessing import window_to_unit
from .progress import Progress
from .reading import read_dicom_files
from .scoring import Scorer, SliceScores
from .store import ResultStore

THUMBNAIL_PIXELS = 128


@dataclass
class BatchSummary:
    scored: int = 0
    skipped: int = 0
    failed: int = 0
    already_done: int = 0
    unreadable_files: int = 0
    slices: int = 0
    seconds: float = 0.0
    skip_reasons: Dict[str, int] = field(default_factory=dict)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"k/n"`` -> ``(k, n)`` with 1 <= k <= n; ``None`` is the whole archive."""
    if not text:
        return 1, 1
    try:
        part, parts = (int(value) for value in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like k/n (e.g. 2/4), not {text!r}") from None
    if not 1 <= part <= parts:
        raise InputError(f"--shard {text}: k must be between 1 and n")
    return part, parts


def in_shard(series_uid: str, shard: Tuple[int, int]) -> bool:
    part, parts = shard
    return int(hashlib.sha1(series_uid.encode()).hexdigest(), 16) % parts == part - 1


def _record(entry: SeriesEntry, weights_id: str, status: str, reason: Optional[str] = None) -> Dict:
    return {"series_uid": entry.uid, "weights_id": weights_id, "status": status, "reason": reason,
            "patient_id": entry.patient_id, "patient_name": entry.patient_name, "study_uid": entry.study_uid,
            "study_date": entry.study_date, "description": entry.description, "kernel": entry.kernel,
            "kvp": entry.kvp, "exposure_mas": entry.exposure_mas, "num_files": len(entry.files),
            "folder": os.path.dirname(entry.files[0]) if entry.files else None}


def _thumbnail_png(hu_slice: np.ndarray) -> bytes:
    from PIL import Image

    unit = window_to_unit(np.asarray(hu_slice, dtype=np.float32))
    image = Image.fromarray(np.rint(unit * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read(entry: SeriesEntry):
    try:
        return read_dicom_files(entry.sorted_files(), f"series {entry.uid}"), None
    except DistilIQAError as error:
        return None, str(error)
    except Exception as error:  # a broken archive file must not stop the run
        return None, f"{type(error).__name__}: {error}"


def run_batch(root: os.PathLike[str] | str, store_path: os.PathLike[str] | str, scorer: Scorer,
              shard: Tuple[int, int] = (1, 1), rescore: bool = False, workers: int = 2,
              progress: Optional[Progress] = None) -> BatchSummary:
    """Score every axial CT series under ``root`` into the store at ``store_path``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"no such folder: {root}")
    progress = progress or Progress()
    summary = BatchSummary()
    started = time.monotonic()
    scan = scan_archive(root, workers=max(2, workers * 2))
    weights_id = scorer.info.weights_id
    with ResultStore(store_path) as store:
        store.add_problems((path, None, f"unreadable: {message}") for path, message in scan.unreadable)
        summary.unreadable_files = len(scan.unreadable)
        done = set() if rescore else store.done(weights_id)
        to_score: List[SeriesEntry] = []
        for uid in sorted(scan.series):
            entry = scan.series[uid]
            if not in_shard(uid, shard):
                continue
            if uid in done:
                summary.already_done += 1
                continue
            if entry.duplicates:
                store.add_problems([(entry.files[0], uid, f"{entry.duplicates} duplicate instance(s) ignored")])
            reason = entry.skip_reason()
            if reason:
                store.write_series(_record(entry, weights_id, "skipped", reason))
                summary.skipped += 1
                summary.skip_reasons[reason] = summary.skip_reasons.get(reason, 0) + 1
            else:
                to_score.append(entry)
        total = len(to_score)
        progress.update(0, total, "series")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # Keep a few series decoding ahead of the model.
            pending = [pool.submit(_read, entry) for entry in to_score[:workers + 1]]
            for n, entry in enumerate(to_score):
                volume, error = pending[n].result()
                pending[n] = None
                if n + workers + 1 < total:
                    pending.append(pool.submit(_read, to_score[n + workers + 1]))
                series_started = time.monotonic()
                if volume is None:
                    store.write_series(_record(entry, weights_id, "failed", error))
                    store.add_problems([(entry.files[0], entry.uid, error)])
                    summary.failed += 1
                else:
                    scores = scorer.score_volume(volume)
                    record = _record(entry, weights_id, "scored")
                    record.update(_summary_fields(scores), seconds=time.monotonic() - series_started,
                                  worst_thumbnail_png=_thumbnail_png(volume.hu[int(np.argmin(scores.score))]))
                    store.write_series(record, scores.rows())
                    summary.scored += 1
                    summary.slices += len(scores.score)
                summary.seconds = time.monotonic() - started
                progress.update(n + 1, total, f"series ({summary.slices_per_second:.1f} slices/s)")
    summary.seconds = time.monotonic() - started
    return summary


def _summary_fields(scores: SliceScores) -> Dict:
    facts = scores.summary()
    return {"num_slices": facts["num_slices"], "mean_score": facts["mean_score"], "min_score": facts["min_score"],
            "worst_slice": facts["worst_slices"][0]["slice_index"], "mean_noise_hu": facts["mean_noise_hu"],
            "fraction_inadequate": facts["fraction_inadequate"]}


# --- outputs --------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("status", "reason", "patient_id", "study_date", "description", "kernel", "kvp", "exposure_mas",
                   "num_slices", "mean_score", "min_score", "worst_slice", "mean_noise_hu", "fraction_inadequate",
                   "series_uid", "weights_id", "folder")


def write_summary_csv(store_path: os.PathLike[str] | str, csv_path: os.PathLike[str] | str) -> int:
    with ResultStore(store_path) as store:
        rows = store.series_rows()
    with open(csv_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _svg_plot(slices: List[Dict], threshold: Optional[float], width: int = 220, height: int = 48) -> str:
    scores = [row["score"] for row in slices if row["score"] is not None]
    if len(scores) < 2:
        return ""
    low, high = min(min(scores), threshold or 1.0) - 0.02, max(max(scores), 1.0) + 0.02
    points = " ".join(f"{i * (width - 1) / (len(scores) - 1):.1f},{(high - s) / (high - low) * (height - 1):.1f}"
                      for i, s in enumerate(scores))
    line = ""
    if threshold is not None:
        y = (high - threshold) / (high - low) * (height - 1)
        line = f'<line x1="0" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" stroke-dasharray="3,2"/>'
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">{line}'
            f'<polyline fill="none" stroke="#1f4e9c" stroke-width="1.5" points="{points}"/></svg>')


_REPORT_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:middle;max-width:22em;overflow-wrap:anywhere}
th{background:#eef;cursor:pointer}
tr.inadequate{background:#fadbd8}
tr.skipped,tr.failed{color:#777}"""

_SORT_SCRIPT = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var up = th.dataset.up !== '1';
    th.dataset.up = up ? '1' : '0';
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var p = parseFloat(x), q = parseFloat(y);
      var r = (!isNaN(p) && !isNaN(q)) ? p - q : x.localeCompare(y);
      return up ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});"""


def write_html_report(store_path: os.PathLike[str] | str, report_path: os.PathLike[str] | str,
                      threshold: Optional[float] = None, title: str = "DistilIQA archive quality report") -> int:
    """A self-contained HTML page: sortable per-series table, inadequate series first, a score plot and a
    thumbnail of the worst slice per series (no server, no external files)."""
    with ResultStore(store_path) as store:
        rows = store.series_rows()
        plots = {(r["series_uid"], r["weights_id"]): store.slice_rows(r["series_uid"], r["weights_id"])
                 for r in rows if r["status"] == "scored"}
        problems = store.problem_rows()
    rows.sort(key=lambda r: (r["status"] != "scored", -(r["fraction_inadequate"] or 0), r["mean_score"] or 0))
    body = []
    for row in rows:
        slices = plots.get((row["series_uid"], row["weights_id"]), [])
        inadequate = (row["fraction_inadequate"] or 0) > 0
        thumbnail = ""
        if row["worst_thumbnail_png"]:
            encoded = base64.b64encode(row["worst_thumbnail_png"]).decode()
            thumbnail = f'<img alt="worst slice" src="data:image/png;base64,{encoded}" width="96">'
        cells = [row["status"] + (f": {row['reason']}" if row["reason"] else ""), row["patient_id"],
                 row["study_date"], row["description"], row["kernel"], row["num_slices"],
                 None if row["mean_score"] is None else f"{row['mean_score']:.4f}",
                 None if row["min_score"] is None else f"{row['min_score']:.4f}",
                 None if row["fraction_inadequate"] is None else f"{100 * row['fraction_inadequate']:.0f}%",
                 None if row["mean_noise_hu"] is None else f"{row['mean_noise_hu']:.1f}"]
        text = "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in cells)
        css = "inadequate" if inadequate else row["status"]
        body.append(f'<tr class="{css}">{text}<td>{_svg_plot(slices, threshold)}</td><td>{thumbnail}</td>'
                    f'<td><code>{html.escape(row["series_uid"])}</code></td></tr>')
    headers = ["status", "patient", "study date", "series", "kernel", "slices", "mean score", "min score",
               "% inadequate", "noise (HU)", "score along the scan", "worst slice", "SeriesInstanceUID"]
    scored = sum(r["status"] == "scored" for r in rows)
    flagged = sum((r["fraction_inadequate"] or 0) > 0 for r in rows)
    problem_list = "".join(f"<li><code>{html.escape(str(p['path']))}</code>: {html.escape(str(p['message']))}</li>"
                           for p in problems[:200])
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_REPORT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{scored} series scored, {flagged} with inadequate slices, {len(rows) - scored} skipped or failed. "
            "Scores are DistilIQA's no-reference quality estimates, for quality assurance, not diagnosis. "
            "Click a column to sort.</p>"
            f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            f"<h2>Problems ({len(problems)})</h2><ul>{problem_list}</ul><script>{_SORT_SCRIPT}</script></body></html>")
    Path(report_path).write_text(page, encoding="utf-8")
    return len(rows)


def stored_scores(store_path: os.PathLike[str] | str, series_uid: str, weights: Optional[str] = None) -> SliceScores:
    """The per-slice results a batch run stored for one series, as :class:`SliceScores` (no rescoring).

    ``weights`` is the model whose results to take (default: the shipped model); its metadata gives the
    adequacy bands and dose calibration. The store keeps each slice's score and the spread of the
    student's outputs, so ``outputs`` holds two columns, ``score -/+ spread``, with that mean and spread.
    """
    from .weights import read_info, resolve_weights

    info = read_info(resolve_weights(weights))
    with ResultStore(store_path) as store:
        rows = store.slice_rows(series_uid, info.weights_id)
        series = [r for r in store.series_rows(info.weights_id) if r["series_uid"] == series_uid]
    if not rows:
        raise InputError(f"series {series_uid} has no stored scores from model {info.weights_id}; score it again")
    score = np.array([r["score"] for r in rows], dtype=np.float32)
    spread = np.array([r["score_spread"] or 0.0 for r in rows], dtype=np.float32)
    noise = np.array([np.nan if r["noise_hu"] is None else r["noise_hu"] for r in rows], dtype=np.float32)
    record = series[0] if series else {}
    return SliceScores(slice_index=np.array([r["slice_index"] for r in rows]),
                       z_mm=np.array([r["z_mm"] for r in rows], dtype=np.float64), score=score,
                       outputs=np.stack([score - spread, score + spread], axis=1), noise_hu=noise, info=info,
                       source=record.get("description") or series_uid, device="stored",
                       elapsed_s=float(record.get("seconds") or 0.0))

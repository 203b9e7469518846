"""The archive report: one self-contained HTML page a physicist keeps (no server, no external files).

From a batch store it shows, for the scored series, what a group report of an archive is read for
(after MRIQC's group reports and ACR/AAPM CT QA practice): a per-protocol summary (protocol = scanner
model, reconstruction kernel, kVp, slice thickness), the distribution of series scores and noise (HU) by
each of these factors as plots, the series whose mean score is an outlier within its protocol (robust
z-score: 0.6745 (x - median) / MAD, |z| > 3.5, Iglewicz and Hoaglin), a sortable table of every series
and the problems met, grouped by folder and reason. With a learned model it also counts, per series and per
protocol, the slices whose verdict was set by artefacts (the model sees worse than their noise explains) and
says what set the worst slice's verdict. Then the exams (:mod:`~DistilIQALib.archive.exam_report`): per exam
category against the CMS CT measure's thresholds, per protocol against national DRLs, per scanner a monthly trend.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..quality.interpretation import DRIVER_ARTEFACTS
from .exam_report import exam_sections, stored_exam_rows
from .store import ResultStore

#: |robust z| above this is an outlier (Iglewicz and Hoaglin's cut-off for the modified z-score).
OUTLIER_Z = 3.5
#: A protocol needs this many scored series before its outliers are judged.
MIN_PROTOCOL_SERIES = 3
SCORE_COLOUR = "#1f4e9c"
NOISE_COLOUR = "#c0392b"
DOSE_COLOUR = "#6c3483"
ABOVE_COLOUR = "#1a5276"
ARTEFACT_COLOUR = "#d35400"
#: A series is above routine when more than this share of its slices with a verdict is.
ABOVE_ROUTINE_SHARE = 0.5


def above_routine(row: Dict) -> bool:
    """Whether a stored series used more dose than its body region's routine level (the dose could be lowered)."""
    return (row.get("fraction_above_routine") or 0.0) > ABOVE_ROUTINE_SHARE


def artefact_slices(row: Dict) -> int:
    """How many slices of a stored series had their verdict set by artefacts (0 when not recorded: a model without
    a learned dose equivalent, or a store written before it was kept)."""
    return int(row.get("artefact_slices") or 0)


def worst_slice_driver(row: Dict, slices: Sequence[Dict]) -> Optional[str]:
    """What set the verdict of a series' worst slice (``noise`` or ``artefacts``); ``None`` when unknown."""
    worst = row.get("worst_slice")
    for item in slices:
        if worst is not None and item["slice_index"] == worst:
            return item.get("driver") or None
    return None


#: The factors a protocol is made of: (title, row field).
PROTOCOL_FACTORS = (("scanner model", "scanner_model"), ("kernel", "kernel"), ("kVp", "kvp"),
                    ("slice thickness (mm)", "slice_thickness_mm"))


def _factor_text(row: Dict, column: str) -> str:
    value = row.get(column)
    if value is None or value == "":
        return "unknown"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def protocol_of(row: Dict) -> str:
    """The protocol of a series as text: scanner model, kernel, kVp and slice thickness."""
    model, kernel, kvp, thickness = (_factor_text(row, column) for _, column in PROTOCOL_FACTORS)
    return f"{model} / {kernel} / {kvp} kV / {thickness} mm"


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Modified z-score of each value, 0.6745 (x - median) / MAD. Where the MAD is 0 the mean absolute
    deviation times 1.2533 takes its place (both estimate the SD for normal data); where that is 0 too
    every z is 0."""
    x = np.asarray(values, dtype=np.float64)
    median = np.median(x)
    deviation = np.abs(x - median)
    mad = np.median(deviation)
    if mad > 0:
        return 0.6745 * (x - median) / mad
    mean_deviation = deviation.mean()
    if mean_deviation > 0:
        return (x - median) / (1.2533 * mean_deviation)
    return np.zeros_like(x)


def protocol_statistics(rows: List[Dict]) -> Tuple[List[Dict], Dict[Tuple[str, str], float]]:
    """Per-protocol summary of the scored series and the robust z of each series' mean score within its
    protocol (keyed by ``(series_uid, weights_id)``; only for protocols with enough series)."""
    groups: Dict[str, List[Dict]] = OrderedDict()
    for row in sorted((r for r in rows if r["status"] == "scored" and r["mean_score"] is not None),
                      key=protocol_of):
        groups.setdefault(protocol_of(row), []).append(row)
    summary, z_of = [], {}
    for protocol, members in groups.items():
        scores = np.array([r["mean_score"] for r in members])
        noise = [r["mean_noise_hu"] for r in members if r["mean_noise_hu"] is not None]
        outliers = 0
        if len(members) >= MIN_PROTOCOL_SERIES:
            for row, z in zip(members, robust_z(scores)):
                z_of[(row["series_uid"], row["weights_id"])] = float(z)
                outliers += abs(z) > OUTLIER_Z
        summary.append({"protocol": protocol, "series": len(members), "median_score": float(np.median(scores)),
                        "score_range": (float(scores.min()), float(scores.max())),
                        "median_noise_hu": float(np.median(noise)) if noise else None,
                        "inadequate_series": sum((r["fraction_inadequate"] or 0) > 0 for r in members),
                        "above_routine_series": sum(above_routine(r) for r in members),
                        "artefact_series": sum(artefact_slices(r) > 0 for r in members),
                        "outliers": outliers if len(members) >= MIN_PROTOCOL_SERIES else None})
    return summary, z_of


def distribution_plot_png(rows: List[Dict]) -> Optional[bytes]:
    """Box plots with the series as dots: series mean score (top row), mean noise in HU and median dose
    equivalent (log scale, routine doses; series above their region's routine level in dark blue, the routine
    level dashed) grouped by each protocol factor (columns). ``None`` without scored series."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [r for r in rows if r["status"] == "scored" and r["mean_score"] is not None]
    if not scored:
        return None
    figure = Figure(figsize=(3.2 * len(PROTOCOL_FACTORS), 9.0), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, len(PROTOCOL_FACTORS), squeeze=False)
    rng = np.random.default_rng(0)
    for column, (title, field) in enumerate(PROTOCOL_FACTORS):
        groups: Dict[str, List[Dict]] = OrderedDict()
        for row in sorted(scored, key=lambda r: _factor_text(r, field)):
            groups.setdefault(_factor_text(row, field), []).append(row)
        labels = [label if len(label) <= 14 else label[:13] + "…" for label in groups]
        for line, (name, colour, unit) in enumerate((("mean_score", SCORE_COLOUR, "series mean score"),
                                                     ("mean_noise_hu", NOISE_COLOUR, "series noise (HU)"),
                                                     ("median_dose_equivalent", DOSE_COLOUR,
                                                      "median dose equivalent\n(routine doses)"))):
            ax = axes[line][column]
            data = [[r.get(name) for r in members if r.get(name) is not None] for members in groups.values()]
            marks = [[ABOVE_COLOUR if above_routine(r) else colour for r in members if r.get(name) is not None]
                     for members in groups.values()]
            positions = [n + 1 for n, values in enumerate(data) if values]
            if positions:
                ax.boxplot([values for values in data if values], positions=positions, widths=0.5,
                           showfliers=False, patch_artist=True,
                           boxprops={"facecolor": colour + "33", "edgecolor": colour},
                           medianprops={"color": colour, "linewidth": 2}, whiskerprops={"color": colour},
                           capprops={"color": colour})
                for n, values in enumerate(data):
                    jitter = rng.uniform(-0.12, 0.12, len(values))
                    ax.scatter(np.full(len(values), n + 1.0) + jitter, values, s=14, color=marks[n], zorder=3)
            if name == "median_dose_equivalent":
                ax.set_yscale("log")
                ax.axhline(1.0, color="#555", linestyle="--", linewidth=1)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30 if len(labels) > 3 else 0, ha="right"
                          if len(labels) > 3 else "center", fontsize=8)
            ax.set_xlim(0.4, len(labels) + 0.6)
            ax.grid(axis="y", color="#ddd")
            if column == 0:
                ax.set_ylabel(unit)
            if line == 0:
                ax.set_title(f"by {title}", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_PATH_IN_PARENTHESES = re.compile(r"\s*\([^()]*[/\\][^()]*\)\s*$")


def group_problems(problems: List[Dict]) -> List[Dict]:
    """Problems grouped by folder and reason (a trailing note naming another file is left out of the
    reason), largest groups first: ``{"folder", "reason", "paths"}``."""
    groups: Dict[Tuple[str, str], List[str]] = OrderedDict()
    for problem in problems:
        path = str(problem["path"] or "")
        reason = _PATH_IN_PARENTHESES.sub("", str(problem["message"] or ""))
        groups.setdefault((os.path.dirname(path), reason), []).append(path)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [{"folder": folder, "reason": reason, "paths": paths} for (folder, reason), paths in ordered]


def _svg_plot(slices: List[Dict], threshold: Optional[float], width: int = 220, height: int = 48) -> str:
    """The score along the scan; slices without a score (a learned model's without a verdict) leave a gap, and
    slices whose verdict was set by artefacts are marked with a dot."""
    known = [(n, row["score"]) for n, row in enumerate(slices) if row["score"] is not None]
    if len(known) < 2:
        return ""
    scores = [s for _, s in known]
    low, high = min(min(scores), threshold or 1.0) - 0.02, max(max(scores), 1.0) + 0.02
    step = (width - 1) / max(len(slices) - 1, 1)

    def y_of(value: float) -> float:
        return (high - value) / (high - low) * (height - 1)

    runs: List[List[Tuple[float, float]]] = []  # unbroken stretches of scored slices
    for position, (n, s) in enumerate(known):
        if position == 0 or n != known[position - 1][0] + 1:
            runs.append([])
        runs[-1].append((n * step, y_of(s)))
    lines = "".join(f'<polyline fill="none" stroke="{SCORE_COLOUR}" stroke-width="1.5" '
                    f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in run)}"/>' if len(run) > 1 else
                    f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="1.2" fill="{SCORE_COLOUR}"/>'
                    for run in runs)
    marks = "".join(f'<circle cx="{n * step:.1f}" cy="{y_of(row["score"]):.1f}" r="2.2" fill="{ARTEFACT_COLOUR}"/>'
                    for n, row in enumerate(slices)
                    if row.get("driver") == DRIVER_ARTEFACTS and row["score"] is not None)
    line = ""
    if threshold is not None:
        line = (f'<line x1="0" x2="{width}" y1="{y_of(threshold):.1f}" y2="{y_of(threshold):.1f}" stroke="#c0392b" '
                'stroke-dasharray="3,2"/>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">{line}{lines}{marks}'
            "</svg>")


_REPORT_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h2{margin-top:1.4em}
.wide{overflow-x:auto}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:middle}
th{background:#eef;cursor:pointer;white-space:nowrap}
td{max-width:26em}
td.uid{overflow-wrap:anywhere;font-size:11px}
td.num{text-align:right;white-space:nowrap}
tr.inadequate{background:#fadbd8}
tr.above{background:#d6eaf8}
tr.artefacts td.artefacts{background:#f5cba7;font-weight:bold}
tr.outlier td.z{background:#f9e79f;font-weight:bold}
tr.skipped,tr.failed{color:#777}
details{margin:2px 0}
summary{cursor:pointer}
details ul{margin:2px 0 6px 1.5em;font-size:12px}"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
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


def _cell(value, css: str = "") -> str:
    text = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
    return f'<td{f" class={chr(34)}{css}{chr(34)}" if css else ""}>{html.escape(text)}</td>'


def _fixed(value: Optional[float], digits: int, suffix: str = "") -> Optional[str]:
    return None if value is None else f"{value:.{digits}f}{suffix}"


def _table(headers: Sequence[str], body: Sequence[str], sortable: bool = True) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return (f'<div class="wide"><table{" class=sortable" if sortable else ""}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _protocol_section(summary: List[Dict]) -> str:
    body = []
    for p in summary:
        body.append("<tr>" + _cell(p["protocol"]) + _cell(p["series"], "num")
                    + _cell(_fixed(p["median_score"], 4), "num")
                    + _cell(f"{p['score_range'][0]:.4f} - {p['score_range'][1]:.4f}", "num")
                    + _cell(_fixed(p["median_noise_hu"], 1), "num") + _cell(p["inadequate_series"], "num")
                    + _cell(p["above_routine_series"], "num") + _cell(p.get("artefact_series", 0), "num")
                    + _cell("too few series" if p["outliers"] is None else p["outliers"], "num") + "</tr>")
    headers = ["protocol (scanner / kernel / kVp / slice)", "series", "median score", "score range",
               "median noise (HU)", "series with inadequate slices", "series above routine",
               "series with slices set by artefacts", "outliers"]
    return _table(headers, body)


def _outlier_section(rows: List[Dict], z_of: Dict) -> str:
    outliers = sorted((r for r in rows if abs(z_of.get((r["series_uid"], r["weights_id"]), 0.0)) > OUTLIER_Z),
                      key=lambda r: -abs(z_of[(r["series_uid"], r["weights_id"])]))
    if not outliers:
        return (f"<p>No series has a mean score with |robust z| above {OUTLIER_Z} within its protocol "
                f"(protocols with at least {MIN_PROTOCOL_SERIES} scored series).</p>")
    body = ["<tr>" + _cell(r["patient_id"]) + _cell(r["study_date"]) + _cell(r["description"])
            + _cell(protocol_of(r)) + _cell(_fixed(r["mean_score"], 4), "num")
            + _cell(_fixed(z_of[(r["series_uid"], r["weights_id"])], 1), "num")
            + _cell(r["series_uid"], "uid") + "</tr>" for r in outliers]
    return _table(["patient", "study date", "series", "protocol", "mean score", "robust z", "series key"], body)


def _series_section(rows: List[Dict], plots: Dict, z_of: Dict, threshold: Optional[float]) -> str:
    body = []
    for row in rows:
        key = (row["series_uid"], row["weights_id"])
        thumbnail = ""
        if row["worst_thumbnail_png"]:
            encoded = base64.b64encode(row["worst_thumbnail_png"]).decode()
            thumbnail = f'<img alt="worst slice" src="data:image/png;base64,{encoded}" width="96">'
        z = z_of.get(key)
        css = "inadequate" if (row["fraction_inadequate"] or 0) > 0 else row["status"]
        if above_routine(row):
            css += " above"
        if artefact_slices(row):
            css += " artefacts"
        if z is not None and abs(z) > OUTLIER_Z:
            css += " outlier"
        status = row["status"] + (f": {row['reason']}" if row["reason"] else "")
        cells = (_cell(status) + _cell(row["patient_id"]) + _cell(row["study_date"]) + _cell(row["description"])
                 + _cell(row["scanner_model"]) + _cell(row["kernel"]) + _cell(row["kvp"], "num")
                 + _cell(row["slice_thickness_mm"], "num") + _cell(row["num_slices"], "num")
                 + _cell(_fixed(row["mean_score"], 4), "num") + _cell(_fixed(row["min_score"], 4), "num")
                 + _cell(_fixed(z, 1), "num z")
                 + _cell(None if row["fraction_inadequate"] is None else f"{100 * row['fraction_inadequate']:.0f}%",
                         "num")
                 + _cell(_fixed(row["mean_noise_hu"], 1), "num") + _cell(row.get("region"))
                 + _cell(_fixed(row.get("median_dose_equivalent"), 2), "num")
                 + _cell(None if row.get("fraction_above_routine") is None
                         else f"{100 * row['fraction_above_routine']:.0f}%", "num")
                 + _cell(row.get("artefact_slices"), "num artefacts")
                 + _cell(worst_slice_driver(row, plots.get(key, []))))
        body.append(f'<tr class="{css}">{cells}<td>{_svg_plot(plots.get(key, []), threshold)}</td>'
                    f'<td>{thumbnail}</td>{_cell(row["series_uid"], "uid")}</tr>')
    headers = ["status", "patient", "study date", "series", "scanner", "kernel", "kVp", "slice (mm)", "slices",
               "mean score", "min score", "robust z", "% inadequate", "noise (HU)", "region",
               "median dose equivalent", "% above routine", "slices set by artefacts", "worst slice set by",
               "score along the scan",
               "worst slice", "series key"]
    return _table(headers, body)


def _problem_section(problems: List[Dict]) -> str:
    items = []
    for group in group_problems(problems):
        names = "".join(f"<li><code>{html.escape(path)}</code></li>" for path in group["paths"][:500])
        more = f"<li>... and {len(group['paths']) - 500} more</li>" if len(group["paths"]) > 500 else ""
        items.append(f"<details><summary><b>{len(group['paths'])}</b> &times; {html.escape(group['reason'])} "
                     f"in <code>{html.escape(group['folder'] or '.')}</code></summary><ul>{names}{more}</ul>"
                     "</details>")
    return "".join(items) or "<p>None.</p>"


def write_html_report(store_path: os.PathLike[str] | str, report_path: os.PathLike[str] | str,
                      threshold: Optional[float] = None, title: str = "DistilIQA archive quality report") -> int:
    """Write the report of the store at ``store_path``; returns the number of series rows."""
    with ResultStore(store_path) as store:
        rows = store.series_rows()
        plots = {(r["series_uid"], r["weights_id"]): store.slice_rows(r["series_uid"], r["weights_id"])
                 for r in rows if r["status"] == "scored"}
        problems = store.problem_rows()
        exams = stored_exam_rows(store)
        if exams is None:  # a store no batch or merge of this version has finished
            from .exams import store_exam_rows

            exams = store_exam_rows(store)
    rows.sort(key=lambda r: (r["status"] != "scored", -(r["fraction_inadequate"] or 0), r["mean_score"] or 0))
    protocols, z_of = protocol_statistics(rows)
    picture = distribution_plot_png(rows)
    plot = (f'<img alt="series scores and noise by protocol factor" src="data:image/png;base64,'
            f'{base64.b64encode(picture).decode()}">' if picture else "<p>No scored series.</p>")
    scored = sum(r["status"] == "scored" for r in rows)
    flagged = sum((r["fraction_inadequate"] or 0) > 0 for r in rows)
    above = sum(above_routine(r) for r in rows)
    artefacts = sum(artefact_slices(r) > 0 for r in rows)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_REPORT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{scored} series scored, {flagged} with inadequate slices, {above} above routine (the dose could "
            f"be lowered), {artefacts} with slices whose verdict was set by artefacts (the model sees worse than "
            f"their noise explains: streaks, rings, motion), {len(rows) - scored} skipped or failed; "
            f"{len(problems)} problem(s). Scores are DistilIQA's no-reference quality estimates, for quality "
            "assurance, not diagnosis. Click a column heading to sort.</p>"
            f"<h2>Protocols</h2>{_protocol_section(protocols)}"
            f"<h2>Scores and noise by protocol</h2>{plot}"
            f"<h2>Outliers within their protocol</h2><p>Robust z-score of the series mean score within its "
            f"protocol: 0.6745 (x - median) / MAD; |z| &gt; {OUTLIER_Z} is an outlier.</p>"
            f"{_outlier_section(rows, z_of)}"
            f"<h2>Series</h2>{_series_section(rows, plots, z_of, threshold)}"
            f"{exam_sections(exams, rows)}"
            f"<h2>Problems ({len(problems)})</h2>{_problem_section(problems)}"
            f"<script>{_SORT_SCRIPT}</script></body></html>")
    Path(report_path).write_text(page, encoding="utf-8")
    return len(rows)

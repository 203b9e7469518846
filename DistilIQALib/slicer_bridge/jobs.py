"""The panel's long jobs as command lines for a child process, and reading their results back.

Slicer's panel runs every long job (Assess Quality, the DICOM database batch, training, site
adaptation) as ``<PythonSlicer> -m DistilIQALib ...`` through
:class:`~DistilIQALib.slicer_bridge.background.BackgroundProcess`:
a Python thread inside Slicer's process would starve, since Slicer's Python keeps the interpreter
lock while the Qt event loop idles. This module builds those command lines from the panel's
settings, turns the child's progress lines into progress-bar values, and reads a scoring run's
CSV and JSON back into :class:`~DistilIQALib.quality.results.SliceScores`. No Qt or Slicer here.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .background import BackgroundProcess, engine_command

SCORES_CSV = "scores.csv"
SUMMARY_JSON = "summary.json"
STUDENT_MODEL = "student.safetensors"  # written by train-student
ADAPTED_MODEL = "distiliqa_student.safetensors"  # written by recipe
TRAINING_TASKS = ("preprocess", "train-teacher", "train-student", "evaluate")


def chosen_path(value) -> Optional[str]:
    """``value`` as a path string, or ``None`` when nothing was chosen.

    A path field bound to an empty path edit in Slicer reads back as ``pathlib.Path("")``, which is
    ``Path(".")``: the working directory, never what the user meant."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else text


def engine_root() -> str:
    """The folder that holds the ``DistilIQALib`` package (the child process imports it from there)."""
    return str(Path(__file__).resolve().parent.parent.parent)


def engine_environment(environment: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``PYTHONPATH`` for a child that must import this ``DistilIQALib``: its folder first, then whatever
    ``PYTHONPATH`` already held (Slicer's launcher sets it for PythonSlicer; it must not be lost)."""
    environment = os.environ if environment is None else environment
    existing = environment.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([engine_root()] + ([existing] if existing else []))}


def score_arguments(volume_file, work_dir, weights=None, device: str = "auto", batch_size: int = 0,
                    region: str = "auto", series_uid: str = "") -> List[str]:
    """``score VOLUME --out WORK/scores.csv --json WORK/summary.json --device D [--series UID] [--weights W]
    [--batch-size N] [--region R] --progress-lines``; ``VOLUME`` a volume file or a DICOM folder (with
    ``series_uid``, the series in it), ``batch_size`` 0 means the engine's default for the device, ``region``
    ``auto`` each slice's body region read from the image."""
    work_dir = Path(work_dir)
    arguments = ["score", str(volume_file), "--out", str(work_dir / SCORES_CSV), "--json",
                 str(work_dir / SUMMARY_JSON), "--device", device or "auto"]
    if series_uid:
        arguments += ["--series", series_uid]
    weights = chosen_path(weights)
    if weights:
        arguments += ["--weights", weights]
    if batch_size:
        arguments += ["--batch-size", str(int(batch_size))]
    if region and region != "auto":
        arguments += ["--region", region]
    return arguments + ["--progress-lines"]


#: The environment variable the panel's DICOMweb batch takes the server's credentials from, when it is set (an
#: ``Authorization`` header value or a bearer token; passed on by name, never on the command line).
DICOMWEB_AUTH_ENV = "DISTILIQA_DICOMWEB_AUTH"


def batch_arguments(database_folder, store, weights=None, dicomweb_url: str = "",
                    environment: Optional[Dict[str, str]] = None) -> List[str]:
    """The panel's batch: every CT series of Slicer's DICOM database folder, or with ``dicomweb_url`` of that
    DICOMweb server (``batch --dicomweb URL``), into the results store ``store``."""
    environment = os.environ if environment is None else environment
    url = (dicomweb_url or "").strip()
    arguments = ["batch", "--dicomweb", url] if url else ["batch", str(database_folder)]
    arguments += ["--db", str(store)]
    if url and environment.get(DICOMWEB_AUTH_ENV):
        arguments += ["--auth-env", DICOMWEB_AUTH_ENV]
    weights = chosen_path(weights)
    return arguments + (["--weights", weights] if weights else [])


def training_arguments(task: str, dataset, dataset_type: str, output, teacher_preset: str, student_preset: str,
                       folds: int, epochs: int, batch_size: int, learning_rate: float, distillation_weight: float,
                       device: str) -> List[str]:
    """The command line of one of the panel's training buttons (:data:`TRAINING_TASKS`)."""
    if task not in TRAINING_TASKS:
        raise ValueError(f"unknown training task {task!r}")
    dataset = chosen_path(dataset)
    if not dataset:
        raise ValueError("Choose the dataset folder.")
    if task == "preprocess":
        return ["preprocess", dataset, "--type", dataset_type]
    output = chosen_path(output)
    if not output:
        raise ValueError("Choose the output folder.")
    if task == "evaluate":
        return ["evaluate", dataset, "--weights", str(Path(output) / STUDENT_MODEL), "--output",
                str(Path(output) / "evaluation"), "--device", device]
    preset = teacher_preset if task == "train-teacher" else student_preset
    arguments = [task, dataset, "--output", output, "--device", device, "--preset", preset, "--folds", str(folds),
                 "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", repr(float(learning_rate)),
                 "--progress-lines"]
    if task == "train-student":
        arguments += ["--distillation-weight", repr(float(distillation_weight))]
    return arguments


def adapt_arguments(output, sources, base_weights=None, device: str = "auto") -> List[str]:
    """*Adapt to this site*: ``recipe --output OUTPUT --sources DIR [--base-weights FILE] --device D
    --progress-lines``, with the site's CT folder as ``DIR``; the adapted model is :func:`adapted_model_path`."""
    sources, output = chosen_path(sources), chosen_path(output)
    if not sources:
        raise ValueError("Choose the folder with this site's CT scans (the dataset folder).")
    if not output:
        raise ValueError("Choose the output folder.")
    arguments = ["recipe", "--output", output, "--sources", sources]
    base_weights = chosen_path(base_weights)
    if base_weights:
        arguments += ["--base-weights", base_weights]
    return arguments + ["--device", device or "auto", "--progress-lines"]


def student_model_path(output) -> Path:
    return Path(str(output)) / STUDENT_MODEL


def adapted_model_path(output) -> Path:
    return Path(str(output)) / ADAPTED_MODEL


def progress_value(record: Dict) -> Optional[Tuple[int, int]]:
    """``(value, maximum)`` for a progress bar from one progress record: slices (``done``/``total``) of a
    scoring run or epochs (``epoch``/``epochs``) of a training run; ``None`` for other records."""
    for done, total in (("done", "total"), ("epoch", "epochs")):
        if isinstance(record.get(done), int) and isinstance(record.get(total), int) and record[total] > 0:
            return min(record[done], record[total]), record[total]
    return None


def error_line(lines: Sequence[str]) -> str:
    """The engine's one-line error (``distiliqa: error: ...``) among a child's output lines, else its last line."""
    for line in reversed(lines):
        if line.startswith("distiliqa: "):
            text = line[len("distiliqa: "):]
            return text[len("error: "):] if text.startswith("error: ") else text
    return lines[-1] if lines else "the process ended without output"


class ScoreJob:
    """*Assess Quality* in a child process: ``score`` on a volume file (or a DICOM folder's series, ``series_uid``),
    progress from its lines, results read back from ``work_dir``. The caller writes the volume file and removes
    ``work_dir`` (:meth:`cleanup`)."""

    def __init__(self, volume_file, work_dir, weights=None, device: str = "auto", batch_size: int = 0,
                 python: Optional[str] = None, region: str = "auto", series_uid: str = "") -> None:
        self.work_dir = Path(work_dir)
        self.weights = chosen_path(weights)
        self.arguments = score_arguments(volume_file, self.work_dir, self.weights, device, batch_size, region,
                                         series_uid)
        self.command = engine_command(self.arguments, python)
        self.done, self.total = 0, 0
        self.device_name = ""
        self.log: List[str] = []
        self.exit_code: Optional[int] = None
        self.started = time.monotonic()
        self._first_slice_at: Optional[float] = None
        self.cancel_requested = False
        self.process = BackgroundProcess(self.command, env=engine_environment())

    def poll(self) -> Optional[int]:
        """Take in the child's new output; the exit code once it has ended, else ``None``."""
        lines, records, code = self.process.poll()
        self.log += lines
        for record in records:
            self.device_name = record.get("device", self.device_name)
            value = progress_value(record)
            if value is not None:
                self.done, self.total = value
                if self.done == 0:
                    self._first_slice_at = time.monotonic()
        self.exit_code = code
        return code

    def wait(self, timeout_s: Optional[float] = None, interval_s: float = 0.05) -> int:
        """Poll until the child ends (scripts and tests); ``TimeoutError`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"scoring did not finish in {timeout_s} s")
            time.sleep(interval_s)
        return self.exit_code

    def seconds_left(self) -> Optional[float]:
        """Estimated seconds to finish, from the pace of the slices scored so far."""
        if self._first_slice_at is None or self.done <= 0:
            return None
        return (time.monotonic() - self._first_slice_at) * (self.total - self.done) / self.done

    def cancel(self) -> None:
        """Stop the child and everything it started."""
        self.cancel_requested = True
        self.process.cancel()

    def error(self) -> str:
        """One line saying why the run failed."""
        return error_line(self.log)

    def results(self):
        """The run's :class:`~DistilIQALib.quality.results.SliceScores` (after exit code 0)."""
        return read_score_results(self.work_dir / SCORES_CSV, self.work_dir / SUMMARY_JSON, self.weights)

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _float_or_nan(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def read_score_results(csv_path, json_path, weights=None):
    """A ``score`` run's per-slice CSV and JSON summary as :class:`~DistilIQALib.quality.results.SliceScores`.

    ``weights`` is the model the run used (``None``: the shipped one); its metadata gives the score's
    meaning, adequacy bands and dose calibration. The CSV keeps each slice's score and the spread of the
    student's outputs, so ``outputs`` holds two columns, ``score -/+ spread``, with that mean and spread."""
    from ..quality.model_info import read_info, resolve_weights
    from ..quality.region_labels import UNKNOWN, SliceRegions
    from ..quality.results import EFFECTIVE_NOISE, SliceScores, verdict_ssde

    info = read_info(resolve_weights(weights))
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads(Path(json_path).read_text())
    if not rows or len(rows) != summary.get("num_slices"):
        raise ValueError(f"{csv_path} does not hold the {summary.get('num_slices')} slices its summary names")
    # a learned model's score is empty where a slice has no verdict
    score = np.array([_float_or_nan(r["score"]) for r in rows], dtype=np.float32)
    effective = np.array([_float_or_nan(r.get("effective_noise_hu", "")) for r in rows], dtype=np.float64)
    learned = summary.get("score_name") == EFFECTIVE_NOISE or bool(np.isfinite(effective).any())
    spread = np.array([_float_or_nan(r["score_spread"]) for r in rows], dtype=np.float32)
    spread = np.nan_to_num(spread)
    dose = summary.get("scanner_dose") or {}
    return SliceScores(
        slice_index=np.array([int(r["slice_index"]) for r in rows]),
        z_mm=np.array([float(r["z_mm"]) for r in rows], dtype=np.float64), score=score,
        outputs=_outputs(score, spread),
        noise_hu=np.array([_float_or_nan(r["noise_hu"]) for r in rows], dtype=np.float32), info=info,
        source=summary.get("source", ""), device=summary.get("device", ""),
        elapsed_s=float(summary.get("elapsed_s") or 0.0), matrix=tuple(summary.get("matrix") or ()),
        spacing_mm=tuple(summary.get("spacing_mm") or ()), warnings=list(summary.get("warnings") or ()),
        diameter_cm=np.array([_float_or_nan(r.get("water_diameter_cm", "")) for r in rows], dtype=np.float32),
        thickness_mm=_float_or_nan(summary.get("slice_thickness_mm")),
        kernel=summary.get("kernel") or "", manufacturer=summary.get("manufacturer") or "",
        series_description=summary.get("series_description") or "",
        effective_noise_hu=effective if learned else None,
        regions=SliceRegions([r.get("region") or UNKNOWN for r in rows],
                             [_region_reason(r.get("verdict_note") or "") for r in rows],
                             summary.get("region_source") or "image"),
        ssde_mgy=verdict_ssde(dose.get("ssde_mgy"), [r.get("ssde_mgy") for r in rows]),
        ssde_upper_bound=bool(dose.get("dw_truncated")))


def _outputs(score: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Two outputs, ``score -/+ spread``, whose spread is the stored one (around 0 where a slice has no score)."""
    centre = np.nan_to_num(score)
    return np.stack([centre - spread, centre + spread], axis=1)


def _region_reason(note: str) -> str:
    """The reason a slice's region is unknown, as its verdict note gives it ('' when it is known)."""
    prefix = "body region unknown: "
    return note[len(prefix):] if note.startswith(prefix) else ""


# --- the panel's background jobs: one at a time per kind ----------------------------------------------------------

#: Each task the panel runs in the background, and its kind: one job of a kind runs at a time (the kinds share no
#: widgets, so a batch may run during training); Assess Quality is its own kind, run by the panel's ScoreJob.
JOB_KINDS = {"batch": "batch", "preprocess": "training", "train-teacher": "training", "train-student": "training",
             "evaluate": "training", "recipe": "training"}


class RunningJob:
    """A job the panel started: its task, child process, and what it needs when it ends, kept here, not in the
    parameter node (a scene close replaces that node while the job runs on): ``result_path``, a model file to offer
    once the job has succeeded (``None``: nothing to offer)."""

    def __init__(self, task: str, process, result_path: Optional[Path] = None, widgets=None) -> None:
        self.task, self.kind, self.process = task, JOB_KINDS[task], process
        self.result_path = None if result_path is None else Path(result_path)
        self.widgets = widgets
        self.log: List[str] = []


class JobBoard:
    """The running jobs by kind. :meth:`request` says what a click on a job's button means: ``"start"`` when
    nothing of its kind runs, else ``"ask"`` with the running job, to be cancelled only after the user agrees
    (:meth:`question`); a job never cancels another unasked."""

    def __init__(self) -> None:
        self.running: Dict[str, RunningJob] = {}

    def request(self, task: str) -> Tuple[str, Optional[RunningJob]]:
        job = self.running.get(JOB_KINDS[task])
        return ("start", None) if job is None else ("ask", job)

    @staticmethod
    def question(running: RunningJob, task: str) -> str:
        if running.task == task:
            return f"'{running.task}' is running. Cancel it?"
        return f"'{running.task}' is running; '{task}' can start once it has ended. Cancel '{running.task}' now?"

    def add(self, job: RunningJob) -> RunningJob:
        if job.kind in self.running:
            raise RuntimeError(f"'{self.running[job.kind].task}' is still running")
        self.running[job.kind] = job
        return job

    def finished(self, job: RunningJob) -> None:
        if self.running.get(job.kind) is job:
            del self.running[job.kind]

    def jobs(self) -> List[RunningJob]:
        return list(self.running.values())


def result_to_offer(task: str, output) -> Optional[Path]:
    """The model a successful ``task`` writes into ``output`` (offered to the user), ``None`` when it writes none."""
    if task == "train-student":
        return student_model_path(output)
    if task == "recipe":
        return adapted_model_path(output)
    return None


def bound_widgets(widgets, property_name: str = "SlicerParameterName") -> Dict[str, object]:
    """Parameter name -> widget for each of ``widgets`` whose Qt property ``property_name`` names a parameter: the
    mapping Slicer's ``connectGui`` builds (parameterNodeWrapper/wrapper.py:241-251 in 5.8.1), for
    ``connectParametersToGui``, the call that returns its binding's tag on every release."""
    found = {}
    for widget in widgets:
        read = getattr(widget, "property", None)
        name = read(property_name) if callable(read) else None
        if name:
            found[str(name)] = widget
    return found

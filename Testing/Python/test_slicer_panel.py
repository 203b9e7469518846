"""What Slicer's own process runs of the engine: imports that load no PyTorch, the dependency plan of each job, and
the job rules of the panel (one job of a kind at a time, a question before one is cancelled, the model to offer
kept with the job), on real child processes."""
import json
import subprocess
import sys
import time
from importlib.machinery import PathFinder
from pathlib import Path

import numpy as np
import pytest

from DistilIQALib.slicer_bridge.background import BackgroundProcess
from DistilIQALib.slicer_bridge.dependencies import TORCH, needed_modules, plan_for
from DistilIQALib.slicer_bridge.jobs import JobBoard, RunningJob, result_to_offer, training_arguments

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "einops", "safetensors", "SimpleITK", "matplotlib")


def _heavy_modules_after(script: str) -> list:
    """The heavy packages' modules loaded once ``script`` has run in a fresh interpreter."""
    script += ("import json, sys\n"
               f"print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in {HEAVY!r})))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_panels_imports_and_command_lines_load_no_torch():
    """In a fresh interpreter, as Slicer's process is before the first job: importing the package, the job
    builders and the dependency check, and building every job's command line, loads none of the heavy packages,
    so a missing PyTorch is found by the dependency offer, never by an ImportError."""
    script = (
        "import DistilIQALib, DistilIQALib.slicer_bridge.jobs as jobs\n"
        "import DistilIQALib.slicer_bridge.background, DistilIQALib.slicer_bridge.dependencies as d\n"
        "jobs.batch_arguments('db', 'store.sqlite', None, 'http://127.0.0.1:8042/dicom-web')\n"
        "jobs.training_arguments('train-student', 'data', 'tcia', 'out', 'fast', 'fast', 2, 1, 2, 1e-3, 0.75, 'cpu')\n"
        "jobs.adapt_arguments('out', 'site')\n"
        "jobs.score_arguments('volume.nrrd', 'work')\n"
        "d.plan_for(None)\n")
    assert _heavy_modules_after(script) == []
    # the names the package offers still work, loaded on first use
    check = subprocess.run([sys.executable, "-c", "import sys, DistilIQALib; DistilIQALib.Scorer; "
                            "DistilIQALib.read_volume; print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT, check=True)
    assert check.stdout.strip() == "True"


def test_a_python_without_the_modules_packages_gets_one_plan_naming_them_all(tmp_path):
    """Looked up in an empty folder (a real import search that finds nothing): PyTorch through the PyTorch
    extension, einops and safetensors with pip, and Slicer's own packages reported as broken, never installed."""
    nothing = lambda name: PathFinder.find_spec(name, [str(tmp_path)])  # noqa: E731
    plan = plan_for(None, nothing)
    assert plan.torch and plan.pip == ["einops>=0.7", "safetensors>=0.4"]
    assert plan.broken == ["numpy", "SimpleITK", "pydicom"] and not plan.ready
    assert "PyTorch" in plan.question() and "einops>=0.7" in plan.question()
    assert "matplotlib" not in needed_modules(["evaluate", "data", "--weights", "w", "--output", "o"])
    assert "matplotlib" in needed_modules(["score", "ct.nrrd", "--plot", "p.png"])
    assert {"dicomweb_client", "requests"} <= set(needed_modules(["batch", "--dicomweb", "http://x/dicom-web"]))
    assert plan_for(None).ready  # this Python has everything Assess Quality needs
    assert TORCH in needed_modules(None)


def _sleeper():
    return BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"])


def test_one_job_of_a_kind_at_a_time_and_none_cancelled_unasked(tmp_path):
    board = JobBoard()
    training = board.add(RunningJob("train-teacher", _sleeper()))
    try:
        assert board.request("batch") == ("start", None)  # another kind: runs beside the training
        for task in ("train-student", "evaluate", "recipe", "preprocess"):
            action, running = board.request(task)
            assert action == "ask" and running is training
        assert "Cancel 'train-teacher' now?" in board.question(training, "train-student")
        assert board.question(training, "train-teacher") == "'train-teacher' is running. Cancel it?"
        refused = _sleeper()
        try:
            with pytest.raises(RuntimeError, match="still running"):
                board.add(RunningJob("evaluate", refused))
        finally:
            refused.cancel()  # the board refused it: it is the test's to end
        assert training.process.running  # asking cancels nothing
    finally:
        training.process.cancel()
    deadline = time.monotonic() + 30
    while training.process.poll()[2] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    board.finished(training)
    assert board.request("train-student") == ("start", None) and board.jobs() == []


def test_the_model_to_offer_is_kept_with_the_job(tmp_path):
    """A scene close during training replaces the parameter node (its output path then reads back as empty): the
    path of the model the job writes is decided when it starts, from the settings it was started with."""
    output = tmp_path / "run"
    arguments = training_arguments("train-student", tmp_path / "data", "tcia", output, "fast", "fast", 2, 1, 2,
                                   1e-3, 0.75, "cpu")
    job = RunningJob("train-student", None, result_to_offer("train-student", output))
    assert job.result_path == output / "student.safetensors" and str(output) in arguments
    assert result_to_offer("recipe", output) == output / "distiliqa_student.safetensors"
    assert result_to_offer("evaluate", output) is None and result_to_offer("preprocess", output) is None



def _panel_imports():
    """Every ``DistilIQALib`` name that DistilIQA/DistilIQA.py imports, wherever in the file (the panel imports
    them where it uses them, so the whole file is read, its self-test included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse((ROOT / "DistilIQA" / "DistilIQA.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "DistilIQALib":
            names.update((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update((alias.name, None) for alias in node.names if alias.name.split(".")[0] == "DistilIQALib")
    return sorted(names, key=str)


def test_every_engine_import_of_the_module_loads_no_torch():
    """What the module imports of the engine, each name found by reading DistilIQA.py (a new import there is
    checked without editing this test), imported in a fresh interpreter: none of the heavy packages loads."""
    names = _panel_imports()
    assert ("DistilIQALib.slicer_bridge.mrml", "show_stored_results") in names and len(names) > 20
    script = ("import importlib, json, sys\n"
              f"for module, name in {names!r}:\n"
              "    loaded = importlib.import_module(module)\n"
              "    if name is not None and not hasattr(loaded, name):\n"
              "        importlib.import_module(module + '.' + name)  # a submodule\n")
    assert _heavy_modules_after(script) == []

#: What the panel runs in Slicer's own process once a job has ended, in a fresh interpreter: *Assess Quality*'s
#: results read back and shown (DistilIQA.py: startScoring, showScoringResults, _showSummary, onSliceMoved,
#: setOverlay, onPlotDataSelected), then the DICOM database batch as the panel starts it and its results
#: (_fillBatchTable: showExamTable, batchRows; exportBatch; loadSeriesWithScores). The jobs themselves are real
#: child processes, which load PyTorch; this interpreter must not.
PANEL_READ_BACK = r"""
import json, sys, time
from pathlib import Path

import numpy as np
import slicer

from DistilIQALib.archive.exam_report import stored_exam_rows
from DistilIQALib.archive.exams import store_exam_rows
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.archive.stored import stored_scores, write_summary_csv
from DistilIQALib.quality.results import verdict_line
from DistilIQALib.slicer_bridge import mrml
from DistilIQALib.slicer_bridge.background import BackgroundProcess, engine_command
from DistilIQALib.slicer_bridge.dependencies import plan_for
from DistilIQALib.slicer_bridge.jobs import (JobBoard, RunningJob, ScoreJob, batch_arguments, chosen_path,
                                             engine_environment, error_line, progress_value)
from DistilIQALib.volume import CTVolume

weights, volume_file, database, work = sys.argv[1:5]
work = Path(work)
saved = np.load(volume_file)
scene = slicer.vtkMRMLScene()
ct = mrml.node_from_volume(scene, CTVolume(saved["hu"], tuple(saved["spacing"]), tuple(saved["origin"]),
                                           saved["direction"]), "CT")
out = {}

# Assess Quality
assert plan_for(None).ready
job = ScoreJob(mrml.write_volume_file(ct, str(work / "volume.nrrd")), work / "score", weights, "cpu", 0,
               sys.executable)
assert job.wait(300) == 0, error_line(job.log)
scores = job.results()
nodes = mrml.show_stored_results(ct, scores)
mrml.show_in_slice_views(scene, ct, nodes.quality_map, 0.35)
mrml.set_overlay(scene, None, 0.35)
mrml.set_overlay(scene, nodes.quality_map, 0.6)
summary = scores.summary()
table = nodes.table.GetTable()
out["assess"] = {"rows": table.GetNumberOfRows(), "scores": [table.GetValue(r, 2).ToDouble()
                                                            for r in range(table.GetNumberOfRows())],
                 "mean_score": summary["mean_score"], "verdict": verdict_line(summary),
                 "corner": mrml.score_text_at(nodes.table, float(scores.z_mm[2])),
                 "clicked_z": mrml.selected_z(scene, nodes.table, [nodes.score_chart.GetNthPlotSeriesNodeID(0)],
                                              [[2]])}

# Score DICOM database, as the panel starts it and shows what it stored
store = str(work / "results.sqlite")
arguments = batch_arguments(database, store, weights)
assert plan_for(arguments).ready
board = JobBoard()
batch = board.add(RunningJob("batch", BackgroundProcess(engine_command(arguments, sys.executable),
                                                        env=engine_environment())))
deadline, code = time.monotonic() + 300, None
while code is None and time.monotonic() < deadline:
    lines, records, code = batch.process.poll()
    batch.log += lines
    [progress_value(record) for record in records]
    time.sleep(0.05)
board.finished(batch)
assert code == 0, error_line(batch.log)
with ResultStore(store) as results:
    rows = [row for row in results.series_rows() if row["status"] == "scored"]
    exams = stored_exam_rows(results)
    exams = store_exam_rows(results) if exams is None else exams
exam_node = mrml.show_exam_table(scene, exams)
logic = slicer.vtkMRMLApplicationLogic()
logic.SetMRMLScene(scene)
mrml.show_table_in_views(logic, exam_node)
exported = write_summary_csv(store, str(work / "export.csv"))
uid = rows[0]["series_uid"]
stored = stored_scores(store, uid, chosen_path(weights))
stored_nodes = mrml.show_stored_results(ct, stored)
stored_table = stored_nodes.table.GetTable()
out["batch"] = {"series": [row["series_uid"] for row in rows],
                "exam_rows": exam_node.GetTable().GetNumberOfRows(), "exported": exported,
                "scores": [stored_table.GetValue(r, 2).ToDouble() for r in range(stored_table.GetNumberOfRows())],
                "mean_score": stored.summary()["mean_score"], "verdict": verdict_line(stored.summary())}
out["heavy"] = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
print(json.dumps(out))
"""


def test_results_read_back_into_mrml_load_no_torch(dicom_series, tmp_path):
    """Slicer's process shows a job's results without loading PyTorch (seconds of a frozen main window, and a
    second copy beside the one the PyTorch extension may load): the scores a real ``score`` run wrote and those
    a real batch stored are read back and pushed into real MRML (the table, charts, quality map, slice views, exam
    table), with no ``torch`` or ``einops`` in ``sys.modules``; what was shown is what the runs wrote."""
    import csv

    from DistilIQALib.io.reading import read_volume

    from .conftest import TEST_BANDS, TEST_CALIBRATION, query_rows, write_untrained_weights

    # what is shown must be what the runs wrote, whatever the model learned: an untrained one (made in milliseconds)
    weights = write_untrained_weights(tmp_path / "model.safetensors", num_outputs=3, input_size=64,
                                      adequacy=TEST_BANDS, dose_calibration=TEST_CALIBRATION)
    volume = read_volume(dicom_series)
    np.savez(tmp_path / "ct.npz", hu=volume.hu, spacing=volume.spacing_mm, origin=volume.origin_mm,
             direction=volume.direction)
    result = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + PANEL_READ_BACK, str(weights),
                             str(tmp_path / "ct.npz"), str(dicom_series), str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["heavy"] == []

    with open(tmp_path / "score" / "scores.csv", newline="") as handle:
        written = [float(row["score"]) for row in csv.DictReader(handle)]
    assessed = shown["assess"]
    assert assessed["rows"] == volume.num_slices == len(written)
    np.testing.assert_allclose(assessed["scores"], written, atol=1e-5)
    written_summary = json.loads((tmp_path / "score" / "summary.json").read_text())
    assert assessed["mean_score"] == pytest.approx(written_summary["mean_score"], abs=1e-5)
    assert assessed["corner"].startswith(f"slice 2: score {written[2]:.3f}")
    assert assessed["clicked_z"] == pytest.approx(float(volume.z_mm()[2]), abs=1e-3)

    batch = shown["batch"]
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert batch["series"] == [uid] and batch["exported"] == 1 and batch["exam_rows"] == 1
    stored = [score for (score,) in query_rows(tmp_path / "results.sqlite",
                                               "SELECT score FROM slices WHERE series_uid = ? ORDER BY z_mm", (uid,))]
    np.testing.assert_allclose(sorted(batch["scores"]), sorted(stored), atol=1e-5)
    np.testing.assert_allclose(batch["scores"], written, atol=1e-4)  # the same series, the same model

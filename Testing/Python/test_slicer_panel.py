"""What Slicer's own process runs of the engine: imports that load no PyTorch, the dependency plan of each job, and
the job rules of the panel (one job of a kind at a time, a question before one is cancelled, the model to offer
kept with the job), on real child processes."""
import json
import subprocess
import sys
import time
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

from DistilIQALib.slicer_bridge.background import BackgroundProcess
from DistilIQALib.slicer_bridge.dependencies import TORCH, needed_modules, plan_for
from DistilIQALib.slicer_bridge.jobs import JobBoard, RunningJob, result_to_offer, training_arguments

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "einops", "safetensors", "SimpleITK", "matplotlib")


def test_the_panels_imports_and_command_lines_load_no_torch():
    """In a fresh interpreter, as Slicer's process is before the first job: importing the package, the job
    builders and the dependency check, and building every job's command line, loads none of the heavy packages,
    so a missing PyTorch is found by the dependency offer, never by an ImportError."""
    script = (
        "import json, sys\n"
        "import DistilIQALib, DistilIQALib.slicer_bridge.jobs as jobs\n"
        "import DistilIQALib.slicer_bridge.background, DistilIQALib.slicer_bridge.dependencies as d\n"
        "jobs.batch_arguments('db', 'store.sqlite', None, 'http://127.0.0.1:8042/dicom-web')\n"
        "jobs.training_arguments('train-student', 'data', 'tcia', 'out', 'fast', 'fast', 2, 1, 2, 1e-3, 0.75, 'cpu')\n"
        "jobs.adapt_arguments('out', 'site')\n"
        "jobs.score_arguments('volume.nrrd', 'work')\n"
        "d.plan_for(None)\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in "
        f"{HEAVY!r})))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []
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
        with pytest.raises(RuntimeError, match="still running"):
            board.add(RunningJob("evaluate", _sleeper()))
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

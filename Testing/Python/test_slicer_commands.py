"""The panel's command lines end to end, as the panel builds them (DistilIQALib.slicer_bridge.jobs) and runs them
(``python -m DistilIQALib`` in a child process): the self-test's data writers, preprocess, train the teachers and
the student, evaluate, score, the DICOM database batch, the DICOMweb batch against a real Orthanc, and a tiny site
adaptation. ``.ci/run`` runs this file, with the other engine tests the module reaches, on the packages Slicer 5.8.1
bundles (``.ci/slicer-5.8.txt``: pydicom 2.4.4, numpy 1.26.4, dicomweb-client 0.59.1, no matplotlib)."""
import base64
import os
import subprocess

from DistilIQALib.slicer_bridge.background import engine_command
from DistilIQALib.slicer_bridge.jobs import (
    DICOMWEB_AUTH_ENV,
    adapt_arguments,
    batch_arguments,
    engine_environment,
    score_arguments,
    student_model_path,
    training_arguments,
)

from .conftest import ORTHANC_PASSWORD, ORTHANC_USER


def _run(arguments, environment=None):
    result = subprocess.run(engine_command(arguments), capture_output=True, text=True, timeout=600,
                            env={**os.environ, **engine_environment(), **(environment or {})})
    assert result.returncode == 0, (arguments[0], result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_the_panels_command_lines_exit_0(tmp_path, orthanc, tiny_weights):
    from DistilIQALib.archive.store import ResultStore
    from DistilIQALib.training.sample import make_sample_ct, write_tcia_like

    from .test_recipe import _site_folders

    # 128-pixel slices, the size the tiny models are trained at: the writer's projection-domain noise costs a
    # third of its time at 256
    data = write_tcia_like(tmp_path / "tcia", cases=("C001", "C002", "C003"), slices=2, size=128, i0=2e4)
    output = tmp_path / "training"
    train = dict(dataset=data, dataset_type="tcia", output=output, teacher_preset="tiny", student_preset="tiny",
                 folds=2, epochs=1, batch_size=4, learning_rate=1e-3, distillation_weight=0.75, device="cpu")
    small = ["--input-size", "128", "--purpose", "test"]  # 128: the size a tiny site adaptation starts from
    _run(training_arguments("preprocess", **train) + ["--train-cases", "C001", "C002", "--test-cases", "C003"])
    _run(training_arguments("train-teacher", **train) + small)
    _run(training_arguments("train-student", **train) + small)
    assert student_model_path(output).is_file()
    evaluated = _run(training_arguments("evaluate", **train))
    assert (output / "evaluation" / "accumulate_metrics.csv").is_file()
    plots = sorted((output / "evaluation").glob("scatter_*.png"))
    try:
        import matplotlib  # noqa: F401
        assert plots
    except ImportError:
        assert not plots and "matplotlib is not installed" in evaluated.stderr

    sample = make_sample_ct(tmp_path / "sample", num_slices=6, size=256, dip_slices=(2, 4))
    work = tmp_path / "score"
    work.mkdir()
    _run(score_arguments(sample, work, tiny_weights, device="cpu"))
    assert (work / "scores.csv").is_file() and (work / "summary.json").is_file()

    _run(batch_arguments(sample, tmp_path / "folder.sqlite", tiny_weights))
    orthanc.upload(sorted(sample.rglob("*.dcm")))
    token = base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
    environment = {DICOMWEB_AUTH_ENV: f"Basic {token}"}
    _run(batch_arguments("", tmp_path / "server.sqlite", tiny_weights, orthanc.dicomweb_url, environment),
         environment)
    with ResultStore(tmp_path / "folder.sqlite") as opened:
        folder = {row["series_uid"]: row["status"] for row in opened.series_rows()}
    assert folder and set(folder.values()) == {"scored"}, folder
    # the session's Orthanc also holds other tests' series (dose reports, broken files): only the sample's count
    with ResultStore(tmp_path / "server.sqlite") as opened:
        server = {row["series_uid"]: row["status"] for row in opened.series_rows() if row["series_uid"] in folder}
    assert server == folder, (server, folder)

    site = _site_folders(tmp_path / "site", 3)  # the fewest patients an adaptation takes; 5 took 1.8x as long
    adapted = tmp_path / "adapted"
    _run(adapt_arguments(adapted, site, student_model_path(output), device="cpu") + ["--size", "tiny-real"])
    assert (adapted / "distiliqa_student.safetensors").is_file()

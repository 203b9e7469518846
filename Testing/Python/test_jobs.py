"""The panel's background jobs outside Slicer: the command lines it builds, parsed by the real command line, and
Assess Quality end to end as the panel runs it (a DICOM series in a volume node -> NRRD -> the child process with
progress lines -> cancel -> results read back into MRML nodes, with the slicer-core wheel)."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from DistilIQALib.cli import build_parser
from DistilIQALib.quality.weights import default_weights_path
from DistilIQALib.slicer_bridge.background import engine_command
from DistilIQALib.slicer_bridge.jobs import (
    DICOMWEB_AUTH_ENV,
    ScoreJob,
    adapt_arguments,
    adapted_model_path,
    batch_arguments,
    chosen_path,
    engine_environment,
    error_line,
    progress_value,
    read_score_results,
    score_arguments,
    training_arguments,
)

ROOT = Path(__file__).resolve().parents[2]


def test_unset_paths_read_back_from_a_path_edit_are_not_chosen():
    # An empty ctkPathLineEdit bound to a pathlib.Path field reads back as Path(""), i.e. Path(".").
    assert chosen_path(Path("")) is None and chosen_path("") is None and chosen_path(None) is None
    assert chosen_path(Path("/data/model.safetensors")) == "/data/model.safetensors"


def test_score_command_line_is_what_the_cli_accepts(tmp_path):
    arguments = score_arguments(tmp_path / "volume.nrrd", tmp_path, Path("/m/w.safetensors"), "cuda", 4)
    parsed = build_parser().parse_args(arguments)
    assert parsed.command == "score" and parsed.input == str(tmp_path / "volume.nrrd")
    assert parsed.out == str(tmp_path / "scores.csv") and parsed.json == str(tmp_path / "summary.json")
    assert (parsed.weights, parsed.device, parsed.batch_size, parsed.progress_lines) == ("/m/w.safetensors", "cuda",
                                                                                          4, True)
    defaults = build_parser().parse_args(score_arguments("v.nrrd", tmp_path, Path(""), "auto", 0))
    assert defaults.weights is None and defaults.batch_size is None  # shipped model, the device's batch size


def test_progress_lines_need_a_csv_file(tmp_path, dicom_series):
    from DistilIQALib.cli import main

    assert main(["score", str(dicom_series), "--progress-lines"]) == 2


@pytest.mark.parametrize("task", ["preprocess", "train-teacher", "train-student", "evaluate"])
def test_training_command_lines_are_what_the_cli_accepts(task, tmp_path):
    arguments = training_arguments(task, tmp_path / "data", "simulated", tmp_path / "run", "tiny", "fast", 3, 7, 5,
                                   0.0005, 0.5, "cpu")
    parsed = build_parser().parse_args(arguments)
    assert parsed.command == task
    if task.startswith("train"):
        assert (parsed.folds, parsed.epochs, parsed.batch_size, parsed.lr, parsed.progress_lines) == (3, 7, 5, 0.0005,
                                                                                                     True)
        assert parsed.preset == ("tiny" if task == "train-teacher" else "fast")
    with pytest.raises(ValueError, match="dataset folder"):
        training_arguments(task, Path(""), "tcia", tmp_path, "paper", "fast", 5, 1, 1, 0.1, 0.7, "auto")


def test_adapt_to_this_site_command_line(tmp_path):
    arguments = adapt_arguments(tmp_path / "run", tmp_path / "site_ct", Path("/m/base.safetensors"), "cuda")
    assert arguments == ["recipe", "--output", str(tmp_path / "run"), "--sources", str(tmp_path / "site_ct"),
                         "--base-weights", "/m/base.safetensors", "--device", "cuda", "--progress-lines"]
    assert "--base-weights" not in adapt_arguments(tmp_path / "run", tmp_path / "site_ct", Path(""), "auto")
    assert adapted_model_path(tmp_path / "run") == tmp_path / "run" / "distiliqa_student.safetensors"
    with pytest.raises(ValueError, match="this site's CT"):
        adapt_arguments(tmp_path / "run", Path(""), None, "auto")
    recipe = build_parser()._subparsers._group_actions[0].choices["recipe"]
    if "--sources" not in recipe._option_string_actions:
        pytest.skip("the recipe command's --sources option is not in this engine yet")
    parsed = build_parser().parse_args(arguments)
    sources = parsed.sources if isinstance(parsed.sources, list) else [parsed.sources]
    assert str(parsed.output) == str(tmp_path / "run") and [str(s) for s in sources] == [str(tmp_path / "site_ct")]
    assert str(parsed.base_weights) == "/m/base.safetensors" and parsed.device == "cuda" and parsed.progress_lines


def test_batch_command_lines_are_what_the_cli_accepts(tmp_path):
    database, store = tmp_path / "db", tmp_path / "db" / "DistilIQA_results.sqlite"
    local = build_parser().parse_args(batch_arguments(database, store, Path(""), "", environment={}))
    assert (local.root, local.db, local.dicomweb, local.weights) == (str(database), str(store), None, None)
    url = "https://pacs.example.org/dicom-web"
    remote = batch_arguments(database, store, Path("/m/w.safetensors"), f" {url} ", environment={})
    assert remote == ["batch", "--dicomweb", url, "--db", str(store), "--weights", "/m/w.safetensors"]
    parsed = build_parser().parse_args(remote)
    assert (parsed.root, parsed.dicomweb, parsed.auth_env) == (None, url, None)
    # credentials pass by the name of the variable that holds them, never on the command line
    token = "eyJhbGciOiJIUzI1NiJ9.secret"
    with_credentials = batch_arguments(database, store, None, url, environment={DICOMWEB_AUTH_ENV: token})
    assert build_parser().parse_args(with_credentials).auth_env == DICOMWEB_AUTH_ENV
    assert token not in " ".join(with_credentials)


def test_progress_records_become_progress_bar_values():
    assert progress_value({"task": "score", "done": 4, "total": 10}) == (4, 10)
    assert progress_value({"task": "teacher", "epoch": 3, "epochs": 500, "fold": 1}) == (3, 500)
    assert progress_value({"task": "score", "done": 0, "total": 0}) is None
    assert progress_value({"task": "note"}) is None
    assert error_line(["loading", "distiliqa: error: no such file or folder: x"]) == "no such file or folder: x"


def test_child_environment_keeps_the_launchers_python_path():
    paths = engine_environment({"PYTHONPATH": "/slicer/lib/python"})["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(ROOT), "/slicer/lib/python"]


# --- Assess Quality end to end, as the panel runs it -----------------------------------------------------------

@pytest.fixture
def slicer():
    return pytest.importorskip("slicer")  # slicer-core needs Python >= 3.10


def _ct_node_from_dicom(scene, folder):
    """What Slicer's DICOM loader gives the panel: a scalar volume node of the series (read here by the engine's
    reader, since slicer-core has no DICOM module)."""
    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.slicer_bridge import mrml

    return mrml.node_from_volume(scene, read_volume(folder), "CT from DICOM")


def _wait(job, timeout_s=240):
    records = []
    original = job.process.poll

    def recording_poll():
        lines, new_records, code = original()
        records.extend(new_records)
        return lines, new_records, code

    job.process.poll = recording_poll
    code = job.wait(timeout_s)
    return code, records


def test_assess_quality_end_to_end_in_a_child_process(tmp_path, dicom_series, tiny_weights, slicer):
    from DistilIQALib.quality.scoring import Scorer
    from DistilIQALib.slicer_bridge import mrml

    scene = slicer.vtkMRMLScene()
    ct = _ct_node_from_dicom(scene, dicom_series)
    work = tmp_path / "work"
    work.mkdir()
    volume_file = mrml.write_volume_file(ct, work / "volume.nrrd")  # the click: as DistilIQALogic.startScoring
    job = ScoreJob(volume_file, work, tiny_weights, "cpu", 0)
    assert job.command == engine_command(["score", str(work / "volume.nrrd"), "--out", str(work / "scores.csv"),
                                          "--json", str(work / "summary.json"), "--device", "cpu", "--weights",
                                          str(tiny_weights), "--progress-lines"])
    code, records = _wait(job)
    assert code == 0, job.log
    assert [(r["done"], r["total"]) for r in records] == [(0, 6), (2, 6), (4, 6), (6, 6)]  # CPU batches of 2
    assert (job.done, job.total) == (6, 6) and job.device_name.startswith("cpu")
    scores = job.results()
    direct = Scorer(str(tiny_weights), device="cpu").score_volume(mrml.volume_from_node(ct))
    np.testing.assert_allclose(scores.score, direct.score, atol=1e-4)
    np.testing.assert_allclose(scores.z_mm, direct.z_mm, atol=1e-3)
    np.testing.assert_allclose(scores.noise_hu, direct.noise_hu, atol=0.06)
    assert scores.info.weights_id == direct.info.weights_id and scores.adequacy == direct.adequacy
    nodes = mrml.show_stored_results(ct, scores)  # as DistilIQALogic.showScoringResults
    table = nodes.table.GetTable()
    assert table.GetNumberOfRows() == 6
    np.testing.assert_allclose([table.GetValue(r, 2).ToDouble() for r in range(6)], direct.score, atol=1e-4)
    assert slicer.util.arrayFromVolume(nodes.quality_map).shape == (6, 2, 2)
    job.cleanup()
    assert not work.exists()


def test_engine_error_reaches_the_panel_as_one_line(tmp_path, dicom_series, slicer):
    from DistilIQALib.slicer_bridge import mrml

    scene = slicer.vtkMRMLScene()
    ct = _ct_node_from_dicom(scene, dicom_series)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not a model")
    job = ScoreJob(mrml.write_volume_file(ct, tmp_path / "volume.nrrd"), tmp_path, bad, "cpu", 0)
    assert job.wait(240) == 2
    assert "model.pt" in job.error() and "\n" not in job.error() and "Traceback" not in "\n".join(job.log)


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
@pytest.mark.skipif(not default_weights_path().is_file(), reason="no shipped model")
def test_cancel_stops_the_scoring_process_midway(tmp_path, slicer):
    from DistilIQALib.slicer_bridge import mrml
    from DistilIQALib.training.phantoms import phantom_volume

    scene = slicer.vtkMRMLScene()
    hu = np.rint(phantom_volume(40, size=512, pixel_mm=0.7, seed=2)).astype(np.int16)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "long CT")
    slicer.util.updateVolumeFromArray(ct, hu)
    job = ScoreJob(mrml.write_volume_file(ct, tmp_path / "volume.nrrd"), tmp_path, None, "cpu", 0)
    deadline = time.monotonic() + 240
    while job.poll() is None and job.done < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 2 <= job.done < job.total == 40, (job.done, job.total, job.log)
    started = time.monotonic()
    job.cancel()
    assert job.wait(30) != 0 and time.monotonic() - started < 15 and job.cancel_requested
    with pytest.raises(OSError):
        os.killpg(job.process.process.pid, 0)  # the whole process group is gone
    assert not (tmp_path / "scores.csv").exists()


def test_results_reader_refuses_a_truncated_csv(tmp_path, tiny_weights):
    (tmp_path / "scores.csv").write_text("slice_index,z_mm,score,score_spread,noise_hu,dose_equivalent,adequacy\n"
                                         "0,0.0,0.5,0.01,12.0,,\n")
    (tmp_path / "summary.json").write_text('{"num_slices": 3}')
    with pytest.raises(ValueError, match="3 slices"):
        read_score_results(tmp_path / "scores.csv", tmp_path / "summary.json", tiny_weights)


def _loaded_from_dicom(scene, folder):
    """A node as Slicer's DICOM plugin leaves it: the series' voxels, and the SOP Instance UID of each slice's file
    in the node's slice order (DICOMScalarVolumePlugin sets ``DICOM.instanceUIDs``); with the database's lookup of
    a file by that UID."""
    import pydicom

    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.slicer_bridge import mrml

    volume = read_volume(folder)
    node = mrml.node_from_volume(scene, volume, "CT from DICOM")
    files = {}
    for path in sorted(Path(folder).iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files[float(ds.ImagePositionPatient[2])] = (str(ds.SOPInstanceUID), str(path))
    by_slice = [files[z] for z in sorted(files)]
    node.SetAttribute(mrml.DICOM_INSTANCES_ATTRIBUTE, " ".join(uid for uid, _ in by_slice))
    return node, dict(by_slice).get, str(pydicom.dcmread(by_slice[0][1]).SeriesInstanceUID)


def test_a_node_loaded_from_dicom_is_scored_from_its_files_with_their_headers(tmp_path, slicer):
    import pydicom

    from DistilIQALib.slicer_bridge import mrml

    from .test_above_routine import _siemens_copy

    # a real Siemens slice as a 3-slice series reconstructed with a sharp kernel, CTDIvol 29.77 mGy (body phantom)
    folder = _siemens_copy(tmp_path, "sharp", 29.77, uid="77", count=3)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.ConvolutionKernel = "B70f"
        ds.save_as(path)
    scene = slicer.vtkMRMLScene()
    ct, file_for_instance, uid = _loaded_from_dicom(scene, folder)
    assert mrml.dicom_series_of(ct, file_for_instance) == (os.path.realpath(folder), uid)
    results = {}
    for way in ("dicom", "nrrd"):
        work = tmp_path / way
        work.mkdir()
        if way == "dicom":  # as DistilIQALogic.startScoring does for such a node
            job = ScoreJob(folder, work, None, "cpu", 0, region="neck", series_uid=uid)
            assert job.arguments[:2] == ["score", str(folder)] and "--series" in job.arguments
        else:
            job = ScoreJob(mrml.write_volume_file(ct, work / "volume.nrrd"), work, None, "cpu", 0, region="neck")
        assert job.wait(240) == 0, job.log
        scores = job.results()
        table = mrml.show_stored_results(ct, scores).table.GetTable()
        columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        results[way] = [table.GetValue(r, columns.index("adequacy")).ToString() for r in range(3)], scores
        job.cleanup()
    # from the files: the sharp kernel leaves no soft-tissue verdict, and the delivered dose is known; a volume file
    # keeps neither, so the same voxels get verdicts from their noise alone
    (labels, scores), (nrrd_labels, nrrd_scores) = results["dicom"], results["nrrd"]
    assert labels == ["unknown"] * 3 and all("sharp reconstruction kernel (B70f" in n for n in scores.verdict_note)
    assert scores.ssde_mgy is not None and np.isfinite(scores.ssde_mgy).all()
    assert "unknown" not in nrrd_labels and nrrd_scores.ssde_mgy is None


def test_only_a_node_whose_files_are_exactly_one_series_of_one_folder_is_scored_from_them(tmp_path, slicer):
    import shutil

    from DistilIQALib.slicer_bridge import mrml

    from .test_above_routine import _siemens_copy

    scene = slicer.vtkMRMLScene()
    folder = _siemens_copy(tmp_path, "series", 29.77, uid="78", count=3)
    ct, file_for_instance, _ = _loaded_from_dicom(scene, folder)
    assert mrml.dicom_series_of(ct, file_for_instance) is not None
    plain = mrml.node_from_volume(scene, mrml.volume_from_node(ct), "not from DICOM")
    assert mrml.dicom_series_of(plain, file_for_instance) is None  # no instance UIDs
    first = ct.GetAttribute(mrml.DICOM_INSTANCES_ATTRIBUTE).split()[0]
    assert mrml.dicom_series_of(ct, lambda uid: "" if uid == first else file_for_instance(uid)) is None  # moved
    other, other_file_for, _ = _loaded_from_dicom(scene, _siemens_copy(tmp_path, "twice", 29.77, uid="79", count=3))
    first, second = other.GetAttribute(mrml.DICOM_INSTANCES_ATTRIBUTE).split()[:2]
    os.remove(other_file_for(second))  # the folder holds the other files only: the node's slices use one twice
    twice = mrml.dicom_series_of(other, lambda uid: other_file_for(first if uid == second else uid))
    assert twice is None
    fewer = " ".join(ct.GetAttribute(mrml.DICOM_INSTANCES_ATTRIBUTE).split()[1:])
    ct.SetAttribute(mrml.DICOM_INSTANCES_ATTRIBUTE, fewer)
    assert mrml.dicom_series_of(ct, file_for_instance) is None  # not one file per slice
    ct, file_for_instance, _ = _loaded_from_dicom(scene, folder)
    shutil.copy(_siemens_copy(tmp_path, "more", 29.77, uid="78", count=4) / "slice3.dcm", folder / "slice3.dcm")
    assert mrml.dicom_series_of(ct, file_for_instance) is None  # the folder holds more of the series than the node

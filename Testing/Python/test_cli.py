"""The command line end to end, and every bad input the user can give it."""
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from DistilIQALib.cli import main
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.io.reading import read_volume
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import default_weights_path, read_info
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import write_untrained_weights

ROOT = Path(__file__).resolve().parents[2]


def test_score_end_to_end_in_a_real_process(tmp_path, tiny_weights, dicom_series):
    out, plot, summary = tmp_path / "scores.csv", tmp_path / "scores.png", tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "DistilIQALib", "score", str(dicom_series), "--weights", str(tiny_weights),
         "--device", "cpu", "--out", str(out), "--plot", str(plot), "--json", str(summary)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert list(rows[0])[:4] == ["slice_index", "z_mm", "score", "score_spread"] and "noise_hu" in rows[0]
    assert [float(r["z_mm"]) for r in rows] == pytest.approx([0, 2.5, 5, 7.5, 10, 12.5])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(plot).size[0] > 500
    data = json.loads(summary.read_text())
    assert data["num_slices"] == 6 and data["worst_slices"][0]["score"] == data["min_score"]
    assert "mean score" in result.stderr and "Traceback" not in result.stderr


def test_csv_goes_to_stdout_without_out(tmp_path, tiny_weights, dicom_series, capsys):
    assert main(["score", str(dicom_series), "--weights", str(tiny_weights), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    direct = Scorer(str(tiny_weights), device="cpu").score_volume(read_volume(dicom_series))
    assert [float(r["score"]) for r in rows] == [round(float(s), 5) for s in direct.score]
    assert [r["adequacy"] for r in rows] == ["good" if s >= 0.8 else "borderline" if s >= 0.5 else "inadequate"
                                             for s in direct.score]
    assert [int(r["slice_index"]) for r in rows] == list(range(6))


def test_info_describes_weights(tiny_weights, capsys):
    assert main(["info", str(tiny_weights)]) == 0
    text = capsys.readouterr().out
    assert "preset tiny" in text and "3 output(s)" in text and "purpose: test" in text


def test_info_names_a_learned_models_windows_and_artefact_margin(capsys):
    """The shipped model reads two windows and counts the network's noise beyond its margin: info says both."""
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "windows W350/L40 + W80/L40" in text and "score effective_noise" in text
    margin = read_info(default_weights_path()).artefact_margin
    assert f"artefact margin {margin:g}" in text and f"divided by {1 + margin:g}" in text


def _make_bad_inputs(tmp: Path, weights: Path):
    """Each case: (name, arguments, text expected in the one-line error)."""
    cases = []
    cases.append(("missing path", [str(tmp / "nowhere")], "no such file or folder"))
    (tmp / "empty").mkdir()
    cases.append(("empty folder", [str(tmp / "empty")], "folder is empty"))
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("hello")
    cases.append(("folder without DICOM", [str(tmp / "notes")], "no DICOM series found"))
    (tmp / "report.txt").write_text("not an image")
    cases.append(("not an image", [str(tmp / "report.txt")], "not a DICOM file or a supported image format"))
    hu = phantom_volume(2, size=96, pixel_mm=3.0, noise_sd_hu=10)
    write_series(hu, tmp / "mr", modality="MR", spacing_mm=(3.0, 3.0, 3.0))
    cases.append(("non-CT modality", [str(tmp / "mr")], "modality MR, not CT"))
    Image.fromarray(np.zeros((96, 96, 3), dtype=np.uint8)).save(tmp / "colour.png")
    cases.append(("RGB image", [str(tmp / "colour.png")], "colour (RGB)"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 2, 80, 80), -1000, dtype=np.int16), isVector=False),
                    str(tmp / "series4d.nii.gz"))
    cases.append(("4D data", [str(tmp / "series4d.nii.gz")], "4D"))
    small = sitk.GetImageFromArray(np.full((3, 32, 32), -1000, dtype=np.int16))
    sitk.WriteImage(small, str(tmp / "small.nrrd"))
    cases.append(("too small", [str(tmp / "small.nrrd")], "at least 64x64"))
    nan = hu.copy()
    nan[1, 40, 40] = np.nan
    nan[0, 3, 3] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp / "nan.nrrd"))
    cases.append(("NaN/inf voxels", [str(tmp / "nan.nrrd")], "2 NaN or infinite voxel values"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 96, 96), 40, dtype=np.int16)), str(tmp / "nohu.nrrd"))
    cases.append(("not HU", [str(tmp / "nohu.nrrd")], "does not look like CT in Hounsfield units"))
    paths = write_series(hu[:1], tmp / "truncated", spacing_mm=(3.0, 3.0, 3.0))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 4000])
    cases.append(("truncated DICOM", [str(paths[0])], "truncated or corrupt"))
    paths = write_series(hu, tmp / "truncated_series", spacing_mm=(3.0, 3.0, 3.0))
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    cases.append(("truncated DICOM in a series", [str(tmp / "truncated_series")], "is truncated or corrupt"))
    write_series(hu, tmp / "good", spacing_mm=(3.0, 3.0, 3.0))
    if not torch.cuda.is_available():
        cases.append(("missing CUDA device", [str(tmp / "good"), "--device", "cuda:3"], "no CUDA GPU is available"))
    cases.append(("unknown device", [str(tmp / "good"), "--device", "gpu7"], "unknown device"))
    torch.save({"weights": torch.zeros(2)}, tmp / "model.pt")
    cases.append(("pickle weights", [str(tmp / "good"), "--weights", str(tmp / "model.pt")], "can run code"))
    (tmp / "corrupt.safetensors").write_bytes(weights.read_bytes()[:5000])
    cases.append(("corrupt weights", [str(tmp / "good"), "--weights", str(tmp / "corrupt.safetensors")], "corrupt"))
    cases.append(("bad batch size", [str(tmp / "good"), "--batch-size", "0"], "--batch-size must be at least 1"))
    return cases


def test_every_bad_input_gives_one_line_and_nonzero_exit(tmp_path, tiny_weights, capsys):
    cases = _make_bad_inputs(tmp_path, tiny_weights)
    for name, arguments, expected in cases:
        code = main(["score", *arguments, "--weights", str(tiny_weights)] if "--weights" not in arguments
                    else ["score", *arguments])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code != 0, name
        assert len(lines) == 1, (name, captured.err)
        assert lines[0].startswith("distiliqa: error: ") and expected in lines[0], (name, lines[0])
        assert "Traceback" not in captured.err and captured.out == "", name


def test_force_scores_non_ct_and_non_hu(tmp_path, tiny_weights, capsys):
    hu = phantom_volume(2, size=96, pixel_mm=3.0, noise_sd_hu=10)
    write_series(hu, tmp_path / "mr", modality="MR", spacing_mm=(3.0, 3.0, 3.0))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 96, 96), 40, dtype=np.int16)), str(tmp_path / "nohu.nrrd"))
    for source, slices, refusal in ((tmp_path / "mr", 2, "modality MR, not CT"),
                                    (tmp_path / "nohu.nrrd", 3, "does not look like CT in Hounsfield units")):
        arguments = ["score", str(source), "--weights", str(tiny_weights), "--device", "cpu"]
        assert main(arguments) == 2 and refusal in capsys.readouterr().err
        assert main(arguments + ["--force"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [int(row["slice_index"]) for row in rows] == list(range(slices))


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "score", str(tmp_path / "missing")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file or folder" in result.stderr


def _run(arguments, capsys):
    """Exit code and output of the command line run in this process (argument errors exit inside argparse)."""
    try:
        code = main(arguments)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr()


def _dataset(folder, patients, images_per_patient=1, split="train"):
    """A dataset folder with ``<split>.json`` over real 64x64 images."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, owners = {}, {}
    for p in range(patients):
        for n in range(images_per_patient):
            name = f"p{p}_{n}.nrrd"
            image = sitk.GetImageFromArray(phantom_volume(1, size=64, pixel_mm=5.6, seed=p))
            sitk.WriteImage(image, str(folder / name))
            labels[name], owners[name] = 0.5 + 0.1 * n, f"P{p}"
    (folder / f"{split}.json").write_text(json.dumps(labels))
    (folder / "patients.json").write_text(json.dumps(owners))
    return folder


def _other_commands_bad_inputs(tmp, weights):
    """(name, arguments, text expected in the one-line error) for every command but ``score``'s input."""
    write_series(phantom_volume(3, size=64, pixel_mm=5.6), tmp / "series", series_uid="1.2.3.4",
                 spacing_mm=(5.6, 5.6, 5.0))
    (tmp / "empty").mkdir()
    (tmp / "notes.txt").write_text("some text\n")
    torch.save({"weights": torch.zeros(2)}, tmp / "model.pt")
    import sqlite3

    sqlite3.connect(tmp / "other.sqlite").execute("CREATE TABLE t (a)").connection.commit()
    one_patient = _dataset(tmp / "one_patient", patients=1, images_per_patient=3)
    test_split = _dataset(tmp / "test_split", patients=2, split="test")
    single_test = _dataset(tmp / "single_test", patients=1, split="test")
    (tmp / "columns.csv").write_text("file,label\na.png,0.5\n")
    (tmp / "score.csv").write_text("path,score\np0_0.nrrd,good\n")
    (tmp / "absent.csv").write_text("path,score\nmissing.nrrd,0.5\n")
    (tmp / "broken.json").write_text("{not json")
    cpu = ["--device", "cpu"]
    train = ["--output", str(tmp / "run"), *cpu]
    return [
        ("batch: missing root", ["batch", str(tmp / "nowhere"), "--db", str(tmp / "r.sqlite")], "no such folder"),
        ("batch: shard text", ["batch", str(tmp / "empty"), "--db", str(tmp / "r.sqlite"), "--shard", "half"],
         "--shard must look like k/n (e.g. 2/4), not 'half'"),
        ("batch: shard 0", ["batch", str(tmp / "empty"), "--db", str(tmp / "r.sqlite"), "--shard", "0/3"],
         "--shard 0/3: k must be between 1 and n"),
        ("batch: shard beyond n", ["batch", str(tmp / "empty"), "--db", str(tmp / "r.sqlite"), "--shard", "4/3"],
         "--shard 4/3: k must be between 1 and n"),
        ("batch: missing weights", ["batch", str(tmp / "empty"), "--db", str(tmp / "r.sqlite"), "--weights",
                                    str(tmp / "none.safetensors"), *cpu], "weights file not found"),
        ("batch: no --db", ["batch", str(tmp / "empty")], "the following arguments are required: --db"),
        ("merge: missing store", ["merge", str(tmp / "m.sqlite"), str(tmp / "none.sqlite")], "no such store"),
        ("merge: text file", ["merge", str(tmp / "m.sqlite"), str(tmp / "notes.txt")],
         "notes.txt is not a DistilIQA results store (not an SQLite file)"),
        ("merge: other database", ["merge", str(tmp / "m.sqlite"), str(tmp / "other.sqlite")],
         "other.sqlite is not a DistilIQA results store (no problems, series, slices table)"),
        ("info: missing", ["info", str(tmp / "none.safetensors")], "weights file not found"),
        ("info: pickle", ["info", str(tmp / "model.pt")], "can run code"),
        ("info: text", ["info", str(tmp / "notes.txt")], "is not a DistilIQA weights file or is corrupt"),
        ("score: --series absent", ["score", str(tmp / "series"), "--series", "9.9", "--weights", str(weights)],
         "no DICOM series with SeriesInstanceUID 9.9"),
        ("score: batch size text", ["score", str(tmp / "series"), "--batch-size", "many"],
         "argument --batch-size: invalid int value: 'many'"),
        ("score: --progress-lines to stdout", ["score", str(tmp / "series"), "--weights", str(weights),
                                               "--progress-lines", *cpu], "--progress-lines needs --out"),
        ("preprocess: missing input", ["preprocess", str(tmp / "nowhere"), "--type", "tcia"], "no such file or folder"),
        ("preprocess: unknown type", ["preprocess", str(tmp / "empty"), "--type", "jpeg"],
         "argument --type: invalid choice: 'jpeg'"),
        ("preprocess: no TCIA cases", ["preprocess", str(tmp / "empty"), "--type", "tcia"],
         "no paired 'Full Dose' / 'Low Dose' DICOM slices"),
        ("preprocess: no challenge scores", ["preprocess", str(tmp / "empty"), "--type", "ldctiqac"],
         "no train.json with the radiologists' scores"),
        ("preprocess: no CT to simulate", ["preprocess", str(tmp / "empty"), "--type", "simulated"],
         "no CT under"),
        *([] if torch.cuda.is_available() else [
            ("preprocess: no GPU", ["preprocess", str(tmp / "empty"), "--type", "simulated", "--device", "cuda"],
             "device cuda requested but no CUDA GPU is available")]),
        ("preprocess: list of nothing", ["preprocess", str(tmp / "notes.txt"), "--type", "list"],
         "the image list notes.txt lists no images"),
        ("preprocess: list columns", ["preprocess", str(tmp / "columns.csv"), "--type", "list"],
         "cannot read the image list columns.csv (KeyError: 'path')"),
        ("preprocess: list score", ["preprocess", str(tmp / "score.csv"), "--type", "list"],
         "cannot read the image list score.csv (ValueError"),
        ("preprocess: list JSON", ["preprocess", str(tmp / "broken.json"), "--type", "list"],
         "cannot read the image list broken.json (JSONDecodeError"),
        ("preprocess: listed image absent", ["preprocess", str(tmp / "absent.csv"), "--type", "list"],
         "image listed in absent.csv not found: missing.nrrd"),
        ("train-teacher: no dataset", ["train-teacher", str(tmp / "empty"), *train],
         "no train.json in"),
        ("train-teacher: zero epochs", ["train-teacher", str(one_patient), *train, "--epochs", "0"],
         "--epochs and --batch-size must be at least 1"),
        ("train-teacher: unknown preset", ["train-teacher", str(one_patient), *train, "--preset", "huge"],
         "unknown model preset 'huge'; choose one of paper, fast, tiny"),
        ("train-teacher: too few patients", ["train-teacher", str(one_patient), *train, "--preset", "tiny",
                                             "--folds", "2"], "2 folds need at least 2 patients; the data have 1"),
        ("train-teacher: no --output", ["train-teacher", str(one_patient)],
         "the following arguments are required: --output"),
        ("train-student: no teachers", ["train-student", str(one_patient), *train, "--preset", "tiny"],
         "no teachers in"),
        ("train-student: zero batch", ["train-student", str(one_patient), *train, "--batch-size", "0"],
         "--epochs and --batch-size must be at least 1"),
        ("evaluate: no split", ["evaluate", str(tmp / "empty"), "--weights", str(weights), "--output",
                                str(tmp / "ev"), *cpu], "no test.json in"),
        ("evaluate: one image", ["evaluate", str(single_test), "--weights", str(weights), "--output", str(tmp / "ev"),
                                 *cpu], "the test split of"),
        ("evaluate: missing weights", ["evaluate", str(test_split), "--weights", str(tmp / "none.safetensors"),
                                       "--output", str(tmp / "ev"), *cpu], "weights file not found"),
        ("evaluate: pickle weights", ["evaluate", str(test_split), "--weights", str(tmp / "model.pt"),
                                      "--output", str(tmp / "ev"), *cpu], "can run code"),
    ]


def test_every_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    weights = write_untrained_weights(tmp_path / "untrained.safetensors")
    for name, arguments, expected in _other_commands_bad_inputs(tmp_path, weights):
        code, captured = _run(arguments, capsys)
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 2, (name, code, captured.err)
        assert len(lines) == 1, (name, captured.err)
        assert lines[0].startswith("distiliqa") and ": error: " in lines[0] and expected in lines[0], (name, lines)
        assert "Traceback" not in captured.err and captured.out == "", name


def test_preprocess_simulates_a_folder_of_ct_on_the_device_named(tmp_path, capsys):
    """``preprocess --type simulated --device cpu``: every dose and view count of each slice, labelled by SSIM to the
    full dose (1 at full dose, falling with dose), the same as the library makes with the CPU by default."""
    from DistilIQALib.training.datasets import preprocess_simulated, source_slices_from_folder

    folder = tmp_path / "ct"
    folder.mkdir()
    image = sitk.GetImageFromArray(phantom_volume(1, size=96, pixel_mm=3.5, seed=1).astype(np.int16))
    image.SetSpacing((3.5, 3.5, 5.0))
    sitk.WriteImage(image, str(folder / "body.nrrd"))
    code, captured = _run(["preprocess", str(folder), "--type", "simulated", "--doses", "1", "0.25", "0.05",
                           "--sparse-views", "32", "--slices-per-volume", "1", "--output", str(tmp_path / "data"),
                           "--device", "cpu"], capsys)
    assert code == 0, captured.err
    labels = json.loads((tmp_path / "data" / "dataset.json").read_text())
    by_kind = {path.rsplit("_", 1)[1]: label for path, label in labels.items()}
    assert sorted(by_kind) == ["dose0.05.mha", "dose0.25.mha", "dose1.mha", "views32.mha"]
    assert by_kind["dose1.mha"] == pytest.approx(1.0) and 1.0 > by_kind["dose0.25.mha"] > by_kind["dose0.05.mha"]
    preprocess_simulated(source_slices_from_folder(folder, 1), tmp_path / "library", (1.0, 0.25, 0.05), (32,))
    assert json.loads((tmp_path / "library" / "dataset.json").read_text()) == labels

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
from DistilIQALib.dicom_writing import write_series
from DistilIQALib.phantoms import phantom_volume

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
    assert len(rows) == 6 and all(0.0 <= float(r["score"]) <= 2.0 for r in rows)


def test_info_describes_weights(tiny_weights, capsys):
    assert main(["info", str(tiny_weights)]) == 0
    text = capsys.readouterr().out
    assert "preset tiny" in text and "3 output(s)" in text and "purpose: test" in text


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
    assert main(["score", str(tmp_path / "mr"), "--weights", str(tiny_weights), "--force"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "score", str(tmp_path / "missing")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file or folder" in result.stderr

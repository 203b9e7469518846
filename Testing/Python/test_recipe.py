"""The shipped model's recipe at tiny size: every step runs, the result carries its calibration and
bands, scores with the scorer, and the same seed gives the same model."""
import numpy as np
import pytest
from safetensors import safe_open

from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.recipe import adequacy_from_calibration, dose_of, fit_dose_calibration, run_recipe
from DistilIQALib.scoring import Scorer
from DistilIQALib.volume import CTVolume
from DistilIQALib.weights import read_info


def _tensors(path):
    with safe_open(str(path), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_tiny_recipe_end_to_end_and_reproducible(tmp_path):
    first = run_recipe(tmp_path / "a", "tiny", seed=3, device="cpu")
    info = read_info(first)
    calibration = info.dose_calibration
    assert calibration["dose_fraction"] == [0.05, 0.2, 0.5, 1.0]
    assert np.all(np.diff(calibration["score"]) >= 0)
    bands = info.adequacy["bands"]
    assert [b["name"] for b in bands] == ["good", "borderline", "inadequate"]
    assert bands[0]["min_score"] >= bands[1]["min_score"] and "reasoning" in info.adequacy
    assert info.provenance["recipe"] == "tiny" and info.provenance["purpose"] == "test"
    assert {m["model"] for m in info.provenance["held_out"]} >= {"student.safetensors", "teacher_0.safetensors"}
    assert set(info.provenance["teacher_ensemble_held_out"]) == {"PLCC", "SROCC", "KROCC", "overall", "MAE", "MSE"}
    volume = CTVolume(phantom_volume(3, size=128, pixel_mm=2.8, noise_sd_hu=10), spacing_mm=(2.8, 2.8, 5.0))
    scores = Scorer(str(first), device="cpu").score_volume(volume)
    assert scores.dose_equivalent is not None and scores.adequacy is not None
    second = run_recipe(tmp_path / "b", "tiny", seed=3, device="cpu")
    a, b = _tensors(first), _tensors(second)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_calibration_is_monotone_and_bands_follow_it():
    scores = np.array([0.5, 0.55, 0.8, 0.7, 0.9, 0.95, 0.99, 1.0])
    doses = np.array([0.05, 0.05, 0.2, 0.2, 0.5, 0.5, 1.0, 1.0])
    calibration = fit_dose_calibration(scores, doses)
    assert calibration["dose_fraction"] == [0.05, 0.2, 0.5, 1.0]
    assert calibration["score"] == pytest.approx([0.525, 0.75, 0.925, 0.995])
    bands = adequacy_from_calibration(calibration)["bands"]
    assert bands[0]["min_score"] == pytest.approx(0.925) and bands[1]["min_score"] == pytest.approx(0.75)
    unordered = fit_dose_calibration(np.array([0.9, 0.8]), np.array([0.1, 0.5]))
    assert unordered["score"] == [0.9, 0.9]  # never lower at higher dose
    assert dose_of("images/p/slice0001_dose0.25.mha") == 0.25 and dose_of("images/p/x_views64.mha") is None

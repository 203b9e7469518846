"""The model that ships in Resources/Models: its file, its metadata, its behaviour on real CT slices as the
dose falls, and the README demo it drives."""
import csv
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from DistilIQALib.datasets import builtin_sources
from DistilIQALib.interpretation import adequacy_labels, dose_equivalent
from DistilIQALib.model import score_from_outputs
from DistilIQALib.preprocessing import prepare_batch
from DistilIQALib.recipe import RECIPES
from DistilIQALib.simulation import DoseSimulator
from DistilIQALib.weights import default_weights_path, load_weights, read_info

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "Resources" / "Models" / "distiliqa_student.safetensors"
DOSES = (1.0, 0.5, 0.25, 0.1, 0.05)


def test_shipped_model_is_the_default_small_and_fully_described():
    assert SHIPPED.is_file() and default_weights_path() == SHIPPED
    assert SHIPPED.stat().st_size < 25 * 2**20
    info = read_info(SHIPPED)
    assert info.preset == "fast" and info.num_outputs == 5 and info.input_size == 512
    assert info.score.name == "ssim" and info.score.higher_is_better
    assert (info.window.width_hu, info.window.level_hu) == (350, 40)
    assert info.provenance["purpose"] == "release"
    # Made by what `recipe --size builtin` runs today (it was called "default" then): same parameters.
    assert info.provenance["recipe_parameters"] == json.loads(json.dumps(asdict(RECIPES["builtin"])))
    bands = info.adequacy["bands"]
    assert [b["name"] for b in bands] == ["good", "borderline", "inadequate"]
    assert bands[0]["min_score"] > bands[1]["min_score"] and "reasoning" in info.adequacy
    calibration = info.dose_calibration
    assert np.all(np.diff(calibration["dose_fraction"]) > 0) and np.all(np.diff(calibration["score"]) >= 0)
    assert min(calibration["dose_fraction"]) <= 0.05 and max(calibration["dose_fraction"]) == 1.0
    # the calibration maps its own anchor scores back to their doses, and is monotone in between
    assert dose_equivalent(np.array(calibration["score"][-1:]), calibration)[0] == pytest.approx(1.0)
    grid = np.linspace(0.5, 1.0, 101)
    assert np.all(np.diff(dose_equivalent(grid, calibration)) >= 0)
    assert adequacy_labels(np.array([1.0, 0.0]), info.adequacy) == ["good", "inadequate"]
    held_out = {m["model"]: m for m in info.provenance["held_out"]} if "held_out" in info.provenance else {}
    assert held_out, "the recipe's held-out metrics travel with the model"


@pytest.fixture(scope="module")
def shipped():
    return load_weights(SHIPPED, "cpu")


@pytest.mark.parametrize("source", [s for s in builtin_sources(0) if s.patient.startswith("real_")],
                         ids=lambda s: f"{s.patient}-{s.name}")
def test_score_falls_with_dose_on_real_ct(shipped, source):
    """Every real CT slice that pydicom / pydicom-data ship, at falling simulated dose (noise seeds the
    recipe never used): each lower dose scores lower."""
    model, info = shipped
    simulator = DoseSimulator(source.hu.astype(np.float32), source.pixel_mm, seed=424242)
    images = np.stack([simulator.at_dose(d) for d in DOSES])
    with torch.inference_mode():
        scores = score_from_outputs(model(prepare_batch(images, info.window, info.input_size))).numpy()
    assert np.all(np.diff(scores) < 0), f"scores at doses {DOSES}: {np.round(scores, 4)}"


def test_readme_demo_shows_the_dose_dip(tmp_path):
    """The README's main command on the shipped model: the simulated low-dose slices stand out."""
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", "demo"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 40
    score = np.array([float(r["score"]) for r in rows])
    dip = np.zeros(40, dtype=bool)
    dip[16:24] = True  # make_sample_ct's default dip
    assert score[dip].max() < score[~dip].min()
    assert score[~dip].mean() - score[dip].mean() > 0.05
    dose = np.array([float(r["dose_equivalent"]) for r in rows])
    assert np.median(dose[dip]) < 0.5 * np.median(dose[~dip])
    assert all(r["adequacy"] != "good" for r, low in zip(rows, dip) if low)
    assert not math.isnan(float(rows[0]["noise_hu"]))

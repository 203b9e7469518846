"""Verdicts from a routine-dose noise reference: water-equivalent diameter, slice thickness, the dose
equivalent and its bands, the fit, the weights field, the ``calibrate`` command and every output path."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.io.reading import read_volume
from DistilIQALib.quality.interpretation import (
    adequacy_from_reference,
    adequacy_labels,
    dose_equivalent_adequacy,
    fit_noise_reference,
    lowest_adequate_score,
    noise_dose_equivalent,
    weighted_quantile,
)
from DistilIQALib.quality.noise import noise_equivalent_diameter_cm, water_equivalent_diameter_cm
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import FORMAT_VERSION, load_weights, read_info
from DistilIQALib.training.corpus import sha256_of
from DistilIQALib.volume import CTVolume

from .conftest import write_untrained_weights

ROOT = Path(__file__).resolve().parents[2]
#: V_ref = 1000 HU^2 mm at D_w = 30 cm, 5% more variance per cm.
REFERENCE = {"intercept": math.log(1000.0) - 0.05 * 30.0, "per_cm": 0.05}


def _disc(radius_mm: float, pixel_mm: float, hu_inside: float, size: int = 512) -> np.ndarray:
    centre = (np.arange(size) - (size - 1) / 2.0) * pixel_mm
    inside = centre[None, :] ** 2 + centre[:, None] ** 2 <= radius_mm ** 2
    return np.where(inside, hu_inside, -1000.0).astype(np.float32)


def test_water_equivalent_diameter_of_discs():
    water = _disc(100.0, 0.5, 0.0)
    half_dense = _disc(100.0, 0.5, -500.0)
    padded = water.copy()
    padded[:20] = -3024.0  # outside-the-field padding counts as nothing, like air
    diameters = water_equivalent_diameter_cm(torch.from_numpy(np.stack([water, half_dense, padded])), (0.5, 0.5))
    np.testing.assert_allclose(diameters.numpy(), [20.0, 20.0 / math.sqrt(2.0), 20.0], rtol=5e-3)


def _ellipse(half_width_cm: float, half_depth_cm: float, pixel_mm: float, size: int = 512) -> np.ndarray:
    centre = (np.arange(size) - (size - 1) / 2.0) * pixel_mm / 10.0
    inside = (centre[None, :] / half_width_cm) ** 2 + (centre[:, None] / half_depth_cm) ** 2 <= 1.0
    return np.where(inside, 0.0, -1000.0).astype(np.float32)


def test_noise_equivalent_diameter_follows_the_long_rays_of_a_wide_patient():
    """A round water patient: its diameter, like the water-equivalent diameter. A 40 x 20 cm water ellipse
    (shoulders): the central rays of length L(theta) = 2ab / sqrt(b^2 cos^2 + a^2 sin^2) give
    log(mean exp(0.2 L)) / 0.2 = 32.1 cm, above its water-equivalent diameter 2 sqrt(ab) = 28.3 cm."""
    theta = np.linspace(0.0, np.pi, 3600, endpoint=False)
    length = 2 * 20.0 * 10.0 / np.sqrt((10.0 * np.cos(theta)) ** 2 + (20.0 * np.sin(theta)) ** 2)
    expected_wide = float(np.log(np.mean(np.exp(0.2 * length))) / 0.2)
    assert expected_wide == pytest.approx(32.15, abs=0.01)
    slices = torch.from_numpy(np.stack([_ellipse(10.0, 10.0, 0.8), _ellipse(15.0, 15.0, 0.8),
                                        _ellipse(20.0, 10.0, 1.0)]))
    round_20, round_30 = noise_equivalent_diameter_cm(slices[:2], (0.8, 0.8)).tolist()
    wide = float(noise_equivalent_diameter_cm(slices[2:], (1.0, 1.0))[0])
    # rays up to 1.5 cm off the centre are a little shorter than the central one
    assert round_20 == pytest.approx(20.0, abs=0.5) and round_30 == pytest.approx(30.0, abs=0.5)
    assert wide == pytest.approx(expected_wide, abs=0.8)
    assert float(water_equivalent_diameter_cm(slices[2:], (1.0, 1.0))[0]) == pytest.approx(28.28, abs=0.1)
    # the ellipse turned by 90 degrees and moved off the centre of the field gives the same
    turned = torch.roll(slices[2:].transpose(1, 2), shifts=(40, -30), dims=(1, 2))
    assert float(noise_equivalent_diameter_cm(turned, (1.0, 1.0))[0]) == pytest.approx(wide, abs=0.3)


def test_noise_dose_equivalent_by_hand():
    noise = np.array([20.0, 20.0 * math.sqrt(2.0), 40.0, 200.0, 5.0, np.nan, 40.0])
    diameter = np.array([30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 40.0])
    dose = noise_dose_equivalent(noise, 2.5, diameter, REFERENCE)
    # 1000 / (noise^2 * 2.5), clipped to [0.05, 4] (5 HU: 16 routine doses, reported as 4); at 40 cm the reference
    # is 1000 e^0.5
    expected = [1.0, 0.5, 0.25, 0.05, 4.0, np.nan, 1000.0 * math.exp(0.5) / (1600.0 * 2.5)]
    np.testing.assert_allclose(dose, expected, rtol=1e-9)
    # thinner slices are expected to be noisier: 20 HU at 1.25 mm is half the variance-thickness of 2.5 mm, so
    # twice the routine dose (above 1: not capped)
    np.testing.assert_allclose(noise_dose_equivalent(np.array([20.0]), 1.25, np.array([30.0]), REFERENCE), [2.0])
    np.testing.assert_allclose(noise_dose_equivalent(np.array([40.0]), 1.25, np.array([30.0]), REFERENCE), [0.5])
    assert noise_dose_equivalent(noise, 2.5, diameter, None) is None


def test_bands_on_the_dose_equivalent_at_their_boundaries():
    adequacy = dose_equivalent_adequacy(0.5, 0.2)
    labels = adequacy_labels(np.array([1.0, 0.5, 0.4999, 0.2, 0.1999, 0.05, np.nan]), adequacy)
    assert labels == ["good", "good", "borderline", "borderline", "inadequate", "inadequate", "unknown"]
    assert lowest_adequate_score(adequacy) is None  # the bands are not on the score
    score_bands = {"bands": [{"name": "good", "min_score": 0.8}, {"name": "bad", "min_score": None}]}
    assert adequacy_labels(np.array([0.8, 0.7999, np.nan]), score_bands) == ["good", "bad", "bad"]
    assert lowest_adequate_score(score_bands) == 0.8


def _exact_reference_data(intercept: float, per_cm: float):
    rng = np.random.default_rng(1)
    noise, thickness, diameter, groups = [], [], [], []
    for patient in range(6):
        for _ in range(3 + patient):
            d, t = rng.uniform(20.0, 40.0), rng.choice([1.25, 2.5, 5.0])
            noise.append(math.sqrt(math.exp(intercept + per_cm * d) / t))
            thickness.append(t)
            diameter.append(d)
            groups.append(f"p{patient}")
    return noise, thickness, diameter, groups


def test_fit_recovers_a_known_reference_and_weighs_patients_alike():
    noise, thickness, diameter, groups = _exact_reference_data(5.0, 0.06)
    fitted = fit_noise_reference(noise, thickness, diameter, groups)
    assert fitted["intercept"] == pytest.approx(5.0, abs=1e-4) and fitted["per_cm"] == pytest.approx(0.06, abs=1e-5)
    assert fitted["residual_sd_log_variance"] == pytest.approx(0.0, abs=1e-3)
    assert fitted["patients"] == 6 and fitted["slices"] == len(noise)
    # one patient twice as noisy (log variance + log 4) weighs one patient's worth however many slices it
    # gives: repeating all its slices 50 times leaves the fit as it was, and the level at 30 cm moves by
    # about a sixth of log 4
    noisy = [n * (2.0 if g == "p5" else 1.0) for n, g in zip(noise, groups)]
    once = fit_noise_reference(noisy, thickness, diameter, groups)
    extra = [k for k, g in enumerate(groups) if g == "p5"] * 50
    many = fit_noise_reference(noisy + [noisy[k] for k in extra], thickness + [thickness[k] for k in extra],
                               diameter + [diameter[k] for k in extra], groups + ["p5"] * len(extra))
    assert many["intercept"] == pytest.approx(once["intercept"], abs=2e-4)
    assert many["per_cm"] == pytest.approx(once["per_cm"], abs=2e-5)
    level_shift = (once["intercept"] + 30 * once["per_cm"]) - (5.0 + 30 * 0.06)
    assert 0.5 * math.log(4.0) / 6 < level_shift < 2.0 * math.log(4.0) / 6
    # the level alone with a given size dependence: the weighted mean of log(var t) - per_cm D
    level = fit_noise_reference(noise[:3], thickness[:3], diameter[:3], groups[:3], per_cm=0.06)
    assert level["intercept"] == pytest.approx(5.0, abs=1e-4) and level["per_cm"] == 0.06
    with pytest.raises(ValueError, match="at least 3"):
        fit_noise_reference(noise[:7], thickness[:7], diameter[:7], groups[:7])  # patients p0 and p1 only


def test_the_fit_leaves_out_slices_it_cannot_use_and_reports_what_it_rests_on():
    """Five patients on an exact reference (one slice each; thin, thick, small and large) plus slices with no noise
    figure, no size or no thickness, which must be left out of the fit and of its counts."""
    good = [(5.0, 20.04, "a"), (0.625, 25.0, "b"), (2.5, 30.0, "c"), (1.25, 35.0, "d"), (3.0, 39.96, "e")]
    noise = [math.sqrt(math.exp(5.0 + 0.06 * d) / t) for t, d, _ in good]
    thickness, diameter, groups = [t for t, _, _ in good], [d for _, d, _ in good], [g for _, _, g in good]
    junk = [(float("nan"), 2.5, 30.0), (0.0, 2.5, 30.0), (12.0, 0.0, 30.0), (12.0, float("nan"), 30.0),
            (12.0, 2.5, float("nan"))]
    fitted = fit_noise_reference(noise + [n for n, _, _ in junk], thickness + [t for _, t, _ in junk],
                                 diameter + [d for _, _, d in junk], groups + ["x"] * len(junk))
    assert fitted["intercept"] == pytest.approx(5.0, abs=1e-4) and fitted["per_cm"] == pytest.approx(0.06, abs=1e-5)
    assert (fitted["patients"], fitted["slices"]) == (5, 5)
    assert fitted["diameter_range_cm"] == [20.0, 40.0] and fitted["thickness_range_mm"] == [0.62, 5.0]
    assert fitted["routine_range"] == pytest.approx([1.0, 1.0], abs=1e-4)  # 5 patients: enough for a spread
    # three patients are enough for a full fit (no spread under five), two are not
    three = fit_noise_reference(noise[:3], thickness[:3], diameter[:3], groups[:3])
    assert three["patients"] == 3 and "routine_range" not in three
    with pytest.raises(ValueError, match="at least 3 patient"):
        fit_noise_reference(noise[:2], thickness[:2], diameter[:2], groups[:2])
    # the level alone from one patient, with its residual spread worked out by hand: 0.3 for nine patients on the
    # level and one at +1 (residuals -0.1 x 9 and +0.9)
    skewed = fit_noise_reference([math.sqrt(math.exp(6.8 + (1.0 if k == 9 else 0.0))) for k in range(10)],
                                 [1.0] * 10, [30.0] * 10, [f"q{k}" for k in range(10)], per_cm=0.06)
    assert skewed["intercept"] == pytest.approx(5.1, abs=1e-5) and skewed["residual_sd_log_variance"] == 0.3
    with pytest.raises(ValueError, match="at least 1 patient"):
        fit_noise_reference([float("nan")], [2.5], [30.0], ["z"], per_cm=0.06)


def test_weighted_quantile_counts_each_patient_once():
    values = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    even = np.ones(5)
    assert [weighted_quantile(values, even, q) for q in (0.05, 0.2, 0.21, 0.6, 0.95, 1.0)] == [1, 1, 2, 3, 5, 5]
    # the value 1 stands for a patient with four slices (each weighing a quarter) among four one-slice patients
    values = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    shares = np.array([0.25] * 4 + [1.0] * 4)
    assert [weighted_quantile(values, shares, q) for q in (0.2, 0.21, 0.4, 0.95)] == [1, 2, 2, 5]


def _symmetric_routine_patients():
    """20 one-slice patients in pairs at one size each, one k-th pair's noise variance exp(+-0.1 k) times the
    reference's: the pairs cancel in the fit, so each slice's own dose equivalent is exp(-+0.1 k)."""
    noise, thickness, diameter, groups = [], [], [], []
    for k in range(1, 11):
        d = 18.0 + 2.0 * k
        for sign in (1.0, -1.0):
            variance = math.exp(REFERENCE["intercept"] + REFERENCE["per_cm"] * d + sign * 0.1 * k)
            noise.append(math.sqrt(variance / 2.5))
            thickness.append(2.5)
            diameter.append(d)
            groups.append(f"p{k}{'+' if sign > 0 else '-'}")
    return noise, thickness, diameter, groups


def test_bands_are_set_by_the_spread_of_routine_scans():
    fitted = fit_noise_reference(*_symmetric_routine_patients())
    assert fitted["intercept"] == pytest.approx(REFERENCE["intercept"], abs=1e-4)
    assert fitted["per_cm"] == pytest.approx(REFERENCE["per_cm"], abs=1e-5)
    # own dose equivalents exp(-1.0) .. exp(1.0) in steps of 0.1 (0 left out): the 5th percentile of 20 equal
    # patients is the lowest, the 95th the 19th
    assert fitted["routine_range"] == pytest.approx([math.exp(-1.0), math.exp(0.9)], abs=1e-4)
    adequacy = adequacy_from_reference(fitted)
    # good from 0.3679 rounded down, inadequate below a tenth of 2.4596 rounded up
    assert [band["min_value"] for band in adequacy["bands"]] == [0.36, 0.25, None]
    assert "95% of routine full-dose scans" in adequacy["reasoning"]
    # the noise factors the reasoning quotes: 0.36 ** -0.5 = 1.67, 0.25 ** -0.5 = 2.0
    assert "noise at most 1.7x" in adequacy["reasoning"] and "noise above 2.0x" in adequacy["reasoning"]
    assert adequacy_labels(np.array([0.36, 0.3599, 0.25, 0.2499]), adequacy) == [
        "good", "borderline", "borderline", "inadequate"]
    # one noisy patient among ten (log variance +1 over nine on the level; level alone fitted): residuals +0.9 and
    # -0.1, own dose equivalents exp(-0.9) = 0.4066 and nine of exp(0.1) = 1.1052
    skewed = fit_noise_reference([math.sqrt(math.exp(5.0 + 0.06 * 30.0 + (1.0 if k == 9 else 0.0))) for k in range(10)],
                                 [1.0] * 10, [30.0] * 10, [f"q{k}" for k in range(10)], per_cm=0.06)
    assert skewed["routine_range"] == pytest.approx([math.exp(-0.9), math.exp(0.1)], abs=1e-4)
    # routine scans all quieter than the reference: good still starts at a full routine dose, no higher
    assert [band["min_value"] for band in adequacy_from_reference({"routine_range": [1.2, 3.0]})["bands"]] == [
        1.0, 0.3, None]
    # routine scans spread over more than a tenfold dose: no borderline band left; a tenth of the noisiest routine
    # scans' dose stays inadequate, and good rises to meet it (never inadequate above good)
    wide = adequacy_from_reference({"routine_range": [0.3, 5.0]})
    assert [band["min_value"] for band in wide["bands"]] == [0.5, 0.5, None]
    # no spread measured under 5 patients: the fixed bands
    few = fit_noise_reference(*(values[:8] for values in _symmetric_routine_patients()))
    assert few["patients"] == 8 and "routine_range" in few
    four = fit_noise_reference(*(values[:4] for values in _symmetric_routine_patients()))
    assert "routine_range" not in four
    assert [band["min_value"] for band in adequacy_from_reference(four)["bands"]] == [0.5, 0.2, None]


def test_a_small_site_keeps_the_spread_of_the_model_it_adapts():
    from types import SimpleNamespace

    from DistilIQALib.training.recipe import apply_noise_reference

    four = fit_noise_reference(*(values[:4] for values in _symmetric_routine_patients()))
    info = SimpleNamespace(noise_reference=None, adequacy=None)
    apply_noise_reference(info, four, ["p1+", "p1-", "p2+", "p2-"], {"routine_range": [0.42, 1.9]})
    assert info.noise_reference["routine_range"] == [0.42, 1.9]
    assert [band["min_value"] for band in info.adequacy["bands"]] == [0.42, 0.19, None]
    apply_noise_reference(info, four, ["p1+", "p1-", "p2+", "p2-"], None)
    assert [band["min_value"] for band in info.adequacy["bands"]] == [0.5, 0.2, None]


def test_slice_thickness_from_the_header_else_the_spacing(tmp_path):
    hu = np.zeros((3, 16, 16), np.float32)
    assert CTVolume(hu, (1.0, 1.0, 3.0), metadata={"slice_thickness": "1.25"}).slice_thickness_mm == 1.25
    assert CTVolume(hu, (1.0, 1.0, 3.0), metadata={"slice_thickness": "0"}).slice_thickness_mm == 3.0
    assert CTVolume(hu, (1.0, 1.0, 3.0), metadata={"slice_thickness": "n/a"}).slice_thickness_mm == 3.0
    assert CTVolume(hu, (1.0, 1.0, 3.0)).slice_thickness_mm == 3.0
    volume_hu = np.stack([_disc(80.0, 1.0, 40.0, 256)] * 3)
    write_series(volume_hu, tmp_path / "dicom", spacing_mm=(1.0, 1.0, 5.0), extra={"SliceThickness": "2.5"})
    assert read_volume(tmp_path / "dicom").slice_thickness_mm == 2.5
    image = sitk.GetImageFromArray(volume_hu)
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "volume.nrrd"))
    assert read_volume(tmp_path / "volume.nrrd").slice_thickness_mm == 4.0


@pytest.fixture(scope="module")
def referenced_weights(tmp_path_factory) -> Path:
    """A model with a noise reference. Untrained: the verdicts rest on noise, size and thickness, not on what
    the network learned."""
    return write_untrained_weights(tmp_path_factory.mktemp("referenced") / "referenced.safetensors", num_outputs=3,
                                   noise_reference=dict(REFERENCE), adequacy=dose_equivalent_adequacy(0.5, 0.2))


def test_weights_keep_the_reference_and_a_file_written_without_one_has_none(referenced_weights, tmp_path):
    info = read_info(referenced_weights)
    assert info.noise_reference == REFERENCE and info.adequacy["on"] == "dose_equivalent"
    assert FORMAT_VERSION == 4 and info.format_version == 4
    assert read_info(write_untrained_weights(tmp_path / "plain.safetensors")).noise_reference is None


def _water_volume(noise_sd: float, seed: int, slices: int = 4) -> np.ndarray:
    """A 20 cm water-like disc (40 HU) with white noise of ``noise_sd`` HU."""
    rng = np.random.default_rng(seed)
    disc = _disc(100.0, 0.5, 40.0)
    return disc[None] + np.where(disc > -1000.0, rng.normal(0.0, noise_sd, (slices,) + disc.shape), 0.0)


def test_scorer_verdicts_rest_on_noise_size_and_thickness(referenced_weights):
    scorer = Scorer(str(referenced_weights), device="cpu")
    quiet = CTVolume(_water_volume(15.0, 0).astype(np.float32), (0.5, 0.5, 2.5))
    noisy = CTVolume(_water_volume(60.0, 1).astype(np.float32), (0.5, 0.5, 2.5))
    # a water disc is no patient: the verdicts are asked for as the abdomen, which a single (older) reference covers
    for volume in (quiet, noisy):
        scores = scorer.score_volume(volume, region="abdomen")
        np.testing.assert_allclose(scores.diameter_cm, 20.0 * math.sqrt(1.04), rtol=0.01)  # 40 HU: 4% denser
        assert scores.thickness_mm == 2.5
        expected = np.clip(np.exp(REFERENCE["intercept"] + REFERENCE["per_cm"] * scores.diameter_cm)
                           / (scores.noise_hu.astype(np.float64) ** 2 * 2.5), 0.05, 4.0)
        np.testing.assert_allclose(scores.dose_equivalent, expected, rtol=1e-5)
    # V_ref at 20.4 cm is about 1000 e^-0.48 = 619 HU^2 mm: 15 HU at 2.5 mm is 562 -> "good";
    # 60 HU is 9000 -> dose equivalent about 0.07 -> "inadequate"
    quiet_scores, noisy_scores = (scorer.score_volume(v, region="abdomen") for v in (quiet, noisy))
    assert set(quiet_scores.adequacy) == {"good"} and set(noisy_scores.adequacy) == {"inadequate"}
    summary = noisy_scores.summary()
    assert summary["adequacy_measure"] == "dose_equivalent" and summary["adequacy_threshold"] == 0.2
    assert summary["fraction_inadequate"] == 1.0 and summary["slice_thickness_mm"] == 2.5
    # reported to 3 decimals (the JSON summary), the diameter per slice to 1 decimal (the CSV)
    assert summary["median_dose_equivalent"] == round(float(np.median(noisy_scores.dose_equivalent)), 3)
    rows = quiet_scores.rows()
    assert rows[0]["water_diameter_cm"] == round(float(quiet_scores.diameter_cm[0]), 1)
    assert rows[0]["water_diameter_cm"] == pytest.approx(20.4, abs=0.1) and rows[0]["adequacy"] == "good"
    assert quiet_scores.diameter_cm.dtype == np.float32
    # a model without bands reports no adequacy measure
    quiet_scores.info = dataclasses.replace(quiet_scores.info, adequacy=None)
    assert quiet_scores.summary()["adequacy_measure"] is None


def test_scorer_measures_the_size_the_reference_was_fitted_on(tmp_path):
    weights = write_untrained_weights(tmp_path / "noise_size.safetensors", num_outputs=3,
                                      noise_reference=dict(REFERENCE, size="noise_equivalent_diameter"),
                                      adequacy=dose_equivalent_adequacy(0.5, 0.2))
    hu = np.stack([_ellipse(20.0, 10.0, 1.0)] * 2)
    scores = Scorer(str(weights), device="cpu").score_volume(CTVolume(hu, (1.0, 1.0, 2.5)))
    # the wide ellipse's noise-equivalent diameter (about 32 cm), not its water-equivalent one (28.3 cm)
    np.testing.assert_allclose(scores.diameter_cm, noise_equivalent_diameter_cm(torch.from_numpy(hu), (1.0, 1.0)),
                               rtol=1e-5)
    assert scores.diameter_cm.min() > 31.0
    # the CSV's diameter column: to 0.1 cm
    assert [row["water_diameter_cm"] for row in scores.rows()] == [round(float(d), 1) for d in scores.diameter_cm]


def test_slices_without_soft_tissue_have_no_verdict_and_do_not_count(referenced_weights):
    scorer = Scorer(str(referenced_weights), device="cpu")
    hu = _water_volume(15.0, 2, slices=4).astype(np.float32)
    hu[0] = -1000.0  # a slice of air: no soft tissue to measure noise on
    scores = scorer.score_volume(CTVolume(hu, (0.5, 0.5, 2.5)), region="abdomen")
    assert np.isnan(scores.dose_equivalent[0]) and scores.adequacy[0] == "unknown"
    assert scores.rows()[0]["dose_equivalent"] is None
    assert scores.summary()["fraction_inadequate"] == 0.0  # 3 measurable slices, none inadequate


def _noise_manifest(tmp_path: Path, per_cm: float, intercept: float) -> Path:
    """A corpus of 4 'patients' (NRRD volumes of water discs, 22-31 cm across: large bodies without lung, read as
    abdomen) whose noise follows the given reference."""
    files, entries = tmp_path / "files", []
    for n, (radius_mm, thickness) in enumerate([(110.0, 5.0), (125.0, 2.5), (140.0, 1.25), (155.0, 2.5)]):
        disc = _disc(radius_mm, 0.6, 40.0)
        diameter = float(water_equivalent_diameter_cm(torch.from_numpy(disc)[None], (0.6, 0.6))[0])
        sd = math.sqrt(math.exp(intercept + per_cm * diameter) / thickness)
        rng = np.random.default_rng(n)
        hu = disc[None] + np.where(disc > -1000.0, rng.normal(0.0, sd, (3,) + disc.shape), 0.0)
        image = sitk.GetImageFromArray(hu.astype(np.float32))
        image.SetSpacing((0.6, 0.6, thickness))
        path = files / f"p{n}" / "ct.nrrd"
        path.parent.mkdir(parents=True)
        sitk.WriteImage(image, str(path))
        entries.append({"id": f"p{n}", "patient": f"P{n}", "role": "train" if n < 3 else "calibration",
                        "anatomy": "water", "path": f"p{n}", "slices_used": 3,
                        "files": {f"p{n}/ct.nrrd": sha256_of(path)}})
    entries.append({"id": "t", "patient": "T", "role": "test", "anatomy": "water", "path": "absent",
                    "slices_used": 1, "files": {}})  # a test patient is never read
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"entries": entries}))
    return manifest


def test_calibrate_command_fits_the_corpus_and_keeps_the_network(tmp_path, tiny_weights):
    manifest = _noise_manifest(tmp_path, per_cm=0.06, intercept=5.0)
    output = tmp_path / "calibrated.safetensors"
    done = subprocess.run([sys.executable, "-m", "DistilIQALib", "calibrate", str(tiny_weights), "--output",
                           str(output), "--manifest", str(manifest)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    info = read_info(output)
    # the global noise index of white noise reads a little low (the mode of local SDs); the size dependence
    # and the fitted patients are what matter. Large bodies without lung: the abdomen's level; the neck's follows
    # from it and the published thresholds; no chest or head slices, so no level for them
    regions = info.noise_reference["regions"]
    assert sorted(regions) == ["abdomen", "neck"]
    abdomen = regions["abdomen"]
    assert abdomen["per_cm"] == pytest.approx(0.06, abs=0.01) and abdomen["basis"] == "fitted"
    assert abdomen["fitted_on"] == ["P0", "P1", "P2", "P3"] and abdomen["patients"] == 4
    assert regions["neck"]["basis"] == "literature" and regions["neck"]["per_cm"] == 0.0
    middle = sum(abdomen["diameter_range_cm"]) / 2.0
    assert regions["neck"]["intercept"] == pytest.approx(
        abdomen["intercept"] + abdomen["per_cm"] * middle + 2.0 * math.log(25.0 / 29.0), abs=1e-4)
    assert info.adequacy["on"] == "dose_equivalent"
    original, _ = load_weights(tiny_weights)
    calibrated, _ = load_weights(output)
    for (name, a), (_, b) in zip(original.state_dict().items(), calibrated.state_dict().items()):
        torch.testing.assert_close(a.half().float(), b.float(), msg=name)
    described = subprocess.run([sys.executable, "-m", "DistilIQALib", "info", str(output)], capture_output=True,
                               text=True, cwd=ROOT)
    assert "adequacy on the dose equivalent: good >= 0.5, borderline >= 0.33, inadequate" in described.stdout
    assert (f"  abdomen: dose equivalent exp({abdomen['intercept']:g} + {abdomen['per_cm']:g} D) / (noise^2 x "
            "thickness), D the noise-equivalent diameter in cm") in described.stdout
    assert "fitted on 4 patients; good >= 0.5, borderline >= 0.33" in described.stdout
    assert "  neck: " in described.stdout and "from published measurements" in described.stdout
    missing = subprocess.run([sys.executable, "-m", "DistilIQALib", "calibrate", str(tmp_path / "none.safetensors"),
                              "--output", str(output)], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr


def test_which_size_dependence_a_small_site_keeps():
    from DistilIQALib.errors import InputError
    from DistilIQALib.training.recipe import noise_reference_from_sources, size_dependence_to_keep

    base = {"intercept": 5.0, "per_cm": 0.07, "size": "noise_equivalent_diameter"}
    assert [size_dependence_to_keep(base, n) for n in (1, 2, 4, 5)] == [0.07, 0.07, 0.07, None]
    # a base model fitted on another size measure has no size dependence to lend
    older = {"intercept": 5.0, "per_cm": 0.07}
    assert [size_dependence_to_keep(older, n) for n in (1, 2, 3, 5)] == [0.0, 0.0, None, None]
    assert [size_dependence_to_keep(None, n) for n in (1, 2, 3, 5)] == [0.0, 0.0, None, None]
    from DistilIQALib.training.datasets import SourceSlice

    two = [SourceSlice(f"P{n}", "s", _water_volume(15.0, n, slices=1)[0].astype(np.float32), 0.5, thickness_mm=2.5)
           for n in range(2)]
    with pytest.raises(InputError, match="at least 3 patient"):
        noise_reference_from_sources(two)
    assert noise_reference_from_sources(two, per_cm=0.05)["patients"] == 2


def test_slices_with_no_usable_noise_thickness_or_size_get_no_dose_equivalent_and_no_warning():
    import warnings

    noise = np.array([0.0, 20.0, 20.0, 0.5, np.inf, np.inf])
    thickness = np.array([2.5, 0.0, 2.5, 2.5, 2.5, 0.0])
    diameter = np.array([30.0, 30.0, np.nan, 30.0, 30.0, 30.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division or invalid-value warnings for slices without a figure
        dose = noise_dose_equivalent(noise, thickness, diameter, REFERENCE)
    # no noise, no thickness, no size: unknown; half a HU is a (very quiet) measurement: clipped to 4 routine doses;
    # infinite noise is as bad as it gets: the lowest dose equivalent (unless there is no thickness either)
    np.testing.assert_array_equal(np.isnan(dose), [True, True, True, False, False, True])
    assert dose[3] == 4.0 and dose[4] == 0.05


def test_single_precision_inputs_give_the_double_precision_dose_equivalent_and_verdict():
    """The scorer holds noise, size and dose equivalents in float32, the batch store reads them back as float64:
    both must give the same numbers and verdicts."""
    from DistilIQALib.quality.interpretation import reference_variance

    rng = np.random.default_rng(3)
    noise, diameter = rng.uniform(30.0, 80.0, 64).astype(np.float32), rng.uniform(18.0, 45.0, 64).astype(np.float32)
    thickness = np.float32(1.25)
    single = noise_dose_equivalent(noise, thickness, diameter, REFERENCE)
    double = noise_dose_equivalent(noise.astype(np.float64), 1.25, diameter.astype(np.float64), REFERENCE)
    assert 0.05 < np.median(single) < 1.0  # mostly unclipped
    np.testing.assert_array_equal(single, double)
    np.testing.assert_array_equal(reference_variance(diameter, REFERENCE),
                                  reference_variance(diameter.astype(np.float64), REFERENCE))
    # float32 values at the bands' edges lie just off them (float32(0.35) = 0.34999999, float32(0.27) =
    # 0.27000001): the same verdicts as their float64 copies read back from a store
    adequacy = dose_equivalent_adequacy(0.35, 0.27)
    edge = np.array([0.35, 0.27], dtype=np.float32)
    assert adequacy_labels(edge, adequacy) == adequacy_labels(edge.astype(np.float64), adequacy) == [
        "borderline", "borderline"]


def _quantile_by_hand(values, weights, q):
    """The smallest value whose ascending cumulative weight reaches q of the total."""
    total, running = sum(weights), 0.0
    for value, weight in sorted(zip(values, weights)):
        running += weight
        if running >= q * total - 1e-12:
            return value
    return max(values)


def test_fit_numbers_are_rounded_to_their_documented_places():
    """Intercept and slope to 5 decimals, residual spread and routine range to 4, sizes to 0.1 cm, thicknesses to
    0.01 mm; each against the same quantities worked out with numpy's polyfit and a weighted quantile by hand."""
    rng = np.random.default_rng(7)
    noise, thickness, diameter, groups = [], [], [], []
    for patient in range(7):
        for _ in range(2 + patient % 3):
            d, t = rng.uniform(20.46, 38.0), float(rng.choice([0.625, 1.25, 1.875]))
            noise.append(math.sqrt(math.exp(5.1234567 + 0.0612345 * d + rng.normal(0.0, 0.3)) / t))
            thickness.append(t)
            diameter.append(d)
            groups.append(f"p{patient}")
    # a very quiet slice (under 1 HU) is a measurement like any other
    noise, thickness, diameter, groups = noise + [0.9], thickness + [1.25], diameter + [25.0], groups + ["p0"]
    fitted = fit_noise_reference(noise, thickness, diameter, groups)
    assert fitted["slices"] == len(noise)
    counts = {g: groups.count(g) for g in groups}
    weights = np.array([1.0 / counts[g] for g in groups])
    target = np.log(np.square(noise) * np.array(thickness))
    per_cm, intercept = np.polyfit(diameter, target, 1, w=np.sqrt(weights))
    residual = target - (intercept + per_cm * np.array(diameter))
    assert fitted["intercept"] == round(intercept, 5) and fitted["per_cm"] == round(per_cm, 5)
    assert fitted["residual_sd_log_variance"] == round(math.sqrt(np.average(residual ** 2, weights=weights)), 4)
    own_dose = np.exp(-residual)
    assert fitted["routine_range"] == [round(_quantile_by_hand(own_dose, weights, q), 4) for q in (0.05, 0.95)]
    assert fitted["diameter_range_cm"] == [round(min(diameter), 1), round(max(diameter), 1)]
    assert fitted["thickness_range_mm"] == [0.62, 1.88]  # 0.625 and 1.875 to 2 decimals (binary: 0.62, 1.88)
    assert all(len(repr(v).split(".")[1]) <= places for v, places in
               [(fitted["intercept"], 5), (fitted["per_cm"], 5), (fitted["residual_sd_log_variance"], 4)]
               + [(v, 4) for v in fitted["routine_range"]] + [(v, 1) for v in fitted["diameter_range_cm"]])
    assert all(isinstance(v, float) for v in fitted["diameter_range_cm"] + fitted["thickness_range_mm"])


def test_the_bands_reasoning_quotes_the_noise_factors_of_its_thresholds():
    fixed = dose_equivalent_adequacy(0.5, 0.2)["reasoning"]
    # 0.5 ** -0.5 = 1.41 and 0.2 ** -0.5 = 2.24
    assert "good: noise no worse than 50% of a routine full dose" in fixed and "noise at most 1.4x" in fixed
    assert "inadequate: below 20% (noise above 2.2x)" in fixed
    assert fixed.endswith(" The routine level is fitted on real clinical full-dose scans.")
    fitted = adequacy_from_reference({"routine_range": [0.353, 2.65]})["reasoning"]
    assert fitted.endswith(" The routine level and its spread are fitted on real clinical full-dose scans.")
    # good from 0.35 (1.69x the routine noise), inadequate below 0.27 (1.92x)
    assert "noise at most 1.7x" in fitted and "noise above 1.9x" in fitted

import numpy as np
import pytest
import scipy.stats
from skimage.metrics import structural_similarity

from DistilIQALib.quality.metrics import agreement, krocc, plcc, srocc, ssim
from DistilIQALib.quality.preprocessing import window_to_unit
from DistilIQALib.training.phantoms import phantom_slice


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    label = np.round(rng.uniform(0, 4, 300) * 5) / 5  # 0-4 in steps of 0.2: many ties
    prediction = np.round(label + rng.normal(0, 0.8, 300), 1)  # ties in predictions too
    assert plcc(prediction, label) == pytest.approx(scipy.stats.pearsonr(prediction, label)[0], abs=1e-10)
    assert srocc(prediction, label) == pytest.approx(scipy.stats.spearmanr(prediction, label)[0], abs=1e-10)
    assert krocc(prediction, label) == pytest.approx(scipy.stats.kendalltau(prediction, label)[0], abs=1e-10)


def test_agreement_overall_and_errors():
    label = np.array([0.1, 0.4, 0.35, 0.8])
    values = agreement(label, label)
    assert values["overall"] == pytest.approx(3.0) and values["MAE"] == 0 and values["MSE"] == 0
    values = agreement(label + 0.1, label)
    assert values["MAE"] == pytest.approx(0.1) and values["MSE"] == pytest.approx(0.01)
    assert agreement(-label, label)["overall"] == pytest.approx(-3.0)


def test_ssim_matches_scikit_image():
    clean = window_to_unit(phantom_slice(0.3, 256, 1.4, seed=2))
    rng = np.random.default_rng(0)
    for sd in (0.01, 0.05, 0.2):
        noisy = np.clip(clean + rng.normal(0, sd, clean.shape), 0, 1)
        expected = structural_similarity(clean.astype(np.float64), noisy, data_range=1.0)
        assert ssim(clean, noisy) == pytest.approx(expected, abs=1e-6)
    assert ssim(clean, clean) == pytest.approx(1.0)

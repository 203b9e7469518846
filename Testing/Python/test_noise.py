import numpy as np
import pytest
import torch

from DistilIQALib.quality.noise import global_noise_index, kernel_pixels
from DistilIQALib.training.phantoms import phantom_slice, water_phantom


@pytest.mark.parametrize("pixel_mm", [0.5, 0.7, 1.0])
@pytest.mark.parametrize("sd_hu", [5.0, 12.0, 25.0, 50.0])
def test_gni_recovers_known_noise_within_10_percent(pixel_mm, sd_hu):
    clean = water_phantom(512, pixel_mm, diameter_mm=250.0, hu=40.0)
    rng = np.random.default_rng(int(sd_hu * 10 + pixel_mm * 100))
    noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * sd_hu
    gni = global_noise_index(torch.from_numpy(noisy)[None], (pixel_mm, pixel_mm)).item()
    assert gni == pytest.approx(sd_hu, rel=0.10)


def test_gni_is_nan_without_soft_tissue_and_batched():
    air = torch.full((1, 128, 128), -1000.0)
    assert torch.isnan(global_noise_index(air)).all()
    rng = np.random.default_rng(0)
    tissue = 40.0 + rng.standard_normal((2, 128, 128)).astype(np.float32) * np.array([10.0, 30.0])[:, None, None]
    gni = global_noise_index(torch.from_numpy(tissue.astype(np.float32)))
    assert gni[0].item() == pytest.approx(10.0, rel=0.1) and gni[1].item() == pytest.approx(30.0, rel=0.1)


def test_kernel_is_about_six_mm_and_odd():
    assert kernel_pixels(0.7) == 9
    assert kernel_pixels(1.0) == 7
    assert kernel_pixels(3.0) == 3


def test_gni_on_anatomy_includes_tissue_texture_but_tracks_noise():
    """On textured anatomy the GNI is noise plus texture; it still rises with the noise."""
    clean = phantom_slice(0.2, size=512, pixel_mm=0.7, seed=1)
    rng = np.random.default_rng(5)
    values = []
    for sd_hu in (0.0, 10.0, 20.0, 40.0):
        noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * sd_hu
        values.append(global_noise_index(torch.from_numpy(noisy)[None], (0.7, 0.7)).item())
    assert values == sorted(values)
    assert values[-1] == pytest.approx(40.0, rel=0.1)

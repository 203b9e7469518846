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


def test_box_means_and_the_noise_index_are_those_of_float64_pooling_on_real_heads_and_bodies():
    # The window sums of a series' whole HU and of their squares run in int32, those of float slices in float32
    # where they are whole and in float64 otherwise: each is the float64 mean of avg_pool2d on the real head and on
    # every real slice pydicom ships, and the noise index of a series' int16 slices is that of the same slices as
    # float, also where metal's squares would leave int32.
    import torch.nn.functional as F

    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.quality.noise import _box_mean, _exact_sum_dtype, _window_sums_2d

    from .shipped_ct import shipped_ct_files
    from .test_regions import CRANIUM, read_inv3

    volumes = [read_volume(path, force=True) for path in shipped_ct_files()]
    if CRANIUM.is_file():
        volumes.append(read_inv3(CRANIUM))
    types = set()
    for volume in volumes:
        stored = torch.from_numpy(np.array(volume.hu[:12]))
        assert not stored.is_floating_point()
        centred = stored.float() - 50.0
        kernel = (kernel_pixels(volume.spacing_mm[1]), kernel_pixels(volume.spacing_mm[0]))
        for values, whole in ((centred, True), (centred * centred, False), (centred * 0.37, False)):
            pooled = F.avg_pool2d(values.double()[:, None], kernel, stride=1)[:, 0].float()
            assert torch.equal(_box_mean(values, kernel, whole), pooled), (volume.source, whole)
        count = kernel[0] * kernel[1]
        exact = _exact_sum_dtype(stored, count)
        types.add(exact)
        integer = stored.to(exact) - 50
        for values, same in ((integer, centred), (integer * integer, centred * centred)):
            pooled = F.avg_pool2d(same.double()[:, None], kernel, stride=1)[:, 0].float()
            assert torch.equal(_window_sums_2d(values, kernel).double().div_(count).float(), pooled), volume.source
        noise = global_noise_index(stored, volume.spacing_mm[:2])
        np.testing.assert_array_equal(noise.numpy(), global_noise_index(stored.float(), volume.spacing_mm[:2]).numpy())
        metal = stored.clone()
        metal[:, 100:104, 100:104] = 32767
        assert _exact_sum_dtype(metal, count) == torch.int64
        np.testing.assert_array_equal(global_noise_index(metal, volume.spacing_mm[:2]).numpy(),
                                      global_noise_index(metal.float(), volume.spacing_mm[:2]).numpy())
    assert torch.int32 in types  # CT values in windows of their size

"""Dose simulation checked against physics: Poisson counts, sqrt(1/d - 1) scaling, CT noise texture."""
import numpy as np
import pytest
import torch

from DistilIQALib.training.phantoms import water_phantom
from DistilIQALib.training.simulation import DoseSimulator, hu_to_mu, mu_to_hu, paired_dose, sparse_view
from DistilIQALib.training.tomography import fbp, forward_project

SIZE, PIXEL_MM = 256, 1.2  # a 30 cm water cylinder on a coarse grid keeps the test fast
CENTRE = np.s_[98:158, 98:158]


@pytest.fixture(scope="module")
def water():
    return water_phantom(SIZE, PIXEL_MM, diameter_mm=300.0, hu=0.0)


@pytest.fixture(scope="module")
def simulator(water):
    return DoseSimulator(water, PIXEL_MM, electronic_sd=0.0, seed=4)


def test_added_noise_follows_sqrt_inverse_dose_minus_one(simulator):
    unit = simulator.added_noise(0.5)[CENTRE].std()  # sqrt(1/0.5 - 1) = 1
    for dose in (0.75, 0.25, 0.1, 0.05):
        measured = simulator.added_noise(dose)[CENTRE].std()
        assert measured == pytest.approx(unit * np.sqrt(1 / dose - 1), rel=0.10)


def test_added_noise_matches_poisson_counting_statistics(water, simulator):
    """Reconstruct real Poisson counts at dose d and at full dose: the extra noise equals the simulator's."""
    mu = hu_to_mu(torch.from_numpy(water))[None]
    p = forward_project(mu, simulator.views, PIXEL_MM)[0]
    clean = mu_to_hu(fbp(p[None], SIZE, PIXEL_MM))[0].numpy()
    generator = torch.Generator().manual_seed(11)

    def poisson_noise_sd(dose):
        expected = simulator.photons_per_view * dose * torch.exp(-p)
        counts = torch.poisson(expected.double(), generator=generator).clamp(min=1).float()
        noisy = mu_to_hu(fbp((-torch.log(counts / (simulator.photons_per_view * dose)))[None], SIZE, PIXEL_MM))
        return (noisy[0].numpy() - clean)[CENTRE].std()

    full = poisson_noise_sd(1.0)
    for dose in (0.5, 0.25, 0.1):
        added = np.sqrt(poisson_noise_sd(dose) ** 2 - full ** 2)
        assert simulator.added_noise(dose)[CENTRE].std() == pytest.approx(added, rel=0.10)


def _rise_of_noise_power(noise: np.ndarray) -> float:
    """Mean noise power at 0.10-0.15 cycles/pixel over that below 0.05 cycles/pixel (DC excluded)."""
    roi = noise - noise.mean()
    power = np.abs(np.fft.fft2(roi)) ** 2
    frequency = np.fft.fftfreq(roi.shape[0])
    radius = np.hypot(*np.meshgrid(frequency, frequency, indexing="ij"))
    return power[(radius >= 0.10) & (radius < 0.15)].mean() / power[(radius > 0) & (radius < 0.05)].mean()


def test_noise_has_ct_texture_not_white(simulator):
    """FBP noise power rises with frequency (ramp) before the kernel rolls it off; white noise is flat."""
    roi = np.s_[64:192, 64:192]
    assert _rise_of_noise_power(simulator.added_noise(0.25)[roi]) > 1.8
    assert _rise_of_noise_power(np.random.default_rng(0).standard_normal((128, 128))) < 1.25


def test_noise_is_stronger_behind_more_attenuation():
    wide = DoseSimulator(water_phantom(SIZE, PIXEL_MM, 300.0), PIXEL_MM, electronic_sd=0.0, seed=1)
    narrow = DoseSimulator(water_phantom(SIZE, PIXEL_MM, 180.0), PIXEL_MM, electronic_sd=0.0, seed=1)
    assert wide.added_noise(0.25)[CENTRE].std() > 2 * narrow.added_noise(0.25)[CENTRE].std()


def test_full_dose_is_unchanged_and_bad_dose_rejected(simulator, water):
    np.testing.assert_array_equal(simulator.at_dose(1.0), water)
    with pytest.raises(ValueError):
        simulator.at_dose(0.0)


def test_sparse_views_add_streaks_that_fall_with_more_views(water):
    streaks = [np.abs(sparse_view(water, PIXEL_MM, views) - water)[CENTRE].mean() for views in (32, 64, 128)]
    assert streaks[0] > streaks[1] > streaks[2] > 0


def test_paired_dose_formula():
    full = np.zeros((4, 4), dtype=np.float32)
    low = np.full((4, 4), 30.0, dtype=np.float32)  # 10% dose: noise 30 HU above full dose
    assert paired_dose(full, low, 0.1, 0.1) == pytest.approx(low)
    assert paired_dose(full, low, 0.1, 1.0) == pytest.approx(full)
    # a = sqrt((1/0.5 - 1) / (1/0.1 - 1)) = 1/3
    assert paired_dose(full, low, 0.1, 0.5)[0, 0] == pytest.approx(10.0)
    # 25% data uses its own factor: a = sqrt(1 / 3)
    assert paired_dose(full, low, 0.25, 0.5)[0, 0] == pytest.approx(30.0 / np.sqrt(3.0))


def test_sharper_kernels_give_more_and_finer_noise(water):
    """Same photons, three reconstruction kernels: noise SD and its high-frequency share rise with sharpness."""
    roi = np.s_[64:192, 64:192]
    noise = {k: DoseSimulator(water, PIXEL_MM, electronic_sd=0.0, seed=2, kernel=k).added_noise(0.25)
             for k in ("hann", "shepp-logan", "ramlak")}
    sd = [noise[k][CENTRE].std() for k in ("hann", "shepp-logan", "ramlak")]
    rise = [_rise_of_noise_power(noise[k][roi]) for k in ("hann", "shepp-logan", "ramlak")]
    assert sd[0] * 1.3 < sd[1] < sd[2]
    assert rise[0] < rise[1] < rise[2]
    with pytest.raises(ValueError, match="unknown reconstruction filter"):
        DoseSimulator(water, PIXEL_MM, kernel="bone")


def test_full_dose_noise_is_the_noise_that_halving_the_dose_adds(simulator):
    """Halving the dose doubles the variance, so the added noise has the full-dose noise's SD."""
    full = simulator.full_dose_noise()[CENTRE].std()
    assert full == pytest.approx(simulator.added_noise(0.5)[CENTRE].std(), rel=0.05)
    assert full > 1.0


def test_textured_noise_has_ct_texture_and_the_asked_sd():
    from DistilIQALib.training.simulation import textured_noise

    noise = textured_noise((2, 128, 128), 25.0, np.random.default_rng(1))
    assert noise.dtype == np.float32 and noise.std(axis=(1, 2)) == pytest.approx([25.0, 25.0], rel=1e-3)
    assert _rise_of_noise_power(noise[0]) > 1.8


def test_projections_run_on_the_device_given():
    """``device`` moves the projections and reconstructions (a GPU in the recipe); the random numbers stay on the
    CPU, so the CPU named explicitly gives exactly the default's images, dose noise and streaks alike. Meta tensors
    hold no data: a simulation sent there fails, which shows it ran there and not on the CPU."""
    from DistilIQALib.training.simulation import dense_reconstruction

    water = water_phantom(96, 3.2, diameter_mm=300.0, hu=0.0)

    relative = dict(seed=5, reference_noise_hu=8.0, kernel=0.5)
    for device in ("cpu", torch.device("cpu")):
        np.testing.assert_array_equal(DoseSimulator(water, 3.2, device=device, **relative).at_dose(0.25),
                                      DoseSimulator(water, 3.2, **relative).at_dose(0.25))
        np.testing.assert_array_equal(DoseSimulator(water, 3.2, seed=2, device=device).at_dose(0.1),
                                      DoseSimulator(water, 3.2, seed=2).at_dose(0.1))
        np.testing.assert_array_equal(sparse_view(water, 3.2, 32, device=device), sparse_view(water, 3.2, 32))
        np.testing.assert_array_equal(dense_reconstruction(water, 3.2, device=device),
                                      dense_reconstruction(water, 3.2))
    for make in (lambda: DoseSimulator(water, 3.2, device="meta"), lambda: sparse_view(water, 3.2, 32, device="meta"),
                 lambda: sparse_view(water, 3.2, 32, dense_reconstruction(water, 3.2), "meta"),
                 lambda: dense_reconstruction(water, 3.2, device="meta")):
        with pytest.raises(NotImplementedError):
            make()

"""Lower-dose and sparse-view versions of a full-dose CT slice, simulated in the projection domain.

Noise insertion (after Yu et al. / Zeng et al.): the slice in HU becomes attenuation
(1/mm, water 0.0193/mm), is forward projected to line integrals ``p``, and the noise
a dose fraction ``d`` adds to the post-log data has variance

    (1/d - 1) * exp(p) / I0   +   (1/d**2 - 1) * sigma_e**2 * exp(2 p) / I0**2

(quantum and electronic parts; ``I0`` photons per ray at full dose). Each part is
reconstructed once per slice with FBP from a unit realisation, so any number of dose
levels costs two multiplications: :meth:`DoseSimulator.at_dose`. The noise therefore
has CT texture (ramp-shaped power spectrum, stronger behind dense anatomy), unlike
white noise.

Sparse-view streaks: the slice reconstructed by FBP from 64-256 views minus its
reconstruction from many views, added to the slice.

The paired-image formula for data that already has a low-dose scan (TCIA LDCT):
``I_d = F + a (L - F)``, ``a = sqrt((1/d - 1) / (1/d_L - 1))`` (:func:`paired_dose`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .tomography import fbp, forward_project

MU_WATER_PER_MM = 0.0193
DEFAULT_I0 = 1.5e5
#: Electronic noise SD in photon units per ray (a few tens on modern detectors).
DEFAULT_ELECTRONIC_SD = 10.0
#: Calibration of the simplified geometry (parallel beam, one-pixel bins, 360 views, Hann-apodised
#: ramp) to clinical noise: I0 photons per ray are spread over this many equivalent views, chosen so
#: that at the default I0 the full-dose noise at the centre of a 30 cm water cylinder is about 12 HU
#: (0.7 mm pixels), a typical abdominal value; a 20 cm cylinder then gets about 5 HU.
EQUIVALENT_VIEWS = 5000
NOISE_VIEWS = 360
DENSE_VIEWS = 720


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    return (MU_WATER_PER_MM * (1.0 + hu / 1000.0)).clamp(min=0.0)


def mu_to_hu(mu: torch.Tensor) -> torch.Tensor:
    return (mu / MU_WATER_PER_MM - 1.0) * 1000.0


def textured_noise(shape, sd_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with CT texture (HU, float32): white noise shaped to the noise power spectrum of
    FBP with a Hann-apodised ramp, ``NPS(f) ~ |f| hann(f)^2``, scaled to ``sd_hu``.

    A cheap stand-in for :class:`DoseSimulator` where many slices need noise quickly (the sample CT); it
    lacks the projection-domain noise's rise behind dense anatomy."""
    fy = np.fft.fftfreq(shape[-2])[:, None]
    fx = np.fft.rfftfreq(shape[-1])[None, :]
    radius = np.minimum(np.hypot(fy, fx) / 0.5, 1.0)  # 1 at the Nyquist frequency
    amplitude = np.sqrt(radius) * 0.5 * (1.0 + np.cos(np.pi * radius))
    white = rng.standard_normal(shape, dtype=np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=shape[-2:])
    noise /= noise.std(axis=(-2, -1), keepdims=True)
    return (noise * sd_hu).astype(np.float32)


def paired_dose(full_hu: np.ndarray, low_hu: np.ndarray, low_dose_fraction: float, dose_fraction: float) -> np.ndarray:
    """Image at ``dose_fraction`` from a full-dose image and its paired low-dose image (HU)."""
    if not 0 < low_dose_fraction < 1 or not 0 < dose_fraction <= 1:
        raise ValueError("dose fractions must be in (0, 1]")
    factor = np.sqrt((1.0 / dose_fraction - 1.0) / (1.0 / low_dose_fraction - 1.0))
    return full_hu.astype(np.float32) + np.float32(factor) * (low_hu.astype(np.float32) - full_hu.astype(np.float32))


@dataclass
class DoseSimulator:
    """Noise realisations for one full-dose slice; :meth:`at_dose` gives any dose fraction.

    Args:
        hu: the full-dose slice in HU ``(N, N)`` (square).
        pixel_mm: pixel size in mm.
        i0: photons per ray at full dose (clinical, per rotation of ``CLINICAL_VIEWS`` views).
        electronic_sd: electronic noise SD (photons per ray); 0 turns it off.
        seed: random seed of the realisation.
        kernel: reconstruction filter of the added noise (``"hann"`` soft tissue, ``"shepp-logan"``
            sharper, ``"ramlak"`` sharpest); sharper kernels give more and finer noise at the same dose.
    """

    hu: np.ndarray
    pixel_mm: float = 0.7
    i0: float = DEFAULT_I0
    electronic_sd: float = DEFAULT_ELECTRONIC_SD
    seed: int = 0
    views: int = NOISE_VIEWS
    kernel: str = "hann"

    def __post_init__(self) -> None:
        if self.hu.ndim != 2 or self.hu.shape[0] != self.hu.shape[1]:
            raise ValueError("dose simulation needs a square 2D slice")
        self._quantum, self._electronic = self._noise_images()

    def _line_integrals(self) -> torch.Tensor:
        """Line integrals at ``views`` x N, projected at half resolution (the variance is smooth)."""
        mu = hu_to_mu(torch.from_numpy(np.ascontiguousarray(self.hu, dtype=np.float32)))[None, None]
        size = mu.shape[-1]
        coarse = F.avg_pool2d(mu, 2)[0]
        sinogram = forward_project(coarse, self.views // 2, self.pixel_mm * 2)
        return F.interpolate(sinogram[None], size=(self.views, size), mode="bilinear", align_corners=False)[0, 0]

    @property
    def photons_per_view(self) -> float:
        """Full-dose photons per ray in each of the ``views`` simulated views."""
        return self.i0 * EQUIVALENT_VIEWS / self.views

    def _noise_images(self):
        p = self._line_integrals()
        i0_per_view = self.photons_per_view
        generator = torch.Generator().manual_seed(int(self.seed))
        quantum_sd = torch.sqrt(torch.exp(p) / i0_per_view)
        electronic_sd = self.electronic_sd * torch.exp(p) / i0_per_view
        noise = torch.stack([torch.randn(p.shape, generator=generator) * quantum_sd,
                             torch.randn(p.shape, generator=generator) * electronic_sd])
        images = mu_to_hu(fbp(noise, self.hu.shape[0], self.pixel_mm, self.kernel) + MU_WATER_PER_MM)
        return images[0].numpy(), images[1].numpy()

    def added_noise(self, dose_fraction: float) -> np.ndarray:
        """The noise (HU) that going from full dose to ``dose_fraction`` adds."""
        if not 0 < dose_fraction <= 1:
            raise ValueError("dose fraction must be in (0, 1]")
        quantum = np.float32(np.sqrt(1.0 / dose_fraction - 1.0))
        electronic = np.float32(np.sqrt(1.0 / dose_fraction ** 2 - 1.0))
        return quantum * self._quantum + electronic * self._electronic

    def full_dose_noise(self) -> np.ndarray:
        """A realisation of the noise a full-dose scan itself has (HU): variance ``exp(p)/I0`` plus the
        electronic part, for giving a noiseless (phantom) slice the noise of a real full-dose image."""
        return self._quantum + self._electronic

    def at_dose(self, dose_fraction: float) -> np.ndarray:
        """The slice (HU, float32) as it would look at ``dose_fraction`` of the full dose."""
        return self.hu.astype(np.float32) + self.added_noise(dose_fraction)


def sparse_view(hu: np.ndarray, pixel_mm: float, views: int, dense: Optional[np.ndarray] = None) -> np.ndarray:
    """``hu`` with the streaks of an FBP from ``views`` views (64-256 typical).

    ``dense`` is the FBP from many views (:func:`dense_reconstruction`); pass it to reuse it
    across several view counts.
    """
    if dense is None:
        dense = dense_reconstruction(hu, pixel_mm)
    mu = hu_to_mu(torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32)))[None]
    sparse = mu_to_hu(fbp(forward_project(mu, views, pixel_mm), hu.shape[0], pixel_mm))[0].numpy()
    return hu.astype(np.float32) + (sparse - dense)


def dense_reconstruction(hu: np.ndarray, pixel_mm: float, views: int = DENSE_VIEWS) -> np.ndarray:
    mu = hu_to_mu(torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32)))[None]
    return mu_to_hu(fbp(forward_project(mu, views, pixel_mm), hu.shape[0], pixel_mm))[0].numpy()

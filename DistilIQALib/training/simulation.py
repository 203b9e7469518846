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

Real scans are degraded relative to their own noise (``reference_noise_hu``): a real
full-dose image already has noise of SD ``sigma`` (its global noise index, measured on the
image), and lowering it to dose ``d`` must give noise variance ``sigma**2 / d``. The quantum
realisation is then scaled so that its SD over the slice's soft tissue (the pixels the global
noise index measures) is ``sigma``, and ``d`` adds ``sqrt(1/d - 1)`` times it: the noise is
relative to that scan's own dose, whatever the scanner's absolute photon count was. The
realisation keeps its spatial pattern (stronger behind bone and across wide patients), and
its texture follows the scan's own reconstruction kernel (:func:`matched_kernel_sharpness`).

Sparse-view streaks: the slice reconstructed by FBP from 64-256 views minus its
reconstruction from many views, added to the slice.

The paired-image formula for data that already has a low-dose scan (TCIA LDCT):
``I_d = F + a (L - F)``, ``a = sqrt((1/d - 1) / (1/d_L - 1))`` (:func:`paired_dose`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..quality.noise import global_noise_index, slice_noise_index
from .phantoms import textured_noise  # noqa: F401  (was defined here)
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


Device = Optional[Union[str, torch.device]]


def _tensor(hu: np.ndarray, device: Device) -> torch.Tensor:
    """``hu`` as a float32 tensor on ``device`` (the CPU when None)."""
    return torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32)).to(device or "cpu")


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    return (MU_WATER_PER_MM * (1.0 + hu / 1000.0)).clamp(min=0.0)


def mu_to_hu(mu: torch.Tensor) -> torch.Tensor:
    return (mu / MU_WATER_PER_MM - 1.0) * 1000.0


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
            sharper, ``"ramlak"`` sharpest, or a sharpness in [0, 1] between hann and shepp-logan);
            sharper kernels give more and finer noise at the same dose.
        reference_noise_hu: the slice's own full-dose noise SD in HU (its global noise index). When
            given, the noise is relative to it (variance ``reference_noise_hu**2 / d`` at dose ``d``;
            ``i0`` and the electronic term are then unused).
        device: where the projections and reconstructions run (a GPU makes them many times faster); the
            random numbers are drawn on the CPU, so every device gives the same realisation.
    """

    hu: np.ndarray
    pixel_mm: float = 0.7
    i0: float = DEFAULT_I0
    electronic_sd: float = DEFAULT_ELECTRONIC_SD
    seed: int = 0
    views: int = NOISE_VIEWS
    kernel: Union[str, float] = "hann"
    reference_noise_hu: Optional[float] = None
    device: Device = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 2 or self.hu.shape[0] != self.hu.shape[1]:
            raise ValueError("dose simulation needs a square 2D slice")
        if self.reference_noise_hu is not None and not self.reference_noise_hu > 0:
            raise ValueError(f"the slice's own noise must be a positive SD in HU, not {self.reference_noise_hu}")
        self._quantum, self._electronic = self._noise_images()
        if self.reference_noise_hu is not None:
            self._quantum *= np.float32(self._relative_scale())

    def _relative_scale(self) -> float:
        """Factor on the quantum realisation that makes it the slice's own noise: first its SD over the
        slice's soft tissue equals ``reference_noise_hu``; then one correction so that the noise index
        of the quarter-dose slice is exactly twice ``reference_noise_hu`` (the definition of relative
        dose: variance ``sigma**2 / d``), which absorbs how anatomy and noise mix in the index."""
        sigma = float(self.reference_noise_hu)
        scale = sigma / tissue_noise_sd(self._quantum, self.hu, self.pixel_mm)
        quarter = slice_noise_index(self.hu + np.float32(scale * np.sqrt(3.0)) * self._quantum, self.pixel_mm) / sigma
        if np.isfinite(quarter) and quarter > 1.2:
            scale *= np.sqrt(3.0) / np.sqrt(quarter ** 2 - 1.0)
        return scale

    def _line_integrals(self) -> torch.Tensor:
        """Line integrals at ``views`` x N, projected at half resolution (the variance is smooth)."""
        mu = hu_to_mu(_tensor(self.hu, self.device))[None, None]
        size = mu.shape[-1]
        coarse = F.avg_pool2d(mu, 2)[0]
        sinogram = forward_project(coarse, self.views // 2, self.pixel_mm * 2)
        return F.interpolate(sinogram[None], size=(self.views, size), mode="bilinear", align_corners=False)[0, 0]

    @property
    def photons_per_view(self) -> float:
        """Full-dose photons per ray in each of the ``views`` simulated views."""
        return self.i0 * EQUIVALENT_VIEWS / self.views

    @property
    def _with_electronic(self) -> bool:
        return self.reference_noise_hu is None and self.electronic_sd > 0

    def _noise_images(self):
        p = self._line_integrals()
        i0_per_view = self.photons_per_view
        generator = torch.Generator().manual_seed(int(self.seed))
        parts = [torch.randn(p.shape, generator=generator).to(p.device) * torch.sqrt(torch.exp(p) / i0_per_view)]
        if self._with_electronic:
            parts.append(torch.randn(p.shape, generator=generator).to(p.device)
                         * (self.electronic_sd * torch.exp(p) / i0_per_view))
        # Noise only: the reconstruction of a zero-mean sinogram is the HU noise itself.
        images = fbp(torch.stack(parts), self.hu.shape[0], self.pixel_mm, self.kernel).cpu()
        images *= 1000.0 / MU_WATER_PER_MM
        quantum = images[0].numpy()
        electronic = images[1].numpy() if self._with_electronic else np.zeros_like(quantum)
        return quantum, electronic

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


def own_noise_simulator(hu: np.ndarray, pixel_mm: float, seed: int = 0,
                        device: Device = None) -> Optional[DoseSimulator]:
    """A :class:`DoseSimulator` relative to a real slice's own noise: its global noise index as the full-dose noise,
    added noise with the texture of its own kernel (:func:`matched_kernel_sharpness`). ``None`` when the slice has
    too little soft tissue to measure its noise (the index is NaN)."""
    noise = slice_noise_index(hu, pixel_mm)
    if not np.isfinite(noise) or noise <= 0:
        return None
    return DoseSimulator(hu, pixel_mm, seed=seed, reference_noise_hu=noise,
                         kernel=matched_kernel_sharpness(hu, pixel_mm), device=device)


def tissue_noise_sd(noise_hu: np.ndarray, slice_hu: np.ndarray, pixel_mm: float) -> float:
    """SD (HU) of a noise image measured as the global noise index measures a slice: the mode of the
    local SD over the slice's soft tissue (picked on ``slice_hu``)."""

    noise_hu = np.ascontiguousarray(noise_hu, dtype=np.float32)
    raw_sd = float(np.std(noise_hu)) or 1.0
    scale = 20.0 / raw_sd  # the index bins SDs in 1 HU steps: measure at a level it resolves well
    reference = _tensor(slice_hu, None)[None]
    sd = float(global_noise_index(torch.from_numpy(noise_hu * np.float32(scale))[None], (pixel_mm, pixel_mm),
                                  tissue_from=reference)[0])
    return (sd if np.isfinite(sd) else 20.0) / scale


def texture_ratio(hu: np.ndarray, pixel_mm: float) -> float:
    """How fine a slice's noise is: its global noise index after 2x2 averaging over the index of the
    slice itself. White noise gives 0.5, smooth (soft-kernel) noise nearer 1. NaN without soft tissue."""
    half = F.avg_pool2d(_tensor(hu, None)[None, None], 2)[0, 0].numpy()
    return slice_noise_index(half, 2 * pixel_mm) / slice_noise_index(hu, pixel_mm)


#: :func:`texture_ratio` of the added noise alone (on a uniform soft-tissue slice) with the two end kernels.
HANN_TEXTURE_RATIO_NOISE_ONLY = 0.81
SHEPP_LOGAN_TEXTURE_RATIO_NOISE_ONLY = 0.58
#: :func:`texture_ratio` of a real slice -> kernel sharpness of the noise added to it, linear between these
#: points and clipped. A real slice's ratio is a little above its noise's own (anatomy adds coarse
#: structure), hence the offset from the noise-only ratios. Real body kernels measured 0.69-0.87 (GE
#: STANDARD, Siemens B40f, Toshiba FC17); a simulated 5%-dose slice keeps its slice's ratio within 0.12
#: (``Testing/Python/test_real_ct.py``). Slices smoother than the hann kernel get the hann kernel.
TEXTURE_RATIO_SMOOTH = 0.86
TEXTURE_RATIO_SHARP = 0.60


def matched_kernel_sharpness(hu: np.ndarray, pixel_mm: float) -> float:
    """Kernel sharpness (0 hann .. 1 shepp-logan) whose noise texture matches the slice's own noise, so
    that added noise looks like more of the scanner's noise rather than a texture of its own; 0.25 where
    the slice has too little soft tissue to tell."""
    ratio = texture_ratio(hu, pixel_mm)
    if not np.isfinite(ratio):
        return 0.25
    return float(np.clip((TEXTURE_RATIO_SMOOTH - ratio) / (TEXTURE_RATIO_SMOOTH - TEXTURE_RATIO_SHARP), 0.0, 1.0))


def sparse_view(hu: np.ndarray, pixel_mm: float, views: int, dense: Optional[np.ndarray] = None,
                device: Device = None) -> np.ndarray:
    """``hu`` with the streaks of an FBP from ``views`` views (64-256 typical).

    ``dense`` is the FBP from many views (:func:`dense_reconstruction`); pass it to reuse it
    across several view counts. ``device``: where the projections run (the CPU when None).
    """
    if dense is None:
        dense = dense_reconstruction(hu, pixel_mm, device=device)
    return hu.astype(np.float32) + (_reconstruction(hu, pixel_mm, views, device) - dense)


def dense_reconstruction(hu: np.ndarray, pixel_mm: float, views: int = DENSE_VIEWS,
                         device: Device = None) -> np.ndarray:
    return _reconstruction(hu, pixel_mm, views, device)


def _reconstruction(hu: np.ndarray, pixel_mm: float, views: int, device: Device) -> np.ndarray:
    """``hu`` projected over ``views`` views and reconstructed by FBP (HU), computed on ``device``."""
    mu = hu_to_mu(_tensor(hu, device))[None]
    return mu_to_hu(fbp(forward_project(mu, views, pixel_mm), hu.shape[0], pixel_mm))[0].cpu().numpy()


# --- artefacts the noise index cannot see ---------------------------------------------------------------------------

def ring_pattern(hu: np.ndarray, pixel_mm: float, seed: int = 0, channels: int = 6,
                 device: Device = None) -> np.ndarray:
    """The rings of miscalibrated detector channels (HU), scaled so that the strongest reaches 1 HU: ``channels``
    random channels inside the body carry a constant error in every view (a gain error of the post-log data),
    reconstructed by FBP. Multiply by an amplitude and add to the slice (:func:`ring_artefact`)."""
    mu = hu_to_mu(_tensor(hu, device))[None]
    profile = forward_project(mu, 1, pixel_mm)[0, 0]
    size = hu.shape[0]
    rng = np.random.default_rng(seed)
    covered = np.flatnonzero(profile.cpu().numpy() > 0.5)  # channels the body covers in the first view
    if covered.size == 0:
        covered = np.arange(size // 4, 3 * size // 4)
    picked = rng.choice(covered, size=min(channels, covered.size), replace=False)
    offsets = torch.zeros(size, device=profile.device)
    offsets[torch.from_numpy(picked).to(profile.device)] = torch.from_numpy(
        rng.choice([-1.0, 1.0], size=picked.size) * rng.uniform(0.5, 1.0, size=picked.size)).float().to(profile.device)
    rings = fbp(offsets.expand(NOISE_VIEWS, size)[None].contiguous(), size, pixel_mm)[0].cpu().numpy()
    return (rings / (float(np.abs(rings).max()) or 1.0)).astype(np.float32)


def ring_artefact(hu: np.ndarray, pixel_mm: float, amplitude_hu: float, seed: int = 0, channels: int = 6,
                  device: Device = None, pattern: Optional[np.ndarray] = None) -> np.ndarray:
    """``hu`` with rings whose strongest reaches about ``amplitude_hu`` (``pattern``: a :func:`ring_pattern` to
    reuse across amplitudes)."""
    if pattern is None:
        pattern = ring_pattern(hu, pixel_mm, seed, channels, device)
    return hu.astype(np.float32) + np.float32(amplitude_hu) * pattern


def motion_artefact(hu: np.ndarray, pixel_mm: float, shift_mm: float, seed: int = 0,
                    device: Device = None) -> np.ndarray:
    """``hu`` with the streaks and blur of a patient who moves ``shift_mm`` (a random direction) during the
    rotation: the views after a random point in the half-rotation see the moved body, and FBP mixes both. Only
    the difference that the motion makes is added (both reconstructions from the same ``NOISE_VIEWS`` views)."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    dy, dx = (int(round(shift_mm / pixel_mm * f)) for f in (np.sin(angle), np.cos(angle)))
    moved = np.full_like(hu, -1000.0, dtype=np.float32)
    size = hu.shape[0]
    moved[max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)] = \
        hu[max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)]
    both = hu_to_mu(torch.stack([_tensor(hu, device), _tensor(moved, device)]))
    sinograms = forward_project(both, NOISE_VIEWS, pixel_mm)
    start = int(rng.uniform(0.3, 0.7) * NOISE_VIEWS)
    ramp = torch.clamp((torch.arange(NOISE_VIEWS, device=sinograms.device) - start) / (0.15 * NOISE_VIEWS), 0.0, 1.0)
    mixed = sinograms[0] * (1.0 - ramp[:, None]) + sinograms[1] * ramp[:, None]
    reconstructions = mu_to_hu(fbp(torch.stack([mixed, sinograms[0]]), size, pixel_mm)).cpu().numpy()
    return hu.astype(np.float32) + (reconstructions[0] - reconstructions[1]).astype(np.float32)

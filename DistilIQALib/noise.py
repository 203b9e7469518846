"""Global noise index (GNI): a physicist's noise figure per slice, in HU.

After Christianson et al., AJR 2015: the local standard deviation of HU over a square
kernel of about 6 mm is computed everywhere; pixels whose neighbourhood is soft tissue
(local mean 0..150 HU) are kept; the mode of their local-SD histogram (1 HU bins) is the
slice's noise. Runs on whichever device holds the batch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

KERNEL_MM = 6.0
TISSUE_RANGE_HU = (0.0, 150.0)
MAX_SD_HU = 500
#: Fewer soft-tissue pixels than this and the slice gets NaN (no meaningful noise figure).
MIN_TISSUE_PIXELS = 200


def kernel_pixels(pixel_spacing_mm: float, kernel_mm: float = KERNEL_MM) -> int:
    """Odd kernel width in pixels closest to ``kernel_mm`` (at least 3)."""
    pixels = max(3, int(round(kernel_mm / max(pixel_spacing_mm, 1e-3))))
    return pixels if pixels % 2 else pixels + 1


def global_noise_index(hu: torch.Tensor, pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
                       kernel_mm: float = KERNEL_MM, tissue_from: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GNI in HU of each slice of ``hu`` ``(B, H, W)``; NaN where there is too little soft tissue.

    ``pixel_spacing_mm`` is ``(x, y)``. ``tissue_from`` (same shape, HU) picks the soft-tissue
    pixels by its local mean instead of ``hu``'s: the SD of a noise image over the tissue of the slice
    it will be added to.
    """
    hu = hu.float().unsqueeze(1)
    kernel = (kernel_pixels(pixel_spacing_mm[1], kernel_mm), kernel_pixels(pixel_spacing_mm[0], kernel_mm))
    count = kernel[0] * kernel[1]
    centred = hu - 50.0  # keeps E[x^2] - E[x]^2 accurate in float32
    both = _box_mean(torch.cat([centred, centred * centred], dim=1), kernel)
    mean, mean_square = both[:, :1], both[:, 1:]
    variance = (mean_square - mean * mean).clamp_(min=0.0) * (count / (count - 1))
    sd = variance.sqrt_().flatten(1)
    if tissue_from is not None:
        mean = _box_mean(tissue_from.float().unsqueeze(1) - 50.0, kernel)
    local_mean = (mean + 50.0).flatten(1)
    tissue = (local_mean >= TISSUE_RANGE_HU[0]) & (local_mean <= TISSUE_RANGE_HU[1]) & (sd < MAX_SD_HU)
    bins = sd.long().clamp_(max=MAX_SD_HU - 1)
    histogram = torch.zeros(sd.shape[0], MAX_SD_HU, device=sd.device)
    histogram.scatter_add_(1, bins, tissue.float())
    # A 3-bin running sum steadies the mode of sparse histograms.
    smoothed = F.avg_pool1d(histogram.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    noise = _histogram_mode(smoothed)
    enough = tissue.sum(dim=1) >= MIN_TISSUE_PIXELS
    return torch.where(enough, noise, torch.full_like(noise, float("nan")))


def slice_noise_index(hu, pixel_mm: float) -> float:
    """GNI in HU of one square-pixel 2D slice given as an array (NaN with too little soft tissue)."""
    image = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None]
    return float(global_noise_index(image, (pixel_mm, pixel_mm))[0])


def water_equivalent_diameter_cm(hu: torch.Tensor, pixel_spacing_mm: Sequence[float] = (1.0, 1.0)) -> torch.Tensor:
    """Water-equivalent diameter (cm) of each slice of ``hu`` ``(B, H, W)``, after AAPM report 220: the
    slice's attenuation expressed as the area of water, ``A_w = sum(HU / 1000 + 1) * pixel area`` over the
    whole slice (air and padding count as nothing), and ``D_w = 2 sqrt(A_w / pi)``. Patient size sets how
    much noise a routine dose leaves; the table and anything else in the field count too (a few cm^2)."""
    water = (hu.float() / 1000.0 + 1.0).clamp_(min=0.0).flatten(1).sum(dim=1, dtype=torch.float64)
    area_cm2 = water * (float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) / 100.0)
    return (2.0 * torch.sqrt(area_cm2 / np.pi)).float()


def _box_mean(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Mean over every ``kernel``-sized window (valid positions only), from a summed-area table: the
    same as ``avg_pool2d(x, kernel, stride=1)`` at a cost that does not grow with the kernel. The table
    is float64 so that differences of large running sums stay exact to float32 precision."""
    table = F.pad(x.double(), (1, 0, 1, 0)).cumsum_(-2).cumsum_(-1)
    ky, kx = kernel
    sums = table[..., ky:, kx:] - table[..., :-ky, kx:] - table[..., ky:, :-kx] + table[..., :-ky, :-kx]
    return (sums / (ky * kx)).float()


def _histogram_mode(histogram: torch.Tensor) -> torch.Tensor:
    """Mode of 1-unit-bin histograms ``(B, bins)``, refined between bins by a parabola
    through the peak and its neighbours (the bin centre is at +0.5)."""
    peak = histogram.argmax(dim=1, keepdim=True)
    left = histogram.gather(1, (peak - 1).clamp(min=0))
    centre = histogram.gather(1, peak)
    right = histogram.gather(1, (peak + 1).clamp(max=histogram.shape[1] - 1))
    curvature = left - 2.0 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12), torch.zeros_like(centre))
    return (peak.float() + 0.5 + offset.clamp(-0.5, 0.5)).squeeze(1)

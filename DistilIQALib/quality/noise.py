"""Global noise index (GNI): a physicist's noise figure per slice, in HU.

After Christianson et al., AJR 2015: the local standard deviation of HU over a square
kernel of about 6 mm is computed everywhere; pixels whose neighbourhood is soft tissue
(local mean 0..150 HU) are kept; the mode of their local-SD histogram is the slice's noise,
found in 1 HU bins and then in bins of a twentieth of that first mode (quiet head slices of 3-6 HU
need the finer bins). Runs on whichever device holds the batch.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

KERNEL_MM = 6.0
TISSUE_RANGE_HU = (0.0, 150.0)
MAX_SD_HU = 500
#: The mode of the local SDs is found in 1 HU bins, then again in bins of a twentieth of that first mode.
FINE_BINS = 20
#: Less soft tissue than this (cm^2) and the slice gets NaN: the mode of a sparse histogram of local SDs drifts up
#: with the edges between tissues (at the vertex of a real head, 7-8 cm^2 of tissue read 30-80 HU where the brain
#: below reads 6), so no meaningful noise figure. Every body slice has far more.
MIN_TISSUE_CM2 = 20.0
#: And never fewer pixels than this, whatever their size.
MIN_TISSUE_PIXELS = 200


def kernel_pixels(pixel_spacing_mm: float, kernel_mm: float = KERNEL_MM) -> int:
    """Odd kernel width in pixels closest to ``kernel_mm`` (at least 3)."""
    pixels = max(3, int(round(kernel_mm / max(pixel_spacing_mm, 1e-3))))
    return pixels if pixels % 2 else pixels + 1


def global_noise_index(hu: torch.Tensor, pixel_spacing_mm: Sequence[float] = (1.0, 1.0),
                       kernel_mm: float = KERNEL_MM, tissue_from: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GNI in HU of each slice of ``hu`` ``(B, H, W)``; NaN where there is too little soft tissue (under
    :data:`MIN_TISSUE_CM2`).

    ``pixel_spacing_mm`` is ``(x, y)``. ``tissue_from`` (same shape, HU) picks the soft-tissue
    pixels by its local mean instead of ``hu``'s: the SD of a noise image over the tissue of the slice
    it will be added to.
    """
    kernel = (kernel_pixels(pixel_spacing_mm[1], kernel_mm), kernel_pixels(pixel_spacing_mm[0], kernel_mm))
    count = kernel[0] * kernel[1]
    exact = _exact_sum_dtype(hu, count)
    if exact is not None:
        # A series' whole HU: every window sum, of the values and of their squares, is exact in integers (int32
        # for CT values, half the memory traffic of float64); the one rounding is the division, as below.
        centred = hu.to(exact) - 50  # a new tensor, even where hu has that type already
        mean = _window_sums_2d(centred, kernel).float().div_(count)
        mean_square = _window_sums_2d(centred.mul_(centred), kernel).double().div_(count).float()
    else:
        centred = hu.float() - 50.0  # keeps E[x^2] - E[x]^2 accurate in float32
        mean = _box_mean(centred, kernel, _whole_hu(hu))
        mean_square = _box_mean(centred.mul_(centred), kernel)
    variance = mean_square.sub_(mean * mean).clamp_(min=0.0).mul_(count / (count - 1))
    sd = variance.sqrt_().flatten(1)
    if tissue_from is not None:
        mean = _box_mean(tissue_from.float() - 50.0, kernel, _whole_hu(tissue_from))
    local_mean = mean.add_(50.0).flatten(1)
    tissue = (local_mean >= TISSUE_RANGE_HU[0]) & (local_mean <= TISSUE_RANGE_HU[1]) & (sd < MAX_SD_HU)
    coarse = _tissue_sd_mode(sd, tissue, torch.ones(sd.shape[0], 1, device=sd.device), MAX_SD_HU)
    # Second pass at a twentieth of that mode per bin: 1 HU bins are coarse for quiet (head) slices.
    step = (coarse.clamp(min=0.5) / FINE_BINS)[:, None]
    noise = _tissue_sd_mode(sd, tissue, step, 4 * FINE_BINS)
    pixel_cm2 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) / 100.0
    enough = tissue.sum(dim=1) >= max(MIN_TISSUE_PIXELS, MIN_TISSUE_CM2 / max(pixel_cm2, 1e-9))
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


#: Linear attenuation of water at the mean energy of a CT beam (about 65 keV), per cm.
MU_WATER_PER_CM = 0.2
#: Rays of :func:`noise_equivalent_diameter_cm`: this many view angles over 180 degrees, each with rays at these
#: offsets (mm) from the slice's attenuation centroid, sampled this many times along the ray.
NOISE_DIAMETER_VIEWS = 24
NOISE_DIAMETER_OFFSETS_MM = (-15.0, 0.0, 15.0)
NOISE_DIAMETER_SAMPLES = 256
#: ``noise_reference["size"]`` of a reference fitted on :func:`noise_equivalent_diameter_cm`; a reference without
#: a size is on the water-equivalent diameter.
NOISE_EQUIVALENT_DIAMETER = "noise_equivalent_diameter"


def noise_equivalent_diameter_cm(hu: torch.Tensor, pixel_spacing_mm: Sequence[float] = (1.0, 1.0)) -> torch.Tensor:
    """Diameter (cm) of the water cylinder whose centre a reconstruction leaves as noisy as the centre of each
    slice of ``hu`` ``(B, H, W)``. Quantum noise variance at a point of a filtered back-projection goes as the
    mean over views of ``exp(mu p)``, ``p`` the water-equivalent length of the ray through that point
    (``mu`` = :data:`MU_WATER_PER_CM`); that mean over rays near the slice's attenuation centroid, put back as
    the length of one ray through water, is the diameter. For a round patient it is the water-equivalent diameter
    of AAPM report 220; a patient wider than deep (shoulders, arms at the sides) gets more, as the noise does,
    because the long lateral rays dominate the mean."""
    water = (hu.float() / 1000.0 + 1.0).clamp_(min=0.0)
    batch, height, width = water.shape
    spacing_x, spacing_y = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    half_length = math.hypot(width * spacing_x, height * spacing_y)  # rays cross the field from any centroid
    step = 2.0 * half_length / NOISE_DIAMETER_SAMPLES
    # pool to about the sampling step so that each sample averages the pixels it stands for
    pool = max(1, int(round(step / max(spacing_x, spacing_y))))
    if pool > 1:
        water = F.avg_pool2d(water[:, None], pool, ceil_mode=True)[:, 0]
    grid_h, grid_w = water.shape[-2:]
    cell_x, cell_y = width * spacing_x / grid_w, height * spacing_y / grid_h
    ys = (torch.arange(grid_h, device=water.device, dtype=torch.float32) + 0.5) * cell_y
    xs = (torch.arange(grid_w, device=water.device, dtype=torch.float32) + 0.5) * cell_x
    mass = water.sum(dim=(1, 2)).clamp(min=1e-6)
    centre_x = (water.sum(dim=1) * xs).sum(dim=1) / mass
    centre_y = (water.sum(dim=2) * ys).sum(dim=1) / mass
    angles = (torch.arange(NOISE_DIAMETER_VIEWS, device=water.device, dtype=torch.float32)
              * (math.pi / NOISE_DIAMETER_VIEWS))
    offsets = torch.tensor(NOISE_DIAMETER_OFFSETS_MM, device=water.device, dtype=torch.float32)
    along = (torch.arange(NOISE_DIAMETER_SAMPLES, device=water.device, dtype=torch.float32) + 0.5) * step - half_length
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    offset, t = offsets[None, :, None], along[None, None, :]
    # (views, offsets, samples) points relative to the centroid: along the ray plus across it
    x = t * cos - offset * sin
    y = t * sin + offset * cos
    x = x[None] + centre_x[:, None, None, None]
    y = y[None] + centre_y[:, None, None, None]
    grid = torch.stack([x / (grid_w * cell_x) * 2.0 - 1.0, y / (grid_h * cell_y) * 2.0 - 1.0], dim=-1)
    grid = grid.reshape(batch, -1, NOISE_DIAMETER_SAMPLES, 2)
    samples = F.grid_sample(water[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    length_cm = samples[:, 0].sum(dim=-1).double() * (step / 10.0)
    mean = torch.logsumexp(MU_WATER_PER_CM * length_cm, dim=1) - math.log(length_cm.shape[1])
    return (mean / MU_WATER_PER_CM).float()


def size_for_reference(hu: torch.Tensor, pixel_spacing_mm: Sequence[float], reference: Optional[dict]) -> torch.Tensor:
    """The patient-size measure (cm) that ``reference`` (``noise_reference`` of a weights file) was fitted on."""
    if (reference or {}).get("size") == NOISE_EQUIVALENT_DIAMETER:
        return noise_equivalent_diameter_cm(hu, pixel_spacing_mm)
    return water_equivalent_diameter_cm(hu, pixel_spacing_mm)


def _whole_hu(hu: torch.Tensor) -> bool:
    """Whether ``hu`` holds whole HU (a CT series' integers, int16 at most): their window sums are whole numbers
    under 2^24, exact in float32; those of their squares are not, and neither are any sums of fractions: those
    are summed in float64."""
    return not hu.is_floating_point() and hu.element_size() <= 2


def _exact_sum_dtype(hu: torch.Tensor, count: int) -> Optional[torch.dtype]:
    """The integer type in which the window sums of ``hu``'s squares, less 50 HU, over ``count`` pixels are exact:
    int32 where they fit (any CT value up to 3071 HU with windows of up to 225 pixels), int64 for larger integers
    (padding at -3024 HU with fine pixels, metal); ``None`` for fractional HU."""
    if hu.is_floating_point() or hu.is_complex() or hu.numel() == 0:
        return None
    low, high = (int(value) for value in torch.aminmax(hu))
    largest = max(abs(low - 50), abs(high - 50))
    return torch.int32 if count * largest * largest < 2 ** 31 else torch.int64


def _window_sums_2d(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Sums over every ``kernel`` (rows, columns) window of ``x`` ``(..., H, W)``, valid positions only."""
    return _window_sums(_window_sums(x, kernel[1], -1), kernel[0], -2)


def _box_mean(x: torch.Tensor, kernel: Sequence[int], exact_in_float32: bool = False) -> torch.Tensor:
    """Mean over every ``kernel``-sized window (valid positions only) of ``x`` ``(..., H, W)`` (float32): the same
    as ``avg_pool2d(x, kernel, stride=1)``, as sums along the rows and then the columns, at a cost that barely
    grows with the kernel. The sums are taken in float64, so that those of large values stay exact to float32
    precision, or in float32 where they are exact there (``exact_in_float32``: whole numbers whose window sums stay
    under 2^24); in both the one rounding is the division, as in a float64 summed-area table."""
    sums = _window_sums_2d(x if exact_in_float32 else x.double(), kernel)
    return sums.div_(kernel[0] * kernel[1]).float()


def _window_sums(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums over every ``size`` consecutive elements along ``dim`` (valid positions only), from sums over
    windows of 1, 2, 4, ... elements: a handful of additions of whole arrays, whatever ``size``."""
    length = x.shape[dim] - size + 1
    parts, offset, power, width = [], 0, x, 1
    while True:
        if size & width:  # this power of two is in size's binary form: its window sums join the total
            parts.append(power.narrow(dim, offset, length))
            offset += width
        if 2 * width > size:
            break
        power = power.narrow(dim, 0, power.shape[dim] - width) + power.narrow(dim, width, power.shape[dim] - width)
        width *= 2
    total = parts[0] + parts[1] if len(parts) > 1 else parts[0].clone()
    for part in parts[2:]:
        total.add_(part)
    return total


def _tissue_sd_mode(sd: torch.Tensor, tissue: torch.Tensor, step: torch.Tensor, bins: int) -> torch.Tensor:
    """Mode of the local SDs ``sd`` ``(B, P)`` over the ``tissue`` pixels, in bins of ``step`` ``(B, 1)`` HU
    (``bins`` of them; larger SDs are left out)."""
    scaled = sd / step
    inside = tissue & (scaled < bins)
    histogram = torch.zeros(sd.shape[0], bins, device=sd.device)
    histogram.scatter_add_(1, scaled.long().clamp_(max=bins - 1), inside.float())
    # A 3-bin running sum steadies the mode of sparse histograms.
    smoothed = F.avg_pool1d(histogram.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    return _histogram_mode(smoothed) * step[:, 0]


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

"""Parallel-beam projection and filtered back-projection (FBP) in torch, for dose simulation.

Images are ``(B, N, N)`` attenuation maps (1/mm) with square pixels of ``pixel_mm``;
sinograms are ``(B, views, detectors)`` line integrals (dimensionless). The detector
has ``detectors`` bins of one pixel width centred on the rotation axis; angles cover
[0, pi). Bilinear interpolation in both directions; work is split into chunks of
views so memory stays modest on 2-core machines.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F


def view_angles(num_views: int) -> torch.Tensor:
    return torch.arange(num_views, dtype=torch.float32) * (math.pi / num_views)


def _grid(size: int, device: torch.device):
    coordinates = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    return coordinates


def forward_project(image: torch.Tensor, num_views: int, pixel_mm: float = 1.0, chunk: int = 32) -> torch.Tensor:
    """Line integrals of ``image`` ``(B, N, N)`` along ``num_views`` parallel directions."""
    batch, size, _ = image.shape
    detectors = size
    angles = view_angles(num_views).to(image.device)
    t = _grid(detectors, image.device)  # detector coordinate (pixels)
    s = _grid(size, image.device)  # coordinate along the ray (pixels)
    sinogram = image.new_zeros(batch, num_views, detectors)
    source = image.unsqueeze(1)
    for start in range(0, num_views, chunk):
        theta = angles[start:start + chunk]
        cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        # point at (t, s): x = t cos - s sin, y = t sin + s cos (pixels from the centre)
        x = t[None, None, :] * cos - s[None, :, None] * sin
        y = t[None, None, :] * sin + s[None, :, None] * cos
        grid = torch.stack([x, y], dim=-1) / ((size - 1) / 2.0)  # (views, S, T, 2) in [-1, 1]
        for b in range(batch):
            sampled = F.grid_sample(source[b:b + 1].expand(len(theta), -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=True)
            sinogram[b, start:start + len(theta)] = sampled[:, 0].sum(dim=1) * pixel_mm
    return sinogram


def ramp_filter(sinogram: torch.Tensor, pixel_mm: float = 1.0, window: Union[str, float] = "hann") -> torch.Tensor:
    """Ramp filtering along the detector (spatial-domain Ram-Lak kernel, zero padded against
    wrap-around), apodised by ``window``: ``"ramlak"`` (none, sharpest), ``"shepp-logan"`` (sinc, a
    sharper body kernel), ``"hann"`` (a standard soft-tissue kernel), or a number ``w`` in [0, 1] for
    the blend ``(1 - w) hann + w shepp-logan`` (the kernels of most clinical body reconstructions lie
    between the two)."""
    detectors = sinogram.shape[-1]
    padded = 1 << (2 * detectors - 1).bit_length()
    n = torch.arange(-(padded // 2), padded // 2, dtype=torch.float32, device=sinogram.device)
    kernel = torch.zeros_like(n)
    kernel[n == 0] = 0.25
    odd = (n % 2) != 0
    kernel[odd] = -1.0 / (math.pi * n[odd]) ** 2
    kernel_spectrum = torch.fft.rfft(torch.fft.ifftshift(kernel)).real
    frequency = torch.linspace(0.0, 1.0, kernel_spectrum.shape[-1], device=sinogram.device)
    spectrum = torch.fft.rfft(sinogram, n=padded, dim=-1) * (kernel_spectrum * apodisation(frequency, window))
    return torch.fft.irfft(spectrum, n=padded, dim=-1)[..., :detectors] / pixel_mm


def apodisation(frequency: torch.Tensor, window: Union[str, float]) -> torch.Tensor:
    """The window that multiplies the ramp at ``frequency`` (fraction of the Nyquist frequency)."""
    if not isinstance(window, str):
        sharpness = float(window)
        if not 0.0 <= sharpness <= 1.0:
            raise ValueError(f"kernel sharpness must be in [0, 1], not {sharpness}")
        return (1.0 - sharpness) * apodisation(frequency, "hann") + sharpness * apodisation(frequency, "shepp-logan")
    if window == "hann":
        return 0.5 * (1.0 + torch.cos(math.pi * frequency))
    if window == "shepp-logan":
        return torch.sinc(frequency / 2)
    if window == "ramlak":
        return torch.ones_like(frequency)
    raise ValueError(f"unknown reconstruction filter {window!r}")


def back_project(filtered: torch.Tensor, size: int, chunk: int = 45) -> torch.Tensor:
    """Sum of ``filtered`` ``(B, V, D)`` smeared back over an ``(N, N)`` grid, times pi / V."""
    batch, num_views, detectors = filtered.shape
    angles = view_angles(num_views).to(filtered.device)
    coordinates = _grid(size, filtered.device)
    y, x = torch.meshgrid(coordinates, coordinates, indexing="ij")
    x, y = x.reshape(1, -1), y.reshape(1, -1)
    image = filtered.new_zeros(batch, size * size)
    for start in range(0, num_views, chunk):
        theta = angles[start:start + chunk]
        views = len(theta)
        t = x * torch.cos(theta)[:, None] + y * torch.sin(theta)[:, None]  # (views, pixels), in bins
        # Sample row v of the chunk at detector position t: a (views x pixels) grid over a (views x D) image.
        grid_x = t / ((detectors - 1) / 2.0)
        grid_y = (torch.arange(views, dtype=torch.float32, device=filtered.device) * 2.0 / max(views - 1, 1) - 1.0)
        grid = torch.stack([grid_x, grid_y[:, None].expand_as(grid_x)], dim=-1).unsqueeze(0)
        rows = filtered[:, start:start + views].unsqueeze(1)  # (B, 1, views, D)
        sampled = F.grid_sample(rows, grid.expand(batch, -1, -1, -1), mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        image += sampled[:, 0].sum(dim=1)
    return image.reshape(batch, size, size) * (math.pi / num_views)


def fbp(sinogram: torch.Tensor, size: int, pixel_mm: float = 1.0, window: Union[str, float] = "hann") -> torch.Tensor:
    """Filtered back-projection of line integrals -> attenuation (1/mm) on an ``(N, N)`` grid."""
    return back_project(ramp_filter(sinogram, pixel_mm, window), size)

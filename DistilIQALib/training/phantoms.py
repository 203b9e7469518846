"""CT-like phantom slices and volumes in HU, for tests, demos and as training sources.

A phantom slice has air, a patient table, a body outline with a subcutaneous fat layer,
muscle, textured soft-tissue organs, lungs with vessels (upper slices), a spine and ribs
(bone). Shapes vary smoothly along z and with the random seed; nothing is noisy until
noise is added (see :mod:`DistilIQALib.training.simulation` for dose-like noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

HU_AIR = -1000.0
HU_LUNG = -850.0
HU_FAT = -100.0
HU_MUSCLE = 50.0
HU_LIVER = 60.0
HU_KIDNEY = 35.0
HU_BONE = 700.0
HU_TABLE = 150.0


@dataclass(frozen=True)
class PhantomSpec:
    size: int = 512
    pixel_mm: float = 0.7
    seed: int = 0


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             angle: float = 0.0) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    return u * u + v * v <= 1.0


def _smooth_texture(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-SD random texture with features about ``scale_px`` pixels wide."""
    noise = rng.standard_normal((size, size))
    frequency = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(frequency, frequency, indexing="ij"))
    spectrum = np.fft.fft2(noise) * np.exp(-(radius * scale_px) ** 2)
    texture = np.real(np.fft.ifft2(spectrum))
    return texture / (texture.std() + 1e-12)


def phantom_slice(position: float = 0.5, size: int = 512, pixel_mm: float = 0.7, seed: int = 0) -> np.ndarray:
    """One noise-free axial slice in HU, float32 ``(size, size)``.

    ``position`` runs from 0 (pelvis-like, no lungs) to 1 (upper chest, large lungs);
    ``seed`` varies the anatomy (sizes, organ positions, texture).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    scale = 0.91 / pixel_mm  # shapes are designed in units of 0.91 mm: the body is about 32 x 23 cm
    centre = size / 2.0
    body_rx = (175 + rng.uniform(-20, 25)) * scale
    body_ry = (125 + rng.uniform(-15, 20)) * scale
    image = np.full((size, size), HU_AIR, dtype=np.float64)
    table_top = centre + body_ry + 6 * scale
    table = (y > table_top) & (y < table_top + 14 * scale) & (np.abs(x - centre) < 230 * scale)
    image[table] = HU_TABLE
    body = _ellipse(y, x, centre, centre, body_ry, body_rx)
    fat_depth = (8 + rng.uniform(0, 14)) * scale
    inner = _ellipse(y, x, centre, centre, body_ry - fat_depth, body_rx - fat_depth)
    image[body] = HU_FAT
    texture = _smooth_texture(rng, size, scale_px=3.0 * scale)
    image[inner] = HU_MUSCLE + 6.0 * texture[inner]
    lung_fraction = float(np.clip((position - 0.45) / 0.5, 0.0, 1.0))
    if lung_fraction > 0:
        for side in (-1, 1):
            lung = _ellipse(y, x, centre - 10 * scale, centre + side * 75 * scale,
                            (85 * lung_fraction + 10) * scale, (55 * lung_fraction + 8) * scale, side * 0.15)
            lung &= inner
            image[lung] = HU_LUNG + 40.0 * texture[lung]
            vessels = lung & (np.abs(_smooth_texture(rng, size, scale_px=6.0 * scale)) < 0.08)
            image[vessels] = 40.0
    else:
        liver = _ellipse(y, x, centre - 5 * scale, centre - 60 * scale, 70 * scale, 85 * scale, 0.3) & inner
        image[liver] = HU_LIVER + 8.0 * texture[liver]
        for side in (-1, 1):
            kidney = _ellipse(y, x, centre + 40 * scale, centre + side * 80 * scale, 28 * scale, 18 * scale, side * 0.4)
            image[kidney & inner] = HU_KIDNEY + 10.0 * texture[kidney & inner]
        gas = _ellipse(y, x, centre - 20 * scale + rng.uniform(-15, 15) * scale, centre + 50 * scale,
                       12 * scale, 16 * scale) & inner
        image[gas] = HU_AIR + 50
    vertebra = _ellipse(y, x, centre + body_ry * 0.55, centre, 22 * scale, 24 * scale)
    marrow = _ellipse(y, x, centre + body_ry * 0.55, centre, 15 * scale, 17 * scale)
    image[vertebra] = HU_BONE
    image[marrow] = 250.0 + 30.0 * texture[marrow]
    if lung_fraction > 0:
        ring_outer = _ellipse(y, x, centre, centre, body_ry - fat_depth - 2 * scale, body_rx - fat_depth - 2 * scale)
        ring_inner = _ellipse(y, x, centre, centre, body_ry - fat_depth - 8 * scale, body_rx - fat_depth - 8 * scale)
        angle = np.arctan2(y - centre, x - centre)
        ribs = ring_outer & ~ring_inner & (np.cos(angle * 9 + position * 3) > 0.6)
        image[ribs] = HU_BONE
    return image.astype(np.float32)


HU_WHITE_MATTER = 28.0
HU_GREY_MATTER = 38.0
HU_CSF = 6.0
HU_SKULL = 1100.0
HU_SCALP = 45.0


def head_phantom_slice(position: float = 0.5, size: int = 512, pixel_mm: float = 0.47, seed: int = 0) -> np.ndarray:
    """One noise-free axial head slice in HU, float32 ``(size, size)``: scalp, a skull with diploe, cortex (grey
    matter) around white matter with a textured grey-white boundary, ventricles, and a curved head holder.

    ``position`` runs from 0 (above the skull base, the largest section) to 1 (near the vertex, small);
    ``seed`` varies the head's size, shape and the brain's folding."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    mm = 1.0 / pixel_mm
    centre = size / 2.0
    shrink = float(np.sqrt(max(0.05, 1.0 - position ** 2 * 0.85)))
    ry = (92 + rng.uniform(-8, 8)) * mm * shrink
    rx = (74 + rng.uniform(-7, 7)) * mm * shrink
    image = np.full((size, size), HU_AIR, dtype=np.float64)
    holder = _ellipse(y, x, centre, centre, ry + 14 * mm, rx + 14 * mm) & ~_ellipse(
        y, x, centre, centre, ry + 9 * mm, rx + 9 * mm) & (y > centre + 0.3 * ry)
    image[holder] = 250.0
    image[_ellipse(y, x, centre, centre, ry, rx)] = HU_SCALP
    skull = (6 + rng.uniform(0, 3)) * mm
    image[_ellipse(y, x, centre, centre, ry - 4 * mm, rx - 4 * mm)] = HU_SKULL
    diploe = _ellipse(y, x, centre, centre, ry - 4 * mm - skull * 0.35, rx - 4 * mm - skull * 0.35)
    image[diploe] = 450.0
    brain = _ellipse(y, x, centre, centre, ry - 4 * mm - skull, rx - 4 * mm - skull)
    folding = _smooth_texture(rng, size, scale_px=4.0 * mm)
    depth = np.hypot((y - centre) / max(ry, 1.0), (x - centre) / max(rx, 1.0))
    grey = brain & ((depth > 0.72 * (ry - 4 * mm - skull) / max(ry, 1.0)) | (folding > 0.9))
    image[brain] = HU_WHITE_MATTER + 1.5 * _smooth_texture(rng, size, scale_px=6.0 * mm)[brain]
    image[grey] = HU_GREY_MATTER + 1.5 * folding[grey]
    image[brain & (np.abs(x - centre) < 1.5 * mm)] = HU_CSF  # the falx's cistern
    if position < 0.7:
        ventricle_size = (1.0 - position) * (1.0 + rng.uniform(-0.2, 0.4))
        for side in (-1, 1):
            ventricle = _ellipse(y, x, centre - 5 * mm, centre + side * 9 * mm, 24 * mm * ventricle_size,
                                 5 * mm * ventricle_size, side * 0.2) & brain
            image[ventricle] = HU_CSF
    return image.astype(np.float32)


def phantom_volume(num_slices: int = 40, size: int = 512, pixel_mm: float = 0.7, slice_mm: float = 2.5,
                   seed: int = 0, noise_sd_hu: Optional[float] = None) -> np.ndarray:
    """A ``(z, y, x)`` float32 volume in HU from pelvis-like (z=0) to chest-like (last slice).

    With ``noise_sd_hu`` white Gaussian noise of that SD is added (a simple, known noise
    level for tests; dose-realistic noise is in :mod:`DistilIQALib.training.simulation`).
    """
    volume = np.empty((num_slices, size, size), dtype=np.float32)
    for n in range(num_slices):
        volume[n] = phantom_slice(n / max(num_slices - 1, 1), size, pixel_mm, seed)
    if noise_sd_hu:
        rng = np.random.default_rng(seed + 1)
        volume += rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(noise_sd_hu)
    return volume


def water_phantom(size: int = 512, pixel_mm: float = 0.7, diameter_mm: float = 300.0, hu: float = 0.0) -> np.ndarray:
    """A uniform water cylinder (``hu``, default 0 HU) in air on the table: the QA phantom
    whose only variation is the noise added to it. Float32 ``(size, size)`` in HU."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = size / 2.0
    radius_px = diameter_mm / 2.0 / pixel_mm
    image = np.full((size, size), HU_AIR, dtype=np.float32)
    image[_ellipse(y, x, centre, centre, radius_px, radius_px)] = hu
    table_top = centre + radius_px + 8.0 / pixel_mm
    image[(y > table_top) & (y < table_top + 15.0 / pixel_mm)] = HU_TABLE
    return image


def textured_noise(shape, sd_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with CT texture (HU, float32): white noise shaped to the noise power spectrum of
    FBP with a Hann-apodised ramp, ``NPS(f) ~ |f| hann(f)^2``, scaled to ``sd_hu``.

    A cheap stand-in for :class:`~DistilIQALib.training.simulation.DoseSimulator` where many slices need noise
    quickly (the sample CT, the module's self-test); it lacks the projection-domain noise's rise behind dense
    anatomy. Plain numpy: Slicer's own process runs it."""
    fy = np.fft.fftfreq(shape[-2])[:, None]
    fx = np.fft.rfftfreq(shape[-1])[None, :]
    radius = np.minimum(np.hypot(fy, fx) / 0.5, 1.0)  # 1 at the Nyquist frequency
    amplitude = np.sqrt(radius) * 0.5 * (1.0 + np.cos(np.pi * radius))
    white = rng.standard_normal(shape, dtype=np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=shape[-2:])
    noise /= noise.std(axis=(-2, -1), keepdims=True)
    return (noise * sd_hu).astype(np.float32)

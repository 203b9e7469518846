"""Patient size from the image and the size-specific dose estimate (SSDE).

``water_equivalent_diameter_cm`` is AAPM Report 220's Dw: the diameter of the water circle that attenuates as much
as the patient's cross-section, Dw = 2 sqrt(Aw / pi) with Aw = sum over the patient region of (HU / 1000 + 1) x
pixel area. It is a different quantity from the engine's noise-equivalent ``water_diameter_cm`` (the noise
reference's size) and is kept apart from it in names and outputs.

SSDE = CTDIvol x f(Dw), with f the AAPM Report 204 conversion of the phantom the CTDIvol was measured in (32 cm
body or 16 cm head), Dw in place of the effective diameter as AAPM Report 220 prescribes.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..quality.interpretation import AAPM204  # AAPM Report 204's fits, f = a exp(-b D), (a, b) per phantom

#: The patient is what is denser than this (HU): above air, lung-free foam pads and blankets, below fat and lung
#: tissue's rim; the lungs are inside the patient's outline and are filled back in.
PATIENT_THRESHOLD_HU = -500.0
#: Below this the pixel is outside the reconstructed field (scanners pad the corners with -2000 HU or lower).
OUTSIDE_FIELD_HU = -1500.0
#: The body is cut by the field of view when its outline runs along the field's edge for at least this long (mm).
TRUNCATION_CONTACT_MM = 10.0

#: The range of effective diameters AAPM Report 204's tables cover (cm): outside it the fit is an extrapolation.
AAPM204_RANGE_CM = (8.0, 45.0)


def _mosaic(tiles: np.ndarray) -> np.ndarray:
    """The 2D ``tiles`` ``(n, h, w)`` side by side on one canvas, one background pixel between and around them,
    so that one SimpleITK call labels or fills every tile on its own."""
    count, height, width = tiles.shape
    columns = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    padded = np.zeros((rows * columns, height + 1, width + 1), dtype=tiles.dtype)
    padded[:count, 1:, 1:] = tiles
    canvas = padded.reshape(rows, columns, height + 1, width + 1).transpose(0, 2, 1, 3)
    return np.pad(canvas.reshape(rows * (height + 1), columns * (width + 1)), ((0, 1), (0, 1)))


def _tiles(canvas: np.ndarray, count: int, height: int, width: int) -> np.ndarray:
    """The inverse of :func:`_mosaic`."""
    rows, columns = (canvas.shape[0] - 1) // (height + 1), (canvas.shape[1] - 1) // (width + 1)
    grid = canvas[:-1, :-1].reshape(rows, height + 1, columns, width + 1).transpose(0, 2, 1, 3)
    return grid.reshape(rows * columns, height + 1, width + 1)[:count, 1:, 1:]


def patient_masks(hu_slices: np.ndarray) -> np.ndarray:
    """The patient's cross-section on each axial slice of ``hu_slices`` ``(n, y, x)`` (bool, same shape): the
    largest connected region above ``PATIENT_THRESHOLD_HU`` (the table and loose objects are smaller and apart),
    its holes (lungs, bowel gas) filled. All slices go through SimpleITK at once, side by side."""
    hu_slices = np.asarray(hu_slices)
    count, height, width = hu_slices.shape
    above = hu_slices > PATIENT_THRESHOLD_HU
    if not above.any():
        return above
    labels = _tiles(sitk.GetArrayFromImage(sitk.ConnectedComponent(
        sitk.GetImageFromArray(_mosaic(above.astype(np.uint8))))), count, height, width)
    largest = np.zeros_like(above)
    for k in range(count):
        sizes = np.bincount(labels[k].ravel())
        sizes[0] = 0
        if sizes.any():
            largest[k] = labels[k] == int(np.argmax(sizes))
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(_mosaic(largest.astype(np.uint8))), fullyConnected=False)
    return _tiles(sitk.GetArrayFromImage(filled), count, height, width).astype(bool)


def patient_mask(hu_slice: np.ndarray) -> np.ndarray:
    """The patient's cross-section on one axial slice (see :func:`patient_masks`)."""
    return patient_masks(np.asarray(hu_slice)[None])[0]


def _truncated(masks: np.ndarray, hu_slices: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Whether each slice's patient outline runs along the edge of the field of view (the image border, or the
    padded corners outside the reconstruction circle, below ``OUTSIDE_FIELD_HU``) for at least
    ``TRUNCATION_CONTACT_MM``; ``masks`` and ``hu_slices`` are ``(n, y, x)``."""
    frame = ((0, 0), (1, 1), (1, 1))
    outside = np.pad(np.asarray(hu_slices) < OUTSIDE_FIELD_HU, frame, constant_values=True)
    inside = np.pad(np.asarray(masks, dtype=bool), frame, constant_values=False)
    touching = np.zeros_like(inside)
    for axis in (1, 2):
        for step in (1, -1):
            touching |= inside & np.roll(outside, step, axis=axis)
    contact_mm = touching.sum(axis=(1, 2)) * float(min(spacing_mm[0], spacing_mm[1]))
    return contact_mm >= TRUNCATION_CONTACT_MM


def is_truncated(mask: np.ndarray, hu_slice: np.ndarray, spacing_mm: Sequence[float]) -> bool:
    """Whether the patient's outline on one slice runs along the edge of the field of view (see
    :func:`_truncated`)."""
    return bool(_truncated(np.asarray(mask)[None], np.asarray(hu_slice)[None], spacing_mm)[0])


def water_equivalent_diameters_cm(hu_slices: np.ndarray, spacing_mm: Sequence[float]) -> List[Tuple[Optional[float],
                                                                                                     bool]]:
    """:func:`water_equivalent_diameter_cm` of every slice of ``hu_slices`` ``(n, y, x)`` at once."""
    hu = np.asarray(hu_slices)
    masks = patient_masks(hu)
    pixel_area_cm2 = float(spacing_mm[0]) * float(spacing_mm[1]) / 100.0
    # Air-equivalent pixels add nothing, not less than nothing (padding inside a filled hole is not negative water).
    relative = np.clip(hu.astype(np.float64) / 1000.0 + 1.0, 0.0, None)
    water = np.where(masks, relative, 0.0).sum(axis=(1, 2)) * pixel_area_cm2
    truncated = _truncated(masks, hu, spacing_mm)
    return [(2.0 * math.sqrt(float(water[k]) / math.pi), bool(truncated[k])) if masks[k].any() else (None, False)
            for k in range(len(hu))]


def water_equivalent_diameter_cm(hu_slice: np.ndarray, spacing_mm: Sequence[float]) -> Tuple[Optional[float], bool]:
    """AAPM Report 220 Dw of one axial slice (cm) and whether the body is cut by the field of view.

    ``hu_slice``: the slice in HU, shape ``(y, x)``; ``spacing_mm``: pixel size ``(x, y, ...)`` in mm (a volume's
    ``spacing_mm`` will do). Returns ``(None, False)`` when the slice shows no patient.
    """
    return water_equivalent_diameters_cm(np.asarray(hu_slice)[None], spacing_mm)[0]


def conversion_factor(phantom: Optional[str], dw_cm: Optional[float]) -> Tuple[Optional[float], Optional[str]]:
    """AAPM Report 204's CTDIvol-to-SSDE conversion for ``phantom`` ('body32' or 'head16') at ``dw_cm``, or
    ``(None, reason)`` where it does not apply."""
    if dw_cm is None or not np.isfinite(dw_cm):
        return None, "no water-equivalent diameter"
    if phantom not in AAPM204:
        return None, "the CTDIvol phantom is not stated (16 cm head or 32 cm body)"
    low, high = AAPM204_RANGE_CM
    if not low <= dw_cm <= high:
        return None, (f"water-equivalent diameter {dw_cm:.1f} cm is outside the {low:g}-{high:g} cm that "
                      "AAPM Report 204's conversion covers")
    a, b = AAPM204[phantom]
    return a * math.exp(-b * dw_cm), None


def ssde(ctdivol_mgy: Optional[float], phantom: Optional[str], dw_cm: Optional[float]) -> Tuple[Optional[float],
                                                                                                 Optional[str]]:
    """SSDE (mGy) from CTDIvol (mGy) on ``phantom`` and Dw (cm), or ``(None, why it is empty)``."""
    if ctdivol_mgy is None or not np.isfinite(ctdivol_mgy):
        return None, "no CTDIvol"
    factor, reason = conversion_factor(phantom, dw_cm)
    if factor is None:
        return None, reason
    return float(ctdivol_mgy) * factor, None


def ssde_mgy(ctdivol_mgy: Optional[float], phantom: Optional[str], dw_cm: Optional[float]) -> Optional[float]:
    """SSDE (mGy) from CTDIvol (mGy) on ``phantom`` ('body32' or 'head16') and Dw (cm); None when any is missing
    or Dw is outside AAPM Report 204's range (``ssde`` also says why)."""
    return ssde(ctdivol_mgy, phantom, dw_cm)[0]

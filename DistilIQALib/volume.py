"""The in-memory CT volume every part of the engine works on.

Voxels are stored as ``(z, y, x)`` arrays in Hounsfield units (HU), kept in the dtype
the file had (usually int16) so that a 1000-slice scan is not expanded to float32 at
once. Geometry follows ITK/DICOM (LPS patient coordinates, millimetres).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np


@dataclass
class CTVolume:
    """A CT volume as axial slices.

    Attributes:
        hu: voxel values in HU, shape ``(z, y, x)``; may be a read-only view.
        spacing_mm: voxel size along ``(x, y, z)`` in mm.
        origin_mm: LPS position of voxel ``(0, 0, 0)`` in mm.
        direction: 3x3 matrix whose columns are the LPS directions of the x, y, z axes.
        source: where the volume came from (path or node name), for messages and reports.
        metadata: DICOM-derived facts when known (modality, series UID, description, kernel, ...).
        slice_z_mm: superior coordinate (mm) of each slice centre as the files state it, when it differs from
            the regular grid that spacing and origin describe (a DICOM series with a missing slice).
    """

    hu: np.ndarray
    spacing_mm: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""
    metadata: Dict[str, Any] = field(default_factory=dict)
    slice_z_mm: Optional[np.ndarray] = None

    @property
    def slice_thickness_mm(self) -> float:
        """Reconstructed slice thickness: the DICOM SliceThickness when the files state a positive one,
        else the slice spacing (what NIfTI and NRRD record)."""
        try:
            stated = float(str(self.metadata.get("slice_thickness", "")).split("\\")[0])
        except ValueError:
            stated = 0.0
        return stated if np.isfinite(stated) and stated > 0 else float(self.spacing_mm[2])

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])

    def slice_centres_mm(self) -> np.ndarray:
        """LPS position (mm) of the centre of every axial slice, shape ``(z, 3)``."""
        nz, ny, nx = self.hu.shape
        spacing = np.asarray(self.spacing_mm, dtype=np.float64)
        index = np.zeros((nz, 3))
        index[:, 0] = (nx - 1) / 2.0
        index[:, 1] = (ny - 1) / 2.0
        index[:, 2] = np.arange(nz)
        return np.asarray(self.origin_mm, dtype=np.float64) + (index * spacing) @ np.asarray(self.direction).T

    def z_mm(self) -> np.ndarray:
        """Superior coordinate (mm) of each slice centre; the same in LPS and RAS. Where the files' own
        positions are known (:attr:`slice_z_mm`) they are used, so a gap in a series stays a gap."""
        if self.slice_z_mm is not None:
            return np.asarray(self.slice_z_mm, dtype=np.float64)
        return self.slice_centres_mm()[:, 2]


def to_axial(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float],
    direction: np.ndarray,
) -> Tuple[np.ndarray, Tuple[float, float, float], Tuple[float, float, float], np.ndarray]:
    """Permute and flip a ``(z, y, x)`` array so its axes point closest to L, P, S.

    This is the numpy equivalent of reorienting to the DICOM code ``LPS``: a sagittal or
    coronal acquisition comes back as a stack of axial slices, with x towards the
    patient's left, y posterior and z superior. Only views are made, never copies.
    Oblique volumes keep their obliquity (no resampling).
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    origin = np.asarray(origin_mm, dtype=np.float64)
    sizes = hu.shape[::-1]  # (nx, ny, nz) in ITK axis order
    # Greedy assignment of each image axis to the patient axis it is most aligned with.
    weights = np.abs(direction).copy()
    target_of = [0, 0, 0]
    for _ in range(3):
        patient_axis, image_axis = np.unravel_index(np.argmax(weights), weights.shape)
        target_of[image_axis] = int(patient_axis)
        weights[patient_axis, :] = -1.0
        weights[:, image_axis] = -1.0
    new_direction = np.zeros((3, 3))
    new_spacing = np.zeros(3)
    new_origin = origin.copy()
    source_of = [0, 0, 0]
    flips = []
    for image_axis, patient_axis in enumerate(target_of):
        column = direction[:, image_axis]
        sign = 1.0 if column[patient_axis] >= 0 else -1.0
        if sign < 0:
            new_origin = new_origin + column * spacing[image_axis] * (sizes[image_axis] - 1)
            flips.append(2 - patient_axis)
        new_direction[:, patient_axis] = sign * column
        new_spacing[patient_axis] = spacing[image_axis]
        source_of[patient_axis] = image_axis
    # numpy axis n holds ITK axis 2 - n
    transposed = np.transpose(hu, [2 - source_of[2 - n] for n in range(3)])
    for axis in flips:
        transposed = np.flip(transposed, axis=axis)
    return transposed, tuple(new_spacing), tuple(new_origin), new_direction

"""Write HU volumes as DICOM CT series (for simulated doses, demos and tests).

Pixel data are stored as signed 16-bit with RescaleSlope 1 and RescaleIntercept 0, so
stored values are HU. Compressed transfer syntaxes use pydicom's encoders (RLE is
built in; JPEG 2000 needs ``pylibjpeg-openjpeg``, JPEG-LS needs ``pyjpegls``).
"""
from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from .pydicom_compat import compress, save_file

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
}


def write_series(
    hu: np.ndarray,
    folder: os.PathLike[str] | str,
    spacing_mm: Sequence[float] = (0.7, 0.7, 2.5),
    origin_mm: Sequence[float] = (-179.0, -179.0, 0.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    transfer_syntax: str = "explicit",
    modality: str = "CT",
    series_description: str = "DistilIQA phantom",
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    patient_id: str = "PHANTOM",
    extra: Optional[Dict[str, object]] = None,
) -> List[Path]:
    """Write ``hu`` ``(z, y, x)`` as one file per slice in ``folder``; returns the paths.

    ``spacing_mm`` is ``(x, y, z)``; slices are stacked along the cross product of the row
    and column directions, starting at ``origin_mm`` (LPS, mm). File names are shuffled
    relative to position on purpose: readers must sort by geometry, not by name.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; choose {', '.join(TRANSFER_SYNTAXES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row = np.asarray(row_direction, dtype=np.float64)
    column = np.asarray(column_direction, dtype=np.float64)
    normal = np.cross(row, column)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime(2024, 1, 1, 12, 0, 0)
    paths = []
    count = hu.shape[0]
    for n in range(count):
        position = np.asarray(origin_mm, dtype=np.float64) + normal * spacing_mm[2] * n
        instance_uid = generate_uid(entropy_srcs=[series_uid, str(n)])
        ds = _slice_dataset(np.rint(hu[n]).clip(-32768, 32767).astype(np.int16), transfer_syntax, instance_uid)
        ds.Modality = modality
        ds.SeriesDescription = series_description
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(row) + list(column)]
        ds.PixelSpacing = [f"{spacing_mm[1]:.6f}", f"{spacing_mm[0]:.6f}"]
        ds.SliceThickness = f"{spacing_mm[2]:.4f}"
        ds.SliceLocation = f"{float(np.dot(position, normal)):.4f}"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        # Names derived from the instance UID: their order says nothing about position.
        path = folder / f"CT{hashlib.sha1(ds.SOPInstanceUID.encode()).hexdigest()[:12]}.dcm"
        save_file(ds, path)
        paths.append(path)
    return paths


def _slice_dataset(pixels: np.ndarray, transfer_syntax: str, instance_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "350"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    if syntax.is_compressed:
        compress(ds, syntax, pixels)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.tobytes()
    return ds


def write_like(template: os.PathLike[str] | str, hu: np.ndarray, target: os.PathLike[str] | str,
               description_suffix: str) -> Path:
    """Write ``hu`` as a copy of the DICOM file ``template`` (same geometry and patient) with new
    instance and series UIDs (one derived series per source series and description)."""
    import pydicom

    ds = pydicom.dcmread(template)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    dtype = np.int16 if int(getattr(ds, "PixelRepresentation", 1)) == 1 else np.uint16
    limits = np.iinfo(dtype)
    pixels = stored.clip(limits.min, limits.max).astype(dtype)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = pixels.tobytes()
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), description_suffix])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), description_suffix])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = f"{getattr(ds, 'SeriesDescription', '')} ({description_suffix})".strip()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(ds, target)
    return target

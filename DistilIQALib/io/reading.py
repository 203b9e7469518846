"""Read CT images from disk into :class:`CTVolume` (HU, axial slices, geometry kept).

Supported inputs:

* a folder holding one DICOM series (any transfer syntax GDCM decodes: uncompressed,
  JPEG lossless, JPEG-LS, JPEG 2000, RLE); a folder with several series is an error
  that lists them unless ``series_uid`` picks one; sub-folders are searched when the
  folder itself has no DICOM files;
* a volume file: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``;
* a single 2D image: one DICOM file, ``.tif``/``.tiff`` or ``.png``.

Values are returned in HU (DICOM rescale slope/intercept applied). A 2D TIFF or PNG
that is already a display image (8-bit, or floating point within [0, 1] as in the
LDCTIQAC2023 challenge data) is taken to be windowed W350/L40 and mapped back to the HU
that window shows, so that one preprocessing path serves every input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..quality.windows import DEFAULT_WINDOW, Window
from ..volume import CTVolume, to_axial

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".tif", ".tiff", ".png")
MIN_MATRIX_PIXELS = 64
#: A CT in HU shows air (outside the body, lungs, bowel gas) far below this value.
AIR_THRESHOLD_HU = -500.0

DICOM_TAGS = {
    "modality": "0008|0060",
    "series_uid": "0020|000e",
    "series_description": "0008|103e",
    "study_uid": "0020|000d",
    "study_date": "0008|0020",
    "patient_id": "0010|0020",
    "image_type": "0008|0008",
    "kernel": "0018|1210",
    "kvp": "0018|0060",
    "exposure_mas": "0018|1152",
    "slice_thickness": "0018|0050",
    "manufacturer": "0008|0070",
}
POSITION_TAG = "0020|0032"
THICKNESS_TAG = "0018|0050"


def _silence_itk_warnings() -> None:
    # GDCM prints warnings (e.g. on non-uniform spacing) straight to stderr; we report
    # what matters ourselves.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)


def read_volume(path: os.PathLike[str] | str, series_uid: Optional[str] = None, force: bool = False) -> CTVolume:
    """Read ``path`` into a :class:`CTVolume` in HU with axial slices.

    Args:
        path: DICOM series folder, volume file or 2D image file.
        series_uid: SeriesInstanceUID to pick when a folder holds several series.
        force: score even when the data do not look like CT (non-CT modality, no air).

    Raises:
        InputError: with a one-sentence reason for any input that cannot be scored.
    """
    _silence_itk_warnings()
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    if path.is_dir():
        image, metadata = _read_dicom_folder(path, series_uid)
    else:
        image, metadata = _read_file(path)
    volume = _volume_from_image(image, metadata, str(path))
    _check_volume(volume, force)
    return volume


def list_dicom_series(folder: Path) -> List[Dict[str, object]]:
    """Every DICOM series below ``folder``: uid, description, folder and file names."""
    found = []
    for directory, _subdirs, _files in sorted(os.walk(folder)):
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)
        except RuntimeError:
            continue
        for uid in uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
            description = _header(files[0]).get("series_description", "") if files else ""
            found.append({"uid": uid, "description": description, "folder": directory, "files": list(files)})
    return found


def _read_dicom_folder(folder: Path, series_uid: Optional[str]) -> Tuple[sitk.Image, Dict[str, str]]:
    series = list_dicom_series(folder)
    if series_uid is not None:
        series = [s for s in series if s["uid"] == series_uid]
        if not series:
            raise InputError(f"no DICOM series with SeriesInstanceUID {series_uid} in {folder}")
    if not series:
        if any(p.is_file() for p in folder.rglob("*")):
            raise InputError(f"no DICOM series found in {folder} (the files there are not DICOM images)")
        raise InputError(f"folder is empty: {folder}")
    if len(series) > 1:
        listing = "; ".join(
            f"{s['uid']} ({s['description'] or 'no description'}, {len(s['files'])} files)" for s in series
        )
        raise InputError(f"{folder} holds {len(series)} DICOM series, pick one with --series UID: {listing}")
    files = series[0]["files"]
    _check_no_broken_dicom(Path(series[0]["folder"]), files)
    return _read_dicom_files(files, str(folder))


def read_dicom_files(files: List[str], source: str, force: bool = False) -> CTVolume:
    """Read the DICOM files of one series, already sorted by position, into a :class:`CTVolume`."""
    _silence_itk_warnings()
    image, metadata = _read_dicom_files(files, source)
    volume = _volume_from_image(image, metadata, source)
    _check_volume(volume, force)
    return volume


def _check_same_matrix(files: List[str], source: str) -> None:
    """Which file of a series the series reader failed on: a truncated or corrupt one, or one whose matrix
    differs from the others' (the reader stops at the first size mismatch, naming neither)."""
    sizes = {}
    probe = sitk.ImageFileReader()
    for name in files:
        probe.SetFileName(name)
        try:
            probe.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"cannot read the DICOM series in {source}: file {Path(name).name} is truncated "
                             "or corrupt") from None
        sizes.setdefault(tuple(probe.GetSize()[:2]), Path(name).name)
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h} ({name})" for (w, h), name in sizes.items())
        raise InputError(f"the DICOM series in {source} mixes matrix sizes: {listed}")


def _read_dicom_files(files: List[str], source: str) -> Tuple[sitk.Image, Dict[str, str]]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        # each file's header only now, to say which file and why (mixed matrices, a truncated file)
        _check_same_matrix(files, source)
        raise InputError(f"cannot read the DICOM series in {source}: {_first_line(error)}") from None
    metadata = {key: reader.GetMetaData(0, tag).strip()
                for key, tag in DICOM_TAGS.items() if reader.HasMetaDataKey(0, tag)}
    metadata["num_files"] = str(len(files))
    positions = [_position(reader, k) for k in range(len(files))]
    if all(position is not None for position in positions):
        metadata["file_z_mm"] = [position[2] for position in positions]
        thickness = [_number_tag(reader, k, THICKNESS_TAG) for k in range(len(files))]
        if all(value is not None for value in thickness) and len(set(thickness)) > 1:
            metadata["file_thickness_mm"] = thickness
    # the files and their positions, for readers of other header facts (the scanner's dose)
    metadata["dicom_files"] = [str(name) for name in files]
    metadata["file_positions_mm"] = positions
    return image, metadata


def _number_tag(reader: sitk.ImageSeriesReader, index: int, tag: str) -> Optional[float]:
    """The first value of a numeric tag of the ``index``-th file, or ``None``."""
    if not reader.HasMetaDataKey(index, tag):
        return None
    try:
        value = float(reader.GetMetaData(index, tag).split("\\")[0])
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def _position(reader: sitk.ImageSeriesReader, index: int) -> Optional[Tuple[float, float, float]]:
    """ImagePositionPatient (mm) of the ``index``-th file, or ``None``."""
    if not reader.HasMetaDataKey(index, POSITION_TAG):
        return None
    try:
        values = [float(v) for v in reader.GetMetaData(index, POSITION_TAG).split("\\")]
    except ValueError:
        return None
    return tuple(values) if len(values) == 3 else None


def _file_slice_z(volume: CTVolume, file_z_mm: List[float], itk_direction: np.ndarray) -> Optional[np.ndarray]:
    """The slice-centre z of each axial slice from the files' own positions, when the files are the axial
    slices (the stack runs along z) and the reader's regular grid does not match them (a missing slice).

    The series reader spreads the slices evenly between the first and the last file; after a gap every
    slice between them would get a wrong z. The files' z (sorted) is moved by the in-plane offset of the
    slice centre (the same for every slice) and given to the slices in the order of their grid z.
    """
    stack = np.abs(itk_direction[:, 2])
    if len(file_z_mm) != volume.num_slices or volume.num_slices < 2 or np.argmax(stack) != 2:
        return None
    grid = volume.slice_centres_mm()[:, 2]
    files = np.sort(np.asarray(file_z_mm, dtype=np.float64))
    offset = (grid.min() + grid.max()) / 2 - (files.min() + files.max()) / 2
    true_z = np.empty_like(grid)
    true_z[np.argsort(grid, kind="stable")] = files + offset
    tolerance = max(0.01, 0.01 * abs(float(volume.spacing_mm[2])))
    return true_z if np.abs(true_z - grid).max() > tolerance else None


def z_gaps(z_mm: np.ndarray, thickness_mm: Optional[Sequence[float]] = None,
           factor: float = 1.5) -> List[Tuple[float, float]]:
    """``(z below, z above)`` (mm) of every step between neighbouring slices larger than ``factor`` times the
    typical step: where slices are missing.

    Without ``thickness_mm`` the typical step is the median step of the series. With each slice's thickness (mm,
    in the order of ``z_mm``) it is the median step between slices of the thicker of the two neighbours' thickness:
    a series whose spacing grows with its thickness (a 4 mm part at 4.2 mm, a 7 mm part at 7.4 mm) has no gap,
    and a slice missing from either part is still one. A thickness seen on one slice only has no steps of its
    own: the larger of the series' median step and that thickness stands for it."""
    z = np.asarray(z_mm, dtype=np.float64)
    order = np.argsort(z, kind="stable")
    z = z[order]
    if len(z) < 3:
        return []
    steps = np.diff(z)
    typical = float(np.median(steps))
    if typical <= 0:
        return []
    allowed = np.full(len(steps), factor * typical)
    if thickness_mm is not None and len(thickness_mm) == len(z):
        thickness = np.round(np.asarray(thickness_mm, dtype=np.float64)[order], 2)
        if np.all(np.isfinite(thickness)) and len(np.unique(thickness)) > 1:
            pair = np.maximum(thickness[:-1], thickness[1:])
            for value in np.unique(pair):
                own = steps[(thickness[:-1] == value) & (thickness[1:] == value)]
                step = float(np.median(own)) if len(own) else max(typical, float(value))
                allowed[pair == value] = factor * (step if step > 0 else typical)
    return [(float(z[n]), float(z[n + 1])) for n in np.nonzero(steps > allowed)[0]]


def _read_file(path: Path) -> Tuple[sitk.Image, Dict[str, str]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as error:
        reason = _first_line(error)
        if _looks_like_dicom(path):
            raise InputError(f"cannot read {path}: the DICOM file is truncated or corrupt") from None
        if "Unable to determine ImageIO reader" in reason or "Could not create IO object" in reason:
            raise InputError(f"cannot read {path}: not a DICOM file or a supported image format "
                             f"({', '.join(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES)})") from None
        raise InputError(f"cannot read {path}: the file is truncated or corrupt ({reason})") from None
    metadata = {key: reader.GetMetaData(tag).strip() for key, tag in DICOM_TAGS.items() if reader.HasMetaDataKey(tag)}
    if path.name.lower().endswith(IMAGE_2D_SUFFIXES) and image.GetDimension() == 2:
        metadata["intensity"] = _display_image_convention(image)
    elif _looks_like_dicom(path):
        metadata["dicom_files"] = [str(path)]
        metadata["file_positions_mm"] = [_file_position(reader)]
    return image, metadata


def _file_position(reader: sitk.ImageFileReader) -> Optional[Tuple[float, float, float]]:
    """ImagePositionPatient (mm) of a single DICOM file, or ``None``."""
    try:
        values = [float(v) for v in reader.GetMetaData(POSITION_TAG).split("\\")]
    except (RuntimeError, ValueError):
        return None
    return tuple(values) if len(values) == 3 else None


def _looks_like_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_no_broken_dicom(folder: Path, series_files: List[str]) -> None:
    """A DICOM file beside the series that GDCM could not parse means a slice may be missing."""
    in_series = {Path(name).name for name in series_files}
    broken = [p.name for p in sorted(folder.iterdir())
              if p.is_file() and p.name not in in_series and _looks_like_dicom(p) and not _header(str(p))]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise InputError(f"cannot read the DICOM series in {folder}: file {broken[0]}{more} is truncated or corrupt")


def _header(file_name: str) -> Dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {key: reader.GetMetaData(tag).strip() for key, tag in DICOM_TAGS.items() if reader.HasMetaDataKey(tag)}


def _display_image_convention(image: sitk.Image) -> str:
    """How a 2D TIFF/PNG stores intensity: ``"hu"`` or ``"windowed"`` (W350/L40 in [0, 1])."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return "hu"  # rejected later as colour
    pixel_id = image.GetPixelID()
    if pixel_id == sitk.sitkUInt8:
        return "windowed"
    if pixel_id in (sitk.sitkFloat32, sitk.sitkFloat64):
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if stats.GetMinimum() >= 0.0 and stats.GetMaximum() <= 1.0:
            return "windowed"
    return "hu"


def _volume_from_image(image: sitk.Image, metadata: Dict[str, str], source: str) -> CTVolume:
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"{source} is a colour (RGB) image; DistilIQA needs a greyscale CT image")
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dimension = 3
    if dimension not in (2, 3):
        raise InputError(f"{source} is a {dimension}D image; DistilIQA scores 2D slices or 3D volumes, not 4D series")
    # A copy: the SimpleITK image (and its buffer) is released when this function returns.
    array = sitk.GetArrayFromImage(image)
    if dimension == 2:
        array = array[np.newaxis]
        spacing = tuple(image.GetSpacing()) + (1.0,)
        origin = tuple(image.GetOrigin()) + (0.0,)
        direction = np.eye(3)
        direction[:2, :2] = np.asarray(image.GetDirection()).reshape(2, 2)
    else:
        spacing = image.GetSpacing()
        origin = image.GetOrigin()
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if metadata.get("intensity") == "windowed":
        array = _windowed_to_hu(array, DEFAULT_WINDOW)
    hu, axial_spacing, axial_origin, axial_direction = to_axial(array, spacing, origin, direction)
    file_z_mm = metadata.pop("file_z_mm", None)
    file_thickness_mm = metadata.pop("file_thickness_mm", None)
    volume = CTVolume(hu=hu, spacing_mm=axial_spacing, origin_mm=axial_origin, direction=axial_direction,
                      source=source, metadata=metadata)
    if file_z_mm is not None and dimension == 3:
        volume.slice_z_mm = _file_slice_z(volume, file_z_mm, np.asarray(direction).reshape(3, 3))
        thickness = None
        if file_thickness_mm is not None and len(file_thickness_mm) == volume.num_slices:
            thickness = _by_slice(volume, file_z_mm, file_thickness_mm)
            metadata["slice_thickness_per_slice_mm"] = [float(value) for value in thickness]
        if volume.slice_z_mm is not None:
            metadata["z_gaps_mm"] = z_gaps(volume.slice_z_mm, thickness)
    return volume


def _by_slice(volume: CTVolume, file_z_mm: List[float], values: List[float]) -> np.ndarray:
    """Per-file ``values`` in the volume's slice order, matched by z (the files' z moved by the same in-plane offset
    as in :func:`_file_slice_z`)."""
    z = volume.z_mm()
    files = np.asarray(file_z_mm, dtype=np.float64)
    offset = (z.min() + z.max()) / 2 - (files.min() + files.max()) / 2
    nearest = np.abs((files + offset)[None, :] - z[:, None]).argmin(axis=1)
    return np.asarray(values, dtype=np.float64)[nearest]


def _windowed_to_hu(unit: np.ndarray, window: Window) -> np.ndarray:
    scale = 255.0 if unit.dtype == np.uint8 else 1.0
    return (unit.astype(np.float32) / scale) * window.width_hu + window.lower_hu


def _check_volume(volume: CTVolume, force: bool) -> None:
    nz, ny, nx = volume.hu.shape
    if min(ny, nx) < MIN_MATRIX_PIXELS:
        raise InputError(f"{volume.source} is {nx}x{ny} pixels; DistilIQA needs slices of at least "
                         f"{MIN_MATRIX_PIXELS}x{MIN_MATRIX_PIXELS}")
    if nz == 0:
        raise InputError(f"{volume.source} has no slices")
    modality = volume.metadata.get("modality", "")
    if modality and modality.upper() != "CT" and not force:
        raise InputError(f"{volume.source} is modality {modality}, not CT; pass --force to score it anyway")
    minimum, non_finite = _scan_values(volume.hu)
    if non_finite:
        raise InputError(f"{volume.source} contains {non_finite} NaN or infinite voxel values")
    if volume.metadata.get("intensity") != "windowed" and minimum > AIR_THRESHOLD_HU and not force:
        raise InputError(f"{volume.source} does not look like CT in Hounsfield units (lowest value {minimum:g}, "
                         f"no air below {AIR_THRESHOLD_HU:g} HU); pass --force to score it anyway")


def _scan_values(hu: np.ndarray, chunk_slices: int = 32) -> Tuple[float, int]:
    """Minimum and count of non-finite voxels, a few slices at a time (bounded memory)."""
    minimum = np.inf
    non_finite = 0
    for start in range(0, hu.shape[0], chunk_slices):
        chunk = hu[start:start + chunk_slices]
        if np.issubdtype(chunk.dtype, np.floating):
            finite = np.isfinite(chunk)
            non_finite += int(chunk.size - np.count_nonzero(finite))
            if finite.any():
                minimum = min(minimum, float(chunk[finite].min()))
        else:
            minimum = min(minimum, float(chunk.min()))
    return minimum, non_finite


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with the source location; the description is last.
    meaningful = [line for line in lines if not line.startswith(("/", "itk::", "Exception thrown"))]
    return (meaningful or lines or ["unknown error"])[-1][:300]

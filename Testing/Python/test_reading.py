"""Reading real files: DICOM series in several transfer syntaxes, package-shipped CT, volume formats."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from DistilIQALib.dicom_writing import write_series
from DistilIQALib.errors import InputError
from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.reading import read_dicom_files, read_volume, z_gaps

from .shipped_ct import shipped_ct_file, shipped_ct_files


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle", "jpeg2000", "jpegls"])
def test_dicom_series_transfer_syntaxes_give_exact_hu(tmp_path, phantom_hu, syntax):
    write_series(phantom_hu, tmp_path, spacing_mm=(2.8, 2.8, 2.5), transfer_syntax=syntax)
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.hu, np.rint(phantom_hu))
    assert volume.spacing_mm == pytest.approx((2.8, 2.8, 2.5))
    np.testing.assert_allclose(volume.z_mm(), np.arange(6) * 2.5, atol=1e-3)
    assert volume.metadata["modality"] == "CT"


def test_series_sorted_by_position_not_by_name(dicom_series, phantom_hu):
    by_name = [int(pydicom.dcmread(path).InstanceNumber) for path in sorted(dicom_series.iterdir())]
    assert by_name != sorted(by_name)  # file names do not follow position
    volume = read_volume(dicom_series)
    np.testing.assert_array_equal(volume.hu[0], np.rint(phantom_hu[0]))


@pytest.mark.parametrize("slope, intercept", [(1.0, -2048.0), (0.5, -2048.0), (2.5, -1500.0), (0.25, -2000.5)])
def test_rescale_slope_and_intercept_applied(tmp_path, phantom_hu, slope, intercept):
    """Stored values become HU = stored * RescaleSlope + RescaleIntercept (computed here in numpy)."""
    paths = write_series(phantom_hu[:2], tmp_path, spacing_mm=(2.8, 2.8, 2.5))
    stored_by_z = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = np.rint((ds.pixel_array.astype(np.float64) - intercept) / slope).astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored.tobytes()
        ds.save_as(path)
        stored_by_z[float(ds.ImagePositionPatient[2])] = stored
    volume = read_volume(tmp_path)
    expected = np.stack([stored_by_z[z] for z in sorted(stored_by_z)]).astype(np.float64) * slope + intercept
    np.testing.assert_allclose(volume.hu, expected, atol=1e-3)
    if slope != 1.0:
        assert np.abs(expected - np.rint(phantom_hu[:2])).max() <= slope / 2 + 1e-6  # still the phantom's HU


def test_coronal_acquisition_becomes_axial(tmp_path, phantom_hu):
    """The same object stored as coronal slices reads back as the original axial stack."""
    axial = np.rint(phantom_hu[:, :, :])  # (z, y, x) with z superior, spacing 2.8, 2.8, 2.5
    nz = axial.shape[0]
    coronal = axial[::-1].transpose(1, 0, 2)  # (y, z from top down, x)
    write_series(coronal, tmp_path, spacing_mm=(2.8, 2.5, 2.8), origin_mm=(0.0, 0.0, 2.5 * (nz - 1)),
                 row_direction=(1, 0, 0), column_direction=(0, 0, -1))
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.hu, axial)
    assert volume.spacing_mm == pytest.approx((2.8, 2.8, 2.5))
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(volume.z_mm(), np.arange(nz) * 2.5, atol=1e-3)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_volume_files_keep_hu_and_geometry(tmp_path, phantom_hu, suffix):
    image = sitk.GetImageFromArray(np.rint(phantom_hu).astype(np.int16))
    image.SetSpacing((2.8, 2.8, 2.5))
    image.SetOrigin((-10.0, 20.0, -30.0))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.hu, np.rint(phantom_hu))
    np.testing.assert_allclose(volume.z_mm(), -30.0 + np.arange(6) * 2.5, atol=1e-4)


def test_sagittal_volume_file_becomes_axial(tmp_path, phantom_hu):
    axial = np.rint(phantom_hu).astype(np.int16)  # (z, y, x)
    # Store with image axes (i, j, k) = (y, z, x): array (x, z, y) in numpy order.
    stored = axial.transpose(2, 0, 1)
    image = sitk.GetImageFromArray(np.ascontiguousarray(stored))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # i -> P (y), j -> S (z), k -> L (x)
    image.SetSpacing((2.8, 2.5, 2.8))
    path = tmp_path / "sagittal.nrrd"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.hu, axial)
    assert volume.spacing_mm == pytest.approx((2.8, 2.8, 2.5))


def test_package_shipped_ct_slices_read_in_hu():
    for path in shipped_ct_files():
        volume = read_volume(path)
        assert volume.num_slices == 1 and volume.hu.shape[1] in (128, 512), path.name
        assert volume.metadata["modality"] == "CT"
        assert volume.hu.min() < -500 and volume.hu.max() > 100, path.name  # air and bone/contrast in HU


def test_jpeg2000_lossless_equals_uncompressed_real_ct():
    compressed = read_volume(shipped_ct_file("693_J2KR.dcm"))
    uncompressed = read_volume(shipped_ct_file("693_UNCR.dcm"))
    np.testing.assert_array_equal(compressed.hu, uncompressed.hu)
    assert compressed.hu.shape == (1, 512, 512)


def test_jpeg_lossless_real_ct():
    volume = read_volume(shipped_ct_file("bad_sequence.dcm"))
    assert volume.hu.shape == (1, 512, 512)
    assert volume.hu.min() <= -1000 + 50  # air is about -1000 HU: rescale applied


def test_windowed_png_and_float_tiff_map_back_to_hu(tmp_path, phantom_hu):
    from DistilIQALib.preprocessing import window_to_unit

    unit = window_to_unit(phantom_hu[0])
    Image.fromarray(np.rint(unit * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    tifffile.imwrite(tmp_path / "slice.tif", unit.astype(np.float32))
    from_png = read_volume(tmp_path / "slice.png")
    from_tiff = read_volume(tmp_path / "slice.tif")
    assert from_tiff.metadata["intensity"] == "windowed"
    np.testing.assert_allclose(window_to_unit(from_tiff.hu[0]), unit, atol=1e-6)
    np.testing.assert_allclose(window_to_unit(from_png.hu[0]), unit, atol=1 / 255)


def test_hu_tiff_is_read_as_hu(tmp_path, phantom_hu):
    tifffile.imwrite(tmp_path / "hu.tif", np.rint(phantom_hu[0]).astype(np.int16))
    volume = read_volume(tmp_path / "hu.tif")
    np.testing.assert_array_equal(volume.hu[0], np.rint(phantom_hu[0]))


def test_folder_with_two_series_lists_them_and_series_picks_one(tmp_path, phantom_hu):
    spacing = (2.8, 2.8, 2.5)
    write_series(phantom_hu, tmp_path / "a", series_uid="1.2.3.4", series_description="soft", spacing_mm=spacing)
    write_series(phantom_hu[:3], tmp_path / "b", series_uid="1.2.3.5", series_description="bone", spacing_mm=spacing)
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    message = str(error.value)
    assert "2 DICOM series" in message and "1.2.3.4" in message and "1.2.3.5" in message and "bone" in message
    assert read_volume(tmp_path, series_uid="1.2.3.5").num_slices == 3


def test_nested_single_series_is_found(tmp_path, phantom_hu):
    write_series(phantom_hu, tmp_path / "patient" / "study" / "series", spacing_mm=(2.8, 2.8, 2.5))
    assert read_volume(tmp_path).num_slices == 6


@pytest.mark.parametrize("column_direction", [(0.0, 1.0, 0.0), (0.0, -1.0, 0.0)])
def test_series_with_an_absent_slice_keeps_each_slice_z(tmp_path, column_direction):
    """The series reader spreads slices evenly between the first and last file; the volume keeps the z each
    file states instead, and names the gap (head-first and feet-first stacking)."""
    hu = phantom_volume(5, size=96, pixel_mm=3.5, noise_sd_hu=5.0, seed=2)
    paths = write_series(hu, tmp_path / "gap", spacing_mm=(3.5, 3.5, 5.0), origin_mm=(-160.0, -160.0, 100.0),
                         column_direction=column_direction)
    z_of = {path: float(pydicom.dcmread(path).ImagePositionPatient[2]) for path in paths}
    absent = sorted(paths, key=z_of.get)[1]
    absent.unlink()
    volume = read_volume(tmp_path / "gap")
    kept = sorted((z, n) for n, (path, z) in enumerate(z_of.items()) if path != absent)
    assert list(volume.z_mm()) == [z for z, _ in kept]
    assert volume.metadata["z_gaps_mm"] == [(sorted(z_of.values())[0], sorted(z_of.values())[2])]
    expected = np.rint(hu[[n for _, n in kept]])
    if column_direction[1] < 0:
        expected = expected[:, ::-1]  # rows run anterior: the axial volume runs posterior
    np.testing.assert_array_equal(volume.hu, expected)
    complete = write_series(hu, tmp_path / "full", spacing_mm=(3.5, 3.5, 5.0), origin_mm=(-160.0, -160.0, 100.0))
    regular = read_volume(complete[0].parent)
    assert regular.slice_z_mm is None and "z_gaps_mm" not in regular.metadata  # an even series keeps its grid


def _nrrd(path, hu, spacing=(2.0, 2.0, 2.0)):
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_force_reads_what_does_not_look_like_ct(tmp_path, phantom_hu):
    no_air = _nrrd(tmp_path / "no_air.nrrd", np.full((2, 64, 64), 40, dtype=np.int16))
    with pytest.raises(InputError, match="does not look like CT in Hounsfield units \\(lowest value 40, no air "
                                         "below -500 HU\\); pass --force to score it anyway"):
        read_volume(no_air)
    np.testing.assert_array_equal(read_volume(no_air, force=True).hu, np.full((2, 64, 64), 40))
    write_series(phantom_hu[:3], tmp_path / "mr", modality="MR", spacing_mm=(2.8, 2.8, 2.5))
    with pytest.raises(InputError, match="is modality MR, not CT; pass --force to score it anyway"):
        read_volume(tmp_path / "mr")
    assert read_volume(tmp_path / "mr", force=True).metadata["modality"] == "MR"
    files = sorted(str(path) for path in (tmp_path / "mr").iterdir())
    with pytest.raises(InputError, match="not CT"):
        read_dicom_files(files, "mr series")
    assert read_dicom_files(files, "mr series", force=True).num_slices == 3


def test_air_threshold_and_smallest_matrix_are_boundaries(tmp_path):
    at_threshold = np.full((1, 64, 64), 0, dtype=np.int16)
    at_threshold[0, 0, 0] = -500  # air at exactly -500 HU is enough
    assert read_volume(_nrrd(tmp_path / "at.nrrd", at_threshold)).hu.min() == -500
    above = at_threshold.copy()
    above[0, 0, 0] = -499
    with pytest.raises(InputError, match="lowest value -499"):
        read_volume(_nrrd(tmp_path / "above.nrrd", above))
    with pytest.raises(InputError, match="is 64x63 pixels; DistilIQA needs slices of at least 64x64"):
        read_volume(_nrrd(tmp_path / "small.nrrd", np.full((1, 63, 64), -1000, dtype=np.int16)))
    nan = np.full((2, 64, 64), -1000.0, dtype=np.float32)
    nan[1, 5, 5] = np.nan
    with pytest.raises(InputError, match="contains 1 NaN or infinite voxel values"):
        read_volume(_nrrd(tmp_path / "nan.nrrd", nan), force=True)


def test_z_gaps_are_steps_larger_than_one_and_a_half_typical_steps():
    assert z_gaps(np.array([0.0, 2.5, 5.0, 10.0, 12.5])) == [(5.0, 10.0)]
    assert z_gaps(np.array([12.5, 0.0, 10.0, 2.5, 5.0])) == [(5.0, 10.0)]  # any order
    assert z_gaps(np.array([0.0, 2.0, 4.0, 7.0, 9.0])) == []  # a step of exactly 1.5 typical steps is no gap
    assert z_gaps(np.array([0.0, 2.0, 4.0, 7.01, 9.01])) == [(4.0, 7.01)]
    assert z_gaps(np.array([0.0, 10.0])) == [] and z_gaps(np.array([1.0, 1.0, 1.0, 5.0])) == []


def test_a_series_uid_that_is_not_there_is_named(tmp_path, phantom_hu):
    write_series(phantom_hu[:3], tmp_path / "a", series_uid="1.2.3.4", spacing_mm=(2.8, 2.8, 2.5))
    with pytest.raises(InputError, match=f"no DICOM series with SeriesInstanceUID 9.9 in {tmp_path}$"):
        read_volume(tmp_path, series_uid="9.9")

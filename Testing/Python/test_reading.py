"""Reading real files: DICOM series in several transfer syntaxes, package-shipped CT, volume formats."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from DistilIQALib.errors import InputError
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.io.reading import list_dicom_series, read_dicom_files, read_volume, z_gaps
from DistilIQALib.training.phantoms import phantom_volume

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
    from DistilIQALib.quality.preprocessing import window_to_unit

    unit = window_to_unit(phantom_hu[0])
    Image.fromarray(np.rint(unit * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    tifffile.imwrite(tmp_path / "slice.tif", unit.astype(np.float32))
    from_png = read_volume(tmp_path / "slice.png")
    from_tiff = read_volume(tmp_path / "slice.tif")
    assert from_tiff.metadata["intensity"] == "windowed"
    np.testing.assert_allclose(window_to_unit(from_tiff.hu[0]), unit, atol=1e-6)
    np.testing.assert_allclose(window_to_unit(from_png.hu[0]), unit, atol=1 / 255)
    assert from_png.hu.dtype == np.float32 and from_tiff.hu.dtype == np.float32


def test_hu_tiff_is_read_as_hu(tmp_path, phantom_hu):
    tifffile.imwrite(tmp_path / "hu.tif", np.rint(phantom_hu[0]).astype(np.int16))
    volume = read_volume(tmp_path / "hu.tif")
    np.testing.assert_array_equal(volume.hu[0], np.rint(phantom_hu[0]))
    assert volume.metadata["intensity"] == "hu"


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
    assert z_gaps(np.array([0.0, 1.0, 5.0])) == [(1.0, 5.0)]  # three slices: steps 1 and 4, median 2.5
    assert z_gaps(np.array([0.0, 0.5, 1.0, 2.0, 2.5])) == [(1.0, 2.0)]  # thin slices: a median step below 1 mm


def test_a_series_uid_that_is_not_there_is_named(tmp_path, phantom_hu):
    write_series(phantom_hu[:3], tmp_path / "a", series_uid="1.2.3.4", spacing_mm=(2.8, 2.8, 2.5))
    with pytest.raises(InputError, match=f"no DICOM series with SeriesInstanceUID 9.9 in {tmp_path}$"):
        read_volume(tmp_path, series_uid="9.9")


def _air_with_water(nz, size=64):
    """A small volume with air (-1000 HU) around a water square (0 HU): passes the CT checks."""
    hu = np.full((nz, size, size), -1000, dtype=np.int16)
    hu[:, size // 4:size // 2, size // 4:size // 2] = 0
    hu[:, 0, :] = np.arange(size)  # a ramp along the first row: a flipped or transposed slice shows
    return hu


def _last_itk_line(error):
    return [line.strip() for line in str(error).splitlines() if line.strip()][-1]


def test_a_file_of_unknown_format_is_named_with_the_supported_suffixes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert str(error.value) == (f"cannot read {path}: not a DICOM file or a supported image format "
                                "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .tif, .tiff, .png)")


def test_a_truncated_dicom_file_is_called_truncated_or_corrupt(tmp_path):
    path = write_series(_air_with_water(1), tmp_path / "one", spacing_mm=(3.0, 3.0, 3.0))[0]
    whole = path.read_bytes()
    truncated = tmp_path / "slice.dcm"
    truncated.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(InputError) as error:
        read_volume(truncated)
    assert str(error.value) == f"cannot read {truncated}: the DICOM file is truncated or corrupt"


def test_a_truncated_volume_file_gives_itk_reason_on_one_line(tmp_path):
    """The reason is the last line of ITK's own (multi-line) message, here asked of SimpleITK directly."""
    path = _nrrd(tmp_path / "whole.nrrd", _air_with_water(4))
    truncated = tmp_path / "cut.nrrd"
    truncated.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(RuntimeError) as itk_error:
        sitk.ReadImage(str(truncated))
    assert len(str(itk_error.value).splitlines()) > 2
    with pytest.raises(InputError) as error:
        read_volume(truncated)
    assert str(error.value) == (f"cannot read {truncated}: the file is truncated or corrupt "
                                f"({_last_itk_line(itk_error.value)})")


def test_an_overlong_reason_is_cut_to_300_characters(tmp_path):
    path = tmp_path / "long.nrrd"
    header = b"NRRD0004\ntype: " + b"x" * 400 + b"\ndimension: 2\nsizes: 64 64\nencoding: raw\n\n"  # an unknown type
    path.write_bytes(header + bytes(8192))
    with pytest.raises(RuntimeError) as itk_error:
        sitk.ReadImage(str(path))
    reason = _last_itk_line(itk_error.value)
    assert len(reason) > 300
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert str(error.value) == f"cannot read {path}: the file is truncated or corrupt ({reason[:300]})"


def test_a_corrupt_compressed_slice_in_a_series_gives_a_one_line_error(tmp_path):
    paths = write_series(_air_with_water(3), tmp_path, spacing_mm=(3.0, 3.0, 3.0), transfer_syntax="rle")
    ds = pydicom.dcmread(paths[1])
    damaged = bytearray(ds.PixelData)
    damaged[len(damaged) // 2:-8] = b"\xff" * (len(damaged) - 8 - len(damaged) // 2)
    ds.PixelData = bytes(damaged)
    ds.save_as(paths[1])
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    message = str(error.value)
    assert message.startswith(f"cannot read the DICOM series in {tmp_path}: ITK ERROR: GDCMImageIO(")
    assert "\n" not in message and "Exception thrown" not in message


def test_a_folder_without_dicom_files_and_an_empty_folder_are_told_apart(tmp_path):
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "readme.txt").write_text("no images here\n")
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "notes")
    assert str(error.value) == f"no DICOM series found in {tmp_path / 'notes'} (the files there are not DICOM images)"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "empty")
    assert str(error.value) == f"folder is empty: {tmp_path / 'empty'}"


def test_two_series_in_one_folder_are_listed_with_their_own_files(tmp_path):
    hu = _air_with_water(5)
    plain = write_series(hu, tmp_path, series_uid="1.2.3.4", spacing_mm=(3.0, 3.0, 3.0))
    for path in plain:  # a series without SeriesDescription
        ds = pydicom.dcmread(path)
        del ds.SeriesDescription
        ds.save_as(path)
    bone = write_series(hu[:3] + 100, tmp_path, series_uid="1.2.3.5", series_description="bone",
                        spacing_mm=(3.0, 3.0, 3.0))
    listed = {s["uid"]: (s["description"], sorted(s["files"])) for s in list_dicom_series(tmp_path)}
    assert listed == {"1.2.3.4": ("", sorted(str(p) for p in plain)), "1.2.3.5": ("bone", sorted(str(p) for p in bone))}
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    assert str(error.value) == (f"{tmp_path} holds 2 DICOM series, pick one with --series UID: "
                                "1.2.3.4 (no description, 5 files); 1.2.3.5 (bone, 3 files)")
    picked = read_volume(tmp_path, series_uid="1.2.3.5")  # the other series' files beside it are no broken files
    np.testing.assert_array_equal(picked.hu, hu[:3] + 100)


def test_a_folder_with_one_dicom_slice_is_read_with_its_header(tmp_path):
    hu = _air_with_water(1)
    write_series(hu, tmp_path, spacing_mm=(3.0, 3.0, 2.0), series_description="single")
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.metadata["num_files"] == "1" and volume.metadata["series_description"] == "single"
    assert volume.metadata["kvp"] == str(pydicom.dcmread(next(tmp_path.iterdir())).KVP)


def test_a_series_mixing_matrix_sizes_is_refused_naming_the_sizes(tmp_path):
    paths = write_series(_air_with_water(4), tmp_path, spacing_mm=(3.0, 3.0, 3.0))
    by_z = sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))
    ds = pydicom.dcmread(by_z[2])
    ds.Rows, ds.Columns = 32, 48
    ds.PixelData = np.full((32, 48), -1000, dtype=np.int16).tobytes()
    ds.save_as(by_z[2])
    with pytest.raises(InputError) as error:
        read_dicom_files([str(path) for path in by_z], "my series")
    assert str(error.value) == (f"the DICOM series in my series mixes matrix sizes: 64x64 ({by_z[0].name}), "
                                f"48x32 ({by_z[2].name})")
    with pytest.raises(InputError, match=f"^the DICOM series in {tmp_path} mixes matrix sizes: "):
        read_volume(tmp_path)


def test_read_dicom_files_names_an_unreadable_file_and_keeps_the_source(tmp_path):
    hu = _air_with_water(3)
    paths = write_series(hu, tmp_path, spacing_mm=(3.0, 3.0, 3.0))
    by_z = sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))
    volume = read_dicom_files([str(path) for path in by_z], "my series")
    assert volume.source == "my series"
    np.testing.assert_array_equal(volume.hu, hu)
    by_z[1].write_bytes(by_z[1].read_bytes()[:200])
    with pytest.raises(InputError) as error:
        read_dicom_files([str(path) for path in by_z], "my series")
    assert str(error.value) == f"cannot read the DICOM series in my series: file {by_z[1].name} is truncated or corrupt"


def test_broken_dicom_files_beside_a_series_are_named(tmp_path):
    paths = write_series(_air_with_water(5), tmp_path, spacing_mm=(3.0, 3.0, 3.0))
    (tmp_path / "README.txt").write_text("not DICOM, not a slice: ignored\n")
    assert read_volume(tmp_path).num_slices == 5
    first, second = paths[1], paths[3]
    first.write_bytes(first.read_bytes()[:-3000])  # DICM preamble kept, the pixel data cut short
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    assert str(error.value) == f"cannot read the DICOM series in {tmp_path}: file {first.name} is truncated or corrupt"
    second.write_bytes(second.read_bytes()[:-3000])
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    assert str(error.value) == (f"cannot read the DICOM series in {tmp_path}: file {min(first.name, second.name)} "
                                "and 1 more is truncated or corrupt")


def _move_slice(path, z_mm):
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z_mm]
    ds.save_as(path)


def test_tilted_gantry_series_with_an_absent_slice_keeps_each_slice_centre_z(tmp_path):
    """With a tilted gantry the slice centre lies above or below the file's position (its top left corner)."""
    tilt = np.deg2rad(20.0)
    paths = write_series(_air_with_water(5), tmp_path, spacing_mm=(1.0, 1.0, 3.0), origin_mm=(-30.0, -30.0, 100.0),
                         column_direction=(0.0, np.cos(tilt), np.sin(tilt)))
    headers = {path: pydicom.dcmread(path) for path in paths}
    absent = sorted(paths, key=lambda path: float(headers[path].ImagePositionPatient[2]))[1]
    absent.unlink()

    def centre_z(ds):
        row_z, column_z = float(ds.ImageOrientationPatient[2]), float(ds.ImageOrientationPatient[5])
        row_mm, column_mm = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        return (float(ds.ImagePositionPatient[2]) + row_z * (ds.Columns - 1) / 2 * column_mm
                + column_z * (ds.Rows - 1) / 2 * row_mm)

    expected = sorted(centre_z(ds) for path, ds in headers.items() if path != absent)
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.z_mm(), expected, atol=1e-3)
    assert expected[0] - 100.0 == pytest.approx(31.5 * np.sin(tilt), abs=1e-3)


def test_coronal_series_with_as_many_files_as_axial_slices_keeps_its_grid(tmp_path):
    """Coronal files all state the same top z: they are not the axial slices, whose z the grid gives."""
    coronal = np.full((64, 64, 64), -1000, dtype=np.int16)
    coronal[:, 20:40, 20:40] = 0
    write_series(coronal, tmp_path, spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 63.0),
                 row_direction=(1, 0, 0), column_direction=(0, 0, -1))
    volume = read_volume(tmp_path)
    assert volume.slice_z_mm is None and "z_gaps_mm" not in volume.metadata
    np.testing.assert_allclose(volume.z_mm(), np.arange(64.0), atol=1e-6)


def test_an_absent_thin_slice_is_found(tmp_path):
    paths = write_series(_air_with_water(5), tmp_path, spacing_mm=(3.0, 3.0, 0.5), origin_mm=(0.0, 0.0, 0.0))
    z_of = {path: float(pydicom.dcmread(path).ImagePositionPatient[2]) for path in paths}
    absent = min(paths, key=lambda path: abs(z_of[path] - 0.5))
    absent.unlink()
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.z_mm(), [0.0, 1.0, 1.5, 2.0], atol=1e-6)
    assert volume.metadata["z_gaps_mm"] == [(0.0, 1.0)] and volume.metadata["num_files"] == "4"


@pytest.mark.parametrize("spacing, moved_by, irregular", [(5.0, 0.04, False), (5.0, 0.06, True),
                                                           (0.5, 0.01, False), (0.5, 0.02, True)])
def test_positions_off_the_grid_by_up_to_a_hundredth_of_the_spacing_keep_the_grid(tmp_path, spacing, moved_by,
                                                                                  irregular):
    """Rounded positions are no missing slice: the grid stays unless a slice is off it by more than 1 % of
    the spacing (at least 0.01 mm)."""
    paths = write_series(_air_with_water(3), tmp_path, spacing_mm=(3.0, 3.0, spacing), origin_mm=(0.0, 0.0, -spacing))
    middle = min(paths, key=lambda path: abs(float(pydicom.dcmread(path).ImagePositionPatient[2])))
    _move_slice(middle, f"{moved_by:g}")
    volume = read_volume(tmp_path)
    if irregular:
        np.testing.assert_allclose(volume.z_mm(), [-spacing, moved_by, spacing], atol=1e-9)
    else:
        assert volume.slice_z_mm is None
        np.testing.assert_allclose(volume.z_mm(), [-spacing, 0.0, spacing], atol=1e-9)


def test_a_file_whose_position_is_not_three_numbers_gives_no_file_positions(tmp_path):
    paths = write_series(_air_with_water(3), tmp_path, spacing_mm=(3.0, 3.0, 2.0))
    ds = pydicom.dcmread(paths[0])
    ds.ImagePositionPatient = [0, 0]
    ds.save_as(paths[0])
    volume = read_volume(tmp_path)
    assert volume.num_slices == 3 and volume.slice_z_mm is None and "z_gaps_mm" not in volume.metadata


@pytest.mark.parametrize("low, high, windowed", [(0.0, 1.0, True), (-1000.0, 0.0, False), (-1000.0, 1.0, False),
                                                 (0.0, 1.5, False)])
def test_a_float_tiff_is_a_display_image_only_within_zero_to_one(tmp_path, low, high, windowed):
    values = np.full((64, 64), low, dtype=np.float32)
    values[20:40, 20:40] = high
    tifffile.imwrite(tmp_path / "slice.tif", values)
    volume = read_volume(tmp_path / "slice.tif", force=True)
    assert volume.metadata["intensity"] == ("windowed" if windowed else "hu")
    # W350/L40 shows -135 HU .. 215 HU over [0, 1]
    expected = values * 350.0 - 135.0 if windowed else values
    np.testing.assert_allclose(volume.hu[0], expected, atol=1e-4)


def test_a_2d_volume_format_file_is_never_taken_for_a_display_image(tmp_path):
    values = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    volume = read_volume(path, force=True)
    assert "intensity" not in volume.metadata
    np.testing.assert_array_equal(volume.hu[0], values)


def test_a_2d_file_becomes_one_slice_at_z_0_with_1_mm_nominal_spacing(tmp_path):
    image = sitk.GetImageFromArray(_air_with_water(1)[0])
    image.SetSpacing((0.7, 0.8))
    image.SetOrigin((-10.0, 20.0))
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    assert volume.spacing_mm == pytest.approx((0.7, 0.8, 1.0)) and volume.origin_mm == pytest.approx((-10.0, 20.0, 0.0))
    np.testing.assert_array_equal(volume.z_mm(), [0.0])


def test_a_float64_volume_file_is_held_as_float32(tmp_path):
    hu = _air_with_water(2).astype(np.float64) + 0.25
    volume = read_volume(_nrrd(tmp_path / "double.nrrd", hu))
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, hu)  # quarter HU are exact in float32


def test_colour_and_vector_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "rgb.png")
    assert str(error.value) == f"{tmp_path / 'rgb.png'} is a colour (RGB) image; DistilIQA needs a greyscale CT image"
    two_components = sitk.GetImageFromArray(np.full((4, 64, 64, 2), -1000.0, dtype=np.float32), isVector=True)
    sitk.WriteImage(two_components, str(tmp_path / "field.mha"))
    with pytest.raises(InputError, match="needs a greyscale CT image$"):
        read_volume(tmp_path / "field.mha")


def test_a_4d_file_with_one_time_point_is_read_as_a_volume_and_more_are_refused(tmp_path):
    hu = _air_with_water(3)
    one = sitk.GetImageFromArray(hu[np.newaxis], isVector=False)
    assert one.GetDimension() == 4 and one.GetSize() == (64, 64, 3, 1)
    sitk.WriteImage(one, str(tmp_path / "one.mha"))
    np.testing.assert_array_equal(read_volume(tmp_path / "one.mha").hu, hu)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([hu, hu]), isVector=False), str(tmp_path / "two.mha"))
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "two.mha")
    assert str(error.value) == (f"{tmp_path / 'two.mha'} is a 4D image; DistilIQA scores 2D slices or 3D volumes, "
                                "not 4D series")


def test_a_path_that_is_not_there_is_named_and_a_read_volume_names_its_path(tmp_path):
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "absent.nii.gz")
    assert str(error.value) == f"no such file or folder: {tmp_path / 'absent.nii.gz'}"
    path = _nrrd(tmp_path / "ct.nrrd", _air_with_water(2))
    assert read_volume(path).source == str(path)


def test_a_series_with_an_absent_slice_is_read_without_itk_warnings_on_stderr(tmp_path, capfd):
    """ITK warns on stderr about non-uniform spacing; the gap is reported in the metadata instead."""
    paths = write_series(_air_with_water(5), tmp_path, spacing_mm=(3.0, 3.0, 2.0))
    sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))[1].unlink()
    capfd.readouterr()
    volume = read_volume(tmp_path)
    assert volume.metadata["z_gaps_mm"] == [(0.0, 4.0)]
    assert capfd.readouterr().err == ""


def test_a_volume_file_without_slices_is_refused(tmp_path):
    header = tmp_path / "empty.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 0\nElementType = MET_SHORT\n"
                      "ElementDataFile = empty.raw\n")
    (tmp_path / "empty.raw").write_bytes(b"")
    with pytest.raises(InputError) as error:
        read_volume(header)
    assert str(error.value) == f"{header} has no slices"


def test_non_finite_voxels_are_counted_in_every_slice_of_a_long_volume(tmp_path):
    hu = np.full((70, 64, 64), -1000.0, dtype=np.float32)
    hu[0, 1, 1] = np.nan
    hu[40, 2, 2] = np.inf
    hu[40, 3, 3] = -np.inf
    with pytest.raises(InputError, match=" contains 3 NaN or infinite voxel values$"):
        read_volume(_nrrd(tmp_path / "nan.nrrd", hu))


def test_a_multi_frame_dicom_file_in_a_folder_keeps_the_z_of_its_frames(tmp_path):
    """One file holds three slices 2 mm apart: its one position is no reason to move the slices."""
    hu = _air_with_water(3)
    hu[:, 1, 0] = [10, 20, 30]
    path = write_series(hu[:1], tmp_path, spacing_mm=(3.0, 3.0, 2.0), origin_mm=(0.0, 0.0, -2.0))[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.SpacingBetweenSlices = "2.0"
    ds.PixelData = hu.tobytes()
    ds.save_as(path)
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.slice_z_mm is None and "z_gaps_mm" not in volume.metadata
    np.testing.assert_allclose(volume.z_mm(), [-2.0, 0.0, 2.0], atol=1e-6)

"""Derived DICOM (simulated doses) keeps the template's rescale, so the HU written are the HU read back."""
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from DistilIQALib.dicom_writing import write_like, write_series
from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.reading import read_volume


def _template(tmp_path, slope, intercept, syntax="explicit"):
    """One phantom slice stored unsigned with the given rescale (the way many scanners store CT)."""
    path = write_series(phantom_volume(1, size=64, pixel_mm=5.6, seed=1), tmp_path / "template",
                        spacing_mm=(5.6, 5.6, 2.5), transfer_syntax=syntax, series_description="Abdomen")[0]
    if syntax != "explicit":
        return path  # as written: signed, slope 1, intercept 0
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64)
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = np.rint((hu - intercept) / slope).astype(np.uint16).tobytes()
    ds.save_as(path)
    return path


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (2.0, -2048.0), (0.5, -1024.0)])
def test_written_hu_come_back_through_the_templates_rescale(tmp_path, slope, intercept):
    template = _template(tmp_path, slope, intercept)
    hu = np.random.default_rng(0).uniform(-1000, 1000, (64, 64))
    target = write_like(template, hu, tmp_path / "out" / "slice.dcm", "dose 0.25")
    ds = pydicom.dcmread(target)
    assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept
    expected_stored = np.rint((hu - intercept) / slope)
    np.testing.assert_array_equal(ds.pixel_array, expected_stored)
    np.testing.assert_allclose(ds.pixel_array * slope + intercept, hu, atol=slope / 2 + 1e-9)
    np.testing.assert_allclose(read_volume(target).hu[0], expected_stored * slope + intercept, atol=1e-3)


def test_values_outside_the_stored_range_are_clipped_not_wrapped(tmp_path):
    template = _template(tmp_path, 1.0, -1024.0)  # unsigned: HU -1024..64511
    hu = np.full((64, 64), -3000.0)
    hu[0, 0] = 70000.0
    ds = pydicom.dcmread(write_like(template, hu, tmp_path / "clipped.dcm", "x"))
    assert ds.pixel_array[1, 1] == 0 and ds.pixel_array[0, 0] == 65535
    signed = write_series(np.zeros((1, 64, 64)), tmp_path / "signed", spacing_mm=(5.6, 5.6, 2.5))[0]
    hu[0, 0], hu[0, 1] = -40000.0, 40000.0
    ds = pydicom.dcmread(write_like(signed, hu, tmp_path / "signed.dcm", "x"))
    assert (ds.pixel_array[0, 0], ds.pixel_array[0, 1], ds.pixel_array[1, 1]) == (-32768, 32767, -3000)


def test_derived_series_has_its_own_stable_uids_and_says_it_is_derived(tmp_path):
    template = _template(tmp_path, 1.0, -1024.0)
    original = pydicom.dcmread(template)
    hu = np.zeros((64, 64))
    first = pydicom.dcmread(write_like(template, hu, tmp_path / "a.dcm", "dose 0.5"))
    again = pydicom.dcmread(write_like(template, hu, tmp_path / "b.dcm", "dose 0.5"))
    other = pydicom.dcmread(write_like(template, hu, tmp_path / "c.dcm", "dose 0.25"))
    assert first.SeriesInstanceUID == again.SeriesInstanceUID != other.SeriesInstanceUID
    assert first.SeriesInstanceUID != original.SeriesInstanceUID
    assert first.SOPInstanceUID != original.SOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SeriesDescription == "Abdomen (dose 0.5)" and list(first.ImageType) == ["DERIVED", "SECONDARY",
                                                                                         "AXIAL"]
    assert first.PatientID == original.PatientID and first.ImagePositionPatient == original.ImagePositionPatient
    assert (first.BitsAllocated, first.BitsStored, first.HighBit) == (16, 16, 15)


def test_a_compressed_template_gives_an_uncompressed_derived_file(tmp_path):
    template = _template(tmp_path, 1.0, 0.0, syntax="rle")  # signed, slope 1, intercept 0
    assert pydicom.dcmread(template).file_meta.TransferSyntaxUID == RLELossless
    hu = np.random.default_rng(1).integers(-1000, 1000, (64, 64)).astype(np.float64)
    ds = pydicom.dcmread(write_like(template, hu, tmp_path / "plain.dcm", "x"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(ds.pixel_array, hu)


def test_series_geometry_tags_follow_the_spacing_and_directions(tmp_path):
    paths = write_series(np.zeros((3, 64, 80)), tmp_path, spacing_mm=(0.5, 0.75, 2.0), origin_mm=(10.0, 20.0, 30.0),
                         column_direction=(0.0, -1.0, 0.0))
    by_number = {int(ds.InstanceNumber): ds for ds in map(pydicom.dcmread, paths)}
    # rows along +x, columns along -y: slices stack along x cross (-y) = -z
    assert [float(v) for v in by_number[3].ImagePositionPatient] == [10.0, 20.0, 26.0]
    assert [float(v) for v in by_number[1].PixelSpacing] == [0.75, 0.5]  # row spacing (y) first
    assert float(by_number[2].SliceLocation) == -28.0 and float(by_number[1].SliceThickness) == 2.0
    assert (by_number[1].Rows, by_number[1].Columns) == (64, 80)
    with pytest.raises(ValueError, match="unknown transfer syntax 'zip'"):
        write_series(np.zeros((1, 64, 64)), tmp_path / "zip", transfer_syntax="zip")

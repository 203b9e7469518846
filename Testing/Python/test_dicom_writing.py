"""Derived DICOM (simulated doses) keeps the template's rescale, so the HU written are the HU read back."""
import re

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from DistilIQALib.io.dicom_writing import write_like, write_series
from DistilIQALib.io.reading import read_volume
from DistilIQALib.training.phantoms import phantom_volume


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


# --- headers and pixels as a reader sees them (read back with pydicom only) ---------------------------------------

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_PATTERN = r"[0-9]+(\.[0-9]+)+"


def _is_valid_uid(value):
    text = str(value)
    return 0 < len(text) <= 64 and re.fullmatch(UID_PATTERN, text) is not None and all(
        part == "0" or not part.startswith("0") for part in text.split("."))


def _read_by_number(paths):
    return {int(ds.InstanceNumber): ds for ds in map(pydicom.dcmread, paths)}


def test_series_header_defaults_name_a_ct_phantom_with_fixed_dates(tmp_path):
    slices = _read_by_number(write_series(np.zeros((2, 8, 8)), tmp_path))
    assert sorted(slices) == [1, 2]
    for ds in slices.values():
        assert ds.Modality == "CT"
        assert ds.SeriesDescription == "DistilIQA phantom"
        assert ds.PatientID == "PHANTOM" and str(ds.PatientName) == "PHANTOM"
        assert (ds.StudyDate, ds.SeriesDate) == ("20240101", "20240101")
        assert (ds.StudyTime, ds.SeriesTime) == ("120000", "120000")
        assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.RescaleType == "HU"
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 350.0)
        assert float(ds.KVP) == 120.0 and ds.ConvolutionKernel == "STANDARD"
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert (ds.Rows, ds.Columns) == (8, 8)


def test_series_header_uses_the_given_names_uids_and_extra_tags(tmp_path):
    paths = write_series(np.zeros((2, 8, 8)), tmp_path, modality="OT", series_description="Liver 1.25 mm",
                         series_uid="1.2.3.4.5", study_uid="1.2.3.4", patient_id="P042",
                         extra={"ProtocolName": "ABDOMEN", "KVP": "100"})
    for ds in map(pydicom.dcmread, paths):
        assert ds.Modality == "OT" and ds.SeriesDescription == "Liver 1.25 mm"
        assert ds.SeriesInstanceUID == "1.2.3.4.5" and ds.StudyInstanceUID == "1.2.3.4"
        assert ds.PatientID == "P042" and str(ds.PatientName) == "P042"
        assert ds.ProtocolName == "ABDOMEN" and float(ds.KVP) == 100.0


def test_series_uids_are_valid_shared_per_series_and_distinct_per_slice(tmp_path):
    slices = list(map(pydicom.dcmread, write_series(np.zeros((3, 8, 8)), tmp_path)))
    for key in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(getattr(ds, key)) for ds in slices}
        assert len(values) == 1 and _is_valid_uid(values.pop()), key
    series, study, frame = (str(getattr(slices[0], k)) for k in
                            ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"))
    assert len({series, study, frame}) == 3
    instances = [str(ds.SOPInstanceUID) for ds in slices]
    assert len(set(instances)) == 3 and all(map(_is_valid_uid, instances))
    assert not {series, study, frame} & set(instances)
    for ds in slices:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    other = pydicom.dcmread(write_series(np.zeros((1, 8, 8)), tmp_path / "other")[0])
    assert other.SeriesInstanceUID != series and other.StudyInstanceUID != study
    assert other.FrameOfReferenceUID != frame


@pytest.mark.parametrize("syntax", ["explicit", "rle"])
def test_rewriting_a_series_uid_gives_the_same_instance_uids_and_file_names(tmp_path, syntax):
    first = write_series(np.zeros((3, 8, 8)), tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.1",
                         transfer_syntax=syntax)
    again = write_series(np.zeros((3, 8, 8)), tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.1",
                         transfer_syntax=syntax)
    assert sorted(p.name for p in first) == sorted(p.name for p in again)
    assert len(list(tmp_path.iterdir())) == 3
    for path in again:
        assert re.fullmatch(r"CT[0-9a-f]{12}\.dcm", path.name)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    other = write_series(np.zeros((3, 8, 8)), tmp_path / "other", series_uid="1.2.826.0.1.3680043.2.1125.2",
                         transfer_syntax=syntax)
    assert not {p.name for p in other} & {p.name for p in first}


def test_series_positions_orientation_and_spacing_per_instance(tmp_path):
    paths = write_series(np.zeros((3, 8, 16)), tmp_path, spacing_mm=(0.625, 0.8, 1.25),
                         origin_mm=(-100.5, 50.25, -20.0), row_direction=(0.0, 1.0, 0.0),
                         column_direction=(0.0, 0.0, -1.0))
    slices = _read_by_number(paths)
    # rows along +y, columns along -z: the normal is y cross (-z) = -x, so slice n sits at origin - 1.25 n x
    for n in (1, 2, 3):
        ds = slices[n]
        assert [float(v) for v in ds.ImagePositionPatient] == [-100.5 - 1.25 * (n - 1), 50.25, -20.0]
        assert [float(v) for v in ds.ImageOrientationPatient] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.625]
        assert float(ds.SliceThickness) == 1.25
        assert float(ds.SliceLocation) == 100.5 + 1.25 * (n - 1)
        assert (ds.Rows, ds.Columns) == (8, 16)


def test_series_default_geometry(tmp_path):
    slices = _read_by_number(write_series(np.zeros((2, 8, 8)), tmp_path))
    assert [float(v) for v in slices[2].ImagePositionPatient] == [-179.0, -179.0, 2.5]
    assert [float(v) for v in slices[1].ImageOrientationPatient] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert [float(v) for v in slices[1].PixelSpacing] == [0.7, 0.7]
    assert float(slices[1].SliceThickness) == 2.5 and float(slices[2].SliceLocation) == 2.5


@pytest.mark.parametrize("syntax, uid", [("explicit", ExplicitVRLittleEndian),
                                         ("implicit", "1.2.840.10008.1.2"),
                                         ("rle", RLELossless)])
def test_series_pixels_are_rounded_clipped_hu_in_the_chosen_transfer_syntax(tmp_path, syntax, uid):
    hu = np.zeros((2, 8, 8))
    hu[0, 0, :6] = [-40000.0, 40000.0, -32768.4, 32767.4, 1.5, -1000.6]
    hu[1] = np.arange(64).reshape(8, 8) * 7.0 - 200.0
    slices = _read_by_number(write_series(hu, tmp_path, transfer_syntax=syntax))
    assert slices[1].file_meta.TransferSyntaxUID == uid
    first = slices[1].pixel_array
    assert first.dtype == np.int16
    assert first[0, :6].tolist() == [-32768, 32767, -32768, 32767, 2, -1001]
    np.testing.assert_array_equal(first[1:], 0)
    np.testing.assert_array_equal(slices[2].pixel_array, np.arange(64).reshape(8, 8) * 7 - 200)


def test_unknown_transfer_syntax_error_lists_the_choices(tmp_path):
    with pytest.raises(ValueError) as error:
        write_series(np.zeros((1, 8, 8)), tmp_path, transfer_syntax="zip")
    assert str(error.value) == "unknown transfer syntax 'zip'; choose explicit, implicit, rle, jpeg2000, jpegls"


def test_series_and_derived_files_are_written_into_new_nested_folders(tmp_path):
    paths = write_series(np.zeros((1, 8, 8)), tmp_path / "a" / "b" / "series")
    assert paths[0].parent == tmp_path / "a" / "b" / "series" and paths[0].is_file()
    target = write_like(paths[0], np.zeros((8, 8)), tmp_path / "c" / "d" / "derived.dcm", "x")
    assert target == tmp_path / "c" / "d" / "derived.dcm" and target.is_file()


def _small_template(tmp_path, name="template", slope=0.5, intercept=-1024.0, slices=2, description="Chest"):
    """A small series stored unsigned with a non-trivial rescale; returns the paths by instance number."""
    paths = write_series(np.zeros((slices, 8, 8)), tmp_path / name, spacing_mm=(0.9, 0.8, 3.0),
                         origin_mm=(-10.0, -20.0, 100.0), series_description=description, patient_id="P7")
    by_number = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.full((8, 8), 2048, dtype=np.uint16).tobytes()
        ds.save_as(path)
        by_number[int(ds.InstanceNumber)] = path
    return by_number


def test_derived_file_keeps_the_source_header_and_stores_hu_through_its_rescale(tmp_path):
    template = _small_template(tmp_path)[2]
    source = pydicom.dcmread(template)
    hu = np.linspace(-1000.0, 1000.0, 64).reshape(8, 8)
    hu[0, :3] = [115.2500228881836, 666.7499389648438, 629.2500610351562]
    derived = pydicom.dcmread(write_like(template, hu.astype(np.float32), tmp_path / "out.dcm", "dose 0.5"))
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation", "InstanceNumber",
                "Modality", "StudyDate", "StudyTime", "Rows", "Columns", "KVP", "ConvolutionKernel", "SOPClassUID",
                "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        assert getattr(derived, key) == getattr(source, key), key
    assert int(derived.InstanceNumber) == 2 and float(derived.RescaleSlope) == 0.5
    assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert derived.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert _is_valid_uid(derived.SeriesInstanceUID) and _is_valid_uid(derived.SOPInstanceUID)
    assert derived.SeriesDescription == "Chest (dose 0.5)"
    stored = derived.pixel_array
    assert stored.dtype == np.uint16
    # float32 input values taken exactly: (HU + 1024) / 0.5 rounded
    assert stored[0, :3].tolist() == [2279, 3381, 3307]
    np.testing.assert_array_equal(stored.ravel()[3:], np.rint((np.linspace(-1000.0, 1000.0, 64)[3:]
                                                                 .astype(np.float32).astype(np.float64)
                                                                 + 1024.0) / 0.5))


def test_derived_uids_depend_on_the_source_slice_and_series(tmp_path):
    series_a = _small_template(tmp_path, "a")
    series_b = _small_template(tmp_path, "b")
    hu = np.zeros((8, 8))
    one = pydicom.dcmread(write_like(series_a[1], hu, tmp_path / "a1.dcm", "dose 0.5"))
    two = pydicom.dcmread(write_like(series_a[2], hu, tmp_path / "a2.dcm", "dose 0.5"))
    again = pydicom.dcmread(write_like(series_a[2], hu, tmp_path / "a2again.dcm", "dose 0.5"))
    other = pydicom.dcmread(write_like(series_b[1], hu, tmp_path / "b1.dcm", "dose 0.5"))
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != other.SeriesInstanceUID
    assert len({one.SOPInstanceUID, two.SOPInstanceUID, other.SOPInstanceUID}) == 3
    assert again.SOPInstanceUID == two.SOPInstanceUID and again.SeriesInstanceUID == two.SeriesInstanceUID
    for ds in (one, two, other):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_derived_file_from_a_source_without_rescale_or_description_stores_hu_signed(tmp_path):
    template = _small_template(tmp_path, slices=1)[1]
    ds = pydicom.dcmread(template)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.SeriesDescription, ds.PixelRepresentation
    ds.save_as(template)
    hu = np.arange(64, dtype=np.float64).reshape(8, 8) * 10.0 - 300.0
    derived = pydicom.dcmread(write_like(template, hu, tmp_path / "out.dcm", "dose 0.5"))
    assert derived.SeriesDescription == "(dose 0.5)"
    np.testing.assert_array_equal(np.frombuffer(derived.PixelData, dtype="<i2").reshape(8, 8), hu)


def test_derived_file_from_a_source_with_empty_rescale_values_stores_hu(tmp_path):
    template = _small_template(tmp_path, slices=1)[1]
    ds = pydicom.dcmread(template)
    ds.RescaleSlope = ds.RescaleIntercept = ""
    ds.PixelRepresentation = 1
    ds.save_as(template)
    hu = np.arange(64, dtype=np.float64).reshape(8, 8) * 10.0 - 300.0
    derived = pydicom.dcmread(write_like(template, hu, tmp_path / "out.dcm", "x"))
    np.testing.assert_array_equal(derived.pixel_array, hu)


def test_derived_file_has_complete_file_meta_even_when_the_source_lacks_some(tmp_path):
    template = _small_template(tmp_path, slices=1)[1]
    ds = pydicom.dcmread(template)
    del ds.file_meta.FileMetaInformationVersion, ds.file_meta.ImplementationClassUID
    del ds.file_meta.ImplementationVersionName
    ds.save_as(template)  # as given, as some software writes it (the default of pydicom 2.4 and 3 alike)
    target = write_like(template, np.zeros((8, 8)), tmp_path / "out.dcm", "x")
    assert target.read_bytes()[128:132] == b"DICM"
    derived = pydicom.dcmread(target)
    assert derived.file_meta.FileMetaInformationVersion == b"\x00\x01"
    assert _is_valid_uid(derived.file_meta.ImplementationClassUID)
    assert derived.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID

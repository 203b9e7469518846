"""The scanner's dose: real dose reports, header CTDIvol, AAPM 220 water-equivalent diameter and SSDE, and every
bad input a clear row that costs nothing else."""
import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from DistilIQALib.archive.batch import run_batch
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.dose import reports, size
from DistilIQALib.dose.headers import NO_CTDIVOL, read_slice_doses
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume

DATA = Path(__file__).resolve().parents[1] / "Data" / "dose"
GE_REPORT = DATA / "ge_revolution_rdsr.dcm"
GE_SCREEN = DATA / "ge_revolution_dose_screen.dcm"
GE_NO_CTDIVOL = DATA / "ge_revolution_ct_no_ctdivol.dcm"
MANIFEST = DATA / "MANIFEST.md"


def _siemens_ct() -> Path:
    """pydicom-data's Siemens CT image (CTDIvol 29.77 mGy, body phantom, cut by the field of view)."""
    import data_store

    return Path(data_store.__file__).parent / "data" / "bad_sequence.dcm"


def test_the_committed_real_files_are_the_ones_the_manifest_names():
    text = MANIFEST.read_text()
    for path in DATA.glob("*.dcm"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in text, path.name


def test_a_real_ge_report_parses_to_its_own_total_and_events():
    report = reports.read_dose_report(GE_REPORT)
    assert report.status == "read" and report.reason is None
    assert (report.manufacturer, report.scanner_model) == ("GE MEDICAL SYSTEMS", "Revolution CT")
    assert report.dlp_total_mgycm == pytest.approx(1174.95) and report.events_declared == 12
    assert len(report.events) == 12 and len({e.event_uid for e in report.events}) == 12
    localizers = [e for e in report.events if e.localizer]
    assert len(localizers) == 1 and localizers[0].acquisition_type == "Constant Angle Acquisition"
    assert localizers[0].dlp_mgycm is None and localizers[0].scanning_length_mm == pytest.approx(329.8)
    head = [e for e in report.events if e.phantom == "head16"]
    assert [(e.ctdivol_mgy, e.dlp_mgycm) for e in head] == [(16.87, 298.12)]  # one event on the head phantom
    spirals = [e for e in report.events if not e.localizer]
    assert all(e.acquisition_type == "Spiral Acquisition" for e in spirals)  # SNOMED RT P5-08001 on this scanner
    assert all(e.target_region == "Head" and e.protocol == "1.2 DT Hjärna" for e in report.events)
    dose = reports.study_dose([report.row()], _events(report))
    assert dose.dlp_total_mgycm == pytest.approx(1174.95) and len(dose.events) == 12 and dose.notes == []
    # the listed event DLPs are rounded: they add up to 1172.20, within 1% of the scanner's own total
    assert sum(e["dlp_mgycm"] or 0 for e in dose.events) == pytest.approx(1172.20)


def _events(report):
    return [{**row, "report_sop_uid": report.sop_uid} for row in report.event_rows()]


def _ge_dataset():
    return pydicom.dcmread(GE_REPORT)


def _acquisitions(ds):
    return [item for item in ds.ContentSequence if reports._code_key(item) == reports.CT_ACQUISITION]


def _dose_items(acquisition, concept):
    dose = reports._child(acquisition, reports.CT_DOSE)
    return reports._child(dose, concept) if dose is not None else None


def test_unit_spellings_are_normalised_and_an_odd_unit_is_a_reason_not_a_number(tmp_path):
    ds = _ge_dataset()
    spirals = [a for a in _acquisitions(ds) if _dose_items(a, reports.DLP) is not None]
    units = ["mGycm", "mGy*cm", "cGy.cm", "furlong"]
    for acquisition, unit in zip(spirals, units):
        _dose_items(acquisition, reports.DLP).MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue = unit
    del _dose_items(spirals[4], reports.MEAN_CTDIVOL).MeasuredValueSequence[0].MeasurementUnitsCodeSequence
    report = reports.report_from_dataset(ds)
    by_uid = {e.event_uid: e for e in report.events}
    originals = {e.event_uid: e for e in reports.read_dose_report(GE_REPORT).events}
    first, second, third, fourth, fifth = (by_uid[a.ContentSequence[3].UID] for a in spirals[:5])
    assert first.dlp_mgycm == originals[first.event_uid].dlp_mgycm  # mGycm is mGy.cm
    assert second.dlp_mgycm == originals[second.event_uid].dlp_mgycm
    assert third.dlp_mgycm == pytest.approx(10 * originals[third.event_uid].dlp_mgycm)  # cGy.cm
    assert fourth.dlp_mgycm is None and fifth.ctdivol_mgy is None
    assert report.status == "read"
    assert f"({fourth.event_uid}): DLP unit 'furlong' not understood" in report.reason
    assert f"({fifth.event_uid}): CTDIvol has no unit" in report.reason


def _copy_report(events, total, declared=None):
    """A report of the GE study holding the given acquisition items (deep copies) and its own total."""
    ds = _ge_dataset()
    ds.SOPInstanceUID = generate_uid()
    accumulated = reports._child(ds, reports.CT_ACCUMULATED)
    reports._child(accumulated, reports.DLP_TOTAL).MeasuredValueSequence[0].NumericValue = total
    reports._child(accumulated, reports.EVENTS_TOTAL).MeasuredValueSequence[0].NumericValue = \
        declared if declared is not None else len(events)
    others = [item for item in ds.ContentSequence if reports._code_key(item) != reports.CT_ACQUISITION]
    ds.ContentSequence = others + [copy.deepcopy(item) for item in events]
    return ds


def test_several_reports_of_a_study_count_each_event_once_and_say_where_totals_disagree():
    ds = _ge_dataset()
    acquisitions = _acquisitions(ds)
    original = reports.report_from_dataset(ds)
    cumulative = reports.report_from_dataset(_copy_report(acquisitions, 1174.95))  # repeats all 12 events
    later = [copy.deepcopy(a) for a in acquisitions[-2:]]
    for item in later:
        item.ContentSequence[3].UID = generate_uid()  # two new events: a continuation report
    continuation = reports.report_from_dataset(_copy_report(later, 143.49))
    wrong = reports.report_from_dataset(_copy_report(acquisitions[:2], 999.0))  # its own total is wrong
    rows = [r.row() for r in (original, cumulative, continuation)]
    events = _events(original) + _events(cumulative) + _events(continuation)
    dose = reports.study_dose(rows, events)
    assert len(dose.events) == 14
    assert dose.dlp_total_mgycm == pytest.approx(1172.20 + 72.0 + 71.49)
    assert all("states a DLP total" in note for note in dose.notes) and len(dose.notes) == 3  # none holds all 14
    dose = reports.study_dose(rows + [wrong.row()], events + _events(wrong))
    assert any(wrong.sop_uid in note and "999.00" in note for note in dose.notes)
    # the same rows in another order (a merged store) give the same study dose
    again = reports.study_dose(list(reversed(rows)), list(reversed(events)))
    assert again.dlp_total_mgycm == pytest.approx(1172.20 + 72.0 + 71.49) and len(again.events) == 14


def test_bad_reports_are_rows_with_reasons(tmp_path):
    screen = reports.read_dose_report(GE_SCREEN)
    assert screen.status == "not read" and "dose screen" in screen.reason and "not read" in screen.reason
    not_dose = reports.read_dose_report(get_testdata_file("test-SR.dcm"))
    assert not_dose.status == "problem" and not_dose.reason.startswith("not an X-ray radiation dose report")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(GE_REPORT.read_bytes()[:60000])
    cut = reports.read_dose_report(truncated)
    assert cut.status == "problem" and cut.reason.startswith("not a readable DICOM file")
    empty = reports.report_from_dataset(_copy_report([], 0.0, declared=12))
    assert empty.status == "problem" and "lists no irradiation event" in empty.reason and empty.events == []
    malformed = _ge_dataset()
    reports._child(reports._child(malformed, reports.CT_ACCUMULATED),
                   reports.DLP_TOTAL).MeasuredValueSequence[0].MeasurementUnitsCodeSequence = []
    report = reports.report_from_dataset(malformed)
    assert report.dlp_total_mgycm is None and "DLP total has no unit" in report.reason and len(report.events) == 12


def test_headers_give_ctdivol_with_its_phantom_or_say_why_not():
    siemens = read_slice_doses(str(_siemens_ct()))
    assert len(siemens) == 1
    assert siemens[0].ctdivol_mgy == pytest.approx(29.7696, abs=1e-3) and siemens[0].phantom == "body32"
    assert (siemens[0].kvp, siemens[0].exposure_mas, siemens[0].modulation) == (120.0, 442.0, "XYZ_EC")
    ge = read_slice_doses(str(GE_NO_CTDIVOL))
    assert ge[0].ctdivol_mgy is None and ge[0].notes == [NO_CTDIVOL] and ge[0].kvp == 120.0


def test_the_phantom_codes_written_out_are_pydicoms_and_the_reports():
    from pydicom.sr.codedict import codes

    from DistilIQALib.dose import headers

    assert headers.PHANTOMS == {("DCM", codes.DCM.IECHeadDosimetryPhantom.value): "head16",
                                ("DCM", codes.DCM.IECBodyDosimetryPhantom.value): "body32"}
    assert headers.PHANTOMS == reports.PHANTOMS


def test_enhanced_ct_frames_carry_their_own_ctdivol():
    from pydicom.dataset import Dataset

    ds = Dataset()
    phantom = Dataset()
    phantom.CodeValue, phantom.CodingSchemeDesignator, phantom.CodeMeaning = "113690", "DCM", "IEC Head Dosimetry"
    frames = []
    for ctdi in (10.0, 12.0):
        exposure = Dataset()
        exposure.CTDIvol, exposure.ExposureInmAs, exposure.CTDIPhantomTypeCodeSequence = ctdi, 100.0, [phantom]
        group = Dataset()
        group.CTExposureSequence = [exposure]
        frames.append(group)
    shared = Dataset()
    details = Dataset()
    details.KVP = 100
    shared.CTXRayDetailsSequence = [details]
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.SharedFunctionalGroupsSequence = [shared]
    from DistilIQALib.dose.headers import frame_doses

    doses = frame_doses(ds)
    assert [(d.ctdivol_mgy, d.phantom, d.exposure_mas, d.kvp) for d in doses] == [
        (10.0, "head16", 100.0, 100.0), (12.0, "head16", 100.0, 100.0)]


def _hand_dw_cm(hu, pixel_mm):
    """AAPM Report 220 by hand, on the full-resolution slice: threshold, the largest object, its holes filled."""
    from scipy import ndimage

    labels, count = ndimage.label(hu > -500)
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    region = ndimage.binary_fill_holes(largest)
    water_area_mm2 = np.sum(hu[region] / 1000.0 + 1.0) * pixel_mm[0] * pixel_mm[1]
    return 2 * math.sqrt(water_area_mm2 / math.pi) / 10.0


def test_ssde_of_a_real_siemens_ct_matches_a_hand_calculation_and_flags_the_cut_body():
    image = sitk.ReadImage(str(_siemens_ct()))
    hu = sitk.GetArrayFromImage(image)[0].astype(np.float64)
    pixel = image.GetSpacing()[:2]
    hand_dw = _hand_dw_cm(hu, pixel)
    hand_ssde = 29.7696282 * 3.704369 * math.exp(-0.03671937 * hand_dw)  # AAPM 204, 32 cm phantom
    from DistilIQALib.dose.series import scan_dose
    from DistilIQALib.io.reading import read_volume

    volume = read_volume(_siemens_ct(), force=True)
    dose = scan_dose(volume, read_slice_doses(str(_siemens_ct())))
    assert dose.series["dw_cm"] == pytest.approx(hand_dw, rel=0.01)
    assert dose.series["ssde_mgy"] == pytest.approx(hand_ssde, rel=0.05)
    assert dose.ssde_mgy[0] == pytest.approx(hand_ssde, rel=0.05)
    # the lumbar spine at a 147 mm field of view: the body runs off the image, Dw is far too small
    assert dose.series["dw_truncated"] == 1 and "cut by the field of view" in dose.series["dose_note"]


def test_the_conversion_is_aapm_204_and_refuses_to_extrapolate():
    # AAPM Report 204's exponential fits (as the ACR dose index registry quotes them): a exp(-b D)
    assert size.ssde_mgy(10.0, "body32", 24.0) == pytest.approx(10.0 * 3.704369 * math.exp(-0.03671937 * 24.0))
    assert size.ssde_mgy(10.0, "head16", 16.0) == pytest.approx(10.0 * 1.874799 * math.exp(-0.03871313 * 16.0))
    # smaller patients get more dose than the phantom, larger ones less
    assert size.ssde_mgy(10.0, "body32", 20.0) > size.ssde_mgy(10.0, "body32", 30.0) > 10.0
    assert size.ssde_mgy(10.0, None, 24.0) is None and size.ssde_mgy(None, "body32", 24.0) is None
    value, why = size.ssde(10.0, "body32", 60.0)
    assert value is None and "outside the 8-45 cm" in why


def test_a_water_cylinder_has_its_own_diameter():
    grid = (np.arange(512) - 255.5) * 0.7
    radius = np.hypot(*np.meshgrid(grid, grid))
    hu = np.where(radius < 150.0, 0.0, -1000.0)  # 30 cm of water
    dw, truncated = size.water_equivalent_diameter_cm(hu, (0.7, 0.7))
    assert dw == pytest.approx(30.0, rel=0.005) and not truncated
    lung = np.where(radius < 60.0, -800.0, hu)  # air-like inside: Aw falls, the outline stays
    assert size.water_equivalent_diameter_cm(lung, (0.7, 0.7))[0] == pytest.approx(
        2 * math.sqrt((math.pi * 15.0 ** 2 - 0.8 * math.pi * 6.0 ** 2) / math.pi), rel=0.01)
    cut = np.where(radius < 220.0, 0.0, -1000.0)  # 44 cm of water on a 36 cm image
    assert size.water_equivalent_diameter_cm(cut, (0.7, 0.7))[1] is True


def test_batch_records_series_dose_and_every_dose_object(tmp_path, tiny_weights):
    root = tmp_path / "archive"
    phantom = phantom_volume(6, size=128, pixel_mm=2.8, seed=3)
    body = {"CTDIvol": 12.5, "KVP": 120, "ExposureModulationType": "XYZ"}
    write_series(phantom, root / "ct", spacing_mm=(2.8, 2.8, 5.0), series_uid="1.2.826.0.1.3680043.8.498.34.1",
                 study_uid="1.2.826.0.1.3680043.8.498.34.9", extra=body)
    write_series(phantom, root / "ct_nodose", spacing_mm=(2.8, 2.8, 5.0),
                 series_uid="1.2.826.0.1.3680043.8.498.34.2", study_uid="1.2.826.0.1.3680043.8.498.34.9")
    (root / "dose").mkdir()
    for path in (GE_REPORT, GE_SCREEN):
        (root / "dose" / path.name).write_bytes(path.read_bytes())
    (root / "dose" / "other.dcm").write_bytes(Path(get_testdata_file("test-SR.dcm")).read_bytes())
    (root / "dose" / "cut.dcm").write_bytes(GE_REPORT.read_bytes()[:60000])
    store = tmp_path / "results.sqlite"
    summary = run_batch(root, store, Scorer(str(tiny_weights), device="cpu"), workers=1)
    assert summary.scored == 2 and summary.dose_reports == 3
    with ResultStore(store) as results:
        series = {row["series_uid"]: row for row in results.series_rows()}
        statuses = {Path(row["path"]).name: (row["status"], row["reason"]) for row in results.dose_report_rows()}
        events = results.dose_event_rows()
        dosed = series["1.2.826.0.1.3680043.8.498.34.1"]
        slices = results.slice_rows(dosed["series_uid"], dosed["weights_id"])
        problems = [(p["path"], p["message"]) for p in results.problem_rows()]
    assert dosed["ctdivol_mgy"] == 12.5 and dosed["tube_current_modulation"] == "XYZ"
    assert dosed["ctdi_phantom"] is None and "phantom is not stated" in dosed["dose_note"]
    assert dosed["ssde_mgy"] is None and dosed["dw_cm"] > 10
    assert all(row["ctdivol_mgy"] == 12.5 and row["dw_cm"] for row in slices)
    bare = series["1.2.826.0.1.3680043.8.498.34.2"]
    assert bare["ctdivol_mgy"] is None and bare["dose_note"] == NO_CTDIVOL and bare["dw_cm"] > 10
    assert statuses["ge_revolution_rdsr.dcm"] == ("read", None)
    assert statuses["ge_revolution_dose_screen.dcm"][0] == "not read"
    assert statuses["other.dcm"][0] == "problem"
    assert len(events) == 12 and statuses["ge_revolution_rdsr.dcm"] == ("read", None)
    # the truncated copy cannot even be opened: a problem row with its reason
    assert any(p.endswith("cut.dcm") and m == "unreadable: truncated or corrupt DICOM header (OSError)"
               for p, m in problems)
    # a rerun reads nothing again
    again = run_batch(root, store, Scorer(str(tiny_weights), device="cpu"), workers=1)
    assert again.dose_reports == 0 and again.already_done == 2


def _score(tmp_path, tiny_weights, source, name, *options):
    import csv
    import json

    from DistilIQALib.cli import main

    out, summary = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
    assert main(["score", str(source), "--weights", str(tiny_weights), "--device", "cpu", "--out", str(out),
                 "--json", str(summary), *options]) == 0
    with open(out, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return rows, json.loads(summary.read_text())["scanner_dose"]


def _body_phantom_code():
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113691", "DCM", "IEC Body Dosimetry Phantom"
    return code


def test_score_writes_each_slices_own_ctdivol_dw_and_ssde_and_the_series_dose(tmp_path, tiny_weights):
    phantom = phantom_volume(6, size=128, pixel_mm=2.8, seed=5)
    folder = tmp_path / "ct"
    write_series(phantom, folder, spacing_mm=(2.8, 2.8, 5.0), series_uid="1.2.826.0.1.3680043.8.498.34.21",
                 extra={"CTDIPhantomTypeCodeSequence": [_body_phantom_code()]})
    # tube-current modulation: each file states its own CTDIvol, rising with its position along z
    files = sorted((float(pydicom.dcmread(path).ImagePositionPatient[2]), path) for path in folder.iterdir())
    stated = {}
    for rank, (z, path) in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.CTDIvol = 8.0 + 0.5 * rank
        stated[z] = ds.CTDIvol
        ds.save_as(path)
    rows, dose = _score(tmp_path, tiny_weights, folder, "ct")
    assert len(rows) == 6 and len(set(stated.values())) == 6
    for row in rows:
        # the row's CTDIvol is the file's at the row's own position, its SSDE AAPM 204's at the row's Dw
        ctdi, dw, value = float(row["ctdivol_mgy"]), float(row["dw_cm"]), float(row["ssde_mgy"])
        assert ctdi == stated[min(stated, key=lambda z: abs(z - float(row["z_mm"])))]
        assert value == pytest.approx(ctdi * 3.704369 * math.exp(-0.03671937 * dw), rel=1e-6)
    from DistilIQALib.io.reading import read_volume

    volume = read_volume(folder)
    hand = [_hand_dw_cm(volume.hu[int(row["slice_index"])].astype(np.float64), (2.8, 2.8)) for row in rows]
    assert [float(r["dw_cm"]) for r in rows] == pytest.approx(hand, rel=0.03)
    assert dose["ctdivol_mgy"] == pytest.approx(np.mean(list(stated.values())))
    assert dose["ctdi_phantom"] == "body32" and dose["dw_truncated"] is False and dose["dose_note"] is None
    assert dose["dw_cm"] == pytest.approx(hand[3], rel=0.03)
    assert dose["ssde_mgy"] == pytest.approx(dose["ctdivol_mgy"] * 3.704369 * math.exp(-0.03671937 * hand[3]),
                                             rel=0.05)
    # the same volume as a NIfTI file carries no dose: empty columns and the reason
    image = sitk.GetImageFromArray(phantom.astype(np.int16))
    image.SetSpacing((2.8, 2.8, 5.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    rows, dose = _score(tmp_path, tiny_weights, tmp_path / "ct.nii.gz", "nifti")
    assert all(row[name] == "" for row in rows for name in ("ctdivol_mgy", "dw_cm", "ssde_mgy"))
    assert dose["ctdivol_mgy"] is None and dose["ssde_mgy"] is None and dose["dw_cm"] is None
    assert dose["dose_note"].startswith("not a DICOM input")


def test_score_of_real_ct_images_gives_their_dose_or_says_why_not(tmp_path, tiny_weights):
    rows, dose = _score(tmp_path, tiny_weights, _siemens_ct(), "siemens", "--force")
    image = sitk.ReadImage(str(_siemens_ct()))
    hand_dw = _hand_dw_cm(sitk.GetArrayFromImage(image)[0].astype(np.float64), image.GetSpacing()[:2])
    hand_ssde = 29.7696282 * 3.704369 * math.exp(-0.03671937 * hand_dw)
    assert float(rows[0]["ctdivol_mgy"]) == pytest.approx(29.7696, abs=1e-3)
    assert float(rows[0]["ssde_mgy"]) == pytest.approx(hand_ssde, rel=0.05)
    assert dose["ctdi_phantom"] == "body32" and dose["ssde_mgy"] == pytest.approx(hand_ssde, rel=0.05)
    assert dose["dw_truncated"] is True and "cut by the field of view" in dose["dose_note"]
    rows, dose = _score(tmp_path, tiny_weights, GE_NO_CTDIVOL, "ge", "--force")
    assert rows[0]["ctdivol_mgy"] == rows[0]["ssde_mgy"] == ""
    assert dose["ctdivol_mgy"] is None and dose["dose_note"] == NO_CTDIVOL and dose["dw_cm"] > 10


def test_dw_is_measured_where_ssde_needs_it_and_all_slices_at_once_as_one_by_one():
    from DistilIQALib.dose.headers import SliceDose
    from DistilIQALib.dose.series import DW_MATRIX, scan_dose
    from DistilIQALib.volume import CTVolume

    hu = phantom_volume(7, size=256, pixel_mm=1.4, seed=2)
    volume = CTVolume(hu=hu, spacing_mm=(1.4, 1.4, 5.0), origin_mm=(0.0, 0.0, 0.0), direction=np.eye(3),
                      source="phantom")
    doses = [SliceDose(ctdivol_mgy=10.0, phantom="body32") if k % 2 else SliceDose() for k in range(7)]
    dose = scan_dose(volume, doses)
    step = 256 // DW_MATRIX
    one_by_one = [size.water_equivalent_diameter_cm(hu[k].reshape(128, step, 128, step).mean(axis=(1, 3)),
                                                    (1.4 * step, 1.4 * step)) for k in range(7)]
    assert [dw is not None for dw in dose.dw_cm] == [bool(k % 2) for k in range(7)]
    assert [dw for dw in dose.dw_cm if dw is not None] == pytest.approx([one_by_one[k][0] for k in (1, 3, 5)])
    assert dose.series["dw_cm"] == pytest.approx(one_by_one[3][0])  # the mid-scan slice's
    # no slice states a CTDIvol: no per-slice Dw, but the series' still is the mid-scan slice's
    middle = scan_dose(volume, [SliceDose()] * 7)
    assert middle.dw_cm == [None] * 7 and middle.series["dw_cm"] == pytest.approx(one_by_one[3][0])

""""Above routine" from the delivered dose: where the headers give CTDIvol and its phantom, the series' SSDE is
judged against the region's reference dose; from the noise only where it is not known; every output says which."""
import csv
import json
import math

import numpy as np
import pydicom
import pytest

from DistilIQALib.dose.size import ssde
from DistilIQALib.quality.interpretation import (
    BASIS_NOISE,
    BASIS_SSDE,
    REFERENCE_DRL_MGY,
    REFERENCE_DW_CM,
    reference_ssde_mgy,
    region_verdicts,
)

from .shipped_ct import shipped_ct_file

#: One routine chest reference, as the shipped model's (above routine by the noise from twice the routine dose).
CHEST = {"chest": {"intercept": math.log(100.0 * 2.5), "per_cm": 0.0, "basis": "fitted", "above_routine_from": 2.0,
                   "bands": [{"name": "good", "min_value": 0.45}, {"name": "borderline", "min_value": 0.3},
                             {"name": "inadequate", "min_value": None}]}}


def test_each_regions_reference_dose_is_its_drl_converted_by_the_dose_packages_own_ssde():
    for region, (ctdivol, phantom) in REFERENCE_DRL_MGY.items():
        value, why = ssde(ctdivol, phantom, REFERENCE_DW_CM[region])
        assert why is None and reference_ssde_mgy(region) == pytest.approx(value, abs=0.05), region
    assert reference_ssde_mgy("unknown") is None
    # a head is dosed several times a body's CTDIvol, the abdomen more than the chest
    assert reference_ssde_mgy("head") > reference_ssde_mgy("neck") > reference_ssde_mgy("abdomen") > \
        reference_ssde_mgy("chest")


def test_the_delivered_dose_decides_above_routine_and_the_noise_only_without_it():
    # noise 5 HU at 2.5 mm: four routine doses by the noise (a low-noise iterative reconstruction, say)
    noise, regions = [5.0] * 4, ["chest"] * 4
    quiet = region_verdicts(noise, 2.5, [30.0] * 4, regions, [""] * 4, CHEST)
    assert quiet.above_routine.all() and quiet.above_basis == [BASIS_NOISE] * 4
    assert quiet.note[0].startswith("above routine: the dose could be lowered (judged from the noise)")
    # the same images at a routine delivered dose: good, and not above routine
    routine = region_verdicts(noise, 2.5, [30.0] * 4, regions, [""] * 4, CHEST, ssde_mgy=9.0)
    assert routine.adequacy == ["good"] * 4 and not routine.above_routine.any()
    assert routine.above_basis == [BASIS_SSDE] * 4 and routine.note == [""] * 4
    # a noisy slice at twice the reference dose is above routine all the same (its verdict stays the noise's)
    noisy = region_verdicts([16.0], 2.5, [30.0], ["chest"], [""], CHEST, ssde_mgy=[21.0])
    assert noisy.adequacy == ["borderline"] and noisy.above_routine.tolist() == [True]
    assert noisy.note[0] == ("above routine: the dose could be lowered (SSDE 21.0 mGy above the chest's reference "
                             f"{reference_ssde_mgy('chest'):.1f} mGy)")
    # per slice: NaN where a slice's series has no SSDE
    mixed = region_verdicts(noise, 2.5, [30.0] * 4, regions, [""] * 4, CHEST, ssde_mgy=[9.0, np.nan, None, 30.0])
    assert mixed.above_basis == [BASIS_SSDE, BASIS_NOISE, BASIS_NOISE, BASIS_SSDE]
    assert mixed.above_routine.tolist() == [False, True, True, True]


def test_an_upper_bound_ssde_clears_a_dose_but_never_flags_one():
    below = region_verdicts([5.0], 2.5, [30.0], ["chest"], [""], CHEST, ssde_mgy=8.0, ssde_upper_bound=True)
    assert below.above_basis == [BASIS_SSDE] and not below.above_routine[0]
    above = region_verdicts([5.0], 2.5, [30.0], ["chest"], [""], CHEST, ssde_mgy=80.0, ssde_upper_bound=True)
    assert above.above_basis == [BASIS_NOISE] and above.above_routine[0]  # four routine doses by the noise


def test_a_sharp_kernel_gets_no_soft_tissue_verdict_but_its_dose_is_still_judged():
    found = region_verdicts([40.0, 40.0], 1.0, [30.0] * 2, ["chest", "chest"], [""] * 2, CHEST, kernel="LUNG",
                            manufacturer="GE MEDICAL SYSTEMS", ssde_mgy=[25.0, np.nan])
    assert found.adequacy == ["unknown", "unknown"]
    assert found.above_routine.tolist() == [True, False] and found.above_basis == [BASIS_SSDE, ""]
    assert found.note[0].startswith("no soft-tissue verdict") and "SSDE 25.0 mGy above" in found.note[0]


def _siemens_copy(tmp_path, name, ctdivol, uid=None, count=1):
    """The real Siemens slice of pydicom-data (CTDIvol 29.77 mGy on the body phantom, its neck cut by the field of
    view), with its CTDIvol as given (``None``: removed); with ``uid``, ``count`` copies of it one slice thickness
    apart, a series of their own."""
    folder = tmp_path / name
    folder.mkdir()
    for n in range(count):
        ds = pydicom.dcmread(shipped_ct_file("bad_sequence.dcm"))
        if uid:
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.35.{uid}"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.35.{uid}.{n}"
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = position[:2] + [position[2] + n * float(ds.SliceThickness)]
            ds.InstanceNumber = n + 1
        if ctdivol is None:
            del ds.CTDIvol
        else:
            ds.CTDIvol = ctdivol
        ds.save_as(folder / f"slice{n}.dcm")
    return folder


def _score(tmp_path, source, name):
    from DistilIQALib.cli import main

    out, summary = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
    assert main(["score", str(source), "--device", "cpu", "--region", "neck", "--out", str(out), "--json",
                 str(summary)]) == 0
    with open(out, newline="") as stream:
        return list(csv.DictReader(stream)), json.loads(summary.read_text())


def test_score_says_what_above_routine_rests_on_for_a_real_siemens_slice(tmp_path):
    from DistilIQALib.quality.scoring import verdict_line
    from DistilIQALib.slicer_bridge.jobs import read_score_results

    # as scanned: the body is cut by the field of view, so its SSDE (61.7 mGy) is only an upper bound, above the
    # neck's reference: it decides nothing, and the noise decides
    rows, summary = _score(tmp_path, shipped_ct_file("bad_sequence.dcm"), "stated")
    assert summary["scanner_dose"]["dw_truncated"] is True
    assert summary["scanner_dose"]["ssde_mgy"] > reference_ssde_mgy("neck")
    assert [r["above_routine_basis"] for r in rows] == [BASIS_NOISE]
    assert summary["above_routine_basis"] == BASIS_NOISE
    # at a tenth of that CTDIvol even the upper bound is below the reference: not above routine, from the dose
    rows, summary = _score(tmp_path, _siemens_copy(tmp_path, "tenth", 2.977), "tenth")
    assert summary["scanner_dose"]["ssde_mgy"] < reference_ssde_mgy("neck")
    assert [(r["above_routine_basis"], r["above_routine"]) for r in rows] == [(BASIS_SSDE, "")]
    assert summary["above_routine_basis"] == BASIS_SSDE and summary["above_routine"] is False
    said = "not above routine (judged from the delivered dose: SSDE 6.2 mGy against the reference neck 28.1 mGy)"
    assert said in verdict_line(summary)
    # Slicer reads the run's files back: the same basis, and the same words in its summary
    back = read_score_results(tmp_path / "tenth.csv", tmp_path / "tenth.json")
    assert back.above_routine_basis == [BASIS_SSDE] and said in verdict_line(back.summary())
    # without a CTDIvol in the header: from the noise, and the outputs say so
    rows, summary = _score(tmp_path, _siemens_copy(tmp_path, "none", None), "none")
    assert summary["scanner_dose"]["ssde_mgy"] is None
    assert [r["above_routine_basis"] for r in rows] == [BASIS_NOISE] and summary["above_routine_basis"] == BASIS_NOISE
    assert "judged from the noise" in verdict_line(summary)


def test_the_batch_store_keeps_the_basis_of_each_series(tmp_path):
    from DistilIQALib.archive.batch import stored_scores
    from DistilIQALib.cli import main

    from .conftest import query_rows

    root = tmp_path / "archive"
    root.mkdir()
    _siemens_copy(root, "tenth", 2.977, uid=1, count=3)
    _siemens_copy(root, "none", None, uid=2, count=3)
    store = tmp_path / "results.sqlite"
    assert main(["batch", str(root), "--db", str(store), "--device", "cpu", "--region", "neck"]) == 0
    series = dict(query_rows(store, "SELECT series_uid, above_routine_basis FROM series"))
    assert series == {"1.2.826.0.1.3680043.8.498.35.1": BASIS_SSDE, "1.2.826.0.1.3680043.8.498.35.2": BASIS_NOISE}
    slices = query_rows(store, "SELECT series_uid, above_routine_basis FROM slices")
    assert sorted(slices) == sorted((uid, basis) for uid, basis in series.items() for _ in range(3))
    for uid, basis in series.items():
        assert stored_scores(store, uid).above_routine_basis == [basis] * 3

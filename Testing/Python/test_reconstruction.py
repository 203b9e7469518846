"""An iterative reconstruction named in the headers: where its noise reduction is known (Philips iDose4 levels),
a slice is judged at the noise filtered back-projection would leave at the same dose, which is what the routine
references were fitted on; where it is not, the verdict note says that the noise overstates the dose."""
import csv
import json
import math

import numpy as np
import pydicom
import pytest

from DistilIQALib.quality.interpretation import region_verdicts
from DistilIQALib.quality.kernels import IDOSE_NOISE_REDUCTION, iterative_reconstruction

from .shipped_ct import shipped_ct_file
from .test_above_routine import CHEST


def test_iterative_reconstructions_are_read_as_vendors_name_them():
    # Pancreas-CT-CB_001's own description (Philips Brilliance Big Bore, kernel B)
    assert iterative_reconstruction("PANCREAS DI, iDose (3)", "B", "Philips")[0] == pytest.approx(0.77)
    assert iterative_reconstruction("Chest iDose4 level 5", "B", "Philips")[0] == pytest.approx(0.63)
    assert iterative_reconstruction("Abdomen iDose L7", "B", "Philips")[0] == pytest.approx(0.45)
    assert sorted(IDOSE_NOISE_REDUCTION) == list(range(1, 8))
    assert list(IDOSE_NOISE_REDUCTION.values()) == sorted(IDOSE_NOISE_REDUCTION.values())
    named = (("iDose4", "B", "Philips", "iDose"), ("ABD ASiR-V 50%", "STANDARD", "GE MEDICAL SYSTEMS", "ASiR-V"),
             ("Abdomen", "I30f\\3", "SIEMENS", "SAFIRE"), ("AIDR3D STD", "FC18", "TOSHIBA", "AIDR 3D"),
             ("Body FIRST", "FC08", "CANON", "FIRST"), ("Chest IMR1", "B", "Philips", "IMR"))
    for description, kernel, vendor, name in named:
        factor, said = iterative_reconstruction(description, kernel, vendor)
        assert math.isnan(factor) and name in said and "not known" in said, description
    # filtered back-projection: the corpus' own descriptions, and words that only look like a product's name
    for description, kernel, vendor in (("ThoraxRoutine  8.0.0  B40f", "B40f", "SIEMENS"),
                                        ("CT CH/AB/PEL", "STANDARD", "GE MEDICAL SYSTEMS"),
                                        ("Body 1.0 CE", "FC17", "TOSHIBA"), ("FIRST PASS", "B", "Philips"),
                                        ("ROUTINE CHEST NON-CON", "STANDARD", ""), ("", "", "")):
        assert iterative_reconstruction(description, kernel, vendor) == (1.0, ""), description


def test_an_idose_series_is_judged_at_its_filtered_back_projection_noise():
    # the CHEST reference reads 100 / noise^2 routine doses at 2.5 mm: 13 HU is 0.59 (good), 6 HU 2.8 (above)
    noise, regions = [13.0, 6.0], ["chest", "chest"]
    plain = region_verdicts(noise, 2.5, [30.0] * 2, regions, [""] * 2, CHEST, kernel="B", manufacturer="Philips")
    idose = region_verdicts(noise, 2.5, [30.0] * 2, regions, [""] * 2, CHEST, kernel="B", manufacturer="Philips",
                            series_description="PANCREAS DI, iDose (3)")
    np.testing.assert_allclose(idose.dose_equivalent, plain.dose_equivalent * 0.77 ** 2, rtol=1e-12)
    assert plain.adequacy == ["good", "good"] and idose.adequacy == ["borderline", "good"]
    assert plain.above_routine.tolist() == [False, True] and idose.above_routine.tolist() == [False, False]
    assert all("iDose4 level 3" in note and "filtered back-projection" in note for note in idose.note)
    assert "(16.9 HU)" in idose.note[0]  # 13 HU / 0.77
    # a network's effective noise is scaled alike: the same learned dose equivalent where it agrees with the noise
    learned = region_verdicts(noise, 2.5, [30.0] * 2, regions, [""] * 2, CHEST, np.array(noise), 0.15, "B",
                              "Philips", series_description="PANCREAS DI, iDose (3)")
    np.testing.assert_allclose(learned.learned_dose_equivalent, idose.dose_equivalent, rtol=1e-12)
    # a strength not known here: the same reading as filtered back-projection, and the note says what it means
    unknown = region_verdicts(noise, 2.5, [30.0] * 2, regions, [""] * 2, CHEST, kernel="FC18", manufacturer="TOSHIBA",
                              series_description="AIDR3D STD")
    np.testing.assert_array_equal(unknown.dose_equivalent, plain.dose_equivalent)
    assert all("AIDR 3D" in note and "reads more dose" in note for note in unknown.note)


def test_the_cms_check_takes_the_measured_noise_of_an_idose_series():
    # 27 HU at 3 mm in the abdomen: under the CMS routine abdomen threshold of 29 HU as measured, so not capped
    references = {"abdomen": {**CHEST["chest"], "intercept": math.log(27.0 ** 2 * 3.0)}}
    found = region_verdicts([27.0], 3.0, [30.0], ["abdomen"], [""], references, kernel="B", manufacturer="Philips",
                            series_description="iDose (1)")
    assert not any("CMS" in note for note in found.note)
    assert found.dose_equivalent[0] == pytest.approx(0.89 ** 2)


def test_score_and_its_read_back_judge_a_real_slice_named_idose_at_its_filtered_back_projection_noise(tmp_path):
    from DistilIQALib.cli import main
    from DistilIQALib.slicer_bridge.jobs import read_score_results

    results = {}
    for name, description in (("plain", None), ("idose", "Neck iDose (4)")):
        ds = pydicom.dcmread(shipped_ct_file("bad_sequence.dcm"))
        if description:
            ds.SeriesDescription = description
        source = tmp_path / f"{name}.dcm"
        ds.save_as(source)
        out, summary = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
        assert main(["score", str(source), "--device", "cpu", "--region", "neck", "--out", str(out), "--json",
                     str(summary)]) == 0
        with open(out, newline="") as stream:
            rows = list(csv.DictReader(stream))
        results[name] = rows, json.loads(summary.read_text()), read_score_results(out, summary)
    (plain, _, plain_back), (idose, summary, back) = results["plain"], results["idose"]
    assert summary["series_description"] == "Neck iDose (4)"
    assert float(idose[0]["dose_equivalent"]) == pytest.approx(float(plain[0]["dose_equivalent"]) * 0.71 ** 2, abs=2e-3,
                                                               rel=2e-3)
    assert "iDose4 level 4" in idose[0]["verdict_note"]
    # Slicer reads the run's files back to the same verdicts
    assert back.adequacy == [idose[0]["adequacy"]] and "iDose4 level 4" in back.verdict_note[0]
    assert back.dose_equivalent[0] == pytest.approx(plain_back.dose_equivalent[0] * 0.71 ** 2, rel=1e-9)

"""The CMS CT measure's thresholds and check against the measure's own CQL and test cases, the exam categories,
and the FHIR result checked with a FHIR model library and read back the way the measure's CQL reads it."""
import json

import pytest

from DistilIQALib.dose import cms, fhir
from DistilIQALib.dose.categories import ExamFacts, exam_category, load_mapping, texts_of
from DistilIQALib.dose.exams import EXAM_COLUMNS
from DistilIQALib.errors import InputError

#: The measure's test cases (GitHub cqframework/ecqm-content-qicore-2025 at db5a7e143304b19b70cbf6a89e5ebeab9e40df61,
#: input/tests/measure/CMS1074FHIRCTIQR/*/CMS1074FHIR-v0.9.000-*.json): each Observation's category code, global
#: noise and size-adjusted dose with their units, and the MeasureReport's denominator, exclusion and numerator.
MEASURE_TEST_CASES = {
    "NUMERPass-HighDose": ([("LA31752-1", 63, "[hnsf'U]", 599, "mGy.cm")], 1, 0, 1),
    "NUMERPass-HighNoise": ([("LA31752-1", 65, "[hnsf'U]", 585, "mGy.cm")], 1, 0, 1),
    "NUMERPass-TwoScans": ([("LA31752-1", 65, "[hnsf'U]", 585, "mGy.cm"),
                            ("LA31752-1", 63, "[hnsf'U]", 585, "mGy.cm")], 2, 0, 1),
    "DENEXPass-FullBody": ([("LA31771-1", 63, "[hnsf'U]", 597, "mGy.cm")], 1, 1, 0),
    "DENOMFail-NoUnits": ([("LA31752-1", 63, None, 597, None)], 0, 0, 0),
    "DENOMFail-InvalidUnits": ([("LA31752-1", 63, "cm", 597, "cm")], 0, 0, 0),
    # one scan per category, each value one below its thresholds: all in the denominator, none in the numerator
    "DENOMPass-AllScans": ([("LA31752-1", 63, "[hnsf'U]", 597, "mGy.cm"), ("LA31753-9", 28, "[hnsf'U]", 643, "mGy.cm"),
                            ("LA31754-7", 28, "[hnsf'U]", 1259, "mGy.cm"), ("LA31755-4", 54, "[hnsf'U]", 92, "mGy.cm"),
                            ("LA31756-2", 31, "[hnsf'U]", 575, "mGy.cm"), ("LA31758-8", 54, "[hnsf'U]", 376, "mGy.cm"),
                            ("LA31759-6", 48, "[hnsf'U]", 376, "mGy.cm"),
                            ("LA31761-2", 48, "[hnsf'U]", 1281, "mGy.cm"),
                            ("LA31762-0", 114, "[hnsf'U]", 581, "mGy.cm"),
                            ("LA31763-8", 114, "[hnsf'U]", 1024, "mGy.cm"),
                            ("LA31764-6", 114, "[hnsf'U]", 1024, "mGy.cm"),
                            ("LA31765-3", 72, "[hnsf'U]", 319, "mGy.cm"),
                            ("LA31766-1", 24, "[hnsf'U]", 1259, "mGy.cm"),
                            ("LA31767-9", 24, "[hnsf'U]", 1259, "mGy.cm"),
                            ("LA31768-7", 28, "[hnsf'U]", 1636, "mGy.cm"),
                            ("LA31851-1", 24, "[hnsf'U]", 2519, "mGy.cm"),
                            ("LA31769-5", 24, "[hnsf'U]", 2284, "mGy.cm"),
                            ("LA31770-3", 24, "[hnsf'U]", 3091, "mGy.cm")], 18, 0, 0),
}


def measure_reads(observation):
    """What the measure's CQL makes of one Observation: ``(in denominator, excluded, in numerator)``.
    "Global Noise Value" / "Size Adjusted Value": status final, amended or corrected, the component's code, the
    unit string compared literally, exactly one such component; "Qualifies" with the CQL's thresholds."""
    def value(code, unit):
        if observation["status"] not in ("final", "amended", "corrected"):
            return None
        found = [c["valueQuantity"].get("value") for c in observation.get("component", [])
                 if c["code"]["coding"][0]["code"] == code and c["valueQuantity"].get("unit") == unit]
        return found[0] if len(found) == 1 else None

    noise, dose = value("96912-1", "[hnsf'U]"), value("96913-9", "mGy.cm")
    code = observation["valueCodeableConcept"]["coding"][0]["code"]
    if noise is None or dose is None:
        return False, False, False
    if code == "LA31771-1":
        return True, True, False
    thresholds = CQL_THRESHOLDS[code]
    return True, False, noise >= thresholds[0] or dose >= thresholds[1]


#: The table of "CT Scan Qualifies" in input/cql/AlaraCommonFunctions.cql (1.10.000) at the commit above,
#: code -> (noise HU, size-adjusted dose mGy.cm), typed here from that file.
CQL_THRESHOLDS = {
    "LA31752-1": (64, 598), "LA31753-9": (29, 644), "LA31754-7": (29, 1260), "LA31755-4": (55, 93),
    "LA31756-2": (32, 576), "LA31758-8": (55, 377), "LA31759-6": (49, 377), "LA31761-2": (49, 1282),
    "LA31762-0": (115, 582), "LA31763-8": (115, 1025), "LA31764-6": (115, 1832), "LA31765-3": (73, 320),
    "LA31766-1": (25, 1260), "LA31767-9": (25, 1260), "LA31768-7": (29, 1637), "LA31851-1": (25, 2520),
    "LA31769-5": (25, 2285), "LA31770-3": (25, 3092),
}


def _observation(code, noise, noise_unit, dose, dose_unit):
    def quantity(value, unit):
        return {"value": value, **({"unit": unit, "code": unit, "system": cms.UCUM} if unit else {})}
    return {"status": "final", "valueCodeableConcept": {"coding": [{"code": code}]},
            "component": [{"code": {"coding": [{"code": "96912-1"}]}, "valueQuantity": quantity(noise, noise_unit)},
                          {"code": {"coding": [{"code": "96913-9"}]}, "valueQuantity": quantity(dose, dose_unit)}]}


def test_categories_are_the_measures_table():
    assert len(cms.CATEGORIES) == 19 and len({c.code for c in cms.CATEGORIES}) == 19
    assert {c.code: (c.noise_hu, c.dose_mgycm) for c in cms.CATEGORIES if c.noise_hu is not None} == CQL_THRESHOLDS
    assert cms.BY_NAME[cms.FULL_BODY].code == "LA31771-1" and cms.BY_NAME[cms.FULL_BODY].noise_hu is None


@pytest.mark.parametrize("case", sorted(MEASURE_TEST_CASES))
def test_the_measures_test_cases_come_out_as_its_reports(case):
    scans, denominator, exclusion, numerator = MEASURE_TEST_CASES[case]
    read = [measure_reads(_observation(*scan)) for scan in scans]
    assert (sum(r[0] for r in read), sum(r[1] for r in read), sum(r[2] for r in read)) == (
        denominator, exclusion, numerator)
    # our check gives the same verdict for every scan the measure counts
    for scan, (counted, excluded, out) in zip(scans, read):
        category = cms.BY_CODE[scan[0]]
        check = cms.check_exam(category, scan[1], scan[3], "045Y")
        if counted and not excluded:
            assert check.out_of_range == ("yes" if out else "no"), (case, scan, check)
        elif excluded:
            assert check.out_of_range == "unknown" and "excluded" in check.reason


def test_thresholds_are_inclusive_and_rounded_as_written():
    routine = cms.BY_NAME["Abdomen and Pelvis Routine Dose"]
    assert cms.check_exam(routine, 29.0, 100.0, "050Y").out_of_range == "yes"
    assert cms.check_exam(routine, 28.96, 100.0, "050Y").out_of_range == "yes"  # written as 29.0
    assert cms.check_exam(routine, 28.94, 643.9, "050Y").out_of_range == "no"
    assert cms.check_exam(routine, 10.0, 644.0, "050Y").out_of_range == "yes"
    check = cms.check_exam(routine, 30.0, 500.0, "050Y")
    assert "global noise 30 HU >= 29" in check.reason and "size-adjusted DLP 500 mGy.cm < 644" in check.reason


def test_exclusions_and_missing_values_are_unknown_with_their_reason():
    chest = cms.BY_NAME["Chest Routine Dose"]
    assert cms.check_exam(chest, 80.0, 900.0, "017Y").reason.startswith("excluded: patient under 18")
    assert cms.check_exam(chest, 80.0, 900.0, "018Y").out_of_range == "yes"
    assert cms.check_exam(chest, 80.0, 900.0, "216M").out_of_range == "yes"  # 18 years in months
    assert cms.check_exam(chest, 80.0, 900.0, "200M").out_of_range == "unknown"
    assert "age not recorded" in cms.check_exam(chest, 80.0, 900.0, None).reason
    assert "does not read as an age" in cms.check_exam(chest, 80.0, 900.0, "old").reason
    full = cms.check_exam(cms.BY_NAME[cms.FULL_BODY], 80.0, 900.0, "050Y")
    assert full.out_of_range == "unknown" and "denominator exclusion" in full.reason
    missing = cms.check_exam(chest, 80.0, None, "050Y")
    assert missing.out_of_range == "unknown" and "no size-adjusted DLP" in missing.reason
    assert cms.check_exam(None, 80.0, 900.0, "050Y").out_of_range == "unknown"


def test_size_specific_dlp_is_the_aapm_204_conversion_times_dlp():
    # body phantom, Dw 30 cm: 3.704369 exp(-0.03671937 x 30) = 1.2315 (AAPM Report 204)
    assert cms.size_specific_dlp(500.0, 30.0, "body32") == pytest.approx(500.0 * 1.2315, rel=1e-3)
    assert cms.size_specific_dlp(500.0, None, "body32") is None
    assert cms.size_specific_dlp(500.0, 30.0, None) is None


def _category(regions=(), texts=(), acquisitions=(), override=None):
    category, source = exam_category(ExamFacts(regions, texts, acquisitions), load_mapping(), override)
    return (category.name if category else None), source


def test_category_from_regions_descriptions_and_acquisitions():
    chest = ["chest"] * 40
    abdomen_with_lung_bases = ["chest"] * 6 + ["abdomen"] * 54
    assert _category([abdomen_with_lung_bases])[0] == "Abdomen and Pelvis Routine Dose"
    assert _category([["chest"] * 40 + ["abdomen"] * 60])[0] == "Simultaneous Chest and Abdomen and Pelvis"
    assert _category([["head"] * 30 + ["neck"] * 3])[0] == "Head Routine Dose"
    assert _category([["head"] * 20 + ["neck"] * 25])[0] == "Simultaneous Head and Neck Routine Dose"
    name, source = _category([chest], texts_of(["CT CHEST LOW DOSE SCREENING"]))
    assert name == "Chest Low Dose" and "level low from study description 'CT CHEST LOW DOSE SCREENING'" in source
    assert _category([chest], texts_of(protocols=["Coronary CTA"]))[0] == "Cardiac Routine Dose"
    assert _category([chest], texts_of(["Calcium Score"]))[0] == "Cardiac Low Dose"
    assert _category([abdomen_with_lung_bases], texts_of(body_parts=["LSPINE"]))[0] == "Thoracic or Lumbar Spine"
    assert _category([["neck"] * 30], texts_of(["CT C-SPINE WO"]))[0] == "Neck or Cervical Spine"
    assert _category([["unknown"] * 30], texts_of(["CT KNEE RIGHT"]))[0] == "Extremity"
    name, source = _category([abdomen_with_lung_bases], acquisitions=["Spiral Acquisition"] * 3)
    assert name == "Abdomen and Pelvis High Dose" and "3 diagnostic acquisitions" in source
    # a trauma study: head, cervical spine and chest-abdomen series
    assert _category([["head"] * 30, ["neck"] * 40, ["chest"] * 40 + ["abdomen"] * 60])[0] == cms.FULL_BODY
    # no region: the description names the area; nothing at all: no category, with the reason
    assert _category([["unknown"] * 10], texts_of(["CT ABDOMEN PELVIS W"]))[0] == "Abdomen and Pelvis Routine Dose"
    name, source = _category([["unknown"] * 10])
    assert name is None and source.startswith("none: no region read")
    name, source = _category([chest], override="LA31763-8")
    assert name == "Head Routine Dose" and source.startswith("override")
    with pytest.raises(InputError, match="not one of the measure's categories"):
        _category([chest], override="Chest Medium")


def test_a_site_mapping_file_is_read_and_a_bad_one_named(tmp_path):
    site = json.loads(load_mapping().source and open(load_mapping().source).read())
    site["text_rules"].insert(0, {"pattern": "ROUTINE BRAIN", "area": "head", "level": "high", "over_regions": True})
    path = tmp_path / "site.json"
    path.write_text(json.dumps(site))
    category, source = exam_category(ExamFacts([["chest"] * 10], texts_of(["ROUTINE BRAIN"])), load_mapping(path))
    assert category.name == "Head High Dose" and "ROUTINE BRAIN" in source
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"text_rules": [{"pattern": "x", "area": "belly"}]}))
    with pytest.raises(InputError, match="unknown area 'belly'"):
        load_mapping(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_mapping(bad)


EXAM = {"study_uid": "1.2.3.4", "study_date": "20260302", "exam_category": "Abdomen and Pelvis Routine Dose",
        "category_source": "area from regions (abdomen 100%)", "global_noise_hu": 31.24,
        "size_adjusted_dlp_mgycm": 512.0}


def test_fhir_bundle_is_valid_fhir_and_reads_as_the_measure_reads_it():
    from fhir.resources.R4B.bundle import Bundle

    exams = [EXAM, {**EXAM, "study_uid": "1.2.3.5", "global_noise_hu": 20.0, "size_adjusted_dlp_mgycm": 700.0},
             {**EXAM, "study_uid": "1.2.3.6", "global_noise_hu": None}]
    document = fhir.bundle(exams, {"1.2.3.4": "PAT-1", "1.2.3.5": "PAT-1", "1.2.3.6": "PAT-2"}, key=b"k")
    parsed = Bundle.model_validate(document)  # raises on anything FHIR R4B does not allow
    observations = [e.resource for e in parsed.entry if e.resource.get_resource_type() == "Observation"]
    assert len(observations) == 2  # the exam without a global noise is not reported
    raw = [e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert [measure_reads(o) for o in raw] == [(True, False, True), (True, False, True)]
    first = raw[0]
    assert first["code"]["coding"][0]["code"] == "96914-7" and first["status"] == "final"
    assert first["category"][0]["coding"][0]["code"] == "imaging"
    assert first["valueCodeableConcept"]["coding"][0]["code"] == "LA31753-9"
    assert first["effectiveDateTime"] == "2026-03-02"
    noise, dose = (c["valueQuantity"] for c in first["component"])
    assert noise == {"value": 31.2, "unit": "[hnsf'U]", "system": "http://unitsofmeasure.org", "code": "[hnsf'U]"}
    assert dose["unit"] == dose["code"] == "mGy.cm"
    # one patient, by pseudonym: the patient ID appears nowhere
    patients = [e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 1 and "PAT-1" not in json.dumps(document)
    assert raw[0]["subject"]["reference"] == raw[1]["subject"]["reference"]
    assert cms.NOT_CERTIFIED in raw[0]["note"][0]["text"]
    named = fhir.bundle(exams, {"1.2.3.4": "PAT-1", "1.2.3.5": "PAT-1"}, identify_patients=True, key=b"k")
    assert "PAT-1" in json.dumps(named)
    # the same key gives the same pseudonyms in another run; another key others
    assert fhir.bundle(exams[:1], {"1.2.3.4": "PAT-1"}, key=b"k")["entry"][1] == document["entry"][2]
    assert fhir.pseudonym("PAT-1", b"k") != fhir.pseudonym("PAT-1", b"other")


def test_the_batch_page_states_the_limits_and_quotes_the_stewards_terms_as_the_code_does():
    """Wherever the measure is named its limits and the steward's terms go with it: the batch page quotes the
    licence the report, the FHIR Bundle and the Slicer table carry (cms.LICENCE), word for word."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "batch.md").read_text()
    section = page[page.index("## Exams and the CMS CT measure"):page.index("## The store, resuming and shards")]
    flat = " ".join(re.sub(r"^> ?", "", section, flags=re.M).split())
    copyright_line, terms = cms.LICENCE.split(' "')
    assert copyright_line in flat and terms.rstrip('"') in flat
    assert "not the certified measure" in flat
    for choice in ("Global noise.", "Size adjustment.", "Category."):
        assert f"**{choice}**" in section
    for reference in ("doi:10.2214/AJR.14.13613", "AAPM Report 204", "AAPM Report 220", "Smith-Bindman"):
        assert reference in section
    for column in EXAM_COLUMNS:
        assert f"| `{column}` |" in section, column

"""Verdict rules a radiologist signs: bands from reader studies that never collapse, no soft-tissue verdict on a
sharp kernel, and no 'good' where a series' global noise reaches its CMS category's threshold."""
import numpy as np
import pytest

from DistilIQALib.quality.interpretation import (
    CMS_ROUTINE_NOISE_HU,
    READER_STUDY_BANDS,
    UNKNOWN,
    adequacy_labels,
    noise_dose_equivalent,
    reader_study_bands,
    region_references,
    region_verdicts,
)
from DistilIQALib.quality.kernels import SHARP, SMOOTH, STANDARD, kernel_class
from DistilIQALib.quality.weights import read_info, resolve_weights


@pytest.mark.parametrize("region", sorted(READER_STUDY_BANDS))
@pytest.mark.parametrize("spread_inadequate", [0.0, 0.3, 0.6, 0.95])
def test_every_band_is_a_non_empty_interval(region, spread_inadequate):
    bands, why = reader_study_bands(region, spread_inadequate)
    good, inadequate = bands[0]["min_value"], bands[1]["min_value"]
    assert [b["name"] for b in bands] == ["good", "borderline", "inadequate"] and bands[2]["min_value"] is None
    assert 0 < inadequate < good and good >= 1.5 * inadequate - 1e-9 and why


def test_shipped_bands_are_the_reader_studies():
    """In the shipped file: every region has a borderline band; 30% of a routine abdominal dose is not good (it
    failed non-inferiority in Fletcher 2017), and nor is it for the neck; the head's 20% (which passed) is not
    inadequate, its 10% (which failed) is."""
    references = region_references(read_info(resolve_weights(None)).noise_reference)
    for region in ("head", "neck", "chest", "abdomen"):
        good, inadequate = (band["min_value"] for band in references[region]["bands"][:2])
        assert good > inadequate, region
    label = lambda region, value: adequacy_labels(np.array([value]), {"on": "dose_equivalent",  # noqa: E731
                                                                        "bands": references[region]["bands"]})[0]
    assert label("abdomen", 0.30) == "inadequate" and label("neck", 0.30) == "inadequate"
    assert label("abdomen", 0.45) == "borderline" and label("abdomen", 0.5) == "good"
    assert label("head", 0.20) == "borderline" and label("head", 0.10) == "inadequate"


@pytest.mark.parametrize("kernel, manufacturer, expected", [
    ("B30f", "SIEMENS", STANDARD), ("B40f", "SIEMENS", STANDARD), ("D45f", "SIEMENS", SHARP),
    ("B70f", "SIEMENS", SHARP), ("B20s", "SIEMENS", SMOOTH), ("Br40", "SIEMENS", STANDARD),
    ("Hr38", "SIEMENS", STANDARD),
    ("Qr40", "Siemens Healthineers", STANDARD), ("59 .10.AH40", "SIEMENS", STANDARD), ("J40s", "SIEMENS", STANDARD),
    ("STANDARD", "GE MEDICAL SYSTEMS", STANDARD), ("SOFT", "GE MEDICAL SYSTEMS", SMOOTH),
    ("LUNG", "GE MEDICAL SYSTEMS", SHARP), ("BONEPLUS", "GE MEDICAL SYSTEMS", SHARP),
    ("BONE", "GE MEDICAL SYSTEMS", SHARP),
    ("B", "Philips", STANDARD), ("A", "Philips", SMOOTH), ("YB", "Philips", SHARP), ("L", "Philips", SHARP),
    ("FC17", "TOSHIBA", STANDARD), ("FC52", "TOSHIBA", SHARP), ("FC30", "CANON MEDICAL SYSTEMS", SHARP),
    ("", "SIEMENS", ""), ("XYZ", "ACME", ""),
])
def test_kernel_class_per_vendor(kernel, manufacturer, expected):
    assert kernel_class(kernel, manufacturer)[0] == expected


def _abdomen(noise_hu, kernel="", manufacturer=""):
    references = region_references(read_info(resolve_weights(None)).noise_reference)
    count = len(noise_hu)
    return region_verdicts(np.asarray(noise_hu, float), 3.0, np.full(count, 32.0), ["abdomen"] * count,
                           [""] * count, references, kernel=kernel, manufacturer=manufacturer), references


def test_a_sharp_kernel_gets_no_soft_tissue_verdict_never_inadequate():
    """The issue's routine D45f abdomen (noise 26-43 HU at 3 mm) read inadequate on 6 of 8 slices: now no
    soft-tissue verdict, with the reason; the same noise on a B30f series is judged."""
    noise = [26.0, 30.0, 35.0, 43.0]
    sharp, _ = _abdomen(noise, "D45f", "SIEMENS")
    assert sharp.adequacy == [UNKNOWN] * 4 and "inadequate" not in sharp.adequacy
    assert all("sharp reconstruction kernel (D45f, SIEMENS)" in note for note in sharp.note)
    assert np.isnan(sharp.dose_equivalent).all()
    smooth, _ = _abdomen(noise, "B30f", "SIEMENS")
    assert UNKNOWN not in smooth.adequacy


def test_a_series_at_the_cms_noise_threshold_is_never_good():
    """A series whose global noise (median of its slices') reaches the CMS threshold of its category is not good,
    whatever its dose equivalent; one below it keeps its verdicts."""
    threshold = CMS_ROUTINE_NOISE_HU["abdomen"][0]
    quiet = [threshold - 1.0] * 5
    reached = [threshold] * 5
    below, references = _abdomen(quiet)
    at, _ = _abdomen(reached)
    # a large patient at 1 mm: good by the dose equivalent alone
    reference = references["abdomen"]
    assert noise_dose_equivalent(np.array(reached), 1.0, np.array([42.0]), reference)[0] > 1.0
    big = region_verdicts(np.array(reached), 1.0, np.full(5, 42.0), ["abdomen"] * 5, [""] * 5, references)
    assert "good" not in big.adequacy and all("CMS CT measure" in note for note in big.note)
    assert "good" not in at.adequacy
    assert not any("CMS" in note for note in below.note)

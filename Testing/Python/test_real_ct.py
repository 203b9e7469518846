"""Real CT: dose simulation relative to each scan's own noise, measured on the real slices that pydicom and
pydicom-data ship, and the real-CT corpus manifest."""
import json
from pathlib import Path

import numpy as np
import pytest

from DistilIQALib.errors import InputError
from DistilIQALib.quality.noise import slice_noise_index
from DistilIQALib.training.corpus import CorpusEntry, corpus_sources, load_manifest, sha256_of, verify
from DistilIQALib.training.datasets import builtin_sources
from DistilIQALib.training.recipe import default_manifest
from DistilIQALib.training.simulation import (
    HANN_TEXTURE_RATIO_NOISE_ONLY,
    SHEPP_LOGAN_TEXTURE_RATIO_NOISE_ONLY,
    TEXTURE_RATIO_SMOOTH,
    DoseSimulator,
    matched_kernel_sharpness,
    texture_ratio,
)


def _gni(hu, pixel_mm):
    return slice_noise_index(hu, pixel_mm)


@pytest.fixture(scope="module")
def real_slices():
    """The real 512x512 CT slices shipped with pydicom / pydicom-data, with a measurable noise index."""
    slices = [s for s in builtin_sources(0) if s.hu.shape[0] >= 256 and np.isfinite(_gni(s.hu, s.pixel_mm))]
    if len(slices) < 3:
        pytest.skip("pydicom-data's real CT slices are not installed")
    return slices


def test_quarter_dose_doubles_each_real_scans_noise_index(real_slices):
    """Relative to the scan's own noise sigma (its noise index): dose d gives variance sigma^2/d, so a quarter
    dose doubles the measured noise index and half a dose multiplies it by sqrt(2), within 10%."""
    for n, source in enumerate(real_slices):
        sigma = _gni(source.hu, source.pixel_mm)
        simulator = DoseSimulator(source.hu.astype(np.float32), source.pixel_mm, seed=11 + n,
                                  reference_noise_hu=sigma, kernel=matched_kernel_sharpness(source.hu, source.pixel_mm))
        quarter = _gni(simulator.at_dose(0.25), source.pixel_mm) / sigma
        half = _gni(simulator.at_dose(0.5), source.pixel_mm) / sigma
        tenth = _gni(simulator.at_dose(0.1), source.pixel_mm) / sigma
        assert quarter == pytest.approx(2.0, rel=0.10), source.name
        assert half == pytest.approx(np.sqrt(2.0), rel=0.10), source.name
        assert tenth == pytest.approx(np.sqrt(10.0), rel=0.15), source.name
        np.testing.assert_array_equal(simulator.at_dose(1.0), source.hu.astype(np.float32))


def test_relative_noise_does_not_depend_on_the_photon_count(real_slices):
    """The absolute photon count no longer matters: two very different I0 give the same relative noise."""
    source = real_slices[0]
    sigma = _gni(source.hu, source.pixel_mm)
    low = DoseSimulator(source.hu, source.pixel_mm, i0=2e4, seed=5, reference_noise_hu=sigma).added_noise(0.25)
    high = DoseSimulator(source.hu, source.pixel_mm, i0=1e6, seed=5, reference_noise_hu=sigma).added_noise(0.25)
    np.testing.assert_allclose(low, high, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="positive SD"):
        DoseSimulator(source.hu, source.pixel_mm, reference_noise_hu=float("nan"))


def test_kernel_blend_sets_the_noise_texture(real_slices):
    """The noise-only texture ratio of the two end kernels is what the module states, blends lie between, and
    a real slice's matched sharpness makes added noise whose texture is close to the slice's own."""
    source = real_slices[0]
    flat = np.full_like(source.hu, 40.0, dtype=np.float32)  # soft tissue everywhere, no anatomy
    ratios = {}
    for sharpness in (0.0, 0.5, 1.0):
        noise = DoseSimulator(flat, source.pixel_mm, seed=3, kernel=sharpness, electronic_sd=0.0).added_noise(0.02)
        ratios[sharpness] = texture_ratio(flat + noise, source.pixel_mm)
    assert ratios[0.0] == pytest.approx(HANN_TEXTURE_RATIO_NOISE_ONLY, abs=0.03)
    assert ratios[1.0] == pytest.approx(SHEPP_LOGAN_TEXTURE_RATIO_NOISE_ONLY, abs=0.03)
    assert ratios[0.0] > ratios[0.5] > ratios[1.0]
    matched = 0
    for n, real in enumerate(real_slices):
        sigma = _gni(real.hu, real.pixel_mm)
        native = texture_ratio(real.hu, real.pixel_mm)
        sharpness = matched_kernel_sharpness(real.hu, real.pixel_mm)
        if native >= TEXTURE_RATIO_SMOOTH:  # smoother than any kernel here makes: the smoothest one
            assert sharpness == 0.0, real.name
            continue
        simulated = DoseSimulator(real.hu, real.pixel_mm, seed=n, kernel=sharpness, reference_noise_hu=sigma)
        assert texture_ratio(simulated.at_dose(0.05), real.pixel_mm) == pytest.approx(native, abs=0.12), real.name
        matched += 1
    assert matched >= 1
    with pytest.raises(ValueError, match="sharpness"):
        DoseSimulator(flat, source.pixel_mm, kernel=1.5)


def test_committed_manifest_describes_a_held_out_real_corpus():
    entries = load_manifest(default_manifest())
    data = json.loads(default_manifest().read_text())["entries"]
    for entry, raw in zip(entries, data):
        assert raw["origin"] and raw["licence"] and raw["series"], entry.id
        assert entry.files and all(len(digest) == 64 for digest in entry.files.values()), entry.id
        reserved = ("totalsegmentator", "dcm_qa_ct", "orthanc-tests", "osirix")
        assert not any(word in raw["origin"].lower() for word in reserved), entry.id
    test = [(e, r) for e, r in zip(entries, data) if e.role == "test"]
    vendors = {s.get("manufacturer") for _, r in test for s in r["series"]} - {"unknown (no DICOM header)", ""}
    assert len({e.patient for e, _ in test}) >= 3 and len(vendors) >= 2
    roles = {}
    for entry in entries:
        roles.setdefault(entry.patient, set()).add(entry.role)
    assert all(len(r) == 1 for r in roles.values()), "a patient must have one role"
    assert {"train", "calibration", "test"} <= {e.role for e in entries}


def test_corpus_verification_finds_missing_and_altered_files(tmp_path, dicom_series):
    files = {str(p.relative_to(dicom_series.parent)): sha256_of(p) for p in sorted(dicom_series.iterdir())}
    entry = CorpusEntry("a", "patient-a", "train", "phantom", dicom_series.name, 2, files)
    assert verify([entry], dicom_series.parent) == []
    sources = corpus_sources([entry], dicom_series.parent)
    assert len(sources) == 2 and {s.patient for s in sources} == {"patient-a"} and sources[0].anatomy == "phantom"
    altered = dict(files)
    first = next(iter(altered))
    altered[first] = "0" * 64
    broken = CorpusEntry("b", "patient-b", "test", "phantom", dicom_series.name, 2, {**altered, "x/gone.dcm": "1" * 64})
    problems = verify([broken], dicom_series.parent)
    assert any("differs" in p and first in p for p in problems) and any("missing x/gone.dcm" in p for p in problems)
    with pytest.raises(InputError, match="incomplete or altered.*corpus/README.md"):
        corpus_sources([broken], dicom_series.parent)


def test_manifest_errors_are_one_clear_line(tmp_path):
    with pytest.raises(InputError, match="no corpus manifest"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entries": [{"id": "x"}]}))
    with pytest.raises(InputError, match="not a corpus manifest"):
        load_manifest(bad)
    bad.write_text(json.dumps({"entries": [{"id": "x", "patient": "p", "role": "validation", "anatomy": "a",
                                            "path": "x", "slices_used": 1, "files": {}}]}))
    with pytest.raises(InputError, match="unknown role"):
        load_manifest(bad)
    assert Path(default_manifest()).name == "manifest.json"

"""Body region per slice, and the verdicts taken against each region's routine level."""
from __future__ import annotations

import csv
import io
import json
import math
import plistlib
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from DistilIQALib.io.reading import read_volume
from DistilIQALib.quality.interpretation import (
    ABOVE_ROUTINE_NOTE,
    DOSE_RANGE,
    region_bands,
    region_references,
    region_verdicts,
    valid_ranges,
)
from DistilIQALib.quality.regions import (
    ABDOMEN,
    CHEST,
    FEATURE_NAMES,
    HEAD,
    NECK,
    UNKNOWN,
    RegionFeatures,
    detect_regions,
    given_regions,
    region_features,
    series_labels,
    slice_labels,
    volume_regions,
)
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import read_info
from DistilIQALib.training.phantoms import phantom_slice
from DistilIQALib.volume import CTVolume

from .shipped_ct import shipped_ct_file

ROOT = Path(__file__).resolve().parents[2]
#: The routine head CT 0051 of InVesalius (Siemens SOMATOM Plus 4, skull base to vertex), downsampled to 256x256
#: by the Debian package invesalius-examples (GPL-2), which `.ci/run` installs.
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


def read_inv3(path: Path) -> CTVolume:
    """An InVesalius project's CT (a gzipped tar of ``main.plist`` and the raw int16 ``matrix.dat``)."""
    with tarfile.open(path, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        project = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        matrix = project["matrix"]
        raw = archive.extractfile(members[matrix["filename"]]).read()
    hu = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])
    spacing = tuple(float(v) for v in project["spacing"])
    return CTVolume(hu, spacing, source=str(path), metadata={"modality": project["modality"]})


@pytest.mark.skipif(not CRANIUM.is_file(), reason="Debian's invesalius-examples is not installed (.ci/run installs "
                                                   "it: apt-get install invesalius-examples)")
def test_a_real_routine_head_ct_reads_as_head_from_skull_base_to_vertex():
    volume = read_inv3(CRANIUM)
    assert volume.hu.shape == (108, 256, 256) and volume.metadata["modality"] == "CT"
    regions = volume_regions(volume)
    share = regions.region.count(HEAD) / len(regions.region)
    assert share >= 0.95, dict((r, regions.region.count(r)) for r in set(regions.region))
    # the slices that are not head have no body left to read (the top of the vertex), never another region
    assert set(regions.region) <= {HEAD, UNKNOWN}
    assert all(reason for region, reason in zip(regions.region, regions.reason) if region == UNKNOWN)


@pytest.mark.skipif(not CRANIUM.is_file(), reason="Debian's invesalius-examples is not installed")
def test_the_region_features_of_a_slice_do_not_depend_on_the_slices_read_with_it():
    # the scorer reads them 16 slices at a time on the CPU, a batch at a time on a GPU: every feature of the real
    # head is the same to the bit whether its slices are read one, two, sixteen or all at a time
    volume = read_inv3(CRANIUM)
    hu = torch.from_numpy(volume.hu.astype(np.float32))
    together = region_features(hu, volume.spacing_mm[:2])
    for size in (1, 2, 16):
        parts = [region_features(hu[start:start + size], volume.spacing_mm[:2]) for start in range(0, len(hu), size)]
        apart = RegionFeatures.concatenate(parts)
        for name in FEATURE_NAMES:
            np.testing.assert_array_equal(getattr(apart, name), getattr(together, name), err_msg=f"{name}, {size}")


def test_hole_filling_and_opening_are_those_of_scipy_on_random_masks_and_a_real_head():
    from scipy import ndimage

    from DistilIQALib.quality.regions import _fill_holes, _open

    rng = np.random.default_rng(3)
    masks = [rng.random((4, 61, 87)) < share for share in (0.3, 0.55, 0.7)]
    if CRANIUM.is_file():  # the real head's body masks at the pooled grid, arms of the head holder and all
        head = torch.from_numpy(read_inv3(CRANIUM).hu[::8].astype(np.float32))
        masks.append((torch.nn.functional.avg_pool2d(head[:, None], 2, ceil_mode=True)[:, 0] > -500.0).numpy())
    for mask in masks:
        found = torch.from_numpy(mask)[:, None]
        filled = _fill_holes(found)[:, 0].numpy()
        for n, one in enumerate(mask):  # background moves to all 8 neighbours: the 3x3 structure
            np.testing.assert_array_equal(filled[n], ndimage.binary_fill_holes(one, structure=np.ones((3, 3))))
        for size in (1, 3, 5, 9):  # the square window is clipped at the edge: outside neither erodes nor dilates
            opened = _open(found, size)[:, 0].numpy()
            eroded = ndimage.minimum_filter(mask, size=(1, size, size), mode="constant", cval=1)
            np.testing.assert_array_equal(
                opened, ndimage.maximum_filter(eroded, size=(1, size, size), mode="constant", cval=0))


def test_the_region_features_and_the_noise_index_make_every_tensor_on_their_slices_device():
    # Every tensor made inside follows the slices' device: with a default device of "meta", one made without
    # naming it would fail to meet the CPU slices (what a GPU run would meet as a CPU tensor).
    from DistilIQALib.quality.noise import global_noise_index, size_for_reference
    from DistilIQALib.quality.preprocessing import prepare_batch

    hu = torch.from_numpy(np.stack([phantom_slice(0.0), phantom_slice(0.7)]).astype(np.float32))
    expected = region_features(hu, (0.7, 0.7))
    noise = global_noise_index(hu, (0.7, 0.7))
    with torch.device("meta"):
        found = region_features(hu, (0.7, 0.7))
        assert torch.equal(global_noise_index(hu, (0.7, 0.7)), noise)
        for reference in (None, {"size": "noise_equivalent_diameter"}):
            assert size_for_reference(hu, (0.7, 0.7), reference).device == hu.device
        assert prepare_batch(hu).device == hu.device
    assert all(np.array_equal(getattr(found, name), getattr(expected, name)) for name in FEATURE_NAMES)


def _one(name: str):
    volume = read_volume(shipped_ct_file(name), force=True)
    return detect_regions(region_features(torch.from_numpy(np.asarray(volume.hu, np.float32)), volume.spacing_mm[:2]),
                          volume.z_mm(), volume.hu.shape[1:], volume.spacing_mm[:2])


def test_real_slices_that_pydicom_ships_read_as_their_region_or_unknown_with_the_reason():
    # an axial brain slice and a skull-base slice, an upper abdomen (kidneys, liver, a little lung base)
    assert _one("693_UNCR.dcm").region == [HEAD]
    assert _one("J2K_pixelrep_mismatch.dcm").region == [HEAD]
    assert _one("explicit_VR-UN.dcm").region == [ABDOMEN]
    # reconstructions zoomed on the spine: too small a field of view, or one that cuts the body
    small = _one("CT_small.dcm")
    assert small.region == [UNKNOWN] and "field of view 8 x 8 cm is outside clinical CT" in small.reason[0]
    zoomed = _one("bad_sequence.dcm")
    assert zoomed.region == [UNKNOWN] and zoomed.reason[0].startswith("the field of view cuts the body")


def test_phantom_bodies_with_and_without_lungs():
    slices = np.stack([phantom_slice(0.0), phantom_slice(0.7)]).astype(np.float32)
    features = region_features(torch.from_numpy(slices), (0.7, 0.7))
    assert slice_labels(features)[0] == [ABDOMEN, CHEST]
    assert features.lung_share[0] < 0.05 < features.lung_share[1]
    assert features.body_cm2[0] > 350.0 and features.skull_cover[0] < 0.6


def test_slices_are_read_in_anatomical_order():
    z = np.arange(8.0)[::-1]  # head first
    # a large slice without lung above the lungs is the shoulder girdle; below them, abdomen
    assert series_labels(z, [ABDOMEN, ABDOMEN, CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN]) == [
        CHEST, CHEST, CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN]
    # below a head and neck with no lung in the series: the base of the neck
    assert series_labels(z, [HEAD, HEAD, HEAD, NECK, NECK, NECK, ABDOMEN, ABDOMEN]) == [
        HEAD, HEAD, HEAD, NECK, NECK, NECK, NECK, NECK]
    # small slices below the lungs are pelvis or thighs; a small slice above a head is face or vertex
    assert series_labels(z, [CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN, NECK, NECK]) == [
        CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN, ABDOMEN, ABDOMEN]
    assert series_labels(z, [NECK, NECK, HEAD, HEAD, HEAD, HEAD, HEAD, HEAD]) == [HEAD] * 8
    # an isolated label among agreeing neighbours takes theirs; unknown slices are never changed
    assert series_labels(z, [CHEST, CHEST, CHEST, ABDOMEN, CHEST, CHEST, UNKNOWN, CHEST]) == [
        CHEST, CHEST, CHEST, CHEST, CHEST, CHEST, UNKNOWN, CHEST]
    # the order comes from z, not from the slices' order in the file
    assert series_labels(z[::-1], [ABDOMEN, ABDOMEN, CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN][::-1]) == [
        CHEST, CHEST, CHEST, CHEST, CHEST, ABDOMEN, ABDOMEN, ABDOMEN][::-1]


def test_a_volume_of_random_values_is_no_body_region_and_never_good():
    rng = np.random.default_rng(0)
    scorer = Scorer(device="cpu")
    for shape, spacing, why in [((2, 1000, 1000), (4.0, 4.0, 1.0), "field of view 400 x 400 cm"),
                                ((2, 512, 512), (0.7, 0.7, 2.5), "not a CT image in HU")]:
        volume = CTVolume(rng.uniform(-1000, 3000, size=shape).astype(np.float32), spacing)
        scores = scorer.score_volume(volume)
        assert scores.region == [UNKNOWN] * shape[0] and scores.adequacy == [UNKNOWN] * shape[0]
        assert all(note.startswith("body region unknown: ") and why in note for note in scores.verdict_note)
        assert np.isnan(scores.dose_equivalent).all()
        summary = scores.summary()
        assert summary["regions"] == {UNKNOWN: shape[0]} and summary["fraction_inadequate"] is None
        assert list(summary["unknown_reasons"].values()) == [shape[0]]


def test_a_region_given_by_the_user_overrides_the_image_and_a_wrong_name_is_refused():
    assert given_regions(HEAD, 3).region == [HEAD] * 3 and given_regions(HEAD, 3).source == "user"
    with pytest.raises(ValueError, match="unknown body region 'knee'"):
        given_regions("knee", 1)
    volume = CTVolume(np.stack([phantom_slice(0.0)] * 2).astype(np.float32), (0.7, 0.7, 2.5))
    scores = Scorer(device="cpu").score_volume(volume, region=NECK)
    assert scores.region == [NECK, NECK] and scores.summary()["region_source"] == "user"
    with pytest.raises(ValueError):
        Scorer(device="cpu").score_volume(volume, region="knee")


def test_region_on_the_command_line(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.stack([phantom_slice(0.0), phantom_slice(0.7)]).astype(np.int16))
    image.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "DistilIQALib", "score", str(tmp_path / "ct.nrrd"), *extra],
                              capture_output=True, text=True, cwd=ROOT)

    found = run("--json", str(tmp_path / "auto.json"))
    assert found.returncode == 0, found.stderr
    rows = list(csv.DictReader(io.StringIO(found.stdout)))
    assert [row["region"] for row in rows] == [ABDOMEN, CHEST]
    assert "regions: 1 abdomen, 1 chest" in found.stderr
    given = run("--region", "abdomen")
    assert [row["region"] for row in csv.DictReader(io.StringIO(given.stdout))] == [ABDOMEN, ABDOMEN]
    assert "(as given)" in given.stderr
    wrong = run("--region", "knee")
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0 and "invalid choice: 'knee'" in wrong.stderr
    summary = json.loads((tmp_path / "auto.json").read_text())
    assert summary["regions"] == {ABDOMEN: 1, CHEST: 1} and summary["region_source"] == "image"


# --- verdicts per region ------------------------------------------------------------------------------------------

REFERENCES = {
    # 1000 HU^2 mm at 30 cm, growing as e^(0.05 D)
    CHEST: dict(intercept=math.log(1000.0) - 1.5, per_cm=0.05, bands=region_bands(0.5, 0.2), basis="fitted",
                above_routine_from=1.5, valid_diameter_cm=[20.0, 40.0], valid_thickness_mm=[1.0, 5.0]),
    NECK: dict(intercept=math.log(400.0), per_cm=0.0, bands=region_bands(0.5, 0.3), basis="literature",
               above_routine_from=2.0, valid_diameter_cm=[8.0, 30.0]),
}


def test_each_slice_is_judged_against_its_own_regions_routine_level_by_hand():
    noise = [20.0, 20.0, 40.0, 70.0, 10.0, 20.0, 20.0, np.nan, 20.0, 20.0, 2.0]
    diameter = [30.0, 12.0, 30.0, 30.0, 30.0, 45.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    thickness = [2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 8.0, 2.5, 2.5, 2.5, 2.5]
    regions = [CHEST, NECK, CHEST, CHEST, CHEST, CHEST, CHEST, CHEST, HEAD, UNKNOWN, CHEST]
    reasons = [""] * 9 + ["no body in the slice", ""]
    found = region_verdicts(noise, thickness, diameter, regions, reasons, REFERENCES)
    # chest, 30 cm: 1000 / (20^2 x 2.5) = 1; 40 HU a quarter; 70 HU 0.082; 10 HU four routine doses
    # neck, no size dependence: 400 / 1000 = 0.4
    expected = [1.0, 0.4, 0.25, 1000.0 / (4900.0 * 2.5), 4.0]
    np.testing.assert_allclose(found.dose_equivalent[:5], expected, rtol=1e-9)
    assert found.adequacy[:5] == ["good", "borderline", "borderline", "inadequate", "good"]
    assert found.above_routine.tolist() == [False] * 4 + [True] + [False] * 5 + [True]
    assert found.note[4] == f"{ABOVE_ROUTINE_NOTE} (judged from the noise)"
    assert found.above_basis == ["noise"] * 5 + [""] * 5 + ["noise"]
    assert found.note[1] == "neck routine level from published measurements" and found.note[0] == ""
    # outside what the reference was fitted on, or nothing to measure: unknown, with the reason
    assert np.isnan(found.dose_equivalent[5:10]).all() and found.adequacy[5:10] == [UNKNOWN] * 5
    assert found.note[5] == "patient size 45.0 cm is outside the chest reference (20-40 cm noise-equivalent diameter)"
    assert found.note[6] == "slice thickness 8 mm is outside the chest reference (1-5 mm)"
    assert found.note[7] == "no soft tissue to measure noise on"
    assert found.note[8] == "no routine level for the head in this model"
    assert found.note[9] == "body region unknown: no body in the slice"
    # 2 HU: 100 routine doses, reported as the top of the range, and above routine
    assert found.dose_equivalent[10] == DOSE_RANGE[1] == 4.0 and found.above_routine[10]


def test_an_older_single_reference_covers_only_the_chest_and_abdomen_it_was_fitted_on():
    older = {"intercept": 5.0, "per_cm": 0.05, "diameter_range_cm": [20.0, 36.0], "thickness_range_mm": [1.25, 5.0]}
    adequacy = {"on": "dose_equivalent", "bands": region_bands(0.35, 0.27)}
    references = region_references(older, adequacy)
    assert sorted(references) == [ABDOMEN, CHEST]
    assert references[CHEST]["bands"] == adequacy["bands"]
    assert references[CHEST]["valid_diameter_cm"] == [17.0, 41.4]  # 15% beyond the fitted sizes
    assert references[CHEST]["valid_thickness_mm"] == [0.62, 10.0]  # half the thinnest, twice the thickest
    assert valid_ranges({"thickness_range_mm": [0.5, 8.0]})["valid_thickness_mm"] == [0.5, 10.0]
    found = region_verdicts([15.0, 15.0], 2.5, [30.0, 18.0], [HEAD, ABDOMEN], ["", ""], references)
    assert found.adequacy[0] == UNKNOWN and found.note[0] == "no routine level for the head in this model"
    assert found.adequacy[1] == "good"


def test_the_shipped_model_has_a_routine_level_for_every_region_with_its_source():
    info = read_info(ROOT / "Resources" / "Models" / "distiliqa_student.safetensors")
    references = region_references(info.noise_reference, info.adequacy)
    assert sorted(references) == sorted([HEAD, NECK, CHEST, ABDOMEN])
    assert references[NECK]["basis"] == "literature" and "CMS1074" in references[NECK]["reasoning"]
    assert references[HEAD]["per_cm"] == references[CHEST]["per_cm"] and "Fletcher" in references[HEAD]["reasoning"]
    for region, reference in references.items():
        good, borderline, _ = (band["min_value"] for band in reference["bands"])
        assert 0.0 < borderline <= good <= 1.0 < reference["above_routine_from"], region
    # the brain is read at far less noise than the body: at the same size and thickness a head's routine
    # noise is a fraction of the chest's and the abdomen's, and the abdomen's below the chest's
    level = {region: math.exp(ref["intercept"] + ref["per_cm"] * 20.0) for region, ref in references.items()}
    assert level[HEAD] < level[ABDOMEN] / 3.0 and level[ABDOMEN] < level[CHEST]
    assert references[ABDOMEN]["bands"][1]["min_value"] >= 0.3  # liver metastases at 30% failed (Fletcher 2017)


def _head_phantom(noise_hu: float, seed: int) -> np.ndarray:
    """An 18 x 15 cm head: 6 mm skull (1200 HU) around brain (35 HU) and 4 mm of scalp, with white noise."""
    y, x = np.mgrid[0:512, 0:512].astype(np.float64)
    pixel = 0.5
    radius = ((x - 256) * pixel / 90.0) ** 2 + ((y - 256) * pixel / 75.0) ** 2
    inner = ((x - 256) * pixel / 84.0) ** 2 + ((y - 256) * pixel / 69.0) ** 2
    scalp = ((x - 256) * pixel / 94.0) ** 2 + ((y - 256) * pixel / 79.0) ** 2
    hu = np.where(scalp <= 1.0, 20.0, -1000.0)
    hu = np.where(radius <= 1.0, 1200.0, hu)
    hu = np.where(inner <= 1.0, 35.0, hu)
    noise = np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape)
    return (hu + np.where(hu > -1000.0, noise, 0.0)).astype(np.float32)


def test_a_head_at_a_tenth_of_its_routine_dose_is_inadequate_where_the_body_reference_called_it_good():
    scorer = Scorer(device="cpu")
    head = scorer.info.noise_reference["regions"][HEAD]
    routine_hu = 5.5  # brain noise of a routine 5 mm head CT (about 4 HU, ROI SD, Nakamura 2019) and a little more
    volumes = {dose: CTVolume(np.stack([_head_phantom(routine_hu / math.sqrt(dose), s) for s in range(2)]),
                              (0.5, 0.5, 5.0)) for dose in (1.0, 0.1)}
    full, tenth = (scorer.score_volume(volumes[d]) for d in (1.0, 0.1))
    assert full.region == [HEAD, HEAD] and tenth.region == [HEAD, HEAD]
    assert set(full.adequacy) == {"good"} and set(tenth.adequacy) == {"inadequate"}
    # the dose equivalents follow the noise: a tenth of the dose reads about a tenth (within x1.5)
    ratio = np.median(tenth.dose_equivalent) / np.median(full.dose_equivalent)
    assert 0.1 / 1.5 <= ratio <= 0.1 * 1.5
    # taken as chest (the one level earlier models applied to every region), the tenth would pass
    as_chest = scorer.score_volume(volumes[0.1], region=CHEST)
    assert "inadequate" not in as_chest.adequacy
    assert head["valid_diameter_cm"][0] <= float(np.median(full.diameter_cm)) <= head["valid_diameter_cm"][1]


def test_the_archive_report_shows_regions_and_series_above_routine(tmp_path):
    from DistilIQALib.archive.batch import write_summary_csv
    from DistilIQALib.archive.report import distribution_plot_png, protocol_statistics, write_html_report
    from DistilIQALib.archive.store import ResultStore

    def record(uid, above, dose, region):
        return {"series_uid": uid, "weights_id": "w", "status": "scored", "patient_id": uid, "kernel": "B30f",
                "kvp": 120.0, "slice_thickness_mm": 5.0, "scanner_model": "S", "num_slices": 2, "mean_score": 0.9,
                "min_score": 0.8, "worst_slice": 0, "mean_noise_hu": 10.0, "fraction_inadequate": 0.0,
                "region": region, "median_dose_equivalent": dose, "fraction_above_routine": above}

    slices = [{"slice_index": n, "z_mm": float(n), "score": 0.9, "score_spread": 0.0, "noise_hu": 10.0,
               "dose_equivalent": 2.5, "adequacy": "good", "region": HEAD, "above_routine": True,
               "verdict_note": ABOVE_ROUTINE_NOTE} for n in range(2)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write_series(record("hi", 1.0, 2.5, HEAD), slices)
        store.write_series(record("half", 0.5, 1.6, CHEST), [])  # half is not more than half: not above routine
        assert store.slice_rows("hi", "w")[0]["region"] == HEAD and store.slice_rows("hi", "w")[0]["above_routine"]
        rows = store.series_rows()
    summary, _ = protocol_statistics(rows)
    assert summary[0]["above_routine_series"] == 1 and summary[0]["series"] == 2
    assert distribution_plot_png(rows)[:8] == b"\x89PNG\r\n\x1a\n"
    write_html_report(tmp_path / "r.sqlite", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "1 above routine (the dose could be lowered)" in page and page.count('class="scored above"') == 1
    assert "<th>% above routine</th>" in page and "<td>head</td>" in page and ">250%<" not in page
    write_summary_csv(tmp_path / "r.sqlite", tmp_path / "s.csv")
    table = {row["series_uid"]: row for row in csv.DictReader(open(tmp_path / "s.csv"))}
    assert table["hi"]["region"] == HEAD and table["hi"]["median_dose_equivalent"] == "2.5"
    assert table["half"]["fraction_above_routine"] == "0.5"


def test_block_maxima_are_those_of_max_pooling_whether_or_not_the_blocks_divide_the_image():
    import torch.nn.functional as F

    from DistilIQALib.quality.regions import _block_max

    from .shipped_ct import shipped_ct_files

    volume = read_volume(shipped_ct_files()[-1], force=True)
    image = torch.from_numpy(np.array(volume.hu[:1], dtype=np.float32))[:, None]
    for pool in (1, 2, 3, 4, 5):  # 512 pixels: blocks of 2 and 4 divide it, those of 3 and 5 leave a short block
        expected = F.max_pool2d(image, pool, ceil_mode=True)
        assert torch.equal(_block_max(image, pool), expected), pool


def test_a_short_end_of_a_chest_or_abdominal_scan_is_judged_as_part_of_its_exam():
    from DistilIQALib.quality.region_labels import EXAM_END_CM, exam_regions

    # Lung_Dx-A0002 as read from its images: 27 chest slices, then 3 of upper abdomen (8 mm apart, head first)
    z = -8.0 * np.arange(30)
    judged, notes = exam_regions(z, [CHEST] * 27 + [ABDOMEN] * 3)
    assert judged == [CHEST] * 30
    assert notes[:27] == [""] * 27 and all("upper abdomen of a chest scan (2.4 cm" in note for note in notes[27:])
    # an abdominal scan that starts over the lung bases (4 slices, 5 mm apart) is an abdominal exam
    judged, notes = exam_regions(-5.0 * np.arange(40), [CHEST] * 4 + [ABDOMEN] * 36)
    assert judged == [ABDOMEN] * 40 and "lung bases of an abdominal scan (2.0 cm" in notes[0]
    # chest-abdomen scans (CRLM-CT-1004's 7.5 and 13 cm, Pancreas-CT-CB_001's 12 and 28.5 cm) keep each slice's own
    for step, chest, abdomen in ((5.0, 15, 26), (15.0, 8, 19)):
        labels = [CHEST] * chest + [ABDOMEN] * abdomen
        assert exam_regions(-step * np.arange(chest + abdomen), labels) == (labels, [""] * len(labels))
    # the limit is inclusive: 12 slices 5 mm apart are 6.0 cm
    assert EXAM_END_CM == 6.0
    assert exam_regions(-5.0 * np.arange(61), [CHEST] * 49 + [ABDOMEN] * 12)[0] == [CHEST] * 61
    assert exam_regions(-5.0 * np.arange(62), [CHEST] * 49 + [ABDOMEN] * 13)[0][-1] == ABDOMEN
    # an end that is not wholly beyond the other region, no positions, or one region only: each slice's own
    mixed = [CHEST] * 4 + [ABDOMEN, CHEST] + [ABDOMEN] * 5
    assert exam_regions(-47.0 * np.arange(11), mixed)[0] == mixed
    assert exam_regions([np.nan] * 30, [CHEST] * 27 + [ABDOMEN] * 3)[0][-1] == ABDOMEN
    assert exam_regions(-5.0 * np.arange(3), [HEAD, NECK, CHEST])[0] == [HEAD, NECK, CHEST]


def test_the_upper_abdomen_of_a_chest_scan_is_judged_by_the_chest_reference_its_dose_and_its_cms_category():
    ranges = dict(per_cm=0.0, basis="fitted", above_routine_from=2.0, valid_diameter_cm=[20.0, 40.0],
                  valid_thickness_mm=[1.0, 5.0])
    # the abdomen's routine noise 0.81x the chest's, as the shipped references have it
    references = {CHEST: dict(intercept=math.log(250.0), bands=region_bands(0.45, 0.30), **ranges),
                  ABDOMEN: dict(intercept=math.log(250.0 * 0.81 ** 2), bands=region_bands(0.50, 0.33), **ranges)}
    # 13.3 HU at 2.5 mm, 28 chest slices then 2 of upper abdomen 8 mm apart (1.6 cm): as the chest, 0.57 (good);
    # as the abdomen it would be 0.37 (borderline)
    noise, regions, z = np.full(30, 13.3), [CHEST] * 28 + [ABDOMEN] * 2, -8.0 * np.arange(30)
    alone = region_verdicts(noise, 2.5, np.full(30, 30.0), regions, [""] * 30, references)
    within = region_verdicts(noise, 2.5, np.full(30, 30.0), regions, [""] * 30, references, z_mm=z)
    assert alone.adequacy[-1] == "borderline" and within.adequacy == ["good"] * 30
    np.testing.assert_allclose(within.dose_equivalent, alone.dose_equivalent[0])
    assert "judged against the chest's routine level" in within.note[-1] and within.note[0] == ""

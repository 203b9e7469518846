"""Gaps along z on real series: a step is a gap when it is larger than the slices' own thickness allows, so a
series whose spacing grows with its thickness is complete, and slices that are really missing are still named."""
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from DistilIQALib.io.reading import read_volume, z_gaps
from DistilIQALib.training.recipe import default_manifest

HEAD = default_manifest().parent / "files" / "head_invesalius_0051"


def test_spacing_that_grows_with_thickness_is_no_gap():
    """The series of the issue: a 4 mm part at 4.2 mm and a 7 mm part at 7.4 mm (nine false gaps before)."""
    z = np.concatenate([np.arange(14) * 4.2, 13 * 4.2 + 5.8 + np.arange(8) * 7.4])
    thickness = [4.0] * 14 + [7.0] * 8
    assert z_gaps(z) != []  # by the median step alone the 7 mm part looks like missing slices
    assert z_gaps(z, thickness) == []
    assert z_gaps(z[::-1], thickness[::-1]) == []  # any order
    thin_missing = np.delete(z, 4)
    assert z_gaps(thin_missing, np.delete(thickness, 4)) == [(z[3], z[5])]
    thick_missing = np.delete(z, 18)
    assert z_gaps(thick_missing, np.delete(thickness, 18)) == [(z[17], z[19])]


def _real_head(tmp_path: Path):
    files = sorted(HEAD.glob("*.dcm")) if HEAD.is_dir() else []
    if len(files) < 100:
        pytest.skip("the corpus' InVesalius head is not on this machine (corpus/README.md)")
    by_z = sorted(files, key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
    return by_z


def _copy(files, folder: Path, thickness=None):
    folder.mkdir()
    for n, path in enumerate(files):
        if thickness is None:
            shutil.copy(path, folder / path.name)
            continue
        dataset = pydicom.dcmread(path)
        dataset.SliceThickness = thickness[n]
        dataset.save_as(folder / path.name)
    return folder


def test_real_head_with_slices_removed_names_each_gap(tmp_path):
    """InVesalius 0051 (2 mm slices at 1.5 mm): complete, no gap; two slices taken out of it, one gap each."""
    files = _real_head(tmp_path)[:60]
    complete = read_volume(_copy(files, tmp_path / "complete"))
    assert "z_gaps_mm" not in complete.metadata
    z = [float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]) for path in files]
    kept = [path for n, path in enumerate(files) if n not in (20, 41)]
    gapped = read_volume(_copy(kept, tmp_path / "gapped"))
    assert gapped.metadata["z_gaps_mm"] == [pytest.approx((z[19], z[21]), abs=0.01),
                                            pytest.approx((z[40], z[42]), abs=0.01)]


def test_real_head_whose_thickness_changes_part_way(tmp_path):
    """The real head as a scanner writes a series with a thin and a thick part: its first 30 slices as they are
    (2 mm at 1.5 mm), then every second slice stated as 3.5 mm thick (3 mm apart). No gap; a slice taken out
    of the thick part is one, and each slice keeps its own thickness for the verdicts."""
    files = _real_head(tmp_path)[:80]
    chosen = files[:30] + files[30::2]
    thickness = [2.0] * 30 + [3.5] * (len(chosen) - 30)
    volume = read_volume(_copy(chosen, tmp_path / "parts", thickness))
    assert volume.metadata.get("z_gaps_mm", []) == []
    per_slice = np.asarray(volume.metadata["slice_thickness_per_slice_mm"])
    order = np.argsort(volume.z_mm())
    assert sorted(per_slice.tolist()) == sorted(thickness)
    assert list(per_slice[order]) == thickness  # the thin part is the lower one
    missing = [path for path in chosen if path != chosen[40]]
    thick = [t for path, t in zip(chosen, thickness) if path != chosen[40]]
    gapped = read_volume(_copy(missing, tmp_path / "gapped", thick))
    assert len(gapped.metadata["z_gaps_mm"]) == 1
    below, above = gapped.metadata["z_gaps_mm"][0]
    assert above - below == pytest.approx(6.0, abs=0.05)


def test_verdicts_rest_on_each_slices_own_thickness(tmp_path):
    """Scored with the shipped model, the thin and the thick part of that series are each judged at their own
    thickness: the dose equivalent is the region's reference variance over noise^2 x that slice's thickness."""
    from DistilIQALib.quality.interpretation import noise_dose_equivalent, region_references
    from DistilIQALib.quality.scoring import Scorer

    files = _real_head(tmp_path)[30:70]
    chosen = files[:12] + files[12::2]
    thickness = [2.0] * 12 + [3.5] * (len(chosen) - 12)
    volume = read_volume(_copy(chosen, tmp_path / "parts", thickness))
    scores = Scorer(device="cpu").score_volume(volume, region="head")
    own = np.asarray(volume.metadata["slice_thickness_per_slice_mm"])
    np.testing.assert_array_equal(scores.thickness_per_slice_mm, own)
    reference = region_references(scores.info.noise_reference)["head"]
    expected = noise_dose_equivalent(scores.noise_hu, own, scores.diameter_cm, reference)
    judged = np.isfinite(scores.verdicts.dose_equivalent)
    assert judged.sum() >= 20 and set(own[judged]) == {2.0, 3.5}
    np.testing.assert_allclose(scores.verdicts.dose_equivalent[judged], expected[judged], rtol=1e-6)

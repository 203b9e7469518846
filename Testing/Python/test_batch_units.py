"""Batch QC on a small archive with a quickly made model: what is stored for each series and slice, shards,
reruns and the stored results read back. The larger archive with every kind of damage is in test_batch.py."""
import hashlib
import io
import sqlite3

import numpy as np
import pydicom
import pytest
from PIL import Image

from DistilIQALib.batch import in_shard, parse_shard, run_batch, stored_scores, write_summary_csv
from DistilIQALib.dicom_writing import write_series
from DistilIQALib.errors import InputError
from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.progress import Progress
from DistilIQALib.reading import read_volume
from DistilIQALib.scoring import Scorer
from DistilIQALib.store import ResultStore

from .conftest import TEST_BANDS, TEST_CALIBRATION, write_untrained_weights

SPACING = (5.6, 5.6, 5.0)
GOOD = ["1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"]
SCOUT = "1.2.826.0.1.3680043.8.498.103"
GAP = "1.2.826.0.1.3680043.8.498.104"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_untrained_weights(tmp_path_factory.mktemp("w") / "w.safetensors", num_outputs=2,
                                   adequacy=TEST_BANDS, dose_calibration=TEST_CALIBRATION,
                                   provenance={"purpose": "trained"})


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    for n, uid in enumerate(GOOD):
        write_series(phantom_volume(4, size=64, pixel_mm=5.6, noise_sd_hu=10.0 + 30 * n, seed=n), root / f"s{n}",
                     spacing_mm=SPACING, series_uid=uid, series_description=f"abdomen {n}", patient_id=f"P{n}",
                     extra={"KVP": "100", "ExposureTime": "500"})
    write_series(phantom_volume(3, size=64, pixel_mm=5.6, seed=7), root / "scout", spacing_mm=SPACING,
                 series_uid=SCOUT, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    paths = write_series(phantom_volume(5, size=64, pixel_mm=5.6, seed=8), root / "gap", spacing_mm=SPACING,
                         series_uid=GAP)
    middle = min(paths, key=lambda path: abs(float(pydicom.dcmread(path).ImagePositionPatient[2]) - 10.0))
    middle.write_bytes(middle.read_bytes()[:-2000])  # pixels cut short: this slice cannot be decoded
    return root


@pytest.fixture(scope="module")
def run(archive, weights, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "results.sqlite"
    seen = []
    summary = run_batch(archive, store, Scorer(str(weights), device="cpu"), workers=1,
                        progress=Progress(lambda done, total, stage: seen.append((done, total, stage[:6]))))
    return store, summary, seen


def _rows(store):
    with ResultStore(store) as results:
        return {row["series_uid"]: row for row in results.series_rows()}


def test_each_series_row_summarises_its_slices(archive, weights, run):
    store, summary, _ = run
    rows = _rows(store)
    weights_id = Scorer(str(weights), device="cpu").info.weights_id
    with ResultStore(store) as results:
        for n, uid in enumerate(GOOD):
            direct = Scorer(str(weights), device="cpu").score_volume(read_volume(archive / f"s{n}"))
            slices = results.slice_rows(uid, weights_id)
            assert [s["score"] for s in slices] == [round(float(v), 5) for v in direct.score]
            assert [s["z_mm"] for s in slices] == [0.0, 5.0, 10.0, 15.0]
            row = rows[uid]
            assert row["status"] == "scored" and row["reason"] is None and row["num_slices"] == 4
            assert row["mean_score"] == pytest.approx(float(np.mean(direct.score)), abs=1e-5)
            assert row["min_score"] == pytest.approx(float(np.min(direct.score)), abs=1e-5)
            assert row["worst_slice"] == int(np.argmin(direct.score))
            assert row["fraction_inadequate"] == pytest.approx(float(np.mean(direct.score < 0.5)), abs=1e-4)
            assert row["mean_noise_hu"] == pytest.approx(float(np.mean(direct.noise_hu)), abs=0.01)
            assert (row["description"], row["patient_id"], row["kvp"]) == (f"abdomen {n}", f"P{n}", 100.0)
            assert row["num_files"] == 4 and row["folder"] == str(archive / f"s{n}") and row["seconds"] > 0
            thumbnail = Image.open(io.BytesIO(row["worst_thumbnail_png"]))
            assert thumbnail.size == (64, 64) and thumbnail.mode == "L"
    assert summary.scored == 3 and summary.skipped == 1 and summary.failed == 0 and summary.slices == 12
    assert summary.skip_reasons == {"localizer/scout": 1} and summary.already_done == 0


def test_the_worst_slice_thumbnail_shows_that_slice_in_the_default_window(archive, weights, run):
    store = run[0]
    direct = Scorer(str(weights), device="cpu").score_volume(read_volume(archive / "s1"))
    hu = read_volume(archive / "s1").hu[int(np.argmin(direct.score))]
    expected = np.rint(np.clip((hu + 135.0) / 350.0, 0, 1) * 255)  # W350/L40: -135..215 HU
    thumbnail = np.asarray(Image.open(io.BytesIO(_rows(store)[GOOD[1]]["worst_thumbnail_png"])))
    np.testing.assert_array_equal(thumbnail, expected)


def test_skipped_and_gapped_series_say_why(run):
    store, _, seen = run
    rows = _rows(store)
    assert rows[SCOUT]["status"] == "skipped" and rows[SCOUT]["reason"].startswith("localizer/scout")
    assert rows[SCOUT]["mean_score"] is None
    assert rows[GAP]["status"] == "scored" and rows[GAP]["num_slices"] == 4
    assert rows[GAP]["reason"].startswith("z gap: slices missing between z 5.0 and 15.0 mm; 1 corrupt slice file(s) "
                                          "not scored (CT")
    with ResultStore(store) as results:
        assert [p["message"] for p in results.problem_rows()] == [
            "corrupt slice file (cannot be decoded), not scored"]
    assert seen[0] == (0, 3, "series") and seen[-1][:2] == (3, 3) and len(seen) == 4


def test_a_rerun_skips_what_is_done_and_rescore_redoes_it(archive, weights, run, tmp_path):
    import shutil

    store = tmp_path / "copy.sqlite"
    shutil.copy(run[0], store)
    scorer = Scorer(str(weights), device="cpu")
    again = run_batch(archive, store, scorer, workers=1)
    assert (again.scored, again.skipped, again.already_done, again.slices) == (0, 0, 4, 0)
    redo = run_batch(archive, store, scorer, workers=1, rescore=True)
    assert (redo.scored, redo.skipped, redo.already_done) == (3, 1, 0)
    assert {uid: row["mean_score"] for uid, row in _rows(store).items()} == \
        {uid: row["mean_score"] for uid, row in _rows(run[0]).items()}


def test_shards_split_the_series_by_a_hash_of_their_uid(archive, weights, tmp_path):
    # The part of a series is its SHA-1 (as a big number) modulo the number of parts.
    def part_of(uid, parts):
        return int.from_bytes(hashlib.sha1(uid.encode()).digest(), "big") % parts + 1

    for uid in GOOD + [SCOUT, GAP]:
        assert [in_shard(uid, (k, 3)) for k in (1, 2, 3)] == [k == part_of(uid, 3) for k in (1, 2, 3)]
    scorer = Scorer(str(weights), device="cpu")
    for k in (1, 2):
        run_batch(archive, tmp_path / f"part{k}.sqlite", scorer, shard=(k, 2), workers=1)
        assert set(_rows(tmp_path / f"part{k}.sqlite")) == {u for u in GOOD + [SCOUT, GAP] if part_of(u, 2) == k}


def test_shard_text_and_missing_root(tmp_path, weights):
    assert parse_shard(None) == (1, 1) and parse_shard("") == (1, 1)
    assert parse_shard("2/3") == (2, 3) and parse_shard("1/1") == (1, 1) and parse_shard("3/3") == (3, 3)
    for text, message in (("0/3", "k must be between 1 and n"), ("4/3", "k must be between 1 and n"),
                          ("a/b", "must look like k/n"), ("1/2/3", "must look like k/n"), ("3", "must look like")):
        with pytest.raises(InputError, match=message):
            parse_shard(text)
    with pytest.raises(InputError, match="no such folder"):
        run_batch(tmp_path / "nowhere", tmp_path / "r.sqlite", Scorer(str(weights), device="cpu"))


def test_stored_scores_give_back_each_slice_without_rescoring(run, weights):
    store = run[0]
    with ResultStore(store) as results:
        weights_id = results.series_rows()[0]["weights_id"]
        rows = results.slice_rows(GOOD[0], weights_id)
    stored = stored_scores(store, GOOD[0], str(weights))
    np.testing.assert_allclose(stored.score, [r["score"] for r in rows], atol=1e-6)
    np.testing.assert_allclose(stored.score_spread, [r["score_spread"] for r in rows], atol=1e-6)
    np.testing.assert_allclose(stored.noise_hu, [r["noise_hu"] for r in rows], atol=1e-4)
    np.testing.assert_allclose(stored.z_mm, [0.0, 5.0, 10.0, 15.0])
    assert stored.source == "abdomen 0" and stored.device == "stored" and stored.elapsed_s > 0
    assert [row["adequacy"] for row in stored.rows()] == [r["adequacy"] for r in rows]
    with pytest.raises(InputError, match="series 9.9 has no stored scores from model"):
        stored_scores(store, "9.9", str(weights))


def test_summary_csv_lists_every_series_worst_first(run, tmp_path):
    assert write_summary_csv(run[0], tmp_path / "summary.csv") == 4
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("status,reason,patient_id,study_date,description,")
    connection = sqlite3.connect(run[0])
    expected = [uid for (uid,) in connection.execute(
        "SELECT series_uid FROM series WHERE status = 'scored' ORDER BY fraction_inadequate DESC, mean_score")]
    connection.close()
    assert [line.split(",")[-3] for line in lines[1:4]] == expected and lines[4].startswith("skipped,")

"""Batch QC on a small archive with a quickly made model: what is stored for each series and slice, shards,
reruns and the stored results read back. The larger archive with every kind of damage is in test_batch.py."""
import hashlib
import io
import re
import time

import numpy as np
import pydicom
import pytest
from PIL import Image

from DistilIQALib.archive.batch import in_shard, parse_shard, run_batch, stored_scores, write_summary_csv
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.errors import InputError
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.io.reading import read_volume
from DistilIQALib.progress import Progress
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import read_info
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import TEST_BANDS, TEST_CALIBRATION, query_rows, write_untrained_weights

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
    with pytest.raises(ValueError, match="unknown scan executor 'fibres'"):  # a misspelt choice is not ignored
        run_batch(tmp_path, tmp_path / "r.sqlite", Scorer(str(weights), device="cpu"), scan_executor="fibres")


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
    assert b"\r" not in (tmp_path / "summary.csv").read_bytes()  # plain newlines, also on Windows
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("status,reason,patient_id,study_date,description,")
    expected = [uid for (uid,) in query_rows(
        run[0], "SELECT series_uid FROM series WHERE status = 'scored' ORDER BY fraction_inadequate DESC, mean_score")]
    assert [line.split(",")[-3] for line in lines[1:4]] == expected and lines[4].startswith("skipped,")


# --- series that are damaged or cannot be read, each run scoring its own small archive -------------------


def _by_z(paths):
    return sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-2000])  # the header parses, the image reader refuses the file


def _spoil_pixels(path):
    """Zeros over most of the compressed pixel data, same length: the header and image information read,
    the pixels do not decode."""
    data = bytearray(path.read_bytes())
    data[-1500:-100] = bytes(1400)
    path.write_bytes(bytes(data))


def _slices(root, name, count, uid, seed, **options):
    return _by_z(write_series(phantom_volume(count, size=64, pixel_mm=5.6, seed=seed), root / name,
                              spacing_mm=SPACING, series_uid=uid, **options))


def _problems(store):
    return sorted(query_rows(store, "SELECT path, series_uid, message FROM problems"))


def test_series_that_cannot_be_read_are_recorded_as_failed_with_why(tmp_path, weights):
    root = tmp_path / "archive"
    few, rle3, mixed, mixed_rle = ("1.2.826.0.1.3680043.8.498.201", "1.2.826.0.1.3680043.8.498.202",
                                   "1.2.826.0.1.3680043.8.498.203", "1.2.826.0.1.3680043.8.498.204")
    lone = ["1.2.826.0.1.3680043.8.498.205", "1.2.826.0.1.3680043.8.498.206"]
    few_paths = _slices(root, "few", 4, few, 1)
    for path in few_paths[1:3]:
        _truncate(path)
    rle3_paths = _slices(root, "rle3", 3, rle3, 2, transfer_syntax="rle")
    _spoil_pixels(rle3_paths[1])
    _slices(root, "mixed", 4, mixed, 3)
    write_series(phantom_volume(1, size=80, pixel_mm=5.6), root / "mixed", spacing_mm=SPACING, series_uid=mixed,
                 origin_mm=(-179.0, -179.0, 20.0))
    mixed_rle_paths = _slices(root, "mixed_rle", 4, mixed_rle, 4, transfer_syntax="rle")
    _spoil_pixels(mixed_rle_paths[1])
    write_series(phantom_volume(1, size=80, pixel_mm=5.6), root / "mixed_rle", spacing_mm=SPACING,
                 series_uid=mixed_rle, origin_mm=(-179.0, -179.0, 20.0), transfer_syntax="rle")
    for n, uid in enumerate(lone):
        _slices(root, f"lone{n}", 1, uid, 5 + n)
    (root / "notes.txt").write_text("scanned on the old machine")
    store = tmp_path / "results.sqlite"
    seen = []
    summary = run_batch(root, store, Scorer(str(weights), device="cpu"), workers=1,
                        progress=Progress(lambda done, total, stage: seen.append((done, total, stage))))

    assert (summary.scored, summary.failed, summary.skipped, summary.slices) == (0, 4, 2, 0)
    assert summary.skip_reasons == {"only 1 image(s)": 2} and summary.unreadable_files == 1
    # one update before the first series, one after each; nothing scored: no slices per second yet
    assert seen == [(0, 4, "series")] + [(n, 4, "series (0.0 slices/s)") for n in (1, 2, 3, 4)]
    rows = _rows(store)
    assert {uid: rows[uid]["status"] for uid in rows} == {**{uid: "failed" for uid in (few, rle3, mixed, mixed_rle)},
                                                          **{uid: "skipped" for uid in lone}}
    assert rows[few]["reason"] == f"only 2 of the 4 files of series {few} can be read"
    assert rows[rle3]["reason"] == f"only 2 of the 3 files of series {rle3} can be read"
    for uid in (mixed, mixed_rle):
        assert rows[uid]["reason"].startswith(f"the DICOM series in series {uid} mixes matrix sizes: 64x64 (")
        assert rows[uid]["reason"].endswith(".dcm)") and ", 80x80 (CT" in rows[uid]["reason"]
    for uid in lone:
        assert rows[uid]["reason"] == "only 1 image(s)" and rows[uid]["folder"] == str(root / f"lone{lone.index(uid)}")
        assert rows[uid]["slice_thickness_mm"] == 5.0 and rows[uid]["num_files"] == 1
    assert all(row["mean_score"] is None and row["num_slices"] is None for row in rows.values())
    with ResultStore(store) as results:
        assert results.done(rows[few]["weights_id"]) == set(lone)  # failed series are tried again on a rerun
    # each failed series is a problem at its first file (in the archive's order); each corrupt file is one too
    corrupt = "corrupt slice file (cannot be decoded), not scored"
    expected = [(str(min((root / name).iterdir())), uid, rows[uid]["reason"])
                for name, uid in (("few", few), ("rle3", rle3), ("mixed", mixed), ("mixed_rle", mixed_rle))]
    expected += [(str(path), few, corrupt) for path in few_paths[1:3]]
    expected += [(str(rle3_paths[1]), rle3, corrupt), (str(mixed_rle_paths[1]), mixed_rle, corrupt)]
    expected += [(str(root / "notes.txt"), None, "unreadable: not a DICOM file")]
    assert _problems(store) == sorted(expected)


def test_damaged_series_are_scored_without_their_broken_files_and_the_note_names_them(tmp_path, weights):
    root = tmp_path / "archive"
    many, spoiled = "1.2.826.0.1.3680043.8.498.211", "1.2.826.0.1.3680043.8.498.212"
    many_paths = _slices(root, "many", 8, many, 11)  # z 0, 5, ... 35 mm
    for path in many_paths[1:5]:
        _truncate(path)
    spoiled_paths = _slices(root, "spoiled", 9, spoiled, 12, study_uid=spoiled + ".1")
    _truncate(spoiled_paths[2])
    _truncate(spoiled_paths[8])
    # slice 5 compressed (RLE, the same instance) with pixels that do not decode: found only when the series
    # fails to read, then the other files are scored
    compressed = _slices(tmp_path / "rle", "spoiled", 9, spoiled, 12, study_uid=spoiled + ".1", transfer_syntax="rle")
    assert compressed[5].name == spoiled_paths[5].name
    spoiled_paths[5].write_bytes(compressed[5].read_bytes())
    _spoil_pixels(spoiled_paths[5])
    anonymous = _slices(root, "anonymous", 5, "1.2.826.0.1.3680043.8.498.213", 13)
    for path in anonymous:
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID, ds.StudyInstanceUID
        ds.save_as(path)
    anonymous[2].unlink()  # a slice missing, none corrupt
    store = tmp_path / "results.sqlite"
    summary = run_batch(root, store, Scorer(str(weights), device="cpu"), workers=1)

    assert (summary.scored, summary.failed, summary.skipped, summary.slices) == (3, 0, 0, 4 + 6 + 4)
    rows = _rows(store)
    names = [path.name for path in many_paths[1:4]]
    assert rows[many]["reason"] == (f"z gap: slices missing between z 0.0 and 25.0 mm; 4 corrupt slice file(s) not "
                                    f"scored ({names[0]}, {names[1]}, {names[2]} ...)")
    names = [path.name for path in (spoiled_paths[2], spoiled_paths[8], spoiled_paths[5])]
    assert rows[spoiled]["reason"] == ("z gap: slices missing between z 5.0 and 15.0 mm, 20.0 and 30.0 mm; "
                                       f"3 corrupt slice file(s) not scored ({', '.join(names)})")
    (key,) = [uid for uid in rows if uid.startswith("nouid-")]
    assert rows[key]["reason"] == "no SeriesInstanceUID: grouped by folder; z gap: slices missing between z 5.0 and " \
                                  "15.0 mm"
    z = {uid: [value for (value,) in query_rows(
        store, "SELECT z_mm FROM slices WHERE series_uid = ? ORDER BY slice_index", (uid,))] for uid in rows}
    assert z == {many: [0.0, 25.0, 30.0, 35.0], spoiled: [0.0, 5.0, 15.0, 20.0, 30.0, 35.0],
                 key: [0.0, 5.0, 15.0, 20.0]}
    assert [row["num_slices"] for row in (rows[many], rows[spoiled], rows[key])] == [4, 6, 4]
    corrupt = "corrupt slice file (cannot be decoded), not scored"
    assert _problems(store) == sorted([(str(path), many, corrupt) for path in many_paths[1:5]] + [
        (str(spoiled_paths[n]), spoiled, corrupt) for n in (2, 5, 8)])


def test_a_series_row_keeps_the_header_facts_and_the_time_it_took(tmp_path, weights):
    root = tmp_path / "archive"
    uid = "1.2.826.0.1.3680043.8.498.221"
    paths = _slices(root, "chest", 3, uid, 23, study_uid=uid + ".1",  # 3 slices: the fewest a series may have
                    extra={"Manufacturer": "ACME", "ManufacturerModelName": "Scan 9", "ConvolutionKernel": "B30f",
                           "Exposure": "250", "KVP": "120"})
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.StudyDate = "Doe^Jane", "20230405"
        del ds.SliceThickness  # the scorer takes the slice spacing, 5 mm
        ds.save_as(path)
    store = tmp_path / "results.sqlite"
    seen = []
    started = time.monotonic()
    summary = run_batch(root, store, Scorer(str(weights), device="cpu"), workers=1,
                        progress=Progress(lambda done, total, stage: seen.append((done, total, stage))))
    wall = time.monotonic() - started

    row = _rows(store)[uid]
    assert (row["status"], row["reason"], row["num_slices"], row["num_files"]) == ("scored", None, 3, 3)
    assert (row["patient_name"], row["study_uid"], row["study_date"]) == ("Doe^Jane", uid + ".1", "20230405")
    assert (row["scanner_model"], row["kernel"], row["kvp"], row["exposure_mas"]) == ("ACME Scan 9", "B30f", 120.0,
                                                                                       250.0)
    assert row["slice_thickness_mm"] == 5.0
    assert 0 < row["seconds"] <= summary.seconds <= wall
    assert summary.slices == 3 and summary.slices_per_second == pytest.approx(3 / summary.seconds)
    assert seen[0] == (0, 1, "series") and seen[1][:2] == (1, 1) and len(seen) == 2
    rate = re.fullmatch(r"series \((\d+\.\d) slices/s\)", seen[1][2])
    assert rate and float(rate.group(1)) >= round(3 / wall, 1) - 0.05  # the pace so far: 3 slices in under `wall`
    # the thumbnail is the worst slice (lowest stored score) in the default window, W350/L40
    scores = [score for (score,) in query_rows(
        store, "SELECT score FROM slices WHERE series_uid = ? ORDER BY slice_index", (uid,))]
    worst = int(np.argmin(scores))
    assert worst != 0 and row["worst_slice"] == worst  # not the first slice, so the thumbnail shows the choice
    ds = pydicom.dcmread(paths[worst])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint(np.clip((hu + 135.0) / 350.0, 0, 1) * 255)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(row["worst_thumbnail_png"]))), expected)


def test_a_header_thickness_of_zero_is_stored_as_the_spacing_the_scorer_used(tmp_path, weights):
    """Verdicts read back from the store rest on the stored thickness: it must be the one the scorer used (the
    5 mm slice spacing when the header states 0), never the meaningless 0."""
    root = tmp_path / "archive"
    uid = "1.2.826.0.1.3680043.8.498.225"
    for path in _slices(root, "chest", 3, uid, 23, study_uid=uid + ".1"):
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "0"
        ds.save_as(path)
    store = tmp_path / "results.sqlite"
    run_batch(root, store, Scorer(str(weights), device="cpu"), workers=1)
    assert _rows(store)[uid]["slice_thickness_mm"] == 5.0


def test_stored_scores_read_back_what_the_store_holds_for_that_model(weights, tmp_path):
    weights_id = read_info(weights).weights_id
    uid, older = "1.2.826.0.1.3680043.8.498.231", "1.2.826.0.1.3680043.8.498.232"
    store = tmp_path / "results.sqlite"
    with ResultStore(store) as results:
        results.write_series({"series_uid": uid, "weights_id": weights_id, "status": "scored", "description": "chest",
                              "slice_thickness_mm": 2.5, "seconds": 3.25, "fraction_inadequate": 0.0}, [
            {"slice_index": 0, "z_mm": 0.0, "score": 0.9, "score_spread": 0.05, "noise_hu": 12.0,
             "water_diameter_cm": 30.0},
            {"slice_index": 1, "z_mm": 2.5, "score": 0.6, "score_spread": None, "noise_hu": None,
             "water_diameter_cm": None},
            {"slice_index": 2, "z_mm": 5.0, "score": 0.3, "score_spread": 0.0, "noise_hu": 20.0,
             "water_diameter_cm": 25.5}])
        # the same series scored by another model, listed first among the series rows (all its slices inadequate)
        results.write_series({"series_uid": uid, "weights_id": "another-model", "status": "scored",
                              "description": "chest, other model", "slice_thickness_mm": 1.0, "seconds": 99.0,
                              "fraction_inadequate": 1.0}, [{"slice_index": 0, "z_mm": 0.0, "score": 0.1}])
        # a row from a store older than the slice thickness column
        results.write_series({"series_uid": older, "weights_id": weights_id, "status": "scored", "seconds": 1.5},
                             [{"slice_index": 0, "z_mm": 0.0, "score": 0.7, "score_spread": 0.1, "noise_hu": 9.0}])
    stored = stored_scores(store, uid, str(weights))
    np.testing.assert_array_equal(stored.score, np.float32([0.9, 0.6, 0.3]))
    np.testing.assert_allclose(stored.score_spread, [0.05, 0.0, 0.0], atol=1e-6)  # no spread stored: none
    np.testing.assert_array_equal(stored.noise_hu, np.float32([12.0, np.nan, 20.0]))
    np.testing.assert_array_equal(stored.diameter_cm, np.float32([30.0, np.nan, 25.5]))
    np.testing.assert_array_equal(stored.z_mm, [0.0, 2.5, 5.0])
    # float32 like the scorer's own results
    assert {stored.score.dtype, stored.outputs.dtype, stored.noise_hu.dtype, stored.diameter_cm.dtype} == \
        {np.dtype(np.float32)}
    assert (stored.thickness_mm, stored.source, stored.elapsed_s) == (2.5, "chest", 3.25)
    assert [row["adequacy"] for row in stored.rows()] == ["good", "borderline", "inadequate"]  # 0.8 / 0.5 bands
    old = stored_scores(store, older, str(weights))
    assert np.isnan(old.thickness_mm) and (old.source, old.elapsed_s) == (older, 1.5)
    np.testing.assert_array_equal(old.diameter_cm, np.float32([np.nan]))


def test_an_unexpected_reader_error_fails_that_series_only_and_names_the_error(archive, weights, tmp_path,
                                                                                 monkeypatch):
    import DistilIQALib.archive.batch as batch

    real_read = batch.read_dicom_files

    def read(files, what):
        if GAP in what:  # a library failure no input check foresaw, e.g. inside a decoder
            raise RuntimeError("decoder gave up on frame 3")
        return real_read(files, what)

    monkeypatch.setattr(batch, "read_dicom_files", read)
    store = tmp_path / "results.sqlite"
    summary = run_batch(archive, store, Scorer(str(weights), device="cpu"), workers=1)
    rows = _rows(store)
    assert rows[GAP]["status"] == "failed" and rows[GAP]["reason"] == "RuntimeError: decoder gave up on frame 3"
    assert rows[GOOD[0]]["status"] == rows[GOOD[1]]["status"] == "scored" and summary.failed == 1
    # the series' corrupt file found before the failure is still reported
    messages = {(uid, message) for _path, uid, message in _problems(store)}
    assert (GAP, "corrupt slice file (cannot be decoded), not scored") in messages
    assert (GAP, "RuntimeError: decoder gave up on frame 3") in messages

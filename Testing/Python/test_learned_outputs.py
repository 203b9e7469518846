"""A learned model's results (score = learned dose equivalent, NaN where a slice has no verdict; what set each
verdict, the noise or artefacts) carried through every output: the CSV, the plot, the batch store (new and
upgraded), the summary CSV, the archive report, and the files the Slicer panel reads back."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from DistilIQALib.archive.batch import _summary_fields, run_batch, stored_scores, write_summary_csv
from DistilIQALib.archive.report import write_html_report
from DistilIQALib.archive.store import ResultStore
from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.io.outputs import CSV_COLUMNS, write_csv, write_json, write_plot
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import read_info
from DistilIQALib.slicer_bridge.jobs import read_score_results
from DistilIQALib.training.phantoms import phantom_volume

from .conftest import write_untrained_weights
from .learned import ADEQUACY, ARTEFACT_SLICE, DRIVERS, NO_VERDICT_SLICE, NOISE_HU, learned_info, learned_scores

#: The plot's colour for the learned dose equivalent and the slices artefacts set (#d35400).
ARTEFACT_RGB = (211, 84, 0)


@pytest.fixture(scope="module")
def learned_weights(tmp_path_factory):
    """An untrained one-output model carrying a learned model's metadata (score name, bands, per-region reference)."""
    info = learned_info()
    return write_untrained_weights(tmp_path_factory.mktemp("learned") / "learned.safetensors", num_outputs=1,
                                   score=info.score, adequacy=info.adequacy, noise_reference=info.noise_reference)


def test_rows_say_what_set_each_verdict_and_keep_the_effective_noise():
    scores = learned_scores()
    rows = scores.rows()
    assert [row["driver"] for row in rows] == DRIVERS
    assert [row["adequacy"] for row in rows] == ADEQUACY
    assert [row["effective_noise_hu"] for row in rows] == [10.5, 46.0, 18.0, 12.0, 30.0, None]
    # slice 1: 200 / (46 / 1.15)^2 = 0.125 of a routine dose as the network sees it, 2.0 from its noise
    assert rows[ARTEFACT_SLICE]["score"] == 0.125 and rows[ARTEFACT_SLICE]["dose_equivalent"] == 2.0
    assert rows[NO_VERDICT_SLICE]["score"] is None and rows[NO_VERDICT_SLICE]["dose_equivalent"] is None
    assert scores.summary()["drivers"] == {"noise": 4, "artefacts": 1}


def test_csv_has_the_effective_noise_and_driver_and_leaves_a_missing_score_empty():
    buffer = io.StringIO()
    write_csv(learned_scores(), buffer)
    reader = csv.DictReader(io.StringIO(buffer.getvalue()))
    rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert reader.fieldnames[-6:] == ["effective_noise_hu", "driver", "ctdivol_mgy", "dw_cm", "ssde_mgy",
                                      "above_routine_basis"]
    assert [row["driver"] for row in rows] == DRIVERS
    assert rows[ARTEFACT_SLICE]["effective_noise_hu"] == "46.0" and rows[-1]["effective_noise_hu"] == ""
    assert rows[NO_VERDICT_SLICE]["score"] == "" and rows[ARTEFACT_SLICE]["score"] == "0.125"
    assert "nan" not in buffer.getvalue().lower()


def _artefact_pixels(path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(ARTEFACT_RGB)).sum(axis=2) <= 6).sum())


def test_plot_draws_the_learned_dose_and_the_slices_artefacts_set_and_survives_missing_scores(tmp_path):
    learned = learned_scores()
    write_plot(learned, tmp_path / "learned.png")
    # the learned dose equivalent and the triangles of the slice artefacts set are drawn in their own colour
    assert _artefact_pixels(tmp_path / "learned.png") > 50
    older = learned_scores(effective=None)  # the same slices from a model without an effective noise
    older.score = np.linspace(0.9, 0.5, len(NOISE_HU)).astype(np.float32)
    write_plot(older, tmp_path / "older.png")
    assert _artefact_pixels(tmp_path / "older.png") == 0
    # no slice with a verdict (no routine level for the chest in this model): every score is NaN
    nothing = learned_scores(region="chest")
    assert np.isnan(nothing.score).all()
    write_plot(nothing, tmp_path / "nothing.png")
    for name in ("learned.png", "older.png", "nothing.png"):
        image = Image.open(tmp_path / name)
        assert image.format == "PNG" and image.size[0] > 500


def test_the_panels_files_read_back_keep_the_effective_noise_and_the_missing_scores(tmp_path, learned_weights):
    scores = learned_scores(info=read_info(learned_weights))
    write_csv(scores, tmp_path / "scores.csv")
    write_json(scores, tmp_path / "summary.json")
    back = read_score_results(tmp_path / "scores.csv", tmp_path / "summary.json", str(learned_weights))
    np.testing.assert_allclose(back.effective_noise_hu, [10.5, 46.0, 18.0, 12.0, 30.0, np.nan])
    assert np.isnan(back.score[NO_VERDICT_SLICE]) and back.driver == DRIVERS
    assert [row["adequacy"] for row in back.rows()] == ADEQUACY
    assert np.isfinite(back.score_spread).all()  # a missing score leaves no NaN spread behind
    assert json.loads((tmp_path / "summary.json").read_text())["drivers"] == {"noise": 4, "artefacts": 1}


def _write_learned_series(store, uid, weights_id, scores):
    record = {"series_uid": uid, "weights_id": weights_id, "status": "scored", "patient_id": "P1",
              "slice_thickness_mm": 5.0, "kernel": "B30f", "kvp": 120.0, "scanner_model": "S",
              **_summary_fields(scores)}
    store.write_series(record, scores.rows())


def test_store_keeps_effective_noise_and_driver_and_stored_scores_give_the_same_verdicts(tmp_path, learned_weights):
    info = read_info(learned_weights)
    scores = learned_scores(info=info)
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        _write_learned_series(store, "S1", info.weights_id, scores)
        slices = store.slice_rows("S1", info.weights_id)
        series = store.series_rows()[0]
    assert [row["driver"] for row in slices] == DRIVERS
    assert [row["effective_noise_hu"] for row in slices] == [10.5, 46.0, 18.0, 12.0, 30.0, None]
    assert slices[NO_VERDICT_SLICE]["score"] is None
    assert series["artefact_slices"] == 1 and series["worst_slice"] == ARTEFACT_SLICE
    assert series["min_score"] == 0.125
    back = stored_scores(path, "S1", str(learned_weights))
    assert back.driver == DRIVERS and [row["adequacy"] for row in back.rows()] == ADEQUACY
    assert np.isnan(back.score[NO_VERDICT_SLICE]) and back.score[ARTEFACT_SLICE] == pytest.approx(0.125)
    np.testing.assert_allclose(back.effective_noise_hu, scores.effective_noise_hu)
    write_summary_csv(path, tmp_path / "summary.csv")
    assert next(csv.DictReader(open(tmp_path / "summary.csv")))["artefact_slices"] == "1"


def test_report_counts_the_slices_artefacts_set_per_series_and_names_the_worst_slices_driver(tmp_path,
                                                                                             learned_weights):
    info = read_info(learned_weights)
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        _write_learned_series(store, "S1", info.weights_id, learned_scores(info=info))
        # the same slices with an effective noise that never exceeds the measured noise: the noise sets every verdict
        _write_learned_series(store, "S2", info.weights_id, learned_scores(info=info, effective=[5.0] * 6))
        # no verdict on any slice: no score, no count
        _write_learned_series(store, "S3", info.weights_id, learned_scores(info=info, region="chest"))
        rows = {row["series_uid"]: row for row in store.series_rows()}
    assert (rows["S1"]["artefact_slices"], rows["S2"]["artefact_slices"], rows["S3"]["artefact_slices"]) == (
        1, 0, None)
    assert rows["S3"]["worst_slice"] is None and rows["S3"]["mean_score"] is None
    write_html_report(path, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "1 with slices whose verdict was set by artefacts" in page
    assert "<th>slices set by artefacts</th>" in page and "<th>worst slice set by</th>" in page
    series = page.split("<h2>Series</h2>")[1].split("<h2>")[0]
    line = next(row for row in series.split("<tr") if ">S1<" in row)
    assert line.startswith(' class="inadequate artefacts"')  # slice 1 is inadequate
    assert '<td class="num artefacts">1</td><td>artefacts</td>' in line
    quiet = next(row for row in series.split("<tr") if ">S2<" in row)
    assert '<td class="num artefacts">0</td><td>noise</td>' in quiet
    # the sparkline marks the slice artefacts set, and leaves a gap at the slice without a score (slice 4): a line
    # through slices 0-3 and a dot at slice 5
    assert line.count('fill="#d35400"') == 1 and line.count("<polyline") == 1 and line.count('r="1.2"') == 1
    protocols = page.split("<h2>Protocols</h2>")[1].split("<h2>")[0]
    assert "<th>series with slices set by artefacts</th>" in protocols


def test_a_batch_run_with_a_learned_model_stores_drivers_and_survives_series_without_a_verdict(tmp_path,
                                                                                                learned_weights):
    root = tmp_path / "archive"
    uid = "1.2.826.0.1.3680043.8.498.901"
    write_series(phantom_volume(4, size=64, pixel_mm=5.6, noise_sd_hu=20.0, seed=1), root / "s", series_uid=uid,
                 spacing_mm=(5.6, 5.6, 5.0))
    scorer = Scorer(str(learned_weights), device="cpu")
    for region, store in (("abdomen", tmp_path / "abdomen.sqlite"), ("chest", tmp_path / "chest.sqlite")):
        summary = run_batch(root, store, scorer, workers=1, region=region)
        assert summary.scored == 1 and summary.failed == 0
        with ResultStore(store) as results:
            row = results.series_rows()[0]
            slices = results.slice_rows(uid, scorer.info.weights_id)
        # the network's effective noise is kept for every slice, whatever the verdict
        assert all(s["effective_noise_hu"] is not None and s["effective_noise_hu"] > 0 for s in slices)
        assert row["worst_thumbnail_png"][:8] == b"\x89PNG\r\n\x1a\n"
        if region == "abdomen":  # a routine level: every slice has a verdict and what set it
            assert {s["driver"] for s in slices} <= {"noise", "artefacts"} and row["artefact_slices"] is not None
            assert row["worst_slice"] is not None and row["mean_score"] is not None
        else:  # no routine level for the chest: no verdict, no score, no worst slice
            assert [s["driver"] for s in slices] == [""] * 4 and [s["score"] for s in slices] == [None] * 4
            assert (row["worst_slice"], row["mean_score"], row["artefact_slices"]) == (None, None, None)

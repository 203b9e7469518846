"""What a score means to a reader: adequacy bands (boundaries included), the fraction of inadequate slices and
the dose equivalent between calibration points. Expected values are worked out by hand in the comments."""
import numpy as np
import pytest

from DistilIQALib.quality.interpretation import adequacy_labels, dose_equivalent, lowest_adequate_score
from DistilIQALib.quality.scoring import SliceScores
from DistilIQALib.quality.weights import ModelInfo

from .conftest import TEST_BANDS, TEST_CALIBRATION

BANDS = {"bands": [{"name": "good", "min_score": 0.9}, {"name": "fair", "min_score": 0.7},
                   {"name": "poor", "min_score": 0.4}, {"name": "unusable", "min_score": None}]}


def test_each_score_gets_the_band_whose_minimum_it_reaches():
    # A score equal to a band's minimum belongs to that band; a hair below it to the next one down.
    scores = [0.95, 0.9, 0.8999, 0.7, 0.6999, 0.4, 0.3999, -5.0]
    assert adequacy_labels(np.array(scores), BANDS) == ["good", "good", "fair", "fair", "poor", "poor", "unusable",
                                                        "unusable"]


def test_bands_are_taken_from_the_weights_metadata_not_a_fixed_scale():
    # The same scores read with the test model's bands (0.8, 0.5) instead.
    assert adequacy_labels(np.array([0.85, 0.8, 0.79, 0.5, 0.49]), TEST_BANDS) == [
        "good", "good", "borderline", "borderline", "inadequate"]


def test_a_last_band_with_a_minimum_still_takes_everything_below():
    bands = {"bands": [{"name": "ok", "min_score": 0.5}, {"name": "low", "min_score": 0.2}]}
    assert adequacy_labels(np.array([0.6, 0.2, 0.1]), bands) == ["ok", "low", "low"]
    three = {"bands": [{"name": "ok", "min_score": 0.5}, {"name": "low", "min_score": 0.3},
                       {"name": "lowest", "min_score": 0.2}]}
    assert adequacy_labels(np.array([0.4, 0.25, 0.1]), three) == ["low", "lowest", "lowest"]


def test_a_score_that_is_not_a_number_is_put_in_the_worst_band():
    assert adequacy_labels(np.array([np.nan, np.inf, 0.95]), BANDS) == ["unusable", "unusable", "good"]


def test_without_bands_there_is_no_verdict():
    assert adequacy_labels(np.array([0.5]), None) is None
    assert adequacy_labels(np.array([0.5]), {"bands": []}) is None
    assert adequacy_labels(np.array([0.5]), {"reasoning": "none given"}) is None


def test_lowest_adequate_score_is_the_minimum_of_the_second_worst_band():
    assert lowest_adequate_score(BANDS) == 0.4
    assert lowest_adequate_score(TEST_BANDS) == 0.5
    assert isinstance(lowest_adequate_score({"bands": [{"name": "a", "min_score": 1}, {"name": "b"}]}), float)
    assert lowest_adequate_score({"bands": [{"name": "only", "min_score": None}]}) is None
    assert lowest_adequate_score(None) is None and lowest_adequate_score({"bands": []}) is None


def test_dose_equivalent_is_linear_between_table_points_and_clipped_at_the_ends():
    # Table (score -> dose): 0.2 -> 0.05, 0.5 -> 0.25, 0.8 -> 0.6, 1.0 -> 1.0.
    # 0.65 lies half way from 0.5 to 0.8: 0.25 + 0.5 * (0.6 - 0.25) = 0.425.
    # 0.3 lies a third of the way from 0.2 to 0.5: 0.05 + (0.25 - 0.05) / 3 = 0.11667.
    # 0.9 lies half way from 0.8 to 1.0: 0.6 + 0.5 * 0.4 = 0.8.
    scores = np.array([0.65, 0.3, 0.9, 0.5, 0.1, 1.3])
    expected = [0.425, 0.05 + 0.2 / 3, 0.8, 0.25, 0.05, 1.0]
    np.testing.assert_allclose(dose_equivalent(scores, TEST_CALIBRATION), expected, rtol=1e-12)


def test_dose_equivalent_of_a_table_given_in_any_order():
    shuffled = {"score": [0.8, 0.2, 1.0, 0.5], "dose_fraction": [0.6, 0.05, 1.0, 0.25]}
    np.testing.assert_allclose(dose_equivalent(np.array([0.65, 0.35]), shuffled), [0.425, 0.15], rtol=1e-12)
    assert dose_equivalent(np.array([0.65]), None) is None and dose_equivalent(np.array([0.65]), {}) is None


def _scores(score, outputs=None, noise=None, adequacy=TEST_BANDS, calibration=TEST_CALIBRATION):
    score = np.asarray(score, dtype=np.float32)
    count = len(score)
    info = ModelInfo(preset="tiny", architecture=None, adequacy=adequacy, dose_calibration=calibration)
    return SliceScores(slice_index=np.arange(count), z_mm=np.arange(count) * 2.5 - 10.0, score=score,
                       outputs=score[:, None] if outputs is None else np.asarray(outputs, dtype=np.float32),
                       noise_hu=np.full(count, 12.0, dtype=np.float32) if noise is None else np.asarray(noise),
                       info=info, source="test", device="cpu", elapsed_s=1.23456, matrix=(512, 512),
                       spacing_mm=(0.7, 0.7, 2.5))


def test_fraction_inadequate_counts_scores_below_the_threshold_only():
    # Threshold 0.5: of 0.9, 0.5 (on the line: adequate), 0.4999, 0.2 two are below: 2/4.
    summary = _scores([0.9, 0.5, 0.4999, 0.2]).summary()
    assert summary["adequacy_threshold"] == 0.5
    assert summary["fraction_inadequate"] == 0.5
    # 1 of 3 below: 0.3333 after rounding to 4 places.
    assert _scores([0.9, 0.6, 0.1]).summary()["fraction_inadequate"] == 0.3333
    without = _scores([0.9, 0.1], adequacy=None).summary()
    assert without["fraction_inadequate"] is None and without["adequacy_threshold"] is None


def test_rows_hold_each_slices_verdict_dose_and_spread():
    # Outputs per slice and their population standard deviation: (0.7, 0.9) -> 0.1; (0.4, 0.4) -> 0.
    scores = _scores([0.8, 0.4], outputs=[[0.7, 0.9], [0.4, 0.4]], noise=[11.04, np.nan])
    assert scores.rows() == [
        {"slice_index": 0, "z_mm": -10.0, "score": 0.8, "score_spread": 0.1, "noise_hu": 11.0,
         "water_diameter_cm": None, "dose_equivalent": 0.6, "adequacy": "good", "region": "unknown",
         "above_routine": False, "above_routine_basis": "", "verdict_note": "", "effective_noise_hu": None,
         "driver": ""},
        # dose: 0.05 + 0.2 * (0.2 / 0.3) = 0.18333
        {"slice_index": 1, "z_mm": -7.5, "score": 0.4, "score_spread": 0.0, "noise_hu": None,
         "water_diameter_cm": None, "dose_equivalent": 0.183, "adequacy": "inadequate", "region": "unknown",
         "above_routine": False, "above_routine_basis": "", "verdict_note": "", "effective_noise_hu": None,
         "driver": ""},
    ]
    plain = _scores([0.8], adequacy=None, calibration=None).rows()[0]
    assert plain["dose_equivalent"] is None and plain["adequacy"] is None and plain["score_spread"] == 0.0


def test_rows_are_rounded_to_the_documented_places():
    # z to 0.001 mm, score and spread to 5 places, noise to 0.1 HU, dose to 3 places.
    scores = _scores([0.123456789], outputs=[[0.1, 0.14691358]], noise=[11.44])
    scores.z_mm = np.array([3.14159265])
    row = scores.rows()[0]
    assert row["z_mm"] == 3.142 and row["score"] == 0.12346 and row["noise_hu"] == 11.4
    assert row["score_spread"] == 0.02346  # half the difference of the two outputs: 0.02345679
    assert row["dose_equivalent"] == 0.05  # below the table: its first dose


def test_summary_reports_the_worst_slices_in_order_and_the_mean_noise():
    scores = _scores([0.9, 0.3, 0.7, 0.3, 0.95, 0.1, 0.8], noise=[10, 20, np.nan, 30, 10, 10, 10])
    summary = scores.summary()
    # Worst five, ties kept in slice order: 0.1 (5), 0.3 (1), 0.3 (3), 0.7 (2), 0.8 (6).
    assert [w["slice_index"] for w in summary["worst_slices"]] == [5, 1, 3, 2, 6]
    assert summary["worst_slices"][0] == {"slice_index": 5, "z_mm": 2.5, "score": 0.1}
    assert summary["mean_noise_hu"] == pytest.approx(90 / 6)  # the NaN slice is left out
    assert summary["mean_score"] == 0.57857  # 4.05 / 7 = 0.5785714
    assert summary["median_score"] == pytest.approx(0.7) and summary["max_score"] == pytest.approx(0.95)
    assert summary["min_score"] == pytest.approx(0.1) and summary["num_slices"] == 7
    assert summary["matrix"] == [512, 512] and summary["spacing_mm"] == [0.7, 0.7, 2.5]
    assert summary["elapsed_s"] == 1.235 and summary["score_name"] == "ssim" and summary["higher_is_better"]
    assert summary["score_range"] == [0.0, 1.0] and summary["source"] == "test"
    assert summary["score_description"].startswith("predicted SSIM to a full-dose image")
    assert summary["model_preset"] == "tiny" and summary["device"] == "cpu" and summary["warnings"] == []
    assert summary["weights_id"] == ""
    no_noise = _scores([0.5, 0.6], noise=[np.nan, np.nan]).summary()
    assert no_noise["mean_noise_hu"] is None


def test_summary_numbers_are_rounded_to_the_documented_places():
    scores = _scores([0.123456789, 0.51234567, 0.987654321], noise=[10.1234, 20.4518, np.nan])
    scores.z_mm = np.array([1.23456, 2.0, 3.0])
    scores.spacing_mm = (0.70001234, 0.7, 2.5)
    summary = scores.summary()
    assert summary["mean_noise_hu"] == 15.29  # 15.2876
    assert summary["median_score"] == 0.51235 and summary["max_score"] == 0.98765
    assert summary["spacing_mm"] == [0.7, 0.7, 2.5]
    assert summary["worst_slices"][0] == {"slice_index": 0, "z_mm": 1.235, "score": 0.12346}
    assert summary["mean_score"] == 0.54115 and summary["min_score"] == 0.12346  # mean 0.5411523


def test_the_worst_slices_of_a_long_scan_keep_ties_in_slice_order():
    score = np.tile([0.5, 0.2, 0.9, 0.2], 60)  # 240 slices, the worst score on every second one of four
    worst = _scores(score).summary()["worst_slices"]
    assert [w["slice_index"] for w in worst] == [1, 3, 5, 7, 9]


def test_an_older_models_rows_say_the_noise_set_each_verdict_and_have_no_effective_noise():
    from .learned import NO_VERDICT_SLICE, learned_scores

    # A model without an effective noise, with a routine level for the abdomen: where a slice has a verdict the
    # measured noise set it; slice 4 has no noise figure, hence no verdict and no driver.
    rows = learned_scores(effective=None).rows()
    assert [row["driver"] for row in rows] == ["noise", "noise", "noise", "noise", "", "noise"]
    assert all(row["effective_noise_hu"] is None for row in rows)
    assert rows[NO_VERDICT_SLICE]["adequacy"] == "unknown"
    # slice 0: 200 / 10^2 = 2.0 routine doses; good from 0.5
    assert {key: rows[0][key] for key in ("dose_equivalent", "adequacy", "region")} == {
        "dose_equivalent": 2.0, "adequacy": "good", "region": "abdomen"}
    # chest slices: this model has no routine level there, so no verdict and no driver anywhere
    assert [row["driver"] for row in learned_scores(effective=None, region="chest").rows()] == [""] * 6

"""The scorer honours what the weights file says (window, input size, outputs) and the device's limits.

The expected scores are computed beside the scorer: the window by its formula in numpy, the fit by numpy
padding or a constant image, the model run directly on that input, the mean over outputs in numpy. Models
here are untrained (what they learned does not matter for these promises); ``test_model.py`` checks a
trained one.
"""
import logging
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from DistilIQALib.errors import Cancelled, DeviceError
from DistilIQALib.io.reading import read_volume
from DistilIQALib.progress import Progress
from DistilIQALib.quality import results, scoring
from DistilIQALib.quality.noise import global_noise_index
from DistilIQALib.quality.preprocessing import Window
from DistilIQALib.quality.scoring import CPU_BATCH_SIZE, Scorer
from DistilIQALib.quality.weights import load_weights
from DistilIQALib.training.phantoms import phantom_volume
from DistilIQALib.volume import CTVolume

from .conftest import TEST_BANDS, TEST_CALIBRATION, write_untrained_weights

#: A window unlike the default W350/L40: -150..250 HU.
WIDE = Window(width_hu=400.0, level_hu=50.0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An untrained 2-output model for 64x64 input, window W400/L50, the test bands and calibration."""
    return write_untrained_weights(tmp_path_factory.mktemp("w") / "wide.safetensors", num_outputs=2,
                                   window=WIDE, adequacy=TEST_BANDS, dose_calibration=TEST_CALIBRATION,
                                   provenance={"purpose": "trained"})


def _direct_outputs(weights_path, unit_slices):
    """The model of ``weights_path`` run on already windowed and fitted slices ``(B, S, S)``."""
    model, _ = load_weights(weights_path)
    with torch.inference_mode():
        return model(torch.from_numpy(np.asarray(unit_slices, dtype=np.float32))[:, None]).numpy()


def _window(hu, width, level):
    return np.clip((np.asarray(hu, dtype=np.float64) - (level - width / 2)) / width, 0.0, 1.0)


def _random_hu(count, rows, columns, seed=0):
    return np.random.default_rng(seed).uniform(-400, 400, (count, rows, columns)).astype(np.float32)


def test_scores_are_the_mean_output_of_the_model_on_slices_in_the_weights_window(weights):
    hu = _random_hu(5, 64, 64)
    volume = CTVolume(hu, spacing_mm=(0.8, 0.8, 3.0), origin_mm=(0.0, 0.0, -20.0))
    scores = Scorer(str(weights), device="cpu").score_volume(volume)
    outputs = _direct_outputs(weights, _window(hu, 400.0, 50.0))
    np.testing.assert_allclose(scores.outputs, outputs, atol=1e-5)
    np.testing.assert_allclose(scores.score, outputs.sum(axis=1) / 2, atol=1e-5)
    # The default window would have given other scores: the check above can tell the two apart.
    default_window = _direct_outputs(weights, _window(hu, 350.0, 40.0)).mean(axis=1)
    assert np.abs(default_window - scores.score).max() > 1e-3
    np.testing.assert_array_equal(scores.slice_index, np.arange(5))
    np.testing.assert_allclose(scores.z_mm, -20.0 + 3.0 * np.arange(5))
    assert scores.warnings == [] and scores.device.startswith("cpu (")
    # Results stay float32 like the model's outputs: a long scan's arrays take half the memory of float64.
    assert scores.score.dtype == scores.outputs.dtype == scores.noise_hu.dtype == np.float32


def test_a_smaller_matrix_is_fitted_to_the_input_size_the_weights_state(tmp_path):
    # Uniform slices: windowed and enlarged, each is a uniform 128x128 image of its windowed value.
    weights = write_untrained_weights(tmp_path / "w128.safetensors", num_outputs=1, input_size=128,
                                      provenance={"purpose": "trained"})
    levels_hu = np.array([-1000.0, 0.0, 40.0, 120.0], dtype=np.float32)
    hu = np.broadcast_to(levels_hu[:, None, None], (4, 64, 64)).copy()
    scores = Scorer(str(weights), device="cpu").score_volume(CTVolume(hu, spacing_mm=(1.0, 1.0, 1.0)))
    expected = np.broadcast_to(_window(levels_hu, 350.0, 40.0)[:, None, None], (4, 128, 128))
    np.testing.assert_allclose(scores.score, _direct_outputs(weights, expected)[:, 0], atol=1e-5)
    assert scores.warnings == ["matrix 64x64 was fitted to the model's 128x128 input; scores are less comparable "
                               "with 128-matrix scans"]
    assert scores.summary()["matrix"] == [64, 64]


def test_a_non_square_slice_is_padded_with_air_centred(weights):
    # 48 rows, 64 columns: 8 rows of air (windowed 0) above and below.
    hu = _random_hu(2, 48, 64, seed=1)
    scores = Scorer(str(weights), device="cpu").score_volume(CTVolume(hu, spacing_mm=(0.7, 0.9, 2.0)))
    padded = np.zeros((2, 64, 64))
    padded[:, 8:56, :] = _window(hu, 400.0, 50.0)
    np.testing.assert_allclose(scores.score, _direct_outputs(weights, padded).mean(axis=1), atol=1e-5)
    assert scores.warnings[0].startswith("matrix 64x48 was fitted to the model's 64x64 input")
    summary = scores.summary()
    assert summary["matrix"] == [64, 48] and summary["spacing_mm"] == [0.7, 0.9, 2.0]


def test_noise_index_uses_the_in_plane_spacing(weights):
    hu = phantom_volume(2, size=64, pixel_mm=3.0, noise_sd_hu=20.0, seed=4)
    scores = Scorer(str(weights), device="cpu").score_volume(CTVolume(hu, spacing_mm=(3.0, 1.5, 5.0)))
    expected = global_noise_index(torch.from_numpy(hu), (3.0, 1.5)).numpy()
    other = global_noise_index(torch.from_numpy(hu), (1.5, 3.0)).numpy()
    np.testing.assert_allclose(scores.noise_hu, expected, rtol=1e-6)
    assert np.isfinite(expected).all() and np.abs(other - expected).max() > 0.1


def test_rows_and_summary_apply_the_weights_bands_and_calibration(weights):
    scores = Scorer(str(weights), device="cpu").score_volume(CTVolume(_random_hu(4, 64, 64), (1.0, 1.0, 1.0)))
    for row, score in zip(scores.rows(), scores.score):
        band = "good" if score >= 0.8 else "borderline" if score >= 0.5 else "inadequate"
        assert row["adequacy"] == band
        assert row["dose_equivalent"] == pytest.approx(np.interp(score, [0.2, 0.5, 0.8, 1.0],
                                                                 [0.05, 0.25, 0.6, 1.0]), abs=6e-4)
    summary = scores.summary()
    assert summary["adequacy_threshold"] == 0.5
    assert summary["fraction_inadequate"] == pytest.approx(float(np.mean(scores.score < 0.5)))
    assert summary["weights_id"] == scores.info.weights_id and len(summary["weights_id"]) == 16


def test_warnings_for_a_test_model_and_a_gap_in_the_series(tmp_path):
    weights = write_untrained_weights(tmp_path / "test.safetensors")
    volume = CTVolume(_random_hu(3, 64, 64), (1.0, 1.0, 2.5), metadata={"z_gaps_mm": [(5.0, 12.5)]})
    assert Scorer(str(weights), device="cpu").score_volume(volume).warnings == [
        "slices missing between z 5.0 and 12.5 mm (a gap of 7.5 mm in the series); every slice keeps the z its "
        "file states",
        "this model is marked 'test' (trained only to check the software): its scores are not quality judgements"]


def test_cpu_scoring_is_deterministic_and_batch_invariant(weights, dicom_series):
    volume = read_volume(dicom_series)
    first = Scorer(str(weights), device="cpu", batch_size=4).score_volume(volume)
    again = Scorer(str(weights), device="cpu", batch_size=4).score_volume(volume)
    single = Scorer(str(weights), device="cpu", batch_size=1).score_volume(volume)
    assert np.array_equal(first.score, again.score) and np.array_equal(first.noise_hu, again.noise_hu)
    np.testing.assert_allclose(first.score, single.score, atol=1e-5)
    np.testing.assert_allclose(first.noise_hu, single.noise_hu, rtol=1e-6)


def test_progress_reports_and_cancels(weights, dicom_series):
    volume = read_volume(dicom_series)
    seen = []
    Scorer(str(weights), device="cpu", batch_size=2).score_volume(
        volume, Progress(lambda done, total, stage: seen.append((done, total, stage))))
    assert seen == [(0, 6, "scoring"), (2, 6, "scoring"), (4, 6, "scoring"), (6, 6, "scoring")]

    def cancel_after_first_batch(done, total, stage):
        if done >= 2:
            progress.cancel()
    progress = Progress(cancel_after_first_batch)
    with pytest.raises(Cancelled):
        Scorer(str(weights), device="cpu", batch_size=2).score_volume(volume, progress)


def test_memory_stays_bounded_for_long_int16_volume(tmp_path):
    """A 300-slice int16 volume is never expanded to float32 as a whole."""
    weights = write_untrained_weights(tmp_path / "w.safetensors", input_size=64)
    slice_hu = np.rint(phantom_volume(1, size=64, pixel_mm=5.6, noise_sd_hu=20)[0]).astype(np.int16)
    hu = np.broadcast_to(slice_hu, (300, 64, 64)).copy()
    scorer = Scorer(str(weights), device="cpu", batch_size=4)
    tracemalloc.start()
    scores = scorer.score_volume(CTVolume(hu, spacing_mm=(5.6, 5.6, 1.0)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * hu.size * 4
    assert len(scores.score) == 300 and np.ptp(scores.score) < 1e-5  # the same slice scores the same


class _SmallMemoryModel(torch.nn.Module):
    """Stands in for a device with room for ``room`` slices: larger batches raise torch's out-of-memory error."""

    def __init__(self, model, room):
        super().__init__()
        self.model, self.room, self.batch_sizes = model, room, []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > self.room:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return self.model(x)


def test_out_of_memory_retries_with_smaller_batches(weights, dicom_series, caplog):
    reference = Scorer(str(weights), device="cpu", batch_size=1).score_volume(read_volume(dicom_series))
    scorer = Scorer(str(weights), device="cpu", batch_size=8)
    scorer.model = _SmallMemoryModel(scorer.model, room=2)
    with caplog.at_level(logging.WARNING, logger="DistilIQALib.quality.scoring"):
        scores = scorer.score_volume(read_volume(dicom_series))
    assert scorer.batch_size == 2
    assert scorer.model.batch_sizes == [6, 4, 2, 2, 2]  # 6 slices: 8 -> 4 -> 2, then batches of 2
    np.testing.assert_allclose(scores.score, reference.score, atol=1e-5)
    assert [r.getMessage() for r in caplog.records] == [
        f"out of memory on {scorer.device_name}: retrying with batch size 4",
        f"out of memory on {scorer.device_name}: retrying with batch size 2"]


def test_out_of_memory_with_one_slice_on_the_cpu_is_a_clear_error(weights, dicom_series, monkeypatch):
    cache_emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: cache_emptied.append(True))
    scorer = Scorer(str(weights), device="cpu", batch_size=1)
    scorer.model = _SmallMemoryModel(scorer.model, room=0)
    with pytest.raises(MemoryError, match="^not enough memory to score even one slice on the CPU$"):
        scorer.score_volume(read_volume(dicom_series))
    assert scorer.model.batch_sizes == [1] and cache_emptied == []  # no GPU to give memory back to


class _MoveRecordingModel(torch.nn.Module):
    """The model, noting where it is asked to move (it is on the CPU already: the GPU here is faked)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.moves = model, []

    def to(self, *args, **kwargs):
        self.moves.append(args[0] if args else kwargs.get("device"))
        return super().to(*args, **kwargs)

    def forward(self, x):
        return self.model(x)


def test_gpu_out_of_memory_at_batch_size_one_continues_on_the_cpu(weights, dicom_series, monkeypatch, caplog):
    """Without a GPU here, the GPU is faked at the device boundary: moving a batch of more than one slice to
    'cuda' raises torch's out-of-memory error; one slice 'fits' but its forward pass runs out of memory too."""
    volume = read_volume(dicom_series)
    reference = Scorer(str(weights), device="cpu", batch_size=1).score_volume(volume)
    real_to_tensor = scoring.hu_to_tensor
    moved = []

    def to_device(hu_slices, device=None, **options):
        moved.append((device.type, len(hu_slices)))
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_to_tensor(hu_slices, device, **options)

    monkeypatch.setattr(scoring, "hu_to_tensor", to_device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Simulated GPU")
    cache_emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: cache_emptied.append(True))
    scorer = Scorer(str(weights), device="cpu", batch_size=2)
    scorer.device = torch.device("cuda", 0)
    scorer.model = _MoveRecordingModel(scorer.model)
    with caplog.at_level(logging.WARNING, logger="DistilIQALib.quality.scoring"):
        scores = scorer.score_volume(volume)
    assert scorer.device == torch.device("cpu") and scores.device.startswith("cpu (")
    assert scorer.model.moves == [torch.device("cpu")]  # the model follows the slices to the CPU
    # on the GPU the region features are read a batch at a time, on the CPU a chunk of REGION_SLICES at a time
    chunk = min(volume.num_slices, scoring.REGION_SLICES)
    assert moved[:4] == [("cuda", 2), ("cuda", 1), ("cpu", chunk), ("cpu", 1)] and scorer.batch_size == 1
    assert len(cache_emptied) == 2  # the GPU's cache is given back after each out-of-memory error
    np.testing.assert_allclose(scores.score, reference.score, atol=1e-6)
    assert scores.region == reference.region and len(scores.region) == volume.num_slices  # every slice read once
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory on cuda:0 (Simulated GPU): retrying with batch size 1",
        "out of memory on cuda:0 (Simulated GPU) even with batch size 1: continuing on the CPU"]


def test_missing_cuda_device_is_a_clear_error(weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        Scorer(str(weights), device="cuda:1")
    with pytest.raises(DeviceError, match="unknown device"):
        Scorer(str(weights), device="tpu")


def test_default_batch_size_depends_on_the_device(weights):
    assert Scorer(str(weights), device="cpu").batch_size == CPU_BATCH_SIZE == 2
    assert Scorer(str(weights), device="cpu", batch_size=5).batch_size == 5
    assert Scorer(str(weights), device="cpu", batch_size=1).batch_size == 1
    with pytest.raises(ValueError, match="^batch size must be at least 1$"):
        Scorer(str(weights), device="cpu", batch_size=0)
    # without a device named, the best one present: the CPU on a machine without a GPU
    if not torch.cuda.is_available():
        assert Scorer(str(weights)).device.type == "cpu"


def test_mixed_precision_is_used_on_gpus_only(weights):
    """float16 autocast on a CUDA device when allowed, never on the CPU (the device is set by hand: no GPU here)."""
    scorer = Scorer(str(weights), device="cpu", use_amp=True)
    assert scorer._autocast().__class__.__name__ == "nullcontext"
    scorer.device = torch.device("cuda", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU torch warns that CUDA is missing
        context = scorer._autocast()
    assert isinstance(context, torch.autocast) and context.device == "cuda" and context.fast_dtype == torch.float16
    assert Scorer(str(weights), device="cpu").use_amp is True
    no_amp = Scorer(str(weights), device="cpu", use_amp=False)
    no_amp.device = torch.device("cuda", 0)
    assert no_amp._autocast().__class__.__name__ == "nullcontext"


def test_a_result_names_its_source_the_time_it_took_and_its_thickness(weights):
    import dataclasses
    import time

    volume = CTVolume(_random_hu(3, 64, 64, seed=4), spacing_mm=(0.7, 0.7, 1.25), source="/archive/ct/series-7")
    started = time.monotonic()
    scores = Scorer(str(weights), device="cpu").score_volume(volume)
    wall = time.monotonic() - started
    assert scores.source == "/archive/ct/series-7" and scores.summary()["source"] == "/archive/ct/series-7"
    assert 0.0 < scores.elapsed_s <= wall
    # the thickness to 3 decimals; none when unknown
    assert dataclasses.replace(scores, thickness_mm=0.62549).summary()["slice_thickness_mm"] == 0.625
    assert dataclasses.replace(scores, thickness_mm=float("nan")).summary()["slice_thickness_mm"] is None


def test_verdicts_are_computed_once_and_again_when_an_input_is_replaced(monkeypatch):
    # the shipped model's verdicts rest on the noise, size, thickness and region of each slice
    real = results.region_verdicts
    calls = []
    monkeypatch.setattr(results, "region_verdicts", lambda *args: calls.append(1) or real(*args))
    volume = CTVolume(phantom_volume(2, noise_sd_hu=12.0), spacing_mm=(0.7, 0.7, 2.5))
    scores = Scorer(device="cpu").score_volume(volume)
    assert len(calls) == 1  # the learned score is the verdicts' dose equivalent
    first = (scores.rows(), scores.summary(), list(scores.adequacy), scores.dose_equivalent.copy(), scores.driver)
    assert len(calls) == 1
    scores.noise_hu = scores.noise_hu * 4.0  # a sixteenth of the dose, as the noise tells it
    assert len(calls) == 1
    assert np.all(scores.dose_equivalent < first[3])
    assert len(calls) == 2 and scores.rows() != first[0] and len(calls) == 2

import tracemalloc

import numpy as np
import pytest
import torch

from DistilIQALib.errors import Cancelled, DeviceError
from DistilIQALib.phantoms import phantom_volume
from DistilIQALib.progress import Progress
from DistilIQALib.reading import read_volume
from DistilIQALib.scoring import Scorer
from DistilIQALib.volume import CTVolume


def test_tiny_model_really_learns(tiny_training):
    _, losses = tiny_training
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


def test_scores_every_slice_with_noise_and_interpretation(tiny_weights, dicom_series):
    volume = read_volume(dicom_series)
    scores = Scorer(str(tiny_weights), device="cpu").score_volume(volume)
    assert scores.score.shape == (6,) and scores.outputs.shape == (6, 3)
    np.testing.assert_allclose(scores.score, scores.outputs.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(scores.z_mm, np.arange(6) * 2.5, atol=1e-3)
    assert np.all(np.isfinite(scores.noise_hu)) and np.all(scores.noise_hu > 10)
    rows = scores.rows()
    assert [row["slice_index"] for row in rows] == list(range(6))
    assert all(row["adequacy"] in ("good", "borderline", "inadequate") for row in rows)
    assert all(0.05 <= row["dose_equivalent"] <= 1.0 for row in rows)
    summary = scores.summary()
    assert summary["min_score"] == pytest.approx(float(scores.score.min()), abs=1e-5)
    assert summary["worst_slices"][0]["score"] == summary["min_score"]
    assert any("not quality judgements" in warning for warning in scores.warnings)


def test_noisier_slices_score_lower(tiny_weights):
    clean = phantom_volume(3, size=256, pixel_mm=1.4, seed=11)
    rng = np.random.default_rng(2)
    stack = np.concatenate([clean + rng.standard_normal(clean.shape).astype(np.float32) * sd for sd in (2.0, 70.0)])
    scores = Scorer(str(tiny_weights), device="cpu").score_volume(CTVolume(stack, spacing_mm=(1.4, 1.4, 2.5)))
    assert scores.score[:3].mean() > scores.score[3:].mean()


def test_cpu_scoring_is_deterministic_and_batch_invariant(tiny_weights, dicom_series):
    volume = read_volume(dicom_series)
    first = Scorer(str(tiny_weights), device="cpu", batch_size=4).score_volume(volume)
    again = Scorer(str(tiny_weights), device="cpu", batch_size=4).score_volume(volume)
    single = Scorer(str(tiny_weights), device="cpu", batch_size=1).score_volume(volume)
    assert np.array_equal(first.score, again.score) and np.array_equal(first.noise_hu, again.noise_hu)
    np.testing.assert_allclose(first.score, single.score, atol=1e-5)


def test_progress_reports_and_cancels(tiny_weights, dicom_series):
    volume = read_volume(dicom_series)
    seen = []
    Scorer(str(tiny_weights), device="cpu", batch_size=2).score_volume(
        volume, Progress(lambda done, total, stage: seen.append((done, total, stage))))
    assert seen == [(0, 6, "scoring"), (2, 6, "scoring"), (4, 6, "scoring"), (6, 6, "scoring")]

    def cancel_after_first_batch(done, total, stage):
        if done >= 2:
            progress.cancel()
    progress = Progress(cancel_after_first_batch)
    with pytest.raises(Cancelled):
        Scorer(str(tiny_weights), device="cpu", batch_size=2).score_volume(volume, progress)


def test_memory_stays_bounded_for_long_int16_volume(tiny_weights):
    """A 300-slice int16 volume is never expanded to float32 as a whole."""
    slice_hu = np.rint(phantom_volume(1, size=256, pixel_mm=1.4, noise_sd_hu=20)[0]).astype(np.int16)
    hu = np.broadcast_to(slice_hu, (300, 256, 256)).copy()
    volume = CTVolume(hu, spacing_mm=(1.4, 1.4, 1.0))
    scorer = Scorer(str(tiny_weights), device="cpu", batch_size=4)
    tracemalloc.start()
    scorer.score_volume(volume)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole_volume_float32 = hu.size * 4
    assert peak < 0.1 * whole_volume_float32


class _SmallGpuModel(torch.nn.Module):
    """Stands in for a GPU with room for two slices: larger batches raise torch's OOM error."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


def test_out_of_memory_retries_with_smaller_batches(tiny_weights, dicom_series):
    reference = Scorer(str(tiny_weights), device="cpu", batch_size=1).score_volume(read_volume(dicom_series))
    scorer = Scorer(str(tiny_weights), device="cpu", batch_size=8)
    scorer.model = _SmallGpuModel(scorer.model)
    scores = scorer.score_volume(read_volume(dicom_series))
    assert scorer.batch_size == 2
    assert scorer.model.batch_sizes[:3] == [6, 4, 2]
    np.testing.assert_allclose(scores.score, reference.score, atol=1e-5)


def test_missing_cuda_device_is_a_clear_error(tiny_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        Scorer(str(tiny_weights), device="cuda:1")
    with pytest.raises(DeviceError, match="unknown device"):
        Scorer(str(tiny_weights), device="tpu")


def test_default_batch_size_depends_on_the_device(tiny_weights):
    from DistilIQALib.scoring import CPU_BATCH_SIZE

    assert Scorer(str(tiny_weights), device="cpu").batch_size == CPU_BATCH_SIZE == 2
    assert Scorer(str(tiny_weights), device="cpu", batch_size=5).batch_size == 5
    with pytest.raises(ValueError, match="at least 1"):
        Scorer(str(tiny_weights), device="cpu", batch_size=0)

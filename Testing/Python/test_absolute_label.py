"""The absolute label and what it rests on: artefacts the noise index cannot see, head phantoms, the equivalent dose
of an artefact image, the finer noise index, the brain-window channel, and the learned verdict with its driver."""
import json

import numpy as np
import pytest
import torch

from DistilIQALib.quality.interpretation import (
    DRIVER_ARTEFACTS,
    DRIVER_NOISE,
    effective_noise,
    region_bands,
    region_verdicts,
)
from DistilIQALib.quality.model import architecture_from_preset, build_model
from DistilIQALib.quality.noise import slice_noise_index
from DistilIQALib.quality.preprocessing import BRAIN_WINDOW, prepare_batch
from DistilIQALib.quality.weights import ModelInfo, WeightsError, load_weights, read_info, save_weights
from DistilIQALib.training.datasets import (
    EFFECTIVE_NOISE_SCORE,
    SourceSlice,
    equivalent_dose,
    load_split,
    preprocess_absolute,
    window_label,
)
from DistilIQALib.training.phantoms import head_phantom_slice, phantom_slice
from DistilIQALib.training.simulation import DoseSimulator, motion_artefact, ring_artefact
from DistilIQALib.training.training import TrainingConfig, initial_model

SIZE = 160


@pytest.fixture(scope="module")
def head():
    ideal = head_phantom_slice(0.3, SIZE, 0.47 * 512 / SIZE, seed=2)
    return ideal + DoseSimulator(ideal, 0.47 * 512 / SIZE, seed=3).full_dose_noise()


def test_head_phantom_has_skull_brain_and_ventricles():
    image = head_phantom_slice(0.2, 256, 0.94, seed=1)
    centre = image[96:160, 96:160]
    assert image.max() >= 1000  # skull
    assert ((centre > 20) & (centre < 45)).mean() > 0.6  # brain
    assert (np.abs(centre - 6) < 1).any()  # cerebrospinal fluid
    small = head_phantom_slice(0.95, 256, 0.94, seed=1)
    assert (small > -500).sum() < 0.6 * (image > -500).sum()  # the vertex is smaller than the skull base


def test_rings_and_motion_hurt_more_than_their_noise_index_says(head):
    """An image with rings or motion is further from its source (SSIM) than a pure dose reduction that reaches the
    same noise index: the index underrates them, which is what the network must see."""
    pixel = 0.47 * 512 / SIZE
    base = slice_noise_index(head, pixel)
    lower = DoseSimulator(head, pixel, seed=5, reference_noise_hu=base)
    for image in (ring_artefact(head, pixel, 300.0, seed=1), motion_artefact(head, pixel, 5.0, seed=1)):
        same_noise = lower.at_dose(min(1.0, (base / slice_noise_index(image, pixel)) ** 2))
        assert window_label(head, image) < window_label(head, same_noise) - 0.02
    weak, strong = (ring_artefact(head, pixel, a, seed=1) for a in (30.0, 300.0))
    assert window_label(head, strong) < window_label(head, weak) < 1.0
    small, large = (motion_artefact(head, pixel, s, seed=1) for s in (1.0, 6.0))
    assert window_label(head, large) < window_label(head, small) < 1.0


def test_equivalent_dose_interpolates_in_log_dose_and_clips():
    doses = (1.0, 0.5, 0.25, 0.1)
    similarity = (1.0, 0.9, 0.8, 0.6)
    assert equivalent_dose(0.85, doses, similarity) == pytest.approx(np.sqrt(0.5 * 0.25))
    assert equivalent_dose(0.3, doses, similarity) == pytest.approx(0.1)
    assert equivalent_dose(1.0, doses, similarity) == pytest.approx(1.0)
    # a ladder that is not monotone (noise) is made monotone in dose first
    assert 0.1 < equivalent_dose(0.85, doses, (1.0, 0.9, 0.92, 0.6)) < 0.5


def test_the_noise_index_resolves_quiet_slices():
    rng = np.random.default_rng(0)
    for sd in (1.3, 2.4, 4.1, 13.0):
        image = (40 + sd * rng.standard_normal((256, 256))).astype(np.float32)
        assert slice_noise_index(image, 0.8) == pytest.approx(sd, rel=0.03)


def test_absolute_labels_are_log_effective_noise(tmp_path, head):
    pixel = 0.47 * 512 / SIZE
    body = phantom_slice(0.3, SIZE, 0.7 * 512 / SIZE, seed=5)
    body = body + DoseSimulator(body, 0.7 * 512 / SIZE, seed=6).full_dose_noise()
    sources = [SourceSlice("head", "h0", head, pixel, thickness_mm=5.0, region="head"),
               SourceSlice("body", "b0", body, 0.7 * 512 / SIZE, thickness_mm=2.5, region="abdomen")]
    preprocess_absolute(sources, tmp_path, doses=(1.0, 0.5, 0.1), artefacts={"views": (256, 64)},
                        test_patients=["body"], every=1)
    records = json.loads((tmp_path / "sources.json").read_text())
    labels = {**json.loads((tmp_path / "train.json").read_text()), **json.loads((tmp_path / "test.json").read_text())}
    assert json.loads((tmp_path / "dataset_info.json").read_text())["score"] == EFFECTIVE_NOISE_SCORE
    for path, record in records.items():
        expected = np.log(record["source_noise_hu"] / np.sqrt(record["equivalent_dose"]))
        assert labels[path] == pytest.approx(expected, abs=1e-3)  # the record rounds the noise to 0.001 HU
        if record["kind"] == "dose":
            assert record["equivalent_dose"] == record["value"]
    for patient in ("head", "body"):
        views = {r["value"]: r for r in records.values() if r["patient"] == patient and r["kind"] == "views"}
        assert views[64.0]["equivalent_dose"] < views[256.0]["equivalent_dose"] <= 1.0
        assert views[64.0]["ssim"] < views[256.0]["ssim"]
    assert {r["region"] for r in records.values()} == {"head", "abdomen"}
    assert load_split(tmp_path, "test").patients == ["body"] * 5


def test_brain_window_is_a_second_channel():
    hu = np.tile(np.array([-1000.0, 0.0, 40.0, 80.0, 200.0], dtype=np.float32), (1, 5, 1))
    both = prepare_batch(hu, input_size=5, extra_windows=(BRAIN_WINDOW,))[0, :, 0, :].numpy()
    assert both.shape == (2, 5)
    np.testing.assert_allclose(both[1], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert both[0][2] == pytest.approx((40 + 135) / 350)


def test_a_one_channel_model_grows_a_brain_channel_that_starts_silent(tmp_path):
    arch = architecture_from_preset("tiny", input_size=64)
    base = build_model(arch, 2).eval()
    save_weights(tmp_path / "base.safetensors", base, ModelInfo(preset="tiny", architecture=arch, num_outputs=2))
    config = TrainingConfig(preset="tiny", input_size=64, init_weights=str(tmp_path / "base.safetensors"),
                            extra_windows=((80.0, 40.0),))
    grown = initial_model(config, 2).eval()
    assert grown.arch.input_channels == 2
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(grown(torch.cat([x, torch.rand(2, 1, 64, 64)], 1)).numpy(), base(x).numpy(),
                                   atol=1e-5)
    reset = initial_model(TrainingConfig(preset="tiny", input_size=64, init_weights=str(tmp_path / "base.safetensors"),
                                         reset_head=True), 2, label_mean=2.5).eval()
    with torch.no_grad():
        assert reset(x).numpy() == pytest.approx(2.5, abs=0.05)


def test_windows_and_channels_must_agree_in_the_file(tmp_path):
    arch = architecture_from_preset("tiny", input_size=64, input_channels=2)
    model = build_model(arch, 1)
    info = ModelInfo(preset="tiny", architecture=arch, extra_windows=(BRAIN_WINDOW,), artefact_margin=0.2)
    path = save_weights(tmp_path / "m.safetensors", model, info)
    read = read_info(path)
    assert read.extra_windows == (BRAIN_WINDOW,) and read.artefact_margin == 0.2 and read.format_version == 4
    load_weights(path)
    text = json.loads(info.to_json())
    text["extra_windows"] = []
    with pytest.raises(WeightsError, match="2 input channel"):
        ModelInfo.from_json(json.dumps(text), "m")


REFERENCE = {"chest": {"intercept": 5.0, "per_cm": 0.05, "bands": region_bands(0.34, 0.27),
                       "above_routine_from": 1.77, "basis": "fitted"}}


def test_the_networks_noise_counts_beyond_its_margin_discounted_by_it():
    noise = np.array([10.0, 10.0, 10.0, 10.0, np.nan, 10.0])
    network = np.array([11.0, 12.0, 15.0, 8.0, 30.0, np.nan])
    # within the margin the measured noise; beyond it the network's figure over 1.2, which meets the measured noise
    # at the margin without a jump
    np.testing.assert_allclose(effective_noise(noise, network, 0.2), [10.0, 10.0, 12.5, 10.0, np.nan, 10.0])
    just_beyond = effective_noise(np.array([10.0]), np.array([12.0001]), 0.2)[0]
    assert 10.0 < just_beyond < 10.001


def test_the_verdict_is_the_worse_and_names_its_driver():
    routine = np.sqrt(np.exp(5.0 + 0.05 * 30.0) / 2.0)  # noise of a routine dose at 30 cm and 2 mm
    noise = np.array([routine, routine, routine / np.sqrt(3.0), routine])
    network = np.array([routine * 1.05, routine * 3.0 * 1.15, routine / np.sqrt(3.0), np.nan])
    found = region_verdicts(noise, 2.0, np.full(4, 30.0), ["chest"] * 4, [""] * 4, REFERENCE, network, 0.15)
    assert found.adequacy == ["good", "inadequate", "good", "good"]
    assert found.driver == [DRIVER_NOISE, DRIVER_ARTEFACTS, DRIVER_NOISE, DRIVER_NOISE]
    np.testing.assert_allclose(found.dose_equivalent, [1.0, 1.0, 3.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(found.learned_dose_equivalent, [1.0, 1.0 / 9.0, 3.0, 1.0], rtol=1e-6)
    assert "artefacts" in found.note[1] and "0.11" in found.note[1]
    assert found.above_routine.tolist() == [False, False, True, False]
    # the noise alone: no learned dose equivalent, the verdict of old models
    alone = region_verdicts(noise, 2.0, np.full(4, 30.0), ["chest"] * 4, [""] * 4, REFERENCE)
    assert alone.adequacy[1] == "good" and alone.learned_dose_equivalent is None

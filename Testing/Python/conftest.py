"""Shared fixtures: phantom data written to real files, and a really (briefly) trained tiny model."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from DistilIQALib.io.dicom_writing import write_series
from DistilIQALib.quality.model import architecture_from_preset, build_model
from DistilIQALib.quality.preprocessing import Window, prepare_batch
from DistilIQALib.quality.weights import ModelInfo, save_weights
from DistilIQALib.training.phantoms import phantom_volume

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def train_tiny_model(num_outputs: int = 1, steps: int = 200, seed: int = 0):
    """Train the ``tiny`` preset (256x256 input) for a few hundred steps (about 10 s) to predict
    a quality label that falls with the noise added to phantom slices.

    Returns the model and the losses of the first and last steps.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clean = phantom_volume(6, size=256, pixel_mm=1.4, seed=seed)
    model = build_model(architecture_from_preset("tiny", input_size=256), num_outputs)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        sd = rng.uniform(0.0, 80.0, size=8).astype(np.float32)
        noise = rng.standard_normal((8, 256, 256)).astype(np.float32) * sd[:, None, None]
        slices = clean[rng.integers(0, len(clean), size=8)] + noise
        target = torch.from_numpy(1.0 / (1.0 + (sd / 30.0) ** 2)).unsqueeze(1).expand(-1, num_outputs)
        prediction = model(prepare_batch(slices, input_size=256))
        loss = torch.nn.functional.l1_loss(prediction, target) + torch.nn.functional.mse_loss(prediction, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="session")
def tiny_training():
    """The tiny model with 3 outputs and its per-step training losses."""
    return train_tiny_model(num_outputs=3)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_training) -> Path:
    model, losses = tiny_training
    info = ModelInfo(
        preset="tiny", architecture=model.arch, num_outputs=3,
        adequacy={"bands": [{"name": "good", "min_score": 0.8}, {"name": "borderline", "min_score": 0.5},
                            {"name": "inadequate", "min_score": None}], "reasoning": "test thresholds"},
        dose_calibration={"score": [0.2, 0.5, 0.8, 1.0], "dose_fraction": [0.05, 0.25, 0.6, 1.0]},
        provenance={"purpose": "test", "steps": len(losses)},
    )
    return save_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", model, info)


def query_rows(path, sql: str, parameters=()) -> list:
    """Every row one SQL query gives on the SQLite file at ``path``, opened and closed around it."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


#: Bands and calibration used by the untrained test models (as a trained model would carry them).
TEST_BANDS = {"bands": [{"name": "good", "min_score": 0.8}, {"name": "borderline", "min_score": 0.5},
                        {"name": "inadequate", "min_score": None}], "reasoning": "test thresholds"}
TEST_CALIBRATION = {"score": [0.2, 0.5, 0.8, 1.0], "dose_fraction": [0.05, 0.25, 0.6, 1.0]}


def write_untrained_weights(path: Path, num_outputs: int = 2, input_size: int = 64, window: Window = Window(),
                            seed: int = 0, **info) -> Path:
    """A randomly initialised ``tiny`` model (made in milliseconds) saved with the given metadata: for
    checks of what the scorer does with a weights file, where what the model learned does not matter."""
    torch.manual_seed(seed)
    model = build_model(architecture_from_preset("tiny", input_size=input_size), num_outputs).eval()
    values = dict(preset="tiny", architecture=model.arch, num_outputs=num_outputs, window=window,
                  provenance={"purpose": "test"})
    values.update(info)
    return save_weights(path, model, ModelInfo(**values))


@pytest.fixture(scope="session")
def phantom_hu() -> np.ndarray:
    """A small noisy phantom volume in HU, (z, y, x) = (6, 128, 128) at 2.8 mm pixels."""
    return phantom_volume(6, size=128, pixel_mm=2.8, noise_sd_hu=15.0, seed=3)


@pytest.fixture(scope="session")
def dicom_series(tmp_path_factory, phantom_hu) -> Path:
    folder = tmp_path_factory.mktemp("series")
    write_series(phantom_hu, folder, spacing_mm=(2.8, 2.8, 2.5), series_uid="1.2.826.0.1.3680043.8.498.1")
    return folder


#: The user that the test Orthanc knows, and the receiver it pushes to (``/modalities/distiliqa/store``).
ORTHANC_USER, ORTHANC_PASSWORD = "qc", "not-a-real-secret-7f3a"
RECEIVER_MODALITY, RECEIVER_AET = "distiliqa", "DISTILIQA"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin on free loopback ports, basic authentication on, its own storage,
    and a DICOM peer ``distiliqa`` on a free port for the receiver tests; stopped after the session. Skipped
    where the Orthanc binary is not installed."""
    from .orthanc_server import MISSING, ORTHANC, Orthanc, free_port

    if ORTHANC is None:
        pytest.skip(MISSING)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), users={ORTHANC_USER: ORTHANC_PASSWORD},
                     modalities={RECEIVER_MODALITY: (RECEIVER_AET, free_port())})
    with server:
        yield server

"""Training that is interrupted and run again ends with the same weights as a run that never stopped.

On the CPU training is deterministic, so the comparison is exact: the model, the optimiser's momentum, the
learning-rate schedule and the best snapshot must all be restored from ``last.pt`` for the tensors to match.
"""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from DistilIQALib.training.phantoms import phantom_volume
from DistilIQALib.training.training import TrainingConfig, train_teachers

EPOCHS = 4
CONFIG = dict(preset="tiny", input_size=64, epochs=EPOCHS, batch_size=3, lr=0.01, min_lr=1e-4, momentum=0.9,
              optimizer="sgd", folds=2, seed=0, device="cpu", augment=True, amp=False, purpose="test")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 labelled 64x64 slices of 6 patients, noisier slices with lower labels."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    clean = phantom_volume(12, size=64, pixel_mm=5.6, noise_sd_hu=2.0, seed=5)
    labels, patients = {}, {}
    for n in range(12):
        sd = float(rng.uniform(0, 80))
        image = sitk.GetImageFromArray((clean[n] + rng.standard_normal((64, 64)) * sd).astype(np.float32))
        image.SetSpacing((5.6, 5.6))
        name = f"images/slice{n:02d}.nrrd"
        (folder / "images").mkdir(exist_ok=True)
        sitk.WriteImage(image, str(folder / name))
        labels[name] = round(1.0 / (1.0 + (sd / 30.0) ** 2), 4)
        patients[name] = f"P{n // 2}"
    (folder / "train.json").write_text(json.dumps(labels))
    (folder / "patients.json").write_text(json.dumps(patients))
    return folder


def _stop_after(epochs):
    def progress(done, total, name):
        if done == epochs:
            raise Interrupted(name)
    return progress


def _log_rows(path):
    """The training log without its timing column."""
    with path.open(newline="") as stream:
        return [row[:-1] for row in csv.reader(stream)]


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("straight")
    train_teachers(dataset, output, TrainingConfig(**CONFIG), folds=[0])
    return output


def _assert_same_run(output, reference):
    for name in ("teachers/teacher_0.safetensors", "snapshots_fold_0/best.safetensors"):
        resumed, straight = load_file(output / name), load_file(reference / name)
        assert resumed.keys() == straight.keys()
        for key in straight:
            assert torch.equal(resumed[key], straight[key]), (name, key)
    last = torch.load(output / "snapshots_fold_0" / "last.pt", weights_only=True)
    expected = torch.load(reference / "snapshots_fold_0" / "last.pt", weights_only=True)
    assert last["epoch"] == EPOCHS and last["scheduler"] == expected["scheduler"]
    assert {key: last[key] for key in ("best_overall", "best_loss", "best_epoch")} == \
        {key: expected[key] for key in ("best_overall", "best_loss", "best_epoch")}
    momentum = [state["momentum_buffer"] for state in last["optimizer"]["state"].values()]
    expected_momentum = [state["momentum_buffer"] for state in expected["optimizer"]["state"].values()]
    assert len(momentum) == len(expected_momentum) > 0
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected_momentum))
    assert _log_rows(output / "train_info_fold_0.csv") == _log_rows(reference / "train_info_fold_0.csv")


def test_the_straight_run_learns_something_to_compare(uninterrupted):
    rows = list(csv.DictReader((uninterrupted / "train_info_fold_0.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    # The cosine schedule from 0.01 towards 1e-4 over 4 epochs: the lr of epoch k is
    # 1e-4 + (0.01 - 1e-4) * (1 + cos(pi * (k - 1) / 4)) / 2.
    expected_lr = [1e-4 + (0.01 - 1e-4) * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(4)]
    np.testing.assert_allclose([float(row["lr"]) for row in rows], expected_lr, rtol=1e-3)
    weights = load_file(uninterrupted / "teachers" / "teacher_0.safetensors")
    assert all(torch.isfinite(tensor.float()).all() for tensor in weights.values())
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_a_run_interrupted_after_two_epochs_ends_with_the_weights_of_an_uninterrupted_run(
        dataset, uninterrupted, tmp_path):
    with pytest.raises(Interrupted):
        train_teachers(dataset, tmp_path, TrainingConfig(**CONFIG), folds=[0], progress=_stop_after(2))
    assert torch.load(tmp_path / "snapshots_fold_0" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "teachers" / "teacher_0.safetensors").exists()
    # A log row the killed run wrote for an epoch it did not checkpoint is dropped on resuming.
    with (tmp_path / "train_info_fold_0.csv").open("a", newline="") as stream:
        csv.writer(stream).writerow([3, "1e-2", "0.5", "0.5", "0", "0", "0", "0", "1.0"])
    seen = []
    train_teachers(dataset, tmp_path, TrainingConfig(**CONFIG), folds=[0],
                   progress=lambda done, total, name: seen.append((done, total)))
    assert seen == [(3, EPOCHS), (4, EPOCHS)]  # only the epochs left were trained
    _assert_same_run(tmp_path, uninterrupted)


def test_a_finished_run_is_not_trained_again(dataset, uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "copy")
    (tmp_path / "copy" / "teachers" / "teacher_0.safetensors").unlink()
    seen = []
    train_teachers(dataset, tmp_path / "copy", TrainingConfig(**CONFIG), folds=[0],
                   progress=lambda done, total, name: seen.append(done))
    assert seen == []
    _assert_same_run(tmp_path / "copy", uninterrupted)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_optimiser_asked_for_gets_the_model_the_rate_and_a_cosine_schedule(optimizer):
    from DistilIQALib.training.training import _optimiser

    model = torch.nn.Linear(3, 2)
    config = TrainingConfig(**{**CONFIG, "optimizer": optimizer})
    optimiser, scheduler = _optimiser(model, config)
    assert type(optimiser) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optimizer]
    group = optimiser.param_groups[0]
    assert [p is q for p, q in zip(group["params"], model.parameters())] == [True, True]
    assert group["lr"] == 0.01 and (optimizer == "adamw" or group["momentum"] == 0.9)
    # cosine from lr to min_lr over the epochs: halfway it is their mean
    for _ in range(EPOCHS // 2):
        optimiser.step()
        scheduler.step()
    assert optimiser.param_groups[0]["lr"] == pytest.approx((0.01 + 1e-4) / 2)
    with pytest.raises(ValueError, match="unknown optimizer 'adam' \\(sgd or adamw\\)"):
        _optimiser(model, TrainingConfig(**{**CONFIG, "optimizer": "adam"}))


class _OpensAFile:
    """Unpickling this object creates a file: what a booby-trapped checkpoint could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class _DiskFull:
    """Writing this object fails, as a write does when the disk fills."""

    def __reduce__(self):
        raise OSError(28, "disk full")


def _sgd_model():
    from DistilIQALib.training.training import _optimiser

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimiser, scheduler = _optimiser(model, TrainingConfig(**CONFIG))
    model(torch.ones(4, 3)).sum().backward()
    optimiser.step()
    scheduler.step()
    return model, optimiser, scheduler


def test_a_checkpoint_that_would_run_code_is_refused_unopened(tmp_path):
    from DistilIQALib.training.training import _restore_checkpoint

    model, optimiser, scheduler = _sgd_model()
    marker = tmp_path / "code-ran"
    torch.save({"model": _OpensAFile(marker)}, tmp_path / "last.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        _restore_checkpoint(tmp_path / "last.pt", model, optimiser, scheduler)
    assert not marker.exists()


def test_a_checkpoint_is_restored_whole_and_a_failed_write_keeps_the_previous_one(tmp_path):
    from DistilIQALib.training.training import _restore_checkpoint, _save_checkpoint

    last = tmp_path / "last.pt"
    model, optimiser, scheduler = _sgd_model()
    state = {"epoch": 3, "best_overall": 1.25, "best_loss": 0.5, "best_epoch": 2}
    _save_checkpoint(last, model, optimiser, scheduler, state)
    fresh, fresh_optimiser, fresh_scheduler = _sgd_model()
    torch.nn.init.zeros_(fresh.weight)
    restored = _restore_checkpoint(last, fresh, fresh_optimiser, fresh_scheduler)
    assert restored == state
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert torch.equal(fresh_optimiser.state_dict()["state"][0]["momentum_buffer"],
                       optimiser.state_dict()["state"][0]["momentum_buffer"])
    # A write that fails half-way (the disk fills while the state is written) keeps the last good checkpoint.
    with pytest.raises(OSError, match="disk full"):
        _save_checkpoint(last, model, optimiser, scheduler, {**state, "epoch": _DiskFull()})
    assert torch.load(last, weights_only=True)["epoch"] == 3
    # Without a checkpoint: a run that has not started, and nothing is touched.
    untouched = fresh.weight.clone()
    assert _restore_checkpoint(tmp_path / "none.pt", fresh, fresh_optimiser, fresh_scheduler) == \
        {"epoch": 0, "best_overall": -float("inf"), "best_loss": float("inf"), "best_epoch": 0}
    assert torch.equal(fresh.weight, untouched)

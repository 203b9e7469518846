"""Training end to end on a generated TCIA-like folder, resume after a kill, DDP, datasets, loss."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch

from DistilIQALib.quality.weights import read_info
from DistilIQALib.training.datasets import (
    SourceSlice,
    builtin_sources,
    dataset_info,
    load_images,
    load_split,
    preprocess_ldctiqac,
    preprocess_simulated,
    source_slices_from_folder,
)
from DistilIQALib.training.phantoms import phantom_volume
from DistilIQALib.training.sample import write_tcia_like
from DistilIQALib.training.training import patient_folds, training_loss

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CASES = ["C001", "C002", "C003", "C004", "L001", "L002"]
TEST_CASES = ["C005", "L003"]
TINY = ["--preset", "tiny", "--input-size", "256", "--batch-size", "8", "--optimizer", "adamw", "--lr", "2e-3",
        "--folds", "2", "--device", "cpu", "--no-augment"]


def run_cli(*arguments, timeout=900):
    result = subprocess.run([sys.executable, "-m", "DistilIQALib", *arguments], capture_output=True, text=True,
                            cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    # i0 2e4 photons per ray: noise levels that differ clearly between doses
    root = write_tcia_like(tmp_path_factory.mktemp("tcia"), cases=tuple(TRAIN_CASES + TEST_CASES), slices=4, i0=2e4)
    run_cli("preprocess", str(root), "--type", "tcia", "--train-cases", *TRAIN_CASES, "--test-cases", *TEST_CASES)
    return root


def test_tcia_preprocess_doses_labels_and_patient_split(tcia):
    train, test = json.loads((tcia / "train.json").read_text()), json.loads((tcia / "test.json").read_text())
    assert len(train) == 6 * 4 * 4 and len(test) == 2 * 4 * 4
    assert not {p.split("/")[0] for p in train} & {p.split("/")[0] for p in test}
    for case in ("C001", "L001"):
        labels = {kind: np.mean([v for p, v in train.items() if p.startswith(case) and kind in p])
                  for kind in ("Full Dose", "0.75Dose", "0.5Dose", "Low Dose")}
        assert labels["Full Dose"] == 1.0
        assert labels["Full Dose"] > labels["0.75Dose"] > labels["0.5Dose"] > labels["Low Dose"]
    simulated = next(tcia.rglob("0.5Dose/1-001.dcm"))
    assert simulated.is_file() and dataset_info(tcia)["score"]["name"] == "ssim"


def test_teachers_and_student_learn(tcia, tmp_path_factory):
    """Two teachers, a distilled student, evaluation: the student ranks held-out patients' images."""
    run = tmp_path_factory.mktemp("run")
    run_cli("train-teacher", str(tcia), "--output", str(run), "--epochs", "40", *TINY)
    run_cli("train-student", str(tcia), "--output", str(run), "--epochs", "40", *TINY)
    result = run_cli("evaluate", str(tcia), "--weights", str(run / "teachers" / "teacher_0.safetensors"),
                     str(run / "student.safetensors"), "--output", str(run / "eval"), "--device", "cpu")
    for name in ("train_info_fold_0.csv", "train_info_fold_1.csv", "train_info_student.csv",
                 "snapshots_fold_0/best.safetensors", "snapshots_students/last.pt", "eval/eval_info.csv",
                 "eval/scatter_student.png"):
        assert (run / name).is_file(), name
    assert len(list(csv.DictReader((run / "train_info_fold_1.csv").open()))) == 40
    metrics = {row["model"]: row for row in csv.DictReader((run / "eval" / "accumulate_metrics.csv").open())}
    student = metrics["student.safetensors"]
    assert float(student["overall"]) > 1.5, result.stdout
    info = read_info(run / "student.safetensors")
    assert info.num_outputs == 2 and info.provenance["role"] == "student" and info.score.name == "ssim"
    assert set(info.provenance["selection_patients"]).isdisjoint(TEST_CASES)


def test_resume_after_kill_continues_from_checkpoint(tcia, tmp_path):
    arguments = [sys.executable, "-m", "DistilIQALib", "train-teacher", str(tcia), "--output", str(tmp_path),
                 "--fold", "0", "--epochs", "12", *TINY]
    process = subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "train_info_fold_0.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # header + 4 epochs logged: epoch 3's checkpoint is on disk (a checkpoint is saved after its log line)
        if log.is_file() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(tmp_path / "snapshots_fold_0" / "last.pt", weights_only=True)
    assert 3 <= checkpoint["epoch"] < 12
    subprocess.run(arguments, cwd=ROOT, check=True, capture_output=True, timeout=600)
    epochs = [int(row["epoch"]) for row in csv.DictReader(log.open())]
    assert epochs == list(range(1, 13))
    assert torch.load(tmp_path / "snapshots_fold_0" / "last.pt", weights_only=True)["epoch"] == 12


def test_distributed_training_with_two_gloo_processes(tcia, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "DistilIQALib", "train-teacher", str(tcia), "--output", str(tmp_path), "--fold", "0",
         "--epochs", "3", "--progress-lines", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "train_info_fold_0.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # written once, by rank 0
    lines = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines()
             if line.startswith("DISTILIQA-PROGRESS ")]
    assert [line["epoch"] for line in lines] == [1, 2, 3] and all(line["epochs"] == 3 for line in lines)
    assert lines[0]["task"] == "teacher fold 0" and "eta_s" in lines[0]
    assert (tmp_path / "teachers" / "teacher_0.safetensors").is_file()


def test_folds_group_patients():
    patients = [f"P{n % 7}" for n in range(40)]
    folds = patient_folds(patients, 5, seed=3)
    assert sorted(i for fold in folds for i in fold) == list(range(40))
    groups = [{patients[i] for i in fold} for fold in folds]
    for a in range(5):
        for b in range(a + 1, 5):
            assert not groups[a] & groups[b]


def test_distillation_is_added_to_ground_truth_and_gated():
    outputs = torch.tensor([[0.5, 0.7], [0.2, 0.4]])
    label = torch.tensor([[0.6], [0.3]])
    near = torch.tensor([[0.62, 0.60], [0.9, 0.9]])  # first sample trusted, second not (mean 0.9 vs 0.3)
    ground_truth = training_loss(outputs, label)
    with_teachers = training_loss(outputs, label, near, distillation_weight=0.75, gate=0.05)
    difference = outputs[0] - near[0]
    teacher_term = difference.abs().mean() + (difference ** 2).mean()
    assert with_teachers.item() == pytest.approx(ground_truth.item() + 0.75 * teacher_term.item() / 2)
    far = torch.full((2, 2), 0.95)
    assert training_loss(outputs, label, far).item() == pytest.approx(ground_truth.item())


def test_ldctiqac_folder(tmp_path):
    rng = np.random.default_rng(0)
    scores = {}
    for n in range(10):
        name = f"{n:04d}.tif"
        tifffile.imwrite(tmp_path / name, rng.uniform(0, 1, (128, 128)).astype(np.float32))
        scores[name] = round(float(rng.integers(0, 21)) * 0.2, 1)
    (tmp_path / "train.json").write_text(json.dumps(scores))
    train_size, test_size = preprocess_ldctiqac(tmp_path, test_fraction=0.2)
    assert (train_size, test_size) == (8, 2)
    split = load_split(tmp_path, "test")
    images = load_images(split, 128)
    assert images.shape == (2, 1, 128, 128) and images.dtype == torch.float16
    original = tifffile.imread(tmp_path / split.paths[0])
    np.testing.assert_allclose(images[0, 0].float().numpy(), original, atol=2e-3)  # not windowed twice
    assert dataset_info(tmp_path)["score"]["maximum"] == 4.0


def test_simulated_dataset_labels_fall_with_dose(tmp_path):
    volume = phantom_volume(3, size=128, pixel_mm=2.8, seed=2)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((2.8, 2.8, 5.0))
    (tmp_path / "sources").mkdir()
    sitk.WriteImage(image, str(tmp_path / "sources" / "patient1.nrrd"))
    sources = source_slices_from_folder(tmp_path / "sources", slices_per_volume=2)
    assert len(sources) == 2 and isinstance(sources[0], SourceSlice) and sources[0].pixel_mm == pytest.approx(2.8)
    preprocess_simulated(sources, tmp_path / "data", doses=(1.0, 0.5, 0.1), sparse_views=(64,))
    labels = json.loads((tmp_path / "data" / "dataset.json").read_text())
    for source in sources:
        by_kind = {kind: labels[f"images/patient1.nrrd/{source.name}_{kind}.mha"]
                   for kind in ("dose1", "dose0.5", "dose0.1", "views64")}
        assert by_kind["dose1"] == pytest.approx(1.0)
        assert by_kind["dose1"] > by_kind["dose0.5"] > by_kind["dose0.1"]
        assert by_kind["views64"] < 1.0


def test_builtin_sources_are_real_ct_and_phantoms():
    sources = builtin_sources(num_phantoms=8, size=256)
    real = [s for s in sources if s.patient.startswith("real_")]
    assert len({s.patient for s in real}) == 6 and len(real) == 7  # one file has two frames
    for source in sources:
        assert source.hu.ndim == 2 and source.hu.shape[0] == source.hu.shape[1] >= 128
        assert source.hu.min() < -500 and source.hu.max() > 100 and 0.2 < source.pixel_mm < 2.0
    assert len({s.patient for s in sources if s.patient.startswith("phantom")}) == 2
    from DistilIQALib.quality.noise import global_noise_index

    for source in sources[-8:]:  # phantoms carry a full-dose scan's noise, like the real slices
        gni = float(global_noise_index(torch.from_numpy(source.hu)[None], (source.pixel_mm,) * 2))
        assert 3.0 < gni < 25.0


def test_augmentation_moves_whole_pixels_and_keeps_noise():
    """Flips, rotations and shifts keep every pixel value (no resampling that would smooth the noise)."""
    from DistilIQALib.training.training import augment

    generator = torch.Generator().manual_seed(0)
    batch = torch.zeros(16, 1, 64, 64)
    batch[:, :, 16:48, 16:48] = torch.randn(16, 1, 32, 32)  # a noisy body in air, away from the edges
    out = augment(batch, generator)
    assert out.shape == batch.shape
    changed = 0
    for before, after in zip(batch, out):
        assert torch.equal(torch.sort(after[after != 0]).values, torch.sort(before[before != 0]).values)
        changed += not torch.equal(before, after)
    assert changed >= 12


def test_fine_tuning_starts_from_the_given_model(tmp_path, tiny_weights):
    """Teacher k starts from output k of the base model (every other weight copied); a base of another
    architecture is refused with a clear message."""
    from DistilIQALib.errors import InputError
    from DistilIQALib.quality.weights import load_weights
    from DistilIQALib.training.training import TrainingConfig, initial_model

    base, _ = load_weights(tiny_weights)
    config = TrainingConfig(preset="tiny", input_size=256, init_weights=str(tiny_weights))
    teacher = initial_model(config, 1, first_output=2)
    assert torch.equal(teacher.head.weight, base.head.weight[2:3])
    assert torch.equal(teacher.head.bias, base.head.bias[2:3])
    state, reference = teacher.state_dict(), base.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in state if not k.startswith("head."))
    student = initial_model(config, 5)
    assert torch.equal(student.head.weight[3], base.head.weight[0])  # outputs cycle over the base's three
    with pytest.raises(InputError, match="cannot start"):
        initial_model(TrainingConfig(preset="tiny", input_size=128, init_weights=str(tiny_weights)), 1)

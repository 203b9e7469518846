"""The shipped model's recipe at tiny size: every step runs, the result carries its calibration and
bands, scores with the scorer, and the same seed gives the same model."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.quality.weights import read_info
from DistilIQALib.training.phantoms import phantom_volume
from DistilIQALib.training.recipe import adequacy_from_calibration, dose_of, fit_dose_calibration, run_recipe
from DistilIQALib.volume import CTVolume


def _tensors(path):
    with safe_open(str(path), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_tiny_recipe_end_to_end_and_reproducible(tmp_path):
    first = run_recipe(tmp_path / "a", "tiny", seed=3, device="cpu")
    info = read_info(first)
    calibration = info.dose_calibration
    assert calibration["dose_fraction"] == [0.05, 0.2, 0.5, 1.0]
    assert np.all(np.diff(calibration["score"]) >= 0)
    bands = info.adequacy["bands"]
    assert [b["name"] for b in bands] == ["good", "borderline", "inadequate"]
    assert bands[0]["min_score"] >= bands[1]["min_score"] and "reasoning" in info.adequacy
    assert info.provenance["recipe"] == "tiny" and info.provenance["purpose"] == "test"
    assert {m["model"] for m in info.provenance["held_out"]} >= {"student.safetensors", "teacher_0.safetensors"}
    assert set(info.provenance["teacher_ensemble_held_out"]) == {"PLCC", "SROCC", "KROCC", "overall", "MAE", "MSE"}
    volume = CTVolume(phantom_volume(3, size=128, pixel_mm=2.8, noise_sd_hu=10), spacing_mm=(2.8, 2.8, 5.0))
    scores = Scorer(str(first), device="cpu").score_volume(volume)
    assert scores.dose_equivalent is not None and scores.adequacy is not None
    second = run_recipe(tmp_path / "b", "tiny", seed=3, device="cpu")
    a, b = _tensors(first), _tensors(second)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_calibration_is_monotone_and_bands_follow_it():
    scores = np.array([0.5, 0.55, 0.8, 0.7, 0.9, 0.95, 0.99, 1.0])
    doses = np.array([0.05, 0.05, 0.2, 0.2, 0.5, 0.5, 1.0, 1.0])
    calibration = fit_dose_calibration(scores, doses)
    assert calibration["dose_fraction"] == [0.05, 0.2, 0.5, 1.0]
    assert calibration["score"] == pytest.approx([0.525, 0.75, 0.925, 0.995])
    bands = adequacy_from_calibration(calibration)["bands"]
    assert bands[0]["min_score"] == pytest.approx(0.925) and bands[1]["min_score"] == pytest.approx(0.75)
    unordered = fit_dose_calibration(np.array([0.9, 0.8]), np.array([0.1, 0.5]))
    assert unordered["score"] == [0.9, 0.9]  # never lower at higher dose
    assert dose_of("images/p/slice0001_dose0.25.mha") == 0.25 and dose_of("images/p/x_views64.mha") is None


def _site_folders(root, count):
    """``count`` patient folders, each holding one real CT file that pydicom / pydicom-data ship."""
    import shutil

    from DistilIQALib.training.datasets import BUILTIN_REAL_CT, package_ct_folders

    files = [folder / name for name in BUILTIN_REAL_CT for folder in package_ct_folders() if (folder / name).is_file()]
    if len(files) < count:
        pytest.skip("pydicom-data's real CT files are not installed")
    for n, file in enumerate(files[:count]):
        (root / f"patient{n}").mkdir(parents=True)
        shutil.copy(file, root / f"patient{n}" / file.name)
    return root


def test_site_adaptation_from_the_command_line(tmp_path, capsys):
    """`recipe --sources` fine-tunes a given model on a site's scans and writes a model with its own
    calibration, bands and held-out tables, recording the base model and the roles of the site's patients."""
    from DistilIQALib.cli import main
    from DistilIQALib.training.corpus import sha256_of

    base = run_recipe(tmp_path / "base", "tiny", seed=1, device="cpu")
    site = _site_folders(tmp_path / "site", 5)
    code = main(["recipe", "--output", str(tmp_path / "adapted"), "--size", "tiny-real", "--sources", str(site),
                 "--base-weights", str(base), "--device", "cpu"])
    assert code == 0
    adapted = tmp_path / "adapted" / "distiliqa_student.safetensors"
    info = read_info(adapted)
    provenance = info.provenance
    assert provenance["purpose"] == "site" and provenance["recipe"] == "tiny-real"
    assert provenance["base_weights"]["sha256"] == sha256_of(base)
    roles = [entry["role"] for entry in provenance["corpus"]]
    assert sorted(roles) == ["calibration", "test", "train", "train", "train"]
    assert "test" in provenance["held_out_real"] or "calibration" in provenance["held_out_real"]
    assert info.dose_calibration["dose_fraction"] == [0.1, 0.25, 0.5, 1.0]
    # the verdicts rest on the site's own routine noise, fitted on its 4 non-test patients
    test_patient = [entry["patient"] for entry in provenance["corpus"] if entry["role"] == "test"]
    assert info.adequacy["on"] == "dose_equivalent"
    # (pydicom's slices: two heads, an abdomen and two spine zooms whose region cannot be read; a region needs
    # 3 patients of its own, or a base model's level, unless it is the head)
    fitted = {name: ref for name, ref in info.noise_reference["regions"].items() if ref.get("basis") == "fitted"}
    fitted_on = set().union(*(ref["fitted_on"] for ref in fitted.values()))
    assert set(fitted) == {"head"} and 1 <= len(fitted_on) <= 2 and not set(test_patient) & fitted_on
    assert _tensors(adapted)["head.weight"].shape[0] == read_info(base).num_outputs
    before, after = _tensors(base), _tensors(adapted)
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)  # it was fine-tuned


def test_absolute_site_adaptation_learns_the_effective_noise(tmp_path):
    """`recipe --size tiny-absolute --sources`: teachers and student fine-tuned from a one-channel SSIM model onto
    the log effective noise, with the brain window as a second channel, an artefact margin fitted on held-out dose
    images and the site's routine references; the learned dose equivalent then falls with dose on a scan."""
    from DistilIQALib.cli import main
    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.quality.preprocessing import BRAIN_WINDOW

    base = run_recipe(tmp_path / "base", "tiny", seed=1, device="cpu")
    site = _site_folders(tmp_path / "site", 5)
    code = main(["recipe", "--output", str(tmp_path / "adapted"), "--size", "tiny-absolute", "--sources", str(site),
                 "--base-weights", str(base), "--device", "cpu"])
    assert code == 0
    adapted = tmp_path / "adapted" / "distiliqa_student.safetensors"
    info = read_info(adapted)
    assert info.score.name == "effective_noise" and info.extra_windows == (BRAIN_WINDOW,)
    assert info.architecture.input_channels == 2 and info.provenance["purpose"] == "site"
    assert info.artefact_margin is not None and info.artefact_margin >= 0.05
    assert {"dose", "views", "rings", "motion"} <= set(info.provenance["images"]["simulated_kinds"])
    labels = json.loads((tmp_path / "adapted" / "data" / "train.json").read_text())
    assert 0.0 < np.median(list(labels.values())) < 5.0  # log HU, not SSIM
    scan = read_volume(next(p for p in sorted(site.rglob("*")) if p.is_file()))
    scores = Scorer(str(adapted), device="cpu").score_volume(scan)
    assert scores.effective_noise_hu is not None and np.isfinite(scores.effective_noise_hu).all()
    rows = scores.rows()
    assert all(row["driver"] in ("noise", "artefacts", "") for row in rows)


def test_site_adaptation_refuses_bad_sources_in_one_line(tmp_path, capsys):
    from DistilIQALib.cli import main

    assert main(["recipe", "--output", str(tmp_path / "x"), "--sources", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    site = _site_folders(tmp_path / "site", 2)
    assert main(["recipe", "--output", str(tmp_path / "y"), "--size", "tiny-real", "--sources", str(site),
                 "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "at least 3 patients" in error[0]
    # the SSIM-label stage cannot start from the shipped model, whose outputs are log effective noise
    site = _site_folders(tmp_path / "site5", 5)
    assert main(["recipe", "--output", str(tmp_path / "z"), "--size", "tiny-real", "--sources", str(site),
                 "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "learned dose equivalent" in error[0] and "--size absolute" in error[0]


def test_the_recipe_simulates_on_a_cuda_gpu_only():
    """Dose and view simulation follows the training device when it is a CUDA GPU and stays on the CPU otherwise
    (this machine has no GPU, so 'auto' is the CPU too); a GPU asked for and missing is a clear error."""
    from DistilIQALib.errors import DeviceError
    from DistilIQALib.quality.device import simulation_device

    assert simulation_device("cpu") is None
    auto = simulation_device("auto")
    assert auto is None if not torch.cuda.is_available() else auto.type == "cuda"
    if torch.cuda.is_available():
        assert simulation_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError):
            simulation_device("cuda")


def test_released_weights_never_train_or_calibrate_on_non_commercial_scans(tmp_path, capsys):
    """The shipped model is Apache-2.0 for anyone's use: the release recipes (`absolute`, `default`) refuse a corpus
    whose training or calibration patients carry a non-commercial licence, in one line, before any work; the
    committed manifest keeps such scans (MIDRC-RICORD-1A, CC BY-NC 4.0) in the test role."""
    from DistilIQALib.cli import main
    from DistilIQALib.quality.weights import default_weights_path
    from DistilIQALib.training.corpus import load_manifest, non_commercial
    from DistilIQALib.training.recipe import default_manifest

    committed = load_manifest(default_manifest())
    assert non_commercial(committed) == []
    assert "ricord_419639" in non_commercial(committed, roles=("test",))
    data = json.loads(default_manifest().read_text())
    for entry in data["entries"]:
        if entry["id"] == "ricord_419639":
            entry["role"] = "train"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(data))
    for size in ("absolute", "default"):
        code = main(["recipe", "--output", str(tmp_path / size), "--size", size, "--manifest", str(manifest),
                     "--base-weights", str(default_weights_path()), "--device", "cpu"])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(error) == 1, error
        assert "ricord_419639" in error[0] and "non-commercial" in error[0]
        assert not (tmp_path / size / "data").exists()

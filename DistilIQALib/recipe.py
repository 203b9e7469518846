"""The reproducible recipe of the shipped model: data, teachers, student, calibration, one command.

``python -m DistilIQALib recipe --output RUN`` builds the simulated dataset from the built-in sources
(the real CT slices that pydicom and pydicom-data ship, and phantoms), trains the teacher ensemble and
the distilled student with fixed seeds, evaluates them on held-out patients, fits the dose-equivalent
calibration and the adequacy bands on held-out images, and writes ``RUN/distiliqa_student.safetensors``
with all of it in its metadata. Every step resumes: rerunning after an interruption continues.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .datasets import builtin_sources, load_split, preprocess_simulated
from .device import resolve_device
from .evaluation import predict_split, write_evaluation
from .metrics import agreement
from .training import TrainingConfig, train_student, train_teachers
from .weights import save_weights


@dataclass(frozen=True)
class Recipe:
    phantoms: int
    size: int
    real_ct: bool
    doses: Tuple[float, ...]
    sparse_views: Tuple[int, ...]
    test_patients: Tuple[str, ...]
    kernels: Tuple[str, ...] = ("hann",)
    teacher: Dict = field(default_factory=dict)
    student: Dict = field(default_factory=dict)


RECIPES: Dict[str, Recipe] = {
    "default": Recipe(
        phantoms=32, size=512, real_ct=True, doses=(1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05), sparse_views=(256, 128, 64),
        test_patients=("real_explicit_VR-UN", "phantom6", "phantom7"), kernels=("hann", "shepp-logan", "ramlak"),
        teacher=dict(preset="fast", epochs=10, batch_size=8, optimizer="adamw", lr=1e-3, folds=5),
        student=dict(preset="fast", epochs=20, batch_size=8, optimizer="adamw", lr=1e-3, folds=5)),
    "tiny": Recipe(
        phantoms=12, size=128, real_ct=False, doses=(1.0, 0.5, 0.2, 0.05), sparse_views=(64,),
        test_patients=("phantom2",), kernels=("hann", "ramlak"),
        teacher=dict(preset="tiny", input_size=128, epochs=3, batch_size=8, optimizer="adamw", lr=2e-3, folds=2,
                     augment=False),
        student=dict(preset="tiny", input_size=128, epochs=3, batch_size=8, optimizer="adamw", lr=2e-3, folds=2,
                     augment=False)),
}

_DOSE = re.compile(r"_dose([0-9.]+)\.mha$")


def dose_of(path: str) -> Optional[float]:
    """Dose fraction of a simulated image from its file name (``None`` for sparse-view images)."""
    match = _DOSE.search(path)
    return float(match.group(1)) if match else None


def fit_dose_calibration(scores: np.ndarray, doses: np.ndarray) -> Dict[str, List[float]]:
    """Monotone table score -> dose fraction from the median score at each simulated dose."""
    levels = np.unique(doses)
    medians = np.array([np.median(scores[doses == level]) for level in levels])
    medians = np.maximum.accumulate(medians)  # more dose never looks worse
    return {"score": [round(float(v), 5) for v in medians], "dose_fraction": [float(v) for v in levels]}


def adequacy_from_calibration(calibration: Dict[str, List[float]], good_dose: float = 0.5,
                              inadequate_dose: float = 0.2) -> Dict:
    """Bands by dose equivalent: good from the score a half-dose image gets, inadequate below the score of a
    fifth of the dose."""
    good = float(np.interp(good_dose, calibration["dose_fraction"], calibration["score"]))
    inadequate = float(np.interp(inadequate_dose, calibration["dose_fraction"], calibration["score"]))
    return {"bands": [{"name": "good", "min_score": round(good, 5)},
                      {"name": "borderline", "min_score": round(inadequate, 5)},
                      {"name": "inadequate", "min_score": None}],
            "reasoning": (f"good: looks like at least {good_dose:.0%} of a full dose (image noise at most about "
                          f"{1 / good_dose ** 0.5:.1f}x the full-dose noise); inadequate: looks like less than "
                          f"{inadequate_dose:.0%} of a full dose (noise above {1 / inadequate_dose ** 0.5:.1f}x), "
                          "where low-contrast detectability in the literature degrades markedly. Thresholds are "
                          "the held-out median scores of simulated images at those doses.")}


def run_recipe(output: Path | str, name: str = "default", seed: int = 0, device: str = "auto",
               progress=None) -> Path:
    """Run (or resume) the recipe; returns the final weights file."""
    recipe = RECIPES[name]
    output = Path(output)
    started = time.monotonic()
    data = output / "data"
    if not (data / "dataset.json").is_file():
        sources = builtin_sources(recipe.phantoms, recipe.size, seed)
        if not recipe.real_ct:
            sources = [s for s in sources if not s.patient.startswith("real_")]
        preprocess_simulated(sources, data, recipe.doses, recipe.sparse_views, recipe.test_patients, seed, progress,
                             recipe.kernels)
    run = output / "run"
    teacher_config = TrainingConfig(seed=seed, device=device, purpose="release" if name == "default" else "test",
                                    **recipe.teacher)
    student_config = TrainingConfig(seed=seed, device=device, purpose=teacher_config.purpose, **recipe.student)
    teachers = train_teachers(data, run, teacher_config, progress=progress)
    student = train_student(data, run, student_config, teachers, progress=progress)
    split = load_split(data, "test")
    predictions = predict_split([student, *teachers], split, resolve_device(device))
    metrics = write_evaluation(predictions, split, output / "evaluation")
    model, info = predictions[0].model, predictions[0].info
    doses = np.array([dose_of(path) or np.nan for path in split.paths])
    known = np.isfinite(doses)
    info.dose_calibration = fit_dose_calibration(predictions[0].scores[known], doses[known])
    info.adequacy = adequacy_from_calibration(info.dose_calibration)
    ensemble = agreement(np.mean([p.scores for p in predictions[1:]], axis=0), split.labels)
    info.provenance.update(recipe=name, recipe_parameters=json.loads(json.dumps(asdict(recipe))), seed=seed,
                           teacher_ensemble_held_out={k: round(v, 5) for k, v in ensemble.items()},
                           wall_time_s=round(time.monotonic() - started, 1),
                           held_out=[{k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}
                                     for m in metrics])
    final = output / "distiliqa_student.safetensors"
    save_weights(final, model, info, half=True)
    return final


"""The reproducible recipe of the shipped model: data, teachers, student, calibration, one command.

``python -m DistilIQALib recipe --output RUN`` runs two stages, each with fixed seeds:

1. *builtin*: simulated doses and sparse views of the built-in sources (the real CT slices that pydicom
   and pydicom-data ship, and phantoms with full-dose noise), teachers and student from scratch. It
   teaches the network CT noise and streaks (skipped with ``--base-weights``).
2. *real CT*: the public real-CT corpus of ``corpus/manifest.json``, degraded relative to each scan's own
   noise (:class:`~DistilIQALib.training.simulation.DoseSimulator` with ``reference_noise_hu``); teachers and
   student start from stage 1's student and are fine-tuned; the score's dose table is fitted on the
   corpus's *calibration* patients, and the held-out table is measured on its *test* patients, neither
   ever trained on.
3. *noise reference* (:func:`calibrate_weights`, also ``python -m DistilIQALib calibrate``): the noise a
   routine full dose leaves, by patient size and slice thickness, fitted on the real full-dose scans of
   every patient that is not a *test* patient; the verdicts (dose equivalent, adequacy bands) rest on it.

``--sources DIR ...`` runs stage 2 on a site's own full-dose scans instead of the corpus (site
adaptation), starting from the shipped model. Every step resumes: rerunning after an interruption
continues. The result is ``RUN/distiliqa_student.safetensors`` with all of it in its metadata.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..quality.device import resolve_device, simulation_device
from ..quality.metrics import agreement
from ..quality.weights import read_info, save_weights
from .corpus import CorpusEntry
from .datasets import builtin_sources, load_split, preprocess_simulated
from .evaluation import predict_split, write_evaluation
from .training import TrainingConfig, train_student, train_teachers


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
    "builtin": Recipe(
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
    if name in REAL_STAGES:
        return run_real_recipe(output, name, seed=seed, device=device, progress=progress)
    recipe = RECIPES[name]
    output = Path(output)
    started = time.monotonic()
    data = output / "data"
    if not (data / "dataset.json").is_file():
        sources = builtin_sources(recipe.phantoms, recipe.size, seed)
        if not recipe.real_ct:
            sources = [s for s in sources if not s.patient.startswith("real_")]
        preprocess_simulated(sources, data, recipe.doses, recipe.sparse_views, recipe.test_patients, seed, progress,
                             recipe.kernels, device=simulation_device(device))
    run = output / "run"
    teacher_config = TrainingConfig(seed=seed, device=device, purpose="release" if name == "builtin" else "test",
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
                           teacher_ensemble_held_out=_rounded(ensemble),
                           wall_time_s=round(time.monotonic() - started, 1),
                           held_out=[{k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}
                                     for m in metrics])
    final = output / "distiliqa_student.safetensors"
    save_weights(final, model, info, half=True)
    return final



# --- stage 2: real CT ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealStage:
    """Fine-tuning on real scans degraded relative to their own noise."""

    doses: Tuple[float, ...]
    sparse_views: Tuple[int, ...]
    sparse_every: int
    base: str  # the recipe that makes the base model when no --base-weights is given
    teacher: Dict = field(default_factory=dict)
    student: Dict = field(default_factory=dict)
    slices_per_volume: Optional[int] = None  # None: each corpus entry's own count


REAL_STAGES: Dict[str, RealStage] = {
    "default": RealStage(
        doses=(1.0, 0.75, 0.5, 0.25, 0.15, 0.1, 0.05), sparse_views=(256, 128, 64), sparse_every=3, base="builtin",
        teacher=dict(preset="fast", epochs=4, batch_size=8, optimizer="adamw", lr=3e-4, folds=5),
        student=dict(preset="fast", epochs=8, batch_size=8, optimizer="adamw", lr=3e-4, folds=5)),
    "tiny-real": RealStage(
        doses=(1.0, 0.5, 0.25, 0.1), sparse_views=(64,), sparse_every=2, base="tiny", slices_per_volume=1,
        teacher=dict(preset="tiny", input_size=128, epochs=2, batch_size=8, optimizer="adamw", lr=1e-3, folds=2,
                     augment=False),
        student=dict(preset="tiny", input_size=128, epochs=2, batch_size=8, optimizer="adamw", lr=1e-3, folds=2,
                     augment=False)),
}


def noise_reference_from_sources(sources, per_cm: Optional[float] = None) -> Dict:
    """:func:`~DistilIQALib.quality.interpretation.fit_noise_reference` over full-dose source slices: each slice's
    global noise index, noise-equivalent diameter (:func:`~DistilIQALib.quality.noise.noise_equivalent_diameter_cm`)
    and its scan's slice thickness, patients weighing alike (``per_cm``: keep that size dependence and fit
    the level only)."""
    from ..quality.noise import NOISE_EQUIVALENT_DIAMETER

    return dict(_fit_region(sources, per_cm), size=NOISE_EQUIVALENT_DIAMETER)


def size_dependence_to_keep(base_reference: Optional[Dict], patients: int) -> Optional[float]:
    """The ``per_cm`` to hold fixed when refitting a noise reference on ``patients`` patients: ``None`` (fit it)
    with 5 or more, or with 3-4 when the base model has no reference on the same size measure; the base
    model's with fewer than 5 when it has one; 0 (no size dependence, the level only) with fewer than 3 and no
    base reference."""
    from ..quality.noise import NOISE_EQUIVALENT_DIAMETER

    if base_reference and base_reference.get("size") == NOISE_EQUIVALENT_DIAMETER and patients < 5:
        return float(base_reference["per_cm"])
    return None if patients >= 3 else 0.0


def apply_noise_reference(info, reference: Dict, fitted_on: Sequence[str],
                          base_reference: Optional[Dict] = None) -> None:
    """Make ``info``'s verdicts rest on ``reference``: dose equivalent from noise, size and thickness, and
    adequacy bands on that dose equivalent, set by the spread of routine scans around it. A reference on too
    few patients to measure that spread keeps ``base_reference``'s (the model it was refitted from)."""
    from ..quality.interpretation import adequacy_from_reference

    reference = dict(reference, fitted_on=sorted(fitted_on))
    if "routine_range" not in reference and base_reference and base_reference.get("routine_range"):
        reference["routine_range"] = list(base_reference["routine_range"])
    info.noise_reference = reference
    info.adequacy = adequacy_from_reference(reference)
    info.adequacy["reasoning"] += (f" Routine level fitted on {reference['patients']} real patients' full-dose "
                                   "scans, none of them a test patient.")


#: The neck has no real routine scan in the corpus: its level is the abdomen's, scaled by the ratio of the
#: global-noise thresholds of the US CMS CT measure (CMS1074: neck or cervical spine 25 HU, routine abdomen-pelvis
#: 29 HU), at the abdomen's median fitted size, with no size dependence of its own.
NECK_TO_ABDOMEN_NOISE = 25.0 / 29.0
NECK_DIAMETER_CM = (8.0, 30.0)
HEAD_DIAMETER_CM = (10.0, 26.0)
FITTED_REGIONS = ("chest", "abdomen")
def _measured(sources):
    """Noise index (HU), noise-equivalent diameter (cm), thickness (mm) and patient of each source slice."""
    import torch

    from ..quality.noise import noise_equivalent_diameter_cm, slice_noise_index

    rows = []
    for source in sources:
        image = torch.from_numpy(np.ascontiguousarray(source.hu, dtype=np.float32))[None]
        rows.append((slice_noise_index(source.hu, source.pixel_mm),
                     float(noise_equivalent_diameter_cm(image, (source.pixel_mm, source.pixel_mm))[0]),
                     source.thickness_mm, source.patient))
    return rows


def _fit_region(sources, per_cm: Optional[float]) -> Dict:
    """:func:`~DistilIQALib.quality.interpretation.fit_noise_reference` over :func:`_measured` source slices; too
    few patients with soft tissue is the user's data, not a bug: one line."""
    from ..quality.interpretation import fit_noise_reference

    rows = _measured(sources)
    noise, diameter, thickness, patients = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
    try:
        return fit_noise_reference(noise, thickness, diameter, patients, per_cm=per_cm)
    except ValueError as error:
        raise InputError(str(error)) from None


def _spread_text(reference: Dict) -> str:
    """`` (routine scans' 5th-95th percentile of dose equivalent a-b)`` where the reference measured it, else ''."""
    spread = reference.get("routine_range")
    if not spread:
        return ""
    return f" (routine scans' 5th-95th percentile of dose equivalent {spread[0]:.2f}-{spread[1]:.2f})"


def regional_noise_reference(sources, base_reference: Optional[Dict] = None) -> Dict:
    """A routine reference for every body region from full-dose source slices that carry their region
    (:attr:`~DistilIQALib.training.datasets.SourceSlice.region`): chest and abdomen fitted on their slices (every
    patient weighing alike; bands from how those routine scans spread), the head fitted with the fixed-technique size
    dependence and reader-study bands, the neck from the abdomen and published thresholds. A region without
    slices here keeps ``base_reference``'s."""
    from ..quality.interpretation import (
        ABOVE_ROUTINE_DEFAULT,
        ABOVE_ROUTINE_QUANTILE,
        adequacy_from_reference,
        reader_study_bands,
        region_references,
        valid_ranges,
    )
    from ..quality.noise import NOISE_EQUIVALENT_DIAMETER

    base = region_references(base_reference) if base_reference else {}
    regions: Dict[str, Dict] = {}
    body = [s for s in sources if s.region in FITTED_REGIONS]
    body_patients = {s.patient for s in body}
    kept_body = base.get("abdomen") or base.get("chest")
    if body_patients and (len(body_patients) >= 3 or kept_body):
        # size dependence and spread from chest and abdomen together (more patients: a steadier slope and
        # percentiles); each region then gets its own level
        per_cm = size_dependence_to_keep(dict(kept_body, size=NOISE_EQUIVALENT_DIAMETER) if kept_body else None,
                                         len(body_patients))
        pooled = _fit_region(body, per_cm)
        if "routine_range" not in pooled and kept_body and kept_body.get("routine_range"):
            pooled["routine_range"] = list(kept_body["routine_range"])
            pooled["routine_p75"] = kept_body.get("above_routine_from")
        adequacy = adequacy_from_reference(pooled)
        above = float(pooled.get("routine_p75") or ABOVE_ROUTINE_DEFAULT)
        for region in FITTED_REGIONS:
            picked = [s for s in sources if s.region == region]
            if not picked:
                if base.get(region):
                    regions[region] = base[region]
                continue
            fitted = _fit_region(picked, float(pooled["per_cm"]))
            fitted.pop("routine_p75", None)
            fitted["routine_range"] = pooled.get("routine_range")
            spread_inadequate = float(adequacy["bands"][1]["min_value"])
            bands, why = reader_study_bands(region, spread_inadequate)
            note = (f" Bands: good from {bands[0]['min_value']:.0%}, inadequate below {bands[1]['min_value']:.0%} "
                    f"({why}).")
            regions[region] = dict(
                fitted, **valid_ranges(pooled), basis="fitted", fitted_on=sorted({s.patient for s in picked}),
                bands=bands, above_routine_from=round(above, 3),
                reasoning=(f"Level fitted on the {region} slices of {fitted['patients']} real patients; size "
                           f"dependence ({pooled['per_cm']:.4f} per cm) and spread from the chest and abdomen "
                           f"slices of {pooled['patients']} patients together, and so are the sizes and thicknesses it "
                           f"applies to{_spread_text(pooled)}."
                           + f" Above routine: a dose equivalent over {above:.2f}, the {ABOVE_ROUTINE_QUANTILE:.0%} "
                           "point of routine scans, as diagnostic reference levels are set." + note))
    else:
        regions.update({region: base[region] for region in FITTED_REGIONS if base.get(region)})
    head = [s for s in sources if s.region == "head"]
    body_per_cm = float(regions["chest"]["per_cm"]) if "chest" in regions else float(
        (regions.get("abdomen") or {}).get("per_cm", 0.0))
    if head:
        fitted = _fit_region(head, body_per_cm)
        fitted.pop("routine_p75", None)
        head_patients = sorted({s.patient for s in head})
        bands, why = reader_study_bands("head")
        regions["head"] = dict(
            fitted, valid_diameter_cm=list(HEAD_DIAMETER_CM), **{k: v for k, v in valid_ranges(fitted).items()
                                                                  if k == "valid_thickness_mm"},
            basis="fitted", fitted_on=head_patients, bands=bands,
            above_routine_from=ABOVE_ROUTINE_DEFAULT,
            reasoning=(f"Level fitted on {len(head_patients)} real routine head CT(s) with the chest's and "
                       f"abdomen's size dependence ({body_per_cm:.4f} per cm); checked against published brain "
                       f"noise (4.0 HU at 5 mm, Nakamura et al. 2019). Bands: good from {bands[0]['min_value']:.0%}, "
                       f"inadequate below {bands[1]['min_value']:.0%} ({why}). Above routine: over "
                       f"{ABOVE_ROUTINE_DEFAULT:g}x a routine dose."))
    elif base.get("head"):
        regions["head"] = base["head"]
    if "abdomen" in regions:
        abdomen = regions["abdomen"]
        low, high = abdomen["diameter_range_cm"]
        middle = (low + high) / 2.0
        level = float(abdomen["intercept"]) + float(abdomen["per_cm"]) * middle + 2.0 * math.log(NECK_TO_ABDOMEN_NOISE)
        neck_bands, neck_why = reader_study_bands("neck", float(abdomen["bands"][1]["min_value"]))
        regions["neck"] = {
            "intercept": round(level, 5), "per_cm": 0.0, "basis": "literature",
            "valid_diameter_cm": list(NECK_DIAMETER_CM), "valid_thickness_mm": abdomen.get("valid_thickness_mm"),
            "bands": neck_bands, "above_routine_from": abdomen["above_routine_from"],
            "reasoning": (f"No routine neck CT in the corpus: the level is the abdomen's at {middle:.1f} cm with "
                          f"noise x{NECK_TO_ABDOMEN_NOISE:.2f}, the ratio of the global-noise thresholds of the US "
                          "CMS CT measure CMS1074 (neck 25 HU, routine abdomen-pelvis 29 HU). Bands: good from "
                          f"{neck_bands[0]['min_value']:.0%}, inadequate below {neck_bands[1]['min_value']:.0%} "
                          f"({neck_why}).")}
    elif base.get("neck"):
        regions["neck"] = base["neck"]
    if not regions:
        raise InputError("no routine noise level could be fitted: no full-dose slice of a known body region with "
                         "soft tissue")
    return {"size": NOISE_EQUIVALENT_DIAMETER, "regions": regions}


def apply_regional_reference(info, reference: Dict) -> None:
    """Make ``info``'s verdicts rest on a per-region ``reference``; its top-level bands (what older readers and
    single-region charts show) are the abdomen's, else the first region's."""
    regions = reference["regions"]
    main = regions.get("abdomen") or next(iter(regions.values()))
    info.noise_reference = reference
    info.adequacy = {"on": "dose_equivalent", "bands": main["bands"],
                     "reasoning": "Bands per body region (noise_reference.regions); " + main.get("reasoning", "")}


def calibrate_weights(weights: Path | str, output: Path | str, manifest: Optional[Path | str] = None,
                      corpus_root: Optional[Path | str] = None) -> Path:
    """A copy of ``weights`` whose verdicts rest on a noise reference fitted on the corpus's non-test
    patients (the network and its scores are unchanged)."""
    from ..quality.weights import load_weights
    from .corpus import corpus_sources, load_manifest, sha256_of

    manifest = Path(manifest) if manifest else default_manifest()
    entries = load_manifest(manifest)
    root = Path(corpus_root) if corpus_root else manifest.parent / "files"
    sources = corpus_sources(entries, root, roles=("train", "calibration"))
    model, info = load_weights(weights)
    apply_regional_reference(info, regional_noise_reference(sources, info.noise_reference))
    info.provenance["noise_reference"] = {"manifest_sha256": sha256_of(manifest),
                                          "roles": ["train", "calibration"]}
    return save_weights(Path(output), model, info, half=True)


def default_manifest() -> Path:
    """``corpus/manifest.json`` of the source tree."""
    return Path(__file__).resolve().parent.parent.parent / "corpus" / "manifest.json"


def site_entries(folders: Sequence[Path | str], seed: int = 0) -> Tuple[List[CorpusEntry], Path]:
    """Corpus entries for a site's own scans: every DICOM series and volume file under ``folders`` is a
    patient. Patients are assigned to roles by a seeded shuffle: a fifth (at least one) for the held-out
    test table, a fifth (at least one, with five or more patients) for calibration, the rest for
    training."""
    from ..io.reading import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, list_dicom_series

    found: List[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"no such folder: {folder}")
        found += sorted({Path(s["folder"]) for s in list_dicom_series(folder)})
        found += [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
                  and not p.name.lower().endswith(IMAGE_2D_SUFFIXES)]
    if len(found) < 3:
        raise InputError(f"site adaptation needs scans of at least 3 patients (training, calibration and test); "
                         f"found {len(found)} under {', '.join(str(f) for f in folders)}")
    order = np.random.default_rng(seed).permutation(len(found))
    held = max(1, len(found) // 5)
    roles = {}
    for rank, index in enumerate(order):
        roles[index] = "test" if rank < held else "calibration" if rank < 2 * held and len(found) >= 5 else "train"
    entries = [CorpusEntry(id=f"site{n:03d}", patient=f"site{n:03d}", role=roles[n], anatomy="site", path=str(path),
                           slices_used=8) for n, path in enumerate(found)]
    return entries, Path("/")


def run_real_recipe(output: Path | str, name: str = "default", seed: int = 0, device: str = "auto", progress=None,
                    manifest: Optional[Path | str] = None, sources: Optional[Sequence[Path | str]] = None,
                    base_weights: Optional[Path | str] = None, corpus_root: Optional[Path | str] = None) -> Path:
    """Stage 2 (or stage 1 + 2): fine-tune on real CT, calibrate on held-out patients; the weights file."""
    from .corpus import corpus_sources, sha256_of
    from .datasets import image_records

    stage = REAL_STAGES[name]
    output = Path(output)
    started = time.monotonic()
    purpose = "site" if sources else "release" if name == "default" else "test"
    entries, root, manifest, base_weights = _patients_and_base(output, stage.base, seed, device, progress, manifest,
                                                               sources, base_weights, corpus_root,
                                                               release=purpose == "release")
    if read_info(base_weights).score.name != "ssim":
        raise InputError(f"{base_weights.name} scores the learned dose equivalent; the SSIM-label stage starts from "
                         "an SSIM-label model (--base-weights), or adapt it with --size absolute")
    data = output / "data"
    held_out = [e.patient for e in entries if e.role != "train"]
    if not (data / "dataset.json").is_file():
        slices = corpus_sources(entries, root, slices_per_volume=stage.slices_per_volume)
        preprocess_simulated(slices, data, stage.doses, stage.sparse_views, held_out, seed, progress,
                             relative=True, sparse_every=stage.sparse_every, device=simulation_device(device))
    split, predictions, roles = _train_and_predict(output, stage, purpose, entries, base_weights, seed, device,
                                                   progress)
    records = image_records(data)
    fit_role = "calibration" if (roles == "calibration").any() else "test"
    doses = np.array([dose_of(path) or np.nan for path in split.paths])
    fit = (roles == fit_role) & np.isfinite(doses)
    model, info = predictions[0].model, predictions[0].info
    info.dose_calibration = fit_dose_calibration(predictions[0].scores[fit], doses[fit])
    references = corpus_sources(entries, root, roles=("train", "calibration"),
                                slices_per_volume=stage.slices_per_volume)
    apply_regional_reference(info, regional_noise_reference(references, read_info(base_weights).noise_reference))
    held_out_tables = {}
    for role in ("calibration", "test"):
        mask = roles == role
        if mask.sum() > 2:
            held_out_tables[role] = _held_out_table(predictions, split, mask)
    info.provenance.update(
        recipe=name, seed=seed, purpose=purpose, recipe_parameters=json.loads(json.dumps(asdict(stage))),
        base_weights={"file": base_weights.name, "sha256": sha256_of(base_weights)},
        corpus=[{"id": e.id, "patient": e.patient, "role": e.role, "anatomy": e.anatomy} for e in entries],
        manifest_sha256=sha256_of(manifest) if manifest else None,
        images={"train": len(load_split(data, "train")), "held_out": len(split),
                "simulated_kinds": sorted({r["kind"] for r in records.values()})},
        held_out_real=held_out_tables, wall_time_s=round(time.monotonic() - started, 1))
    final = output / "distiliqa_student.safetensors"
    save_weights(final, model, info, half=True)
    return final


def _patients_and_base(output: Path, base_recipe: str, seed: int, device: str, progress, manifest, sources,
                       base_weights, corpus_root, release: bool = False):
    """(corpus entries, their root, the manifest or ``None`` for a site's ``sources``, the base weights): a site's
    scans start from the shipped model, the corpus from ``base_weights`` or the ``base_recipe`` run first. A
    ``release`` run (weights for anyone's use) refuses corpus patients under a non-commercial licence in training or
    calibration."""
    from .corpus import load_manifest, non_commercial

    if sources:
        entries, root = site_entries(sources, seed)
        manifest = None
        if base_weights is None:
            from ..quality.weights import default_weights_path

            base_weights = default_weights_path()
    else:
        manifest = Path(manifest) if manifest else default_manifest()
        entries = load_manifest(manifest)
        root = Path(corpus_root) if corpus_root else manifest.parent / "files"
        barred = non_commercial(entries) if release else []
        if barred:
            raise InputError(f"{', '.join(barred)} in {manifest.name}: a non-commercial licence keeps these scans out "
                             "of training and calibration of released weights; give them the role test")
    if base_weights is None:
        base_weights = run_recipe(output / "base", base_recipe, seed, device, progress)
    return entries, root, manifest, Path(base_weights)


def _train_and_predict(output: Path, stage, purpose: str, entries, base_weights: Path, seed: int, device: str,
                       progress):
    """Teachers and student of ``stage`` fine-tuned from ``base_weights`` on ``output/data``, their predictions on
    its held-out split (``output/evaluation``), and the corpus role of each held-out image: (split, predictions,
    roles)."""
    run = output / "run"
    common = dict(seed=seed, device=device, purpose=purpose, init_weights=str(base_weights))
    teachers = train_teachers(output / "data", run, TrainingConfig(**common, **stage.teacher), progress=progress)
    student = train_student(output / "data", run, TrainingConfig(**common, **stage.student), teachers,
                            progress=progress)
    split = load_split(output / "data", "test")
    predictions = predict_split([student, *teachers], split, resolve_device(device))
    write_evaluation(predictions, split, output / "evaluation")
    role_of = {e.patient: e.role for e in entries}
    return split, predictions, np.array([role_of.get(p, "test") for p in split.patients])


def _held_out_table(predictions, split, mask: np.ndarray) -> Dict:
    """Agreement of the student and of the teacher ensemble with the labels of the ``mask`` images."""
    return {"images": int(mask.sum()), "patients": sorted(set(np.array(split.patients)[mask])),
            "student": _rounded(agreement(predictions[0].scores[mask], split.labels[mask])),
            "teacher_ensemble": _rounded(agreement(np.mean([p.scores[mask] for p in predictions[1:]], axis=0),
                                                   split.labels[mask]))}


def _rounded(metrics: Dict[str, float]) -> Dict[str, float]:
    return {key: round(float(value), 5) for key, value in metrics.items()}


# --- the absolute score: a learned dose equivalent on one scale for every scan and region -----------------------------

@dataclass(frozen=True)
class AbsoluteStage:
    """Fine-tuning onto the absolute label (:func:`~DistilIQALib.training.datasets.preprocess_absolute`): the log of
    each image's effective noise, with head CT, artefacts and a brain-window channel."""

    doses: Tuple[float, ...]
    artefacts: Dict
    every: int
    head_phantoms: int
    held_out_slices: int  # per held-out patient, evenly along z
    teacher: Dict = field(default_factory=dict)
    student: Dict = field(default_factory=dict)
    slices_per_volume: Optional[int] = None  # None: each corpus entry's own count
    phantom_size: int = 512
    base: str = "default"  # the recipe that makes the base model (the SSIM-label model) when no base is given


ABSOLUTE_STAGES: Dict[str, AbsoluteStage] = {
    "absolute": AbsoluteStage(
        doses=(1.0, 0.5, 0.25, 0.1, 0.05),
        artefacts={"views": (256, 128, 64), "rings": (100.0, 300.0), "motion": (2.0, 5.0)}, every=3,
        head_phantoms=9, held_out_slices=3, base="builtin",
        teacher=dict(preset="fast", epochs=4, batch_size=8, optimizer="adamw", lr=5e-4, folds=5, gate=0.1,
                     extra_windows=((80.0, 40.0),), reset_head=True),
        student=dict(preset="fast", epochs=12, batch_size=8, optimizer="adamw", lr=5e-4, folds=5, gate=0.1,
                     extra_windows=((80.0, 40.0),), reset_head=True)),
    "tiny-absolute": AbsoluteStage(
        doses=(1.0, 0.5, 0.25, 0.1), artefacts={"views": (64,), "rings": (150.0,), "motion": (5.0,)}, every=3,
        head_phantoms=2, held_out_slices=1, slices_per_volume=1, phantom_size=128, base="tiny",
        teacher=dict(preset="tiny", input_size=128, epochs=2, batch_size=8, optimizer="adamw", lr=1e-3, folds=2,
                     augment=False, gate=0.1, extra_windows=((80.0, 40.0),), reset_head=True),
        student=dict(preset="tiny", input_size=128, epochs=2, batch_size=8, optimizer="adamw", lr=1e-3, folds=2,
                     augment=False, gate=0.1, extra_windows=((80.0, 40.0),), reset_head=True)),
}


def head_phantom_sources(count: int, size: int = 512, seed: int = 0) -> List:
    """``count`` head phantom slices (skull base to vertex, a new head every 3) with full-dose noise of a routine
    head scan: projection-domain noise at photon counts varied per head (noise about 3.5-6 HU at 5 mm)."""
    from .datasets import SourceSlice
    from .phantoms import head_phantom_slice
    from .simulation import DEFAULT_I0, DoseSimulator

    pixel_mm = 0.47 * 512 / size
    sources = []
    for n in range(count):
        head = n // 3
        ideal = head_phantom_slice((n % 3 + 0.5) / 3 * 0.9, size, pixel_mm, seed * 1000 + 500 + head)
        photons = DEFAULT_I0 * float(np.random.default_rng(seed * 1000 + head).uniform(0.6, 1.6))
        noise = DoseSimulator(ideal, pixel_mm, i0=photons, seed=(seed * 1000 + n) * 7919 + 3).full_dose_noise()
        sources.append(SourceSlice(f"headphantom{head}", f"headphantom{head}_pos{n % 3}", ideal + noise, pixel_mm,
                                   anatomy="head phantom", thickness_mm=5.0, region="head"))
    return sources


def absolute_sources(entries: Sequence[CorpusEntry], root: Path, stage: AbsoluteStage, seed: int = 0):
    """(training sources, held-out sources): every slice the manifest lists of the *train* patients plus the head
    phantoms; ``stage.held_out_slices`` per *calibration* and *test* patient whose verdicts count (region-only
    entries are left out)."""
    from .corpus import corpus_sources, entry_sources

    train = corpus_sources([e for e in entries if e.role == "train"], root,
                           slices_per_volume=stage.slices_per_volume)
    train += head_phantom_sources(stage.head_phantoms, stage.phantom_size, seed)
    kept = [e for e in entries if e.role != "train" and e.details.get("verdicts", True)]
    corpus_sources(kept, root, slices_per_volume=1)  # one clear error when files are missing
    held = [s for e in kept for s in entry_sources(e, root, min(stage.held_out_slices, e.slices_used))]
    return train, held


def run_absolute_recipe(output: Path | str, name: str = "absolute", seed: int = 0, device: str = "auto",
                        progress=None, manifest: Optional[Path | str] = None, base_weights: Optional[Path | str] = None,
                        corpus_root: Optional[Path | str] = None,
                        sources: Optional[Sequence[Path | str]] = None) -> Path:
    """The shipped model: teachers and student fine-tuned from ``base_weights`` (the SSIM-label model) onto the
    absolute label, routine references refitted, held-out tables stored. With ``sources`` (folders of a site's own
    full-dose scans) the same on those scans instead of the corpus, starting from the shipped model (site
    adaptation). Resumes."""
    from .corpus import corpus_sources, sha256_of
    from .datasets import image_records, preprocess_absolute

    stage = ABSOLUTE_STAGES[name]
    output = Path(output)
    started = time.monotonic()
    purpose = "site" if sources else "release" if name == "absolute" else "test"
    entries, root, manifest, base_weights = _patients_and_base(output, stage.base, seed, device, progress, manifest,
                                                               sources, base_weights, corpus_root,
                                                               release=purpose == "release")
    data = output / "data"
    if not (data / "dataset.json").is_file():
        train, held = absolute_sources(entries, root, stage, seed)
        preprocess_absolute(train + held, data, stage.doses, stage.artefacts, sorted({s.patient for s in held}),
                            seed, stage.every, progress, device=simulation_device(device))
    split, predictions, roles = _train_and_predict(output, stage, purpose, entries, base_weights, seed, device,
                                                   progress)
    records = image_records(data)
    model, info = predictions[0].model, predictions[0].info
    references = corpus_sources(entries, root, roles=("train", "calibration"),
                                slices_per_volume=stage.slices_per_volume)
    apply_regional_reference(info, regional_noise_reference(references, read_info(base_weights).noise_reference))
    info.dose_calibration = None
    kinds = np.array([records.get(p, {}).get("kind", "dose") for p in split.paths])
    fit = (roles == ("calibration" if (roles == "calibration").any() else "test")) & (kinds == "dose")
    info.artefact_margin = fit_artefact_margin(split, predictions[0].scores, fit)
    held_out_tables = {}
    for role in ("calibration", "test"):
        for label, mask in (("all", roles == role), ("dose", (roles == role) & (kinds == "dose")),
                            ("artefacts", (roles == role) & (kinds != "dose"))):
            if mask.sum() > 2:
                held_out_tables.setdefault(role, {})[label] = _held_out_table(predictions, split, mask)
    info.provenance.update(
        recipe=name, seed=seed, purpose=purpose, recipe_parameters=json.loads(json.dumps(asdict(stage))),
        base_weights={"file": base_weights.name, "sha256": sha256_of(base_weights)},
        corpus=[{"id": e.id, "patient": e.patient, "role": e.role, "anatomy": e.anatomy} for e in entries],
        manifest_sha256=sha256_of(manifest) if manifest else None,
        label="log effective noise (HU); see the model card",
        images={"train": len(load_split(data, "train")), "held_out": len(split),
                "simulated_kinds": sorted({r["kind"] for r in records.values()})},
        held_out_real=held_out_tables, wall_time_s=round(time.monotonic() - started, 1))
    final = output / "distiliqa_student.safetensors"
    save_weights(final, model, info, half=True)
    return final


#: The share of held-out dose images (no artefacts) whose network noise may exceed the measured noise by more than the
#: artefact margin: the margin is their 95th percentile, so about 1 clean slice in 20 reaches it.
ARTEFACT_MARGIN_QUANTILE = 0.95


def fit_artefact_margin(split, log_noise: np.ndarray, mask: np.ndarray) -> float:
    """How far the network's effective noise (``exp(log_noise)``) may exceed the measured noise index on images
    without artefacts: the :data:`ARTEFACT_MARGIN_QUANTILE` point of the ratio minus one over the ``mask`` images
    of ``split`` (at least 0.05); the default margin when fewer than 10 have a noise figure."""
    import torch

    from ..io.reading import read_volume
    from ..quality.interpretation import DEFAULT_ARTEFACT_MARGIN
    from ..quality.noise import global_noise_index

    ratios = []
    for n in np.flatnonzero(mask):
        volume = read_volume(split.root / split.paths[n], force=True)
        noise = float(global_noise_index(torch.from_numpy(np.asarray(volume.hu[:1], np.float32)),
                                         volume.spacing_mm[:2])[0])
        if np.isfinite(noise) and noise > 0:
            ratios.append(float(np.exp(log_noise[n])) / noise)
    if len(ratios) < 10:
        return DEFAULT_ARTEFACT_MARGIN
    return round(max(0.05, float(np.quantile(ratios, ARTEFACT_MARGIN_QUANTILE)) - 1.0), 4)

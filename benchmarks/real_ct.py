"""The shipped model on held-out real patients: accuracy against SSIM-to-full-dose and the verdicts a user sees.

    .venv/bin/python benchmarks/real_ct.py --run RUN [--weights W] [--role test] [--markdown]

``RUN`` is the output folder of ``python -m DistilIQALib recipe`` (stage 2, real CT): its held-out images are
real scans of patients the model never trained on, degraded relative to each scan's own noise (100%..5% dose)
and by sparse views. Test patients of the manifest that the run did not include are simulated the same way
and added. ``--role`` picks the corpus role (``test``: held out from everything; ``calibration``:
held out from training, used to fit the dose table and bands). ``--weights`` defaults to the run's result.

Printed, per source (corpus patient) and per anatomy, then for all:
1. PLCC, SROCC, KROCC and overall of the model, of the teacher ensemble and of the global noise index (GNI,
   entered as -GNI so every row is "higher = better"), against SSIM to the full-dose image; the same for the
   sparse-view images alone.
2. What the label allows: on the dose images, the same agreement for the simulated dose fraction itself (known
   to the simulation, not visible in the image), beside the model and -GNI on those images.
3. Verdicts: % of full-dose slices "good", % of 10% and 5% dose slices "inadequate", median dose-equivalent
   per simulated dose, and % of source slices whose score falls strictly at every lower dose.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from DistilIQALib.corpus import corpus_sources, load_manifest  # noqa: E402
from DistilIQALib.datasets import LabelledImages, image_records, load_split, preprocess_simulated  # noqa: E402
from DistilIQALib.device import resolve_device  # noqa: E402
from DistilIQALib.evaluation import predict_split  # noqa: E402
from DistilIQALib.interpretation import (  # noqa
    adequacy_labels,
    adequacy_measure,
    band_threshold,
    dose_equivalent,
    noise_dose_equivalent,
)
from DistilIQALib.metrics import agreement  # noqa: E402
from DistilIQALib.noise import global_noise_index, size_for_reference  # noqa: E402
from DistilIQALib.reading import read_volume  # noqa: E402
from DistilIQALib.weights import read_info  # noqa: E402


def noise_and_size(split, reference):
    """Global noise index (HU) and patient size (cm, the measure the noise reference was fitted on) of each image,
    as the scorer measures them."""
    noise, diameter = [], []
    for relative in split.paths:
        volume = read_volume(split.root / relative, force=True)
        hu = torch.from_numpy(np.asarray(volume.hu[:1], np.float32))
        noise.append(float(global_noise_index(hu, volume.spacing_mm[:2])[0]))
        diameter.append(float(size_for_reference(hu, volume.spacing_mm[:2], reference)[0]))
    return np.array(noise), np.array(diameter)


def thickness_of(entry) -> float:
    """The source scan's slice thickness (mm) as its manifest entry records it (else its slice spacing)."""
    series = (entry.details.get("series") or [{}])[0]
    for key in ("slice_thickness_mm", "slice_spacing_mm"):
        try:
            return float(str(series.get(key, "")).split("\\")[0])
        except ValueError:
            continue
    return float("nan")


def _metrics(values: np.ndarray, labels: np.ndarray) -> str:
    if len(values) < 3 or np.nanstd(values) == 0:
        return "      -      -      -       -"
    finite = np.isfinite(values)
    m = agreement(values[finite], labels[finite])
    return f" {m['PLCC']:6.3f} {m['SROCC']:6.3f} {m['KROCC']:6.3f} {m['overall']:7.3f}"


def verdicts(mask, kinds, values, bands, dose_eq, student, sources) -> str:
    dose = mask & (kinds == "dose")
    full = dose & (values == 1.0)
    low = dose & ((values == 0.1) | (values == 0.05))
    good = np.mean(bands[full] == "good") * 100 if full.any() else np.nan
    inadequate = np.mean(bands[low] == "inadequate") * 100 if low.any() else np.nan
    medians = []
    for level in (1.0, 0.5, 0.25, 0.1, 0.05):
        chosen = dose & (values == level)
        medians.append(np.median(dose_eq[chosen]) if chosen.any() else np.nan)
    monotone, series = 0, 0
    for source in sorted(set(sources[dose])):
        rows = dose & (sources == source)
        order = np.argsort(-values[rows])
        scores = student[rows][order]
        series += 1
        monotone += bool(np.all(np.diff(scores) < 0))
    medians_text = " ".join(f"{m:5.2f}" for m in medians)
    return (f" {good:6.1f} {inadequate:6.1f}  {medians_text}  {100 * monotone / max(series, 1):6.1f}"
            f" ({series})")


def extra_test_split(run: Path, manifest: Path, info, known_patients, folder: Path):
    """Test patients of the manifest that the run did not simulate (added after it), simulated now the way
    the recipe does (same doses and view counts, noise relative to each scan) into ``folder``."""
    entries = [e for e in load_manifest(manifest) if e.role == "test" and e.patient not in known_patients]
    if not entries:
        return None
    stage = info.provenance.get("recipe_parameters", {})
    sources = corpus_sources(entries, manifest.parent / "files")
    preprocess_simulated(sources, folder, tuple(stage.get("doses", (1.0, 0.5, 0.25, 0.1, 0.05))),
                         tuple(stage.get("sparse_views", (256, 128, 64))), [e.patient for e in entries], seed=7,
                         relative=True, sparse_every=stage.get("sparse_every", 3))
    return load_split(folder, "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--role", default="test", choices=["test", "calibration"])
    parser.add_argument("--manifest", type=Path, default=ROOT / "corpus" / "manifest.json",
                        help="corpus manifest: each patient's anatomy, and test patients added after the run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dump", type=Path, help="also write one CSV row per image (patient, kind, value, label, "
                        "model, ensemble, GNI) for further analysis")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = args.weights or args.run / "distiliqa_student.safetensors"
    info = read_info(weights)
    run_info = read_info(args.run / "distiliqa_student.safetensors")
    roles = {entry["patient"]: entry["role"] for entry in run_info.provenance.get("corpus", [])}
    split = load_split(args.run / "data", "test")
    keep = [n for n, patient in enumerate(split.patients) if roles.get(patient, "test") == args.role]
    splits = [(_subset(split, keep), image_records(args.run / "data"))]
    teachers = sorted((args.run / "run" / "teachers").glob("teacher_*.safetensors"))
    with tempfile.TemporaryDirectory() as folder:
        if args.role == "test" and args.manifest.is_file():
            extra = extra_test_split(args.run, args.manifest, run_info, set(roles), Path(folder))
            if extra is not None:
                splits.append((extra, image_records(folder)))
        columns = [_columns(part, records, weights, teachers, args.device) for part, records in splits]
    data = {key: np.concatenate([c[key] for c in columns]) for key in columns[0]}
    entries = load_manifest(args.manifest) if args.manifest.is_file() else []
    anatomy_of = {e.patient: e.anatomy for e in entries}
    thickness = {e.patient: thickness_of(e) for e in entries}
    data["anatomy"] = np.array([anatomy_of.get(p, a) for p, a in zip(data["patients"], data["anatomy"])])
    data["thickness"] = np.array([thickness.get(p, np.nan) for p in data["patients"]])
    report(weights, info, args.role, data)
    if args.dump:
        keys = ("patients", "anatomy", "sources", "kinds", "values", "labels", "student", "ensemble", "gni",
                "diameter", "thickness")
        with open(args.dump, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(keys)
            writer.writerows(zip(*(data[k] for k in keys)))


def _subset(split, keep):
    return LabelledImages(split.root, [split.paths[n] for n in keep], split.labels[keep],
                          [split.patients[n] for n in keep])


def _columns(split, records, weights, teachers, device):
    predictions = predict_split([weights, *teachers], split, resolve_device(device))
    noise, diameter = noise_and_size(split, read_info(weights).noise_reference)
    return {"student": predictions[0].scores, "ensemble": np.mean([p.scores for p in predictions[1:]], axis=0),
            "gni": noise, "diameter": diameter, "labels": split.labels,
            "kinds": np.array([records[p]["kind"] for p in split.paths]),
            "values": np.array([float(records[p]["value"]) for p in split.paths]),
            "anatomy": np.array([records[p]["anatomy"] or "-" for p in split.paths]),
            "sources": np.array([f"{pt}/{records[p]['source']}" for p, pt in zip(split.paths, split.patients)]),
            "patients": np.array(split.patients)}


def report(weights, info, role, data) -> None:
    student, ensemble, gni, labels = data["student"], data["ensemble"], data["gni"], data["labels"]
    kinds, values, anatomy, sources, patients = (data[k] for k in ("kinds", "values", "anatomy", "sources",
                                                                   "patients"))
    if info.noise_reference:  # as SliceScores does: noise, size and the source scan's thickness
        dose_eq = noise_dose_equivalent(gni, data["thickness"], data["diameter"], info.noise_reference)
    else:
        dose_eq = dose_equivalent(student, info.dose_calibration)
    on_dose = adequacy_measure(info.adequacy) == "dose_equivalent"
    bands = np.array(adequacy_labels(dose_eq if on_dose else student, info.adequacy))
    groups = [(f"patient {p}", patients == p) for p in sorted(set(patients))]
    groups += [(f"anatomy {a}", anatomy == a) for a in sorted(set(anatomy))]
    groups += [("all", np.ones(len(labels), dtype=bool))]
    print(f"weights {weights} ({role} patients: {len(set(patients))}, images: {len(labels)})")
    print("\nAgreement with SSIM to the full dose (PLCC SROCC KROCC overall)")
    print(f"{'group':<44} {'n':>4} | {'model':^29} | {'teacher ensemble':^29} | {'-GNI':^29}")
    for name, mask in groups:
        print(f"{name:<44} {mask.sum():4d} |{_metrics(student[mask], labels[mask])} |"
              f"{_metrics(ensemble[mask], labels[mask])} |{_metrics(-gni[mask], labels[mask])}")
    sparse = kinds == "views"
    print(f"{'sparse-view images, all':<44} {sparse.sum():4d} |{_metrics(student[sparse], labels[sparse])} |"
          f"{_metrics(ensemble[sparse], labels[sparse])} |{_metrics(-gni[sparse], labels[sparse])}")
    dose = kinds == "dose"
    print("\nWhat the label allows (dose images only): the same agreement for the simulated dose fraction itself, which"
          "\nno model of the image alone can know (a scan's own full dose sets the label's scale), against the model"
          "\nand -GNI on these images")
    print(f"{'group':<44} {'n':>4} | {'model':^29} | {'-GNI':^29} | {'simulated dose':^29}")
    for name, mask in groups:
        chosen = mask & dose
        print(f"{name:<44} {chosen.sum():4d} |{_metrics(student[chosen], labels[chosen])} |"
              f"{_metrics(-gni[chosen], labels[chosen])} |{_metrics(values[chosen], labels[chosen])}")
    print("\nVerdicts (model): % full-dose slices 'good', % of 10% and 5% dose slices 'inadequate', median "
          "dose-equivalent at 100/50/25/10/5% dose, % source slices monotone in dose (slices)")
    print(f"{'group':<44} {'good':>6} {'inadq':>6}  {'100%':>5} {'50%':>5} {'25%':>5} {'10%':>5} {'5%':>5}  "
          f"{'monot':>6}")
    for name, mask in groups:
        print(f"{name:<44}{verdicts(mask, kinds, values, bands, dose_eq, student, sources)}")
    by_dose = defaultdict(list)
    for n in np.flatnonzero(kinds == "dose"):
        by_dose[values[n]].append(student[n])
    print("\nMedian score per simulated dose: " + ", ".join(
        f"{level:g}: {np.median(by_dose[level]):.3f}" for level in sorted(by_dose, reverse=True)))
    print(f"adequacy bands on the {adequacy_measure(info.adequacy)}: "
          f"{[(b['name'], band_threshold(b)) for b in info.adequacy['bands']]}")


if __name__ == "__main__":
    main()

"""The shipped model on held-out real patients: accuracy against SSIM-to-full-dose and the verdicts a user sees.

    .venv/bin/python benchmarks/real_ct.py [--run RUN] [--weights W] [--role test] [--slices N]

Without ``--run`` only the per-region verdict tables are printed (see the end of this text); they need the
corpus files (``corpus/README.md``) and no training run.

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

A run of ``recipe --size absolute`` (the learned dose equivalent) prints instead, per region: pooled agreement
against the absolute label (the score, the network alone, the teacher ensemble, the physics estimate) on dose,
sparse-view, ring and motion images; within-scan agreement against SSIM to the scan's own full dose (the score, the
network, the ensemble, -GNI); the brain-window channel measured (the network with that channel's first-layer
weights set to zero); the verdicts (full dose good, 10/5% inadequate, sparse views not good, set by artefacts); the
score at each dose, monotonicity and one scale. ``--views-slices N`` adds N more slices per held-out patient at
every dose and from 256/128/64 views; ``--network-only`` skips the per-region verdict tables below.

Per body region (the verdicts rest on the routine level of each slice's region), from the corpus patients of
the role, each source slice degraded in the projection domain relative to its own noise at 100, 75, 50, 25, 10
and 5% dose (no network involved):
4. the region detected on every slice of every series of each patient (with the series' own z order);
5. per region and per patient: % of full-dose slices "good", % of 10% and 5% dose slices "inadequate", %
   "unknown", the median dose equivalent at each dose, and the share of slices whose dose equivalent at 75 / 50
   / 25% lies within x1.5 of that fraction of its own full-dose reading.
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

from DistilIQALib.io.reading import list_dicom_series, read_volume  # noqa: E402
from DistilIQALib.quality.device import resolve_device  # noqa: E402
from DistilIQALib.quality.interpretation import (  # noqa
    adequacy_labels,
    adequacy_measure,
    band_threshold,
    dose_equivalent,
    effective_noise,
    region_references,
    region_verdicts,
)
from DistilIQALib.quality.metrics import agreement  # noqa: E402
from DistilIQALib.quality.noise import global_noise_index, size_for_reference  # noqa: E402
from DistilIQALib.quality.regions import REGIONS, region_features, slice_labels, volume_regions  # noqa: E402
from DistilIQALib.quality.weights import read_info  # noqa: E402
from DistilIQALib.training.corpus import corpus_sources, load_manifest  # noqa: E402
from DistilIQALib.training.datasets import LabelledImages, image_records, load_split, preprocess_simulated  # noqa: E402
from DistilIQALib.training.evaluation import predict_split  # noqa: E402
from DistilIQALib.training.simulation import own_noise_simulator  # noqa: E402


def noise_and_size(split, reference):
    """Global noise index (HU), patient size (cm, the measure the noise reference was fitted on) and body region
    (read from the slice alone) of each image, as the scorer measures them."""
    noise, diameter, regions = [], [], []
    for relative in split.paths:
        volume = read_volume(split.root / relative, force=True)
        hu = torch.from_numpy(np.asarray(volume.hu[:1], np.float32))
        noise.append(float(global_noise_index(hu, volume.spacing_mm[:2])[0]))
        diameter.append(float(size_for_reference(hu, volume.spacing_mm[:2], reference)[0]))
        regions.append(slice_labels(region_features(hu, volume.spacing_mm[:2]))[0][0])
    return np.array(noise), np.array(diameter), regions


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


VERDICT_DOSES = (1.0, 0.75, 0.5, 0.25, 0.1, 0.05)


def _series_of(target: Path):
    """Every series (DICOM) or volume file under one corpus entry's path."""
    if target.is_file():
        return [(target, None)]
    found = [(Path(s["folder"]), s["uid"]) for s in list_dicom_series(target)]
    found += [(p, None) for p in sorted(target.rglob("*")) if p.name.endswith((".nrrd", ".nii.gz", ".nii", ".mha"))]
    return found


class NetworkNoise:
    """The effective noise (HU) a learned-dose-equivalent model sees in HU slices, as :class:`Scorer` computes it;
    ``None`` for other models, whose verdicts rest on the measured noise alone."""

    def __init__(self, weights, info):
        from DistilIQALib.quality.weights import load_weights

        self.model = load_weights(weights, "cpu")[0] if info.score.name == "effective_noise" else None
        self.info = info

    def __call__(self, hu: np.ndarray):
        if self.model is None:
            return None
        from DistilIQALib.quality.model import score_from_outputs
        from DistilIQALib.quality.preprocessing import prepare_batch

        hu = np.asarray(hu, dtype=np.float32).reshape(-1, *np.shape(hu)[-2:])
        out = []
        with torch.inference_mode():
            for start in range(0, len(hu), 4):
                batch = prepare_batch(hu[start:start + 4], self.info.window, self.info.input_size,
                                      extra_windows=self.info.extra_windows)
                out.append(np.exp(score_from_outputs(self.model(batch)).numpy().astype(np.float64)))
        return np.concatenate(out)


def region_detection(entries, root: Path, info, network: NetworkNoise) -> dict:
    """Slices per detected region of every series of each patient, in the series' own z order, and the verdicts
    of every slice at the scan's own (full) dose (with a learned dose equivalent: as the user sees them, the
    worse of noise and network). Returns what the held-out tables need: per routine head series the 25th and 75th
    percentile of its head slices' dose equivalent along z, and per series whose headers give an SSDE whether
    "above routine" (the verdict's, and the noise's alone) agrees with SSDE against the region's reference."""
    from DistilIQALib.dose.series import volume_dose
    from DistilIQALib.quality.interpretation import reference_ssde_mgy
    from DistilIQALib.quality.noise import noise_equivalent_diameter_cm

    references = region_references(info.noise_reference, info.adequacy)
    found_tables = {"head_spread": [], "above": [], "ctdivol_series": []}
    print("\nBody region detected on every slice (series read head first; h head, n neck, c chest, a abdomen, "
          "u unknown), and the verdicts of every slice at the scan's own dose")
    for entry in entries:
        for path, uid in _series_of(root / entry.path):
            volume = read_volume(path, series_uid=uid, force=True)
            found = volume_regions(volume)
            regions = found.region
            hu = torch.from_numpy(np.ascontiguousarray(volume.hu, dtype=np.float32))
            noise = global_noise_index(hu, volume.spacing_mm[:2]).numpy()
            size = noise_equivalent_diameter_cm(hu, volume.spacing_mm[:2]).numpy()
            judged = entry.details.get("verdicts", True)  # a region-only entry: no verdicts, no network needed
            dose = volume_dose(volume)
            ssde = dose.verdict_ssde()
            truncated = bool(dose.series.get("dw_truncated"))
            thickness = volume.metadata.get("slice_thickness_per_slice_mm") or volume.slice_thickness_mm
            kernel, manufacturer = volume.metadata.get("kernel", ""), volume.metadata.get("manufacturer", "")
            description = volume.metadata.get("series_description", "")
            learned_noise = network(volume.hu) if judged else None
            verdicts = region_verdicts(noise, thickness, size, regions, found.reason, references, learned_noise,
                                       info.artefact_margin, kernel, manufacturer, ssde, truncated, description,
                                       volume.z_mm())
            bands = {b: verdicts.adequacy.count(b) for b in ("good", "borderline", "inadequate", "unknown")
                     if b in verdicts.adequacy}
            order = np.argsort(-volume.z_mm(), kind="stable")
            counts = {r: regions.count(r) for r in sorted(set(regions))}
            head = f" head {100 * counts.get('head', 0) / len(regions):.1f}%" if entry.anatomy == "head" else ""
            strip = "".join(regions[n][0] for n in order)
            print(f"  {entry.patient:<32} {entry.anatomy:<24} {len(regions):4d} slices {counts}{head}")
            print(f"      {strip if len(strip) <= 110 else strip[:110] + '...'}")
            if judged:
                good = 100 * bands.get("good", 0) / len(regions)
                above = 100 * float(np.mean(verdicts.above_routine))
                learned = ""
                if verdicts.learned_dose_equivalent is not None:
                    learned = (f", median score {np.nanmedian(verdicts.learned_dose_equivalent):.2f}, set by "
                               f"artefacts {verdicts.driver.count('artefacts')}")
                print(f"      at its own dose: {bands} ({good:.1f}% good, {above:.1f}% above routine, median dose "
                      f"equivalent {np.nanmedian(verdicts.dose_equivalent):.2f}{learned})")
                seen = verdicts.dose_equivalent if verdicts.learned_dose_equivalent is None else \
                    verdicts.learned_dose_equivalent
                heads = np.array([r == "head" for r in regions]) & np.isfinite(seen)
                if entry.anatomy == "head" and heads.sum() >= 4:
                    low, high = np.percentile(seen[heads], [25, 75])
                    found_tables["head_spread"].append((entry.patient, int(heads.sum()), float(low), float(high)))
                if any(d is not None for d in dose.ctdivol_mgy):
                    found_tables["ctdivol_series"].append((entry.patient, dose.series.get("ctdivol_mgy"),
                                                           dose.series.get("ctdi_phantom"), dose.series.get("ssde_mgy"),
                                                           dose.series.get("dose_note")))
                main = max(set(regions), key=regions.count)
                reference = reference_ssde_mgy(main)
                if reference is not None and ssde is not None and not truncated:
                    truth = float(np.nanmedian(ssde)) > reference
                    noise_only = region_verdicts(noise, thickness, size, regions, found.reason, references,
                                                 learned_noise, info.artefact_margin, kernel, manufacturer,
                                                 series_description=description, z_mm=volume.z_mm())
                    chosen = np.array([r == main for r in regions])
                    found_tables["above"].append((entry.patient, main, truth,
                                                  bool(verdicts.above_routine[chosen].mean() > 0.5),
                                                  bool(noise_only.above_routine[chosen].mean() > 0.5)))
    return found_tables


def held_out_tables(rows, found_tables, info) -> None:
    """The held-out tables of the verdict issue, per region: full-dose good, 10% and 5% inadequate, the bands
    (borderline non-empty), the routine heads' spread along z, and "above routine" against SSDE where known."""
    from DistilIQALib.quality.interpretation import reference_ssde_mgy

    references = region_references(info.noise_reference, info.adequacy)
    print("\nHeld-out tables per region (targets: full dose good >= 95%, 10% and 5% inadequate >= 95%, borderline "
          "non-empty; each slice at its own full dose and at 10% and 5% of it, noise relative to its own)")
    header = "bands: inadequate < x <= borderline < y <= good"
    print("  good: % of full-dose slices with a soft-tissue verdict that are good (never inadequate: the count); "
          "inadq: % of 10% and 5% slices with a verdict that are inadequate; <=10%: the same of those at most a tenth "
          "of a routine dose (d x the scan's own full-dose reading); unknown: full-dose slices without a verdict")
    print(f"  {'region':<8} {'slices':>6} {'good':>6} {'inadq.':>6} {'inadq':>6} {'<=10%':>6} {'unkn':>5}  "
          f"{header:<48} {'basis':<10} {'ref SSDE':>8}")
    for region in REGIONS:
        chosen = [r for r in rows if r[1] == region]
        full = [r for r in chosen if r[3] == 1.0]
        judged = [r for r in full if r[5] != "unknown"]
        low = [r for r in chosen if r[3] in (0.1, 0.05) and r[5] != "unknown"]
        reading = {r[2]: r[4] for r in full}
        tenth = [r for r in low if np.isfinite(reading.get(r[2], np.nan)) and reading[r[2]] < 4.0
                 and r[3] * reading[r[2]] <= 0.1]
        good = 100 * np.mean([r[5] == "good" for r in judged]) if judged else float("nan")
        full_inadequate = sum(r[5] == "inadequate" for r in judged)
        inadequate = 100 * np.mean([r[5] == "inadequate" for r in low]) if low else float("nan")
        routine = 100 * np.mean([r[5] == "inadequate" for r in tenth]) if tenth else float("nan")
        reference = references.get(region) or {}
        bands = {b["name"]: b.get("min_value") for b in reference.get("bands", [])}
        good_from, borderline_from = bands.get("good"), bands.get("borderline")
        interval = (f"x = {borderline_from:.2f}, y = {good_from:.2f} (borderline "
                    f"{'non-empty' if good_from > borderline_from else 'EMPTY'})" if good_from is not None else "-")
        ssde = reference_ssde_mgy(region)
        print(f"  {region:<8} {len(judged):6d} {good:6.1f} {full_inadequate:6d} {inadequate:6.1f} {routine:6.1f} "
              f"{len(full) - len(judged):5d}  {interval:<48} {reference.get('basis', '-'):<10} "
              f"{ssde if ssde is not None else float('nan'):8.1f}")
    print("\nRoutine heads along z (target: the 75th percentile of the head slices' dose equivalent at most 1.5 times "
          "the 25th)")
    for patient, count, low, high in found_tables["head_spread"]:
        print(f"  {patient:<32} {count:4d} head slices  P25 {low:.2f}  P75 {high:.2f}  P75/P25 {high / low:.2f}"
              f" {'met' if high <= 1.5 * low else 'NOT met'}")
    if not found_tables["head_spread"]:
        print("  no routine head series with 4 or more head slices with a verdict")
    print("\n\"Above routine\" against SSDE vs the region's reference, series whose headers give CTDIvol and phantom "
          "(target: agreement >= 90%)")
    for patient, ctdivol, phantom, ssde, note in found_tables["ctdivol_series"]:
        print(f"  {patient:<32} CTDIvol {ctdivol if ctdivol is not None else float('nan'):.2f} mGy, phantom "
              f"{phantom or 'not stated'}, SSDE {f'{ssde:.2f} mGy' if ssde is not None else 'none'}"
              f"{' (' + note + ')' if note else ''}")
    above = found_tables["above"]
    if above:
        verdict = 100 * np.mean([truth == said for _, _, truth, said, _ in above])
        noise = 100 * np.mean([truth == said for _, _, truth, _, said in above])
        print(f"  {len(above)} series with an SSDE: the verdict agrees on {verdict:.0f}%, the noise alone on "
              f"{noise:.0f}%")
    else:
        print("  no held-out series has an SSDE (CTDIvol with its phantom and an uncut body): agreement not measurable")


def simulated_verdicts(entries, root: Path, info, slices: int, network: NetworkNoise, seed: int = 11):
    """Rows (patient, region, dose, dose equivalent, band, above routine, note) of each source slice of each
    entry at :data:`VERDICT_DOSES`, noise relative to the slice's own. With a learned dose equivalent the dose
    equivalent is the score and the band its band, as the user sees them."""
    from DistilIQALib.quality.noise import noise_equivalent_diameter_cm, slice_noise_index
    from DistilIQALib.training.corpus import entry_sources

    references = region_references(info.noise_reference, info.adequacy)
    rows = []
    for entry in entries:
        series = (entry.details.get("series") or [{}])[0]
        kernel, manufacturer = str(series.get("kernel", "")), str(series.get("manufacturer", ""))
        description = str(series.get("series", ""))
        for n, source in enumerate(entry_sources(entry, root, min(slices, entry.slices_used))):
            hu = source.hu.astype(np.float32)
            simulator = own_noise_simulator(hu, source.pixel_mm, seed * 1000 + n)
            if simulator is None:
                continue
            for dose in VERDICT_DOSES:
                image = simulator.at_dose(dose) if dose < 1.0 else hu
                tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
                noise = slice_noise_index(image, source.pixel_mm)
                size = float(noise_equivalent_diameter_cm(tensor, (source.pixel_mm, source.pixel_mm))[0])
                # judged within its series: a short end of a chest or abdominal scan against its exam's region
                region = source.judged_region or source.region or "unknown"
                found = region_verdicts([noise], source.thickness_mm, [size], [region], [""],
                                        references, network(image), info.artefact_margin, kernel, manufacturer,
                                        series_description=description)
                value = found.dose_equivalent if found.learned_dose_equivalent is None else \
                    found.learned_dose_equivalent
                rows.append((entry.patient, region, f"{source.name}", dose, float(value[0]),
                             found.adequacy[0], bool(found.above_routine[0]), found.note[0]))
    return rows


def _median(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def verdict_table(rows) -> None:
    """Per region, then per patient: the verdict targets of the body-region issue."""
    def line(name, chosen):
        by = defaultdict(list)
        for _patient, _region, source, dose, value, band, above, _note in chosen:
            by[dose].append((source, value, band, above))
        full = by.get(1.0, [])
        low = by.get(0.1, []) + by.get(0.05, [])
        reading = {source: value for source, value, _, _ in full}
        # at most a tenth of a routine dose: the simulated fraction times the scan's own full-dose reading
        tenth = [b for d in (0.1, 0.05) for source, _, b, _ in by.get(d, [])
                 if np.isfinite(reading.get(source, np.nan)) and reading[source] < 4.0 and d * reading[source] <= 0.1]
        good = 100 * np.mean([b == "good" for _, _, b, _ in full]) if full else np.nan
        inadequate = 100 * np.mean([b == "inadequate" for _, _, b, _ in low]) if low else np.nan
        unknown = 100 * np.mean([b == "unknown" for _, _, b, _ in full]) if full else np.nan
        above = 100 * np.mean([a for *_, a in full]) if full else np.nan
        medians = " ".join(f"{_median([v for _, v, _, _ in by.get(d, [])]):5.2f}" for d in VERDICT_DOSES)
        reference = {s: v for s, v, _, _ in full}
        within = []
        for d in (0.75, 0.5, 0.25):
            ratios = [v / reference[s] for s, v, _, _ in by.get(d, []) if np.isfinite(v) and
                      np.isfinite(reference.get(s, np.nan)) and reference[s] < 4.0]
            within.append(100 * np.mean([d / 1.5 <= r <= d * 1.5 for r in ratios]) if ratios else np.nan)
        routine = 100 * np.mean([b == "inadequate" for b in tenth]) if tenth else np.nan
        print(f"  {name:<34} {len(full):4d} {good:6.1f} {inadequate:6.1f} {routine:6.1f} {unknown:6.1f} {above:6.1f}  "
              f"{medians}  " + " ".join(f"{w:5.1f}" for w in within))

    print("\nVerdicts per body region (each slice at 100/75/50/25/10/5% of its own dose): slices, % full dose "
          "'good', % 10% and 5% 'inadequate', % of those at most a tenth of a routine dose (d x the full-dose "
          "reading) 'inadequate', % full dose 'unknown', % full dose above routine, median dose "
          "equivalent at each dose, % within x1.5 of d x its full-dose reading at 75/50/25% (full-dose readings "
          "under the 4x cap)")
    print(f"  {'group':<34} {'n':>4} {'good':>6} {'inadq':>6} {'<=10%':>6} {'unkn':>6} {'above':>6}  "
          + " ".join(f"{d:5g}" for d in VERDICT_DOSES) + "  " + " ".join(f"{d:5g}" for d in (0.75, 0.5, 0.25)))
    for region in REGIONS + ("unknown",):
        chosen = [r for r in rows if r[1] == region]
        if chosen:
            line(f"region {region}", chosen)
    for patient in sorted({r[0] for r in rows}):
        chosen = [r for r in rows if r[0] == patient]
        regions = sorted({r[1] for r in chosen})
        for region in regions:
            line(f"{patient} ({region})", [r for r in chosen if r[1] == region])
    line("all", rows)
    notes = defaultdict(int)
    for row in rows:
        if row[5] == "unknown":
            notes[row[7]] += 1
    for note, count in sorted(notes.items(), key=lambda item: -item[1]):
        print(f"  unknown x{count}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a stage-2 recipe run: adds the agreement tables of its images")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--role", default="test", choices=["test", "calibration"])
    parser.add_argument("--manifest", type=Path, default=ROOT / "corpus" / "manifest.json",
                        help="corpus manifest: each patient's anatomy, and test patients added after the run")
    parser.add_argument("--slices", type=int, default=12, help="source slices per patient for the verdict tables")
    parser.add_argument("--views-slices", type=int, default=6,
                        help="with a run of the learned dose equivalent: simulate this many more slices per held-out "
                        "patient at every dose and from 256/128/64 views (0: the run's images only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dump", type=Path, help="also write one CSV row per image (patient, kind, value, label, "
                        "model, ensemble, GNI; with a learned dose equivalent's run every column its tables use) for "
                        "further analysis")
    parser.add_argument("--fit-sizes", action="store_true",
                        help="only print the median Dw per region of the fit split (the reference SSDEs' sizes)")
    parser.add_argument("--network-only", action="store_true",
                        help="with --run: only the network's tables (not the per-region verdicts of the physics)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        agreement_tables(args)
        if args.network_only:
            return
    weights = args.weights or (args.run / "distiliqa_student.safetensors" if args.run else None)
    from DistilIQALib.quality.weights import resolve_weights

    weights = resolve_weights(weights)
    info = read_info(weights)
    entries = [e for e in load_manifest(args.manifest) if e.role == args.role]
    root = args.manifest.parent / "files"
    print(f"\nweights {weights}; {args.role} patients of {args.manifest}")
    if args.fit_sizes:  # sizes only: no network
        fit_sizes(load_manifest(args.manifest), root)
        return
    network = NetworkNoise(weights, info)
    found_tables = region_detection(entries, root, info, network)
    rows = simulated_verdicts([e for e in entries if e.details.get("verdicts", True)], root, info, args.slices,
                              network)
    verdict_table(rows)
    held_out_tables(rows, found_tables, info)


def fit_sizes(entries, root: Path) -> None:
    """The median AAPM Report 220 Dw per region of the fit split's real patients (training and calibration roles;
    each patient's median over its slices whose body is within the field of view): the sizes at which the regions'
    national DRLs become reference SSDEs (``REFERENCE_DW_CM``)."""
    from DistilIQALib.dose.series import slice_water_diameters

    per_region = defaultdict(list)
    for entry in entries:
        if entry.role not in ("train", "calibration") or not entry.details.get("verdicts", True):
            continue
        for path, uid in _series_of(root / entry.path):
            try:
                volume = read_volume(path, series_uid=uid, force=True)
            except Exception as error:  # a series the reader refuses is left out, and said
                print(f"  {entry.patient}: not read ({error})")
                continue
            regions = volume_regions(volume).region
            sizes = defaultdict(list)
            for region, (dw, truncated) in zip(regions, slice_water_diameters(volume)):
                if dw is not None and not truncated:
                    sizes[region].append(dw)
            for region, values in sizes.items():
                print(f"  {entry.patient:<32} {region:<8} {len(values):4d} slices, median Dw "
                      f"{np.median(values):.1f} cm")
                per_region[region].append(float(np.median(values)))
    for region, values in sorted(per_region.items()):
        print(f"region {region}: {len(values)} patient series, median Dw {np.median(values):.1f} cm")


def agreement_tables(args) -> None:
    weights = args.weights or args.run / "distiliqa_student.safetensors"
    info = read_info(weights)
    run_info = read_info(args.run / "distiliqa_student.safetensors")
    if run_info.score.name == "effective_noise":
        absolute_tables(args, weights, info, run_info)
        return
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
    noise, diameter, regions = noise_and_size(split, read_info(weights).noise_reference)
    return {"student": predictions[0].scores, "ensemble": np.mean([p.scores for p in predictions[1:]], axis=0),
            "gni": noise, "diameter": diameter, "labels": split.labels, "regions": np.array(regions),
            "kinds": np.array([records[p]["kind"] for p in split.paths]),
            "values": np.array([float(records[p]["value"]) for p in split.paths]),
            "anatomy": np.array([records[p]["anatomy"] or "-" for p in split.paths]),
            "sources": np.array([f"{pt}/{records[p]['source']}" for p, pt in zip(split.paths, split.patients)]),
            "patients": np.array(split.patients)}


def report(weights, info, role, data) -> None:
    student, ensemble, gni, labels = data["student"], data["ensemble"], data["gni"], data["labels"]
    kinds, values, anatomy, sources, patients = (data[k] for k in ("kinds", "values", "anatomy", "sources",
                                                                   "patients"))
    on_dose = adequacy_measure(info.adequacy) == "dose_equivalent"
    if info.noise_reference and on_dose:  # as SliceScores does: noise, size, region and the scan's thickness
        found = region_verdicts(gni, data["thickness"], data["diameter"], list(data["regions"]),
                                [""] * len(gni), region_references(info.noise_reference, info.adequacy))
        dose_eq, bands = found.dose_equivalent, np.array(found.adequacy)
    else:
        dose_eq = dose_equivalent(student, info.dose_calibration)
        bands = np.array(adequacy_labels(student, info.adequacy))
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


# --- the learned dose equivalent (a run of ``recipe --size absolute``) ------------------------------------------------

def sparse_view_split(args, run_info, folder: Path):
    """More sparse views for the tables: ``args.views_slices`` slices of each held-out patient of ``args.role``
    (other slices than the run's, a different seed), each at the run's doses and from 256, 128 and 64 views,
    labelled as the run labels (``preprocess_absolute``)."""
    from DistilIQALib.training.corpus import entry_sources
    from DistilIQALib.training.datasets import preprocess_absolute

    entries = [e for e in load_manifest(args.manifest) if e.role == args.role and e.details.get("verdicts", True)]
    stage = run_info.provenance.get("recipe_parameters", {})
    sources = []
    for entry in entries:
        picked = entry_sources(entry, args.manifest.parent / "files", min(args.views_slices + 1, entry.slices_used))
        for source in picked[1:] if len(picked) > 1 else picked:  # not the run's first slice
            source.name = "more_" + source.name  # its own name beside the run's images
            sources.append(source)
    preprocess_absolute(sources, folder, tuple(stage.get("doses", (1.0, 0.5, 0.25, 0.1, 0.05))),
                        {"views": (256, 128, 64)}, [e.patient for e in entries], seed=7, every=1)
    return load_split(folder, "test"), image_records(folder)


def absolute_columns(args, weights, run_info, split=None, records=None):
    """Per held-out image of the run (of ``args.role``; or of ``split``): the log effective noise of the model and
    of the teacher ensemble, the image's noise index, and what the run recorded (patient, source, region, kind,
    level, equivalent dose, SSIM to the source, source noise, thickness and size)."""
    if split is None:
        roles = {entry["patient"]: entry["role"] for entry in run_info.provenance.get("corpus", [])}
        split = load_split(args.run / "data", "test")
        keep = [n for n, patient in enumerate(split.patients) if roles.get(patient, "test") == args.role]
        split = _subset(split, keep)
        records = image_records(args.run / "data")
    teachers = sorted((args.run / "run" / "teachers").glob("teacher_*.safetensors"))
    predictions = predict_split([weights, *teachers], split, resolve_device(args.device))
    noise = []
    for relative in split.paths:
        volume = read_volume(split.root / relative, force=True)
        noise.append(float(global_noise_index(torch.from_numpy(np.asarray(volume.hu[:1], np.float32)),
                                              volume.spacing_mm[:2])[0]))
    column = {key: np.array([records[p][key] for p in split.paths]) for key in
              ("region", "kind", "value", "equivalent_dose", "ssim", "source_noise_hu", "thickness_mm", "diameter_cm")}
    silent = None
    if predictions[0].info.architecture.input_channels > 1:
        # the brain channel measured: the same network with that channel's first-layer weights set to zero
        from DistilIQALib.training.datasets import load_images
        from DistilIQALib.training.training import predict

        model = predictions[0].model
        with torch.no_grad():
            model.stem.blocks[0][0].weight[:, 1:] = 0.0
        info = predictions[0].info
        images = load_images(split, info.input_size, extra_windows=info.extra_windows)
        silent = predict(model, images, resolve_device(args.device)).mean(axis=1)
    column.update(student=predictions[0].scores, ensemble=np.mean([p.scores for p in predictions[1:]], axis=0),
                  no_brain=silent if silent is not None else np.full(len(split), np.nan),
                  label=split.labels, gni=np.array(noise), patient=np.array(split.patients),
                  source=np.array([f"{pt}/{records[p]['source']}" for p, pt in zip(split.paths, split.patients)]))
    return column


def _all_columns(args, weights, run_info):
    """The run's held-out images, plus :func:`sparse_view_split`'s when ``args.views_slices``."""
    column = absolute_columns(args, weights, run_info)
    if args.views_slices:
        with tempfile.TemporaryDirectory() as folder:
            split, records = sparse_view_split(args, run_info, Path(folder))
            more = absolute_columns(args, weights, run_info, split, records)
        column = {key: np.concatenate([column[key], more[key]]) for key in column}
    return column


def _log_dose(log_noise, column, references):
    """Unclipped log dose equivalent of a log noise through each image's region reference (NaN without one)."""
    out = np.full(len(log_noise), np.nan)
    for n, region in enumerate(column["region"]):
        reference = references.get(str(region))
        if reference is None:
            continue
        log_reference = float(reference["intercept"]) + float(reference["per_cm"]) * float(column["diameter_cm"][n])
        out[n] = log_reference - 2.0 * log_noise[n] - np.log(float(column["thickness_mm"][n]))
    return out


def _overall(values, labels) -> float:
    finite = np.isfinite(values) & np.isfinite(labels)
    if finite.sum() < 3 or np.std(values[finite]) == 0 or np.std(labels[finite]) == 0:
        return float("nan")
    return agreement(values[finite], labels[finite])["overall"]


def absolute_tables(args, weights, info, run_info) -> None:
    """The targets of the learned dose equivalent, per region: pooled and within-scan agreement, sparse-view
    verdicts, the score at each dose, monotonicity and one scale."""
    column = _all_columns(args, weights, run_info)
    if args.dump:
        with open(args.dump, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(column))
            writer.writerows(zip(*column.values()))
    references = region_references(info.noise_reference, info.adequacy)
    label = _log_dose(column["label"], column, references)
    gni = np.where(column["gni"] > 0, column["gni"], np.nan)

    def combined(log_noise):  # the shipped score: the network's noise where it sees clearly more than the index
        return _log_dose(np.log(effective_noise(gni, np.exp(log_noise), info.artefact_margin)), column, references)

    model = combined(column["student"])
    network = _log_dose(column["student"], column, references)
    no_brain = _log_dose(column["no_brain"], column, references)
    ensemble = combined(column["ensemble"])
    physics = _log_dose(np.log(gni), column, references)
    kind, value, region, patient = column["kind"], column["value"], column["region"], column["patient"]
    regions = [r for r in ("head", "neck", "chest", "abdomen") if (region == r).any()]
    groups = [(r, region == r) for r in regions] + [("all", np.isin(region, regions))]
    print(f"\nweights {weights}; {args.role} patients: {len(set(patient))}, images: {len(label)}")
    print("\nPooled across patients, against the absolute label (log dose equivalent: the source's noise over the "
          "square root of\nthe equivalent dose, through the region's routine reference): overall (PLCC+SROCC+KROCC) "
          "of the model (its score), the network alone,\nthe teacher ensemble (combined as the score is) and the "
          f"physics estimate (measured noise index); artefact margin {info.artefact_margin}")
    print(f"  {'region':<10} {'images':<14} {'n':>4} {'model':>7} {'network':>7} {'ensemble':>8} {'physics':>7}  "
          "model-physics")
    for name, mask in groups:
        for images, chosen in (("dose", kind == "dose"), ("sparse views", kind == "views"), ("rings", kind == "rings"),
                               ("motion", kind == "motion"), ("all", np.ones(len(kind), bool))):
            rows = mask & chosen
            if rows.sum() < 3:
                continue
            m, w, e, p = (_overall(v[rows], label[rows]) for v in (model, network, ensemble, physics))
            print(f"  {name:<10} {images:<14} {rows.sum():4d} {m:7.3f} {w:7.3f} {e:8.3f} {p:7.3f}  {m - p:+7.3f}")
    print("\nWithin each scan, against SSIM to its own full dose: mean over patients of the overall of the learned "
          "dose equivalent\n(model, ensemble) and of -GNI; 'sparse-view slices': the slices that have sparse views, "
          "their dose and sparse-view images")
    print(f"  {'region':<10} {'images':<18} {'scans':>5} {'model':>7} {'network':>7} {'ensemble':>8} {'-GNI':>7}  "
          "model-GNI")
    with_views = set(column["source"][kind == "views"])
    for name, mask in groups:
        for images, chosen in (("all", np.ones(len(kind), bool)),
                               ("sparse-view slices", np.isin(column["source"], list(with_views)) &
                                np.isin(kind, ["dose", "views"]))):
            scores = defaultdict(list)
            for person in sorted(set(patient[mask])):
                rows = mask & chosen & (patient == person)
                if rows.sum() < 4:
                    continue
                ssim = column["ssim"][rows]
                for key, values in (("model", model), ("network", network), ("ensemble", ensemble),
                                    ("gni", -column["gni"])):
                    scores[key].append(_overall(values[rows], ssim))
            if scores:
                m, w, e, g = (float(np.nanmean(scores[k])) for k in ("model", "network", "ensemble", "gni"))
                print(f"  {name:<10} {images:<18} {len(scores['model']):5d} {m:7.3f} {w:7.3f} {e:8.3f} {g:7.3f}  "
                      f"{m - g:+7.3f}")
    if np.isfinite(no_brain).any():
        print("\nThe brain-window channel: the network alone, and the same network with that channel's weights set "
              "to zero (overall)")
        print(f"  {'region':<10} {'images':<14} {'n':>4} {'pooled':>7} {'no brain':>8} | {'within':>7} {'no brain':>8}")
        for name, mask in groups:
            for images, chosen in (("dose", kind == "dose"), ("artefacts", kind != "dose")):
                rows = mask & chosen
                if rows.sum() < 3:
                    continue
                within = defaultdict(list)
                for person in sorted(set(patient[rows])):
                    own = rows & (patient == person)
                    if own.sum() >= 4:
                        within["with"].append(_overall(network[own], column["ssim"][own]))
                        within["without"].append(_overall(no_brain[own], column["ssim"][own]))
                print(f"  {name:<10} {images:<14} {rows.sum():4d} {_overall(network[rows], label[rows]):7.3f} "
                      f"{_overall(no_brain[rows], label[rows]):8.3f} | {np.nanmean(within['with'] or [np.nan]):7.3f} "
                      f"{np.nanmean(within['without'] or [np.nan]):8.3f}")
    found = region_verdicts(column["gni"], column["thickness_mm"], column["diameter_cm"], list(region),
                            [""] * len(region), references, np.exp(column["student"]), info.artefact_margin)
    bands = np.array(found.adequacy)
    drivers = np.array(found.driver)
    learned = found.learned_dose_equivalent
    print("\nVerdicts (the worse of noise and network): % 'good' at full dose, % 'inadequate' at 10% and 5%, % of "
          "sparse-view images\nnot 'good' (64 / 128 / 256 views), and % of those set by artefacts; rings and motion")
    print(f"  {'region':<10} {'full good':>9} {'10/5% inadq':>11} {'64 not good':>11} {'128':>6} {'256':>6} "
          f"{'by artefacts':>12} {'rings not good':>14} {'motion not good':>15}")
    for name, mask in groups:
        def share(rows, test):
            return 100.0 * np.mean(test[rows]) if rows.any() else float("nan")
        full = mask & (kind == "dose") & (value == 1.0)
        low = mask & (kind == "dose") & np.isin(value, [0.1, 0.05])
        views = {v: mask & (kind == "views") & (value == v) for v in (64, 128, 256)}
        not_good = bands != "good"
        print(f"  {name:<10} {share(full, bands == 'good'):9.1f} {share(low, bands == 'inadequate'):11.1f} "
              + " ".join(f"{share(views[v], not_good):{w}.1f}" for v, w in ((64, 11), (128, 6), (256, 6)))
              + f" {share(mask & (kind == 'views') & not_good, drivers == 'artefacts'):12.1f}"
              f" {share(mask & (kind == 'rings'), not_good):14.1f} {share(mask & (kind == 'motion'), not_good):15.1f}")
    print("\nThe score (learned dose equivalent) at each dose: median per region; % of source slices whose score falls "
          "at every\nlower dose (monotone); one scale: the medians at full dose across regions against a tenth of the "
          "gap full - 10%")
    levels = sorted({float(v) for v in value[kind == "dose"]}, reverse=True)
    print(f"  {'region':<10} " + " ".join(f"{lv:>6g}" for lv in levels) + f" {'monotone':>9}")
    medians_full, gaps = {}, []
    for name, mask in groups:
        medians = [np.nanmedian(learned[mask & (kind == "dose") & (value == lv)]) if (mask & (kind == "dose") &
                   (value == lv)).any() else np.nan for lv in levels]
        monotone, count = 0, 0
        for src in sorted(set(column["source"][mask & (kind == "dose")])):
            rows = mask & (kind == "dose") & (column["source"] == src)
            order = np.argsort(-value[rows])
            steps = np.diff(model[rows][order])
            if np.isfinite(steps).all():
                count += 1
                monotone += bool(np.all(steps < 0))
        print(f"  {name:<10} " + " ".join(f"{m:6.2f}" for m in medians)
              + f" {100.0 * monotone / max(count, 1):8.1f}% ({count})")
        if name != "all":
            medians_full[name] = medians[0]
            if 0.1 in levels:
                gaps.append(medians[0] - medians[levels.index(0.1)])
    if len(medians_full) > 1 and gaps:
        spread = max(medians_full.values()) - min(medians_full.values())
        log_spread = np.log10(max(medians_full.values()) / min(medians_full.values()))
        print(f"  full-dose medians {({k: round(float(v), 3) for k, v in medians_full.items()})}: spread {spread:.3f} "
              f"against a tenth of the smallest gap {0.1 * min(gaps):.3f} (linear); {log_spread:.3f} against 0.1 "
              "(log10: the gap is a factor 10)")


if __name__ == "__main__":
    main()

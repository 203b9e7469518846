"""The shipped model's goals, measured: held-out accuracy against the teacher ensemble and the global noise
index, monotonic scores on real anatomy as dose falls, and the time to score a 300-slice scan.

    .venv/bin/python benchmarks/model_quality.py --run RUN [--weights W] [--threads 2]

``RUN`` is the output folder of ``python -m DistilIQALib recipe`` (its held-out split and teachers); without
``--run`` only the real-anatomy and timing parts run. ``--weights`` defaults to the shipped model.

1. Held-out table: every model scores the same held-out images (sources never seen in training); the global
   noise index (GNI, higher = noisier) enters as -GNI, so that all rows are "higher = better".
2. Real anatomy: each real CT slice that pydicom / pydicom-data ship is simulated at 100%..5% dose through
   each reconstruction kernel with noise seeds the recipe never used; a series is monotone when every lower
   dose scores strictly lower.
3. A 300-slice 512x512 int16 scan scored end to end (windowing, resizing, model) on the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from DistilIQALib.quality.device import resolve_device  # noqa: E402
from DistilIQALib.quality.metrics import agreement  # noqa: E402
from DistilIQALib.quality.model import score_from_outputs  # noqa: E402
from DistilIQALib.quality.noise import global_noise_index  # noqa: E402
from DistilIQALib.quality.preprocessing import prepare_batch  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.quality.weights import load_weights, resolve_weights  # noqa: E402
from DistilIQALib.training.datasets import builtin_sources, load_split  # noqa: E402
from DistilIQALib.training.evaluation import predict_split  # noqa: E402
from DistilIQALib.training.recipe import dose_of  # noqa: E402
from DistilIQALib.training.simulation import DoseSimulator  # noqa: E402
from DistilIQALib.volume import CTVolume  # noqa: E402

DOSES = (1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05)
KERNELS = ("hann", "shepp-logan", "ramlak")
UNSEEN_SEED = 987_654


def _row(name: str, metrics: dict, correlation_only: bool = False) -> str:
    tail = "        -        -" if correlation_only else f" {metrics['MAE']:8.4f} {metrics['MSE']:8.5f}"
    return (f"  {name:<28} {metrics['PLCC']:6.3f} {metrics['SROCC']:6.3f} {metrics['KROCC']:6.3f} "
            f"{metrics['overall']:7.3f}{tail}")


def held_out_table(run: Path, weights: Path, device: torch.device) -> None:
    import SimpleITK as sitk

    split = load_split(run / "data", "test")
    teachers = sorted((run / "run" / "teachers").glob("teacher_*.safetensors"))
    predictions = predict_split([weights, *teachers], split, device)
    student, teacher_predictions = predictions[0], predictions[1:]
    ensemble = np.mean([p.scores for p in teacher_predictions], axis=0)
    gni = []
    for path in split.paths:
        image = sitk.ReadImage(str(run / "data" / path))
        hu = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))[None]
        gni.append(float(global_noise_index(hu, image.GetSpacing()[:2])[0]))
    gni = np.array(gni)
    labels = split.labels
    patients = sorted(set(split.patients))
    print(f"\n1. held-out images: {len(labels)} from {len(patients)} unseen patients ({', '.join(patients)}); "
          f"SSIM labels {labels.min():.3f}-{labels.max():.3f}")
    print(f"  {'model':<28} {'PLCC':>6} {'SROCC':>6} {'KROCC':>6} {'overall':>7} {'MAE':>8} {'MSE':>8}")
    rows = {"student (shipped)": agreement(student.scores, labels),
            f"teacher ensemble (mean of {len(teachers)})": agreement(ensemble, labels)}
    for n, p in enumerate(teacher_predictions):
        rows[f"teacher {n}"] = agreement(p.scores, labels)
    for name, metrics in rows.items():
        print(_row(name, metrics))
    known = np.isfinite(gni)  # GNI is undefined on a slice with too little soft tissue
    gni_metrics = agreement(-gni[known], labels[known])
    print(_row("global noise index (-GNI)", gni_metrics, correlation_only=True))
    if not known.all():
        print(f"  (GNI undefined on {int((~known).sum())} images; on the other {int(known.sum())} the student's "
              f"overall is {agreement(student.scores[known], labels[known])['overall']:.3f})")
    ratio = rows["student (shipped)"]["overall"] / list(rows.values())[1]["overall"]
    print(f"  student / ensemble overall: {ratio:.3f} (goal >= 0.97); student - GNI overall: "
          f"{rows['student (shipped)']['overall'] - gni_metrics['overall']:+.3f} (goal > 0)")
    doses = np.array([dose_of(p) or np.nan for p in split.paths])
    for kind, mask in (("dose images only", np.isfinite(doses)), ("sparse-view images only", ~np.isfinite(doses))):
        if mask.sum() > 2:
            student_overall = agreement(student.scores[mask], labels[mask])["overall"]
            print(f"  {kind} ({mask.sum()}): student overall {student_overall:.3f}, "
                  f"ensemble {agreement(ensemble[mask], labels[mask])['overall']:.3f}, "
                  f"-GNI {agreement(-gni[mask & known], labels[mask & known])['overall']:.3f}")


def real_anatomy(weights: Path, device: torch.device, held_out: set) -> None:
    model, info = load_weights(weights, device)
    print(f"\n2. real CT slices at {', '.join(f'{d:.0%}' for d in DOSES)} dose, kernels {', '.join(KERNELS)} "
          f"(noise seeds unseen in training)")
    monotone = total = 0
    for n, source in enumerate(s for s in builtin_sources(0) if s.patient.startswith("real_")):
        hu = source.hu.astype(np.float32)
        line = []
        for kernel in KERNELS:
            simulator = DoseSimulator(hu, source.pixel_mm, seed=UNSEEN_SEED + n, kernel=kernel)
            images = np.stack([simulator.at_dose(d) for d in DOSES])
            batch = prepare_batch(images, info.window, info.input_size, device, info.extra_windows)
            with torch.inference_mode():
                scores = score_from_outputs(model(batch).float()).cpu().numpy()
            ok = bool(np.all(np.diff(scores) < 0))
            monotone += ok
            total += 1
            line.append(f"{kernel}: {' '.join(f'{s:.3f}' for s in scores)} {'monotone' if ok else 'NOT monotone'}")
        tag = "" if not held_out else (" (held out)" if source.patient in held_out else
                                       " (in training, with other noise seeds)")
        print(f"  {source.patient}/{source.name} {hu.shape[0]}x{hu.shape[1]}{tag}")
        for text in line:
            print(f"    {text}")
    print(f"  monotone: {monotone}/{total} = {monotone / total:.0%} (goal 100%)")


def scan_time(weights: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 20.0, (300, 512, 512)).astype(np.int16)
    hu[:, :, :40] = -1000
    volume = CTVolume(hu, (0.7, 0.7, 1.0), source="300-slice test scan")
    scorer = Scorer(str(weights), device="cpu")
    scorer.score_volume(CTVolume(hu[:8], (0.7, 0.7, 1.0)))  # warm-up
    started = time.perf_counter()
    result = scorer.score_volume(volume)
    elapsed = time.perf_counter() - started
    print(f"\n3. 300-slice 512x512 scan on the CPU with {torch.get_num_threads()} threads: {elapsed:.1f} s "
          f"({1000 * elapsed / 300:.1f} ms per slice, goal < 30 s); {len(result.score)} scores")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="recipe output folder (held-out split and teachers)")
    parser.add_argument("--weights", help="student weights (default: the shipped model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the goal's 2 cores)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("table", "anatomy", "time"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = resolve_weights(args.weights)
    device = resolve_device(args.device)
    print(f"weights: {weights} ({weights.stat().st_size / 2**20:.1f} MiB); torch {torch.__version__}, {device}")
    held_out = set()
    if args.run and "table" not in args.skip:
        held_out = set(load_split(args.run / "data", "test").patients)
        held_out_table(args.run, weights, device)
    if "anatomy" not in args.skip:
        real_anatomy(weights, device, held_out)
    if "time" not in args.skip:
        scan_time(weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())

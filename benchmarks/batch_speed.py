"""Batch throughput on a generated archive: series per minute, slices per second, and the share of the
run spent writing the SQLite store (goal: under 5%), all from one run.

The model is an untrained ``fast`` network (timing does not depend on its values); the archive is
``--series`` phantom CT series of ``--slices`` 512x512 slices each.

    .venv/bin/python benchmarks/batch_speed.py [--series 8] [--slices 40] [--workers 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from DistilIQALib.archive import store as store_module  # noqa: E402
from DistilIQALib.archive.batch import run_batch  # noqa: E402
from DistilIQALib.io.dicom_writing import write_series  # noqa: E402
from DistilIQALib.quality.model import PRESETS, build_model  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.quality.weights import ModelInfo, save_weights  # noqa: E402
from DistilIQALib.training.phantoms import phantom_volume  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base = phantom_volume(args.slices, size=512, pixel_mm=0.7, seed=1)
        rng = np.random.default_rng(0)
        for n in range(args.series):
            noisy = base + rng.standard_normal(base.shape, dtype=np.float32) * (8 + 4 * n)
            write_series(noisy, folder / "archive" / f"s{n}", series_uid=f"1.2.826.0.1.3680043.8.498.777.{n + 1}")
        weights = save_weights(folder / "fast.safetensors", build_model(PRESETS["fast"], 5).eval(),
                               ModelInfo(preset="fast", architecture=PRESETS["fast"], num_outputs=5,
                                         provenance={"purpose": "test"}))
        scorer = Scorer(str(weights), device="cpu", batch_size=8)
        write_seconds = [0.0]
        original = store_module.ResultStore.write_series

        def timed_write(self, record, slices=()):
            started = time.perf_counter()
            original(self, record, slices)
            write_seconds[0] += time.perf_counter() - started

        store_module.ResultStore.write_series = timed_write
        summary = run_batch(folder / "archive", folder / "results.sqlite", scorer, workers=args.workers)
        store_module.ResultStore.write_series = original
    print(f"{summary.scored} series x {args.slices} slices (512x512), fast preset, {scorer.device_name}, "
          f"{args.workers} decoding thread(s)")
    print(f"total {summary.seconds:.1f} s: {60 * summary.scored / summary.seconds:.1f} series/min, "
          f"{summary.slices_per_second:.1f} slices/s")
    print(f"store writes {write_seconds[0]:.3f} s = {100 * write_seconds[0] / summary.seconds:.2f}% of the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())

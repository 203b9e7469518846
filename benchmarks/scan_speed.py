"""Header scanning throughput of ``batch`` (files/s) on a generated tree, threads against processes.

Writes ``--files`` small DICOM CT files (series of 20 slices of 32x32 pixels, in nested folders), then
groups them with :func:`DistilIQALib.archive.archive.scan_folder` once per configuration (``--workers`` 1, 2, 4;
``thread`` and ``process``) and prints the best of ``--repeats`` runs. Header parsing is Python code, so
threads share one core (the GIL); processes do not, but pay for their start and for sending results back.

    .venv/bin/python benchmarks/scan_speed.py [--files 2000] [--workers 1 2 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from DistilIQALib.archive.archive import scan_folder  # noqa: E402
from DistilIQALib.io.dicom_writing import write_series  # noqa: E402

SLICES_PER_SERIES = 20


def write_tree(root: Path, files: int) -> None:
    rng = np.random.default_rng(0)
    for n in range((files + SLICES_PER_SERIES - 1) // SLICES_PER_SERIES):
        count = min(SLICES_PER_SERIES, files - n * SLICES_PER_SERIES)
        hu = rng.normal(0, 20, (count, 32, 32)).astype(np.float32)
        write_series(hu, root / f"patient{n % 25:02d}" / f"study{n // 25}" / f"series{n:04d}",
                     series_uid=f"1.2.826.0.1.3680043.8.498.555.{n + 1}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "archive"
        write_tree(root, args.files)
        print(f"{args.files} files in {root.name}/ ({os.cpu_count()} CPU cores); best of {args.repeats} run(s)")
        print(f"{'workers':>7}  {'threads files/s':>15}  {'processes files/s':>17}")
        for workers in args.workers:
            rates = []
            for executor in ("thread", "process"):
                best = np.inf
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    scan = scan_folder(root, workers, executor=executor)
                    best = min(best, time.perf_counter() - started)
                grouped = sum(len(s.files) for s in scan.series.values()) + len(scan.duplicates)
                if grouped + len(scan.unreadable) != args.files:
                    raise SystemExit(f"{executor}: {grouped} files grouped, {len(scan.unreadable)} unreadable, "
                                     f"of {args.files}")
                rates.append(args.files / best)
            print(f"{workers:>7}  {rates[0]:>15.0f}  {rates[1]:>17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

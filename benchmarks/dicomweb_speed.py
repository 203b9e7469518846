"""Series per minute from a DICOMweb server on loopback (a real Orthanc) against the same series from a folder,
and what retrieval adds to scoring (goal: under 20% on the CPU), all from one run.

The same ``--series`` phantom CT series of ``--slices`` 512x512 slices are written to a folder and uploaded to
an Orthanc started for the run (Debian's orthanc and orthanc-dicomweb). Each of ``--repeats`` rounds runs, back
to back and in an order that rotates, ``batch`` on the folder, ``batch --dicomweb`` on the server (each into a
fresh store) and retrieval alone (QIDO-RS, then WADO-RS of every series into a folder, no scoring): the three
runs of a round see the same machine, so each round gives ratios, and the medians of the ratios are reported
(on a shared machine other jobs change the pace of whole runs several-fold), with the ratio of the fastest runs
beside them. Wall time and this process's CPU time (all its threads) are both measured. The model is an
untrained ``fast`` network (timing does not depend on its values) at the CPU's default batch size.

    .venv/bin/python benchmarks/dicomweb_speed.py [--series 2] [--slices 40] [--repeats 8] [--workers 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

from orthanc_server import ORTHANC, Orthanc  # noqa: E402

from DistilIQALib.archive.batch import run_batch  # noqa: E402
from DistilIQALib.archive.dicomweb import SeriesQuery, Server, ServerConfig, run_dicomweb  # noqa: E402
from DistilIQALib.io.dicom_writing import write_series  # noqa: E402
from DistilIQALib.quality.model import PRESETS, build_model  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.quality.weights import ModelInfo, save_weights  # noqa: E402
from DistilIQALib.training.phantoms import phantom_volume  # noqa: E402


def retrieval_only(config: ServerConfig, work: Path) -> int:
    """Find every series and fetch it into a folder of ``work``, without scoring; returns how many."""
    server = Server(config)
    found = server.find_series(SeriesQuery(), None)
    for n, series in enumerate(found):
        folder = work / f"fetch{n}"
        folder.mkdir(parents=True)
        server.fetch(series, folder)
    return len(found)


def _median(values):
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if ORTHANC is None:
        print("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base = phantom_volume(args.slices, size=512, pixel_mm=0.7, seed=1)
        rng = np.random.default_rng(0)
        files = []
        for n in range(args.series):
            noisy = base + rng.standard_normal(base.shape, dtype=np.float32) * (8 + 4 * n)
            files += write_series(noisy, folder / "archive" / f"s{n}",
                                  series_uid=f"1.2.826.0.1.3680043.8.498.778.{n + 1}")
        weights = save_weights(folder / "fast.safetensors", build_model(PRESETS["fast"], 5).eval(),
                               ModelInfo(preset="fast", architecture=PRESETS["fast"], num_outputs=5,
                                         provenance={"purpose": "test"}))
        scorer = Scorer(str(weights), device="cpu")
        with Orthanc(folder / "orthanc") as orthanc:
            orthanc.upload(files)
            config = ServerConfig(orthanc.dicomweb_url)
            runs = {"folder": lambda n: run_batch(folder / "archive", folder / f"folder{n}.sqlite", scorer,
                                                  workers=args.workers).scored,
                    "server": lambda n: run_dicomweb(config, SeriesQuery(), folder / f"server{n}.sqlite", scorer,
                                                     workers=args.workers).scored,
                    "fetch": lambda n: retrieval_only(config, folder / f"fetched{n}")}
            wall = {mode: [] for mode in runs}
            cpu = {mode: [] for mode in runs}
            modes = list(runs)
            for repeat in range(args.repeats):
                for mode in modes[repeat % 3:] + modes[:repeat % 3]:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    assert runs[mode](repeat) == args.series, mode
                    wall[mode].append(time.perf_counter() - started)
                    cpu[mode].append(time.process_time() - started_cpu)
    print(f"{args.series} series x {args.slices} slices (512x512, {args.series * args.slices * 0.5:.0f} MiB) per run, "
          f"fast preset, {scorer.device_name}, {args.workers} read-ahead thread(s), Orthanc on loopback, "
          f"{args.repeats} rounds")
    for mode, name in (("folder", "batch ROOT"), ("server", "batch --dicomweb"), ("fetch", "retrieval alone")):
        print(f"  {name:17s}: {60 * args.series / _median(wall[mode]):6.1f} series/min (median of "
              f"{', '.join(f'{s:.1f}' for s in wall[mode])} s), CPU {_median(cpu[mode]):.1f} s")
    for measure, times in (("wall time", wall), ("CPU time", cpu)):
        ratios = [server / local for server, local in zip(times["server"], times["folder"])]
        alone = [fetch / local for fetch, local in zip(times["fetch"], times["folder"])]
        print(f"{measure}: batch --dicomweb / batch ROOT {100 * (_median(ratios) - 1):+.1f}% (goal under +20%; "
              f"rounds {', '.join(f'{100 * (r - 1):+.0f}%' for r in ratios)}); retrieval alone "
              f"{100 * _median(alone):.1f}% of batch ROOT")
    print(f"fastest runs (the least disturbed by other jobs): batch --dicomweb / batch ROOT "
          f"{100 * (min(wall['server']) / min(wall['folder']) - 1):+.1f}% wall, retrieval alone "
          f"{100 * min(wall['fetch']) / min(wall['folder']):.1f}% of batch ROOT")
    return 0


if __name__ == "__main__":
    sys.exit(main())

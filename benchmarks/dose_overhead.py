"""What reading the scanner's dose adds to a batch run, as a ratio measured in one run (goal: under 5%).

The same generated archive (``--series`` phantom CT series of ``--slices`` 512x512 slices whose headers carry
CTDIvol on the body phantom, plus the committed real GE dose report) is scored by ``run_batch`` with the dose
reading switched off and on, alternately ``--rounds`` times each after one uncounted warm-up run; the ratio is of
the summed wall times, and, less swayed by other work on a shared machine, of the summed CPU times (this process's
threads and the scan's worker processes). The model is an untrained ``fast`` network (timing does not depend on
its values).

    .venv/bin/python benchmarks/dose_overhead.py [--series 4] [--slices 24] [--rounds 2]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from DistilIQALib.archive import archive, batch  # noqa: E402
from DistilIQALib.dose.headers import DOSE_TAGS  # noqa: E402
from DistilIQALib.io.dicom_writing import write_series  # noqa: E402
from DistilIQALib.quality.model import PRESETS, build_model  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.quality.weights import ModelInfo, save_weights  # noqa: E402
from DistilIQALib.training.phantoms import phantom_volume  # noqa: E402


def _without_dose():
    """Undo the dose reading (header tags, per-file dose, the series' Dw/SSDE, the dose reports)."""
    saved = (archive._HEADER_TAGS, archive.frame_doses, batch._dose, batch.record_dose_objects)
    archive._HEADER_TAGS = [tag for tag in archive._HEADER_TAGS if tag not in DOSE_TAGS]
    archive.frame_doses = lambda ds: []
    batch._dose = lambda entry, files, volume: None
    batch.record_dose_objects = lambda *args, **kwargs: 0
    return saved


def _restore(saved) -> None:
    archive._HEADER_TAGS, archive.frame_doses, batch._dose, batch.record_dose_objects = saved


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the scan's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base = phantom_volume(args.slices, size=512, pixel_mm=0.7, seed=1)
        rng = np.random.default_rng(0)
        phantom = Dataset()
        phantom.CodeValue, phantom.CodingSchemeDesignator = "113691", "DCM"
        phantom.CodeMeaning = "IEC Body Dosimetry Phantom"
        for n in range(args.series):
            noisy = base + rng.standard_normal(base.shape, dtype=np.float32) * (8 + 4 * n)
            write_series(noisy, folder / "archive" / f"s{n}", series_uid=f"1.2.826.0.1.3680043.8.498.778.{n + 1}",
                         extra={"CTDIvol": 10.0 + n, "CTDIPhantomTypeCodeSequence": [phantom]})
        shutil.copy(ROOT / "Testing" / "Data" / "dose" / "ge_revolution_rdsr.dcm", folder / "archive" / "rdsr.dcm")
        weights = save_weights(folder / "fast.safetensors", build_model(PRESETS["fast"], 5).eval(),
                               ModelInfo(preset="fast", architecture=PRESETS["fast"], num_outputs=5,
                                         provenance={"purpose": "benchmark"}))
        scorer = Scorer(str(weights), device="cpu", batch_size=8)
        # one run first that is not counted: the first run of a process pays for warming up (threads, caches)
        batch.run_batch(folder / "archive", folder / "warm-up.sqlite", scorer, workers=2)
        seconds = {"without": 0.0, "with": 0.0}
        cpu = {"without": 0.0, "with": 0.0}
        for n in range(args.rounds):
            for mode in ("without", "with") if n % 2 == 0 else ("with", "without"):
                saved = _without_dose() if mode == "without" else None
                started, cpu_started = time.perf_counter(), _cpu_seconds()
                summary = batch.run_batch(folder / "archive", folder / f"{mode}{n}.sqlite", scorer, workers=2)
                seconds[mode] += time.perf_counter() - started
                cpu[mode] += _cpu_seconds() - cpu_started
                if saved:
                    _restore(saved)
                assert summary.scored == args.series
    slices = args.series * args.slices * args.rounds
    print(f"{args.series} series x {args.slices} slices (512x512) + 1 dose report, fast preset, cpu, "
          f"{args.rounds} round(s) each, alternating")
    print(f"without dose: {seconds['without']:.1f} s ({slices / seconds['without']:.1f} slices/s); "
          f"with dose: {seconds['with']:.1f} s")
    print(f"dose reading adds {100 * (seconds['with'] / seconds['without'] - 1):+.1f}% "
          f"(ratio {seconds['with'] / seconds['without']:.3f})")
    print(f"CPU time: without dose {cpu['without']:.1f} s, with dose {cpu['with']:.1f} s; dose reading adds "
          f"{100 * (cpu['with'] / cpu['without'] - 1):+.1f}% (ratio {cpu['with'] / cpu['without']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of the DICOM receiver for an allowed plaintext sender, against the receiver before its access,
disk and limit checks (``listener.py`` as of BASELINE, read from git), measured in one run.

DCMTK's storescu sends the same series of 512x512 CT images over one association to each receiver in turn
(alternating, ROUNDS times); every image is written and flushed to the disk before it is acknowledged, as in
use. Prints each round's images per second and the median of the per-round ratios (new / before), and the
same for the receiver's CPU time per image (this process's, where both receivers run: less disturbed by other
jobs on the machine than the wall clock, which the disk's flushes dominate).

    python benchmarks/listener_speed.py [--images 60] [--rounds 5] [--baseline f18abeb]
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

from DistilIQALib.archive import listener  # noqa: E402
from DistilIQALib.io.dicom_writing import write_series  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.training.phantoms import phantom_volume  # noqa: E402

#: The last commit before the receiver's allow-list, TLS, free-space floor, retention and limits.
BASELINE = "f18abeb"


def baseline_module(revision: str, folder: Path):
    """``listener.py`` as it was at ``revision``, imported beside today's (its relative imports resolve)."""
    source = subprocess.run(["git", "show", f"{revision}:DistilIQALib/archive/listener.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = folder / "listener_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("DistilIQALib.archive.listener_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def send(port: int, files):
    """Wall and this process's CPU seconds for storescu to send ``files``."""
    started, cpu = time.perf_counter(), time.process_time()
    result = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "DISTILIQA", "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.returncode != 0:
        raise SystemExit(f"storescu failed ({result.returncode}): {result.stdout}{result.stderr}")
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("storescu (Debian dcmtk) is needed")
    from conftest import write_untrained_weights

    with tempfile.TemporaryDirectory(dir=ROOT) as work:
        work = Path(work)
        before = baseline_module(args.baseline, work)
        files = sorted(write_series(phantom_volume(args.images, size=512, pixel_mm=0.7, seed=0), work / "series",
                                    spacing_mm=(0.7, 0.7, 1.0), series_uid="1.2.826.0.1.3680043.8.498.3601"))
        scorer = Scorer(str(write_untrained_weights(work / "w.safetensors", input_size=64)), device="cpu")
        allowed = listener.ReceiverRules(senders=[listener.Sender.parse("STORESCU@127.0.0.1")])

        def run(kind: str, n: int):
            storage = work / f"{kind}{n}"
            if kind == "new":
                receiver = listener.Receiver(storage, work / f"{kind}{n}.sqlite", scorer, "DISTILIQA", "127.0.0.1", 0,
                                             3600, rules=allowed)
            else:
                receiver = before.Receiver(storage, work / f"{kind}{n}.sqlite", scorer, "DISTILIQA", "127.0.0.1", 0,
                                           3600)
            port = receiver.start()
            try:
                elapsed, cpu = send(port, files)
            finally:
                receiver.close()
            stored = len(list(storage.rglob("*.dcm")))
            if stored != len(files):
                raise SystemExit(f"{kind}: {stored} of {len(files)} images stored")
            shutil.rmtree(storage)
            return len(files) / elapsed, 1000 * cpu / len(files)

        run("new", -1)  # warm-up: caches, imports
        ratios, cpu_ratios = [], []
        print(f"{len(files)} images of 512x512 over one association per receiver, {args.rounds} rounds, "
              f"baseline listener.py at {args.baseline}")
        for n in range(args.rounds):
            first, second = ("new", "before") if n % 2 == 0 else ("before", "new")
            measured = {first: run(first, n), second: run(second, n)}
            (speed_before, cpu_before), (speed_now, cpu_now) = measured["before"], measured["new"]
            ratios.append(speed_now / speed_before)
            cpu_ratios.append(cpu_now / cpu_before)
            print(f"round {n + 1}: before {speed_before:.1f} images/s ({cpu_before:.2f} ms CPU each), now "
                  f"{speed_now:.1f} images/s ({cpu_now:.2f} ms CPU each); ratio {ratios[-1]:.3f}")
        print(f"throughput ratio (now / before, median of {len(ratios)} rounds): {statistics.median(ratios):.3f}")
        print(f"receiver CPU time per image (now / before, median): {statistics.median(cpu_ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

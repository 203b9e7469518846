"""Click-to-results time of the panel's *Assess Quality* against the model time alone.

    .venv/bin/python benchmarks/panel_overhead.py [--slices 300] [--device cpu] [--skip-in-process]

Does what the Slicer panel does on a click, with real MRML (the ``slicer-core`` wheel): a 300-slice 512x512 CT
volume node is written to a temporary NRRD, ``python -m DistilIQALib score ... --progress-lines`` runs in a child
process (the panel's exact command line, :class:`DistilIQALib.slicer_bridge.jobs.ScoreJob`), polled every 200 ms as
the panel's timer does, and its CSV/JSON are read back into the result nodes (table, charts, quality map). Prints
the total, the model time the child measured in that same run (reading slices to scores, the ``elapsed_s`` of its
summary), their difference (the overhead of the background process) and where it goes; then, for comparison, the model
time of an in-process ``Scorer`` on the same volume.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-in-process", action="store_true", help="do not time an in-process Scorer as well")
    args = parser.parse_args()

    import numpy as np
    import slicer
    import vtk

    from DistilIQALib.slicer_bridge import mrml
    from DistilIQALib.slicer_bridge.jobs import ScoreJob
    from DistilIQALib.training.phantoms import phantom_volume

    scene = slicer.vtkMRMLScene()
    hu = np.rint(phantom_volume(args.slices, size=args.size, pixel_mm=0.7, noise_sd_hu=12, seed=5)).astype(np.int16)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(ct, hu)
    matrix = vtk.vtkMatrix4x4()
    for axis, spacing in enumerate((-0.7, -0.7, 1.25)):
        matrix.SetElement(axis, axis, spacing)
    ct.SetIJKToRASMatrix(matrix)
    print(f"CT node: {args.slices} slices of {args.size}x{args.size}, device {args.device}", flush=True)

    with tempfile.TemporaryDirectory(prefix="DistilIQA-") as work:
        clicked = time.monotonic()
        volume_file = mrml.write_volume_file(ct, Path(work) / "volume.nrrd")
        written = time.monotonic()
        job = ScoreJob(volume_file, work, None, args.device, 0)
        first_progress = last_progress = None
        while job.poll() is None:
            now = time.monotonic()
            if job.total and first_progress is None:
                first_progress = now
            if job.total and job.done == job.total and last_progress is None:
                last_progress = now
            time.sleep(0.2)  # the panel's QTimer interval
        ended = time.monotonic()
        if job.exit_code != 0:
            print("\n".join(job.log[-20:]))
            return 1
        scores = job.results()
        nodes = mrml.show_stored_results(ct, scores)
        done = time.monotonic()
    assert nodes.table.GetTable().GetNumberOfRows() == args.slices
    total = done - clicked
    model = scores.elapsed_s
    first_progress = first_progress or ended
    last_progress = last_progress or ended
    print(f"click to results: {total:.1f} s")
    print(f"model time in that run (child's scoring loop): {model:.1f} s")
    print(f"overhead: {total - model:.1f} s")
    print(f"  write NRRD {written - clicked:.2f} s; child start to first progress line (interpreter, PyTorch, "
          f"model, NRRD read; timer-granular) {first_progress - written:.1f} s; last slice to exit (CSV, JSON) "
          f"{ended - last_progress:.1f} s; read back + MRML nodes {done - ended:.2f} s")
    if not args.skip_in_process:
        from DistilIQALib.quality.scoring import Scorer

        started = time.monotonic()
        in_process = Scorer(device=args.device).score_volume(mrml.volume_from_node(ct))
        print(f"model time alone, in-process Scorer on the same volume: {in_process.elapsed_s:.1f} s "
              f"(with model load {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

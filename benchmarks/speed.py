"""Milliseconds per 512x512 slice and peak memory of every model preset, on this machine, in one run.

Each preset runs in its own fresh process (so peak memory is its own): the model is
built, one batch warms up, then batches are timed for at least ``--seconds``. Printed
with the ratio to the ``paper`` preset, measured in the same run.

    .venv/bin/python benchmarks/speed.py [--batch-size 2] [--seconds 4] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(preset: str, batch_size: int, seconds: float, device_name: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from DistilIQALib.quality.device import describe_device, resolve_device
    from DistilIQALib.quality.model import PRESETS, build_model

    device = resolve_device(device_name)
    torch.manual_seed(0)
    if preset == "shipped":  # the shipped file itself: its preset, outputs and input channels (windows)
        from DistilIQALib.quality.weights import default_weights_path, load_weights

        model, info = load_weights(default_weights_path(), device)
        channels = info.architecture.input_channels
    else:
        model, channels = build_model(PRESETS[preset], 5).to(device).eval(), 1
    batch = torch.rand(batch_size, channels, 512, 512, device=device)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(batch)
        slices = 0
        started = time.perf_counter()
        while True:
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            slices += batch_size
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and slices >= 2 * batch_size:
                break
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "preset": preset,
        "input_channels": channels,
        "device": describe_device(device),
        "ms_per_slice": 1000.0 * elapsed / slices,
        "slices_timed": slices,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_mib": peak_kib / 1024.0,
        "scoring_rss_increase_mib": (peak_kib - baseline_kib) / 1024.0,
    }
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="paper,fast,tiny,shipped",
                        help="presets to time; 'shipped' is the shipped weights file with its own input channels")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.seconds, args.device)))
        return 0
    results = []
    for preset in args.presets.split(","):
        output = subprocess.run(
            [sys.executable, __file__, "--child", preset, "--batch-size", str(args.batch_size),
             "--seconds", str(args.seconds), "--device", args.device],
            check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    paper = next((r for r in results if r["preset"] == "paper"), results[0])
    print(f"device: {results[0]['device']}, batch size {args.batch_size}, 512x512 slices, 5 outputs "
          "(shipped: the shipped file's own)")
    print(f"{'preset':<8}{'ms/slice':>10}{'x faster than paper':>22}{'params (M)':>12}{'peak RSS (MiB)':>16}"
          f"{'RSS increase':>14}")
    for r in results:
        speedup = paper["ms_per_slice"] / r["ms_per_slice"]
        print(f"{r['preset']:<8}{r['ms_per_slice']:>10.1f}{speedup:>22.1f}{r['parameters_m']:>12.2f}"
              f"{r['peak_rss_mib']:>16.0f}{r['scoring_rss_increase_mib']:>14.0f}")
        r["speedup_vs_paper"] = speedup
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

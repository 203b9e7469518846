"""Seconds to simulate one 512x512 source slice (7 doses relative to its own noise, 3 sparse-view counts) on the
CPU and on a GPU, in one run, and how far the GPU's images are from the CPU's.

Sources are phantom slices given full-dose noise (no patient data needed). The random numbers are drawn on the
CPU on both devices, so the two simulations are the same realisation: the difference is rounding alone.

    .venv/bin/python benchmarks/simulation_speed.py [--sources 4] [--device cuda] [--threads N]
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

from DistilIQALib.quality.device import describe_device, resolve_device  # noqa: E402
from DistilIQALib.quality.noise import slice_noise_index  # noqa: E402
from DistilIQALib.training.phantoms import phantom_slice  # noqa: E402
from DistilIQALib.training.simulation import DoseSimulator, dense_reconstruction, matched_kernel_sharpness, sparse_view  # noqa

DOSES = (1.0, 0.75, 0.5, 0.25, 0.15, 0.1, 0.05)
VIEWS = (256, 128, 64)
PIXEL_MM = 0.7


def simulate(hu: np.ndarray, seed: int, device) -> dict:
    """What ``preprocess_simulated(relative=True)`` makes of one source: every dose and view count (HU)."""
    noise = slice_noise_index(hu, PIXEL_MM)
    simulator = DoseSimulator(hu, PIXEL_MM, seed=seed, reference_noise_hu=noise,
                              kernel=matched_kernel_sharpness(hu, PIXEL_MM), device=device)
    images = {f"dose{d:g}": simulator.at_dose(d) for d in DOSES}
    dense = dense_reconstruction(hu, PIXEL_MM, device=device)
    images.update({f"views{v}": sparse_view(hu, PIXEL_MM, v, dense, device) for v in VIEWS})
    return images


def timed(sources, device) -> tuple:
    simulate(sources[0], 0, device)  # warm-up (kernels, allocator)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    results = [simulate(hu, n, device) for n, hu in enumerate(sources)]
    return (time.perf_counter() - started) / len(sources), results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sources = []
    for n in range(args.sources):
        clean = phantom_slice(position=n / max(1, args.sources - 1), size=512, pixel_mm=PIXEL_MM, seed=n)
        sources.append(clean + DoseSimulator(clean, PIXEL_MM, seed=1000 + n).full_dose_noise())
    cpu_s, cpu_images = timed(sources, None)
    print(f"CPU ({torch.get_num_threads()} threads): {cpu_s:.2f} s per source slice (10 images)")
    if device.type == "cpu":
        return 0
    gpu_s, gpu_images = timed(sources, device)
    worst = max(float(np.max(np.abs(a[key] - b[key]))) for a, b in zip(cpu_images, gpu_images) for key in a)
    print(f"{describe_device(device)}: {gpu_s:.3f} s per source slice; {cpu_s / gpu_s:.1f}x the CPU's speed")
    print(f"largest difference between the CPU's and the GPU's images: {worst:.4f} HU")
    return 0


if __name__ == "__main__":
    sys.exit(main())

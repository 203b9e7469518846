"""Training cost of every preset on this machine, in one run: seconds per training image (forward,
backward and SGD step at 512x512, batch 4) and the wall time of one epoch over ``--images`` images.

    .venv/bin/python benchmarks/training_speed.py [--steps 3] [--images 1000] [--presets paper,fast,tiny]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from DistilIQALib.quality.model import PRESETS, build_model  # noqa: E402
from DistilIQALib.training.training import training_loss  # noqa: E402


def seconds_per_image(preset: str, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model(PRESETS[preset], 5).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(batch_size, 1, 512, 512)
    labels = torch.rand(batch_size, 1)
    teachers = torch.rand(batch_size, 5)

    def step():
        loss = training_loss(model(images), labels, teachers)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / (steps * batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--presets", default="paper,fast,tiny")
    args = parser.parse_args()
    print(f"cpu ({torch.get_num_threads()} threads), batch {args.batch_size}, 512x512, 5 outputs, SGD")
    print(f"{'preset':<8}{'s/image':>10}{'epoch of ' + str(args.images) + ' images':>24}{'x faster than paper':>22}")
    results = {name: seconds_per_image(name, args.steps, args.batch_size) for name in args.presets.split(",")}
    reference = results.get("paper", next(iter(results.values())))
    for name, seconds in results.items():
        epoch = seconds * args.images
        print(f"{name:<8}{seconds:>10.3f}{epoch / 60:>20.1f} min{reference / seconds:>22.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

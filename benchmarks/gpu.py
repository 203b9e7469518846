"""GPU checks and measurements in one run (needs a CUDA GPU; imports nothing that reads files, so SimpleITK
is not needed):

1. the scorer end to end (int16 volume -> windowing -> model -> noise index) on a 300-slice 512x512 scan at
   several batch sizes, with the shipped model: ms per slice, to choose the GPU default batch;
2. the out-of-memory back-off on the real GPU: a batch far too large for the card's memory still scores
   (halved until it fits);
3. training cost (forward, backward, AdamW step, float16 autocast, channels-last) per 512x512 image for each
   preset at batch 16;
4. the training loop itself (teachers' ``_fit`` path) with AMP for a few epochs, with every warning recorded:
   no "lr_scheduler.step() before optimizer.step()" warning may appear;
5. scores on the GPU against the CPU for the same slices (float16 autocast vs float32).

    python benchmarks/gpu.py [--slices 300] [--batch-sizes 4,8,16,32,64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from DistilIQALib.quality.model import PRESETS, architecture_from_preset, build_model  # noqa: E402
from DistilIQALib.quality.scoring import Scorer  # noqa: E402
from DistilIQALib.quality.weights import ModelInfo  # noqa: E402
from DistilIQALib.training.training import TrainingConfig, _fit, _Run, training_loss  # noqa: E402
from DistilIQALib.volume import CTVolume  # noqa: E402


def synthetic_scan(slices: int) -> CTVolume:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-256:256, -256:256]
    body = ((x / 220.0) ** 2 + (y / 160.0) ** 2 <= 1.0)
    base = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu = np.empty((slices, 512, 512), dtype=np.int16)
    for k in range(slices):
        hu[k] = np.clip(base + rng.normal(0, 15, base.shape), -1024, 3000).astype(np.int16)
    return CTVolume(hu, spacing_mm=(0.7, 0.7, 1.0))


def score_speed(volume: CTVolume, batch_sizes) -> None:
    print(f"1. scoring a {volume.num_slices}-slice 512x512 int16 scan end to end, shipped model, float16 autocast")
    for batch in batch_sizes:
        scorer = Scorer(device="cuda", batch_size=batch)
        scorer.score_volume(CTVolume(volume.hu[:batch * 2], spacing_mm=volume.spacing_mm))  # warm-up
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            started = time.perf_counter()
            result = scorer.score_volume(volume)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        elapsed = min(times)
        print(f"   batch {batch:4d}: {1000 * elapsed / volume.num_slices:7.3f} ms/slice (best of 3; slowest "
              f"{1000 * max(times) / volume.num_slices:.3f}), {elapsed:5.2f} s per scan, "
              f"mean score {result.score.mean():.4f}")


def out_of_memory_back_off(volume: CTVolume) -> None:
    """Fill the card so that only about 1 GiB stays free, then ask for a batch that needs several."""
    torch.cuda.empty_cache()  # memory the allocator keeps cached would otherwise serve the batch
    free, total = torch.cuda.mem_get_info()
    hog = torch.empty(int(free - 1.0 * 2**30), dtype=torch.uint8, device="cuda")
    scorer = Scorer(device="cuda", batch_size=512)
    hu = np.repeat(volume.hu[:1], 600, axis=0)
    started = time.perf_counter()
    result = scorer.score_volume(CTVolume(hu, spacing_mm=volume.spacing_mm))
    elapsed = time.perf_counter() - started
    del hog
    torch.cuda.empty_cache()
    print(f"2. out-of-memory back-off with about 1 GiB free: asked for batch 512, finished at batch "
          f"{scorer.batch_size} on {scorer.device}, {len(result.score)} slices in {elapsed:.1f} s, "
          f"scores identical: {bool(np.ptp(result.score) < 1e-3)}")


def _training_step_ms(name: str, batch: int, steps: int) -> float:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(PRESETS[name], 5).to(device).to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    images = torch.rand(batch, 1, 512, 512, device=device).contiguous(memory_format=torch.channels_last)
    labels, teachers = torch.rand(batch, 1, device=device), torch.rand(batch, 5, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            outputs = model(images)
        loss = training_loss(outputs.float(), labels, teachers)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / (steps * batch)


def training_speed(presets, batch: int = 16, steps: int = 10) -> None:
    print(f"3. training, batch {batch}, 512x512, 5 outputs, AdamW, float16 autocast, channels-last")
    for name in presets:
        print(f"   {name:<6}: {_training_step_ms(name, batch, steps):7.3f} ms per image")


def amp_training_loop() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    images = torch.rand(24, 1, 128, 128).half()
    labels = torch.rand(24, 1)
    config = TrainingConfig(preset="tiny", input_size=128, epochs=3, batch_size=8, optimizer="adamw", lr=1e-3,
                            augment=False, amp=True, device="cuda")
    model = build_model(architecture_from_preset("tiny", input_size=128), 1)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = ModelInfo(preset="tiny", architecture=model.arch, num_outputs=1)
        run = _Run("gpu check", Path(folder) / "snapshots", Path(folder) / "log.csv", info)
        _fit(run, model, config, device, images[:16], labels[:16], images[16:], labels[16:, 0].numpy())
        log = (Path(folder) / "log.csv").read_text().strip().splitlines()
    scheduler_warnings = [str(w.message) for w in caught if "lr_scheduler.step()" in str(w.message)]
    print(f"4. AMP training loop on the GPU: {len(log) - 1} epochs logged, scheduler warnings: "
          f"{len(scheduler_warnings)}{' ' + scheduler_warnings[0] if scheduler_warnings else ''}")
    other = sorted({f'{w.category.__name__}: {w.message}' for w in caught if 'lr_scheduler' not in str(w.message)})
    for message in other[:5]:
        print(f"   other warning: {message[:200]}")


def gpu_vs_cpu(volume: CTVolume) -> None:
    part = CTVolume(volume.hu[:16], spacing_mm=volume.spacing_mm)
    gpu = Scorer(device="cuda", batch_size=8).score_volume(part).score
    cpu = Scorer(device="cpu", batch_size=2).score_volume(part).score
    print(f"5. GPU (float16 autocast) vs CPU scores on 16 slices: max |difference| {np.abs(gpu - cpu).max():.5f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--batch-sizes", default="4,8,16,32,64")
    parser.add_argument("--presets", default="fast,paper")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 1
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    volume = synthetic_scan(args.slices)
    score_speed(volume, [int(b) for b in args.batch_sizes.split(",")])
    amp_training_loop()
    gpu_vs_cpu(volume)
    training_speed(args.presets.split(","))
    out_of_memory_back_off(volume)
    return 0


if __name__ == "__main__":
    sys.exit(main())

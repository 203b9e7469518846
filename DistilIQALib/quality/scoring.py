"""The scorer: the one path from a CT volume to per-slice quality scores.

Used by the command line, the batch runner and Slicer alike. Slices go through the
model a batch at a time (each batch converted to float32 on the device, so memory
stays bounded whatever the scan length), with autocast on GPUs, an automatic smaller
batch when the GPU runs out of memory (and the CPU as last resort), and a progress
callback that can cancel. On the CPU results are deterministic.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import List, Optional

import numpy as np
import torch

from ..progress import Progress
from ..volume import CTVolume
from .device import describe_device, resolve_device
from .model import score_from_outputs
from .noise import global_noise_index, size_for_reference
from .preprocessing import hu_to_tensor, prepare_batch
from .regions import RegionFeatures, detect_regions, given_regions, region_features
from .results import EFFECTIVE_NOISE, WORST_SLICES, SliceScores, verdict_line  # noqa: F401  (were defined here)
from .weights import load_weights, resolve_weights

log = logging.getLogger(__name__)


#: Slices per forward pass on a GPU, and on the CPU, where small batches are faster: the activations of the
#: full-resolution convolution stay in cache (``benchmarks/speed.py --batch-size``). On an H200
#: (``benchmarks/gpu.py``) the fast model scored 0.59 ms per slice at batch 8, 0.23 at 16, 0.195 at 32 and
#: 0.17 at 64-128: 32 gets nearly all of it while needing well under 1 GiB, and out-of-memory halves it.
DEFAULT_BATCH_SIZE = 32
CPU_BATCH_SIZE = 2
#: Slices whose body-region features are measured together on the CPU (or one batch, when larger; on a GPU, the
#: batch): their many small steps are taken once for all of them, where the network's batch is small.
REGION_SLICES = 16


class Scorer:
    """Loads a weights file once and scores volumes with it.

    Args:
        weights: weights file; ``None`` for the shipped default model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: slices per forward pass (halved automatically on GPU out-of-memory); ``None``:
            ``DEFAULT_BATCH_SIZE`` on a GPU, ``CPU_BATCH_SIZE`` on the CPU.
        use_amp: mixed precision (float16 autocast) on GPUs; ignored on the CPU.
    """

    def __init__(self, weights: Optional[str] = None, device: str = "auto",
                 batch_size: Optional[int] = None, use_amp: bool = True) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.device = resolve_device(device)
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self.device.type == "cpu" else DEFAULT_BATCH_SIZE
        self.weights_path = resolve_weights(weights)
        self.model, self.info = load_weights(self.weights_path, self.device)
        self.batch_size = batch_size
        self.use_amp = use_amp

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    def score_volume(self, volume: CTVolume, progress: Optional[Progress] = None, region: str = "auto") -> SliceScores:
        """Score every axial slice of ``volume``; ``region`` is ``auto`` (each slice's body region read from the
        image) or one region for every slice (``head``, ``neck``, ``chest``, ``abdomen``)."""
        if region != "auto":
            given_regions(region, 0)  # a wrong name fails before the work
        progress = progress or Progress()
        started = time.monotonic()
        total = volume.num_slices
        outputs = np.zeros((total, self.info.num_outputs), dtype=np.float32)
        noise = np.zeros(total, dtype=np.float32)
        diameter = np.zeros(total, dtype=np.float32)
        features = []
        start = read_to = 0  # the slices whose region features are measured: [0, read_to)
        progress.update(0, total, "scoring")
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                if region == "auto" and start >= read_to:
                    end = min(total, max(stop, start + REGION_SLICES)) if self.device.type == "cpu" else stop
                    features.append(self._region_features(volume, start, end))
                    read_to = end
                outputs[start:stop], noise[start:stop], diameter[start:stop] = self._score_batch(volume, start, stop)
            except torch.OutOfMemoryError:
                self._shrink_after_out_of_memory()
                continue
            start = stop
            progress.update(start, total, "scoring")
        scores = score_from_outputs(torch.from_numpy(outputs)).numpy()
        learned = self.info.score.name == EFFECTIVE_NOISE
        if region == "auto":
            regions = detect_regions(RegionFeatures.concatenate(features), volume.z_mm(), volume.hu.shape[1:],
                                     volume.spacing_mm[:2])
        else:
            regions = given_regions(region, total)
        result = SliceScores(
            slice_index=np.arange(total), z_mm=volume.z_mm(), score=scores, outputs=outputs, noise_hu=noise,
            info=self.info, source=volume.source, device=self.device_name, elapsed_s=time.monotonic() - started,
            matrix=tuple(volume.hu.shape[:0:-1]), spacing_mm=tuple(volume.spacing_mm),
            warnings=self._warnings(volume), diameter_cm=diameter, thickness_mm=volume.slice_thickness_mm,
            regions=regions, effective_noise_hu=np.exp(scores.astype(np.float64)) if learned else None,
            thickness_per_slice_mm=_per_slice(volume.metadata.get("slice_thickness_per_slice_mm"), total),
            kernel=str(volume.metadata.get("kernel", "")), manufacturer=str(volume.metadata.get("manufacturer", "")),
            series_description=str(volume.metadata.get("series_description", "")),
        )
        if learned:
            # the score of a learned model is its dose equivalent: one scale for every region, NaN without a verdict
            verdicts = result.verdicts
            result.score = verdicts.learned_dose_equivalent if verdicts is not None else np.full(total, np.nan)
        return result

    def _score_batch(self, volume: CTVolume, start: int, stop: int):
        with torch.inference_mode():
            # the slices as stored (whole HU in a CT series' integers: the noise index sums them exactly in float32)
            stored = hu_to_tensor(volume.hu[start:stop], self.device, keep_dtype=True)
            hu = stored.float()
            noise = global_noise_index(stored, volume.spacing_mm[:2])
            diameter = size_for_reference(hu, volume.spacing_mm[:2], self.info.noise_reference)
            batch = prepare_batch(hu, self.info.window, self.info.input_size, extra_windows=self.info.extra_windows)
            with self._autocast():
                outputs = self.model(batch).float()
        return outputs.cpu().numpy(), noise.cpu().numpy(), diameter.cpu().numpy()

    def _region_features(self, volume: CTVolume, start: int, stop: int) -> RegionFeatures:
        """The region features of slices ``start:stop``, on the scoring device."""
        with torch.inference_mode():
            return region_features(hu_to_tensor(volume.hu[start:stop], self.device), volume.spacing_mm[:2])

    def _autocast(self):
        if self.use_amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _shrink_after_out_of_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory on %s: retrying with batch size %d", self.device_name, self.batch_size)
            return
        if self.device.type == "cpu":
            raise MemoryError("not enough memory to score even one slice on the CPU")
        log.warning("out of memory on %s even with batch size 1: continuing on the CPU", self.device_name)
        self.device = torch.device("cpu")
        self.model = self.model.to(self.device)

    def _warnings(self, volume: CTVolume) -> List[str]:
        warnings = []
        nz, ny, nx = volume.hu.shape
        if (ny, nx) != (self.info.input_size, self.info.input_size):
            warnings.append(f"matrix {nx}x{ny} was fitted to the model's {self.info.input_size}x"
                            f"{self.info.input_size} input; scores are less comparable with "
                            f"{self.info.input_size}-matrix scans")
        for below, above in volume.metadata.get("z_gaps_mm", []):
            warnings.append(f"slices missing between z {below:.1f} and {above:.1f} mm (a gap of {above - below:.1f} "
                            "mm in the series); every slice keeps the z its file states")
        if self.info.provenance.get("purpose") == "test":
            warnings.append("this model is marked 'test' (trained only to check the software): its scores are not "
                            "quality judgements")
        return warnings


def _per_slice(values, count: int) -> Optional[np.ndarray]:
    """A per-slice list of ``count`` numbers as an array, else ``None``."""
    return None if values is None or len(values) != count else np.asarray(values, dtype=np.float64)

"""Choosing the compute device: ``auto`` (CUDA, then Apple MPS, then CPU) or explicit."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DeviceError

DEVICE_CHOICES_TEXT = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user's device choice into a ``torch.device``; explain what is missing if it cannot be had."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device mps requested but no Apple GPU is available to PyTorch; use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise DeviceError(f"invalid device {spec!r}; use {DEVICE_CHOICES_TEXT}") from None
        index = 0 if device.index is None else device.index
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no working NVIDIA driver"
            raise DeviceError(f"device {spec} requested but no CUDA GPU is available ({build}, PyTorch "
                              f"{torch.__version__}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {spec} requested but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device {spec!r}; use {DEVICE_CHOICES_TEXT}")


def simulation_device(spec: str = "auto") -> Optional[torch.device]:
    """Where dose and sparse-view simulation runs for a run on device ``spec``: that GPU when it is a CUDA one (the
    same images as the CPU's to rounding, ``benchmarks/simulation_speed.py``), else None (the CPU)."""
    resolved = resolve_device(spec)
    return resolved if resolved.type == "cuda" else None


def describe_device(device: torch.device) -> str:
    """Human-readable name of ``device``, e.g. ``cuda:0 (NVIDIA H100)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())

"""The one preprocessing path shared by training and inference.

1. Window: HU are clipped to the window (default width 350 HU, level 40 HU, i.e.
   -135..215 HU) and scaled to [0, 1].
2. Fit: the slice becomes the model's square input (512x512 by default).
   * A square slice of the input size passes unchanged (the usual CT matrix).
   * A non-square slice is padded to a square, centred, with 0 (below the window,
     i.e. air), so anatomy is never stretched.
   * A square of another size is resized to the input size with antialiased bilinear
     interpolation. The model therefore sees the image at the reconstructed matrix
     whatever the field of view; pixel spacing does not change this step (it is used for
     the 6 mm kernel of the noise index). Resizing a 1024 matrix down averages away
     some noise, and enlarging a 256 matrix smooths it: scores of such images are less
     comparable with 512-matrix scans, which is why the result keeps the original
     matrix size.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .windows import BRAIN_WINDOW, DEFAULT_INPUT_SIZE, DEFAULT_WINDOW, Window  # noqa: F401

ArrayLike = Union[np.ndarray, torch.Tensor]


def window_to_unit(hu: ArrayLike, window: Window = DEFAULT_WINDOW) -> ArrayLike:
    """Clip HU to ``window`` and scale to [0, 1] (float32; numpy in, numpy out)."""
    if isinstance(hu, torch.Tensor):
        unit = (hu.float() - window.lower_hu) / window.width_hu
        return unit.clamp_(0.0, 1.0)
    unit = (np.asarray(hu, dtype=np.float32) - np.float32(window.lower_hu)) / np.float32(window.width_hu)
    return np.clip(unit, 0.0, 1.0, out=unit)


def fit_to_input(unit: torch.Tensor, input_size: int = DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """Make ``(B, C, H, W)`` windowed slices square and ``input_size`` wide (see module doc)."""
    height, width = unit.shape[-2:]
    if height != width:
        side = max(height, width)
        top = (side - height) // 2
        left = (side - width) // 2
        unit = F.pad(unit, (left, side - width - left, top, side - height - top), value=0.0)
    if unit.shape[-1] != input_size:
        unit = F.interpolate(unit, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return unit


def prepare_batch(
    hu_slices: ArrayLike,
    window: Window = DEFAULT_WINDOW,
    input_size: int = DEFAULT_INPUT_SIZE,
    device: Optional[torch.device] = None,
    extra_windows: Sequence[Window] = (),
) -> torch.Tensor:
    """HU slices ``(B, H, W)`` (any dtype) -> model input ``(B, C, S, S)`` float32 in [0, 1]: channel 0 in
    ``window``, one more channel per window of ``extra_windows`` (a brain window: W80/L40).

    The conversion to float32 happens here, one batch at a time, on ``device`` (the GPU
    when scoring there), so the whole volume never exists in float32.
    """
    tensor = hu_to_tensor(hu_slices, device)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    unit = torch.stack([window_to_unit(tensor, w) for w in (window, *extra_windows)], dim=1)
    return fit_to_input(unit, input_size)


def hu_to_tensor(hu_slices: ArrayLike, device: Optional[torch.device] = None, keep_dtype: bool = False) -> torch.Tensor:
    """A few HU slices (any dtype, numpy or torch) as a float32 tensor on ``device`` (copied through pinned memory
    when the device is a CUDA GPU); ``keep_dtype``: in their own dtype (a series' int16 travels at half the size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(hu_slices)) if isinstance(hu_slices, np.ndarray) else hu_slices
    if device is not None and tensor.device != device:
        if device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=True)
    return tensor if keep_dtype else tensor.float()

"""A sample CT for demonstrations: a phantom series with a run of low-dose (noisy) slices."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

from .dicom_writing import write_series
from .phantoms import phantom_volume

#: Noise (HU) of the sample's normal slices and of its simulated dose dip.
SAMPLE_NOISE_HU = 12.0
SAMPLE_DIP_NOISE_HU = 45.0


def make_sample_ct(folder: os.PathLike[str] | str, num_slices: int = 40, size: int = 512,
                   dip_slices: Tuple[int, int] = (16, 24), seed: int = 7) -> Path:
    """Write a DICOM CT series to ``folder`` (unless one is there already) and return the folder.

    Slices ``dip_slices[0]`` to ``dip_slices[1] - 1`` carry about 7% of the dose of the others
    (noise SD 45 HU instead of 12 HU; noise SD scales as 1/sqrt(dose)).
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.glob("*.dcm")):
        return folder
    pixel_mm = 0.7 * 512 / size
    volume = phantom_volume(num_slices, size=size, pixel_mm=pixel_mm, seed=seed)
    noise_sd = np.full(num_slices, SAMPLE_NOISE_HU, dtype=np.float32)
    noise_sd[dip_slices[0]:dip_slices[1]] = SAMPLE_DIP_NOISE_HU
    rng = np.random.default_rng(seed)
    volume += rng.standard_normal(volume.shape, dtype=np.float32) * noise_sd[:, None, None]
    write_series(volume, folder, spacing_mm=(pixel_mm, pixel_mm, 2.5), origin_mm=(-size * pixel_mm / 2,) * 2 + (0.0,),
                 series_description="DistilIQA sample: phantom with a low-dose dip",
                 series_uid="1.2.826.0.1.3680043.8.498.20241.1")
    return folder

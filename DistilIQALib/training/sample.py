"""A sample CT for demonstrations: a phantom series with a run of low-dose (noisy) slices."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

from ..io.dicom_writing import write_series
from .phantoms import phantom_volume, textured_noise

#: Noise (HU) of the sample's normal slices (a full-dose scan) and of its dose dip (noise SD scales as
#: 1/sqrt(dose): 10 / sqrt(0.07) is about 38).
SAMPLE_NOISE_HU = 10.0
SAMPLE_DIP_NOISE_HU = 38.0


def make_sample_ct(folder: os.PathLike[str] | str, num_slices: int = 40, size: int = 512,
                   dip_slices: Tuple[int, int] = (16, 24), seed: int = 7) -> Path:
    """Write a DICOM CT series to ``folder`` (unless one is there already) and return the folder.

    Slices ``dip_slices[0]`` to ``dip_slices[1] - 1`` carry about 7% of the dose of the others
    (noise SD 38 HU instead of 10 HU), as when tube current modulation fails over a stretch of the scan.
    The noise has CT texture (:func:`~DistilIQALib.training.simulation.textured_noise`).
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.glob("*.dcm")):
        return folder
    pixel_mm = 0.7 * 512 / size
    volume = phantom_volume(num_slices, size=size, pixel_mm=pixel_mm, seed=seed)
    noise_sd = np.full(num_slices, SAMPLE_NOISE_HU, dtype=np.float32)
    noise_sd[dip_slices[0]:dip_slices[1]] = SAMPLE_DIP_NOISE_HU
    rng = np.random.default_rng(seed)
    volume += textured_noise(volume.shape, 1.0, rng) * noise_sd[:, None, None]
    write_series(volume, folder, spacing_mm=(pixel_mm, pixel_mm, 2.5), origin_mm=(-size * pixel_mm / 2,) * 2 + (0.0,),
                 series_description="DistilIQA sample: phantom with a low-dose dip",
                 series_uid="1.2.826.0.1.3680043.8.498.20241.1")
    return folder


def write_tcia_like(root: os.PathLike[str] | str, cases: Tuple[str, ...] = ("C001", "C002", "C003", "L001"),
                    slices: int = 3, size: int = 256, base_dose: float = 0.6, seed: int = 0,
                    i0: float = 1.5e5) -> Path:
    """A folder laid out like TCIA "LDCT and Projection data": ``<case>/<study>/<n>-Full Dose/1-00k.dcm``
    and ``<n>-Low Dose/1-00k.dcm``, with projection-domain noise (low dose 10% for C cases, 25% for L and
    N cases). The full-dose images carry the noise of ``base_dose`` relative to the noise-free phantom;
    ``i0`` (photons per ray at full dose) sets the overall noise level.
    """
    from .datasets import TCIA_LOW_DOSE
    from .simulation import DoseSimulator

    root = Path(root)
    pixel_mm = 0.7 * 512 / size
    for number, case in enumerate(cases):
        clean = phantom_volume(slices, size=size, pixel_mm=pixel_mm, seed=seed * 1000 + number)
        full = np.empty_like(clean)
        low = np.empty_like(clean)
        for k in range(slices):
            full[k] = DoseSimulator(clean[k], pixel_mm, i0=i0, seed=seed * 7919 + number * 100 + k).at_dose(base_dose)
            extra = DoseSimulator(full[k], pixel_mm, i0=i0, seed=seed * 7919 + number * 100 + k + 50)
            low[k] = extra.at_dose(TCIA_LOW_DOSE[case[0]])
        study = root / case / "01-01-2018-NA-NA-12345"
        for label, volume, series in (("Full Dose", full, 1), ("Low Dose", low, 2)):
            folder = study / f"{series}.000000-{label} Images-{number:05d}"
            paths = write_series(volume, folder, spacing_mm=(pixel_mm, pixel_mm, 1.0), patient_id=case,
                                 series_description=f"{label} Images")
            for k, path in enumerate(sorted(paths, key=lambda p: _instance_number(p))):
                path.rename(folder / f"1-{k + 1:03d}.dcm")
    return root


def _instance_number(path: Path) -> int:
    import pydicom

    return int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)

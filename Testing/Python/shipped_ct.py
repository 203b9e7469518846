"""Real CT slices that the ``pydicom`` and ``pydicom-data`` packages ship (found on disk, never downloaded)."""
from pathlib import Path
from typing import List

from DistilIQALib.training.datasets import package_ct_folders

ROOTS = package_ct_folders()

#: Single-frame CT slices of at least 64x64 pixels in those packages.
SHIPPED_CT_NAMES = ("CT_small.dcm", "693_J2KI.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_UNCR.dcm",
                    "J2K_pixelrep_mismatch.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm")


def shipped_ct_file(name: str) -> Path:
    for root in ROOTS:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(name)


def shipped_ct_files() -> List[Path]:
    return [shipped_ct_file(name) for name in SHIPPED_CT_NAMES]

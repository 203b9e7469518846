"""The few pydicom calls whose spelling differs between pydicom 2.4 (what Slicer 5.8 bundles, and Slicer's own
DICOM module runs on, so it is never replaced) and pydicom 3. Every other module calls these instead of testing
pydicom's version itself."""
from __future__ import annotations

import inspect
import os
from functools import cache

from pydicom.dataset import Dataset


@cache
def _save_as_parameters() -> frozenset:
    return frozenset(inspect.signature(Dataset.save_as).parameters)


def save_file(dataset: Dataset, path: os.PathLike[str] | str) -> None:
    """Write ``dataset`` as a DICOM file: preamble, ``DICM`` and the file meta information, encoded as its file
    meta's transfer syntax says. pydicom 3 asks for that with ``enforce_file_format=True``; pydicom 2.4 has no such
    argument and asks for it with ``write_like_original=False``."""
    if "enforce_file_format" in _save_as_parameters():
        dataset.save_as(path, enforce_file_format=True)
        return
    syntax = dataset.file_meta.TransferSyntaxUID
    # pydicom 2.4 encodes by these two attributes, which a dataset built in memory does not have
    dataset.is_little_endian = syntax.is_little_endian
    dataset.is_implicit_VR = syntax.is_implicit_VR
    dataset.save_as(path, write_like_original=False)


def compress(dataset: Dataset, transfer_syntax: str, pixels) -> None:
    """Encode ``pixels`` into ``dataset`` with ``transfer_syntax``, keeping its SOP instance UID (pydicom 3 makes a
    new one unless told not to; pydicom 2.4 never does and has no such argument)."""
    if "generate_instance_uid" in inspect.signature(Dataset.compress).parameters:
        dataset.compress(transfer_syntax, pixels, generate_instance_uid=False)
    else:
        dataset.compress(transfer_syntax, pixels)

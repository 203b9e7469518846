"""The body regions a verdict is taken in, and each slice's label: plain values (no PyTorch), read back with
stored results in Slicer's own process. Reading the region from the image is :mod:`.regions`'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

HEAD, NECK, CHEST, ABDOMEN, UNKNOWN = "head", "neck", "chest", "abdomen", "unknown"
#: The regions a verdict can be taken in, head to foot (the order used when slices are read along z).
REGIONS = (HEAD, NECK, CHEST, ABDOMEN)
#: What a user may pass to ``--region`` (``auto``: read from the image).
REGION_CHOICES = ("auto",) + REGIONS


@dataclass
class SliceRegions:
    """Body region of each slice, with the reason for each ``unknown`` (empty string otherwise) and where the
    label came from (``image``, or ``user`` when given)."""

    region: List[str]
    reason: List[str]
    source: str = "image"


def given_regions(region: str, count: int) -> SliceRegions:
    """Every slice in the region a user named."""
    if region not in REGIONS:
        raise ValueError(f"unknown body region {region!r}; use one of {', '.join(REGION_CHOICES)}")
    return SliceRegions([region] * count, [""] * count, source="user")


#: How far (cm along z) a scan of the chest or the abdomen may run into the other and still be that one exam: a
#: chest CT runs down to the adrenal glands, an abdominal CT up over the lung bases, at the exam's own technique.
EXAM_END_CM = 6.0


def exam_regions(z_mm: Sequence[float], regions: Sequence[str]) -> Tuple[List[str], List[str]]:
    """The region whose routine level each slice of one series is judged against, and a note where that is not the
    slice's own: where a chest scan ends in the upper abdomen, or an abdominal scan starts over the lung bases, the
    end is at most :data:`EXAM_END_CM` long and lies wholly below (above) a longer run of the other region, it is
    part of that exam and is judged as its region; a chest-abdomen scan with both parts longer keeps each slice's
    own. Slices of other regions, and a series without positions for every slice, keep their own."""
    names = list(regions)
    notes = [""] * len(names)
    z = np.asarray(z_mm, dtype=np.float64)
    chest = [n for n, name in enumerate(names) if name == CHEST]
    abdomen = [n for n, name in enumerate(names) if name == ABDOMEN]
    if not chest or not abdomen or z.shape != (len(names),) or not np.isfinite(z).all():
        return names, notes
    steps = np.diff(np.unique(z))
    step = float(np.median(steps)) if steps.size else 0.0

    def length_cm(slices: List[int]) -> float:
        return (float(z[slices].max() - z[slices].min()) + step) / 10.0

    chest_cm, abdomen_cm = length_cm(chest), length_cm(abdomen)
    if z[abdomen].max() < z[chest].min() and abdomen_cm <= EXAM_END_CM < chest_cm:
        end, exam, what = abdomen, CHEST, f"the upper abdomen of a chest scan ({abdomen_cm:.1f} cm below its lungs)"
    elif z[chest].min() > z[abdomen].max() and chest_cm <= EXAM_END_CM < abdomen_cm:
        end, exam, what = chest, ABDOMEN, f"the lung bases of an abdominal scan ({chest_cm:.1f} cm above it)"
    else:
        return names, notes
    for n in end:
        names[n] = exam
        notes[n] = f"judged against the {exam}'s routine level: {what}"
    return names, notes

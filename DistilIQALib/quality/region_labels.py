"""The body regions a verdict is taken in, and each slice's label: plain values (no PyTorch), read back with
stored results in Slicer's own process. Reading the region from the image is :mod:`.regions`'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

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

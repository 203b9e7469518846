"""Body region of each axial slice: head, neck, chest, abdomen (abdomen and pelvis) or unknown.

Routine noise differs between regions by several times (brain CT is read at a few HU of noise, lung at many),
so every verdict is taken against the routine level of the slice's own region. The region is read from the
image, on a copy pooled to about 2 mm pixels:

* the **body**: pixels above -500 HU, opened by 1 cm so that the table and head holders (thin shells) drop out,
  with its holes filled; its area (cm^2) and width/depth;
* **lung**: air-like pixels (-960..-500 HU after pooling: parenchyma, not the -1000 HU of gas) enclosed by the
  body, as a share of the body's area;
* **skull**: rays from the body's centre in 72 directions; the share of rays that meet bone (above 300 HU) in
  the outer 40% of their way to the skin. A skull meets nearly all of them (0.8-1.0 on real heads, face and
  vertex included), a neck's vertebra and mandible a third or less, a chest's ribs some;
* **teeth**: the area above 2000 HU (enamel; cortical bone of the spine and mandible stays below it), which marks
  the face where the skull no longer rings the slice.

A slice on its own is *head* (a small body, under 350 cm^2, ringed by bone, or under 280 cm^2 holding teeth),
*chest* (lung over 5% of the body), *neck* (a small body without skull or lung) or *abdomen* (a large body without
lung). Within a series the slices are then read in anatomical order, as a radiologist would: a large slice without
lung is abdomen when lung lies above it, upper chest (shoulder girdle) when lung lies below it, and the base of
the neck when only neck or head lies above it; a small slice without skull below lung is pelvis or thighs, not
neck, and one above a head slice is face or vertex, not neck; an isolated label among five neighbours that agree
is taken as theirs. *Unknown* (with its reason) is a slice cut by its field of view, one without a body, one whose
body is mostly not soft tissue (not a CT image, or not in HU), or one outside the field of view or pixel sizes of
clinical CT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .region_labels import (  # noqa: F401  (the labels were part of this module)
    ABDOMEN,
    CHEST,
    HEAD,
    NECK,
    REGION_CHOICES,
    REGIONS,
    UNKNOWN,
    SliceRegions,
    given_regions,
)

POOLED_PIXEL_MM = 2.0
BODY_ABOVE_HU = -500.0
LUNG_RANGE_HU = (-960.0, -500.0)
BONE_ABOVE_HU = 300.0
OPENING_MM = 10.0
SKULL_RAYS = 72
SKULL_RAY_SAMPLES = 160
#: Rays meet bone in this outer share of their way from the body's centre to the skin.
SKULL_OUTER_SHARE = 0.4
#: Decision thresholds (set on three real heads and the chest/abdomen corpus; see the model card).
SMALL_BODY_CM2 = 350.0
SKULL_COVER = 0.6
LUNG_SHARE = 0.05
TEETH_ABOVE_HU = 2000.0
TEETH_CM2 = 0.5
#: Teeth mark the face only in a body this small (real faces 200-260 cm^2): larger ones with dense spots above
#: 2000 HU are metal in a neck or shoulder (clips, ports, implants).
FACE_CM2 = 280.0
MIN_BODY_CM2 = 10.0
#: A CT slice's body is mostly fat and soft tissue (the skull cap, the boniest, keeps over 30%); uniform random
#: values over the HU range keep under 10%.
MIN_SOFT_TISSUE_SHARE = 0.15
SOFT_TISSUE_HU = (-150.0, 150.0)
#: Clinical CT: fields of view (cm) and pixel sizes (mm) a slice must lie within for a region to be read.
FIELD_OF_VIEW_CM = (10.0, 80.0)
PIXEL_MM = (0.2, 1.5)
FEATURE_NAMES = ("body_cm2", "lung_share", "skull_cover", "soft_tissue_share", "teeth_cm2", "edge_share")
#: More of the image's edge inside the body than this and the field of view cuts the body (a zoomed
#: reconstruction): its size, lungs and skull cannot be read. Tight fields of view of real chest CTs reach 0.26
#: (the corpus), spine-zoomed reconstructions 0.6 and more.
MAX_EDGE_SHARE = 0.4
#: Neighbours on each side whose agreement overrules an isolated label.
SMOOTHING_NEIGHBOURS = 2


@dataclass
class RegionFeatures:
    """What :func:`region_features` measures on each slice (arrays of length ``num_slices``)."""

    body_cm2: np.ndarray
    lung_share: np.ndarray
    skull_cover: np.ndarray
    soft_tissue_share: np.ndarray
    teeth_cm2: np.ndarray
    #: Share of the image's edge covered by the body: a field of view that cuts the body.
    edge_share: np.ndarray

    @classmethod
    def concatenate(cls, parts: Sequence[RegionFeatures]) -> RegionFeatures:
        """The features of consecutive batches of one series, as one."""
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in FEATURE_NAMES))


def region_features(hu: torch.Tensor, pixel_spacing_mm: Sequence[float]) -> RegionFeatures:
    """Body area (cm^2), lung share, skull cover, soft-tissue share and teeth area (cm^2) of each slice of ``hu``
    ``(B, H, W)`` (HU, any device). ``pixel_spacing_mm`` is ``(x, y)``."""
    spacing = float(max(pixel_spacing_mm[0], pixel_spacing_mm[1]))
    pool = max(1, int(round(POOLED_PIXEL_MM / max(spacing, 1e-3))))
    image = hu.float().unsqueeze(1)
    mean = F.avg_pool2d(image, pool, ceil_mode=True)
    peak = _block_max(image, pool)
    pixel_cm2 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * pool * pool / 100.0
    opening = max(1, int(round(OPENING_MM / (spacing * pool))) // 2 * 2 + 1)
    tissue = mean > BODY_ABOVE_HU
    body = _open(tissue, opening)
    filled = _fill_holes(body)
    enclosed = filled & ~tissue
    lung = enclosed & (mean > LUNG_RANGE_HU[0]) & (mean < LUNG_RANGE_HU[1])
    body_pixels = filled.flatten(1).sum(1).float()
    soft = tissue & body & (mean > SOFT_TISSUE_HU[0]) & (mean < SOFT_TISSUE_HU[1])
    tissue_pixels = (tissue & body).flatten(1).sum(1).float()
    features = torch.stack([
        body_pixels * pixel_cm2,
        lung.flatten(1).sum(1).float() / body_pixels.clamp(min=1),
        _skull_cover(peak, filled),
        soft.flatten(1).sum(1).float() / tissue_pixels.clamp(min=1),
        ((peak > TEETH_ABOVE_HU) & filled).flatten(1).sum(1).float() * pixel_cm2,
        _edge_share(body),
    ])
    # one copy from the device for all of them
    return RegionFeatures(*features.cpu().numpy().astype(np.float64))


def slice_labels(features: RegionFeatures) -> Tuple[List[str], List[str]]:
    """Each slice's region read on its own, and the reason for each ``unknown``."""
    regions, reasons = [], []
    for area, lung, skull, soft, teeth, edge in zip(features.body_cm2, features.lung_share, features.skull_cover,
                                                    features.soft_tissue_share, features.teeth_cm2,
                                                    features.edge_share):
        reason = ""
        if not area >= MIN_BODY_CM2:
            region = UNKNOWN
            reason = f"no body in the slice (under {MIN_BODY_CM2:.0f} cm2 above {BODY_ABOVE_HU:.0f} HU)"
        elif not soft >= MIN_SOFT_TISSUE_SHARE:
            region, reason = UNKNOWN, (f"not a CT image in HU: only {soft:.0%} of the body is soft tissue or fat "
                                       f"({SOFT_TISSUE_HU[0]:.0f}..{SOFT_TISSUE_HU[1]:.0f} HU)")
        elif edge > MAX_EDGE_SHARE:
            region = UNKNOWN
            reason = f"the field of view cuts the body ({edge:.0%} of the image's edge lies in it)"
        elif (area < SMALL_BODY_CM2 and skull >= SKULL_COVER) or (area < FACE_CM2 and teeth >= TEETH_CM2):
            region = HEAD
        elif lung > LUNG_SHARE:
            region = CHEST
        elif area < SMALL_BODY_CM2:
            region = NECK
        else:
            region = ABDOMEN
        regions.append(region)
        reasons.append(reason)
    return regions, reasons


def series_labels(z_mm: Sequence[float], regions: Sequence[str]) -> List[str]:
    """Slice labels read along z in anatomical order (see the module's description)."""
    z = np.asarray(z_mm, dtype=np.float64)
    order = np.argsort(-z, kind="stable")  # head first
    labels = [regions[n] for n in order]
    labels = _smooth(labels)
    lung_at = [n for n, label in enumerate(labels) if label == CHEST]
    upper_at = [n for n, label in enumerate(labels) if label in (HEAD, NECK)]
    head_at = [n for n, label in enumerate(labels) if label == HEAD]
    resolved = list(labels)
    for n, label in enumerate(labels):
        lung_above = bool(lung_at) and lung_at[0] < n
        lung_below = bool(lung_at) and lung_at[-1] > n
        if label == ABDOMEN and not lung_above:
            if lung_below:
                resolved[n] = CHEST  # the shoulder girdle above the lung apices
            elif upper_at and upper_at[0] < n:
                resolved[n] = NECK  # the base of the neck below a head or neck
        elif label == NECK and lung_above:
            resolved[n] = ABDOMEN  # pelvis or thighs: small, but below the chest
        elif label == NECK and head_at and head_at[-1] > n:
            resolved[n] = HEAD  # face or vertex: head lies below it
    result = [""] * len(resolved)
    for position, n in enumerate(order):
        result[n] = resolved[position]
    return result


def image_outside_clinical_ct(shape_yx: Sequence[int], pixel_spacing_mm: Sequence[float]) -> Optional[str]:
    """Why slices of this matrix and pixel size are not those of a clinical CT (``None`` when they are)."""
    width_cm = shape_yx[1] * float(pixel_spacing_mm[0]) / 10.0
    height_cm = shape_yx[0] * float(pixel_spacing_mm[1]) / 10.0
    if not (FIELD_OF_VIEW_CM[0] <= max(width_cm, height_cm) <= FIELD_OF_VIEW_CM[1]):
        return (f"field of view {width_cm:.0f} x {height_cm:.0f} cm is outside clinical CT "
                f"({FIELD_OF_VIEW_CM[0]:.0f}-{FIELD_OF_VIEW_CM[1]:.0f} cm)")
    largest = max(float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    if not (PIXEL_MM[0] <= largest <= PIXEL_MM[1]):
        return f"pixel size {largest:.2f} mm is outside clinical CT ({PIXEL_MM[0]}-{PIXEL_MM[1]} mm)"
    return None


def detect_regions(features: RegionFeatures, z_mm: Sequence[float], shape_yx: Sequence[int],
                   pixel_spacing_mm: Sequence[float]) -> SliceRegions:
    """The body region of every slice of one series from its :func:`region_features`."""
    outside = image_outside_clinical_ct(shape_yx, pixel_spacing_mm)
    count = len(features.body_cm2)
    if outside:
        return SliceRegions([UNKNOWN] * count, [outside] * count)
    regions, reasons = slice_labels(features)
    return SliceRegions(series_labels(z_mm, regions), reasons)


def _smooth(labels: List[str]) -> List[str]:
    """An isolated label whose neighbours (up to :data:`SMOOTHING_NEIGHBOURS` on each side) all agree on another
    known region takes theirs; ``unknown`` slices keep their reason and are never changed."""
    smoothed = list(labels)
    for n, label in enumerate(labels):
        if label == UNKNOWN:
            continue
        around = [labels[m] for m in range(max(0, n - SMOOTHING_NEIGHBOURS),
                                           min(len(labels), n + SMOOTHING_NEIGHBOURS + 1)) if m != n]
        known = [other for other in around if other != UNKNOWN]
        if len(known) >= 2 and len(set(known)) == 1 and known[0] != label:
            smoothed[n] = known[0]
    return smoothed


def _edge_share(body: torch.Tensor) -> torch.Tensor:
    """Share of the outermost pixels of each image ``(B, 1, H, W)`` that lie in the body."""
    edges = torch.cat([body[:, 0, 0, :], body[:, 0, -1, :], body[:, 0, 1:-1, 0], body[:, 0, 1:-1, -1]], dim=1)
    return edges.float().mean(dim=1)


def _block_max(image: torch.Tensor, pool: int) -> torch.Tensor:
    """Largest value in each ``pool`` x ``pool`` block of ``image`` ``(B, 1, H, W)``, blocks at the far edges cut
    short (``max_pool2d(image, pool, ceil_mode=True)``), taken as two reductions over views of the image, which
    costs a fraction of that pooling (it keeps where each maximum lay)."""
    if pool == 1:
        return image
    batch, _, height, width = image.shape
    rows, columns = -(-height // pool), -(-width // pool)
    padding = (0, columns * pool - width, 0, rows * pool - height)
    padded = F.pad(image[:, 0], padding, value=float("-inf")) if any(padding) else image[:, 0]
    across = padded.view(batch, rows * pool, columns, pool).amax(dim=-1)
    return across.view(batch, rows, pool, columns).amax(dim=2).unsqueeze(1)


def _open(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening of ``mask`` ``(B, 1, H, W)`` by a ``size`` square (odd): removes structures thinner
    than it (table, holders). The square's window is clipped at the image's edge."""
    return _square(_square(mask, size, erode=True), size, erode=False)


def _square(mask: torch.Tensor, size: int, erode: bool) -> torch.Tensor:
    """Erosion (``erode``) or dilation of a boolean ``mask`` ``(..., H, W)`` by a ``size`` square (odd), rows then
    columns, as shifted copies combined in place (boolean work, no pooling of floats); outside the image counts
    for nothing, as in a window clipped at the edge."""
    result = mask
    for dim in (-1, -2):
        source, result = result, result.clone()
        length = source.shape[dim]
        for shift in range(1, min(size // 2, length - 1) + 1):
            for into, take in ((shift, 0), (0, shift)):
                target, other = result.narrow(dim, into, length - shift), source.narrow(dim, take, length - shift)
                if erode:
                    target &= other
                else:
                    target |= other
    return result


def _fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` ``(B, 1, H, W)`` with every region it encloses filled: the background is what can be reached
    from the image's border without crossing the mask, moving to any of the 8 neighbours.

    Grown a whole row and a whole column at a time (every background run that touches a reached pixel is reached
    along its length), then by one step to the 8 neighbours, until nothing changes: the same pixels as 8-neighbour
    steps alone, in as many rounds as the way out has turns (2-5 on real slices) rather than pixels (about 90)."""
    background = ~mask
    across = background.transpose(-1, -2).contiguous()
    reached = torch.zeros_like(mask)
    for edge in ((..., 0, slice(None)), (..., -1, slice(None)), (..., slice(None), 0), (..., slice(None), -1)):
        reached[edge] = background[edge]
    while True:
        grown = _along_runs(reached, background)
        grown = _along_runs(grown.transpose(-1, -2).contiguous(), across).transpose(-1, -2)
        grown = _square(grown, 3, erode=False) & background
        if torch.equal(grown, reached):
            return ~reached
        reached = grown


def _along_runs(reached: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``reached`` grown along the rows of ``background`` (both boolean, ``(..., W)``): a run of background pixels
    in a row is reached all along when any of its pixels is."""
    rows = background.reshape(-1, background.shape[-1])
    starts = rows.clone()
    starts[:, 1:] &= ~rows[:, :-1]
    run = starts.reshape(-1).cumsum(0)  # one number per run in the batch (a mask pixel: that of the run before it)
    hit = torch.zeros(run.numel() + 1, dtype=torch.uint8, device=run.device)
    hit.scatter_reduce_(0, run, reached.reshape(-1).to(torch.uint8), "amax")
    return hit.take(run).reshape(background.shape).bool() & background


def _skull_cover(peak: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """Share of rays from the body's centre that meet bone in the outer part of their way to the skin."""
    batch, _, height, width = peak.shape
    weight = body[:, 0].float()
    mass = weight.sum(dim=(1, 2)).clamp(min=1.0)
    ys = torch.arange(height, device=peak.device, dtype=torch.float32)
    xs = torch.arange(width, device=peak.device, dtype=torch.float32)
    centre_y = (weight.sum(dim=2) * ys).sum(dim=1) / mass
    centre_x = (weight.sum(dim=1) * xs).sum(dim=1) / mass
    angles = torch.arange(SKULL_RAYS, device=peak.device, dtype=torch.float32) * (2.0 * math.pi / SKULL_RAYS)
    radii = torch.linspace(0.0, math.hypot(height, width), SKULL_RAY_SAMPLES, device=peak.device)
    x = centre_x[:, None, None] + torch.cos(angles)[None, :, None] * radii[None, None, :]
    y = centre_y[:, None, None] + torch.sin(angles)[None, :, None] * radii[None, None, :]
    grid = torch.stack([(x + 0.5) / width * 2.0 - 1.0, (y + 0.5) / height * 2.0 - 1.0], dim=-1)
    bone = F.grid_sample(peak, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0] > BONE_ABOVE_HU
    inside = F.grid_sample(body.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0] > 0.5
    step = torch.arange(SKULL_RAY_SAMPLES, device=peak.device)
    skin = torch.where(inside, step, torch.full_like(step, -1)).max(dim=-1).values
    outer = (step >= (1.0 - SKULL_OUTER_SHARE) * skin[..., None]) & (step <= skin[..., None]) & inside
    return (bone & outer).any(dim=-1).float().mean(dim=-1)


def volume_regions(volume, batch_size: int = 16, device: Optional[torch.device] = None) -> SliceRegions:
    """The body region of every slice of a :class:`~DistilIQALib.volume.CTVolume` (read a batch at a time)."""
    parts = []
    for start in range(0, volume.num_slices, batch_size):
        hu = torch.from_numpy(np.ascontiguousarray(volume.hu[start:start + batch_size], dtype=np.float32))
        parts.append(region_features(hu.to(device) if device is not None else hu, volume.spacing_mm[:2]))
    return detect_regions(RegionFeatures.concatenate(parts), volume.z_mm(), volume.hu.shape[1:], volume.spacing_mm[:2])

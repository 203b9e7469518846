"""The CMS CT measure's category of an exam, from what the engine reads and what the exam says of itself.

The measure assigns a category from procedure and diagnosis codes in the steward's software, which it does not
publish; its categories group exams by body region and by the dose the clinical indication needs (Smith-Bindman
et al., "An Image Quality-informed Framework for CT Characterization", Radiology 2022: head, chest, cardiac and
abdomen each low, routine and high; head and neck routine and high; one range for extremities, neck, thoracic or
lumbar spine, chest with abdomen, and thoracic with lumbar spine). Images carry no procedure codes, so here:

* the **body area** comes from the regions the engine reads on each scored series' slices
  (:mod:`DistilIQALib.quality.regions`), unless a description names an area the regions cannot show (a heart,
  a spine, a limb, a whole body), or the regions give none;
* the **dose level** comes from the descriptions (low dose, screening, stone; perfusion, multiphase), else from
  the number of diagnostic acquisitions in the dose report (a multiphase abdomen or chest is high dose), else
  routine.

The rules live in a JSON mapping file a site can edit (the default, documented in its ``about``, is
``exam_categories.json`` beside this module). ``--exam-category`` overrides all of it. Every category says where
it came from (``category_source``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import InputError
from . import cms

DEFAULT_MAPPING = Path(__file__).with_name("exam_categories.json")
#: Irradiation event types (DCM codes' meanings as dose reports state them) that are diagnostic acquisitions;
#: localizers (Constant Angle) and bolus tracking (Stationary) are not.
DIAGNOSTIC_ACQUISITIONS = ("spiral", "helical", "sequenced", "axial", "free")


@dataclass(frozen=True)
class Mapping:
    min_share: float
    region_rules: Tuple[Tuple[frozenset, str], ...]
    text_rules: Tuple[Tuple[re.Pattern[str], Optional[str], Optional[str], bool], ...]
    high_from_acquisitions: Dict[str, int]
    soft_tissue_kernels_exclude: Optional[re.Pattern[str]]
    source: str


def load_mapping(path: Optional[os.PathLike] = None) -> Mapping:
    """Read a category mapping file (default: the shipped one); a bad file is an :class:`InputError` that names
    what is wrong."""
    path = Path(path) if path else DEFAULT_MAPPING
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no such category mapping file: {path}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"category mapping {path} is not valid JSON: {error}") from None
    try:
        regions = data.get("area_from_regions", {})
        region_rules = tuple((frozenset(rule["regions"]), _area(rule["area"])) for rule in regions.get("rules", []))
        text_rules = tuple((re.compile(rule["pattern"], re.IGNORECASE), _area(rule.get("area")),
                            _level(rule.get("level")), bool(rule.get("over_regions", False)))
                           for rule in data.get("text_rules", []))
        high = {_area(area): int(count) for area, count in data.get("high_from_acquisitions", {}).items()}
        kernels = data.get("soft_tissue_kernels_exclude")
        return Mapping(float(regions.get("min_share", 0.25)), region_rules, text_rules, high,
                       re.compile(kernels, re.IGNORECASE) if kernels else None, str(path))
    except (KeyError, TypeError, AttributeError, re.error, ValueError) as error:
        raise InputError(f"category mapping {path}: {error}") from None


def _area(area: Optional[str]) -> Optional[str]:
    if area is not None and area not in cms.AREAS:
        raise ValueError(f"unknown area {area!r} (one of {', '.join(cms.AREAS)})")
    return area


def _level(level: Optional[str]) -> Optional[str]:
    if level is not None and level not in cms.LEVELS:
        raise ValueError(f"unknown level {level!r} (one of {', '.join(cms.LEVELS)})")
    return level


@dataclass
class ExamFacts:
    """What the category is read from. ``series_regions``: per scored series, its slices' regions; ``texts``:
    ``(what, text)`` pairs such as ``("study description", "CT ABD PELVIS W")``; ``acquisition_types``: the
    acquisition type of each irradiation event of the exam's dose reports."""

    series_regions: Sequence[Sequence[str]] = ()
    texts: Sequence[Tuple[str, str]] = ()
    acquisition_types: Sequence[str] = ()


def exam_regions(series_regions: Iterable[Sequence[str]], min_share: float) -> Dict[str, float]:
    """Regions that cover at least ``min_share`` of some series' slices with a region, with the largest share
    each reaches (unknown slices left out)."""
    found: Dict[str, float] = {}
    for regions in series_regions:
        known = [region for region in regions if region and region != "unknown"]
        for region in set(known):
            share = known.count(region) / len(known)
            if share >= min_share:
                found[region] = max(found.get(region, 0.0), share)
    return found


def _diagnostic_acquisitions(types: Sequence[str]) -> int:
    return sum(any(word in (kind or "").lower() for word in DIAGNOSTIC_ACQUISITIONS) for kind in types)


def exam_category(facts: ExamFacts, mapping: Optional[Mapping] = None,
                  override: Optional[str] = None) -> Tuple[Optional[cms.Category], str]:
    """``(category or None, category_source)``. The source says which of the override, the regions, a text (and
    which) or the dose report's acquisitions set the area and the level."""
    if override:
        category = cms.find_category(override)
        if category is None:
            raise InputError(f"--exam-category {override!r} is not one of the measure's categories "
                             f"({'; '.join(c.name for c in cms.CATEGORIES)})")
        return category, "override (--exam-category)"
    mapping = mapping or load_mapping()
    regions = exam_regions(facts.series_regions, mapping.min_share)
    region_area = next((area for wanted, area in mapping.region_rules if wanted == frozenset(regions)), None)
    text_area = fallback_area = level = None
    area_text = level_text = ""
    for pattern, area, rule_level, over_regions in mapping.text_rules:
        for what, text in facts.texts:
            if not text or not pattern.search(text):
                continue
            if area and over_regions and text_area is None:
                text_area, area_text = area, f"{what} {text!r}"
            if area and not over_regions and fallback_area is None:
                fallback_area, fallback_text = area, f"{what} {text!r}"
            if rule_level and level is None:
                level, level_text = rule_level, f"{what} {text!r}"
    shares = ", ".join(f"{region} {100 * share:.0f}%" for region, share in sorted(regions.items()))
    if text_area:
        area, source = text_area, f"area from {area_text}"
    elif region_area:
        area, source = region_area, f"area from regions ({shares})"
    elif fallback_area:
        area, source = fallback_area, f"area from {fallback_text}" + (
            f" (regions {shares} match no rule)" if regions else "")
    else:
        reason = f"regions {shares} match no rule" if regions else "no region read"
        return None, f"none: {reason} and no description names an area"
    if level:
        source += f"; level {level} from {level_text}"
    else:
        needed = mapping.high_from_acquisitions.get(area)
        count = _diagnostic_acquisitions(facts.acquisition_types)
        if needed and count >= needed:
            level = cms.HIGH
            source += f"; level high from {count} diagnostic acquisitions in the dose report"
    return cms.category_for(area, level), source


def is_soft_tissue_kernel(kernel: Optional[str], mapping: Mapping) -> bool:
    """Whether a reconstruction kernel's name reads as soft tissue (not lung, bone or sharp); unknown counts."""
    if not kernel or mapping.soft_tissue_kernels_exclude is None:
        return True
    return not mapping.soft_tissue_kernels_exclude.search(str(kernel))


def texts_of(study_descriptions: Iterable[str] = (), protocols: Iterable[str] = (),
             series_descriptions: Iterable[str] = (), body_parts: Iterable[str] = ()) -> List[Tuple[str, str]]:
    """The ``(what, text)`` pairs a category is read from, in the order the text rules look at them, each once."""
    pairs: List[Tuple[str, str]] = []
    for what, values in (("study description", study_descriptions), ("protocol", protocols),
                         ("series description", series_descriptions), ("body part", body_parts)):
        for value in values:
            text = " ".join(str(value or "").split())
            if text and (what, text) not in pairs:
                pairs.append((what, text))
    return pairs

"""The US CMS CT measure's check of one exam: its category, thresholds, exclusions and out-of-range test.

The measure is "Excessive Radiation Dose or Inadequate Image Quality for Diagnostic Computed Tomography (CT) in
Adults" (CMS1074 hospital inpatient, CMS1206 hospital outpatient, CMS1056 / MIPS 494 clinician; steward Alara
Imaging, Inc.). What this module computes is an **open computation of the measure's inputs and of its
out-of-range check, not the certified measure**: the steward's own translation software defines the global noise,
the size adjustment and the category rules, and does not publish them. Here each of the three is a stated choice
(see below, and :mod:`~DistilIQALib.dose.categories` for the categories).

The steward's licence terms, quoted from the measure's own header (``copyright`` of
``input/resources/measure/CMS1074FHIRCTIQR.json`` in GitHub cqframework/ecqm-content-qicore-2025 at
db5a7e143304b19b70cbf6a89e5ebeab9e40df61), are in :data:`LICENCE`.

Facts from the measure's CQL, ``input/cql/AlaraCommonFunctions.cql`` (library AlaraCommonFunctions 1.10.000) and
``input/cql/CMS1074FHIRCTIQR.cql`` (0.9.000) at that commit:

* the 18 categories with their LOINC answer codes and thresholds (function ``"CT Scan Qualifies"``), and Full Body
  (LA31771-1), a denominator exclusion;
* out of range when ``global noise >= noise threshold or size-adjusted dose >= dose threshold`` (``"Qualifies"``:
  both inclusive; the measure's test cases under ``input/tests/measure/CMS1074FHIRCTIQR/`` agree: 63 HU and
  599 mGy.cm count in Abdomen and Pelvis Low Dose's numerator, 63 and 597 do not);
* a scan without a category, a global noise or a size-adjusted dose is not in the denominator; patients are
  adults (18 or older at the start of the measurement period).

The three choices left to the vendor:

1. **Global noise**: the engine's global noise index (:mod:`DistilIQALib.quality.noise`; Christianson et al.,
   AJR 2015, doi:10.2214/AJR.14.13613: local SD in a 6 mm kernel over soft tissue, the histogram's mode, which
   agreed with phantom and ROI noise within 3.4-4.7% on 2358 abdominopelvic exams), per slice, on the exam's
   soft-tissue series (a soft reconstruction kernel, 2 mm or thicker where there is one: a sharp kernel alone
   can push an exam over a threshold, Weaver et al., JACMP 2025, doi:10.1002/acm2.70288); the exam's value is
   the median over that series' slices. See :func:`DistilIQALib.dose.exams.global_noise_series`.
2. **Size adjustment**: :func:`size_specific_dlp`, the DLP times the SSDE conversion factor of the exam's CTDI
   phantom at the mid-scan water-equivalent diameter (AAPM Report 204 with Dw per AAPM Report 220; one mid-scan
   Dw stands for the scan, Leng et al., Radiology 2015;276:184). It is the one published, standard correction of
   scanner output for patient size; LOINC 96913-9 says only "adjusted for patient size using the average midscan
   diameter". The factor is above 1 for a patient smaller than 35.7 cm on the body phantom (1.23 at 30 cm), so
   the values read higher than the DLP for most adults. Any other function of the same signature can be passed
   instead (:data:`SizeAdjustment`).
3. **Category**: from the regions the engine reads on the exam's slices and the exam's descriptions, through a
   mapping file a site can edit (:mod:`DistilIQALib.dose.categories`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

MEASURE_TITLE = ("Excessive Radiation Dose or Inadequate Image Quality for Diagnostic Computed Tomography (CT) "
                 "in Adults")
MEASURE_IDS = "CMS1074, CMS1206, CMS1056 (MIPS 494)"
SOURCE_REPOSITORY = "GitHub cqframework/ecqm-content-qicore-2025"
SOURCE_COMMIT = "db5a7e143304b19b70cbf6a89e5ebeab9e40df61"
SOURCE_FILE = "input/cql/AlaraCommonFunctions.cql (library AlaraCommonFunctions 1.10.000)"
#: What must be said wherever the measure is named.
NOT_CERTIFIED = (f"An open computation of the inputs and out-of-range check of the CMS CT measure "
                 f"\"{MEASURE_TITLE}\" ({MEASURE_IDS}), not the certified measure: the global noise, size "
                 "adjustment and exam category are this tool's own stated definitions, not the steward's "
                 "translation software.")
#: The steward's licence terms, quoted from the measure's header (``copyright`` of
#: ``input/resources/measure/CMS1074FHIRCTIQR.json`` at :data:`SOURCE_COMMIT`).
LICENCE = ("Copyright (C) 2025 Alara Imaging, Inc. All Rights Reserved. \"The Measure can be reproduced and "
           "distributed, without modification, for noncommercial purposes (e.g., use by healthcare providers in "
           "connection with their practices). Commercial use is defined as the sale, licensing, or distribution of "
           "the Measure for commercial gain, or incorporation of the Measure into a product or service that is "
           "sold, licensed or distributed for commercial gain. All commercial uses or requests for modification "
           "must be approved by Alara Imaging, Inc. and are subject to a license at the discretion of Alara "
           "Imaging, Inc.\"")

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_CODE = ("96914-7", "CT dose and image quality category")
NOISE_CODE = ("96912-1", "Calculated CT global noise")
DOSE_CODE = ("96913-9", "Calculated CT size-adjusted dose")
#: The unit strings the measure's CQL compares literally (a scan with any other unit leaves the denominator).
NOISE_UNIT = "[hnsf'U]"
DOSE_UNIT = "mGy.cm"
MIN_AGE_YEARS = 18
#: Values are compared (and written to FHIR) rounded to this many decimals, so that a reader of the FHIR result
#: reaches the same verdict.
DECIMALS = 1

#: Areas and dose levels of :mod:`~DistilIQALib.dose.categories`.
LOW, ROUTINE, HIGH = "low", "routine", "high"
LEVELS = (LOW, ROUTINE, HIGH)


@dataclass(frozen=True)
class Category:
    """One of the measure's exam categories: LOINC answer code, thresholds (``None`` for Full Body), the body area
    it covers and its dose level (``None`` where the area has one category)."""

    name: str
    code: str
    noise_hu: Optional[float]
    dose_mgycm: Optional[float]
    area: str
    level: Optional[str] = None


FULL_BODY = "Full Body"
#: The measure's table ("CT Scan Qualifies") and Full Body, in its order.
CATEGORIES: Tuple[Category, ...] = (
    Category("Abdomen and Pelvis Low Dose", "LA31752-1", 64, 598, "abdomen_pelvis", LOW),
    Category("Abdomen and Pelvis Routine Dose", "LA31753-9", 29, 644, "abdomen_pelvis", ROUTINE),
    Category("Abdomen and Pelvis High Dose", "LA31754-7", 29, 1260, "abdomen_pelvis", HIGH),
    Category("Cardiac Low Dose", "LA31755-4", 55, 93, "cardiac", LOW),
    Category("Cardiac Routine Dose", "LA31756-2", 32, 576, "cardiac", ROUTINE),
    Category("Chest Low Dose", "LA31758-8", 55, 377, "chest", LOW),
    Category("Chest Routine Dose", "LA31759-6", 49, 377, "chest", ROUTINE),
    Category("Cardiac High Dose or Chest High Dose", "LA31761-2", 49, 1282, "chest", HIGH),
    Category("Head Low Dose", "LA31762-0", 115, 582, "head", LOW),
    Category("Head Routine Dose", "LA31763-8", 115, 1025, "head", ROUTINE),
    Category("Head High Dose", "LA31764-6", 115, 1832, "head", HIGH),
    Category("Extremity", "LA31765-3", 73, 320, "extremity"),
    Category("Neck or Cervical Spine", "LA31766-1", 25, 1260, "neck"),
    Category("Thoracic or Lumbar Spine", "LA31767-9", 25, 1260, "spine"),
    Category("Simultaneous Chest and Abdomen and Pelvis", "LA31768-7", 29, 1637, "chest_abdomen_pelvis"),
    Category("Simultaneous Thoracic and Lumbar Spine", "LA31851-1", 25, 2520, "thoracolumbar_spine"),
    Category("Simultaneous Head and Neck Routine Dose", "LA31769-5", 25, 2285, "head_neck", ROUTINE),
    Category("Simultaneous Head and Neck High Dose", "LA31770-3", 25, 3092, "head_neck", HIGH),
    Category(FULL_BODY, "LA31771-1", None, None, "full_body"),
)
BY_NAME: Dict[str, Category] = {category.name: category for category in CATEGORIES}
BY_CODE: Dict[str, Category] = {category.code: category for category in CATEGORIES}
AREAS = tuple(dict.fromkeys(category.area for category in CATEGORIES))


def category_for(area: str, level: Optional[str] = None) -> Category:
    """The category of a body area at a dose level (routine when not given; an area without that level takes its
    routine one, or its only one). Cardiac high dose is the measure's shared "Cardiac High Dose or Chest High
    Dose"."""
    if area == "cardiac" and level == HIGH:
        area = "chest"
    choices = [category for category in CATEGORIES if category.area == area]
    if not choices:
        raise ValueError(f"unknown body area {area!r}; one of {', '.join(AREAS)}")
    for wanted in (level or ROUTINE, ROUTINE):
        for category in choices:
            if category.level == wanted:
                return category
    return choices[0]


def find_category(text: str) -> Optional[Category]:
    """A category given by name (any case, extra spaces allowed) or LOINC answer code; ``None`` when none."""
    key = " ".join(str(text).split()).lower()
    for category in CATEGORIES:
        if key in (category.name.lower(), category.code.lower()):
            return category
    return None


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25, "": 365.25}


def age_in_years(text) -> Optional[float]:
    """Years of a DICOM Age String (``045Y``, ``018M``, ``010W``, ``005D``) or a plain number; ``None`` when it is
    missing or does not read as an age."""
    if text is None:
        return None
    match = _AGE.match(str(text))
    if not match:
        return None
    return int(match.group(1)) * _DAYS_PER[match.group(2).upper()] / 365.25


#: ``(DLP in mGy.cm, water-equivalent diameter in cm or None, CTDI phantom 'head16' / 'body32' or None)`` -> the
#: size-adjusted DLP, or ``None`` when it cannot be had.
SizeAdjustment = Callable[[float, Optional[float], Optional[str]], Optional[float]]


def size_specific_dlp(dlp_mgycm: float, dw_cm: Optional[float], phantom: Optional[str]) -> Optional[float]:
    """The default size adjustment: DLP times the SSDE conversion factor (AAPM Report 204, Dw per AAPM Report 220)
    of ``phantom`` at the mid-scan water-equivalent diameter ``dw_cm``; ``None`` without a diameter or phantom."""
    from .size import ssde_mgy

    if dlp_mgycm is None or dw_cm is None or phantom is None:
        return None
    factor = ssde_mgy(1.0, phantom, dw_cm)
    return None if factor is None else float(dlp_mgycm) * float(factor)


@dataclass(frozen=True)
class Check:
    """The measure's check of one exam: ``out_of_range`` is ``yes``, ``no`` or ``unknown``, with its reason."""

    out_of_range: str
    reason: str


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), DECIMALS)


def check_exam(category: Optional[Category], global_noise_hu: Optional[float],
               size_adjusted_dlp_mgycm: Optional[float], patient_age=None) -> Check:
    """Whether an exam is out of the measure's range: ``yes`` when its global noise or size-adjusted DLP (each
    rounded to :data:`DECIMALS`) reaches its category's threshold, ``no`` when neither does, ``unknown`` (with
    the reason) when the measure does not count the exam: no category, Full Body, a patient under 18 or of
    unrecorded age, or a missing value."""
    if category is None:
        return Check("unknown", "no exam category: give --exam-category or edit the category mapping file")
    if category.noise_hu is None or category.dose_mgycm is None:
        return Check("unknown", f"excluded: {category.name} is a denominator exclusion of the measure")
    age = age_in_years(patient_age)
    if patient_age not in (None, "") and age is None:
        return Check("unknown", f"patient age {patient_age!r} does not read as an age; the measure counts adults")
    if age is None:
        return Check("unknown", "patient age not recorded; the measure counts adults (18 or older) only")
    if age < MIN_AGE_YEARS:
        return Check("unknown", f"excluded: patient under {MIN_AGE_YEARS} (age {patient_age})")
    noise, dose = _rounded(global_noise_hu), _rounded(size_adjusted_dlp_mgycm)
    parts = []
    if noise is not None:
        parts.append(f"global noise {noise:g} HU {'>=' if noise >= category.noise_hu else '<'} "
                     f"{category.noise_hu:g}")
    if dose is not None:
        parts.append(f"size-adjusted DLP {dose:g} mGy.cm {'>=' if dose >= category.dose_mgycm else '<'} "
                     f"{category.dose_mgycm:g}")
    missing = [name for name, value in (("global noise", noise), ("size-adjusted DLP", dose)) if value is None]
    if missing:
        return Check("unknown", f"no {' and no '.join(missing)}: not in the measure's denominator"
                     + (f" ({'; '.join(parts)})" if parts else "") + f" [{category.name}]")
    out = noise >= category.noise_hu or dose >= category.dose_mgycm
    return Check("yes" if out else "no", f"{'; '.join(parts)} [{category.name}]")

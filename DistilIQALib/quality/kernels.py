"""The reconstruction kernel's class from its name, per vendor: what a noise figure means depends on it.

A sharp (lung, bone, high-resolution) kernel leaves several times the noise of the soft-tissue kernel reconstructed
from the same raw data at the same dose, so its noise says nothing about the dose or about soft-tissue quality:
such a series gets no soft-tissue verdict. Classes:

* ``smooth``: softer than the vendor's standard soft-tissue kernel;
* ``standard``: the vendor's standard soft-tissue or brain kernels, what the routine references are fitted on;
* ``sharp``: lung, bone and high-resolution kernels;
* ``""``: a name this module does not know (judged as a standard kernel, as before).

Siemens: a letter family and a two-digit sharpness (B body, H head, D, I, J, Q, U; SOMATOM Definition/Force names as
Br40, Hr38, Qr40, Bv36; older scanners prefix it, "AH40"). The scanners' operating instructions (SOMATOM Sensation,
"Body Kernels") recommend B30/B40 as the standard kernels for body tissue, B10/B20 for softer images and B50-B80 for
higher sharpness (cervical spine, thorax, lung), U70-U90 for bone: here up to 29 smooth, 30-44 standard, 45 and
above sharp (sharper than the B41 closest to the standard). GE names its kernels: SOFT and SMOOTH smooth; STANDARD,
STND, DETAIL, CHEST, BRAIN and HEAD standard; LUNG, BONE, BONEPLUS, EDGE, SHARP and ULTRA sharp. Philips: A smooth,
B and C standard, D, E, L and the Y series (YA-YF) sharp; UA-UC (brain) standard. Canon/Toshiba: FC01-FC29 (body and
head soft tissue) standard, FC30 and above (bone, lung, high resolution) sharp.
"""
from __future__ import annotations

import re
from typing import Tuple

SMOOTH = "smooth"
STANDARD = "standard"
SHARP = "sharp"

_GE = {"SOFT": SMOOTH, "SMOOTH": SMOOTH, "STANDARD": STANDARD, "STND": STANDARD, "DETAIL": STANDARD,
       "CHEST": STANDARD, "BRAIN": STANDARD, "HEAD": STANDARD, "LUNG": SHARP, "BONE": SHARP, "BONEPLUS": SHARP,
       "EDGE": SHARP, "SHARP": SHARP, "ULTRA": SHARP}
_PHILIPS = {"A": SMOOTH, "B": STANDARD, "C": STANDARD, "D": SHARP, "E": SHARP, "L": SHARP, "UA": STANDARD,
            "UB": STANDARD, "UC": STANDARD}


def kernel_class(kernel: str, manufacturer: str = "") -> Tuple[str, str]:
    """``(class, description)`` of a DICOM ConvolutionKernel (0018,1210) of a scanner of ``manufacturer``
    (0008,0070); class ``""`` where the name is not known."""
    name = (kernel or "").split("\\")[0].strip().upper()
    vendor = (manufacturer or "").upper()
    if not name:
        return "", ""
    found = ""
    siemens = re.search(r"(?:^|[^A-Z])([A-Z]{1,2})(\d{2})[A-Z]?$", name.replace(" ", ""))
    toshiba = re.fullmatch(r"FC(\d{1,2})", name.replace(" ", ""))
    if toshiba and ("TOSHIBA" in vendor or "CANON" in vendor or not vendor):
        found = STANDARD if int(toshiba.group(1)) < 30 else SHARP
    elif "GE" in vendor.split() or vendor.startswith("GE ") or name.split()[-1] in _GE:
        found = _GE.get(name.replace("HD ", "").split()[-1], "")
    elif "PHILIPS" in vendor:
        found = SHARP if re.fullmatch(r"Y[A-F]", name) else _PHILIPS.get(name, "")
    elif siemens and ("SIEMENS" in vendor or not vendor):
        sharpness = int(siemens.group(2))
        found = SMOOTH if sharpness < 30 else STANDARD if sharpness < 45 else SHARP
    return found, (f"{found} reconstruction kernel ({kernel.strip()}"
                   f"{', ' + manufacturer.strip() if manufacturer.strip() else ''})" if found else "")


#: Philips iDose4: the noise reduction against filtered back-projection from the same raw data that the vendor states
#: for each of its levels 1-7, as quoted in the literature (Philips Healthcare's iDose4 white paper, 2011).
IDOSE_NOISE_REDUCTION = {1: 0.11, 2: 0.16, 3: 0.23, 4: 0.29, 5: 0.37, 6: 0.45, 7: 0.55}

#: Names of iterative (and deep-learning) reconstructions as vendors write them in the series description or the
#: kernel: (pattern on the upper-case text, name shown, the manufacturers that use it: any where empty).
_ITERATIVE_NAMES = (
    (r"IDOSE", "iDose", ()), (r"\bIMR\d?\b", "IMR", ("PHILIPS",)), (r"\bASIR-?V\b", "ASiR-V", ()),
    (r"\bASIR\b", "ASiR", ()), (r"\bVEO\b", "Veo", ("GE",)), (r"TRUE ?FIDELITY|\bDLIR\b", "TrueFidelity", ()),
    (r"\bSAFIRE\b", "SAFIRE", ()), (r"\bADMIRE\b", "ADMIRE", ()), (r"\bAIDR\b|\bAIDR ?3D\b", "AIDR 3D", ()),
    (r"\bAICE\b", "AiCE", ("TOSHIBA", "CANON")), (r"\bFIRST\b", "FIRST", ("TOSHIBA", "CANON")),
)


def iterative_reconstruction(description: str, kernel: str = "", manufacturer: str = "") -> Tuple[float, str]:
    """``(noise factor, description)`` of an iterative reconstruction named in a series' SeriesDescription
    (0008,103E) or ConvolutionKernel: the factor is the series' noise as a share of what filtered back-projection
    leaves at the same dose (``1.0``: filtered back-projection, or nothing named; NaN: an iterative reconstruction
    whose strength's noise reduction is not known here), the description '' where none is named.

    Known: Philips iDose4 with its level in the description ("iDose (3)", "iDose4 level 3", "iDose L3"), at the
    vendor's stated reduction (:data:`IDOSE_NOISE_REDUCTION`). Named but not quantified: IMR, ASiR, ASiR-V, Veo,
    TrueFidelity, SAFIRE (also Siemens I and J kernels), ADMIRE, AIDR 3D, AiCE and FIRST."""
    text = " ".join(part for part in (description or "", kernel or "") if part).upper()
    name = (kernel or "").split("\\")[0].strip().upper()
    vendor = (manufacturer or "").upper()
    found = next((shown for pattern, shown, vendors in _ITERATIVE_NAMES
                  if re.search(pattern, text) and (not vendors or any(v in vendor for v in vendors))), "")
    if not found and ("SIEMENS" in vendor or not vendor) and re.fullmatch(r"[IJ]\d{2}[A-Z]?", name):
        found = "SAFIRE"  # Siemens' SAFIRE kernels: I body, J head
    if not found:
        return 1.0, ""
    if found == "iDose":
        level = re.search(r"IDOSE\s*4?\s*(?:\(\s*L?\s*([1-7])\s*\)|(?:LEVEL|LVL|L)\s*([1-7])\b)", text)
        if level:
            value = int(level.group(1) or level.group(2))
            reduction = IDOSE_NOISE_REDUCTION[value]
            return 1.0 - reduction, (f"iterative reconstruction iDose4 level {value} ({reduction:.0%} less noise "
                                     "than filtered back-projection at the same dose, as the vendor states)")
    return float("nan"), f"iterative reconstruction {found}, of a strength whose noise reduction is not known here"

"""The CMS CT measure's result for each exam as FHIR (R4, QI-Core ``ObservationClinicalResult``), in a Bundle.

One Observation per exam whose category and both values are known, exactly as the measure's CQL reads it
(``input/cql/AlaraCommonFunctions.cql`` and ``CMS1074FHIRCTIQR.cql``, GitHub cqframework/ecqm-content-qicore-2025
at db5a7e143304b19b70cbf6a89e5ebeab9e40df61): ``status`` final, ``category`` imaging, ``code`` LOINC 96914-7,
``effectiveDateTime`` the study date, ``valueCodeableConcept`` the category's LOINC answer code, and one component
each of 96912-1 (global noise, unit and code ``[hnsf'U]``) and 96913-9 (size-adjusted dose, ``mGy.cm``), system
``http://unitsofmeasure.org``; the CQL compares the unit strings literally.

This is an open computation of the measure's inputs, not the certified measure; see
:data:`~DistilIQALib.dose.cms.NOT_CERTIFIED` and the steward's licence terms in
:data:`~DistilIQALib.dose.cms.LICENCE`, which the Bundle's ``meta`` and each Observation's ``note`` repeat.

Patients are referred to by a pseudonym (a Patient whose id is a keyed SHA-256 of the patient ID, the key a
user-given secret or one made per file) unless the user asks for the identifiers themselves. The JSON is built
here with the standard library; the tests check it with a FHIR model library.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import cms

PROFILE = "http://hl7.org/fhir/us/qicore/StructureDefinition/qicore-observation-clinical-result"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: Namespace of the Observations' ids (uuid5 of the study UID: the same study gives the same id in every run).
ID_NAMESPACE = uuid.UUID("6f1b1d6e-3c4a-5d2b-9e7f-1a2b3c4d5e6f")


def pseudonym(patient_id: Optional[str], key: bytes) -> str:
    """A stable pseudonym of a patient ID under ``key`` (HMAC-SHA-256, 32 hex digits)."""
    return hmac.new(key, str(patient_id or "").encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _effective(study_date: Optional[str]) -> Optional[str]:
    """DICOM DA ``YYYYMMDD`` -> FHIR ``YYYY-MM-DD`` (a date is a valid dateTime); ``None`` when it is not one."""
    text = str(study_date or "").strip().replace("-", "")
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return None


def _quantity(value: float, unit: str) -> Dict:
    return {"value": value, "unit": unit, "system": cms.UCUM, "code": unit}


def observation(exam: Dict, subject: str) -> Optional[Dict]:
    """The Observation of one exam row (``None`` when its category, either value or its date is missing)."""
    category = cms.find_category(exam.get("exam_category") or "")
    effective = _effective(exam.get("study_date"))
    noise, dose = exam.get("global_noise_hu"), exam.get("size_adjusted_dlp_mgycm")
    if category is None or noise is None or dose is None or effective is None:
        return None
    return {
        "resourceType": "Observation",
        "id": str(uuid.uuid5(ID_NAMESPACE, str(exam["study_uid"]))),
        "meta": {"profile": [PROFILE]},
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [{"system": cms.LOINC, "code": cms.CATEGORY_CODE[0], "display": cms.CATEGORY_CODE[1]}],
                 "text": cms.CATEGORY_CODE[1]},
        "subject": {"reference": subject},
        "effectiveDateTime": effective,
        "valueCodeableConcept": {"coding": [{"system": cms.LOINC, "code": category.code, "display": category.name}]},
        "component": [
            {"code": {"coding": [{"system": cms.LOINC, "code": cms.NOISE_CODE[0], "display": cms.NOISE_CODE[1]}]},
             "valueQuantity": _quantity(round(float(noise), cms.DECIMALS), cms.NOISE_UNIT)},
            {"code": {"coding": [{"system": cms.LOINC, "code": cms.DOSE_CODE[0], "display": cms.DOSE_CODE[1]}]},
             "valueQuantity": _quantity(round(float(dose), cms.DECIMALS), cms.DOSE_UNIT)},
        ],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{exam['study_uid']}"}],
        "note": [{"text": f"{cms.NOT_CERTIFIED} Category source: {exam.get('category_source')}."}],
    }


def bundle(exams: Sequence[Dict], patient_ids: Dict[str, Optional[str]], identify_patients: bool = False,
           key: Optional[bytes] = None) -> Dict:
    """A ``collection`` Bundle of the Observations of ``exams`` and one Patient per patient referred to.

    ``patient_ids`` maps each study UID to its patient ID; with ``identify_patients`` the Patient carries it as
    an identifier, otherwise only a pseudonym under ``key`` (a random key when none is given)."""
    key = key if key is not None else secrets.token_bytes(32)
    entries: List[Dict] = []
    patients: Dict[str, Dict] = {}
    for exam in exams:
        patient_id = patient_ids.get(exam["study_uid"])
        # without a patient ID the study stands for its patient (never one pseudonym for all unknown patients)
        reference = pseudonym(patient_id if patient_id else f"study {exam['study_uid']}", key)
        url = f"urn:uuid:{uuid.uuid5(ID_NAMESPACE, 'Patient/' + reference)}"
        item = observation(exam, url)
        if item is None:
            continue
        if reference not in patients:
            patient = {"resourceType": "Patient", "id": reference}
            if identify_patients and patient_id:
                patient["identifier"] = [{"value": str(patient_id)}]
            patients[url] = patient
        entries.append({"fullUrl": f"urn:uuid:{item['id']}", "resource": item})
    entries += [{"fullUrl": url, "resource": patient} for url, patient in patients.items()]
    return {"resourceType": "Bundle", "type": "collection",
            "meta": {"tag": [{"system": "urn:distiliqa", "code": "open-computation",
                              "display": f"{cms.NOT_CERTIFIED} {cms.LICENCE}"}]},
            "entry": entries}


def write_bundle(path: os.PathLike, exams: Sequence[Dict], patient_ids: Dict[str, Optional[str]],
                 identify_patients: bool = False, key: Optional[bytes] = None) -> int:
    """Write the Bundle to ``path`` (JSON); returns how many Observations it holds."""
    document = bundle(exams, patient_ids, identify_patients, key)
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return sum(entry["resource"]["resourceType"] == "Observation" for entry in document["entry"])

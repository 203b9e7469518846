"""The real-CT corpus: a manifest of public real human CT series, its verification and its source slices.

The scans themselves are not in the repository (each keeps its own licence); ``corpus/manifest.json``
lists every file with its SHA-256, origin, licence, patient, anatomy, scanner and role, and
``corpus/README.md`` says how to obtain them. A role is ``train`` (dose-simulated training data),
``calibration`` (held out from training; fits the dose-equivalent table and the adequacy bands) or
``test`` (held out from everything; the benchmark tables only).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import InputError

ROLES = ("train", "calibration", "test")


@dataclass
class CorpusEntry:
    """One patient's scans in the corpus (a folder or a file under the corpus root)."""

    id: str
    patient: str
    role: str
    anatomy: str
    path: str
    slices_used: int
    files: Dict[str, str] = field(default_factory=dict)  # relative path -> SHA-256
    details: Dict = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: Path | str) -> List[CorpusEntry]:
    """The entries of a corpus manifest (JSON: ``{"entries": [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no corpus manifest at {path}")
    try:
        data = json.loads(path.read_text())
        entries = [CorpusEntry(id=e["id"], patient=e["patient"], role=e["role"], anatomy=e["anatomy"],
                               path=e["path"], slices_used=int(e["slices_used"]), files=dict(e["files"]),
                               details={k: v for k, v in e.items() if k not in CorpusEntry.__dataclass_fields__})
                   for e in data["entries"]]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is not a corpus manifest ({error})") from None
    bad = [e.id for e in entries if e.role not in ROLES]
    if bad:
        raise InputError(f"{path}: unknown role in {', '.join(bad)} (use {', '.join(ROLES)})")
    return entries


#: Words in a licence that forbid commercial use (Creative Commons ``NC`` terms and their spelled-out forms).
NON_COMMERCIAL = re.compile(r"\bBY-NC\b|-NC-|non-?commercial", re.IGNORECASE)


def non_commercial(entries: Iterable[CorpusEntry], roles: Sequence[str] = ("train", "calibration")) -> List[str]:
    """Ids of the entries in ``roles`` whose licence forbids commercial use: data that must not shape weights
    shipped for anyone's use (training or fitting); evaluation (``test``) is fine."""
    return [e.id for e in entries if e.role in roles and NON_COMMERCIAL.search(str(e.details.get("licence", "")))]


def verify(entries: Iterable[CorpusEntry], root: Path | str) -> List[str]:
    """Problems (missing files, SHA-256 mismatches) of the corpus under ``root``; empty when intact."""
    root = Path(root)
    problems = []
    for entry in entries:
        for relative, expected in entry.files.items():
            file = root / relative
            if not file.is_file():
                problems.append(f"{entry.id}: missing {relative}")
            elif sha256_of(file) != expected:
                problems.append(f"{entry.id}: {relative} differs from the manifest (SHA-256)")
    return problems


def entry_sources(entry: CorpusEntry, root: Path | str, slices_per_volume: Optional[int] = None):
    """The full-dose source slices of one corpus entry (:class:`~DistilIQALib.training.datasets.SourceSlice`),
    each series or volume sampled evenly along z, all carrying the entry's patient and anatomy."""
    from .datasets import source_slices_from_folder

    target = Path(root) / entry.path
    sources = source_slices_from_folder(target, slices_per_volume or entry.slices_used)
    for source in sources:
        source.name = f"{source.patient}_{source.name}"
        source.patient = entry.patient
        source.anatomy = entry.anatomy
    return sources


def corpus_sources(entries: Sequence[CorpusEntry], root: Path | str, roles: Sequence[str] = ROLES,
                   slices_per_volume: Optional[int] = None) -> List:
    """Source slices of every entry whose role is in ``roles``; a clear error if a file is missing."""
    chosen = [e for e in entries if e.role in roles]
    problems = verify(chosen, root)
    if problems:
        raise InputError(f"the real-CT corpus under {root} is incomplete or altered: {problems[0]}"
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                         + "; see corpus/README.md for how to obtain it")
    return [source for entry in chosen for source in entry_sources(entry, root, slices_per_volume)]

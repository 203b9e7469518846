"""Training data: building labelled image lists (``preprocess``) and loading them for training.

Every dataset folder ends up with the paper's files plus two of ours:

* ``dataset.json``, ``train.json``, ``test.json``: image path (relative to the folder) -> label;
* ``patients.json``: image path -> patient id (folds and splits are grouped by patient);
* ``dataset_info.json``: the dataset type and what the label means (stored in the weights).

Builders: TCIA "LDCT and Projection data" (paired full/low dose, extra doses simulated with
the right factor per case), LDCTIQAC2023 (TIFFs in [0, 1] with radiologists' 0-4 scores),
any list of (path, score, patient), and simulated doses/sparse views of any full-dose CT.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..quality.metrics import ssim
from ..quality.preprocessing import DEFAULT_WINDOW, Window, prepare_batch, window_to_unit

PAPER_TRAIN_CASES = ("C002", "C004", "C016", "C021", "C030", "C050", "C052", "C067", "C081")
PAPER_TEST_CASES = ("C012", "C077")
#: Dose fraction of the "Low Dose" series by case prefix (chest 10%, abdomen and head 25%).
TCIA_LOW_DOSE = {"C": 0.10, "L": 0.25, "N": 0.25}
SSIM_SCORE = {"name": "ssim", "description": "predicted SSIM to a full-dose image (W350/L40); 1 = as full dose",
              "minimum": 0.0, "maximum": 1.0, "higher_is_better": True}
RADIOLOGIST_SCORE = {"name": "radiologist", "description": "predicted mean radiologists' score (LDCTIQAC2023 scale)",
                     "minimum": 0.0, "maximum": 4.0, "higher_is_better": True}


@dataclass
class LabelledImages:
    """A dataset split: image paths, labels and patient ids (parallel lists)."""

    root: Path
    paths: List[str]
    labels: np.ndarray
    patients: List[str]

    def __len__(self) -> int:
        return len(self.paths)


def window_label(full_hu: np.ndarray, image_hu: np.ndarray) -> float:
    """The chest-data label: SSIM of the W350/L40-windowed images (data range 1)."""
    return ssim(window_to_unit(full_hu, DEFAULT_WINDOW), window_to_unit(image_hu, DEFAULT_WINDOW))


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def write_dataset_files(folder: Path, labels: Dict[str, float], patients: Dict[str, str],
                        test_patients: Iterable[str], info: Dict) -> Tuple[int, int]:
    """Write dataset/train/test/patients/dataset_info JSON files; returns (train, test) sizes."""
    test_patients = set(test_patients)
    train = {path: label for path, label in labels.items() if patients[path] not in test_patients}
    test = {path: label for path, label in labels.items() if patients[path] in test_patients}
    _write_json(folder / "dataset.json", labels)
    _write_json(folder / "train.json", train)
    _write_json(folder / "test.json", test)
    _write_json(folder / "patients.json", patients)
    _write_json(folder / "dataset_info.json", info)
    return len(train), len(test)


def load_split(folder: Path | str, split: str = "train") -> LabelledImages:
    """Read ``<split>.json`` (and ``patients.json`` when present) of a dataset folder."""
    folder = Path(folder)
    path = folder / f"{split}.json" if not str(split).endswith(".json") else Path(split)
    if not path.is_file():
        raise InputError(f"no {path.name} in {folder}: run 'preprocess' first")
    labels = json.loads(path.read_text())
    patients_file = folder / "patients.json"
    patients = json.loads(patients_file.read_text()) if patients_file.is_file() else {}
    names = sorted(labels)
    return LabelledImages(folder, names, np.array([float(labels[n]) for n in names], dtype=np.float32),
                          [str(patients.get(n, n)) for n in names])


def dataset_info(folder: Path | str) -> Dict:
    path = Path(folder) / "dataset_info.json"
    return json.loads(path.read_text()) if path.is_file() else {"type": "list", "score": SSIM_SCORE}


def load_images(images: LabelledImages, input_size: int = 512,
                progress: Optional[Callable[[int, int, str], None]] = None,
                extra_windows: Sequence[Window] = ()) -> torch.Tensor:
    """Every image, windowed and fitted by the shared preprocessing, as ``(N, C, S, S)`` float16 (``C``: the
    W350/L40 window and each of ``extra_windows``)."""
    from ..io.reading import read_volume

    tensor = torch.empty(len(images), 1 + len(extra_windows), input_size, input_size, dtype=torch.float16)
    for n, relative in enumerate(images.paths):
        volume = read_volume(images.root / relative, force=True)
        tensor[n] = prepare_batch(volume.hu[:1], input_size=input_size, extra_windows=extra_windows)[0].half()
        if progress is not None:
            progress(n + 1, len(images), "loading images")
    return tensor


# --- TCIA "LDCT and Projection data" -------------------------------------------------------------

_CASE = re.compile(r"\b([CLN]\d{3})\b")


def find_tcia_pairs(root: Path) -> List[Tuple[str, Path, Path]]:
    """(case, full-dose file, low-dose file) for every slice found in both series of a case."""
    full: Dict[Tuple[str, str], Path] = {}
    low: Dict[Tuple[str, str], Path] = {}
    for path in sorted(root.rglob("*.dcm")):
        text = str(path.relative_to(root))
        case = _CASE.search(text.replace("/", " ").replace("_", " ").replace("-", " "))
        if case is None or "Dose" not in text:
            continue
        if "Full Dose" in text:
            full[(case.group(1), path.name)] = path
        elif "Low Dose" in text:
            low[(case.group(1), path.name)] = path
    return [(case, full[(case, name)], low[(case, name)]) for case, name in sorted(full) if (case, name) in low]


def preprocess_tcia(root: Path | str, doses: Sequence[float] = (0.5, 0.75),
                    train_cases: Sequence[str] = PAPER_TRAIN_CASES, test_cases: Sequence[str] = PAPER_TEST_CASES,
                    progress: Optional[Callable[[int, int, str], None]] = None) -> Tuple[int, int]:
    """Simulate intermediate doses next to the sources, label by SSIM, split by patient."""
    from ..io.dicom_writing import write_like
    from ..io.reading import read_volume
    from .simulation import paired_dose

    root = Path(root)
    pairs = find_tcia_pairs(root)
    if not pairs:
        raise InputError(f"no paired 'Full Dose' / 'Low Dose' DICOM slices of TCIA cases (C***, L***, N***) in {root}")
    labels: Dict[str, float] = {}
    patients: Dict[str, str] = {}
    for n, (case, full_path, low_path) in enumerate(pairs):
        full = read_volume(full_path).hu[0].astype(np.float32)
        low = read_volume(low_path).hu[0].astype(np.float32)
        low_fraction = TCIA_LOW_DOSE[case[0]]
        entries = {full_path: full, low_path: low}
        for dose in doses:
            image = paired_dose(full, low, low_fraction, dose)
            target = full_path.parent.parent / f"{dose:g}Dose" / full_path.name
            write_like(full_path, image, target, f"simulated {dose:.0%} dose")
            entries[target] = image
        for path, image in entries.items():
            relative = str(path.relative_to(root))
            labels[relative] = 1.0 if path == full_path else window_label(full, image)
            patients[relative] = case
        if progress is not None:
            progress(n + 1, len(pairs), "preprocess")
    cases = sorted(set(patients.values()))
    test = [case for case in cases if case in set(test_cases)]
    info = {"type": "tcia", "score": SSIM_SCORE, "doses": list(doses), "train_cases": list(train_cases),
            "test_cases": test}
    return write_dataset_files(root, labels, patients, test, info)


# --- LDCTIQAC2023 ---------------------------------------------------------------------------------

def preprocess_ldctiqac(root: Path | str, test_fraction: float = 0.2, seed: int = 0) -> Tuple[int, int]:
    """The challenge folder: ``NNNN.tif`` in [0, 1] and ``train.json`` (file name -> 0-4 score).

    The challenge gives no patient ids, so each image is its own group; a held-out
    ``test.json`` of ``test_fraction`` of the images is drawn with ``seed``.
    """
    root = Path(root)
    source = root / "train.json"
    if not source.is_file():
        raise InputError(f"no train.json with the radiologists' scores in {root}")
    scores = json.loads(source.read_text())
    missing = [name for name in scores if not (root / name).is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) listed in train.json are missing, e.g. {missing[0]}")
    original = root / "train_original.json"
    if not original.is_file():
        original.write_text(source.read_text())
    names = sorted(scores)
    rng = np.random.default_rng(seed)
    test = set(rng.choice(names, size=int(round(test_fraction * len(names))), replace=False).tolist())
    labels = {name: float(scores[name]) for name in names}
    patients = {name: name for name in names}
    return write_dataset_files(root, labels, patients, test, {"type": "ldctiqac2023", "score": RADIOLOGIST_SCORE})


# --- a list of images -----------------------------------------------------------------------------

def preprocess_list(list_file: Path | str, output: Path | str, test_fraction: float = 0.2,
                    seed: int = 0, score: Optional[Dict] = None) -> Tuple[int, int]:
    """A CSV (``path,score[,patient]``) or JSON (``{path: score}`` or list of records) of images."""
    list_file = Path(list_file)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    records = _read_list(list_file)
    labels: Dict[str, float] = {}
    patients: Dict[str, str] = {}
    for path, label, patient in records:
        absolute = (list_file.parent / path).resolve()
        if not absolute.exists():
            raise InputError(f"image listed in {list_file.name} not found: {path}")
        key = str(absolute)
        labels[key] = float(label)
        patients[key] = patient or key
    groups = sorted(set(patients.values()))
    rng = np.random.default_rng(seed)
    test = rng.choice(groups, size=int(round(test_fraction * len(groups))), replace=False).tolist()
    return write_dataset_files(output, labels, patients, test, {"type": "list", "score": score or SSIM_SCORE})


LIST_FORMATS = "a CSV with the columns path,score[,patient] or a JSON {path: score} or [{path, score, patient}]"


def _read_list(path: Path) -> List[Tuple[str, float, str]]:
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                records = [(name, float(value), "") for name, value in data.items()]
            else:
                records = [(r["path"], float(r["score"]), str(r.get("patient", ""))) for r in data]
        else:
            with path.open(newline="") as stream:
                records = [(r["path"], float(r["score"]), r.get("patient", "") or "") for r in csv.DictReader(stream)]
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        # json.JSONDecodeError is a ValueError; a missing column is a KeyError, a bad score a ValueError.
        raise InputError(f"cannot read the image list {path.name} ({type(error).__name__}: {error}); expected "
                         f"{LIST_FORMATS}") from None
    if not records:
        raise InputError(f"the image list {path.name} lists no images; expected {LIST_FORMATS}")
    return records


# --- simulated doses of full-dose CT --------------------------------------------------------------

DEFAULT_SIMULATED_DOSES = (1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05)
DEFAULT_SPARSE_VIEWS = (256, 128, 64)


@dataclass
class SourceSlice:
    """A full-dose slice to degrade: HU (square), pixel size, slice thickness and the patient it belongs to."""

    patient: str
    name: str
    hu: np.ndarray
    pixel_mm: float
    anatomy: str = ""
    thickness_mm: float = float("nan")
    #: Body region read from the slice within its whole series (:mod:`DistilIQALib.quality.regions`); empty when
    #: unknown.
    region: str = ""
    #: The region whose routine level the slice is judged against within its series (its own, or the exam's at a
    #: short end of a chest or abdominal scan: :func:`~DistilIQALib.quality.region_labels.exam_regions`).
    judged_region: str = ""


def preprocess_simulated(sources: Iterable[SourceSlice], output: Path | str,
                         doses: Sequence[float] = DEFAULT_SIMULATED_DOSES,
                         sparse_views: Sequence[int] = DEFAULT_SPARSE_VIEWS,
                         test_patients: Sequence[str] = (), seed: int = 0,
                         progress: Optional[Callable[[int, int, str], None]] = None,
                         kernels: Sequence[str] = ("hann",), relative: bool = False,
                         sparse_every: int = 1, device=None) -> Tuple[int, int]:
    """Write each source at every dose (projection-domain noise) and view count, labelled by SSIM.

    Source ``n`` gets its dose noise through reconstruction kernel ``kernels[n % len(kernels)]``, so a
    list of kernels varies the noise texture (sharpness) across sources. With ``relative`` (real scans)
    the noise is relative to each slice's own noise instead (its global noise index ``sigma``: dose ``d``
    gives variance ``sigma**2 / d``) with the texture of the slice's own kernel, and slices without
    enough soft tissue to measure ``sigma`` are left out. Sparse-view streaks are made for every
    ``sparse_every``-th source. ``device`` runs the projections and reconstructions (a GPU: many times faster,
    same random numbers). ``sources.json`` records, per image, its source, patient, anatomy, kind
    (``dose`` or ``views``), dose or view count and the source's noise index."""
    from ..quality.noise import slice_noise_index
    from .simulation import DoseSimulator, dense_reconstruction, own_noise_simulator, sparse_view

    output = Path(output)
    sources = list(sources)
    labels: Dict[str, float] = {}
    patients: Dict[str, str] = {}
    records: Dict[str, Dict] = {}
    for n, source in enumerate(sources):
        hu = source.hu.astype(np.float32)
        if relative:
            simulator = own_noise_simulator(hu, source.pixel_mm, seed * 100003 + n, device)
            if simulator is None:
                continue
            noise_hu = simulator.reference_noise_hu
        else:
            noise_hu = slice_noise_index(hu, source.pixel_mm)
            simulator = DoseSimulator(hu, source.pixel_mm, seed=seed * 100003 + n, kernel=kernels[n % len(kernels)],
                                      device=device)
        images = {f"dose{dose:g}": simulator.at_dose(dose) for dose in doses}
        if sparse_views and n % max(1, sparse_every) == 0:
            dense = dense_reconstruction(hu, source.pixel_mm, device=device)
            for views in sparse_views:
                images[f"views{views}"] = sparse_view(hu, source.pixel_mm, views, dense, device)
        for kind, image in images.items():
            relative_path = _write_source_image(output, source, kind, image)
            labels[relative_path] = window_label(hu, image)
            patients[relative_path] = source.patient
            records[relative_path] = {
                "source": source.name, "patient": source.patient, "anatomy": source.anatomy,
                "kind": "dose" if kind.startswith("dose") else "views",
                "value": float(kind[4:]) if kind.startswith("dose") else int(kind[5:]),
                "source_noise_hu": round(float(noise_hu), 3) if np.isfinite(noise_hu) else None}
        if progress is not None:
            progress(n + 1, len(sources), "simulating")
    if not labels:
        raise InputError("none of the source slices has enough soft tissue to measure its noise")
    info = {"type": "simulated", "score": SSIM_SCORE, "doses": list(doses), "sparse_views": list(sparse_views),
            "kernels": ["matched to each scan"] if relative else list(kernels),
            "noise": "relative to each scan's own noise index" if relative else "absolute photon count"}
    _write_json(output / "sources.json", records)
    return write_dataset_files(output, labels, patients, test_patients, info)


#: The absolute label: the network predicts ``log`` of the *effective noise* (HU) of each image, the noise SD of a
#: pure dose reduction of its source that degrades it as much. The learned dose equivalent is that noise through
#: the routine reference of the slice's region, size and thickness, as the physics estimate is the measured noise.
EFFECTIVE_NOISE_SCORE = {
    "name": "effective_noise",
    "description": ("learned dose equivalent: the fraction of a routine dose for the slice's body region, size and "
                    "thickness whose noise would degrade the slice as much as what it shows (noise, streaks, rings, "
                    "motion); 1 = a routine dose. The network's outputs are the log of that effective noise (HU)"),
    "minimum": 0.05, "maximum": 4.0, "higher_is_better": True}
#: Doses of the ladder an artefact image is matched against (its SSIM to the source is interpolated in log dose).
MATCHING_DOSES = (1.0, 0.7, 0.45, 0.3, 0.2, 0.12, 0.07, 0.04, 0.02, 0.01)
#: Artefacts simulated for every ``every``-th source (offset 0: sparse views, 1: rings, 2: motion) and their levels.
DEFAULT_ARTEFACTS = {"views": (256, 128, 64), "rings": (100.0, 300.0), "motion": (2.0, 5.0)}


def equivalent_dose(similarity: float, ladder_doses: Sequence[float], ladder_similarity: Sequence[float]) -> float:
    """The dose fraction whose noise gives the same SSIM to the source as ``similarity``: interpolated in log dose
    on the ladder (SSIM falls as the dose falls), clipped to the ladder's ends."""
    doses = np.asarray(ladder_doses, dtype=np.float64)
    similarities = np.minimum.accumulate(np.asarray(ladder_similarity, dtype=np.float64))  # monotone in dose
    order = np.argsort(similarities)
    return float(np.exp(np.interp(similarity, similarities[order], np.log(doses[order]))))


def preprocess_absolute(sources: Iterable[SourceSlice], output: Path | str,
                        doses: Sequence[float] = DEFAULT_SIMULATED_DOSES, artefacts: Optional[Dict] = None,
                        test_patients: Sequence[str] = (), seed: int = 0, every: int = 3,
                        progress: Optional[Callable[[int, int, str], None]] = None, device=None) -> Tuple[int, int]:
    """Each source at every dose (relative to its own noise) and with the artefacts of :data:`DEFAULT_ARTEFACTS`,
    labelled with the log of its *effective noise* (HU).

    The source's noise ``sigma`` is its global noise index. Dose ``d`` leaves noise ``sigma / sqrt(d)``: that is
    the label. An artefact image (sparse views, rings, motion) is matched to the dose ``d*`` whose noise gives the
    same SSIM (W350/L40) to the source, on a ladder of doses of the same noise realisation: its label is
    ``sigma / sqrt(d*)``. Through a region's routine reference (noise x thickness at the patient's size) either
    becomes a dose equivalent on one scale for every scan, region and artefact. ``sources.json`` records per image
    its source, patient, region, kind, level, the equivalent dose ``d`` or ``d*``, the source's noise, thickness
    and noise-equivalent diameter, and its SSIM to the source. Slices without soft tissue are left out."""
    from ..quality.noise import noise_equivalent_diameter_cm
    from .simulation import (
        dense_reconstruction,
        motion_artefact,
        own_noise_simulator,
        ring_artefact,
        ring_pattern,
        sparse_view,
    )

    artefacts = DEFAULT_ARTEFACTS if artefacts is None else artefacts
    output = Path(output)
    sources = list(sources)
    labels: Dict[str, float] = {}
    patients: Dict[str, str] = {}
    records: Dict[str, Dict] = {}
    for n, source in enumerate(sources):
        hu = source.hu.astype(np.float32)
        simulator = own_noise_simulator(hu, source.pixel_mm, seed * 100003 + n, device)
        if simulator is None:
            continue
        noise_hu = simulator.reference_noise_hu
        images = {f"dose{dose:g}": (simulator.at_dose(dose), float(dose)) for dose in doses}
        kinds = [kind for kind in ("views", "rings", "motion") if artefacts.get(kind)]
        made = {}
        if kinds and n % max(1, every) < len(kinds):
            kind = kinds[n % max(1, every)]
            dense = dense_reconstruction(hu, source.pixel_mm, device=device) if kind == "views" else None
            rings = ring_pattern(hu, source.pixel_mm, seed * 7 + n, device=device) if kind == "rings" else None
            for level in artefacts[kind]:
                if kind == "views":
                    made[f"views{int(level)}"] = sparse_view(hu, source.pixel_mm, int(level), dense, device)
                elif kind == "rings":
                    made[f"rings{level:g}"] = ring_artefact(hu, source.pixel_mm, float(level), pattern=rings)
                else:
                    made[f"motion{level:g}"] = motion_artefact(hu, source.pixel_mm, float(level), seed * 7 + n,
                                                              device)
        if made:
            ladder = [window_label(hu, simulator.at_dose(dose)) for dose in MATCHING_DOSES]
            for name, image in made.items():
                similarity = window_label(hu, image)
                images[name] = (image, equivalent_dose(similarity, MATCHING_DOSES, ladder), similarity)
        diameter = float(noise_equivalent_diameter_cm(torch.from_numpy(hu)[None], (source.pixel_mm,) * 2)[0])
        for name, (image, dose, *known) in images.items():
            similarity = known[0] if known else 1.0 if name == "dose1" else window_label(hu, image)
            relative_path = _write_source_image(output, source, name, image)
            kind = re.match(r"[a-z]+", name).group(0)
            labels[relative_path] = float(np.log(noise_hu / np.sqrt(dose)))
            patients[relative_path] = source.patient
            records[relative_path] = {
                "source": source.name, "patient": source.patient, "anatomy": source.anatomy, "region": source.region,
                "kind": kind, "value": float(name[len(kind):]), "equivalent_dose": round(dose, 5),
                "source_noise_hu": round(float(noise_hu), 3), "thickness_mm": float(source.thickness_mm),
                "diameter_cm": round(diameter, 2), "ssim": round(similarity, 5)}
        if progress is not None:
            progress(n + 1, len(sources), "simulating")
    if not labels:
        raise InputError("none of the source slices has enough soft tissue to measure its noise")
    info = {"type": "simulated", "score": EFFECTIVE_NOISE_SCORE, "label": "log effective noise (HU)",
            "doses": list(doses), "artefacts": {k: list(v) for k, v in artefacts.items()},
            "kernels": ["matched to each scan"], "noise": "relative to each scan's own noise index"}
    _write_json(output / "sources.json", records)
    return write_dataset_files(output, labels, patients, test_patients, info)


def _write_source_image(output: Path, source: SourceSlice, name: str, image: np.ndarray) -> str:
    """Write one simulated image of ``source`` as ``images/<patient>/<source>_<name>.mha`` under ``output`` (float32,
    the source's pixel size); returns that relative path."""
    import SimpleITK as sitk

    relative_path = f"images/{source.patient}/{source.name}_{name}.mha"
    (output / relative_path).parent.mkdir(parents=True, exist_ok=True)
    itk_image = sitk.GetImageFromArray(image.astype(np.float32))
    itk_image.SetSpacing((source.pixel_mm, source.pixel_mm))
    sitk.WriteImage(itk_image, str(output / relative_path), True)
    return relative_path


def image_records(folder: Path | str) -> Dict[str, Dict]:
    """``sources.json`` of a simulated dataset (empty for other datasets)."""
    path = Path(folder) / "sources.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def source_slices_from_folder(folder: Path | str, slices_per_volume: int = 4) -> List[SourceSlice]:
    """Full-dose slices from every CT under ``folder``: each DICOM series folder and each volume or
    image file is one patient; ``slices_per_volume`` slices are taken evenly along z."""
    from ..io.reading import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, list_dicom_series, read_volume
    from ..quality.region_labels import exam_regions
    from ..quality.regions import volume_regions

    folder = Path(folder)
    sources: List[SourceSlice] = []
    if folder.is_file():
        entries = [(folder, None)]
    else:
        entries = [(Path(s["folder"]), s["uid"]) for s in list_dicom_series(folder)]
        entries += [(p, None) for p in sorted(folder.rglob("*")) if p.is_file()
                    and p.name.lower().endswith(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES)]
    series_per_folder = Counter(path for path, uid in entries if uid is not None)
    for path, uid in entries:
        volume = read_volume(path, series_uid=uid)
        inside = str(path.relative_to(folder)) if path != folder else path.name
        patient = re.sub(r"[^A-Za-z0-9_.-]", "_", inside if inside != "." else path.name)
        if uid is not None and series_per_folder[path] > 1:
            patient += "_" + uid.rsplit(".", 1)[-1]  # several series in one folder
        picks = np.unique(np.linspace(0, volume.num_slices - 1, min(slices_per_volume, volume.num_slices)).round())
        regions = volume_regions(volume).region
        judged = exam_regions(volume.z_mm(), regions)[0]
        for index in picks.astype(int):
            hu = np.asarray(volume.hu[index], dtype=np.float32)
            side = max(hu.shape)
            if hu.shape[0] != hu.shape[1]:
                square = np.full((side, side), -1000.0, dtype=np.float32)
                top, left = (side - hu.shape[0]) // 2, (side - hu.shape[1]) // 2
                square[top:top + hu.shape[0], left:left + hu.shape[1]] = hu
                hu = square
            sources.append(SourceSlice(patient, f"slice{index:04d}", hu, float(volume.spacing_mm[0]),
                                       thickness_mm=volume.slice_thickness_mm, region=regions[index],
                                       judged_region=judged[index]))
    if not sources:
        raise InputError(f"no CT found under {folder}")
    return sources


#: Distinct real CT slices shipped by pydicom's test files and the pydicom-data package (the 693_* files are
#: one slice in four encodings: one is enough).
BUILTIN_REAL_CT = ("693_UNCR.dcm", "CT_small.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm",
                   "J2K_pixelrep_mismatch.dcm", "eCT_Supplemental.dcm")


def package_ct_folders() -> List[Path]:
    """Folders of the DICOM test files that pydicom and (if installed) pydicom-data ship."""
    folders = []
    try:
        import pydicom.data

        folders.append(Path(pydicom.data.__file__).parent / "test_files")
    except ImportError:
        pass
    try:
        import data_store  # the pydicom-data package

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return folders


def builtin_sources(num_phantoms: int = 0, size: int = 512, seed: int = 0) -> List[SourceSlice]:
    """Full-dose sources that need no patient data: every real CT slice that ``pydicom`` and
    ``pydicom-data`` ship (each file its own patient; multi-frame files give one source per frame) and
    ``num_phantoms`` phantom slices (one patient per phantom seed, pelvis to chest).

    A phantom slice is given the noise of a full-dose scan (projection-domain, default photon count), as
    real full-dose images have: the score then means degradation from a full dose, not from a noiseless
    ideal that no scanner makes."""
    from ..io.reading import read_volume
    from .phantoms import phantom_slice
    from .simulation import DoseSimulator

    sources: List[SourceSlice] = []
    folders = package_ct_folders()
    for name in BUILTIN_REAL_CT:
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is None:
            continue
        volume = read_volume(path)
        for frame in range(volume.num_slices):
            hu = np.asarray(volume.hu[frame], dtype=np.float32)
            sources.append(SourceSlice(f"real_{Path(name).stem}", f"frame{frame}", hu, float(volume.spacing_mm[0])))
    pixel_mm = 0.7 * 512 / size
    for n in range(num_phantoms):
        anatomy_seed = seed * 1000 + n // 4
        position = (n % 4 + 0.5) / 4
        ideal = phantom_slice(position, size, pixel_mm, anatomy_seed)
        full_dose = ideal + DoseSimulator(ideal, pixel_mm, seed=(seed * 1000 + n) * 7919 + 1).full_dose_noise()
        sources.append(SourceSlice(f"phantom{n // 4}", f"pos{n % 4}", full_dose, pixel_mm))
    return sources

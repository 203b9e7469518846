"""What a weights file says about its model, read from the file's JSON header without its tensors and without
PyTorch: the architecture record, what the score means, the window, adequacy bands, dose calibration, noise
reference and provenance. Reading results back (Slicer's own process does) needs only this; loading and saving
the tensors is :mod:`.weights`'."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import NoDefaultModelError, WeightsError
from .architecture import PRESETS, Architecture
from .windows import DEFAULT_WINDOW, Window

#: 2: adequacy bands may be on the dose equivalent, and a noise reference may be present (a reader of
#: version 1 would misread both). 3: the noise reference holds one routine level per body region, each with its own
#: bands (a reader of version 2 would apply none of them). 4: the outputs may be the log of an effective noise that
#: the score turns into a learned dose equivalent (``score.name == "effective_noise"``), and the input may have more
#: than one window (``extra_windows``).
FORMAT_VERSION = 4
METADATA_KEY = "distiliqa"
WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_MODEL_NAME = "distiliqa_student" + WEIGHTS_SUFFIX
#: Environment variable that points at a weights file to use instead of the shipped one.
WEIGHTS_ENV = "DISTILIQA_WEIGHTS"


@dataclass
class ScoreDefinition:
    """What the number means: ``name`` (e.g. ``ssim``), range and direction."""

    name: str = "ssim"
    description: str = "predicted SSIM to a full-dose image (W350/L40); 1 = indistinguishable from full dose"
    minimum: float = 0.0
    maximum: float = 1.0
    higher_is_better: bool = True


@dataclass
class ModelInfo:
    """Everything a weights file says about its model besides the tensors."""

    preset: str
    architecture: Architecture
    num_outputs: int = 1
    score: ScoreDefinition = field(default_factory=ScoreDefinition)
    window: Window = DEFAULT_WINDOW
    #: Further windows, one input channel each after the first (``architecture.input_channels - 1`` of them).
    extra_windows: Tuple[Window, ...] = ()
    #: ``[{"name": "good", "min_score": 0.9}, ...]`` from best to worst, plus the reasoning.
    adequacy: Optional[Dict[str, Any]] = None
    #: ``{"score": [...], "dose_fraction": [...]}``: monotone table, interpolated linearly.
    dose_calibration: Optional[Dict[str, List[float]]] = None
    #: Routine full-dose noise by patient size and slice thickness (``interpretation.noise_dose_equivalent``);
    #: when present it gives the dose equivalent instead of ``dose_calibration``.
    noise_reference: Optional[Dict[str, Any]] = None
    #: A learned model's tolerance: its effective noise sets the score where it exceeds the measured noise by more
    #: than this share (``interpretation.effective_noise``); fitted on held-out dose images.
    artefact_margin: Optional[float] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: Short hash of the file the model was loaded from (set on load).
    weights_id: str = ""

    @property
    def input_size(self) -> int:
        return self.architecture.input_size

    def to_json(self) -> str:
        record = {
            "format_version": FORMAT_VERSION,
            "preset": self.preset,
            "architecture": self.architecture.to_dict(),
            "num_outputs": self.num_outputs,
            "score": vars(self.score),
            "window": {"width_hu": self.window.width_hu, "level_hu": self.window.level_hu},
            "extra_windows": [{"width_hu": w.width_hu, "level_hu": w.level_hu} for w in self.extra_windows],
            "input_size": self.input_size,
            "adequacy": self.adequacy,
            "dose_calibration": self.dose_calibration,
            "noise_reference": self.noise_reference,
            "artefact_margin": self.artefact_margin,
            "provenance": self.provenance,
        }
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> ModelInfo:
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise WeightsError(f"{source}: the model description in the weights file is not valid JSON") from None
        version = int(record.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise WeightsError(f"{source} was written by a newer DistilIQA (weights format {version}; this version "
                               f"reads up to {FORMAT_VERSION}); update DistilIQA")
        if version < 1:
            raise WeightsError(f"{source}: unknown weights format version {version}")
        preset = record.get("preset", "")
        try:
            architecture = Architecture.from_dict(record["architecture"])
        except (KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"{source}: invalid architecture description ({error})") from None
        if preset not in PRESETS and preset != "custom":
            raise WeightsError(f"{source}: unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
        window = record.get("window") or {}
        try:
            extra = tuple(Window(float(w["width_hu"]), float(w["level_hu"])) for w in record.get("extra_windows") or ())
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{source}: invalid extra_windows in the model description") from None
        if len(extra) + 1 != architecture.input_channels:
            raise WeightsError(f"{source}: {architecture.input_channels} input channel(s) but {len(extra) + 1} "
                               "window(s) in the model description")
        return cls(
            preset=preset,
            architecture=architecture,
            num_outputs=int(record.get("num_outputs", 1)),
            score=ScoreDefinition(**record.get("score", {})),
            window=Window(float(window.get("width_hu", 350.0)), float(window.get("level_hu", 40.0))),
            extra_windows=extra,
            adequacy=record.get("adequacy"),
            dose_calibration=record.get("dose_calibration"),
            noise_reference=record.get("noise_reference"),
            artefact_margin=record.get("artefact_margin"),
            provenance=record.get("provenance") or {},
            format_version=version,
        )


def file_id(path: os.PathLike[str] | str) -> str:
    """First 16 hex digits of the file's SHA-256: identifies the exact weights used."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_info(path: os.PathLike[str] | str) -> ModelInfo:
    """The metadata of a weights file, without loading its tensors."""
    path = _check_file(Path(path))
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise WeightsError(f"{path} is a safetensors file but not a DistilIQA model (no model description)")
    info = ModelInfo.from_json(metadata[METADATA_KEY], str(path))
    info.weights_id = file_id(path)
    return info


def default_weights_path() -> Path:
    """The shipped student model (``Resources/Models``), or ``$DISTILIQA_WEIGHTS``."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "Resources" / "Models" / DEFAULT_MODEL_NAME


def resolve_weights(path: os.PathLike[str] | str | None) -> Path:
    """``path`` if given, else the default model; a clear error when there is none."""
    if path:
        return Path(path)
    default = default_weights_path()
    if not default.is_file():
        raise NoDefaultModelError(f"no trained DistilIQA model is installed at {default}; "
                                  "pass a weights file with --weights")
    return default


def _check_file(path: Path) -> Path:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path


def _looks_like_pickle(start: bytes) -> bool:
    """Pickle protocol 2+ (``0x80 <protocol>``) or a zip archive (``torch.save``)."""
    return (len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5) or start.startswith(b"PK\x03\x04")


def _not_weights(path: Path, start: bytes) -> WeightsError:
    if _looks_like_pickle(start):
        return WeightsError(f"{path} is a pickle/PyTorch checkpoint, which can run code when loaded; "
                            f"DistilIQA only loads {WEIGHTS_SUFFIX} weights files")
    return WeightsError(f"{path} is not a DistilIQA weights file or is corrupt")


def _read_header(path: Path) -> Dict[str, Any]:
    """The safetensors JSON header; anything else (a pickle above all) is refused unread."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        start = stream.read(8)
        if len(start) < 8:
            raise _not_weights(path, start)
        header_length = int.from_bytes(start, "little")
        if header_length <= 1 or header_length > min(size - 8, 100_000_000):
            raise _not_weights(path, start)
        try:
            header = json.loads(stream.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _not_weights(path, start) from None
    if not isinstance(header, dict):
        raise _not_weights(path, start)
    return header

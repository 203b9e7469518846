"""DistilIQA engine: no-reference perceptual quality of CT slices.

Slicer-free: no Qt or Slicer application imports anywhere in this package except the
MRML bridge module (``slicer_bridge.mrml``). Typical use::

    from DistilIQALib import read_volume, Scorer
    scores = Scorer("model.safetensors").score_volume(read_volume("series_folder"))
"""
__version__ = "0.1.0"

from .errors import Cancelled, DeviceError, DistilIQAError, InputError, NoDefaultModelError, WeightsError  # noqa: E402
from .progress import Progress  # noqa: E402

#: Names loaded on first use, with the module that holds each. Importing the package (and with it the job builders
#: of ``slicer_bridge``, which Slicer's own process imports) loads neither PyTorch nor SimpleITK: the scorer and the
#: weights need torch, reading files needs SimpleITK, and scoring needs neither reading nor the archive scan.
_LAZY = {
    "CTVolume": ".volume", "Scorer": ".quality.scoring", "SliceScores": ".quality.results",
    "ModelInfo": ".quality.model_info", "load_weights": ".quality.weights", "save_weights": ".quality.weights",
    "read_volume": ".io.reading", "scan_folder": ".archive.archive",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CTVolume", "Cancelled", "DeviceError", "DistilIQAError", "InputError", "ModelInfo", "NoDefaultModelError",
    "Progress", "Scorer", "SliceScores", "WeightsError", "load_weights", "read_volume", "save_weights", "scan_folder",
]

"""DistilIQA engine: no-reference perceptual quality of CT slices.

Slicer-free: no Qt or Slicer application imports anywhere in this package except the
MRML bridge module (``slicer_bridge.mrml``). Typical use::

    from DistilIQALib import read_volume, Scorer
    scores = Scorer("model.safetensors").score_volume(read_volume("series_folder"))
"""
__version__ = "0.1.0"

from .errors import Cancelled, DeviceError, DistilIQAError, InputError, NoDefaultModelError, WeightsError  # noqa: E402
from .progress import Progress  # noqa: E402
from .quality.scoring import Scorer, SliceScores  # noqa: E402
from .quality.weights import ModelInfo, load_weights, save_weights  # noqa: E402
from .volume import CTVolume  # noqa: E402


def __getattr__(name: str):
    # Loaded on first use: reading files needs SimpleITK, and scoring needs neither reading nor the archive scan.
    if name == "read_volume":
        from .io.reading import read_volume

        return read_volume
    if name == "scan_folder":
        from .archive.archive import scan_folder

        return scan_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CTVolume", "Cancelled", "DeviceError", "DistilIQAError", "InputError", "ModelInfo", "NoDefaultModelError",
    "Progress", "Scorer", "SliceScores", "WeightsError", "load_weights", "read_volume", "save_weights", "scan_folder",
]

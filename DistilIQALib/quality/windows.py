"""Display windows (HU) and the model's input size: plain values, shared by the network's preprocessing and by
the weights files' description of a model (read in Slicer's own process, which never loads PyTorch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A display window in HU."""

    width_hu: float = 350.0
    level_hu: float = 40.0

    @property
    def lower_hu(self) -> float:
        return self.level_hu - self.width_hu / 2.0

    @property
    def upper_hu(self) -> float:
        return self.level_hu + self.width_hu / 2.0


DEFAULT_WINDOW = Window()
#: The brain window: grey-white contrast (5-10 HU) and head-CT noise (3-6 HU) are a few percent of it, where in
#: the W350 window they are about 1-2%.
BRAIN_WINDOW = Window(80.0, 40.0)
DEFAULT_INPUT_SIZE = 512

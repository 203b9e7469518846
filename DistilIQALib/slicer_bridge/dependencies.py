"""What each of the panel's jobs needs, what Slicer bundles, and what the module may install (after the user agrees).

Slicer 5.8.1 bundles numpy, scipy, pydicom 2.4, pillow, dicomweb-client and requests (its SuperBuild pins, see
``.ci/slicer-5.8.txt``) and SimpleITK; the module never replaces one of them (Slicer's DICOM module runs on that
pydicom). It installs only PyTorch (through the PyTorch extension, which picks the build for the GPU), einops and
safetensors; matplotlib only for a job that draws a plot. Everything here is looked up, never imported: Slicer's
process never loads PyTorch. No Qt or Slicer here.
"""
from __future__ import annotations

import importlib.util
from typing import Callable, List, Optional, Sequence

#: The module every job's child process needs, installed through Slicer's PyTorch extension (never pip).
TORCH = "torch"
#: Import name -> pip requirement of what the module installs itself when a job needs it.
PIP_REQUIREMENTS = {"einops": "einops>=0.7", "safetensors": "safetensors>=0.4", "matplotlib": "matplotlib>=3.7"}
#: What Slicer bundles and the engine uses (import names). Missing in Slicer means a broken Slicer, not ours to fix.
BUNDLED = ("numpy", "SimpleITK", "pydicom")
#: What ``batch --dicomweb`` adds (bundled with Slicer's DICOM module).
DICOMWEB = ("dicomweb_client", "requests")
#: Options of the engine's command lines that draw a plot (matplotlib).
PLOT_OPTIONS = ("--plot", "--report")


def needed_modules(arguments: Optional[Sequence[str]] = None) -> List[str]:
    """Import names the child process of the command line ``arguments`` (``None``: Assess Quality) needs."""
    arguments = list(arguments or ())
    needed = [*BUNDLED, TORCH, "einops", "safetensors"]
    if "--dicomweb" in arguments:
        needed += DICOMWEB
    if any(option in arguments for option in PLOT_OPTIONS):
        needed.append("matplotlib")
    return needed


def missing_modules(names: Sequence[str], find_spec: Callable = importlib.util.find_spec) -> List[str]:
    """Those of ``names`` that cannot be imported here (looked up, not imported)."""
    return [name for name in names if find_spec(name) is None]


class Plan:
    """What has to happen before a job can start: PyTorch to install, pip requirements to install (one question
    lists them all), and bundled packages that are missing (an error: Slicer is broken, nothing is installed)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.torch = TORCH in missing
        self.pip = [PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS]
        self.broken = [name for name in missing if name != TORCH and name not in PIP_REQUIREMENTS]

    @property
    def ready(self) -> bool:
        return not (self.torch or self.pip or self.broken)

    def question(self) -> str:
        """One confirmation text naming every install."""
        names = (["PyTorch (through the PyTorch extension)"] if self.torch else []) + self.pip
        return "DistilIQA will install: " + ", ".join(names) + "."

    def broken_error(self) -> str:
        return ("Slicer's own Python packages " + ", ".join(self.broken) + " are missing; reinstall Slicer "
                "(DistilIQA does not replace them).")


def plan_for(arguments: Optional[Sequence[str]] = None, find_spec: Callable = importlib.util.find_spec) -> Plan:
    """The :class:`Plan` for the job ``arguments`` (``None``: Assess Quality) in this Python."""
    return Plan(missing_modules(needed_modules(arguments), find_spec))

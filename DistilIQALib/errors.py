"""Exceptions raised by the engine.

Every error a user can cause derives from :class:`DistilIQAError`; its message is one
sentence that a radiologist can act on. The command line prints it as one line and
exits non-zero; Slicer shows it in an error dialog.
"""
from __future__ import annotations


class DistilIQAError(Exception):
    """Base class of all errors the engine raises on purpose."""

    exit_code = 2


class InputError(DistilIQAError, ValueError):
    """The image or folder given cannot be scored (missing, unreadable, not CT, ...)."""


class WeightsError(DistilIQAError, ValueError):
    """A weights file is missing, corrupt, unsafe or from an incompatible version."""


class DeviceError(DistilIQAError, RuntimeError):
    """The requested compute device is not available."""


class Cancelled(DistilIQAError):
    """The user asked to stop a long operation."""

    exit_code = 130


class NoDefaultModelError(DistilIQAError, RuntimeError):
    """No trained model ships with this installation and none was given."""


class ServerError(DistilIQAError, RuntimeError):
    """A DICOM server cannot be reached or refuses what is asked (the message names the server, never the
    credentials)."""

    exit_code = 3


class MissingPackageError(DistilIQAError, ImportError):
    """An optional package that this command needs is not installed (the message names it)."""

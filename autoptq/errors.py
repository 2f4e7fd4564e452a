"""The exception family that the command line maps to exit code 2 and one line of text."""

from __future__ import annotations


class AutoptqError(Exception):
    """Base class: bad input or usage. The message is one line a user can act on."""


class ModelLoadError(AutoptqError):
    """The model file cannot be read, is not ONNX, fails the checker, or points outside its folder."""


class ProfileError(AutoptqError):
    """A hardware profile is unknown or invalid."""


class RulesError(AutoptqError):
    """A decision-tree file is invalid."""


class DataError(AutoptqError):
    """Calibration or validation data do not match the model."""


class OutputError(AutoptqError):
    """An output path cannot be written."""

"""Exceptions of napari-deblurgan.

Every error a user can cause by what they pass in is an :class:`InputError` (a ``ValueError``) whose message
says what is wrong *and what to change*. Widgets show these messages as notifications, the CLI prints them
without a traceback and exits with status 2.
"""

from __future__ import annotations


class DeblurGANError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(DeblurGANError, ValueError):
    """Bad input (image, axes, tile size, device, ...). The message says what to change."""


class ModelFileError(DeblurGANError, OSError):
    """A model file is missing, truncated, corrupt, unsafe (pickled code) or of an unknown format."""


class Cancelled(DeblurGANError):
    """A long operation (deblur, finetune) was cancelled by the user; nothing was written."""

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


class EvenPSFWarning(UserWarning):
    """A PSF with an even side was given: it has no centre pixel, so the result (a blurred image, a deconvolved
    one) is shifted by half a pixel along that side. Raised once per call by ``synthesize_blur``, ``wiener``,
    ``richardson_lucy`` and ``best_classical``; a UserWarning, so the usual filters apply, e.g.
    ``warnings.simplefilter("ignore", napari_deblurgan.EvenPSFWarning)`` to accept the shift."""


def cancel_requested(cancel: object) -> bool:
    """Whether ``cancel`` - the ``cancel=`` of deblur() and the classical baselines: a ``threading.Event``
    (anything with ``is_set``), a function returning True to stop, or None (never) - asks to stop."""
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that names the first frame outside napari-deblurgan: the user's
    line (or a library's) that called into the package, however deep the warning is raised (a generator behind
    its Ctrl-C wrapper, a data check inside a run). Call it in the function that calls ``warnings.warn``."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1  # the caller of this function: stacklevel 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level

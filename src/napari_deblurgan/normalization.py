"""Intensity normalisation (as CSBDeep does for microscopy) and dtype handling.

Models see each YX plane scaled so that its ``low`` percentile maps to 0 and its ``high`` percentile to 1, per
channel. This makes one model work on 8-bit photos, 12/16-bit camera images and float data alike; the inverse
maps the output back to the input's units, then values are clipped to the input dtype's range.
No torch here.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}

# Percentiles of a plane larger than this are estimated from a regular subsample: exact enough for
# normalisation, and it keeps a 100-megapixel plane from being sorted.
_MAX_PERCENTILE_SAMPLES = 1 << 20


def check_dtype(dtype: np.dtype) -> None:
    """Raise for dtypes that are not images (bool, complex, object, strings, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise InputError(
            f"images of dtype {dtype} cannot be deblurred; convert to an integer or float dtype "
            "(e.g. image.astype('float32'))"
        )


def percentile_range(plane: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """(lo, hi) intensities at the given percentiles of a 2D plane; hi > lo always."""
    flat = plane.reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:
        flat = flat[:: flat.size // _MAX_PERCENTILE_SAMPLES + 1]
    lo, hi = np.percentile(flat, [low, high]).astype(np.float64)
    if not hi > lo:  # flat images (or a few bright pixels): fall back to min/max, then to a unit range
        lo, hi = float(flat.min()), float(flat.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def normalize(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 ``(plane - lo) / (hi - lo)``."""
    return ((plane.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(
        np.float32, copy=False
    )


def denormalize(normed: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`normalize` (float32)."""
    return normed * np.float32(hi - lo) + np.float32(lo)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` converted to ``dtype``: integers rounded and clipped to the dtype's range; floats clipped
    only where the dtype cannot hold them (float16)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    info = np.finfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)

"""Intensity normalisation (as CSBDeep does for microscopy) and dtype handling.

Models see each YX plane scaled so that its ``low`` percentile maps to 0 and its ``high`` percentile to 1, per
channel. This makes one model work on 8-bit photos, 12/16-bit camera images and float data alike; the inverse
maps the output back to the input's units, then values are clipped to the input dtype's range.
No torch here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}

# Percentiles of a plane larger than this are estimated from a regular subsample: exact enough for
# normalisation, and it keeps a 100-megapixel plane from being sorted.
_MAX_PERCENTILE_SAMPLES = 1 << 20

#: "No data" marks of float rasters: pixels of +-float32's largest value (or float64's) are sentinels, however many
#: there are: percentiles leave them out, and :func:`normalize` sends them to :data:`NORMALIZED_LIMIT`, where
#: deblur() and training take them as missing. Counting on the percentiles alone failed once such a region (a
#: stitched border, an unmapped area) was wider than the upper percentile's share of the plane (0.2 %): it then
#: became the upper percentile itself, and a 15 % border turned the rest of a deblurred photo into values of 1e36.
#: Exact values, not a magnitude: real values near them (3e38 in float32, 1e300 in float64) remain image. In
#: float64 data, float32's largest value is taken as written in text too: GDAL and rasterio spell it
#: -3.4028235e+38, which parses to a float64 a little off the exact value; every float64 that rounds to it in
#: float32 (within half a float32 step of it, :data:`_FLOAT32_MAX_HALF_STEP`) is a sentinel. 3.4e38 is not.
SENTINEL_VALUES = (float(np.finfo(np.float32).max), float(np.finfo(np.float64).max))
#: Half the spacing of float32 numbers at its largest value (2**104 apart there).
_FLOAT32_MAX_HALF_STEP = 2.0**103
#: The smallest magnitude a sentinel has (:func:`sentinel_mask`): values whose extremes stay below it hold none.
SENTINEL_FLOOR = SENTINEL_VALUES[0] - _FLOAT32_MAX_HALF_STEP


def sentinel_mask(values: np.ndarray) -> np.ndarray | None:
    """Where ``values`` (any dtype) holds :data:`SENTINEL_VALUES`, or None where it holds none (integer and
    float16 arrays never do). In float64 arrays, values that round to +-float32's largest value in float32
    count as it (the text spelling -3.4028235e+38)."""
    if values.dtype.kind != "f" or values.dtype.itemsize < 4 or not values.size:
        return None
    lowest = SENTINEL_FLOOR
    if not (values.max() > lowest or values.min() < -lowest):  # two reductions, no temporaries: most images
        return None
    if values.dtype.itemsize == 4:
        mask = values == SENTINEL_VALUES[0]
        mask |= values == -SENTINEL_VALUES[0]
    else:
        # strictly inside the half step: a value exactly half a step away rounds to the even neighbour in
        # float32 (the one below, or inf above); comparisons only, no float64 temporaries
        highest = SENTINEL_VALUES[0] + _FLOAT32_MAX_HALF_STEP
        mask = values > lowest
        mask &= values < highest
        mask |= (values < -lowest) & (values > -highest)
        mask |= values == SENTINEL_VALUES[1]
        mask |= values == -SENTINEL_VALUES[1]
    return mask if mask.any() else None


def check_dtype(dtype: np.dtype) -> None:
    """Raise for dtypes that are not images (bool, complex, object, strings, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise InputError(
            f"images of dtype {dtype} cannot be deblurred; convert to an integer or float dtype "
            "(e.g. image.astype('float32'))"
        )


def percentile_samples(plane: np.ndarray) -> np.ndarray:
    """The pixels of ``plane`` that :func:`percentile_range` takes, flat: all of them, or every k-th of a plane
    over :data:`_MAX_PERCENTILE_SAMPLES` pixels (a view where the plane is contiguous)."""
    flat = plane.reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:
        flat = flat[:: flat.size // _MAX_PERCENTILE_SAMPLES + 1]
    return flat


def percentile_range(plane: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """(lo, hi) intensities at the given percentiles of a 2D plane, sentinels (:data:`SENTINEL_VALUES`) left out;
    hi > lo always."""
    flat = percentile_samples(plane)
    sentinels = sentinel_mask(flat)
    if sentinels is not None:
        flat = flat[~sentinels]
        if not flat.size:  # nothing but "no data": any unit range (the pixels come back unchanged)
            return 0.0, 1.0
    lo, hi = np.percentile(flat, [low, high]).astype(np.float64)
    if not hi > lo:  # flat images (or a few bright pixels): fall back to min/max, then to a unit range
        lo, hi = float(flat.min()), float(flat.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


#: ``normalize="local"``: the side of the blocks whose percentiles are interpolated into a smooth field. 128 px
#: is the training crops' size, whose own percentiles scaled them in training; chosen on the rule's 72 selection
#: cases among 64, 96, 128 and 256 px (32.61, 32.62, 32.63 and 32.58 dB; 256 px is one block per 256 px case,
#: i.e. the per-plane scaling).
LOCAL_BLOCK = 128
#: The limits that training puts on a crop's span, in units of the plane's span (data/pairs.py _SPAN_LIMITS).
LOCAL_SPAN_LIMITS = (0.1, 2.0)


def local_percentile_fields(
    plane: np.ndarray,
    low: float,
    high: float,
    block: int = LOCAL_BLOCK,
    dtype: Any = np.float32,
    plane_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-pixel ``(lo, span)`` fields (of ``dtype``) for ``normalize="local"``: the ``low``/``high``
    percentiles of blocks of about ``block`` px, bilinearly interpolated between the blocks' centres (held
    constant beyond the outer ones), with each block's offset kept within half the plane's span of the plane's
    own and its span within :data:`LOCAL_SPAN_LIMITS` of the plane's, as training bounds a crop's. A bright
    object then sets the scale of its own neighbourhood only, not of the whole plane. ``dtype``: float64 for
    images that :func:`needs_float64` (an offset of 1e4 in float32 keeps only 1e-3 of precision).
    ``plane_range``: the plane's own ``percentile_range(plane, low, high)`` when the caller has it already."""
    plane_lo, plane_hi = percentile_range(plane, low, high) if plane_range is None else plane_range
    check_range(plane_lo, plane_hi)
    plane_span = plane_hi - plane_lo
    height, width = plane.shape
    ny, nx = max(1, round(height / block)), max(1, round(width / block))
    edges_y = np.linspace(0, height, ny + 1).astype(int)
    edges_x = np.linspace(0, width, nx + 1).astype(int)
    lo = np.empty((ny, nx))
    span = np.empty((ny, nx))
    for i in range(ny):
        for j in range(nx):
            block_lo, block_hi = percentile_range(
                plane[edges_y[i] : edges_y[i + 1], edges_x[j] : edges_x[j + 1]], low, high
            )
            lo[i, j] = min(max(block_lo, plane_lo - 0.5 * plane_span), plane_lo + 0.5 * plane_span)
            span[i, j] = min(
                max(block_hi - block_lo, LOCAL_SPAN_LIMITS[0] * plane_span), LOCAL_SPAN_LIMITS[1] * plane_span
            )

    def along(length: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = (edges[:-1] + edges[1:]) / 2 - 0.5
        position = np.interp(np.arange(length), centres, np.arange(len(centres)))
        first = np.minimum(np.floor(position).astype(int), len(centres) - 1)
        second = np.minimum(first + 1, len(centres) - 1)
        return first, second, (position - first).astype(np.float32)

    y0, y1, wy = along(height, edges_y)
    x0, x1, wx = along(width, edges_x)

    wy, wx = wy.astype(dtype), wx.astype(dtype)

    def field(grid: np.ndarray) -> np.ndarray:
        grid = grid.astype(dtype)
        rows = grid[y0] * (1 - wy)[:, None] + grid[y1] * wy[:, None]  # (height, nx)
        return rows[:, x0] * (1 - wx)[None, :] + rows[:, x1] * wx[None, :]

    return field(lo), field(span)


def needs_float64(dtype: np.dtype) -> bool:
    """Whether arithmetic on ``dtype`` needs float64: float64 itself and 32/64-bit integers, whose values
    float32 (24-bit mantissa) would round. Other dtypes are computed in float32 (half the memory)."""
    dtype = np.dtype(dtype)
    return dtype.itemsize >= 4 and dtype != np.float32


#: A plane whose percentile span or offset lies outside these is normalised (and its output denormalised) in
#: float64 whatever its dtype: float32's normal numbers run from 1.2e-38 to 3.4e38, and ``1 / span``, the offset
#: and the denormalised output need room on both sides (a float32 plane spanning 1e-40, or values of +-3e38,
#: came back as NaN).
FLOAT32_SAFE_RANGE = (1e-30, 1e30)

#: Normalised values are clipped to +-this. A value 1e30 times the plane's percentile span away from it is no
#: image but a sentinel (float32's largest value marking "no data", say), which would overflow float32 inside the
#: network and spread NaN over its neighbourhood: deblur() takes such pixels as missing (the network sees the low
#: percentile there, so their neighbours are restored as if they were dark) and returns them unchanged. Real
#: signal lies far inside, even in float images of huge dynamic range (beads at 1e3 on a 1e-7 floor: 1e10).
NORMALIZED_LIMIT = 1e30


def check_range(lo: float, hi: float) -> None:
    """Raise :class:`InputError` when ``lo .. hi`` cannot be normalised even in float64."""
    span = hi - lo
    if not np.isfinite(span):
        raise InputError(
            f"the image's intensity range ({lo:g} to {hi:g}) is too large to normalise; rescale the image "
            "(e.g. divide it by a power of ten) and try again"
        )
    if not np.isfinite(1.0 / span):
        raise InputError(
            f"the image's intensity range ({span:g}) is too small to normalise; rescale the image "
            "(e.g. multiply it by a power of ten) and try again"
        )


def needs_float64_range(lo: float, hi: float) -> bool:
    """Whether a plane normalised with ``lo .. hi`` must be computed in float64 (:data:`FLOAT32_SAFE_RANGE`)."""
    small, large = FLOAT32_SAFE_RANGE
    return not (small <= hi - lo <= large and max(abs(lo), abs(hi)) <= large)


def without_sentinels(plane: np.ndarray) -> np.ndarray:
    """``plane``, or a float64 copy with its sentinel pixels set to the low percentile of the rest:
    :data:`SENTINEL_VALUES`, and values :data:`NORMALIZED_LIMIT` percentile spans or more from the
    percentile range. For whole-plane arithmetic (registration's FFT), which such values turn into inf and NaN;
    normalisation sends both kinds to the limit instead (:func:`normalize`)."""
    huge = sentinel_mask(plane)
    if huge is not None:
        values = plane.astype(np.float64)
        rest = values[~huge]
        values[huge] = np.percentile(rest, 1) if rest.size else 0.0
        plane = values
    lo, hi = percentile_range(plane)
    if np.isfinite(hi - lo) and float(np.max(np.abs(plane))) < abs(lo) + NORMALIZED_LIMIT * (hi - lo):
        return plane
    values = plane.astype(np.float64)
    with np.errstate(over="ignore"):
        values[np.abs((values - lo) / (hi - lo)) >= NORMALIZED_LIMIT] = lo
    return values


# Rows per block when normalising in float64, so that the float64 temporaries stay ~8 MB, not plane-sized.
_FLOAT64_BLOCK_PIXELS = 1 << 20


def normalize(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 ``(plane - lo) / (hi - lo)``, clipped to +-:data:`NORMALIZED_LIMIT`; sentinels at the limit.

    For float64 and wide-integer planes the offset is removed in float64 first: in float32, an image of
    ``1e4 + small variations`` (or a 32-bit count near 1e9) would round to a handful of distinct values. So are
    planes whose range float32 cannot scale (:func:`needs_float64_range`).
    """
    check_range(lo, hi)
    scale = 1.0 / (hi - lo)
    if not needs_float64(plane.dtype) and not needs_float64_range(lo, hi):
        with np.errstate(over="ignore"):  # a sentinel near float32's largest value: clipped below
            out = (plane.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(scale)
        out = out.astype(np.float32, copy=False)
    else:
        out = np.empty(plane.shape, dtype=np.float32)
        rows = max(1, _FLOAT64_BLOCK_PIXELS // max(1, plane[:1].size))
        for start in range(0, plane.shape[0], rows):
            with np.errstate(over="ignore"):  # a sentinel at float64's largest value: clipped next
                block = (plane[start : start + rows].astype(np.float64) - lo) * scale
            out[start : start + rows] = np.clip(block, -NORMALIZED_LIMIT, NORMALIZED_LIMIT, out=block)
    np.clip(out, -NORMALIZED_LIMIT, NORMALIZED_LIMIT, out=out)
    return limit_sentinels(out, plane)


def limit_sentinels(normalised: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """``normalised`` (``plane`` normalised), with ``plane``'s :data:`SENTINEL_VALUES` set to
    +-:data:`NORMALIZED_LIMIT` in place: a plane spanning more than ~1e8 would otherwise scale them to values
    below the limit, which deblur() and training would take as image."""
    sentinels = sentinel_mask(plane)
    if sentinels is not None:
        normalised[sentinels] = np.where(plane[sentinels] > 0, NORMALIZED_LIMIT, -NORMALIZED_LIMIT)
    return normalised


def integer_clip_bounds(dtype: np.dtype, float_dtype: np.dtype) -> tuple[np.floating, np.floating]:
    """The smallest and largest values of ``float_dtype`` that convert to the integer ``dtype`` without
    overflow. Not simply ``iinfo.min``/``iinfo.max``: float32 rounds 2**31 - 1 up to 2**31 (and float64 rounds
    2**63 - 1 up to 2**63), so clipping to those and casting would wrap the brightest pixels to 0 or to the
    most negative value."""
    info = np.iinfo(dtype)
    ftype = np.dtype(float_dtype).type
    low, high = ftype(info.min), ftype(info.max)  # min is 0 or -2**k: exact in any float dtype
    while int(high) > info.max:
        high = np.nextafter(high, ftype(-np.inf))
    return low, high


def cast_like(values: np.ndarray, dtype: np.dtype, *, overwrite: bool = False) -> np.ndarray:
    """``values`` converted to ``dtype``: integers rounded and clipped to the dtype's range; floats clipped
    only where the dtype cannot hold them (float16). ``overwrite=True`` lets it round and clip ``values`` in
    place (a caller's scratch buffer) instead of in two temporary copies."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        values = np.asarray(values)
        if values.dtype.kind != "f" or values.dtype.itemsize < 4:
            values, overwrite = values.astype(np.float64 if needs_float64(dtype) else np.float32), True
        low, high = integer_clip_bounds(dtype, values.dtype)
        if overwrite and values.flags.writeable:
            np.rint(values, out=values)
            np.clip(values, low, high, out=values)
            return values.astype(dtype)
        return np.clip(np.rint(values), low, high).astype(dtype)
    info = np.finfo(dtype)
    values = np.asarray(values)
    if overwrite and values.flags.writeable and values.dtype.kind == "f":
        np.clip(values, info.min, info.max, out=values)
        return values.astype(dtype, copy=False)
    return np.clip(values, info.min, info.max).astype(dtype)

"""Image-quality metrics, classical deconvolution baselines and comparison tables (NumPy/scikit-image).

* Full-reference metrics against a sharp ground truth: :func:`psnr`, :func:`ssim`, :func:`nrmse`.
* A no-reference measure for real data without ground truth: :func:`sharpness`.
* Classical deconvolution with a known PSF: :func:`richardson_lucy`, :func:`wiener`, and
  :func:`best_classical`, the "oracle" classical baseline (best parameter chosen with the ground truth)
  that a deblurring model has to beat to be worth using.
* :func:`compare` builds a :class:`ComparisonTable` of several results (per image and optionally per plane).

Images of any integer or float dtype are accepted; classical methods work on a [0, 1] float copy of one plane
at a time (scaled with the whole image's range) and return the input's shape and dtype. nD data is processed
per YX plane (axes letters TZCYXS as everywhere else), metrics difference images in blocks of rows, and SSIM
and sharpness filter a plane in bands of rows (a few MB of float64 buffers, whatever the plane's size): memory
is the result (if any) plus about a plane, never a float copy of the stack or a dozen of one plane.

Lazy arrays (dask, zarr, h5py: see :func:`is_lazy`) are read one YX plane at a time by every function here
(by :class:`~napari_deblurgan.inputs.PlaneReader`, as ``deblur()`` reads them: a dask block that holds several
planes is computed once, a chunked zarr array read a slab of whole chunks at a time), never made into one NumPy
array, and give the values of their NumPy copies to the last bit. NaN or inf is an error that names the image
and the plane, as ``deblur()``'s does. As ``deblur()`` does, :func:`richardson_lucy`, :func:`wiener`
and :func:`best_classical` give a lazy dask array out (one plane per block) for a dask array in, and a NumPy
result for other lazy arrays.

RGBA (an ``S`` axis of 4: :func:`~napari_deblurgan.axes.is_rgba`) is read by ``deblur()``'s rule: the alpha is
opacity, not an image, so :func:`richardson_lucy` and :func:`wiener` keep it as it is, and :func:`compare` (with
a note), :func:`best_classical` and the standalone :func:`psnr`, :func:`ssim`, :func:`nrmse` and
:func:`sharpness` leave it out of their scores (their numbers are :func:`compare`'s); ``axes`` ending in
``"YXC"`` score a 4th sample as an image channel.
"""

from __future__ import annotations

import csv
import html
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage
from skimage import restoration

from .atomic_files import atomic_write
from .axes import is_rgba
from .blur.synthesize import (
    check_image_kind,
    check_psf_array,
    not_finite_message,
    plane_indices,
    resolve_image_axes,
    warn_if_even_psf,
    yx_last,
)
from .errors import Cancelled, InputError, cancel_requested
from .inputs import (
    PlaneReader,
    is_dask,
    is_lazy,
    reject_viewer_objects,
    warn_if_alpha_looks_like_a_channel,
    warn_if_alphas_differ,
)
from .normalization import (
    SENTINEL_FLOOR,
    cast_like,
    percentile_range,
    percentile_samples,
    sentinel_mask,
    without_sentinels,
)

# ------------------------------------------------------------------------------------------- lazy arrays


def _as_image(image: Any, name: str, axes: str | None = None) -> Any:
    """``image`` as the metrics and baselines read it: an ndarray checked as ``validate_image`` checks it (NaN
    or inf: an error naming the first plane that holds one, by ``axes``), or a lazy array (:func:`is_lazy`)
    checked from its dtype and shape only; its pixels are checked as they are read."""
    # first: napari's multiscale data has a dtype, a shape and __getitem__ too, but indexing it gives levels
    reject_viewer_objects(image, name)
    if is_lazy(image):
        check_image_kind(image, name=name)
        return image
    arr = np.asarray(image)
    check_image_kind(arr, name=name)
    # min and max are NaN if any value is, and +-inf if one is: no whole-stack boolean array (np.isfinite)
    if arr.dtype.kind == "f" and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise _not_finite(arr, name, axes)
    return arr


def _block_range(part: np.ndarray) -> tuple[Any, Any] | None:
    """``(min, max)`` of ``part`` without its sentinels, or None where it holds nothing else."""
    missing = sentinel_mask(part)
    if missing is not None:
        part = part[~missing]
        if not part.size:
            return None
    return part.min(), part.max()


def value_range(
    image: Any, *, name: str = "image", axes: str | None = None, colours_only: bool = False
) -> tuple[float, float]:
    """``(min, max)`` of an ndarray or a lazy array in one pass that holds one block at a time (a dask array
    by its own chunked reduction, which reads each chunk once for both); InputError for NaN or inf, naming the
    first plane (by ``axes``, or those inferred from the shape) that holds one. ``colours_only``: an RGBA
    image's alpha (by ``axes``: :func:`~napari_deblurgan.axes.is_rgba`) is left out, as the classical baselines
    keep it and :func:`compare` does not score it: opacity is no intensity.

    "No data" sentinels (:data:`~napari_deblurgan.normalization.SENTINEL_VALUES`) are left out: a no-data
    border made a range of 3.4e38, which gave PSNRs of 800 dB and SSIMs of 1 whatever the images, and
    scaled the classical baselines' images to nothing. An image of nothing but sentinels has the range
    ``(0, 0)``. Only an image whose extremes could be sentinels is read a second time, block by block."""
    shape = tuple(image.shape)
    if colours_only and axes is not None and is_rgba(shape, axes):
        # the colours are the first 3 of the 4 samples: blocks of their shape index the image itself
        shape = tuple(3 if a == "S" else n for a, n in zip(axes, shape, strict=True))
    part = tuple(slice(0, n) for n in shape)  # all of it, or an RGBA image's colours
    if is_dask(image):
        import dask

        lo, hi = dask.compute(image[part].min(), image[part].max())
    elif isinstance(image, np.ndarray):
        lo, hi = image[part].min(), image[part].max()
    else:
        lo, hi = _blockwise_range(image, lambda part: (part.min(), part.max()), shape)
    if image.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        raise _not_finite(image, name, axes)
    # extremes below SENTINEL_FLOOR: no sentinel, and the range needs no second look
    if image.dtype.kind == "f" and max(abs(float(lo)), abs(float(hi))) >= SENTINEL_FLOOR:
        lo, hi = _blockwise_range(image, _block_range, shape)
    return float(lo), float(hi)


def _blockwise_range(
    image: Any, block_range: Callable[[np.ndarray], tuple[Any, Any] | None], shape: tuple[int, ...] | None = None
) -> tuple[Any, Any]:
    """The extremes of ``block_range`` over the blocks of :func:`_blocks` of ``image`` (views of an ndarray,
    one block read at a time of a lazy one), or of its part ``shape`` starting at index 0 along every axis (an
    RGBA image's colours); ``(0, 0)`` where every block gave None."""
    lo = hi = None
    shape = tuple(image.shape) if shape is None else shape
    for block in _blocks(shape):
        # the block's whole trailing axes cut to ``shape`` too: left out, they gave a zarr or h5py RGBA image's
        # alpha to the colours' range (an S axis is one of them), or the whole image for the block ()
        key = (*block, *(slice(0, n) for n in shape[len(block) :]))
        found = block_range(np.asarray(image[key]))
        if found is None:
            continue
        # np.minimum, not min(): a NaN must stay NaN to be reported
        lo = found[0] if lo is None else np.minimum(lo, found[0])
        hi = found[1] if hi is None else np.maximum(hi, found[1])
    return (0.0, 0.0) if lo is None else (lo, hi)


def _plane_reader(image: Any, axes: str) -> PlaneReader:
    """The (Y, X) planes of ``image`` (:class:`~napari_deblurgan.inputs.PlaneReader`, read in the C order of
    :func:`plane_indices`): views of an ndarray, NumPy copies of one plane (or one slab of whole chunks, or the
    planes of one dask block: computed once) at a time from a lazy array."""
    return PlaneReader(image, axes, channels_in_plane=False, c_order=True)


def _read_checked(read: PlaneReader, idx: tuple[int, ...], image: Any, name: str) -> np.ndarray:
    """``read(idx)``, with the NaN/inf check that :func:`_as_image` made of a whole ndarray done on this plane
    of a lazy one (checking it up front would read it twice), naming the plane."""
    plane = read(idx)
    if not isinstance(image, np.ndarray):
        read.check_finite(plane, idx, name)
    return plane


def _naming_axes(image: Any, axes: str | None) -> str:
    """The axes that name a plane in an error: ``axes`` or those inferred from the shape, or for a shape that
    needs explicit axes (5D and more) with none given, or with wrong ones, dots and the last two as YX."""
    try:
        return resolve_image_axes(image, axes)
    except InputError:
        return "." * (len(image.shape) - 2) + "YX"


def _not_finite(image: Any, name: str, axes: str | None) -> InputError:
    """The InputError for NaN/inf in ``image`` (found by a reduction over it), naming the first plane that holds
    one as :meth:`~napari_deblurgan.inputs.PlaneReader.check_finite` does as a plane is read: the planes are
    read again to find it (an error path: the cost is paid once)."""
    planes = _plane_reader(image, _naming_axes(image, axes))
    for idx in planes.indices():
        planes.check_finite(planes(idx), idx, name)
    return InputError(not_finite_message(name))  # a NaN the reduction saw but no plane holds: not expected


# ----------------------------------------------------------------------------------------------- metrics


def default_data_range(reference: Any, *, axes: str | None = None, colours_only: bool = False) -> float:
    """Data range used by the metrics: the dtype's full range for integers, ``max - min`` for floats, "no
    data" sentinels left out (:func:`value_range`).

    Integer images use the dtype range (255 for uint8, 65535 for uint16) like scikit-image; for uint16
    data that fills only a small part of the range, pass ``data_range`` explicitly for more telling PSNRs.
    A constant float reference falls back to 1. A lazy reference (:func:`is_lazy`) is read block by block.
    ``axes`` (or those inferred from the shape) name the plane that holds a NaN or inf, in the error.
    ``colours_only``: a float RGBA reference's alpha is left out (:func:`value_range`), as :func:`compare`
    leaves it out of its metrics.
    """
    if not is_lazy(reference):
        reference = np.asarray(reference)
    if reference.dtype.kind in "iu":
        info = np.iinfo(reference.dtype)
        return float(info.max) - float(info.min)
    lo, hi = value_range(reference, name="reference", axes=axes, colours_only=colours_only)
    span = hi - lo
    return span if span > 0 else 1.0


def _data_range(
    reference: np.ndarray, data_range: Any, axes: str | None = None, *, colours_only: bool = False
) -> float:
    """``data_range`` checked (a finite number > 0), or :func:`default_data_range` of ``reference`` for None."""
    if data_range is None:
        return default_data_range(reference, axes=axes, colours_only=colours_only)
    if (
        isinstance(data_range, bool)
        or not isinstance(data_range, numbers.Real)
        or not (math.isfinite(float(data_range)) and float(data_range) > 0)
    ):
        raise InputError(
            f"data_range must be a finite number > 0 (the span of possible intensities, e.g. 255 for uint8), "
            f"got {data_range!r}; or leave it unset to take it from the reference."
        )
    return float(data_range)


def _pair(reference: Any, image: Any, axes: str | None = None) -> tuple[Any, Any]:
    """``reference`` and ``image`` as :func:`_as_image` takes them (ndarrays checked whole, lazy arrays by dtype
    and shape: their pixels are checked as they are read), of the same shape."""
    ref = _as_image(reference, "reference", axes)
    img = _as_image(image, "image", axes)
    if tuple(ref.shape) != tuple(img.shape):
        raise InputError(
            f"The image has shape {tuple(img.shape)} but the reference has {tuple(ref.shape)}; compare images of "
            "the same shape (crop or resample one of them)."
        )
    return ref, img


def _reading_axes(image: Any, axes: str | None) -> str | None:
    """The axes that :func:`psnr` and :func:`nrmse` read a lazy ``image`` by (its YX planes, which a dask
    block holds whole): ``axes``, or inferred from the shape; for shapes that need explicit axes (5D and more)
    the last two. None for an ndarray, which is read as it is. The value does not depend on them."""
    if axes is not None:
        checked = resolve_image_axes(image, axes)  # a wrong axes string is an error for an ndarray too
        return checked if is_lazy(image) else None
    if not is_lazy(image):
        return None
    try:
        return resolve_image_axes(image, None)
    except InputError:
        return "." * (len(image.shape) - 2) + "YX"


# Elements per block when metrics difference two images in float64: temporaries of ~8 MB, not stack-sized.
_BLOCK_ELEMENTS = 1 << 20


def _blocks(shape: tuple[int, ...]) -> Iterator[tuple[Any, ...]]:
    """Index tuples that cut an array of ``shape`` into blocks of at most ``_BLOCK_ELEMENTS`` elements, in C
    order: whole trailing axes, and a run of indices along the next one."""
    max_elements = _BLOCK_ELEMENTS
    inner, axis = 1, len(shape)
    while axis > 0 and inner * shape[axis - 1] <= max_elements:
        axis -= 1
        inner *= shape[axis]
    if axis == 0:
        yield ()
        return
    step = max(1, max_elements // inner)
    for outer in np.ndindex(*shape[: axis - 1]):
        for start in range(0, shape[axis - 1], step):
            yield (*outer, slice(start, start + step))


def _read_blocks(image: Any, axes: str | None, name: str) -> Iterator[np.ndarray]:
    """``image[block]`` for every block of :func:`_blocks` in turn: views of an ndarray; for a lazy array the
    same values, put together from its YX planes (read once each by :func:`_plane_reader`, which computes a
    dask block once, and checked by :func:`_read_checked`), so that sums over them are the ndarray's to the
    last bit. A block holds at most ``_BLOCK_ELEMENTS`` pixels: rows of one plane, or a few whole planes; the
    planes of a block that does not cover them (rows of a large plane) are kept for the next block."""
    shape = tuple(image.shape)
    if not is_lazy(image):
        for block in _blocks(shape):
            yield image[block]
        return
    assert axes is not None
    read = _plane_reader(image, axes)
    y, x = axes.index("Y"), axes.index("X")
    others = [i for i in range(len(shape)) if i not in (y, x)]
    kept: dict[tuple[int, ...], np.ndarray] = {}
    for block in _blocks(shape):
        key = (*block, *[slice(None)] * (len(shape) - len(block)))
        spans = [
            range(k, k + 1) if isinstance(k, numbers.Integral) else range(*k.indices(n))
            for k, n in zip(key, shape, strict=True)
        ]
        rows, cols = slice(spans[y].start, spans[y].stop), slice(spans[x].start, spans[x].stop)
        wanted = [tuple(idx) for idx in np.ndindex(*(len(spans[i]) for i in others))]
        wanted = [tuple(spans[i][j] for i, j in zip(others, idx, strict=True)) for idx in wanted]
        kept = {idx: kept[idx] for idx in wanted if idx in kept}  # before reading more: the planes in use only
        out = np.empty([len(span) for span in spans], dtype=image.dtype)
        view = yx_last(out, axes)
        for pos, idx in zip(np.ndindex(view.shape[:-2]), wanted, strict=True):
            if idx not in kept:
                kept[idx] = _read_checked(read, idx, image, name)
            view[pos] = kept[idx][rows, cols]
        if len(spans[y]) == shape[y] and len(spans[x]) == shape[x]:
            kept = {}  # whole planes: the next block needs none of them
        yield out.reshape([len(span) for span, k in zip(spans, key, strict=True) if isinstance(k, slice)])


def _block_pairs(reference: Any, image: Any, axes: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The blocks of :func:`_read_blocks` of ``reference`` and ``image`` (same shape) side by side."""
    return zip(_read_blocks(reference, axes, "reference"), _read_blocks(image, axes, "image"), strict=True)


def _with_data(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of a block pair where ``reference`` has data (flat), or the blocks themselves where it has
    no sentinel (:data:`~napari_deblurgan.normalization.SENTINEL_VALUES`)."""
    missing = sentinel_mask(reference)
    if missing is None:
        return reference, image
    return reference[~missing], image[~missing]


def _squared_sums(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, int]:
    """``sum((reference - image) ** 2)`` and ``sum(reference ** 2)`` in float64 over ``pairs`` of blocks
    (:func:`_block_pairs`), and the number of pixels summed: the reference's "no data" pixels are left out."""
    err = norm = 0.0
    count = 0
    for reference, image in pairs:
        reference, image = _with_data(reference, image)
        ref = reference.astype(np.float64)
        diff = ref - image
        err += float(np.square(diff, out=diff).sum())
        norm += float(np.square(ref, out=ref).sum())
        count += ref.size
    return err, norm, count


def _squared_error(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
    """``sum((reference - image) ** 2)`` in float64 over ``pairs`` of blocks (:func:`_block_pairs`), and the
    number of pixels summed: the reference's "no data" pixels are left out."""
    err = 0.0
    count = 0
    for reference, image in pairs:
        reference, image = _with_data(reference, image)
        diff = reference.astype(np.float64) - image
        err += float(np.square(diff, out=diff).sum())
        count += diff.size
    return err, count


def _psnr_from_sums(err: float, count: int, data_range: float) -> float:
    """PSNR of a squared error summed over ``count`` pixels; NaN for none (a reference of no data only)."""
    if count == 0:
        return math.nan
    mse = err / count
    return math.inf if mse == 0 else 10.0 * math.log10(data_range * data_range / mse)


def psnr(reference: Any, image: Any, data_range: float | None = None, *, axes: str | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.

    ``data_range`` defaults to :func:`default_data_range` of the reference. Lazy arrays (dask, zarr, h5py:
    :func:`is_lazy`) are read a YX plane at a time (``axes``, inferred when None, says which axes those are;
    the value does not depend on it), never whole; the result is the same as for their NumPy copies.

    Pixels with no data in the reference ("no data" sentinels, +-float32's or float64's largest value:
    :data:`~napari_deblurgan.normalization.SENTINEL_VALUES`) are left out of the mean squared error and of
    the default data range: there is nothing to compare with there. NaN when the reference has no data at all.

    RGBA (``axes``, or a last axis of 4 inferred as RGBA samples) as in :func:`compare`: the alpha (opacity, not
    an image) is left out of the error and of the default data range, so the value is :func:`compare`'s; pass
    ``axes`` ending in ``"YXC"`` to score the 4th sample as an image channel. Where inferred axes took a 4th
    channel for alpha that looks like an image, or that differs between ``reference`` and ``image`` (its first
    plane; a result that lost an image channel would otherwise score as perfect), a warning says so.
    """
    ref, img = _pair(reference, image, axes)
    scoring = _scoring_axes(ref, axes, required=False, images=[("the image", img)])
    dr = _data_range(ref, data_range, scoring or axes, colours_only=True)
    if scoring is not None and is_rgba(tuple(ref.shape), scoring):
        error, _, count = _colour_sums(ref, img, scoring)
        return _psnr_from_sums(error, count, dr)
    axes = _reading_axes(ref if is_lazy(ref) else img, axes)
    return _psnr_from_sums(*_squared_error(_block_pairs(ref, img, axes)), dr)


def _scoring_axes(
    reference: Any, axes: str | None, *, required: bool, images: Sequence[tuple[str, Any]] = ()
) -> str | None:
    """The axes the metrics and :func:`compare` score ``reference`` (and ``images``, ``(name, image)`` pairs
    scored against it) by: ``axes`` checked, or inferred from the shape by :func:`deblur`'s rules, with one
    warning where inferred axes took a 4th channel for RGBA's alpha (which they leave out) that looks like an
    image, or that differs between ``reference`` and one of ``images``. Where none can be inferred (5D and more
    without ``axes``): an InputError if ``required``, else None (:func:`psnr` and :func:`nrmse` then score every
    pixel, as before: an image that needs explicit axes is never taken for RGBA)."""
    inferred = axes is None
    try:
        resolved = resolve_image_axes(reference, axes)
    except InputError:
        if required or not inferred:
            raise
        return None
    if inferred:
        said = warn_if_alpha_looks_like_a_channel(
            reference, resolved, kept="left out of the metrics as opacity", verb="score"
        )
        if not said:
            warn_if_alphas_differ(reference, images, resolved)
    return resolved


def _colour_sums(reference: Any, image: Any, axes: str) -> tuple[float, float, int]:
    """:func:`_squared_sums` of the colour planes of RGBA images (alpha left out), one plane read at a time and
    combined as :func:`compare` combines its planes' (``math.fsum``), so that :func:`psnr` and :func:`nrmse` of
    RGBA images are :func:`compare`'s numbers to the last bit."""
    read_ref, read_img = _plane_reader(reference, axes), _plane_reader(image, axes)
    sums = [
        _squared_sums(
            _block_pairs(
                _read_checked(read_ref, idx, reference, "reference"), _read_checked(read_img, idx, image, "image")
            )
        )
        for idx in _scored_plane_indices(tuple(reference.shape), axes)
    ]
    return math.fsum(s[0] for s in sums), math.fsum(s[1] for s in sums), sum(s[2] for s in sums)


def _ssim_window(plane_shape: tuple[int, ...]) -> int:
    """SSIM's window side for planes of ``plane_shape`` (Y, X): 7, or the largest odd side that fits (>= 3)."""
    side = min(plane_shape)
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise InputError(f"SSIM needs YX planes of at least 3x3 px, got {tuple(plane_shape)}.")
    return win


#: :func:`_plane_ssim` and :func:`_plane_sharpness` work on bands of rows of a plane: float64 buffers of about
#: this many elements each (a band of at least :data:`_MIN_BAND_ROWS` rows), 8 of them for SSIM and 4 for
#: sharpness - about 8 MB and 4 MB, whatever the plane. Whole planes made 16 float64 copies (SSIM: 537 MB for a
#: 2048x2048 plane) and 4 (sharpness).
_BAND_ELEMENTS = 1 << 17
_MIN_BAND_ROWS = 32


def _bands(height: int, width: int, halo: int, first: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
    """``(top, bottom)`` rows of the bands that cover rows ``first`` to ``stop`` (default: the last) of a plane
    ``height`` x ``width``, each to be read with ``halo`` more rows on either side."""
    stop = height if stop is None else stop
    rows = max(_MIN_BAND_ROWS, _BAND_ELEMENTS // max(width, 1) - 2 * halo)
    for top in range(first, stop, rows):
        yield top, min(top + rows, stop)


def _plane_ssim(ref_plane: np.ndarray, plane: np.ndarray, data_range: float, win: int) -> float:
    """``skimage.metrics.structural_similarity(ref_plane, plane, data_range=data_range, win_size=win)`` of
    float64 copies (7x7 uniform window, sample covariance, the mean over the plane less ``(win - 1) // 2`` px
    on each side), computed in bands of rows with that many rows of overlap: memory is a few bands
    (:data:`_BAND_ELEMENTS`), not 16 float64 planes. The same arithmetic in the same order, pixel by pixel; the
    window sums along Y start at each band's top (scipy's running sums), so values agree with scikit-image's
    to about 1e-15, not bit for bit.

    Windows that hold a "no data" pixel of the reference (:data:`~napari_deblurgan.normalization.SENTINEL_VALUES`)
    are left out of the mean (such pixels are set to 0 in both copies, so that they overflow nothing); NaN
    when no window is left."""
    height, width = ref_plane.shape
    pad = (win - 1) // 2
    points = win * win
    cov_norm = points / (points - 1)  # sample covariance, as scikit-image's default
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    bands = list(_bands(height, width, pad, pad, height - pad))
    rows = max(bottom - top for top, bottom in bands) + 2 * pad
    x, y, t, ux, uy, uxx, uyy, uxy = (np.empty((rows, width)) for _ in range(8))
    sums = []
    windows = (height - 2 * pad) * (width - 2 * pad)
    for top, bottom in bands:
        n = bottom - top + 2 * pad
        bx, by, bt, bux, buy, buxx, buyy, buxy = (a[:n] for a in (x, y, t, ux, uy, uxx, uyy, uxy))
        np.copyto(bx, ref_plane[top - pad : bottom + pad], casting="unsafe")
        np.copyto(by, plane[top - pad : bottom + pad], casting="unsafe")
        missing = sentinel_mask(ref_plane[top - pad : bottom + pad])
        if missing is not None:
            bx[missing] = 0.0
            by[missing] = 0.0
            # the windows (by their centres) that hold one
            missing = ndimage.maximum_filter(missing, size=win, mode="constant")[pad : n - pad, pad : width - pad]
        ndimage.uniform_filter(bx, size=win, output=bux)
        ndimage.uniform_filter(by, size=win, output=buy)
        ndimage.uniform_filter(np.multiply(bx, bx, out=bt), size=win, output=buxx)
        ndimage.uniform_filter(np.multiply(by, by, out=bt), size=win, output=buyy)
        ndimage.uniform_filter(np.multiply(bx, by, out=bt), size=win, output=buxy)
        # scikit-image's formula on the cropped part only, in its order (2 * ux * uy == (ux * uy) * 2 exactly)
        kept = (slice(pad, n - pad), slice(pad, width - pad))
        mx, my, mt, mux, muy, mxx, myy, mxy = (a[kept] for a in (bx, by, bt, bux, buy, buxx, buyy, buxy))
        np.multiply(mux, muy, out=mt)
        np.subtract(mxy, mt, out=mxy)
        np.multiply(mxy, cov_norm, out=mxy)  # vxy
        np.multiply(mt, 2, out=mt)
        np.add(mt, c1, out=mt)  # A1 = 2 ux uy + C1
        np.multiply(mxy, 2, out=mxy)
        np.add(mxy, c2, out=mxy)  # A2 = 2 vxy + C2
        np.multiply(mux, mux, out=mx)
        np.subtract(mxx, mx, out=mxx)
        np.multiply(mxx, cov_norm, out=mxx)  # vx
        np.multiply(muy, muy, out=my)
        np.subtract(myy, my, out=myy)
        np.multiply(myy, cov_norm, out=myy)  # vy
        np.add(mx, my, out=mx)
        np.add(mx, c1, out=mx)  # B1 = ux^2 + uy^2 + C1
        np.add(mxx, myy, out=mxx)
        np.add(mxx, c2, out=mxx)  # B2 = vx + vy + C2
        np.multiply(mx, mxx, out=mx)  # D = B1 B2
        np.multiply(mt, mxy, out=mt)
        np.divide(mt, mx, out=mt)  # S = A1 A2 / D
        if missing is None:
            sums.append(float(mt.sum()))
        else:
            sums.append(float(mt[~missing].sum()))
            windows -= int(missing.sum())
    return math.fsum(sums) / windows if windows else math.nan


def ssim(reference: Any, image: Any, data_range: float | None = None, *, axes: str | None = None) -> float:
    """Structural similarity (scikit-image, 7x7 uniform window), averaged over the YX planes.

    Each YX plane (of every other axis, RGB samples included) is compared separately; planes smaller than
    7 px use the largest odd window that fits (at least 3 px). Lazy arrays are read a plane at a time.
    Windows that hold a pixel with no data in the reference (a "no data" sentinel, as for :func:`psnr`) are
    left out, and so are planes left without any; NaN when no plane has a window with data. An RGBA image's
    alpha planes are left out, and out of the default data range, as in :func:`psnr`.
    """
    ref, img = _pair(reference, image, axes)
    axes = _scoring_axes(ref, axes, required=True, images=[("the image", img)])
    dr = _data_range(ref, data_range, axes, colours_only=True)
    assert axes is not None
    win = _ssim_window((ref.shape[axes.index("Y")], ref.shape[axes.index("X")]))
    read_ref, read_img = _plane_reader(ref, axes), _plane_reader(img, axes)
    values = [
        _plane_ssim(_read_checked(read_ref, idx, ref, "reference"), _read_checked(read_img, idx, img, "image"), dr, win)
        for idx in _scored_plane_indices(tuple(ref.shape), axes)
    ]
    return _mean_of_planes(values)


def _mean_sharpness(values: Sequence[float | None]) -> float:
    """The mean of planes' sharpness, leaving out planes without data (None); NaN when no plane has any. A NaN
    plane of other origin (values whose variance overflows) makes the mean NaN, as it always did."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else math.nan


def _mean_of_planes(values: Sequence[float]) -> float:
    """The mean of planes' SSIMs, leaving out planes without data (NaN); NaN when no plane has any."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def nrmse(reference: Any, image: Any, *, axes: str | None = None) -> float:
    """Normalised root-mean-square error ``||reference - image|| / ||reference||`` (Euclidean).

    0 for identical images; scale-independent. ``inf`` if the reference is all zeros and the image is not.
    Lazy arrays are read a plane at a time, as for :func:`psnr`. The reference's "no data" pixels are left
    out, as for :func:`psnr`; NaN when the reference has no data at all. An RGBA image's alpha is left out, as
    in :func:`psnr`.
    """
    ref, img = _pair(reference, image, axes)
    scoring = _scoring_axes(ref, axes, required=False, images=[("the image", img)])
    if scoring is not None and is_rgba(tuple(ref.shape), scoring):
        return _nrmse_from_sums(*_colour_sums(ref, img, scoring))
    axes = _reading_axes(ref if is_lazy(ref) else img, axes)
    return _nrmse_from_sums(*_squared_sums(_block_pairs(ref, img, axes)))


def _nrmse_from_sums(err: float, norm: float, size: int) -> float:
    """NRMSE from ``sum((reference - image) ** 2)`` and ``sum(reference ** 2)`` over ``size`` pixels."""
    if size == 0:
        return math.nan
    err, norm = math.sqrt(err / size), math.sqrt(norm / size)
    if norm == 0:
        return 0.0 if err == 0 else math.inf
    return err / norm


#: :func:`_plane_sharpness`'s Gaussian: sigma 1 px, scipy's default truncation (4 sigma); with the Laplacian's
#: 1 px, a band of rows needs this many rows more on either side.
_SHARPNESS_SIGMA = 1.0
_SHARPNESS_HALO = int(4.0 * _SHARPNESS_SIGMA + 0.5) + 1


def _plane_sharpness(plane: np.ndarray) -> float | None:
    """``var(laplace(G * plane)) / var(G * plane)`` (float64, reflected borders), in bands of rows with
    :data:`_SHARPNESS_HALO` rows of overlap: the filtered values are those of the whole plane bit for bit, and
    the variances are combined over bands (Chan et al.), as exact as NumPy's to about 1e-15; memory is a few
    bands (:data:`_BAND_ELEMENTS`), not 4 float64 planes. A plane with "no data" sentinels:
    :func:`_plane_sharpness_without_sentinels` (None: no pixel with data)."""
    missing = sentinel_mask(plane)
    if missing is not None:
        return _plane_sharpness_without_sentinels(plane, missing)
    height, width = plane.shape
    halo = _SHARPNESS_HALO
    bands = list(_bands(height, width, halo))
    rows = min(height, max(bottom - top for top, bottom in bands) + 2 * halo)
    x, smooth, lap = (np.empty((rows, width)) for _ in range(3))
    smooth_stats, lap_stats = [], []
    for top, bottom in bands:
        lo, hi = max(0, top - halo), min(height, bottom + halo)
        bx, bsmooth, blap = x[: hi - lo], smooth[: hi - lo], lap[: hi - lo]
        np.copyto(bx, plane[lo:hi], casting="unsafe")
        # light smoothing first so single-pixel noise does not count as sharpness
        ndimage.gaussian_filter(bx, _SHARPNESS_SIGMA, mode="reflect", output=bsmooth)
        ndimage.laplace(bsmooth, mode="reflect", output=blap)
        kept = slice(top - lo, bottom - lo)
        smooth_stats.append(_moments(bsmooth[kept], bx[kept]))
        lap_stats.append(_moments(blap[kept], bx[kept]))
    variance = _combined_variance(smooth_stats)
    if variance == 0:
        return 0.0
    return _combined_variance(lap_stats) / variance


def _plane_sharpness_without_sentinels(plane: np.ndarray, missing: np.ndarray) -> float | None:
    """:func:`_plane_sharpness` of a plane with "no data" sentinels (``missing``), which would turn its variances
    into inf and NaN: they are filled for the filters (``normalization.without_sentinels``), and every pixel
    whose filtered values reach one (within :data:`_SHARPNESS_HALO` px) is left out of both variances, as the
    other metrics leave such pixels out; None when no pixel is left (the plane has no data: left out of means,
    where a NaN of other origin is not). Whole-plane float64 arithmetic: planes with sentinels are the
    exception."""
    kept = ~ndimage.binary_dilation(missing, structure=np.ones((3, 3), bool), iterations=_SHARPNESS_HALO)
    if not kept.any():
        return None
    smooth = ndimage.gaussian_filter(without_sentinels(plane).astype(np.float64), _SHARPNESS_SIGMA, mode="reflect")
    variance = float(np.var(smooth[kept]))
    if variance == 0:
        return 0.0
    return float(np.var(ndimage.laplace(smooth, mode="reflect")[kept])) / variance


def _moments(values: np.ndarray, scratch: np.ndarray) -> tuple[int, float, float]:
    """``(count, mean, sum of squared deviations)`` of ``values`` as ``np.var`` computes them (``scratch``, of
    the same shape, is overwritten)."""
    mean = float(values.sum()) / values.size
    np.subtract(values, mean, out=scratch)
    return values.size, mean, float(np.square(scratch, out=scratch).sum())


def _combined_variance(parts: Sequence[tuple[int, float, float]]) -> float:
    """The population variance of the union of parts given by :func:`_moments` (Chan, Golub and LeVeque's
    pairwise update: no cancellation of large sums of squares)."""
    count, mean, m2 = parts[0]
    for n, part_mean, part_m2 in parts[1:]:
        delta = part_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += part_m2 + delta * delta * count * n / total
        count = total
    return m2 / count


def sharpness(image: Any, *, axes: str | None = None) -> float:
    """No-reference sharpness: normalised variance of the Laplacian, averaged over YX planes.

    Per plane: ``var(laplace(G * I)) / var(G * I)`` where ``G`` is a Gaussian of sigma 1 px (it damps
    pixel noise, which would otherwise look like detail). Dividing by the image variance makes the measure
    independent of brightness and contrast; higher means more fine detail. A constant plane scores 0. Use
    it to rank versions of the *same* image (before/after deblurring), not to compare different scenes. Lazy
    arrays are read a plane at a time. An RGBA image's alpha planes are left out, as in :func:`psnr`. "No data"
    sentinels (as for :func:`psnr`) and the pixels within 5 px of one are left out of a plane's variances, and
    planes left without any pixel out of the mean; NaN when no plane has any.
    """
    arr = _as_image(image, "image", axes)
    axes = _scoring_axes(arr, axes, required=True)
    assert axes is not None
    read = _plane_reader(arr, axes)
    values = [
        _plane_sharpness(_read_checked(read, idx, arr, "image"))
        for idx in _scored_plane_indices(tuple(arr.shape), axes)
    ]
    return _mean_sharpness(values)


# --------------------------------------------------------------------------------- classical deconvolution


class _Scaler:
    """Maps an image to non-negative floats in [0, 1] and back (scale-only for non-negative data).

    Richardson-Lucy assumes non-negative data and is not offset-invariant, so data that is already
    non-negative is only divided by its maximum; data with negative values is shifted first. The range is
    the whole image's (``(min, max)``); :meth:`forward` and :meth:`inverse` then work on any part of it (one
    plane at a time, or one dask block).
    """

    def __init__(self, value_range: tuple[float, float], dtype: np.dtype):
        lo, hi = value_range
        self.low = min(0.0, float(lo))
        span = float(hi) - self.low
        self.span = span if span > 0 else 1.0
        self.dtype = dtype

    @classmethod
    def of(cls, image: Any, axes: str | None = None) -> _Scaler:
        """The scaler of ``image``'s own range (:func:`value_range`: "no data" sentinels left out, and an RGBA
        image's alpha by ``axes``)."""
        return cls(value_range(image, axes=axes, colours_only=True), image.dtype)

    def forward(self, image: np.ndarray) -> np.ndarray:
        return (image.astype(np.float64) - self.low) / self.span

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return cast_like(values * self.span + self.low, self.dtype)


def _check_iterations(iterations: Any) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise InputError(f"iterations must be a positive integer, got {iterations!r}.")
    return int(iterations)


def _pad_width(psf: np.ndarray) -> int:
    # one PSF side of mirrored border: enough that circular wrap-around of the FFT stays in the padding
    return int(max(psf.shape))


def _otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Real FFT of ``psf`` zero-padded to ``shape`` with its centre pixel moved to the origin."""
    padded = np.zeros(shape, dtype=np.float64)
    ky, kx = psf.shape
    padded[:ky, :kx] = psf
    padded = np.roll(padded, (-(ky // 2), -(kx // 2)), axis=(0, 1))
    return np.fft.rfft2(padded)


def _iter_richardson_lucy(planes: np.ndarray, psf: np.ndarray, iterations: int) -> Iterable[np.ndarray]:
    """Yield the Richardson-Lucy estimate of ``planes`` (..., Y, X; non-negative) after each iteration.

    FFT-based on reflect-padded planes. The estimate starts flat, at the plane's mean (as scikit-image's starts
    flat): stopping early regularises only from a smooth start. Started from the observed image, as it once
    was, the noise is in the estimate from the first iteration, and the best iteration count fell below the
    blurred input itself on noisy images (by 0.4 dB), understating the evaluation's "oracle classical".
    Yields views cropped to the original size; copy to keep them. Callers pass one plane at a time (Y, X):
    every array here is a few times the input.
    """
    pad = _pad_width(psf)
    data = np.pad(planes, [(0, 0)] * (planes.ndim - 2) + [(pad, pad), (pad, pad)], mode="reflect")
    shape = data.shape[-2:]
    otf = _otf(psf, shape)
    eps = 1e-12
    mean = np.maximum(data, 0.0).mean(axis=(-2, -1), keepdims=True)
    estimate = np.broadcast_to(np.maximum(mean, eps), data.shape)
    for _ in range(iterations):
        reblurred = np.fft.irfft2(np.fft.rfft2(estimate) * otf, s=shape)
        ratio = data / np.maximum(reblurred, eps)
        # the adjoint of convolution with the PSF is correlation: multiply by the conjugate OTF
        estimate = estimate * np.fft.irfft2(np.fft.rfft2(ratio) * np.conj(otf), s=shape)
        estimate = np.maximum(estimate, 0.0)
        yield estimate[..., pad:-pad, pad:-pad]


def _richardson_lucy_plane(plane01: np.ndarray, psf: np.ndarray, iterations: int, cancel: Any = None) -> np.ndarray:
    estimate = plane01
    for estimate in _iter_richardson_lucy(plane01, psf, iterations):  # noqa: B007
        _raise_if_cancelled(cancel)  # every iteration: 1,000 of them on a large plane take minutes
    return estimate


def _raise_if_cancelled(cancel: Any, what: str = "the deconvolution was cancelled") -> None:
    """Raise :class:`~napari_deblurgan.Cancelled` if ``cancel`` (a ``threading.Event`` or a callable
    returning True; None never) asks to stop, as ``deblur(cancel=...)`` does."""
    if cancel_requested(cancel):
        raise Cancelled(what)


def _per_plane(
    source: Any,
    axes: str,
    deconvolve: Callable[[np.ndarray], np.ndarray],
    cancel: Any = None,
    scaler: _Scaler | None = None,
) -> np.ndarray:
    """``deconvolve(plane in [0, 1])`` of every YX plane of ``source`` (an ndarray, or a lazy array read one
    plane at a time), scaled back into a new NumPy array of its shape and dtype.

    One plane at a time into the preallocated result: memory is the result plus a few planes. The [0, 1]
    scaling uses the whole image's range: ``scaler``, or by default ``source``'s own (an ndarray's). "No
    data" sentinels are left out of that range, filled as ``normalization.without_sentinels`` fills them
    for the deconvolution, and put back in the result unchanged. An RGBA image's alpha planes (opacity, not an
    image: :func:`~napari_deblurgan.axes.is_rgba`) are copied as they are, and left out of the default range.
    """
    scaler = _Scaler.of(source, axes) if scaler is None else scaler
    out = np.empty(source.shape, dtype=source.dtype)
    read, dst = _plane_reader(source, axes), yx_last(out, axes)
    alpha = _alpha_position(tuple(source.shape), axes)
    for idx in np.ndindex(dst.shape[:-2]):
        _raise_if_cancelled(cancel)
        plane = read(idx)
        if alpha is not None and idx[alpha] == 3:
            dst[idx] = plane  # RGBA's alpha, kept as it is
            continue
        missing = sentinel_mask(plane)
        # "no data" sentinels: filled for the arithmetic (their 3.4e38 scaled the rest to nothing, and the FFT
        # spread them), and back in the result unchanged
        values = plane if missing is None else without_sentinels(plane)
        dst[idx] = _put_back(scaler.inverse(deconvolve(scaler.forward(values))), plane, missing)
    return out


def _alpha_position(shape: tuple[int, ...], axes: str) -> int | None:
    """Where the ``S`` axis of an RGBA image (:func:`~napari_deblurgan.axes.is_rgba`) is in the index tuples of
    its YX planes (over the non-YX axes: :func:`plane_indices`, :func:`yx_last`), None for other images: the
    planes at index 3 there are its alpha."""
    return [a for a in axes if a not in "YX"].index("S") if is_rgba(shape, axes) else None


def _scored_plane_indices(shape: tuple[int, ...], axes: str) -> list[tuple[int, ...]]:
    """:func:`plane_indices` of the planes the metrics score: all, but an RGBA image's alpha planes (opacity, not
    an image; deblur() and the baselines keep it as it is)."""
    indices = plane_indices(shape, axes)
    alpha = _alpha_position(shape, axes)
    return indices if alpha is None else [where for where in indices if where[alpha] != 3]


def _put_back(result: np.ndarray, plane: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """``result`` (a deconvolved ``plane``) with ``plane``'s "no data" pixels (``missing``) as they were."""
    if missing is not None:
        result[missing] = plane[missing]
    return result


def _deconvolve(
    image: Any, psf: Any, axes: str | None, deconvolve: Callable[[np.ndarray, np.ndarray], np.ndarray], cancel: Any
) -> Any:
    """``deconvolve(plane in [0, 1], psf)`` of every YX plane of ``image``: the driver of
    :func:`richardson_lucy` and :func:`wiener` for every kind of input.

    An ndarray (a memory map included) gives an ndarray. A lazy array (:func:`is_lazy`) is never read whole:
    one pass finds its range (the [0, 1] scaling is the whole image's, as for an ndarray, so the result is
    the same), then a dask array gives a lazy dask array with one plane per block, deconvolved when computed
    (as ``deblur()`` does: no whole-stack copy, and ``cancel`` reaches the blocks), and any other lazy array
    (zarr, h5py) a NumPy result filled one plane read at a time. An RGBA image's alpha is kept as it is, as
    ``deblur()`` keeps it (with its warning where inferred axes took a 4th channel that looks like an image
    for alpha).
    """
    image = _as_image(image, "image", axes)  # an ndarray checked whole, or a lazy array checked by dtype and shape
    kernel = check_psf_array(psf)
    inferred = axes is None
    axes = resolve_image_axes(image, axes)
    warn_if_even_psf(kernel, "result")  # here, once per call: per plane, a stack would say it for every plane
    if inferred:
        warn_if_alpha_looks_like_a_channel(image, axes, kept="kept as opacity and not deconvolved", verb="deconvolve")
    if not is_lazy(image):
        return _per_plane(image, axes, lambda plane: deconvolve(plane, kernel), cancel)
    _raise_if_cancelled(cancel)
    image_range = value_range(image, axes=axes, colours_only=True)
    return _deconvolve_lazy(image, axes, lambda plane: deconvolve(plane, kernel), cancel, image_range)


def _deconvolve_lazy(
    image: Any,
    axes: str,
    deconvolve: Callable[[np.ndarray], np.ndarray],
    cancel: Any,
    image_range: tuple[float, float],
) -> Any:
    """``deconvolve(plane in [0, 1])`` of every YX plane of a lazy ``image`` whose range is ``image_range``:
    a dask array gives a lazy dask array (one plane per block), another lazy array a NumPy array."""
    scaler = _Scaler(image_range, image.dtype)
    # a dask block holds one plane: an RGBA image's alpha planes are told by where the block is
    s = axes.index("S") if is_rgba(tuple(image.shape), axes) else None

    def run(source: Any, block_info: Any = None) -> np.ndarray:
        if s is not None and block_info is not None and block_info[0]["array-location"][s][0] == 3:
            return np.array(source)  # RGBA's alpha, kept as it is
        return _per_plane(source, axes, deconvolve, cancel, scaler)

    if not is_dask(image):
        return run(image)
    # one block per YX plane: a block of many planes would hold them all (in and out) while it is computed
    planes = image.rechunk({i: -1 if a in "YX" else 1 for i, a in enumerate(axes)})
    # meta given: otherwise dask calls run on a dummy block to guess the output type
    return planes.map_blocks(run, dtype=image.dtype, meta=np.empty((0,) * image.ndim, image.dtype))


def richardson_lucy(image: Any, psf: Any, iterations: int = 30, *, axes: str | None = None, cancel: Any = None) -> Any:
    """Richardson-Lucy deconvolution of every YX plane with ``psf``; same shape and dtype as ``image``.
    ``cancel`` (a ``threading.Event`` or a callable returning True) stops it between iterations with
    :class:`~napari_deblurgan.Cancelled`.

    Works for any dtype and value range (the image is scaled to [0, 1] floats and back; integer results
    are rounded and clipped). Borders are reflect-padded by one PSF side so they do not ring. Not clipped
    to the input's range: deconvolution may legitimately brighten point sources. "No data" sentinels
    (+-float32's or float64's largest value) are left out of the scaling, filled with the plane's low
    percentile for the deconvolution, and come back unchanged (as in :func:`wiener`). A dask array gives a lazy
    dask array (one plane per block, computed when asked for; its range is read once up front), a zarr or
    h5py array a NumPy array read one plane at a time. An RGBA image's alpha (opacity, not an image) comes back
    unchanged and the colours are deconvolved as RGB, as :func:`deblur` keeps it; when a last axis of 4 was
    inferred as RGBA but its 4th channel looks like an image, a warning says to pass ``axes`` ending in
    ``"YXC"`` to deconvolve all four channels.

    Give ``psf`` odd sides, as for :func:`~napari_deblurgan.synthesize_blur`: an even-sized PSF has no centre
    pixel and shifts the result by half a pixel (its pixel ``side // 2`` is taken for the centre), which an
    :class:`~napari_deblurgan.EvenPSFWarning` says once per call. A PSF that blurred an image in
    :func:`~napari_deblurgan.synthesize_blur` takes the same centre there, so deconvolving that image with it
    undoes both shifts.
    """
    iterations = _check_iterations(iterations)
    return _deconvolve(
        image, psf, axes, lambda plane, kernel: _richardson_lucy_plane(plane, kernel, iterations, cancel), cancel
    )


def _wiener_plane(plane01: np.ndarray, psf: np.ndarray, balance: float) -> np.ndarray:
    pad = _pad_width(psf)
    padded = np.pad(plane01, pad, mode="reflect")
    return restoration.wiener(padded, psf, balance, clip=False)[pad:-pad, pad:-pad]


def wiener(image: Any, psf: Any, balance: float = 0.01, *, axes: str | None = None, cancel: Any = None) -> Any:
    """Wiener-Hunt deconvolution (scikit-image, Laplacian regulariser) of every YX plane; same shape/dtype.
    ``cancel`` stops it between planes, as for :func:`richardson_lucy`; lazy input as there.

    ``balance`` trades sharpness (small) against noise amplification (large). Any dtype/range: the image is
    scaled to [0, 1] floats, reflect-padded by one PSF side (no border ringing from the FFT's periodic
    boundary), deconvolved, cropped and converted back. RGBA as in :func:`richardson_lucy`: alpha is kept. An
    even-sized ``psf`` shifts the result by half a pixel, as in :func:`richardson_lucy` (an
    :class:`~napari_deblurgan.EvenPSFWarning`, once per call): give it odd sides.
    """
    if isinstance(balance, bool) or not isinstance(balance, numbers.Real) or not balance > 0:
        raise InputError(f"balance must be a number > 0, got {balance!r}.")
    return _deconvolve(image, psf, axes, lambda plane, kernel: _wiener_plane(plane, kernel, float(balance)), cancel)


#: :func:`best_classical`'s Wiener balances: 1e-4..1e4 in thirds of a decade, the model card's oracle
#: (scripts/evaluate_default_model.py). On smooth, noisy images (scikit-image's ``cell``) the best balance is
#: 10-50, and one of the model card's 90 cases peaked at 1e2, the end of an earlier scan that stopped there.
ORACLE_WIENER_BALANCES = tuple(float(b) for b in np.logspace(-4, 4, 25))


def best_classical(
    blurred: Any,
    sharp: Any,
    psf: Any,
    *,
    rl_iterations: Iterable[int] = range(2, 31),
    wiener_balances: Iterable[float] = ORACLE_WIENER_BALANCES,
    axes: str | None = None,
    data_range: float | None = None,
) -> dict[str, Any]:
    """Oracle classical baseline: the best (by PSNR against ``sharp``) of Richardson-Lucy and Wiener.

    Richardson-Lucy runs once up to ``max(rl_iterations)``; every listed iteration count is scored on the
    way. Wiener is run for every balance. Results are scored in the dtype of ``blurred`` (what a user gets),
    with ``data_range`` as in :func:`psnr`. "Oracle" because the parameter is picked with the ground truth,
    which a real user does not have: it is an upper bound on what these methods give with the true PSF. An
    even-sized ``psf`` shifts every candidate by half a pixel relative to ``blurred``, as in
    :func:`richardson_lucy` (an :class:`~napari_deblurgan.EvenPSFWarning`, once per call), which lowers their
    scores when ``blurred`` is aligned with ``sharp`` (not when ``synthesize_blur`` made it with the same PSF: its
    opposite shift cancels this one): give it odd sides.
    The default balances (:data:`ORACLE_WIENER_BALANCES`) span 1e-4..1e4 in thirds of a decade, as the model
    card's oracle does: on smooth, noisy images (scikit-image's ``cell``) the best balance is 10-50, and a
    scan that stopped at 1 understated Wiener by 4-7 dB.

    Returns a dict with ``method`` ("richardson_lucy" or "wiener"), ``parameters`` (``{"iterations": n}``
    or ``{"balance": b}``), ``image`` (the best result, shape/dtype of ``blurred``), ``psnr``, ``ssim`` (of
    the best result) and the scans ``richardson_lucy = {"iterations": [...], "psnr": [...]}`` and
    ``wiener = {"balance": [...], "psnr": [...]}``.

    Stacks are scanned plane by plane (each candidate's squared error summed over the planes), then the
    winner is computed again into the result: memory is the result plus a few planes, not one stack per
    candidate. A single plane keeps its best result instead of computing it twice. Lazy ``blurred`` and
    ``sharp`` (:func:`is_lazy`) are read a plane at a time (``blurred``'s range in one pass first, as
    :func:`richardson_lucy` does); a dask ``blurred`` gives a lazy dask ``image`` (one plane per block, the
    winner computed again when it is computed: once for ``ssim``, once more when used), other lazy arrays a
    NumPy one.
    """
    sharp_arr, arr = _pair(sharp, blurred, axes)  # ndarrays, or lazy arrays read a plane at a time
    iterations = sorted({_check_iterations(int(n)) for n in rl_iterations})
    balances = [float(b) for b in wiener_balances]
    if not iterations and not balances:
        raise InputError("Give at least one Richardson-Lucy iteration count or one Wiener balance.")
    if any(not b > 0 for b in balances):
        raise InputError("Wiener balances must be > 0.")
    kernel = check_psf_array(psf)
    inferred = axes is None
    axes = resolve_image_axes(arr, axes)
    warn_if_even_psf(kernel, "result")
    if inferred:
        warn_if_alpha_looks_like_a_channel(arr, axes, kept="kept as opacity, not scored", verb="deconvolve")
    # an RGBA image's alpha is opacity, as in richardson_lucy/wiener (which keep it) and compare (which does not
    # score it): left out of the ranges and the scan, so the scores are compare()'s of the returned image
    dr = _data_range(sharp_arr, data_range, axes, colours_only=True)
    blurred_range = value_range(arr, axes=axes, colours_only=True)  # one pass, a block at a time for a lazy array
    scaler = _Scaler(blurred_range, arr.dtype)
    read_src, read_ref = _plane_reader(arr, axes), _plane_reader(sharp_arr, axes)
    indices = _scored_plane_indices(tuple(arr.shape), axes)
    single = len(indices) == 1
    size = 0  # the reference's pixels with data, as the scores count them

    # candidates in scan order (ties keep the first): Richardson-Lucy iteration counts, then Wiener balances
    candidates = [("richardson_lucy", {"iterations": n}) for n in iterations]
    candidates += [("wiener", {"balance": b}) for b in balances]
    errors = [0.0] * len(candidates)
    kept: tuple[int, np.ndarray] | None = None  # single plane: the best result so far

    def score(k: int) -> float:
        return _psnr_from_sums(errors[k], size, dr)

    def record(k: int, plane_ref: np.ndarray, result: np.ndarray) -> None:
        nonlocal kept
        errors[k] += _squared_error(_block_pairs(plane_ref, result))[0]
        if single and (kept is None or score(k) > score(kept[0])):
            kept = (k, result)

    wanted = {n: k for k, n in enumerate(iterations)}
    for idx in indices:
        plane = _read_checked(read_src, idx, arr, "image")
        missing = sentinel_mask(plane)
        plane01 = scaler.forward(plane if missing is None else without_sentinels(plane))
        plane_ref = _read_checked(read_ref, idx, sharp_arr, "reference")
        ref_missing = sentinel_mask(plane_ref)
        size += plane_ref.size - (0 if ref_missing is None else int(ref_missing.sum()))

        def result(values: np.ndarray) -> np.ndarray:
            return _put_back(scaler.inverse(values), plane, missing)  # noqa: B023 (called in this iteration)

        if iterations:
            for n, estimate in enumerate(_iter_richardson_lucy(plane01, kernel, max(iterations)), start=1):
                if n in wanted:
                    record(wanted[n], plane_ref, result(estimate))
        for j, balance in enumerate(balances):
            record(len(iterations) + j, plane_ref, result(_wiener_plane(plane01, kernel, balance)))

    scores = [score(k) for k in range(len(candidates))]
    best_k = 0
    for k, score in enumerate(scores):
        if score > scores[best_k]:
            best_k = k
    method, parameters = candidates[best_k]
    if method == "richardson_lucy":

        def winner(plane: np.ndarray) -> np.ndarray:
            return _richardson_lucy_plane(plane, kernel, parameters["iterations"])
    else:

        def winner(plane: np.ndarray) -> np.ndarray:
            return _wiener_plane(plane, kernel, parameters["balance"])

    if single and kept is not None and kept[0] == best_k and not is_dask(arr):
        image = np.empty(arr.shape, dtype=arr.dtype)
        yx_last(image, axes)[(0,) * (len(arr.shape) - 2)] = kept[1]
    elif is_lazy(arr):
        image = _deconvolve_lazy(arr, axes, winner, None, blurred_range)
    else:
        image = _per_plane(arr, axes, winner)
    best: dict[str, Any] = {"method": method, "parameters": parameters, "image": image, "psnr": scores[best_k]}
    best["ssim"] = ssim(sharp_arr, image, dr, axes=axes)  # an RGBA image's alpha left out, as in compare()
    best["richardson_lucy"] = {"iterations": iterations, "psnr": scores[: len(iterations)]}
    best["wiener"] = {"balance": balances, "psnr": scores[len(iterations) :]}
    return best


# ------------------------------------------------------------------------------------------ comparison

_COLUMNS = ("name", "slice", "psnr", "ssim", "nrmse", "sharpness")


class ComparisonTable:
    """Metrics of several results: one row per result (and per YX plane with ``per_slice=True``).

    ``rows`` is a list of dicts with keys ``name``, ``slice`` (None for the whole image, else the index
    tuple over the non-YX axes), ``psnr``, ``ssim``, ``nrmse`` (None without a reference) and ``sharpness``.
    ``notes`` says what makes some numbers meaningless (a result in other units than the reference) and what
    the numbers leave out (an RGBA image's alpha).
    """

    columns = _COLUMNS

    def __init__(self, rows: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()):
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]
        self.notes: list[str] = list(notes)

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _cell(key: str, value: Any) -> str:
        if value is None:
            return "" if key == "slice" else "-"
        if key == "slice":
            return ",".join(str(v) for v in value)
        if isinstance(value, float):
            return "inf" if math.isinf(value) else f"{value:.4g}"
        return str(value)

    def _text_rows(self) -> list[list[str]]:
        return [[self._cell(k, row.get(k)) for k in self.columns] for row in self.rows]

    def __str__(self) -> str:
        body = self._text_rows()
        widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(self.columns)]
        lines = [
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(self.columns, widths, strict=True))
            )
        ]
        for r in body:
            lines.append(
                "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ComparisonTable({len(self.rows)} rows)\n{self}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self._text_rows())
        # the notes say which numbers mean nothing (other units): a notebook must show them as print() does
        notes = "".join(f"<p>note: {html.escape(note)}</p>" for note in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the table as CSV (full float precision) atomically: a temporary file, then a rename. A leading
        ``~`` is the home folder."""
        from .user_paths import expand_user

        with atomic_write(expand_user(path)) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for row in self.rows:
                cells = []
                for key in self.columns:
                    value = row.get(key)
                    if key == "slice":
                        cells.append("" if value is None else ",".join(str(v) for v in value))
                    elif value is None:
                        cells.append("")
                    else:
                        cells.append(repr(value) if isinstance(value, float) else str(value))
                writer.writerow(cells)


def compare(
    results: Mapping[str, Any] | Sequence[Any],
    reference: Any = None,
    *,
    axes: str | None = None,
    per_slice: bool = False,
    data_range: float | None = None,
    cancel: Any = None,
) -> ComparisonTable:
    """Score every result against ``reference`` (PSNR, SSIM, NRMSE, sharpness) or, without one, by sharpness.

    ``results`` maps names to images (a sequence is named "image 0", "image 1", ...); every image must
    have the reference's shape. ``per_slice=True`` adds one row per YX plane of stacks (``slice`` is the
    index over the other axes). ``data_range`` is passed to :func:`psnr`/:func:`ssim` (default: from the
    reference, see :func:`default_data_range`: for integer images the dtype's range, which on a uint16 image
    that fills a small part of it raises PSNR and SSIM alike - pass the reference's own range,
    ``float(reference.max()) - float(reference.min())``, as the Compare panel does).

    One pass over the YX planes: each plane of each image is read once and every metric of it (whole-image
    and per-slice) comes from that read, so memory is a few planes, whatever the stack. Dask arrays and other
    lazy arrays (zarr, h5py; :func:`is_lazy`) are read plane by plane, never computed whole. ``cancel`` (a
    ``threading.Event`` or a callable returning True) stops it between planes with
    :class:`~napari_deblurgan.Cancelled`.

    ``axes`` (letters over ``TZCYXS``, the same for every image) is inferred from the shape when None, by
    :func:`deblur`'s rules: a last axis of 3 or 4 is RGB(A) samples (``S``), each colour scored as a plane.
    RGBA's alpha (opacity, not an image; :func:`deblur` keeps it as it is) is left out of every number (and
    of the default ``data_range``), and a note says so; when inferred axes took a 4th channel that looks like
    an image (more than two values) for alpha, or whose first plane differs between the reference and a result,
    a warning says to pass ``axes`` ending in ``"YXC"`` to score all four channels. A
    grey stack whose last axis happens to be 3 or 4 long needs ``axes`` (``"ZYX"``): that is what
    :func:`deblur`'s ``rgb=False`` spells, and ``axes`` already says it here (there is no ``rgb`` argument:
    two ways to say one thing, and napari's Compare panel passes each layer's axes, ``S`` for an RGB layer).
    """
    if isinstance(results, Mapping):
        items = [(str(name), image) for name, image in results.items()]
    elif isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        raise InputError("results must be a dict {name: image} or a list of images.")
    else:
        items = [(f"image {i}", image) for i, image in enumerate(results)]
    if not items:
        raise InputError("Nothing to compare: results is empty.")
    images = [(name, _as_image(image, f"result {name!r}", axes)) for name, image in items]
    ref = None if reference is None else _as_image(reference, "reference", axes)
    first_shape = tuple(images[0][1].shape if ref is None else ref.shape)
    for name, image in images:
        if tuple(image.shape) != first_shape:
            raise InputError(
                f"Result {name!r} has shape {tuple(image.shape)} but "
                f"{'the reference' if ref is not None else 'the first result'} has {first_shape}; "
                "all images must have the same shape."
            )
    scored_against = [] if ref is None else [(f"result {name!r}", image) for name, image in images]
    axes = _scoring_axes(ref if ref is not None else images[0][1], axes, required=True, images=scored_against)
    assert axes is not None
    dr = None if ref is None else _data_range(ref, data_range, axes, colours_only=True)
    indices = _scored_plane_indices(first_shape, axes)
    alpha = _alpha_position(first_shape, axes)
    plane_shape = (first_shape[axes.index("Y")], first_shape[axes.index("X")])
    win = None if ref is None else _ssim_window(plane_shape)
    # the plane _units_note looks at: the middle one along every other axis
    middle = tuple(n // 2 for i, n in enumerate(first_shape) if axes[i] not in "YX")

    read_ref = None if ref is None else _plane_reader(ref, axes)
    readers = [_plane_reader(image, axes) for _, image in images]
    scores: list[list[_PlaneScores]] = [[] for _ in images]
    ref_range: tuple[float, float] | None = None
    ref_constant: float | None = None
    ranges: list[tuple[float, float] | None] = [None] * len(images)
    for where in indices:
        _raise_if_cancelled(cancel, "the comparison was cancelled")
        ref_plane = None if read_ref is None else _read_checked(read_ref, where, ref, "reference")
        if ref_plane is not None and where == middle:
            ref_range = _units_range(ref_plane)
            ref_constant = _constant_value(ref_plane)
        for k, (name, image) in enumerate(images):
            plane = _read_checked(readers[k], where, image, f"result {name!r}")
            scores[k].append(_plane_scores(ref_plane, plane, dr, win))
            if ref_plane is not None and where == middle:
                ranges[k] = _units_range(plane)

    if ref_constant is not None:  # no units to compare with: the percentiles of a constant are a unit range
        assert dr is not None
        notes = [_constant_reference_note(ref_constant, dr, data_range is None and ref.dtype.kind == "f")]
    else:
        notes = (
            []
            if ref_range is None
            else [
                note
                for (name, _), percentiles in zip(images, ranges, strict=True)
                if percentiles is not None and (note := _units_note(name, percentiles, ref_range)) is not None
            ]
        )
    if alpha is not None:
        notes.append(_alpha_note(axes))
    rows = []
    for (name, _), planes in zip(images, scores, strict=True):
        rows.append(_row(name, None, planes, dr))
        if per_slice and len(indices) > 1:
            rows.extend(_row(name, where, [one], dr) for where, one in zip(indices, planes, strict=True))
    return ComparisonTable(rows, notes)


class _PlaneScores(NamedTuple):
    """What :func:`compare` keeps of one YX plane of one result: sums and scores, no pixels."""

    error: float | None  # sum((reference - image) ** 2); None without a reference
    norm: float | None  # sum(reference ** 2)
    count: int | None  # the pixels in those sums: the reference's "no data" pixels are left out
    ssim: float | None
    sharpness: float | None  # None: no pixel with data (all "no data" sentinels)


def _plane_scores(ref_plane: np.ndarray | None, plane: np.ndarray, dr: float | None, win: int | None) -> _PlaneScores:
    if ref_plane is None or dr is None or win is None:
        return _PlaneScores(None, None, None, None, _plane_sharpness(plane))
    # in blocks of rows: no plane-sized float64 difference
    error, norm, count = _squared_sums(_block_pairs(ref_plane, plane))
    return _PlaneScores(error, norm, count, _plane_ssim(ref_plane, plane, dr, win), _plane_sharpness(plane))


def _row(name: str, where: tuple[int, ...] | None, planes: list[_PlaneScores], dr: float | None):
    """The table row of ``planes`` (all of an image's, or one): the same numbers as :func:`psnr`,
    :func:`ssim` (the mean over planes), :func:`nrmse` and :func:`sharpness` of those planes."""
    row: dict[str, Any] = {"name": name, "slice": where, "psnr": None, "ssim": None, "nrmse": None}
    if dr is not None:
        error = math.fsum(p.error for p in planes if p.error is not None)
        norm = math.fsum(p.norm for p in planes if p.norm is not None)
        size = sum(p.count for p in planes if p.count is not None)
        row["psnr"] = _psnr_from_sums(error, size, dr)
        row["ssim"] = _mean_of_planes([p.ssim for p in planes if p.ssim is not None])
        row["nrmse"] = _nrmse_from_sums(error, norm, size)
    row["sharpness"] = _mean_sharpness([p.sharpness for p in planes])
    return row


def _units_range(plane: np.ndarray) -> tuple[float, float]:
    """The 1-99.8th percentiles of a plane, as :func:`_units_note` compares them: of a float64 copy of the
    pixels that :func:`percentile_range` takes (every k-th of a large plane), made after choosing them - the
    same values as from a float64 copy of the whole plane, which was two float32 planes of memory."""
    return percentile_range(np.asarray(percentile_samples(plane), dtype=np.float64))


def _constant_value(plane: np.ndarray) -> float | None:
    """The value of a constant plane ("no data" sentinels left out), None for any other."""
    values = without_sentinels(plane)
    if values.size == 0 or values.min() != values.max():
        return None
    return float(values.min())


def _constant_reference_note(value: float, data_range: float, fallback: bool) -> str:
    """The note of :func:`compare` for a ground truth that is constant (in the plane the units are compared
    on): it has no intensity range to compare the results' with, and PSNR/SSIM use ``data_range`` (1 where a
    constant float reference falls back to it, else the dtype's range or the caller's)."""
    which = "data range 1 assumed" if fallback else f"data range {data_range:.6g} used"
    return (
        f"ground truth constant ({value:.4g}); {which} for PSNR and SSIM: pass data_range= to set the span of "
        "possible intensities"
    )


def _alpha_note(axes: str) -> str:
    """The note of :func:`compare` for RGBA images (:func:`~napari_deblurgan.axes.is_rgba`): their alpha is
    left out of every number, and how to score it as a channel instead."""
    return (
        "the 4th sample of these RGBA images (alpha: opacity, not an image) is left out of the metrics; pass "
        f"axes={axes.replace('S', 'C')!r} to score it as a 4th channel"
    )


def _units_note(name: str, percentiles: tuple[float, float], ref_percentiles: tuple[float, float]) -> str | None:
    """A note when a result's intensities (1-99.8 percentiles of its middle plane) are not in the reference's
    (of the same plane) units - a [0, 1] float copy against a uint16 ground truth, say: PSNR and NRMSE compare
    values as they are, and would then score the units, not the restoration. Spans 10x apart, or offsets more
    than two reference spans apart, count as other units: blur lowers a sparse scene's bright percentile, but
    not 10-fold (the blurred sample pair: 0.6-0.9 of the sharp one's), and 8 against 16 bits, or [0, 1] floats
    against counts, are 16x to thousands of times apart."""
    (lo, hi), (ref_lo, ref_hi) = percentiles, ref_percentiles
    span, ref_span = hi - lo, ref_hi - ref_lo
    if 0.1 <= span / ref_span <= 10 and abs(lo - ref_lo) <= 2 * ref_span:
        return None
    return (
        f"{name!r} spans {lo:.4g}-{hi:.4g} but the ground truth {ref_lo:.4g}-{ref_hi:.4g} (1st-99.8th "
        "percentiles): other units? PSNR and NRMSE compare the values as they are; rescale one of them first."
    )

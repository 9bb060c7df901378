"""Objects that look like images to a user but are not pixel arrays: napari layers and multiscale data.

``np.asarray`` turns a napari layer into a 0-d object array (whose error would then talk about dtypes) and
napari's multiscale data into its *coarsest* level, so a deblurred "image" would silently be the smallest
pyramid level. The public functions call :func:`reject_viewer_objects` before converting their inputs, so
that both get one message that says what to pass instead. No napari import: recognised by their types'
modules and names.

Also how the planes of any of the arrays they accept are read (:class:`PlaneReader`: views of an ndarray or a
memory map, a slab of whole chunks of a zarr array or a dask block's planes at a time, one at a time otherwise)
and checked for NaN/inf as they are read, with errors that name the plane (``deblur()`` and the comparison
functions share both).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .axes import channel_axis, is_rgba, plane_name
from .errors import InputError, user_stacklevel


def is_dask(value: Any) -> bool:
    """True for dask arrays (checked by type, so that NumPy-only sessions never import dask)."""
    return type(value).__module__.split(".")[0] == "dask"


def is_lazy(image: Any) -> bool:
    """Whether ``image`` is read a region at a time rather than through ``np.asarray``, which would read it
    whole: a dask array or another array-like with a NumPy ``dtype``, a ``shape`` and ``__getitem__`` that is
    no ndarray (zarr, h5py, tifffile's zarr store). A memory map is an ndarray: its planes are views that the
    OS reads on demand. Torch tensors (a ``torch.dtype``) are not lazy: ``np.asarray`` takes them as they are."""
    return (
        not isinstance(image, np.ndarray)
        and isinstance(getattr(image, "dtype", None), np.dtype)
        and hasattr(image, "shape")
        and hasattr(image, "__getitem__")
    )


def _from_napari(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "napari"


def _is_multiscale_data(value: Any) -> bool:
    return _from_napari(value) and type(value).__name__ == "MultiScaleData"


def is_torch_tensor(value: Any) -> bool:
    """True for torch tensors (and their subclasses, such as parameters), told by type: no torch import."""
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(value).__mro__)


def reject_torch_tensor(value: Any, name: str = "image", *, cpu_ok: bool = False) -> None:
    """InputError for a torch tensor, saying to pass a NumPy array; with ``cpu_ok``, only for one that NumPy
    cannot read as it is (one that requires grad, or one on a GPU), since ``np.asarray`` reads a plain CPU
    tensor."""
    if not is_torch_tensor(value):
        return
    device = getattr(getattr(value, "device", None), "type", "cpu")
    grad = bool(getattr(value, "requires_grad", False))
    if cpu_ok and device == "cpu" and not grad:
        return
    where = f" on {value.device}" if device != "cpu" else ""
    why = f"{where}{' that requires grad' if grad else ''}"
    raise InputError(f"The {name} is a torch tensor{why}; pass a NumPy array: tensor.detach().cpu().numpy().")


def reject_non_arrays(value: Any, name: str = "image") -> None:
    """InputError for None and for a file path (a ``str``, ``bytes`` or ``os.PathLike``, or a list of them)
    given where pixels are expected: ``np.asarray`` would make a string array whose error talks about dtypes."""
    import os

    if value is None:
        raise InputError(f"The {name} is None; pass an array.")
    paths = (str, bytes, os.PathLike)
    if isinstance(value, paths) or (
        isinstance(value, list | tuple) and value and all(isinstance(v, paths) for v in value)
    ):
        shown = (
            " " + repr(os.fsdecode(value))
            if isinstance(value, paths)
            else "s " + ", ".join(repr(os.fsdecode(v)) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        )
        raise InputError(
            f"pass the {name} as an array, e.g. tifffile.imread(path) or skimage.io.imread(path); got the path{shown}"
        )


def reject_unknown_chunks(value: Any, name: str = "image") -> None:
    """InputError for a dask array whose chunk sizes are unknown (after boolean indexing, ``x[x > 0]``, or
    ``da.from_delayed`` with a NaN shape): its shape holds NaN, which every reader here would meet as "cannot
    convert float NaN to integer". Dask's own fix is ``compute_chunk_sizes()``."""
    if not is_dask(value):
        return
    shape = tuple(getattr(value, "shape", ()))
    if any(isinstance(s, float) and math.isnan(s) for s in shape):
        shown = "(" + ", ".join("?" if isinstance(s, float) and math.isnan(s) else str(s) for s in shape) + ")"
        raise InputError(
            f"The {name} is a dask array whose chunk sizes are unknown (shape {shown}, e.g. after boolean "
            "indexing); call its .compute_chunk_sizes() first (dask computes them in place and returns the "
            "array), then pass it."
        )


def reject_viewer_objects(value: Any, name: str = "image") -> None:
    """InputError for None or a file path (:func:`reject_non_arrays`), a napari layer, napari multiscale data or
    a list of arrays of different shapes (the levels of a pyramid), naming the array to pass instead; nothing for
    anything else. Seen through napari's ``PublicOnlyProxy`` too (what a plugin's ``viewer.layers[i].data``
    is), which hides what it wraps. A torch tensor that NumPy cannot read as it is (on a GPU, or requiring
    grad) is one too."""
    reject_non_arrays(value, name)
    reject_torch_tensor(value, name, cpu_ok=True)
    reject_unknown_chunks(value, name)
    if _from_napari(value) and hasattr(value, "__wrapped__"):
        value = value.__wrapped__
    if _is_multiscale_data(value):
        shapes = ", ".join(str(tuple(level.shape)) for level in value)
        raise InputError(
            f"The {name} is multiscale data with {len(value)} levels ({shapes}); pass one level, e.g. "
            "layer.data[0] for full resolution (np.asarray would give the coarsest level)."
        )
    if _from_napari(value) and hasattr(value, "data") and hasattr(value, "name"):
        # a layer (unwrapped above when it came through napari's proxy)
        data = "layer.data[0] (full resolution)" if getattr(value, "multiscale", False) else "layer.data"
        raise InputError(
            f"The {name} is a napari {type(value).__name__} layer ({value.name!r}); pass its pixels instead: {data}."
        )
    if isinstance(value, list | tuple) and len(value) > 1 and all(hasattr(v, "shape") for v in value):
        shapes = [tuple(v.shape) for v in value]
        if len(set(shapes)) > 1 and all(len(s) == len(shapes[0]) for s in shapes):
            raise InputError(
                f"The {name} is a list of {len(value)} arrays of different shapes ({', '.join(map(str, shapes))}), "
                "like the levels of a multiscale image; pass one array, e.g. the first (full resolution)."
            )


# ------------------------------------------------------------------------------------------- plane reader

#: The most bytes one read of a chunked array may hold: a slab of whole chunks (zarr, chunked h5py) or dask
#: blocks along the axes outside the plane, so that a chunk several planes deep is decoded (a block computed)
#: once, not once per plane. A deeper chunk of large planes is read in slabs of as many planes as fit.
SLAB_BYTES = 256 * 2**20

#: A dask block's planes are kept only for blocks at most this many planes deep: a deeper block is often a
#: dask array over a file in one chunk (``da.from_array`` of a memory map or an h5py dataset), which is read
#: one plane at a time instead (dask then reads one plane of the file, not the stack).
DASK_SLAB_PLANES = 16


def read_region(image: Any, key: tuple[Any, ...], what: str) -> np.ndarray:
    """``np.asarray(image[key])``, with the errors of an object whose indexing gives no pixels (tifffile's
    ``TiffPageSeries`` gives pages) turned into one InputError that says what to pass instead. A dask array's
    errors are its graph's (an InputError of a lazy ``deblur()`` result among them): passed on as they are."""
    if is_dask(image):
        return np.asarray(image[key])
    try:
        return np.asarray(image[key])
    except (TypeError, IndexError, KeyError, ValueError) as error:
        raise InputError(
            f"reading {what} of this {type(image).__name__} failed ({type(error).__name__}: {str(error)[:200]}); "
            "pass its pixels as a NumPy array or a dask array"
        ) from None


def warn_if_alpha_looks_like_a_channel(image: Any, axes: str, *, kept: str, verb: str) -> bool:
    """A last axis of 4 is taken as RGBA (as napari does; :func:`~napari_deblurgan.axes.is_rgba`), and alpha is
    opacity, not an image: warn when the first plane's 4th sample looks like an image (more than two values)
    rather than opacity (constant, or a mask), e.g. a 4-channel microscopy image stored channels-last, which a
    user would want processed. For inferred axes only (given ones say what the axis is). ``kept``: what the
    function does with alpha ("kept as opacity and not deblurred"); ``verb``: what it does to an image
    ("deblur"). Reads one plane's alpha channel only (of an array-like too), subsampled to about 256 x 256
    values. Returns whether it warned."""
    if not axes.endswith("S") or not is_rgba(tuple(image.shape), axes):
        return False
    alpha = read_region(image, _first_alpha_key(image), "one plane's alpha")
    values = np.unique(alpha[:: max(1, alpha.shape[0] // 256), :: max(1, alpha.shape[1] // 256)])
    if values.size > 2:
        _warn_about_the_rgba_reading(
            f"this {tuple(image.shape)} image",
            axes,
            kept,
            f"it holds at least {values.size} different values, like an image channel",
            verb,
        )
        return True
    return False


def _warn_about_the_rgba_reading(what: str, axes: str, kept: str, but: str, verb: str) -> None:
    """The warning of :func:`warn_if_alpha_looks_like_a_channel` and :func:`warn_if_alphas_differ`: inferred axes
    took the last axis of ``what`` for RGBA samples, whose 4th is ``kept`` (as opacity), ``but`` (how the 4th
    channel behaves like an image channel); how to ``verb`` all four, or to keep the reading without the warning."""
    leading = axes[:-3]
    warnings.warn(
        f"The last axis of {what} was taken as RGBA samples, so its 4th channel is {kept}, but {but}. To {verb} "
        f"all four channels pass axes={leading + 'YXC'!r}; to keep the RGBA reading without this warning pass "
        f"axes={leading + 'YXS'!r}.",
        stacklevel=user_stacklevel(),  # the caller of the public function
    )


def _first_alpha_key(image: Any) -> tuple[Any, ...]:
    """The index of the first plane's alpha (the 4th sample) of an image whose axes end in ``YXS``."""
    return (0,) * (len(image.shape) - 3) + (slice(None), slice(None), 3)


def warn_if_alphas_differ(reference: Any, images: Iterable[tuple[str, Any]], axes: str) -> bool:
    """For inferred axes that took a last axis of 4 as RGBA, which the metrics score without its alpha: warn
    once, for the first of ``images`` (``(name, image)`` pairs, the name as the message says it) whose first
    plane's 4th channel is not the reference's, up to a scale (opacity stored as 0-255 and as 0-1 is the same
    alpha), since a result that lost or changed an image channel would otherwise score as if nothing were wrong.
    It catches a sparse or two-valued 4th channel that :func:`warn_if_alpha_looks_like_a_channel` lets pass.
    Reads the reference's alpha plane once, and one of each image's until one differs. Returns whether it
    warned."""
    if not axes.endswith("S") or not is_rgba(tuple(reference.shape), axes):
        return False
    key = _first_alpha_key(reference)
    ref_alpha = read_region(reference, key, "one plane's alpha")
    for name, image in images:
        if not _same_alpha(ref_alpha, read_region(image, key, "one plane's alpha")):
            _warn_about_the_rgba_reading(
                f"these {tuple(reference.shape)} images",
                axes,
                "left out of the metrics as opacity",
                f"it differs between the reference and {name}, as an image channel would",
                "score",
            )
            return True
    return False


#: How far two alphas scaled to their peaks may differ and still be one opacity: an 8-bit step (a float alpha
#: rounded to uint8 moves by half of one; a uint16 one by a little more).
ALPHA_TOLERANCE = 1.0 / 255

#: Alpha values compared at a time by :func:`_same_alpha`: float64 blocks of about 4 MB, whatever the plane.
_ALPHA_BLOCK_ELEMENTS = 1 << 19


def _same_alpha(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two alpha planes (Y, X) hold one opacity up to a scale (0-255 and 0-1 alike): each divided by its
    own largest absolute value, within :data:`ALPHA_TOLERANCE`, NaN equal to NaN. In blocks of rows: memory is
    a few MB, not float64 copies of the planes."""
    rows = max(1, _ALPHA_BLOCK_ELEMENTS // max(1, first.shape[1]))
    first_peak, second_peak = _alpha_peak(first), _alpha_peak(second)
    for top in range(0, first.shape[0], rows):
        a = np.asarray(first[top : top + rows], dtype=np.float64) / first_peak
        b = np.asarray(second[top : top + rows], dtype=np.float64) / second_peak
        if not np.allclose(a, b, rtol=0.0, atol=ALPHA_TOLERANCE, equal_nan=True):
            return False
    return True


def _alpha_peak(alpha: np.ndarray) -> float:
    """The largest finite absolute value of ``alpha`` (1 where there is none, or it is 0), by reductions that
    make no plane-sized temporaries (``fmax``/``fmin`` skip NaN)."""
    if alpha.dtype.kind == "f":
        finite = [float(v) for v in (np.fmax.reduce(alpha, axis=None), np.fmin.reduce(alpha, axis=None))]
        finite = [abs(v) for v in finite if math.isfinite(v)]
        peak = max(finite, default=0.0)
    else:
        peak = max(abs(float(alpha.max())), abs(float(alpha.min())))
    return peak if peak > 0 else 1.0


def chunk_slab_depths(
    image: Any, other: list[int], plane_bytes: int, *, c_order: bool = False, slab_bytes: int | None = None
) -> list[int] | None:
    """Planes per read along each of ``other`` for an array-like with ``chunks`` (one int per axis, as zarr
    and chunked h5py arrays have): the chunks' extents, as far as ``slab_bytes`` (default :data:`SLAB_BYTES`)
    allows (the outer axes give up theirs first, then the innermost is cut to as many planes as fit). With
    ``c_order`` (planes read in C order), only the innermost keeps its extent: a slab deep along an outer axis
    would be read again for every plane of the inner ones. None: one plane per read (no chunks, chunks one plane
    deep, an ndarray, a dask array)."""
    chunks = getattr(image, "chunks", None)
    if isinstance(image, np.ndarray) or is_dask(image) or not other or chunks is None:
        return None
    try:
        chunks = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):  # e.g. xarray's tuple of dask block sizes per axis
        return None
    if len(chunks) != len(image.shape) or min(chunks) < 1:
        return None
    depths = [min(chunks[a], int(image.shape[a])) for a in other]
    budget = max(1, (SLAB_BYTES if slab_bytes is None else slab_bytes) // max(1, plane_bytes))  # planes per read
    for i in range(len(depths) - 1):
        if not c_order and int(np.prod(depths)) <= budget:
            break
        depths[i] = 1
    depths[-1] = min(depths[-1], max(1, budget // int(np.prod(depths[:-1]))))
    return None if int(np.prod(depths)) == 1 else depths


def dask_slab_fits(image: Any, other: list[int], plane_bytes: int, *, c_order: bool = True) -> bool:
    """Whether keeping a dask block's planes pays: the blocks are at most :data:`DASK_SLAB_PLANES` planes deep
    and :data:`SLAB_BYTES` large, and with ``c_order`` (planes read in C order) deep only along the fastest of
    ``other`` (a block deep along a slower axis would be computed again for every plane of the faster one
    anyway). Otherwise the planes are read one by one: a dask array over a file then reads one plane."""
    if not other:
        return False
    outer = other[:-1] if c_order else []
    if any(max(image.chunks[axis]) > 1 for axis in outer):
        return False
    depth = int(np.prod([max(image.chunks[axis]) for axis in other]))
    return 1 < depth <= DASK_SLAB_PLANES and depth * plane_bytes <= SLAB_BYTES


def nonfinite_error(where: str, bad: int, size: int, first: str = "", name: str = "image") -> InputError:
    """The InputError for ``bad`` NaN/inf pixels out of ``size`` in the ``name`` (e.g. "reference"), or in its
    ``where`` (a :func:`~napari_deblurgan.axes.plane_name`), ``first`` naming the first plane holding one."""
    if not where:
        which = f"the {name}"
    elif name.endswith("'"):  # "result 'sharp'": no possessive after a quote
        which = f"{where} of the {name}"
    else:
        which = f"the {name}'s {where}"
    first = f" (the first in {first})" if first else ""
    return InputError(
        f"{which} has {bad} NaN/inf pixel(s) out of {size}{first}; replace them first, e.g. "
        "np.nan_to_num(image, nan=0.0) or with a local median"
    )


class PlaneReader:
    """The planes of an image, read one at a time: ``reader(index)`` is the plane at ``index`` over
    :attr:`other` (the axes outside the plane, in their order in ``axes``), and :meth:`indices` the indices in
    the order to read them.

    The plane is (Y, X), or (C, Y, X) with ``channels_in_plane`` (C of 1 where there is no channel axis; the
    channel axis is then not among :attr:`other`). How it is read:

    * an ndarray (a memory map too): a view, whose pages the OS reads when it is used; never the whole;
    * an array-like with integer ``chunks`` (zarr, chunked h5py): a slab of whole chunks at a time
      (:func:`chunk_slab_depths`), one slab held at once;
    * a dask array whose blocks are a few planes deep (:func:`dask_slab_fits`): a block's planes at a time, one
      block held at once, so that a block is computed once;
    * any other array-like, and a dask array of deep blocks: ``np.asarray(image[key])`` of one plane alone.

    A read plane is transposed to (C,) Y, X order (a view of it). An array-like whose indexing gives no pixels
    is an InputError (:func:`read_region`). With ``c_order`` the planes are read in C order over :attr:`other`
    (as ``np.ndindex``), and slabs are deep along the fastest axis only; without, :meth:`indices` goes slab by
    slab (each slab's planes in C order).
    """

    def __init__(
        self,
        image: Any,
        axes: str,
        *,
        channels_in_plane: bool,
        c_order: bool = False,
        slab_bytes: int | None = None,
    ) -> None:
        self.image, self.axes = image, axes
        c_ax = channel_axis(axes)
        #: the channel axis that is in the plane, if any (a C or S axis with ``channels_in_plane``)
        self.plane_channel_axis = c_ax if channels_in_plane else None
        inner = [a for a in (self.plane_channel_axis, axes.index("Y"), axes.index("X")) if a is not None]
        #: the axes outside the plane, in their order in ``axes``
        self.other = [i for i in range(len(axes)) if i not in inner]
        self._channel_added = channels_in_plane and c_ax is None
        self._order = [sorted(inner).index(a) for a in inner]  # an integer key leaves the inner axes sorted
        self._expected = tuple(int(image.shape[a]) for a in sorted(inner))
        self._dtype = np.dtype(image.dtype)
        self._outer = tuple(int(image.shape[a]) for a in self.other)
        plane_bytes = int(np.prod(self._expected)) * self._dtype.itemsize
        # per axis of ``other``: where its slabs start, and its length last; None: one plane per read
        self._edges: list[np.ndarray] | None = None
        if isinstance(image, np.ndarray):
            pass
        elif is_dask(image):
            if dask_slab_fits(image, self.other, plane_bytes, c_order=c_order):
                self._edges = [np.cumsum((0, *image.chunks[a])) for a in self.other]
        else:
            depths = chunk_slab_depths(image, self.other, plane_bytes, c_order=c_order, slab_bytes=slab_bytes)
            if depths is not None:
                self._edges = [
                    self._chunk_edges(int(image.chunks[a]), depth, n)
                    for a, depth, n in zip(self.other, depths, self._outer, strict=True)
                ]
        self._held: dict[tuple[tuple[int, int], ...], np.ndarray] = {}  # the one slab read last

    @staticmethod
    def _chunk_edges(chunk: int, depth: int, length: int) -> np.ndarray:
        """Where the slabs along one axis start (and its length): ``depth`` planes deep within each chunk,
        never across two chunks."""
        chunk = min(chunk, length)
        starts = [s for c in range(0, length, chunk) for s in range(c, min(c + chunk, length), depth)]
        return np.array([*starts, length])

    def _region_key(self, spans: Any) -> tuple[Any, ...]:
        key: list[Any] = [slice(None)] * len(self.axes)
        for axis, value in zip(self.other, spans, strict=True):
            key[axis] = value
        return tuple(key)

    def _as_plane(self, plane: np.ndarray) -> np.ndarray:
        if plane.shape != self._expected:  # an array-like whose indexing gives no plane (e.g. scipy sparse)
            raise InputError(
                f"reading one plane of this {type(self.image).__name__} gave {type(plane).__name__} of shape "
                f"{plane.shape}, not {self._expected}; pass its pixels as a NumPy array or a dask array"
            )
        if plane.dtype != self._dtype:
            plane = plane.astype(self._dtype)
        plane = plane.transpose(self._order)
        return plane[None] if self._channel_added else plane

    def _spans(self, index: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """The slab that holds the plane at ``index``: its (start, stop) along each of :attr:`other`."""
        assert self._edges is not None
        spans = []
        for edges, value in zip(self._edges, index, strict=True):
            k = int(np.searchsorted(edges, value, side="right")) - 1
            spans.append((int(edges[k]), int(edges[k + 1])))
        return tuple(spans)

    def __call__(self, index: tuple[int, ...]) -> np.ndarray:
        """The plane at ``index`` (over :attr:`other`)."""
        if self._edges is None:
            return self._as_plane(read_region(self.image, self._region_key(index), "one plane"))
        spans = self._spans(index)
        if spans not in self._held:
            self._held.clear()  # before the next read: one slab in memory at a time
            slab = read_region(
                self.image, self._region_key([slice(start, stop) for start, stop in spans]), "a slab of planes"
            )
            want = tuple(stop - start for start, stop in spans)
            if slab.ndim != len(self.axes) or tuple(slab.shape[a] for a in self.other) != want:
                raise InputError(
                    f"reading planes {want} of this {type(self.image).__name__} gave {type(slab).__name__} of "
                    f"shape {slab.shape}; pass its pixels as a NumPy array or a dask array"
                )
            self._held[spans] = slab
        local = self._region_key([value - start for value, (start, _) in zip(index, spans, strict=True)])
        return self._as_plane(self._held[spans][local])

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every plane's index over :attr:`other`, slab by slab (each slab's planes in C order): C order where
        the slabs are deep along the fastest axis only (``c_order``), or there are none."""
        if self._edges is None:
            yield from np.ndindex(*self._outer)
            return
        pairs = [list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)) for edges in self._edges]
        for block in itertools.product(*pairs):
            yield from itertools.product(*(range(start, stop) for start, stop in block))

    def nonfinite_counts(self, plane: np.ndarray) -> list[int]:
        """NaN/inf pixels of each channel of a (C, Y, X) plane, or of a (Y, X) one as one count: boolean
        temporaries of one channel at a time, and no copy of a non-contiguous view (reshape would copy one)."""
        channels = plane if plane.ndim == 3 else plane[None]
        return [int(np.count_nonzero(~np.isfinite(channels[ch]))) for ch in range(channels.shape[0])]

    def named(
        self, index: tuple[int, ...], counts: list[int], origin: tuple[int, ...] | None = None
    ) -> dict[int, list[int]]:
        """The axes and indices that name a plane with NaN/inf (for :func:`~napari_deblurgan.axes.plane_name`):
        ``index`` over :attr:`other`, and the channels of ``counts`` that hold any (a C axis in the plane; RGB
        samples are one plane), each shifted by ``origin`` (where a dask block starts in its image)."""
        shift = (lambda axis: origin[axis]) if origin else (lambda axis: 0)
        named = {axis: [v + shift(axis)] for axis, v in zip(self.other, index, strict=True)}
        c_ax = self.plane_channel_axis
        if c_ax is not None and self.axes[c_ax] == "C":
            named[c_ax] = [ch + shift(c_ax) for ch, n in enumerate(counts) if n]
        return named

    def check_finite(
        self, plane: np.ndarray, index: tuple[int, ...], name: str = "image", origin: tuple[int, ...] | None = None
    ) -> None:
        """InputError for NaN/inf in ``plane`` (the one at ``index``) as it is read (a whole scan of a memory
        map or an array-like would read it twice), naming it by its place in the whole image (``origin``: where
        a dask block starts in it) and the channels holding NaN/inf, e.g. "the image's plane Z=2, C=1 has ..."."""
        if plane.dtype.kind != "f":
            return
        counts = self.nonfinite_counts(plane)
        bad = sum(counts)
        if not bad:
            return
        named = self.named(index, counts, origin)
        # counted out of the named channels' pixels (all of the plane where no channel is named)
        c_ax = self.plane_channel_axis
        channels = len(named[c_ax]) if c_ax is not None and c_ax in named else len(counts)
        size = channels * plane.shape[-2] * plane.shape[-1]
        raise nonfinite_error(plane_name(self.axes, named), bad, size, name=name)

"""Training data for finetuning: blurred/sharp pairs, or sharp images with blur synthesised on the fly.

:class:`PairedData` describes the data (no pixels are copied up front): one or several pairs of arrays of
the same shape (any axes: ``TZCYXS``, NumPy, memory-mapped, dask or zarr arrays), or sharp-only arrays.
It splits off validation data and reads random crops *lazily*, one crop at a time, so a large stack is never
copied (let alone in float64). :class:`BatchSource` turns it into batches of tensors on the training device,
synthesising blur there (a fresh random PSF and noise level per crop, :mod:`~napari_deblurgan.blur.
torch_synthesis`) when there is no blurred data. The trainer only ever calls ``BatchSource.next_batch``: the
step function is separate from the data source, so another data source (or a distributed sampler) can be
swapped in.

Normalisation (same as inference, :mod:`~napari_deblurgan.normalization`): every YX plane of every channel
is scaled by its 1 / 99.8 percentiles. For a pair, **the blurred plane's percentiles are used for both the
blurred and the sharp plane**: at inference the model only ever sees the blurred image normalised by its own
percentiles, so training must present inputs the same way, and the target must be in the same units so that
denormalising the output with the blurred image's range gives the sharp intensities. (Normalising the sharp
plane by its own percentiles would teach the model a contrast change it cannot undo at inference.) For
sharp-only data there is no blurred plane yet: crops are normalised by the sharp plane's percentiles, blurred
and noised in those units, and then both crops are re-scaled by the *blurred crop's* percentiles, as inference
would scale that image (:func:`renormalize_like_inference`). That last step matters for sparse images: blur
spreads a bead's light, so a blurred plane's 99.8th percentile can be 40 % below the sharp one's, and a model
trained on the sharp plane's units would see inputs of the wrong contrast (measured: up to 2 dB lost on
held-out synthetic cells).

Validation: a fraction (whole planes are held out when there are at least 4 planes and the fraction gives at
least one; otherwise a band of rows - or columns - at the end of every plane), or an explicit
``(blurred, sharp)`` pair. Validation crops are a fixed grid, so validation scores are comparable over a run.

Registration: for each pair the middle plane is downsampled to <= 256 px and the offset between blurred and
sharp is measured by FFT cross-correlation (``skimage.registration.phase_cross_correlation``); an offset of
more than a pixel raises a warning that names it - misaligned pairs teach a model to shift images.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import signal

from ..axes import CHANNEL_LETTERS, plane_name, resolve_axes
from ..errors import InputError, user_stacklevel
from ..inputs import reject_torch_tensor, reject_viewer_objects
from ..normalization import DEFAULT_NORMALIZATION, NORMALIZED_LIMIT, normalize, percentile_range, without_sentinels

if TYPE_CHECKING:
    import torch

#: ``blur_kind`` names -> PSF kinds of :mod:`napari_deblurgan.blur.torch_synthesis`.
BLUR_KINDS: dict[str, tuple[str, ...]] = {
    "mixed": ("motion", "defocus", "gaussian"),
    "motion": ("motion",),
    "defocus": ("defocus",),
    "gaussian": ("gaussian",),
    "airy": ("airy",),
}

#: Offsets (pixels, either axis) above which a pair is reported as misaligned.
MAX_ALIGNED_OFFSET = 1.0
#: Planes are downsampled to at most this many pixels along their longer side for the offset check.
_REGISTRATION_SIZE = 256
#: Minimum number of planes before whole planes (rather than a band of each plane) are held out.
_MIN_PLANES_FOR_PLANE_SPLIT = 4
# How many source shapes a one-line description of the training data lists before "... N more".
_SHAPES_LISTED = 4


def resolve_blur_mix(
    blur_kind: str | Sequence[str] | Mapping[str, float],
) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """PSF kinds and their relative weights for ``blur_kind``.

    ``blur_kind`` is a name from :data:`BLUR_KINDS`, a comma list of kinds (``"motion,defocus"``) in which a
    kind may carry a weight (``"motion:2,defocus,gaussian"`` draws motion for half of the crops), a sequence
    of kinds, or a mapping ``{kind: weight}``. The weights are None when every kind is equally likely, so an
    unweighted mix draws exactly the crops it always did.
    """
    if isinstance(blur_kind, Mapping):
        items = [(str(k).strip().lower(), v) for k, v in blur_kind.items()]
    elif isinstance(blur_kind, str):
        name = blur_kind.strip().lower()
        if name in BLUR_KINDS:
            return BLUR_KINDS[name], None
        items = []
        for part in (p.strip() for p in name.split(",")):
            if part:
                kind, _, weight = part.partition(":")
                items.append((kind.strip(), weight.strip() or 1.0))
    else:
        items = [(str(p).strip().lower(), 1.0) for p in blur_kind]
    allowed = {k for kinds in BLUR_KINDS.values() for k in kinds}
    bad = [k for k, _ in items if k not in allowed]
    if not items or bad:
        raise InputError(
            f"Unknown blur kind {blur_kind!r}; use one of {', '.join(BLUR_KINDS)} or a comma-separated list "
            f"of {', '.join(sorted(allowed))}, each optionally with a weight such as 'motion:2'."
        )
    weights: dict[str, float] = {}
    for kind, raw in items:
        try:
            weight = float(raw)
        except (TypeError, ValueError):
            weight = float("nan")
        if not math.isfinite(weight) or weight < 0:
            raise InputError(f"Blur kind weight for {kind!r} must be a number >= 0, got {raw!r}.")
        weights[kind] = weight  # a repeated kind keeps its last weight
    if sum(weights.values()) <= 0:
        raise InputError(f"At least one blur kind needs a weight > 0, got {blur_kind!r}.")
    kinds = tuple(k for k, w in weights.items() if w > 0)
    values = tuple(weights[k] for k in kinds)
    return kinds, (None if len(set(values)) == 1 else values)


def resolve_blur_kinds(blur_kind: str | Sequence[str] | Mapping[str, float]) -> tuple[str, ...]:
    """PSF kinds for ``blur_kind`` (see :func:`resolve_blur_mix`), without their weights."""
    return resolve_blur_mix(blur_kind)[0]


def format_blur_mix(kinds: Sequence[str], weights: Sequence[float] | None) -> str:
    """The comma-list spelling of a mix that :func:`resolve_blur_mix` reads back (``"motion:2,defocus:1"``)."""
    if weights is None:
        return ",".join(kinds)
    return ",".join(f"{k}:{w:g}" for k, w in zip(kinds, weights, strict=True))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _held_out_planes(
    planes: Sequence[Plane], fraction: float, seed: int
) -> tuple[set[tuple[int, tuple[int, ...]]], set[tuple[int, tuple[int, ...]]]]:
    """The plane positions ``(source, index)`` that validation holds out, and those left out of both training and
    validation because they neighbour a held-out one; all channels of a position go together.

    Positions of a stack (a source with Z or T planes) are held out as a block at its end, in the array's order,
    and their neighbours along every Z/T axis (index +-1) are not trained on: neighbouring planes of real stacks
    are nearly the same image, so validating next to training planes, as a random choice did, rewarded
    memorising. Separate images (sources of one position) are chosen at random, as before, with ``seed``. At
    least one position is held out; the neighbours stay in training where nothing else would."""
    positions: dict[int, list[tuple[int, ...]]] = {}
    for p in planes:
        known = positions.setdefault(p.source, [])
        if not known or known[-1] != p.index:
            known.append(p.index)
    everywhere = {(src, idx) for src, indices in positions.items() for idx in indices}
    singles = [(src, idx[0]) for src, idx in positions.items() if len(idx) == 1]
    stacks = {src: idx for src, idx in positions.items() if len(idx) > 1}
    held: set[tuple[int, tuple[int, ...]]] = set()
    for src, indices in stacks.items():
        n_held = min(len(indices) - 1, round(fraction * len(indices)))  # a block at the end; one position trains
        held.update((src, idx) for idx in indices[len(indices) - n_held :])
    n_singles = round(fraction * len(singles))
    if not held and n_singles == 0:  # every share rounded to nothing: hold out one position all the same
        if stacks:
            src = max(stacks, key=lambda k: len(stacks[k]))
            held.add((src, stacks[src][-1]))
        else:
            n_singles = 1
    n_singles = min(n_singles, len(singles) - (0 if stacks else 1))  # something must be left to train on
    if n_singles:
        rng = np.random.default_rng(seed)
        held.update(singles[i] for i in rng.choice(len(singles), size=n_singles, replace=False).tolist())
    apart = {
        (src, (*idx[:axis], idx[axis] + step, *idx[axis + 1 :]))
        for src, idx in held
        if src in stacks
        for axis in range(len(idx))
        for step in (-1, 1)
    }
    apart = (apart & everywhere) - held
    if len(held) + len(apart) >= len(everywhere):  # nothing would be left to train on: keep the neighbours in training
        apart = set()
    return held, apart


@dataclass(frozen=True)
class Plane:
    """One training/validation image plane: ``source`` pair, index over the non-YX(C) axes, channel.

    ``channel`` is None for a joint (all-channel) model and the channel index for a 1-channel model applied
    to each channel; ``rows``/``cols`` is the usable region ``(start, stop)``.
    """

    source: int
    index: tuple[int, ...]
    channel: int | None
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


#: Bytes of normalised float32 planes that one :class:`PairedData` may keep in memory (see ``_PlaneCache``).
DEFAULT_CACHE_BYTES = 512 * 2**20


class _PlaneCache:
    """Normalised float32 copies of whole in-memory planes, up to a byte budget shared by all sources.

    Reading a crop lazily (slice, NaN check, normalise, pad) costs ~0.2 ms, which bounds a GPU's training
    speed by the CPU (measured: ~1,400-1,900 crops/s per process on an H100 machine). For data already in
    memory as NumPy arrays a plane is normalised once and crops are slices of it; the budget keeps large
    stacks lazy (no whole-stack copies), and dask/zarr arrays are never cached (the few most recent planes of a
    compressed lazy stack are: ``_DecodedPlanes``).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.remaining = int(budget_bytes)
        self.planes: dict[tuple[int, str, tuple[int, ...], int | None], np.ndarray] = {}
        self.with_sentinels: set[tuple[int, str, tuple[int, ...], int | None]] = set()  # keys of planes that have any

    def reserve(self, nbytes: int) -> bool:
        if nbytes > self.remaining:
            return False
        self.remaining -= nbytes
        return True


#: Bytes of decoded planes that one :class:`PairedData` keeps of page-decoding lazy readers (see
#: ``_DecodedPlanes``): 32 planes of 1024 x 1024 uint16, 2 of 4096 x 4096.
DEFAULT_DECODED_CACHE_BYTES = 64 * 2**20


def _decodes_whole_pages(array: Any) -> bool:
    """Whether ``array`` is the CLI's reader of compressed TIFF stacks (``cli.deblur_command.TiffPages``, which
    says its ``page_shape``), whose crops cost a decode: of the strips or tiles they cover where the page's
    layout allows it, else of the whole page. A whole plane decoded once then serves many crops, so planes that
    fit ``_DecodedPlanes`` are kept. Memory maps, dask and zarr arrays read only the region (or chunks) asked
    for, at no decode cost worth saving, so whole planes of them are never cached."""
    return not isinstance(array, np.ndarray) and getattr(array, "page_shape", None) is not None


class _DecodedPlanes:
    """The most recently used whole planes (native dtype, ``(C, H, W)``) of page-decoding lazy readers, up to
    ``budget_bytes`` in all, least recently used evicted first.

    Decoding a compressed TIFF page costs far more than a crop of it (~8 ms for 1024 x 1024 zlib uint16,
    against ~0.2 ms), and a crop needs at least its strips decoded (the whole page, for layouts that cannot be
    read strip by strip: ``TiffPages._page_region``). Training picks a random plane per crop, so a plane's
    crops seldom follow each other; but :meth:`PairedData.read_crops` reads the crops it is given plane by
    plane (and :class:`BatchSource` gives it several batches' crops at once), so a plane is decoded once for
    its percentiles and all of those crops, as for the validation grid's crops. Across those reads a plane is
    found here only in proportion to the share of the planes that fit: the budget keeps memory small (a few
    planes), not the whole stack. A plane larger than the budget is not kept: its crops are read as regions
    (:meth:`_Source._read`), which decodes only the strips or tiles each covers."""

    def __init__(self, budget_bytes: int) -> None:
        from collections import OrderedDict

        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self.planes: OrderedDict[tuple[int, tuple[int, ...], int | None], np.ndarray] = OrderedDict()

    def get(self, key: tuple[int, tuple[int, ...], int | None]) -> np.ndarray | None:
        plane = self.planes.get(key)
        if plane is not None:
            self.planes.move_to_end(key)
        return plane

    def put(self, key: tuple[int, tuple[int, ...], int | None], plane: np.ndarray) -> None:
        if plane.nbytes > self.budget_bytes:
            return
        plane.flags.writeable = False  # views of it are handed out: a caller that writes to one raises
        self.planes[key] = plane
        self.used_bytes += plane.nbytes
        while self.used_bytes > self.budget_bytes:
            _, evicted = self.planes.popitem(last=False)
            self.used_bytes -= evicted.nbytes


class _Source:
    """One array (pair) with its axes; reads normalised crops lazily (or from the plane cache)."""

    def __init__(
        self,
        sharp: Any,
        blurred: Any | None,
        axes: str,
        joint: bool,
        cache: _PlaneCache | None = None,
        decoded: _DecodedPlanes | None = None,
    ) -> None:
        self.sharp = sharp
        self.blurred = blurred
        self.cache = cache
        self.decoded = decoded
        self.axes = axes
        self.joint = joint
        self.y = axes.index("Y")
        self.x = axes.index("X")
        self.c = next((axes.index(a) for a in CHANNEL_LETTERS if a in axes), None)
        self.other = [i for i, a in enumerate(axes) if a not in "YX" and i != self.c]
        self.shape = tuple(int(s) for s in sharp.shape)
        self.n_channels = self.shape[self.c] if self.c is not None else 1
        self._ranges: dict[tuple[tuple[int, ...], int], tuple[float, float]] = {}

    @property
    def height(self) -> int:
        return self.shape[self.y]

    @property
    def width(self) -> int:
        return self.shape[self.x]

    def plane_name(self, index: tuple[int, ...]) -> str:
        """``"plane Z=3"`` (the axes' letters, as deblur() names planes) for ``index`` over the non-YX,
        non-channel axes; "" for a single plane."""
        return plane_name(self.axes, {axis: [value] for axis, value in zip(self.other, index, strict=True)})

    def plane_keys(self) -> list[tuple[tuple[int, ...], int | None]]:
        """(index, channel) of every plane the model sees."""
        other_shape = [self.shape[i] for i in self.other]
        indices = [tuple(int(v) for v in idx) for idx in np.ndindex(*other_shape)] if other_shape else [()]
        channels: list[int | None] = [None] if self.joint else list(range(self.n_channels))
        return [(idx, ch) for idx in indices for ch in channels]

    def _read(
        self,
        array: Any,
        index: tuple[int, ...],
        channel: int | None,
        rows: slice,
        cols: slice,
        crops_from_plane: int = 1,
    ) -> np.ndarray:
        """(C, h, w) array (native dtype) of one plane region; only that region is read, except from a reader
        of compressed pages (:func:`_decodes_whole_pages`) whose plane fits the decoded-plane cache and is worth
        decoding whole (:meth:`_worth_decoding_whole`; ``crops_from_plane``: how many crops of this plane the
        caller is reading now): that plane is read whole once and kept for the next crops (then the region is a
        read-only view of it)."""
        if self.decoded is None or not _decodes_whole_pages(array):
            return self._read_region(array, index, channel, rows, cols)
        kept_channel = self.kept_channel(array, channel)
        # A plane too big for the budget would not be kept (_DecodedPlanes.put), so its whole decode would serve
        # one crop only: read just the region instead. For strip- or tile-compressed pages that decodes only the
        # strips or tiles the crop covers (TiffPages._page_region); elsewhere the reader decodes the page and
        # slices it, which is what the whole-plane read cost too. The pixels are the same either way.
        plane_channels = self.n_channels if kept_channel is None and self.c is not None else 1
        plane_bytes = plane_channels * self.height * self.width * np.dtype(array.dtype).itemsize
        if plane_bytes > self.decoded.budget_bytes:
            return self._read_region(array, index, channel, rows, cols)
        key = (id(array), index, kept_channel)
        plane = self.decoded.get(key)
        if plane is None:
            if not self._worth_decoding_whole(array, plane_bytes, kept_channel, channel, rows, cols, crops_from_plane):
                return self._read_region(array, index, channel, rows, cols)
            plane = self._read_region(array, index, kept_channel, slice(None), slice(None))
            self.decoded.put(key, plane)
        if kept_channel is None and channel is not None and self.c is not None:
            plane = plane[channel : channel + 1]
        return plane[:, rows, cols]

    def kept_channel(self, array: Any, channel: int | None) -> int | None:
        """The channel of the plane that a read of ``channel`` from ``array`` decodes and keeps: None (all of
        them) where the channels are in the page (YXS: one decode gives them all, so the whole plane is kept
        once, not once per channel) or where there is no channel axis (channel 0, a crop's, and None, the
        percentiles', are the same plane); else ``channel``, each channel a page of its own."""
        page_shape = getattr(array, "page_shape", None)
        channels_in_page = self.c is None or page_shape is None or self.c >= len(self.axes) - len(page_shape)
        return None if channels_in_page else channel

    def _worth_decoding_whole(
        self,
        array: Any,
        plane_bytes: int,
        kept_channel: int | None,
        channel: int | None,
        rows: slice,
        cols: slice,
        crops: int,
    ) -> bool:
        """Whether to decode a plane that is not in the decoded-plane cache whole (and keep it) rather than
        just the strips or tiles of the region asked for: where the whole plane is asked for (its percentiles),
        or where the expected cost is lower. Decoding it whole costs one page's decode now and serves later
        crops only while it stays in the cache; with planes drawn at random, it is found there again about as
        often as the share of this source's planes that fit. A region read costs its share of the page
        (``TiffPages.region_share``; 1.0 for a reader that cannot tell, or decodes the page whole anyway) for
        each of the ``crops`` crops read now. So: whole when ``crops x share >= 1 - planes that fit / planes``.
        Where every plane fits, that is always (each is decoded once); where few do - thousands of 2048 x
        2048 planes, say - crops are read by their strips. The pixels are the same either way. Other sources
        share the budget too; counting only this one's planes errs towards whole decodes, the earlier rule."""
        y0, y1, _ = rows.indices(self.height)
        x0, x1, _ = cols.indices(self.width)
        if (y0, y1, x0, x1) == (0, self.height, 0, self.width):
            return True
        share = getattr(array, "region_share", None)
        # a one-channel read of a page whose channels are sample planes of their own (planar) decodes only
        # that plane's strips, a fraction of what the whole page's decode costs
        one_of_several = kept_channel is None and channel is not None and self.n_channels > 1
        share = 1.0 if share is None else float(share((y0, y1), (x0, x1), samples_read=1 if one_of_several else None))
        arrays = sum(1 for a in (self.sharp, self.blurred) if a is not None and _decodes_whole_pages(a))
        variants = 1 if kept_channel is None or self.joint else self.n_channels
        planes = max(1, math.prod(self.shape[i] for i in self.other) * variants * arrays)
        fit = self.decoded.budget_bytes // max(1, plane_bytes)  # only called with a decoded-plane cache (_read)
        return crops * share >= 1.0 - min(1.0, fit / planes)

    def _read_region(
        self, array: Any, index: tuple[int, ...], channel: int | None, rows: slice, cols: slice
    ) -> np.ndarray:
        """:meth:`_read` without the decoded-plane cache: the region only."""
        key: list[Any] = [slice(None)] * len(self.axes)
        for axis, value in zip(self.other, index, strict=True):
            key[axis] = value
        key[self.y] = rows
        key[self.x] = cols
        if self.c is not None and channel is not None:
            key[self.c] = slice(channel, channel + 1)
        region = np.asarray(array[tuple(key)])
        # The axes left are, in their original order, a subset of (channel, Y, X): bring them to (C, Y, X).
        kept = sorted(i for i in (self.c, self.y, self.x) if i is not None)
        names = ["C" if i == self.c else self.axes[i] for i in kept]
        if self.c is None:
            region = region[np.newaxis]
            names = ["C", *names]
        order = [names.index(a) for a in ("C", "Y", "X")]
        return np.transpose(region, order)

    def norm_range(self, index: tuple[int, ...], channel: int) -> tuple[float, float]:
        """Percentile (lo, hi) of one channel plane of the *blurred* array (sharp when there is none)."""
        key = (index, channel)
        if key not in self._ranges:
            reference = self.blurred if self.blurred is not None else self.sharp
            plane = self._read(reference, index, channel if self.c is not None else None, slice(None), slice(None))
            _check_finite_plane(plane, self.plane_name(index))  # else the percentiles are NaN and mislead
            self._ranges[key] = percentile_range(plane[0], DEFAULT_NORMALIZATION["low"], DEFAULT_NORMALIZATION["high"])
        return self._ranges[key]

    def crop(
        self,
        index: tuple[int, ...],
        channel: int | None,
        y0: int,
        x0: int,
        size: int | tuple[int, int],
        margin: int = 0,
        *,
        bounds: tuple[tuple[int, int], tuple[int, int]] | None = None,
        copy: bool = True,
        crops_from_plane: int = 1,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Normalised float32 (C, size+2m, size+2m) crops of blurred (None if absent) and sharp; ``size`` is
        the side of a square crop or ``(height, width)``. ``crops_from_plane``: how many crops of this plane the
        caller reads one after another (a compressed lazy stack's plane may then be decoded once for all).

        The region is extended by ``margin`` on each side where ``bounds`` allow and reflect-padded where
        they do not (synthetic blur needs the context the PSF reaches into). ``bounds`` are the ``(rows,
        cols)`` ``(start, stop)`` the crop may read, by default the whole plane: a training crop next to a
        held-out validation band must not blur the band's pixels into its own. ``copy=False`` may return
        read-only views of the plane cache (for a caller that copies them anyway).

        "No data" sentinels (:data:`~napari_deblurgan.normalization.SENTINEL_VALUES`, and values at
        ``NORMALIZED_LIMIT``) of *either* image are 0 in *both* crops: deblur() shows the network 0 there,
        and a pixel with no data in the sharp image only would otherwise teach the model to darken real image
        to 0 (and one in the blurred image only, to invent image from nothing). Input 0 and target 0 cost the
        loss nothing to learn; synthetic blur is made from the sharp crop after this, so a no-data region
        blurs into its neighbours as a dark one (0, the low percentile), never as its 1e30.
        """
        height, width = (size, size) if isinstance(size, int) else size
        (r0, r1), (c0, c1) = bounds if bounds is not None else ((0, self.height), (0, self.width))
        ya, yb = y0 - margin, y0 + height + margin
        xa, xb = x0 - margin, x0 + width + margin
        ry = (max(ya, r0), min(yb, r1))
        rx = (max(xa, c0), min(xb, c1))
        pad = ((0, 0), (ry[0] - ya, yb - ry[1]), (rx[0] - xa, xb - rx[1]))
        rows, cols = slice(*ry), slice(*rx)
        channels = [channel] if channel is not None else (list(range(self.n_channels)))
        ranges = [self.norm_range(index, ch) for ch in channels]

        def prepare(array: Any, which: str) -> tuple[np.ndarray, bool]:
            cached = self._cached_plane(array, which, index, channel, ranges)
            if cached is not None:
                plane, missing = cached
                out = plane[:, rows, cols]
            else:
                out, missing = self._normalized(array, index, channel, rows, cols, ranges, crops_from_plane)
            if any(p != (0, 0) for p in pad):
                out = np.pad(out, pad, mode="reflect")  # a new array in any case
            elif cached is not None and copy:
                out = out.copy()  # callers may modify a copy, never the cache
            return out, missing

        sharp, sharp_missing = prepare(self.sharp, "sharp")
        blurred, blurred_missing = prepare(self.blurred, "blurred") if self.blurred is not None else (None, False)
        if sharp_missing or blurred_missing:  # one image's "no data" is missing in both (see above)
            missing = np.abs(sharp) >= NORMALIZED_LIMIT
            if blurred is not None:
                missing |= np.abs(blurred) >= NORMALIZED_LIMIT
            zero = np.float32(0.0)
            sharp = np.where(missing, zero, sharp)  # new arrays: never the cache's
            blurred = None if blurred is None else np.where(missing, zero, blurred)
        return blurred, sharp

    def padded_region(
        self, index: tuple[int, ...], channel: int | None, rows: tuple[int, int], cols: tuple[int, int], margin: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """The region ``rows`` x ``cols`` of a plane as normalised float32 ``(C, h + 2m, w + 2m)`` arrays of
        blurred (None if absent) and sharp, reflect-padded by ``margin`` at the region's own edges (for
        :class:`~.device_crops.DeviceCrops`): every crop :meth:`crop` cuts from it with those bounds."""
        size = (rows[1] - rows[0], cols[1] - cols[0])
        return self.crop(index, channel, rows[0], cols[0], size, margin, bounds=(rows, cols), copy=False)

    def _normalized(
        self,
        array: Any,
        index: tuple[int, ...],
        channel: int | None,
        rows: slice,
        cols: slice,
        ranges: list[tuple[float, float]],
        crops_from_plane: int = 1,
    ) -> tuple[np.ndarray, bool]:
        """Normalised float32 (C, h, w) region of ``array``, its sentinels at +-``NORMALIZED_LIMIT``, and
        whether it has any. :meth:`crop` sets them to 0 in both images of the pair: they are missing to
        training as to deblur() (at the limit they overflowed Adam's second moment and every update became 0,
        without a word)."""
        raw = self._read(array, index, channel, rows, cols, crops_from_plane)
        _check_finite_plane(raw, self.plane_name(index))
        out = np.empty(raw.shape, dtype=np.float32)
        for c, (lo, hi) in enumerate(ranges):
            out[c] = normalize(raw[c], lo, hi)
        return out, bool((np.abs(out) >= NORMALIZED_LIMIT).any())

    def _cached_plane(
        self,
        array: Any,
        which: str,
        index: tuple[int, ...],
        channel: int | None,
        ranges: list[tuple[float, float]],
    ) -> tuple[np.ndarray, bool] | None:
        """The whole normalised plane from the cache (normalised and stored on first use while the budget
        allows) and whether it has sentinels (as :meth:`_normalized`), or None: not an in-memory NumPy array
        (a memory map or lazy reader stays on disk: the CLI reads training TIFFs over 1 GiB lazily precisely
        to keep them there), or over budget."""
        if self.cache is None or not isinstance(array, np.ndarray) or isinstance(array, np.memmap):
            return None
        key = (id(self), which, index, channel)
        plane = self.cache.planes.get(key)
        if plane is None:
            nbytes = len(ranges) * self.height * self.width * 4
            if not self.cache.reserve(nbytes):
                return None
            plane, missing = self._normalized(array, index, channel, slice(None), slice(None), ranges)
            plane.flags.writeable = False  # views of it are handed out (copy=False)
            self.cache.planes[key] = plane
            if missing:
                self.cache.with_sentinels.add(key)
        return plane, key in self.cache.with_sentinels


def _check_finite_plane(plane: np.ndarray, name: str) -> None:
    """InputError naming the plane (``name``, :meth:`_Source.plane_name`) when ``plane`` (a float region of a
    training image) has NaN or inf."""
    if plane.dtype.kind in "fc" and not np.all(np.isfinite(plane)):
        where = f" (in {name})" if name else ""
        raise InputError(
            f"The training images contain NaN or infinite values{where}; replace them (e.g. np.nan_to_num)."
        )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _axes_per_image(axes: Any, n: int) -> list[str | None]:
    """``axes`` as one entry per training image: a string (or None) applies to every image; a list or tuple
    gives one axes string (or None: inferred) per image and must have ``n`` entries."""
    if axes is None or isinstance(axes, str):
        return [axes] * n
    if not isinstance(axes, (list, tuple)):
        raise InputError(
            f"axes must be an axes string such as 'ZYX' (for every image), None to infer them, or a list of one "
            f"axes string (or None) per image; got {type(axes).__name__}."
        )
    images = "image" if n == 1 else "images"
    if len(axes) != n:
        raise InputError(
            f"axes lists {len(axes)} axes string{'' if len(axes) == 1 else 's'} but there {'is' if n == 1 else 'are'} "
            f"{n} training {images}: give one per image, in the images' order (None infers that image's), or one "
            "string for every image."
        )
    for i, entry in enumerate(axes):
        if entry is not None and not isinstance(entry, str):
            raise InputError(
                f"axes[{i}] (for image {i + 1}) must be an axes string such as 'ZYX', or None to infer it; got "
                f"{type(entry).__name__} {entry!r}."
            )
    return list(axes)


def _check_array(array: Any, name: str) -> Any:
    """``array`` itself (kept lazy) after checking that it looks like a numeric image."""
    reject_torch_tensor(array, name)  # training reads arrays lazily, with NumPy indexing and dtypes
    reject_viewer_objects(array, name)
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uif":
        raise InputError(f"The {name} has dtype {dtype}; pass an integer or floating-point image.")
    if len(array.shape) < 2 or any(int(s) == 0 for s in array.shape):
        raise InputError(f"The {name} must be an image with Y and X axes; got shape {tuple(array.shape)}.")
    return array


def _downsample(plane: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (float32), cropping the remainder."""
    plane = np.asarray(plane, dtype=np.float32)
    if factor <= 1:
        return plane
    h, w = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    return plane[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _registration_planes(blurred_plane: np.ndarray, sharp_plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The sharp and blurred planes as :func:`measure_offset` and :func:`kernel_offset` compare them (float32
    block means down to at most ``_REGISTRATION_SIZE`` px along the longer side), and the factor."""
    factor = max(1, math.ceil(max(sharp_plane.shape) / _REGISTRATION_SIZE))
    return _downsample(sharp_plane, factor), _downsample(blurred_plane, factor), factor


def _fraction_like(value: Any) -> bool:
    """A number for ``validation=``: 0.1, np.float32(0.1), or a 0-d array or tensor of a number (np.array(0.1));
    not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    if getattr(value, "ndim", None) != 0:
        return False
    dtype = getattr(value, "dtype", None)
    kind = getattr(dtype, "kind", None)  # NumPy; torch dtypes have none
    if kind is not None:
        return kind in ("f", "i", "u")
    return dtype is not None and str(dtype) != "torch.bool" and not getattr(dtype, "is_complex", False)


def measure_offset(blurred_plane: np.ndarray, sharp_plane: np.ndarray) -> tuple[float, float]:
    """(dy, dx) in pixels by which ``blurred_plane`` is shifted relative to ``sharp_plane``.

    Both are downsampled to at most 256 px along the longer side (block means), registered by FFT
    cross-correlation with 1/10-pixel refinement, and the shift is scaled back to full resolution.
    """
    from skimage.registration import phase_cross_correlation

    ref, mov, factor = _registration_planes(blurred_plane, sharp_plane)
    ref = ref - ref.mean()
    mov = mov - mov.mean()
    if not (ref.any() and mov.any()):
        # a constant plane has no offset to measure (scikit-image would warn that it "may be empty"); the
        # blank-data checks say what is wrong with such data
        return 0.0, 0.0
    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=10, normalization=None)
    # phase_cross_correlation returns the shift that registers `mov` onto `ref`: the offset is its negative
    return float(-shift[0] * factor), float(-shift[1] * factor)


def kernel_offset(blurred_plane: np.ndarray, sharp_plane: np.ndarray) -> tuple[float, float]:
    """(dy, dx) like :func:`measure_offset`, as the centre of mass of the blur kernel that maps the sharp plane
    onto the blurred one: PSFs are centred on their centre of mass, so a registered pair's kernel has its
    centre of mass at 0, whatever its shape. The kernel is estimated by regularised division in Fourier space
    (Tukey-tapered, downsampled planes; Wiener-like with 1 % of the mean power), and only its part above 30 %
    of its peak counts (noise). Less precise than the correlation peak on textured images but not fooled where
    the peak is: motion blur (peak off-centre), defocus disks (a plateau) and sparse beads (twin maxima)."""
    ref, mov, factor = _registration_planes(blurred_plane, sharp_plane)
    ref, mov = ref.astype(np.float64), mov.astype(np.float64)
    h, w = ref.shape
    taper = np.outer(signal.windows.tukey(h, 0.2), signal.windows.tukey(w, 0.2))
    sharp_f = np.fft.rfft2((ref - ref.mean()) * taper)
    blurred_f = np.fft.rfft2((mov - mov.mean()) * taper)
    power = np.abs(sharp_f) ** 2
    if not power.mean() > 0:  # a constant plane: nothing to register
        return 0.0, 0.0
    kernel = np.fft.fftshift(np.fft.irfft2(np.conj(sharp_f) * blurred_f / (power + 0.01 * power.mean()), s=(h, w)))
    kernel = np.where(kernel >= 0.3 * kernel.max(), kernel, 0.0)
    if not kernel.sum() > 0:
        return 0.0, 0.0
    ys, xs = np.indices(kernel.shape)
    dy = float((kernel * ys).sum() / kernel.sum()) - h // 2
    dx = float((kernel * xs).sum() / kernel.sum()) - w // 2
    return dy * factor, dx * factor


class PairedData:
    """Training (and validation) data for :func:`napari_deblurgan.finetune`; reads crops lazily.

    Args:
        blurred: blurred images (an array or a list of arrays), or None for sharp-only data.
        sharp: sharp images of the same shape(s); when ``blurred`` is None they are blurred on the fly.
        axes: axes string of the arrays (one string for all), None to infer each array's from its shape
            (``YX``, ``ZYX``, ``YXS``, ...), or a list of one axes string (or None: inferred) per image, for a
            list of images of different axes (e.g. ``["YX", "ZYX"]``: a 2D image and a grey stack whose last
            axis is 3 long, which would be inferred as RGB). The blurred image of a pair has its sharp image's.
        validation_axes: axes of an explicit validation pair. None: ``axes`` when that is one string (or
            None), inferred from the pair's shape when ``axes`` is a list. Only for a ``(blurred, sharp)``
            ``validation``; a held-out fraction keeps the axes of the images it comes from.
        channels: the model's channel count: 1 trains a channel-independent model (every channel plane is a
            sample), C > 1 a joint model (the data's channel axis must have C channels).
        patch_size: side of the square training crops (reduced to fit small images, see ``notes``).
        stride: the generator's stride; crop sides are multiples of it.
        validation: fraction of the data held out for validation, 0 for none, or an explicit
            ``(blurred, sharp)`` pair (``(None, sharp)`` for synthetic blur).
        seed: seeds the (deterministic) choice of held-out planes.
        max_validation_crops: validation crops at most (a fixed grid, evenly thinned).
        check_alignment: measure the offset of every pair (a warning names misaligned pairs).
        cache_bytes: memory for normalised copies of whole in-memory (NumPy) planes, which makes reading a
            crop several times faster; planes beyond it are read lazily. 0 turns the cache off.
        decoded_cache_bytes: memory for the most recently decoded whole planes of lazy readers of compressed
            pages (compressed TIFF stacks read by the CLI, ``_DecodedPlanes``); 0 turns it off. A larger plane
            is read per crop, as a region (only the strips or tiles a crop covers, where the layout allows).
    """

    def __init__(
        self,
        blurred: Any | None,
        sharp: Any | None,
        *,
        axes: str | Sequence[str | None] | None = None,
        validation_axes: str | None = None,
        channels: int = 1,
        patch_size: int = 128,
        stride: int = 1,
        validation: float | tuple[Any, Any] | None = 0.1,
        seed: int = 0,
        max_validation_crops: int = 16,
        check_alignment: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        decoded_cache_bytes: int = DEFAULT_DECODED_CACHE_BYTES,
    ) -> None:
        self.notes: list[str] = []
        self._cache = _PlaneCache(cache_bytes)
        self._decoded = _DecodedPlanes(decoded_cache_bytes) if decoded_cache_bytes > 0 else None
        blurred_list = [_check_array(a, "blurred image") for a in _as_list(blurred)]
        sharp_list = [_check_array(a, "sharp image") for a in _as_list(sharp)]
        if not sharp_list:
            raise InputError("No training images: pass sharp images (and, if you have them, blurred ones).")
        self.synthetic = not blurred_list
        if not self.synthetic and len(blurred_list) != len(sharp_list):
            raise InputError(f"Got {len(blurred_list)} blurred but {len(sharp_list)} sharp images; pass them in pairs.")
        if int(patch_size) < 8:
            raise InputError(f"patch_size must be at least 8 pixels, got {patch_size}.")
        self.channels = int(channels)
        self.stride = max(int(stride), 1)

        per_image = _axes_per_image(axes, len(sharp_list))
        self.sources: list[_Source] = []
        for i, s in enumerate(sharp_list):
            b = None if self.synthetic else blurred_list[i]
            if b is not None and tuple(b.shape) != tuple(s.shape):
                raise InputError(
                    f"Blurred and sharp images of pair {i + 1} differ in shape: {tuple(b.shape)} vs "
                    f"{tuple(s.shape)}. Pairs must show the same field of view at the same size; crop or "
                    "resample one of them."
                )
            src_axes = self._image_axes(tuple(s.shape), per_image[i], i, len(sharp_list), axes)
            self.sources.append(self._make_source(s, b, src_axes, i))
        self.check_alignment = check_alignment
        if not self.synthetic:
            self._check_not_identical(self.sources)
        if check_alignment and not self.synthetic:
            for i, src in enumerate(self.sources):
                self._check_alignment(src, i)

        # patch size: multiple of the stride that fits every plane
        smallest = min(min(src.height, src.width) for src in self.sources)
        self._asked_patch = int(patch_size)
        self.patch_size = self._fit_patch(int(patch_size), smallest)

        self.train_planes: list[Plane] = []
        self.validation_planes: list[Plane] = []
        self.validation_sources: list[_Source] = []
        self._explicit_validation = isinstance(validation, (tuple, list))
        self._split(validation, axes, validation_axes, seed)
        if not self.train_planes:
            raise InputError("No training data left after the validation split; lower `validation`.")
        self._weights = np.array([p.height * p.width for p in self.train_planes], dtype=np.float64)
        self._weights /= self._weights.sum()
        self.validation_grid = self._validation_grid(max_validation_crops)

    # -- construction helpers --------------------------------------------------------------------------
    @staticmethod
    def _image_axes(shape: tuple[int, ...], given: str | None, i: int, n: int, axes: Any) -> str:
        """The axes of training image ``i`` (0-based) of ``n``: ``given`` (its entry of ``axes``) checked
        against its ``shape``, or inferred. An error names the image where there are several, or where
        ``axes`` is a list; where one string for every image does not fit this one, it says how to give each
        image its own."""
        try:
            return resolve_axes(shape, given)
        except InputError as exc:
            if n == 1 and not isinstance(axes, (list, tuple)):
                raise
            entry = f"axes[{i}]" if isinstance(axes, (list, tuple)) else "axes"
            hint = ""
            if isinstance(axes, str):
                hint = (
                    " One axes string applies to every image: for images of different axes, pass a list of one "
                    "per image (None infers that image's)."
                )
            raise InputError(f"Image {i + 1} of {n} (shape {shape}, {entry}={given!r}): {exc}.{hint}") from None

    def _check_finite(self, src: _Source) -> None:
        """NaN/inf anywhere in an in-memory float image is said now, plane by plane (bounded memory), not when
        training first draws a crop from that plane. Memory-mapped and lazy arrays are checked as they are
        read (reading them whole up front would cost what the lazy reading saves)."""
        for array in (src.sharp, src.blurred):
            if type(array) is np.ndarray and array.dtype.kind in "fc":
                for index, channel in src.plane_keys():
                    plane = src._read(array, index, channel, slice(None), slice(None))
                    _check_finite_plane(plane, src.plane_name(index))

    def _make_source(self, sharp: Any, blurred: Any | None, axes: str, i: int | None) -> _Source:
        """The source of training pair ``i`` (0-based), or of the validation pair (``i`` None)."""
        c_axis = next((axes.index(a) for a in CHANNEL_LETTERS if a in axes), None)
        n_ch = int(sharp.shape[c_axis]) if c_axis is not None else 1
        joint = self.channels > 1
        if joint and n_ch != self.channels:
            which = "the validation image" if i is None else f"image {i + 1}"
            if i is None:
                fix = f"Give a validation pair with {self.channels} channels, as the training images have"
            elif n_ch == 1:
                fix = "Use a 1-channel model"
            else:
                fix = f"Use a {n_ch}-channel model, or a 1-channel model to treat channels independently"
            raise InputError(
                f"The model takes {self.channels} channels jointly but {which} (axes {axes!r}, shape "
                f"{tuple(sharp.shape)}) has {n_ch}. {fix}."
            )
        source = _Source(sharp, blurred, axes, joint, self._cache, self._decoded)
        self._check_finite(source)
        return source

    def _fit_patch(self, asked: int, smallest: int) -> int:
        patch = max(self.stride, (asked // self.stride) * self.stride)
        if patch <= smallest:
            return patch
        fitted = (smallest // self.stride) * self.stride
        if fitted < max(8, self.stride):
            raise InputError(
                f"The images are too small to train on ({smallest} px along their shorter side); they need "
                f"at least {max(8, self.stride)} px."
            )
        stride = f", a multiple of the model's stride {self.stride}" if fitted != smallest else ""
        self.notes.append(
            f"patch_size reduced from {asked} to {fitted} px to fit the images (shorter side {smallest} px{stride})"
        )
        return fitted

    @staticmethod
    def _identical(src: _Source) -> bool:
        """Whether a pair's blurred and sharp images are the same: the same array, or equal values (in-memory
        arrays compared whole; memory-mapped and lazy ones in their middle plane, one read)."""
        if src.blurred is src.sharp:
            return True
        keys = src.plane_keys()
        index, channel = keys[len(keys) // 2]
        c_sel = (channel if channel is not None else 0) if src.c is not None else None
        full = slice(None)
        if not np.array_equal(
            src._read(src.blurred, index, c_sel, full, full), src._read(src.sharp, index, c_sel, full, full)
        ):
            return False
        if type(src.blurred) is np.ndarray and type(src.sharp) is np.ndarray:
            # plane by plane (np.array_equal of the stacks would build a stack-sized boolean array), and out
            # at the first plane that differs
            return all(
                np.array_equal(src._read(src.blurred, i, ch, full, full), src._read(src.sharp, i, ch, full, full))
                for i, ch in keys
            )
        return True

    def _check_not_identical(self, sources: list[_Source], validation: bool = False) -> None:
        """A pair whose blurred image is its sharp image teaches the model to change nothing: refused when every
        pair is one (always a mistake, e.g. the same file given twice), a warning when some are (pairs of sharp
        images mixed in on purpose teach the model to leave sharp images alone, but are more often a slip)."""
        same = [i for i, src in enumerate(sources) if self._identical(src)]
        if not same:
            return
        fix = (
            "Give each blurred image with its sharp counterpart, or give only the sharp images to train with "
            "synthetic blur."
        )
        if validation:
            raise InputError(
                "The validation pair's blurred and sharp images are identical: every model would score as if it "
                "changed nothing. Give the blurred validation image with its sharp counterpart."
            )
        if len(same) == len(sources):
            which = "The blurred and sharp images are" if len(sources) == 1 else "In every pair the images are"
            raise InputError(
                f"{which} identical: a model trained on them learns to change nothing (validation would score "
                f"the blurred input as perfect). {fix}"
            )
        listed = ", ".join(str(i + 1) for i in same)
        warnings.warn(
            f"Training pair{'s' if len(same) > 1 else ''} {listed} of {len(sources)}: the blurred image is identical "
            "to the sharp one, which teaches the model to change nothing. If that is not meant (sharp images "
            f"kept as they are), {fix[0].lower() + fix[1:]}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    @staticmethod
    def _missing(blurred: np.ndarray, sharp: np.ndarray) -> np.ndarray | None:
        """Where either plane of a pair has no data, as :meth:`_Source.crop` takes it (sentinels, and values
        ``NORMALIZED_LIMIT`` spans or more from the blurred plane's percentile range, with which both are
        normalised), or None where neither has any."""
        lo, hi = percentile_range(blurred)
        missing = np.abs(normalize(blurred, lo, hi)) >= NORMALIZED_LIMIT
        missing |= np.abs(normalize(sharp, lo, hi)) >= NORMALIZED_LIMIT
        return missing if missing.any() else None

    @staticmethod
    def _check_units(blurred: np.ndarray, sharp: np.ndarray, pair: str, missing: np.ndarray | None = None) -> None:
        """Warn when a pair is in different intensity units (e.g. a [0, 1] float blurred image with a raw
        uint16 sharp one, or two exposures): both are normalised with the blurred plane's percentiles, so the
        model would learn to scale intensities. Blur keeps the mean (it moves light, it does not add any), so
        the means are compared - not the ranges, which blur legitimately shrinks (a defocused bead's peak
        drops 100-fold). ``missing``: pixels with no data in either image (:meth:`_missing`), left out of
        both means (a sharp-only no-data border made a sharp mean of 1e37, and overflowed at float64's
        largest value)."""
        if missing is not None:
            blurred, sharp = blurred[~missing], sharp[~missing]
            if not blurred.size:
                return
        b_lo, b_hi = percentile_range(blurred)
        mean_b, mean_s = float(np.mean(blurred, dtype=np.float64)), float(np.mean(sharp, dtype=np.float64))
        shift = (mean_s - mean_b) / (b_hi - b_lo)  # in units of the normalised range
        ratio = mean_s / mean_b if mean_b != 0 else math.inf
        if abs(shift) > 0.2 and not 0.5 <= ratio <= 2.0:
            warnings.warn(
                f"{pair}: the sharp image's mean intensity is {mean_s:.4g}, the blurred image's "
                f"{mean_b:.4g}; blur keeps the mean, so they look like different units or exposures. Both are "
                "normalised with the blurred image's percentiles: give them in the same units (e.g. both raw "
                "camera counts of the same exposure).",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def _check_alignment(self, src: _Source, i: int | None) -> None:
        """Finite values, the same units, and registration of a pair (``i``: its index; None: the explicit
        validation pair)."""
        pair = "The validation pair" if i is None else f"Training pair {i + 1}"
        keys = src.plane_keys()
        index, channel = keys[len(keys) // 2]
        ch = channel if channel is not None else 0
        c_sel = ch if src.c is not None else None
        full = slice(None)
        b = src._read(src.blurred, index, c_sel, full, full)[0]
        s = src._read(src.sharp, index, c_sel, full, full)[0]
        if not (np.isfinite(b).all() and np.isfinite(s).all()):  # before the FFT, whose error would be obscure
            raise InputError(f"{pair} contains NaN or infinite values; replace them (e.g. np.nan_to_num).")
        missing = self._missing(b, s)
        self._check_units(b, s, pair, missing)
        if missing is not None:  # "no data" in either image: missing to training, and in both images here
            b, s = b.astype(np.float64), s.astype(np.float64)
            for values in (b, s):
                rest = values[~missing]
                values[missing] = np.percentile(rest, 1) if rest.size else 0.0
        b, s = without_sentinels(b), without_sentinels(s)
        dy, dx = measure_offset(b, s)
        # the correlation peak is precise on textured images but lands off-centre for motion blur, defocus disks
        # and sparse beads (51 false alarms in 120 registered bead pairs); the blur kernel's centre of mass
        # must confirm an offset (then 1 false alarm, and 119 of 120 shifted pairs caught; docs/training.md)
        confirmed = max(abs(v) for v in kernel_offset(b, s)) > MAX_ALIGNED_OFFSET
        if max(abs(dy), abs(dx)) > MAX_ALIGNED_OFFSET and confirmed:
            which = "The validation" if i is None else f"Training pair {i + 1}:"
            warnings.warn(
                f"{which} blurred image is offset from its sharp image by (dy, dx) = ({dy:+.1f}, {dx:+.1f}) "
                "pixels (FFT cross-correlation). Register the pair before training, otherwise the model "
                "learns to shift images.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def _split(self, validation: Any, axes: Any, validation_axes: str | None, seed: int) -> None:
        all_planes = [
            Plane(si, idx, ch, (0, src.height), (0, src.width))
            for si, src in enumerate(self.sources)
            for idx, ch in src.plane_keys()
        ]
        if isinstance(validation, (tuple, list)):
            if len(validation) != 2:
                raise InputError("validation must be a fraction (e.g. 0.1) or a (blurred, sharp) pair.")
            vb, vs = validation
            if vs is None:
                raise InputError("The validation pair needs a sharp image: pass (blurred, sharp).")
            vs = _check_array(vs, "validation sharp image")
            if vb is not None:
                vb = _check_array(vb, "validation blurred image")
                if tuple(vb.shape) != tuple(vs.shape):
                    raise InputError(
                        f"Validation blurred and sharp images differ in shape: {tuple(vb.shape)} vs {tuple(vs.shape)}."
                    )
            elif not self.synthetic:
                raise InputError("Training uses real pairs: pass a blurred validation image too.")
            per_image = isinstance(axes, (list, tuple))
            given = validation_axes if validation_axes is not None or per_image else axes
            try:
                pair_axes = resolve_axes(tuple(vs.shape), given)
            except InputError as exc:
                if validation_axes is not None:
                    raise InputError(f"The validation pair (shape {tuple(vs.shape)}, validation_axes): {exc}") from None
                if per_image:  # inferred: the training images' axes are a list, one per image
                    raise InputError(
                        f"The validation pair (shape {tuple(vs.shape)}): {exc}. With a list of axes (one per "
                        "training image) the validation pair's are inferred from its shape: give them as "
                        "validation_axes."
                    ) from None
                said = f" (axes {axes!r}): the axes apply to it too" if axes else ""
                raise InputError(
                    f"The validation pair (shape {tuple(vs.shape)}) must have the same axes as the training "
                    f"images{said}, or pass its own as validation_axes. {exc}"
                ) from None
            vsrc = self._make_source(vs, vb, pair_axes, None)
            if vb is not None:
                self._check_not_identical([vsrc], validation=True)
            if vb is not None and self.check_alignment:
                self._check_alignment(vsrc, None)  # a misregistered validation pair misjudges every model
            if min(vsrc.height, vsrc.width) < self.patch_size:
                raise InputError(
                    f"The validation image ({vsrc.height} x {vsrc.width}) is smaller than the patch size "
                    f"{self.patch_size}; pass a larger one or a smaller patch_size."
                )
            self.validation_sources = [vsrc]
            self.train_planes = all_planes
            self.validation_planes = [
                Plane(0, idx, ch, (0, vsrc.height), (0, vsrc.width)) for idx, ch in vsrc.plane_keys()
            ]
            return
        if validation_axes is not None:
            raise InputError(
                f"validation_axes is for an explicit (blurred, sharp) validation pair, but validation is "
                f"{validation!r}: held-out planes keep the axes of the images they come from. Leave "
                "validation_axes out, or pass the validation pair."
            )
        fraction_like = _fraction_like(validation)
        if validation is not None and not fraction_like:
            raise InputError(
                f"validation must be a fraction in [0, 1) such as 0.1, 0 or None for none, or a (blurred, sharp) "
                f"pair; got {validation!r}."
            )
        fraction = 0.0 if validation is None else float(validation)
        if not 0.0 <= fraction < 1.0:
            raise InputError(f"validation must be a fraction in [0, 1) or a (blurred, sharp) pair, got {validation!r}.")
        self.validation_sources = self.sources
        if fraction == 0.0:
            self.train_planes = all_planes
            return
        # Plane positions, not channel planes: the channels of one position are one scene (a 2D image of 6
        # channels is one position, held out by a band, not by holding out some of its channels).
        positions = {(p.source, p.index) for p in all_planes}
        if len(positions) >= _MIN_PLANES_FOR_PLANE_SPLIT and round(fraction * len(positions)) >= 1:
            held, apart = _held_out_planes(all_planes, fraction, seed)
            self.validation_planes = [p for p in all_planes if (p.source, p.index) in held]
            self.train_planes = [p for p in all_planes if (p.source, p.index) not in held | apart]
            if apart:
                per_source = Counter(src for src, _ in positions)
                of_stacks = sum(1 for src, _ in held if per_source[src] > 1)
                images = len(held) - of_stacks
                also = f" and {_count(images, 'separate image')}" if images else ""
                self.notes.append(
                    f"validation holds out the last {_count(of_stacks, 'plane')} of the stack(s){also}, and leaves "
                    f"{_count(len(apart), 'neighbouring plane')} out of training: neighbouring Z/T planes are nearly "
                    "the same image, and validating next to them would reward memorising."
                )
            return
        # Few planes: hold out a band at the end of every plane (rows, else columns), a patch deep at least.
        P = self.patch_size
        for p in all_planes:
            h, w = p.height, p.width
            band_rows = max(P, round(fraction * h))
            band_cols = max(P, round(fraction * w))
            if h - band_rows >= P and h >= w:
                self.train_planes.append(Plane(p.source, p.index, p.channel, (0, h - band_rows), p.cols))
                self.validation_planes.append(Plane(p.source, p.index, p.channel, (h - band_rows, h), p.cols))
            elif w - band_cols >= P:
                self.train_planes.append(Plane(p.source, p.index, p.channel, p.rows, (0, w - band_cols)))
                self.validation_planes.append(Plane(p.source, p.index, p.channel, p.rows, (w - band_cols, w)))
            elif h - band_rows >= P:
                self.train_planes.append(Plane(p.source, p.index, p.channel, (0, h - band_rows), p.cols))
                self.validation_planes.append(Plane(p.source, p.index, p.channel, (h - band_rows, h), p.cols))
            elif max(h, w) - P >= P:  # a band one patch deep would leave room: the fraction is too large
                raise InputError(
                    f"validation {fraction:g} holds out so much of each {h} x {w} image plane that no {P}-px "
                    f"training patch fits in the rest. Use a smaller fraction (such as 0.1), validation=0, or pass "
                    "a separate validation pair."
                )
            else:
                asked = "" if self._asked_patch == P else f" (from patch_size {self._asked_patch})"
                raise InputError(
                    f"Image plane {h} x {w} is too small to hold out a {P}-px validation band and still train "
                    f"on {P}-px patches{asked}. Use validation=0, a smaller patch_size, or pass a separate "
                    "validation pair."
                )
        held_px = sum(p.height * p.width for p in self.validation_planes)
        total_px = held_px + sum(p.height * p.width for p in self.train_planes)
        if total_px and held_px / total_px > 1.5 * fraction:
            # the band is a patch deep at least: on small images that is far more than the fraction asked for
            self.notes.append(
                f"validation holds out {100 * held_px / total_px:.0f} % of the image area, not {100 * fraction:.0f} "
                f"%: the held-out band is at least one {P}-px patch deep. A smaller patch_size, larger images or "
                "a separate validation pair keep more for training."
            )

    def _validation_grid(self, max_crops: int) -> list[tuple[Plane, int, int]]:
        """Fixed validation crops: (plane, y0, x0) on a non-overlapping grid, evenly thinned to max_crops,
        leaving out blank crops (:meth:`_is_blank`) and taking others of the grid in their place.

        The first picks are the evenly spaced ones; crops are read only to check the picks (and, for each blank
        one, a replacement spread evenly over the rest), not the whole held-out grid. The grid depends on the
        data only (not on training), so a resumed run validates on the same crops.
        """
        P = self.patch_size
        grid = []
        for p in self.validation_planes:
            for y0 in range(p.rows[0], p.rows[1] - P + 1, P):
                for x0 in range(p.cols[0], p.cols[1] - P + 1, P):
                    grid.append((p, y0, x0))
        # the visiting order: the evenly spaced picks (the whole grid when it is small), then the rest spread
        # out (bit-reversed order), so that replacements for blank picks come from all over the held-out data
        # and a blank run of planes (zero-padded first slices) is not walked crop by crop
        picks = sorted({int(i) for i in np.linspace(0, len(grid) - 1, min(max_crops, len(grid))).round()})
        taken = set(picks)
        rest = [i for i in range(len(grid)) if i not in taken]
        bits = max(1, (len(rest) - 1).bit_length())
        rest = [rest[j] for j in sorted(range(len(rest)), key=lambda j: int(f"{j:0{bits}b}"[::-1], 2))]
        reads = max(16 * max_crops, 256)  # at most: a mostly blank grid is judged on a sample, not read whole
        chosen: list[int] = []
        blank = 0
        for i in [*picks, *rest][:reads]:
            if len(chosen) >= max_crops:
                break
            if self._is_blank(*grid[i]):
                blank += 1
            else:
                chosen.append(i)
        if blank and not chosen:
            what = "the validation pair's sharp image is" if self._explicit_validation else "the held-out data is"
            raise InputError(
                f"All {blank} validation crops checked are blank (constant): {what} empty there, and blank crops "
                "cannot tell a better model from a worse one. Pass a separate validation pair with content, "
                "another validation fraction, or validation=0 to train without validation (the last weights are "
                "returned)."
            )
        if blank:
            self.notes.append(
                f"{blank} blank (constant) validation crops were left out of validation (others of the held-out "
                "grid take their place where there are any): the blurred input already scores ~100 dB on them, "
                "whatever the model does"
            )
        return [grid[i] for i in sorted(chosen)]

    def _is_blank(self, plane: Plane, y0: int, x0: int) -> bool:
        """Whether the sharp target of a validation crop is constant in every channel (an empty frame, a
        zero-padded slice): the input already scores ~100 dB on it (the MSE floor), so it would dominate the
        mean validation PSNR and let tiny errors there decide which weights are best, while saying nothing
        about deblurring."""
        P = self.patch_size
        src = self.validation_sources[plane.source]
        raw = src._read(src.sharp, plane.index, plane.channel, slice(y0, y0 + P), slice(x0, x0 + P))
        flat = raw.reshape(raw.shape[0], -1)
        return bool(np.all(flat.max(axis=1) == flat.min(axis=1)))

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        """Channels of each crop (the model's channel count)."""
        return self.channels

    def describe(self) -> str:
        """One line about the training data (for the Started event and provenance)."""
        kind = "sharp images + synthetic blur" if self.synthetic else "blurred/sharp pairs"
        shapes = [str(tuple(int(v) for v in s.shape)) for s in self.sources]
        if len(shapes) > _SHAPES_LISTED:  # one line stays one line; provenance keeps every shape (data_shapes)
            shapes = [*shapes[:_SHAPES_LISTED], f"... {len(shapes) - _SHAPES_LISTED} more"]
        return f"{len(self.train_planes)} planes of {kind} ({', '.join(shapes)})"

    def describe_validation(self) -> str:
        """One line about the validation data."""
        if not self.validation_grid:
            return "none"
        planes = len({id(plane) for plane, _, _ in self.validation_grid})  # a plane left with no crop is not counted
        return f"{len(self.validation_grid)} crops of {self.patch_size} px from {planes} planes"

    def sample(
        self, batch_size: int, rng: np.random.Generator, margin: int = 0
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """A random batch ``(blurred, sharp)`` of augmented (flips, 90-degree turns) float32 crops.

        Shapes ``(B, C, P + 2 margin, P + 2 margin)``; ``blurred`` is None for sharp-only data.
        """
        plane_ids, positions = self.draw_crops(batch_size, rng)
        return self.read_crops(plane_ids, positions, margin)

    @property
    def decodes_whole_pages(self) -> bool:
        """Whether a training image is read through a reader whose crops cost a decode (a compressed TIFF
        stack read lazily, :func:`_decodes_whole_pages`): then reading many crops at once, plane by plane, saves
        decodes of the planes that fit the decoded-plane cache (:class:`BatchSource` reads batches ahead)."""
        return any(_decodes_whole_pages(array) for src in self.sources for array in (src.sharp, src.blurred))

    def read_crops(
        self, plane_ids: np.ndarray, positions: np.ndarray, margin: int = 0
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """The crops :meth:`draw_crops` drew, as :meth:`sample` returns them (``(N, C, P + 2m, P + 2m)``)."""
        P = self.patch_size
        count = len(plane_ids)
        shape = (count, self.channels, P + 2 * margin, P + 2 * margin)
        blurred_out = None if self.synthetic else np.empty(shape, np.float32)
        sharp_out = np.empty(shape, np.float32)
        # crops of one plane one after another (each still written to its own place in the batch): a plane
        # decoded whole for its first crop (a compressed lazy stack, _DecodedPlanes) serves the others. How many
        # crops one decode of a page serves (its plane's, and its other channels' where they are in the page: an
        # RGB page read for a one-channel model) matters only to such stacks: not counted for other data
        counted = self.decodes_whole_pages
        decodes = [self._decode_key(self.train_planes[int(pid)]) for pid in plane_ids] if counted else []
        crops_per_decode = Counter(decodes)
        for i in np.argsort(plane_ids, kind="stable"):
            plane = self.train_planes[int(plane_ids[i])]
            y0, x0, transform = (int(v) for v in positions[i])
            b, s = self.sources[plane.source].crop(
                plane.index,
                plane.channel,
                y0,
                x0,
                P,
                margin,
                bounds=(plane.rows, plane.cols),
                copy=False,
                crops_from_plane=crops_per_decode[decodes[i]] if counted else 1,
            )
            sharp_out[i] = _dihedral(s, transform)
            if blurred_out is not None and b is not None:
                blurred_out[i] = _dihedral(b, transform)
        return blurred_out, sharp_out

    def _decode_key(self, plane: Plane) -> tuple[int, tuple[int, ...], int | None]:
        """What one decode of a compressed lazy page serves (:meth:`_Source.kept_channel`): the training
        plane's source and index, and its channel where each channel is a page of its own."""
        source = self.sources[plane.source]
        return plane.source, plane.index, source.kept_channel(source.sharp, plane.channel)

    def draw_crops(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The random part of :meth:`sample`: training-plane indices ``(B,)`` and ``(B, 3)`` rows of ``(y0, x0,
        turn)`` (top-left corner of the crop without margin; one of :func:`_dihedral`'s 8 flips/turns)."""
        P = self.patch_size
        plane_ids = rng.choice(len(self.train_planes), size=batch_size, p=self._weights)
        positions = np.empty((batch_size, 3), np.int64)
        # Per-crop draws in this order (not vectorised): the shipped model's recipe reproduces bit-identically.
        for i, pid in enumerate(plane_ids):
            plane = self.train_planes[int(pid)]
            positions[i, 0] = plane.rows[0] + int(rng.integers(0, plane.height - P + 1))
            positions[i, 1] = plane.cols[0] + int(rng.integers(0, plane.width - P + 1))
            positions[i, 2] = int(rng.integers(0, 8))
        return plane_ids, positions

    def validation_arrays(self, margin: int = 0) -> tuple[np.ndarray | None, np.ndarray] | None:
        """All validation crops ``(blurred or None, sharp)`` as ``(V, C, P + 2m, P + 2m)``, or None."""
        if not self.validation_grid:
            return None
        blurred, sharp = [], []
        for plane, y0, x0 in self.validation_grid:
            b, s = self.validation_sources[plane.source].crop(
                plane.index, plane.channel, y0, x0, self.patch_size, margin, bounds=(plane.rows, plane.cols)
            )
            sharp.append(s)
            blurred.append(b)
        b_arr = None if blurred[0] is None else np.stack(blurred)
        return b_arr, np.stack(sharp)

    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the training arrays (for provenance metadata)."""
        return [tuple(int(v) for v in s.shape) for s in self.sources]

    def axes(self) -> list[str]:
        """Axes of the training arrays, as given or inferred (for provenance metadata and a resume's check)."""
        return [s.axes for s in self.sources]


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes of ``x`` (a view): ``np.rot90(x, k % 4, axes=(-2,
    -1))`` after a left-right flip when ``k >= 4``, written as slices because np.rot90's overhead is larger than
    a crop's copy."""
    if k >= 4:
        x = x[..., ::-1]
    turns = k % 4
    if turns == 1:
        return x[..., ::-1].swapaxes(-2, -1)
    if turns == 2:
        return x[..., ::-1, ::-1]
    if turns == 3:
        return x.swapaxes(-2, -1)[..., ::-1]
    return x


#: Noise of synthetic training data when the user says nothing: photons at intensity 1.0 (the normalised bright
#: end) drawn log-uniformly, and read noise in photons drawn uniformly, per crop. The photons match
#: synthesize_blur(noise="realistic"); the read noise does not: synthesize_blur draws 1..4 (the evaluation
#: protocol's range, blur/synthesize.py REALISTIC_READ_NOISE), training 0.5..4, so that models also see lower
#: read noise. Neither is to change: the shipped models' recipe and the evaluation depend on them.
REALISTIC_NOISE: dict[str, tuple[float, float]] = {"photons": (30.0, 1000.0), "read_noise": (0.5, 4.0)}


def _range(value: Any, name: str, positive: str | None = None) -> tuple[float, float]:
    """``(low, high)`` of a number or a pair, 0 <= low <= high; with ``positive`` (what the message adds after
    "must be > 0", e.g. " pixels"), also > 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise InputError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
    if positive is not None and math.isfinite(lo) and math.isfinite(hi) and min(lo, hi) <= 0:
        raise InputError(f"{name} must be > 0{positive}, got {value!r}.")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise InputError(f"{name} needs 0 <= low <= high, got {(lo, hi)}.")
    return lo, hi


#: Why photon counts must be > 0, said with the error (``positive`` of :func:`_range`).
_FEWER_PHOTONS = " (fewer photons = noisier)"


def resolve_noise(noise: Any) -> dict[str, tuple[float, float]] | None:
    """Noise of synthetic training data: "realistic"/True (default ranges: :data:`REALISTIC_NOISE`, 30..1000
    photons and read noise 0.5..4 photons, where ``synthesize_blur(noise="realistic")`` draws read noise from
    1..4: training covers lower read noise too), None/False (none), a number of photons (no read noise, as
    synthesize_blur), or {"photons": P or (lo, hi), "read_noise": R or (lo, hi)}."""
    if noise is None or noise is False:
        return None
    if noise is True or noise == "realistic":
        return dict(REALISTIC_NOISE)
    if isinstance(noise, Mapping):
        from ..blur.synthesize import noise_keys_error

        if error := noise_keys_error(noise, "{'photons': (30, 1000), 'read_noise': (0.5, 4)}"):
            raise error
        photons = _range(noise["photons"], "noise photons", _FEWER_PHOTONS)
        read = _range(noise.get("read_noise", 0.0), "noise read_noise")
    elif isinstance(noise, str):  # the words synthesize_blur's message uses, and what else finetune takes
        raise InputError(
            f"Unknown noise preset {noise!r}; use 'realistic', a number of photons or a (low, high) pair of them, a "
            "dict or None."
        )
    else:
        photons, read = _range(noise, "noise (photons)", _FEWER_PHOTONS), (0.0, 0.0)
    if photons[0] <= 0:
        raise InputError(f"noise photons must be > 0 (fewer photons = noisier), got {photons}.")
    return {"photons": photons, "read_noise": read}


def resolve_blur_strength(strength: Any, kinds: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    """Blur size of synthetic training data in pixels (motion extent, disk/Airy radius, Gaussian sigma) for
    every kind: None (each kind's default random range), a number, or a (low, high) pair."""
    if strength is None:
        return None
    lo, hi = _range(strength, "blur_strength", " pixels")
    if lo <= 0:
        raise InputError(f"blur_strength must be > 0 pixels, got {strength!r}.")
    return {kind: (lo, hi) for kind in kinds}


#: Limits of the span (hi - lo) of a synthetic blurred crop's percentiles, in units of the sharp plane's span:
#: blur can lower thin filaments' and beads' peaks 5-fold, but a crop of background alone has a tiny span and
#: inference normalises whole planes, whose span an empty crop says nothing about: the clamp bounds its gain.
_SPAN_LIMITS = (0.1, 2.0)


def validation_fingerprint(blurred: np.ndarray | None, sharp: np.ndarray) -> str:
    """A short hash of the validation crops as read from the data (before any synthetic blur, which may
    differ in the last bits between devices): a checkpoint records it, so that a resumed run can tell
    whether its validation scores are comparable with the checkpoint's best."""
    import hashlib

    digest = hashlib.sha256()
    for array in (sharp, blurred):
        if array is not None:
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def renormalize_like_inference(blurred: torch.Tensor, sharp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-scale synthetic ``(B, C, H, W)`` pairs by the blurred crops' percentiles, as inference scales inputs.

    Inference maps each plane's ``DEFAULT_NORMALIZATION`` percentiles of the *blurred* image to 0 and 1; the
    sharp target is put in the same units so that de-normalising the output gives sharp intensities.
    """
    import torch

    low, high = DEFAULT_NORMALIZATION["low"] / 100.0, DEFAULT_NORMALIZATION["high"] / 100.0
    flat = blurred.detach().flatten(2).float()
    q = torch.quantile(flat, torch.tensor([low, high], device=flat.device), dim=-1)  # (2, B, C)
    lo = q[0][..., None, None].clamp(-0.5, 0.5)
    span = (q[1][..., None, None] - q[0][..., None, None]).clamp(*_SPAN_LIMITS)
    return ((blurred - lo) / span).to(blurred.dtype), ((sharp - lo) / span).to(sharp.dtype)


#: Batches of PSFs made at once on a CUDA device (:class:`BatchSource`'s ``psf_block``).
GPU_PSF_BLOCK = 16

#: Bytes of float32 crops that :class:`BatchSource` reads ahead from a compressed lazy stack (32 batches of 8
#: pairs of 128 px crops), and at most so many batches (small crops: a resume or a new batch size draws the
#: unused ones again, and the first batch waits for all of them).
READ_AHEAD_BYTES = 32 * 2**20
READ_AHEAD_BATCHES = 32


@dataclass
class _ReadAhead:
    """A batch read ahead: the NumPy generator's state before its draws (what a checkpoint saves while it has
    not been used), its size and its crops."""

    rng_state: dict[str, Any]
    batch_size: int
    blurred: np.ndarray | None
    sharp: np.ndarray


class BatchSource:
    """Batches of training tensors on ``device`` (and the fixed validation batch), blur synthesised there.

    Randomness comes from generators owned by this object - a NumPy ``Generator`` for crop positions
    and augmentations and a ``torch.Generator`` for PSFs and noise - whose states :meth:`state_dict`
    captures, so a resumed run draws exactly the batches the uninterrupted run would have drawn.

    ``psf_block``: the PSFs of this many batches are made in one call. The motion walk is sequential (255
    small steps), so on a GPU it cost ~37 ms per batch whatever its size - two thirds of a 128-crop step on
    an H100 (docs/benchmarks.md) - and making 16 batches' PSFs at once divides that by 16. Blocks use their
    own generator (seeded from ``seed``), whose state at the block's start and the number of PSFs used
    :meth:`state_dict` keeps, so resuming is still exact. ``None`` (default): 16 on CUDA, 1 elsewhere, which
    keeps CPU runs drawing exactly what they drew before blocks existed (the shipped model's recipe).

    ``read_ahead_bytes``: for a compressed TIFF stack read lazily (:attr:`PairedData.decodes_whole_pages`),
    whose planes that fit the decoded-plane cache are decoded whole (~10 ms for 1024 x 1024 px), the crops of
    the next batches (up to this many bytes of them) are drawn and read at once, plane by plane: a plane's page is
    decoded once for all of its crops among them rather than once per crop (up to :data:`READ_AHEAD_BATCHES`
    batches). The draws are those the batches
    would make one by one, in the same order, so the batches are the same bit for bit; a checkpoint saves the
    generator's state before the first batch not yet used, and a change of batch size (halved after running
    out of GPU memory) draws again from there. 0 reads one batch at a time. :attr:`batches_needed` (set by the
    trainer) keeps it from reading batches the run will never take; a crop that cannot be read (a NaN plane)
    fails the batch that holds it, when the run takes that batch, not the first batch read ahead with it.
    """

    def __init__(
        self,
        data: PairedData,
        device: torch.device,
        *,
        seed: int,
        blur_kinds: Sequence[str] = BLUR_KINDS["mixed"],
        blur_weights: Sequence[float] | None = None,
        channels_last: bool = False,
        noise: Any = True,
        strength_ranges: Mapping[str, tuple[float, float]] | None = None,
        psf_block: int | None = None,
        device_crops: bool | None = None,
        read_ahead_bytes: int = READ_AHEAD_BYTES,
    ) -> None:
        from collections import deque

        import torch

        from ..blur.torch_synthesis import default_psf_size

        if psf_block is None:
            psf_block = GPU_PSF_BLOCK if device.type == "cuda" else 1
        if isinstance(psf_block, bool) or not isinstance(psf_block, int) or psf_block < 1:
            raise InputError(f"psf_block must be a positive integer (batches of PSFs made at once), got {psf_block!r}.")
        self.psf_block = psf_block
        self._psf_generator = torch.Generator(device="cpu")
        self._psf_generator.manual_seed(int(seed) + 3)
        self._psf_block_state: torch.Tensor | None = None  # the PSF generator's state before the current block
        self._psfs: torch.Tensor | None = None  # the current block
        self._psfs_used = 0
        # crops cut on the device (data/device_crops.py): the same crops as sample(), without its per-crop loop
        self.use_device_crops = device.type == "cuda" if device_crops is None else bool(device_crops)
        self._device_crops: Any = None  # built on first use: False when the data does not qualify

        self.data = data
        self.device = device
        self.blur_kinds = tuple(blur_kinds)
        self.blur_weights = None if blur_weights is None else tuple(float(w) for w in blur_weights)
        self.channels_last = channels_last
        # {"photons": (lo, hi), "read_noise": (lo, hi)} drawn per crop, or None for noise-free blur
        self.noise = resolve_noise(noise)
        self.strength_ranges = dict(strength_ranges) if strength_ranges else None
        self.rng = np.random.default_rng(seed)
        # A CPU generator for synthesis: the same PSFs on every device (torch_synthesis moves them over; the
        # per-pixel noise is drawn on the batch's device, seeded from this generator).
        self.torch_generator = torch.Generator(device="cpu")
        self.torch_generator.manual_seed(int(seed) + 1)
        self.psf_size = default_psf_size(self.blur_kinds, self.strength_ranges)
        self.margin = self.psf_size // 2 if data.synthetic else 0
        self._validation: tuple[torch.Tensor, torch.Tensor] | None = None
        self._validation_seed = int(seed) + 2
        self._validation_fingerprint: str | None = None
        self.read_ahead_bytes = int(read_ahead_bytes) if data.decodes_whole_pages else 0
        self._read_ahead: deque[_ReadAhead] = deque()
        #: How many more batches the run will take (the trainer sets it before each step), or None when not
        #: known: read-ahead reads no more than that, so the last steps of a run do not decode 32 batches' pages.
        self.batches_needed: int | None = None

    def _sample(self, batch_size: int) -> tuple[np.ndarray | None, np.ndarray]:
        """:meth:`PairedData.sample`'s next batch, from the batches read ahead where the data is read so."""
        if self.read_ahead_bytes <= 0:
            return self.data.sample(batch_size, self.rng, self.margin)
        if self._read_ahead and self._read_ahead[0].batch_size != batch_size:
            self._forget_read_ahead()  # drawn for another batch size: draw again from the first unused batch
        if not self._read_ahead:
            self._fill_read_ahead(batch_size)
        batch = self._read_ahead.popleft()
        if self.batches_needed is not None:
            self.batches_needed = max(0, self.batches_needed - 1)
        return batch.blurred, batch.sharp

    def _fill_read_ahead(self, batch_size: int) -> None:
        side = self.data.patch_size + 2 * self.margin
        images = 1 if self.data.synthetic else 2
        batch_bytes = images * batch_size * self.data.channels * side * side * 4
        count = min(READ_AHEAD_BATCHES, max(1, self.read_ahead_bytes // batch_bytes))
        if self.batches_needed is not None:
            count = min(count, max(1, self.batches_needed))
        states, plane_ids, positions = [], [], []
        for _ in range(count):  # the draws of `count` calls of sample(), in their order
            states.append(self.rng.bit_generator.state)
            ids, where = self.data.draw_crops(batch_size, self.rng)
            plane_ids.append(ids)
            positions.append(where)
        try:
            blurred, sharp = self.data.read_crops(np.concatenate(plane_ids), np.concatenate(positions), self.margin)
        except Exception:
            if count == 1:
                self.rng.bit_generator.state = states[0]  # no batch was read, so none was drawn
                raise
            # a crop that cannot be read (a NaN plane): the batches before the one that holds it are kept and the
            # run takes them, so that its error comes at the step that would use that batch, as it does read one
            # by one (the steps before it train, and a stopped run's "model so far" holds them)
            self._read_batch_by_batch(batch_size, states, plane_ids, positions)
            return
        except BaseException:  # Ctrl-C: no batch was read, so none was drawn
            self.rng.bit_generator.state = states[0]
            raise
        for i, state in enumerate(states):
            part = slice(i * batch_size, (i + 1) * batch_size)
            self._read_ahead.append(
                _ReadAhead(state, batch_size, None if blurred is None else blurred[part], sharp[part])
            )

    def _read_batch_by_batch(
        self,
        batch_size: int,
        states: list[dict[str, Any]],
        plane_ids: list[np.ndarray],
        positions: list[np.ndarray],
    ) -> None:
        """Read the batches drawn (``states``: the generator's before each) one at a time, up to the first that
        fails, which is raised only when it is the first; the generator goes back to before the first batch not
        read, which is drawn again (and fails again) when the run asks for it."""
        kept = 0
        try:
            for state, ids, where in zip(states, plane_ids, positions, strict=True):
                blurred, sharp = self.data.read_crops(ids, where, self.margin)
                self._read_ahead.append(_ReadAhead(state, batch_size, blurred, sharp))
                kept += 1
        except Exception:
            self.rng.bit_generator.state = states[kept]
            if kept == 0:
                raise
        except BaseException:  # Ctrl-C: the batches read are kept, the others drawn again
            self.rng.bit_generator.state = states[kept]
            raise

    def _forget_read_ahead(self) -> None:
        """Drop the batches read ahead, the generator back where the first of them was drawn."""
        if self._read_ahead:
            self.rng.bit_generator.state = self._read_ahead[0].rng_state
            self._read_ahead.clear()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array))
        # pinned host memory lets the copy overlap with the GPU's work on the previous batch
        t = t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t.to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _make_psf_block(self, count: int) -> None:
        from ..blur.torch_synthesis import random_psf_batch

        self._psf_block_state = self._psf_generator.get_state()
        self._psfs = random_psf_batch(
            count,
            self.psf_size,
            self.blur_kinds,
            generator=self._psf_generator,
            device=self.device,
            strength_ranges=self.strength_ranges,
            kind_weights=self.blur_weights,
        )
        self._psfs_used = 0

    def _next_psfs(self, n: int) -> torch.Tensor:
        """``n`` PSFs from the current block; a new block (of ``psf_block`` batches) when it has fewer left."""
        if self._psfs is None or self._psfs_used + n > len(self._psfs):
            self._make_psf_block(n * self.psf_block)
        assert self._psfs is not None
        out = self._psfs[self._psfs_used : self._psfs_used + n]
        self._psfs_used += n
        return out

    def _synthesize(
        self, sharp: torch.Tensor, generator: torch.Generator, blocked: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ..blur.torch_synthesis import synthesize_batch

        noise_ranges = (
            {"photons_range": self.noise["photons"], "read_noise_range": self.noise["read_noise"]} if self.noise else {}
        )
        blurred, _ = synthesize_batch(
            sharp,
            kinds=self.blur_kinds,
            kind_weights=self.blur_weights,
            generator=generator,
            noise=self.noise is not None,
            strength_ranges=self.strength_ranges,
            psfs=self._next_psfs(sharp.shape[0]) if blocked else None,
            **noise_ranges,
        )
        m = self.margin
        if m:
            blurred = blurred[..., m:-m, m:-m]
            sharp = sharp[..., m:-m, m:-m]
        return renormalize_like_inference(blurred.contiguous(), sharp.contiguous())

    def _crops_on_device(self, batch_size: int) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """A batch of crops cut on the device, or None when the data does not qualify (then use sample)."""
        if not self.use_device_crops:
            return None
        if self._device_crops is None:
            from .device_crops import DeviceCrops

            self._device_crops = DeviceCrops.build(self.data, self.device, self.margin) or False
        if self._device_crops is False:
            return None
        import torch

        plane_ids, positions = self.data.draw_crops(batch_size, self.rng)
        blurred, sharp = self._device_crops.gather(plane_ids, positions)
        if self.channels_last:
            sharp = sharp.contiguous(memory_format=torch.channels_last)
            blurred = None if blurred is None else blurred.contiguous(memory_format=torch.channels_last)
        return blurred, sharp

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blurred, sharp)`` float32 tensors ``(B, C, P, P)`` on the device."""
        on_device = self._crops_on_device(batch_size)
        if on_device is not None:
            blurred_t, sharp_t = on_device
            if blurred_t is not None:
                return blurred_t, sharp_t
        else:
            blurred, sharp = self._sample(batch_size)
            sharp_t = self._to_device(sharp)
            if blurred is not None:
                return self._to_device(blurred), sharp_t
        blurred_t, sharp_t = self._synthesize(sharp_t, self.torch_generator, blocked=self.psf_block > 1)
        if self.channels_last:
            import torch

            blurred_t = blurred_t.contiguous(memory_format=torch.channels_last)
            sharp_t = sharp_t.contiguous(memory_format=torch.channels_last)
        return blurred_t, sharp_t

    def validation_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fixed validation crops ``(blurred, sharp)`` on the device (blur synthesised once, seeded)."""
        if self._validation is None:
            arrays = self.data.validation_arrays(self.margin)
            if arrays is None:
                return None
            blurred, sharp = arrays
            self._validation_fingerprint = validation_fingerprint(blurred, sharp)
            sharp_t = self._to_device(sharp)
            if blurred is None:
                import torch

                gen = torch.Generator(device="cpu")
                gen.manual_seed(self._validation_seed)
                blurred_t, sharp_t = self._synthesize(sharp_t, gen)
            else:
                blurred_t = self._to_device(blurred)
            self._validation = (blurred_t, sharp_t)
        return self._validation

    def validation_fingerprint(self) -> str | None:
        """:func:`validation_fingerprint` of the validation crops (None without validation)."""
        self.validation_batch()
        return self._validation_fingerprint

    def state_dict(self) -> dict[str, Any]:
        """Sampler state: NumPy bit-generator state (JSON-able), the torch generator state (tensor) and, with
        PSF blocks, the PSF generator's state at the current block's start, the block's size and the PSFs used."""
        import json

        # batches read ahead and not used yet are drawn again after a resume, as they would have been drawn
        rng_state = self._read_ahead[0].rng_state if self._read_ahead else self.rng.bit_generator.state
        state: dict[str, Any] = {
            "numpy_json": json.dumps(rng_state),
            "torch": self.torch_generator.get_state(),
        }
        if self.psf_block > 1:
            fresh = self._psfs is None
            state["psf_block"] = {
                "generator": self._psf_generator.get_state() if fresh else self._psf_block_state,
                "size": 0 if fresh else len(self._psfs),
                "used": self._psfs_used,
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        import json

        self._read_ahead.clear()
        self.rng.bit_generator.state = json.loads(state["numpy_json"])
        self.torch_generator.set_state(state["torch"].cpu())
        block = state.get("psf_block")
        if block is not None and self.psf_block > 1:
            # re-make the block that was being used (same generator state, same size), then skip what was used
            self._psf_generator.set_state(block["generator"].cpu())
            if int(block["size"]) > 0:
                self._make_psf_block(int(block["size"]))
                self._psfs_used = int(block["used"])
            else:
                self._psfs, self._psf_block_state, self._psfs_used = None, None, 0


__all__ = [
    "BLUR_KINDS",
    "BatchSource",
    "PairedData",
    "Plane",
    "format_blur_mix",
    "measure_offset",
    "renormalize_like_inference",
    "resolve_blur_kinds",
    "resolve_blur_mix",
]

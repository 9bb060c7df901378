"""``deblur()``: restore an image or stack of any size, dtype and axes with a deblurring model.

The one path every front end (widget, CLI, console, tests) takes::

    axes -> for each YX plane (and channel, for single-channel models):
        percentile-normalise -> reflect-pad (the border context) -> tiles in batches -> generator (eval, no grad)
        -> blend tiles -> crop -> denormalise -> clip/cast to the input dtype

Memory: one plane's float32 buffers plus one batch of tiles; the stack is never copied as a whole. A dask
array in gives a lazy dask array out, computed block by block; another array-like (zarr, h5py) is read one
plane at a time (a chunked one a slab of whole chunks at a time, at most ``SLAB_BYTES``), and its planes are
checked for NaN/inf as they are read. A NumPy array in memory is checked whole before the first plane (a
NaN in its last plane fails at once, not after the other planes were deblurred); a memory map is checked
plane by plane, as an array-like (a whole scan would read the whole file).
"""

from __future__ import annotations

import copy
import mmap
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import channel_axis, is_rgba, plane_name, resolve_axes
from ..errors import Cancelled, InputError, cancel_requested, user_stacklevel
from ..inputs import (
    SLAB_BYTES,
    PlaneReader,
    is_dask,
    is_lazy,
    nonfinite_error,
    reject_viewer_objects,
    warn_if_alpha_looks_like_a_channel,
)
from ..normalization import (
    NORMALIZED_LIMIT,
    cast_like,
    check_dtype,
    limit_sentinels,
    local_percentile_fields,
    needs_float64,
    needs_float64_range,
    normalize,
    percentile_range,
)
from .self_ensemble import DIHEDRAL_TRANSFORMS, ensemble_forward
from .tiling import (
    TileGrid,
    as_given,
    check_tiling,
    context_padding,
    default_tile_size,
    halo_for,
    overlap_warning,
    plan_tiles,
    round_up,
)

if TYPE_CHECKING:
    from ..model_file import DeblurModel

MIN_SIDE = 8  # smaller planes carry too little structure to deblur (and break percentile estimates)

ProgressCallback = Callable[[int, int], Any]
CancelCheck = threading.Event | Callable[[], bool] | None


def deblur(
    image: Any,
    model: DeblurModel | str | Path | None = None,
    *,
    axes: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    device: Any = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck = None,
    batch_size: int | None = None,
    rgb: bool | None = None,
    context_padding: int | None = None,
    self_ensemble: bool = False,
    percentiles: tuple[float, float] | None = None,
    normalize: str = "plane",
):
    """Deblur ``image`` with ``model`` and return an array of the same shape and dtype.

    Parameters
    ----------
    image
        NumPy array (a memory map included), dask array, or another array-like with a NumPy ``dtype``, a
        ``shape`` and ``__getitem__`` (zarr, h5py, tifffile's zarr store), or anything else ``np.asarray``
        takes (read whole first); uint8/uint16/int*/float16/32/64. Never modified. Only the planes being
        deblurred are read: an array-like one plane (with all its channels) at a time, with
        ``np.asarray(image[key])`` (one that has ``chunks``, as zarr and chunked h5py arrays do, a slab of
        whole chunks at a time, up to 256 MiB: a chunk 64 planes deep is then decoded once, not 64 times),
        and a memory map's planes as they come. Float pixels of a NumPy array in memory are checked for
        NaN/inf before the first plane; those of a memory map or an array-like plane by plane as they are
        read, so a NaN in a later plane of those is refused after the earlier planes were computed (and
        nothing is returned).
    model
        A :class:`~napari_deblurgan.DeblurModel`, a model file path, a shipped model name, or None for the
        shipped default.
    axes
        Letters over ``TZCYXS`` (e.g. ``"YX"``, ``"ZYX"``, ``"TCZYX"``, ``"YXS"`` for RGB); inferred from the
        shape when omitted (``rgb`` is a hint for the last axis, as napari's ``layer.rgb``; with ``axes``
        it must agree with them). RGBA keeps its
        alpha channel as it is (opacity is not an image) and deblurs the colours as RGB; when a last axis of
        4 was inferred as RGBA but its 4th channel looks like an image, a warning says to pass ``axes``
        ending in ``"YXC"`` to deblur all four channels.
    tile_size, overlap
        Tile side and overlap in pixels; the defaults are seamless (see ``inference/tiling.py``). A smaller
        ``tile_size`` saves memory but keeps the seamless overlap, so below twice the overlap pixels are
        computed several times (up to (tile / (tile - overlap))^2 times on planes far larger than a tile);
        over 4x warns with the factor for the image's planes, and a tile too small to hold the overlap is
        an InputError that names the smallest size that works. An ``overlap`` below the seamless one warns
        that tile borders may show (only where a plane takes more than one tile: a single tile has no
        borders). Both are rounded up to multiples of the model's stride (``model.generator.stride``, e.g.
        16), so that every tile sees the down-sampling grid of the whole image: ``overlap=4`` runs with 16,
        ``tile_size=130`` with 144; the warnings and errors name both the number passed and the one used.
    device
        "auto" (CUDA > MPS > CPU; None means the same), "cpu", "cuda", "cuda:1", "mps" or a ``torch.device``.
        GPUs run in bfloat16/float16 autocast. A :class:`~napari_deblurgan.DeblurModel` passed as ``model`` is
        not copied: its generator is moved to this device in place (once per call, only if it is elsewhere)
        and stays there afterwards, so ``load_model``'s CPU placement needs no ``.to()`` first (a generator in
        training mode is the exception: it is run as an eval-mode copy, and the original is left alone).
    progress
        Called as ``progress(done, total)`` after every tile batch (after every block for dask input).
    cancel
        A ``threading.Event`` or a callable returning True to stop: :class:`~napari_deblurgan.Cancelled` is
        raised within one tile batch and nothing is returned.
    batch_size
        Tiles per forward pass (default: 1 on the CPU, where batching gains no speed and costs a tile's
        activations - measured 210-290 MB less and no slower on 2048 and 4096 px planes -, 8 on GPUs).
    context_padding
        Pixels of reflected context added around each plane before inference. Default: the model's own
        setting (``DeblurModel.context_padding``, measured for its weights), else the receptive radius capped
        at 32 px. 0 lets border pixels see the generator's zero padding, as in training crops.
    self_ensemble
        Run every tile in its 8 flipped/rotated versions and average the 8 results, turned back (the
        "geometric self-ensemble" of EDSR, Lim et al. 2017). 8x slower; it averages out orientation-dependent
        errors of the generator. Measured gain: docs/model-card.md, "Self-ensemble".
    percentiles
        ``(low, high)``: the intensity percentiles of each plane that are mapped to 0 and 1 before the model
        sees it. Default: the model's own (``DeblurModel.normalization``, 1 and 99.8 for the shipped models).
        A bright object covering more than ``100 - high`` % of a plane (debris, a saturated cell) raises
        the high percentile and compresses everything else, which the model then over-corrects
        (docs/model-card.md, "Limitations"); a lower ``high`` (e.g. 99) lets larger objects pass. Pixels of
        +-float32's (or float64's) largest value ("no data" sentinels; in float64 data also a value that rounds
        to float32's, such as -3.4028235e+38 as GDAL writes it), however many, and pixels 1e30
        percentile spans or more away are no image: the percentiles leave them out, the model sees them as
        missing (the low percentile) and they come back unchanged. Other no-data values (-9999, 0) are image
        to it: replace them first (e.g. with the plane's median).
    normalize
        ``"plane"`` (default): one pair of percentiles per plane and channel. ``"local"``: the percentiles of
        128 px blocks, interpolated smoothly, as training scaled its 128 px crops, so that a bright object
        sets the scale of its own neighbourhood only (it then no longer spoils the rest of the plane); about
        two more plane-sized buffers. Measured in docs/model-card.md ("Limitations").

    Returns
    -------
    numpy.ndarray (allocated once, for array-like input too), or a lazy dask array for dask input. Integer
    outputs are rounded and clipped to the dtype's range; float outputs keep their range. A constant plane (or
    channel) has nothing to deblur and comes back unchanged.
    """
    reject_viewer_objects(image)
    dask_input = is_dask(image)
    # array-likes (zarr, h5py) are read one plane at a time by the plane loop; np.asarray would read them whole
    if not isinstance(image, np.ndarray) and not is_lazy(image):
        image = np.asarray(image)
    _check_image(image)
    _check_callbacks(progress, cancel)
    inferred = axes is None and rgb is None
    axes = resolve_axes(image.shape, axes, rgb=rgb)
    if inferred:
        warn_if_alpha_looks_like_a_channel(image, axes, kept="kept as opacity and not deblurred", verb="deblur")
    check_plane_size(image.shape, axes)
    from ..model_file import as_model

    model = as_model("default" if model is None else model)
    runner = _PlaneRunner(
        model,
        device=device,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        context_padding=context_padding,
        self_ensemble=self_ensemble,
        percentiles=percentiles,
        normalize=normalize,
    )
    runner.check_channels(image.shape, axes)
    longest = max(image.shape[axes.index("Y")], image.shape[axes.index("X")])
    # the caller's value only (the models' own settings are small): mirrored context beyond the plane itself
    # only costs memory and repeats the plane
    if context_padding is not None and runner.pad > longest:
        raise InputError(
            f"context_padding {runner.pad} px is more than the image plane's longest side ({longest} px); "
            f"use at most {longest}, or leave it unset for the model's own setting"
        )
    runner.warn_if_tiles_repeat_work(image.shape[axes.index("Y")], image.shape[axes.index("X")])
    if dask_input:
        return _deblur_dask(image, axes, runner, progress, cancel)
    # pixels in memory: scanned whole before any work (milliseconds per plane), as a NaN in the last plane
    # would otherwise be found after all the others were deblurred. A memory map (its pages would all be
    # read) and an array-like (read whole) are checked plane by plane in the loop instead.
    in_memory = isinstance(image, np.ndarray) and not _is_mapped(image)
    if in_memory:
        _check_finite_whole(image, axes)
    return _deblur_numpy(image, axes, runner, progress, cancel, checked=in_memory)


# ----------------------------------------------------------------------------------------------- checks


def _check_image(image: Any) -> None:
    """dtype and shape only (no pixels read): an array-like need not have ``size``."""
    check_dtype(image.dtype)
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise InputError(f"expected an image with at least 2 dimensions (Y, X), got shape {shape}")
    if 0 in shape:
        raise InputError(f"the image is empty (shape {shape}); every axis needs at least one pixel")


def check_plane_size(shape: tuple[int, ...], axes: str) -> None:
    """InputError where the YX planes of an image of ``shape`` (``axes``) are too small to deblur: deblur()
    checks it, and the CLI too before it says anything about the output it would write."""
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    if min(h, w) < MIN_SIDE:
        raise InputError(
            f"the image plane is {h}x{w} pixels (axes {axes!r}); at least {MIN_SIDE}x{MIN_SIDE} is needed. "
            "If this is a stack, check the axes argument."
        )


def _is_mapped(array: np.ndarray) -> bool:
    """Whether ``array``'s pixels are those of a memory-mapped file: an ``np.memmap``, or a plain ndarray
    (``np.asarray(memmap)``, ``np.frombuffer(mmap)``) whose base is one."""
    base: Any = array
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def _check_finite_whole(image: np.ndarray, axes: str) -> None:
    """InputError for NaN/inf anywhere in an in-memory ``image``, before any plane is deblurred: the count
    over the whole image, and the first plane (and channel) holding one."""
    if image.dtype.kind != "f":
        return
    planes = PlaneReader(image, axes, channels_in_plane=True)  # views of the ndarray
    bad, first = 0, ""
    for index in planes.indices():
        counts = planes.nonfinite_counts(planes(index))
        if any(counts) and not bad:
            first = plane_name(axes, planes.named(index, counts))
        bad += sum(counts)
    if bad:
        raise nonfinite_error("", bad, int(image.size), first)


def _check_callbacks(progress: Any, cancel: Any) -> None:
    """Up front, not at the first tile: a wrong callback would otherwise fail after minutes of work."""
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a function progress(done, total) or None, got {progress!r}")
    if cancel is not None and not (isinstance(cancel, threading.Event) or callable(cancel)):
        raise InputError(
            f"cancel must be a threading.Event, a function returning True to stop, or None; got {cancel!r}"
        )


# ----------------------------------------------------------------------------------------------- runner


class _PlaneRunner:
    """Runs the generator over one (channels, Y, X) plane: normalisation, padding, tiles, blending."""

    def __init__(
        self,
        model: DeblurModel,
        *,
        device: Any,
        tile_size: int | None,
        overlap: int | None,
        batch_size: int | None,
        context_padding: int | None = None,
        self_ensemble: bool = False,
        percentiles: tuple[float, float] | None = None,
        normalize: str = "plane",
    ) -> None:
        from ..devices import autocast_dtype, resolve_device
        from ..model_file import check_context_padding

        self.model = model
        self.device = resolve_device(device)
        self.autocast = autocast_dtype(self.device)
        gen = model.generator
        if gen.training:
            # Inference runs in eval mode (the reference code ran it in train mode). A generator in train mode
            # (e.g. the caller's, mid-training) is copied, not switched: deblur() never changes it, and dask
            # blocks computed in parallel threads never race to switch its mode (train-mode BatchNorm would
            # use, and overwrite, batch statistics).
            gen = copy.deepcopy(gen).eval()
        self.generator = gen
        # NHWC lets oneDNN (CPU) and cuDNN (GPU) skip a layout conversion per layer: measured 1.1-2.4x faster
        # for unet_lite on the 2-core CPU dev machine; MPS gains nothing from it.
        self.channels_last = self.device.type in ("cpu", "cuda")
        self._move_lock = threading.Lock()
        self.stride, radius = int(gen.stride), int(gen.receptive_radius)
        self.halo = halo_for(radius, self.stride)
        self.pad = self.context_padding_for(model, check_context_padding(context_padding))
        self.given_tile_size, self.given_overlap = tile_size, overlap  # as the caller wrote them, for warnings
        self.tile_size, self.overlap = check_tiling(
            default_tile_size(radius, self.stride) if tile_size is None else tile_size,
            overlap,
            radius,
            self.stride,
        )
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 8  # docs/benchmarks.md, "Inference memory"
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if not isinstance(self_ensemble, bool | np.bool_):
            raise InputError(f"self_ensemble must be True or False, got {self_ensemble!r}")
        self.transforms = DIHEDRAL_TRANSFORMS if self_ensemble else DIHEDRAL_TRANSFORMS[:1]
        norm = model.normalization
        if percentiles is None:
            self.low, self.high = float(norm.get("low", 1.0)), float(norm.get("high", 99.8))
        else:
            self.low, self.high = check_percentiles(percentiles)
        if normalize not in NORMALIZE_MODES:
            raise InputError(f"normalize must be one of {', '.join(map(repr, NORMALIZE_MODES))}; got {normalize!r}")
        self.local = normalize == "local"
        self._place_generator()  # once every argument is checked: a refused call leaves the model where it was
        self.joint = model.channel_mode == "joint"

    def _place_generator(self) -> Any:
        """The generator on this runner's device and memory format, moved once, before any plane runs: moving
        it while dask blocks run in parallel threads would swap its weights under running convolutions. It
        is moved again only if something else moved it since (one model shared by calls on two devices)."""
        import torch

        gen = self.generator
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with self._move_lock:
            # every 4-D weight: a (W, 1, k, k) first convolution (one input channel) counts as channels_last in
            # either layout, so it alone says nothing (1-channel unet_lite/resnet9 were never converted)
            weights = [p for p in gen.parameters() if p.dim() == 4]
            placed = bool(weights) and all(
                w.device == self.device and w.is_contiguous(memory_format=fmt) for w in weights
            )
            if not placed:
                if self.channels_last:
                    gen.to(self.device, memory_format=fmt)
                else:
                    gen.to(self.device)
        return gen

    @staticmethod
    def context_padding_for(model: DeblurModel, requested: int | None) -> int:
        """The border context in pixels: the caller's, else the model's, else the default rule."""
        if requested is not None:
            return requested
        if model.context_padding is not None:
            return model.context_padding
        return context_padding(int(model.generator.receptive_radius), int(model.generator.stride))

    def check_channels(self, shape: tuple[int, ...], axes: str) -> None:
        c_ax = channel_axis(axes)
        n = shape[c_ax] if c_ax is not None else 1
        if is_rgba(shape, axes):
            n = 3  # RGBA: the alpha channel is kept, not deblurred
        if self.joint and n != self.model.channels:
            where = f"axis {axes[c_ax]!r} has {n}" if c_ax is not None else "the image has no channel axis (C or S)"
            # an axis of the model's channel count that was read as something else (a (3, Y, X) array inferred
            # as ZYX): name the axes that would read it as the channels
            fits = [i for i, a in enumerate(axes) if a not in "YX" and i != c_ax and shape[i] == self.model.channels]
            if fits and c_ax is None:
                i = fits[0]
                letter = "S" if i == len(axes) - 1 else "C"
                example = f"{axes[:i] + letter + axes[i + 1 :]!r}, its {axes[i]} axis as the channels"
            else:
                example = "'YXS' for RGB"
            raise InputError(
                f"this model takes {self.model.channels} channels together but {where}; "
                f"pass axes with the right channel axis (e.g. {example}) or use a single-channel model"
            )
        if not self.joint and self.model.channels != 1:
            raise InputError(
                f"model declares channel_mode {self.model.channel_mode!r} with {self.model.channels} channels"
            )

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        return (
            round_up(height + 2 * self.pad, self.stride),
            round_up(width + 2 * self.pad, self.stride),
        )

    def plane_grid(self, height: int, width: int) -> TileGrid:
        """The tiles of a height x width plane (after its context padding)."""
        return plan_tiles(
            self.padded_shape(height, width),
            tile_size=self.tile_size,
            overlap=self.overlap,
            halo=self.halo,
            stride=self.stride,
        )

    def batches_per_plane(self, height: int, width: int) -> int:
        return -(-len(self.plane_grid(height, width)) // self.batch_size)

    def warn_if_tiles_repeat_work(self, height: int, width: int) -> None:
        """Warn when a small tile_size makes the seamless overlap compute every pixel over 4 times, with the
        factor for these planes (it depends on the plane: the same tiles cost 14x on 512 px, 144x on huge), and
        when an overlap below the seamless one may show seams (not where a plane is one tile: no seams)."""
        grid = self.plane_grid(height, width)
        if grid.work_factor > 4:
            tile = (
                f"tile_size {self.tile_size} px"
                if self.given_tile_size is None
                else as_given("tile_size", self.given_tile_size, self.tile_size, self.stride)
            )
            warnings.warn(
                f"{tile} with an overlap of {self.overlap} px computes every pixel about "
                f"{grid.work_factor:.0f} times on these {height} x {width} px planes ({len(grid)} tiles a plane); "
                f"tile_size >= {2 * self.overlap} keeps it below 4x, or leave tile_size unset",
                stacklevel=user_stacklevel(),  # the caller of deblur()
            )
        seams = overlap_warning(self.given_overlap, self.overlap, int(self.generator.receptive_radius), self.stride)
        if seams is not None and len(grid) > 1:
            warnings.warn(seams, stacklevel=user_stacklevel())  # the caller of deblur()

    def run(self, plane: np.ndarray, on_batch: Callable[[], None], cancel: CancelCheck) -> np.ndarray:
        """Deblur a (C, Y, X) plane in any dtype; returns (C, Y, X) in the input's units: float32, or
        float64 for float64 and wide-integer planes and for ranges float32 cannot scale
        (``normalization.needs_float64``, ``needs_float64_range``)."""
        import torch

        # Memory: two padded float32 planes (the normalised input and the blended output) and one batch of
        # tiles; every step works in place on those (a 4096 px plane took ~8 plane-sized buffers before).
        c, h, w = plane.shape
        # A constant channel has nothing to deblur and comes back unchanged: its normalisation falls back to a
        # unit range, and the network's small residual on a flat input (about 1e-2 of that range) would
        # otherwise come back as noise around the constant (an all-zero float image gave values of +-0.01).
        flat = [bool(plane[i].min() == plane[i].max()) for i in range(c)]
        ranges = [percentile_range(plane[i], self.low, self.high) for i in range(c)]
        # float64 for the dtypes that need it, and for ranges that float32 cannot scale (spans of 1e-40, 1e38)
        wide = needs_float64(plane.dtype) or any(needs_float64_range(lo, hi) for lo, hi in ranges)
        if all(flat):
            for _ in range(self.batches_per_plane(h, w)):  # the progress still counts this plane's batches
                if cancel_requested(cancel):
                    raise Cancelled("deblurring was cancelled")
                on_batch()
            return plane.astype(np.float64 if wide else np.float32)
        # each channel's (lo, span), undone at the end: per-pixel fields ("local"), or one pair of numbers
        if self.local:
            field_dtype = np.float64 if wide else np.float32
            scales = [
                local_percentile_fields(plane[i], self.low, self.high, dtype=field_dtype, plane_range=ranges[i])
                for i in range(c)
            ]  # each plane's range once: it also decided `wide` above
        else:
            scales = [(lo, hi - lo) for lo, hi in ranges]
        hp, wp = self.padded_shape(h, w)
        p = self.pad
        padded = np.empty((c, hp, wp), dtype=np.float32)
        for i, (lo, span) in enumerate(scales):
            # normalize() removes a scalar offset in float64 where the dtype needs it; fields already are float64
            if self.local:
                region = padded[i, p : p + h, p : p + w]
                with np.errstate(over="ignore"):  # a sentinel near float32's largest value: clipped next
                    region[...] = (plane[i] - lo) / span
                np.clip(region, -NORMALIZED_LIMIT, NORMALIZED_LIMIT, out=region)
                limit_sentinels(region, plane[i])
            else:
                padded[i, p : p + h, p : p + w] = normalize(plane[i], *ranges[i])
        # pixels at the limit are sentinels, not image (NORMALIZED_LIMIT): missing to the network, returned as they were
        beyond = np.abs(padded[:, p : p + h, p : p + w]) >= NORMALIZED_LIMIT
        if beyond.any():
            padded[:, p : p + h, p : p + w][beyond] = 0.0
        else:
            beyond = None
        reflect_fill(padded, (p, p + h), (p, p + w))
        grid = plan_tiles((hp, wp), tile_size=self.tile_size, overlap=self.overlap, halo=self.halo, stride=self.stride)
        accum = np.zeros_like(padded)
        windows = grid.windows()
        gen = self._place_generator()
        for first in range(0, len(windows), self.batch_size):
            if cancel_requested(cancel):
                raise Cancelled("deblurring was cancelled")
            batch = windows[first : first + self.batch_size]
            x = torch.from_numpy(np.stack([padded[:, ys, xs] for ys, xs, _, _ in batch])).to(self.device)
            y = self._generate(gen, x, cancel)
            for (ys, xs, wy, wx), out in zip(batch, y, strict=True):
                out *= wy[:, None]
                out *= wx[None, :]
                accum[:, ys, xs] += out
            on_batch()
        del padded
        sum_y, sum_x = grid.weight_sums()
        restored = accum[:, p : p + h, p : p + w]  # a view: divided and denormalised in place
        restored *= (1.0 / sum_y[p : p + h]).astype(np.float32)[:, None]
        restored *= (1.0 / sum_x[p : p + w]).astype(np.float32)[None, :]
        # the inverse of the normalisation, for both kinds of scale: float64 for the dtypes that need it (the
        # offset would be rounded to float32 again on the way back), else in place
        # wide: into one float64 array, channel by channel and in place (no per-channel temporaries)
        result = np.empty(restored.shape, np.float64) if wide else restored
        with np.errstate(over="ignore"):  # beyond the dtype's range: clipped to it by the caller (cast_like)
            for i, (lo, span) in enumerate(scales):
                if wide:
                    result[i] = restored[i]  # float64 first: span and lo may be beyond float32 (1e-40, 1e38)
                result[i] *= span
                result[i] += lo
        for i in range(c):
            if flat[i]:  # a constant channel of a joint model's plane: unchanged, as above
                result[i] = plane[i]
        if beyond is not None:
            result[beyond] = plane[beyond]
        return result

    def _generate(self, gen, x, cancel: CancelCheck) -> np.ndarray:
        """The generator's output for a batch of tiles, averaged over ``self.transforms``."""
        import torch

        def check_cancel(index: int) -> None:
            if index and cancel_requested(cancel):
                raise Cancelled("deblurring was cancelled")

        with torch.inference_mode(), self._autocast():
            y = ensemble_forward(
                gen, x, transforms=self.transforms, channels_last=self.channels_last, before_pass=check_cancel
            )
            # float16 (MPS, GPUs without bfloat16) overflows beyond 65504, which a bright outlier's activations can
            # reach: a batch that did is computed again in float32 (bfloat16 has float32's range)
            overflowed = self.autocast == torch.float16 and not bool(torch.isfinite(y).all())
        if overflowed:
            with torch.inference_mode():
                y = ensemble_forward(
                    gen, x, transforms=self.transforms, channels_last=self.channels_last, before_pass=check_cancel
                )
        return y.float().cpu().numpy()

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)


# ----------------------------------------------------------------------------------------------- drivers


#: ``deblur(normalize=...)``: one scale per plane, or a smooth field of 128 px blocks' scales.
NORMALIZE_MODES = ("plane", "local")


def check_percentiles(percentiles: Any) -> tuple[float, float]:
    """``(low, high)`` as floats with 0 <= low < high <= 100, else one InputError saying what to pass."""
    try:
        low, high = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (0.0 <= low < high <= 100.0):
        raise InputError(
            f"percentiles must be two numbers (low, high) with 0 <= low < high <= 100, e.g. (1, 99.8); "
            f"got {percentiles!r}"
        )
    return low, high


def reflect_fill(padded: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """Fill ``padded`` (..., H, W) around its inner region ``rows`` x ``cols`` by mirroring that region
    (numpy's ``reflect`` mode: the edge pixel is not repeated), in place: the same values as ``np.pad`` of the
    region, without a second plane-sized buffer."""
    (r0, r1), (c0, c1) = rows, cols
    height, width = padded.shape[-2:]
    if r0 == 0 and c0 == 0 and r1 == height and c1 == width:
        return
    inner_h, inner_w = r1 - r0, c1 - c0
    if max(r0, height - r1) >= inner_h or max(c0, width - c1) >= inner_w:
        # wider than the region itself (tiny planes): numpy reflects repeatedly; small, so a copy is fine
        inner = padded[..., r0:r1, c0:c1].copy()
        pads = [(0, 0)] * (padded.ndim - 2) + [(r0, height - r1), (c0, width - c1)]
        padded[...] = np.pad(inner, pads, mode="reflect")
        return
    for k in range(1, r0 + 1):  # rows above and below the region, within its columns
        padded[..., r0 - k, c0:c1] = padded[..., r0 + k, c0:c1]
    for k in range(1, height - r1 + 1):
        padded[..., r1 - 1 + k, c0:c1] = padded[..., r1 - 1 - k, c0:c1]
    for k in range(1, c0 + 1):  # then columns left and right, over all rows (the corners mirror both ways)
        padded[..., :, c0 - k] = padded[..., :, c0 + k]
    for k in range(1, width - c1 + 1):
        padded[..., :, c1 - 1 + k] = padded[..., :, c1 - 1 - k]


def _plane_views(array: np.ndarray, axes: str) -> tuple[np.ndarray, bool]:
    """A view of ``array`` as (..., C, Y, X) and whether a channel axis exists (views, not copies)."""
    c_ax = channel_axis(axes)
    source = [axes.index("Y"), axes.index("X")]
    dest = [-2, -1]
    if c_ax is not None:
        source.insert(0, c_ax)
        dest.insert(0, -3)
    return np.moveaxis(array, source, dest), c_ax is not None


def _deblur_numpy(
    image: Any,
    axes: str,
    runner: _PlaneRunner,
    progress: ProgressCallback | None,
    cancel: CancelCheck,
    origin: tuple[int, ...] | None = None,
    *,
    checked: bool = False,
) -> np.ndarray:
    """``image``: an ndarray (a memory map included) or an array-like read one plane at a time. ``origin``:
    where a dask block starts in its image, for the plane named in a NaN/inf error. ``checked``: the image was
    scanned for NaN/inf whole already (an in-memory ndarray); else each plane is as it is read."""
    if isinstance(image, np.ndarray):
        out = np.empty_like(image, subok=False)  # a memmap input must not give an unbacked memmap result
    else:
        out = np.empty(tuple(image.shape), image.dtype)
    # a slab of whole chunks at a time for a chunked array-like (at most SLAB_BYTES), else a plane at a time
    planes = PlaneReader(image, axes, channels_in_plane=True, slab_bytes=SLAB_BYTES)
    dst, has_channels = _plane_views(out, axes)
    if not has_channels:
        dst = dst[..., None, :, :]
    outer = dst.shape[:-3]
    c, h, w = dst.shape[-3:]
    # RGBA: the alpha channel is opacity, not an image; it is kept as it is, not deblurred like a colour
    alpha = is_rgba(tuple(image.shape), axes)
    colours = c - 1 if alpha else c
    runs_per_plane = 1 if runner.joint else colours
    total = int(np.prod(outer, dtype=np.int64)) * runs_per_plane * runner.batches_per_plane(h, w)
    done = 0

    def on_batch() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for index in planes.indices():
        if cancel_requested(cancel):  # before the plane is read: a cancelled run reads nothing more
            raise Cancelled("deblurring was cancelled")
        plane = planes(index)
        if not checked:
            planes.check_finite(plane, index, origin=origin)
        if runner.joint:
            # the runner's output is its own scratch buffer: rounded and clipped in place
            dst[index][:colours] = cast_like(runner.run(plane[:colours], on_batch, cancel), image.dtype, overwrite=True)
        else:
            for ch in range(colours):
                restored = runner.run(plane[ch : ch + 1], on_batch, cancel)[0]
                dst[index][ch] = cast_like(restored, image.dtype, overwrite=True)
        if alpha:
            dst[index][3] = plane[3]
    return out


def _deblur_dask(image: Any, axes: str, runner: _PlaneRunner, progress: ProgressCallback | None, cancel: CancelCheck):
    """Lazy: each block is one plane (Y and X whole, one index along the other axes), deblurred when computed.
    The channel axis is kept whole only where a plane needs all its channels at once: a joint (multichannel)
    model, or RGB(A) samples; a single-channel model deblurs each channel on its own (one channel of a CZYX
    stack is computed without the others). One plane per block bounds memory: a block of 64 Z planes held 64
    input and 64 output planes per thread at once."""
    whole = {axis: 1 for axis in range(len(axes))}
    whole[axes.index("Y")] = whole[axes.index("X")] = -1
    c_ax = channel_axis(axes)
    if c_ax is not None and (runner.joint or axes[c_ax] == "S"):
        whole[c_ax] = -1
    blocks = image.rechunk(whole)
    total = int(np.prod(blocks.numblocks))
    lock = threading.Lock()
    # blocks finished in the current pass: napari (or a second compute()) computes blocks again, and a block
    # seen before starts a new pass, so that ``done`` never runs past ``total``
    finished: set[tuple[int, ...]] = set()

    def deblur_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        # NaN/inf checked in _deblur_numpy, plane by plane, named by its place in the whole image (channel too)
        origin = tuple(start for start, _ in block_info[0]["array-location"]) if block_info else None
        result = _deblur_numpy(block, axes, runner, None, cancel, origin)
        if progress is not None:
            location = tuple(block_info[0]["chunk-location"]) if block_info else (len(finished),)
            with lock:
                if location in finished:
                    finished.clear()
                finished.add(location)
                done = len(finished)
            progress(done, total)
        return result

    # meta given: otherwise dask calls deblur_block on a dummy block to guess the output type
    return blocks.map_blocks(deblur_block, dtype=image.dtype, meta=np.empty((0,) * image.ndim, image.dtype))

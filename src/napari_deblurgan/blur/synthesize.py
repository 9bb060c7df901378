"""Synthetic blur for NumPy images: PSF convolution per YX plane plus Poisson-Gaussian noise.

:func:`synthesize_blur` turns a sharp image into a realistic blurred one (and returns the PSF it used), to
make training pairs from sharp-only data and to test deblurring against a known ground truth. One PSF is
applied to every YX plane of nD data; borders are reflect-padded so they do not darken.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from scipy import signal

from ..axes import is_rgba, resolve_axes
from ..errors import EvenPSFWarning, InputError, user_stacklevel
from ..inputs import reject_viewer_objects, warn_if_alpha_looks_like_a_channel
from ..normalization import cast_like, needs_float64, sentinel_mask, without_sentinels
from .psf import PSF_KINDS, random_psf

#: Ranges drawn by ``noise="realistic"``: photons at the bright end (log-uniform) and read noise (uniform).
#: finetune's "realistic" training noise draws read noise from 0.5..4 instead (data/pairs.py REALISTIC_NOISE):
#: training covers lower read noise too; these ranges are the evaluation protocol's and stay as they are.
REALISTIC_PHOTONS = (30.0, 1000.0)
# Beyond any detector's well depth, and far below where NumPy's Poisson sampler gives up (~9e18 counts).
MAX_PHOTONS = 1e12
REALISTIC_READ_NOISE = (1.0, 4.0)

#: Smallest Y and X size accepted (smaller images carry too little context for a blur of a few pixels).
MIN_PLANE_SIZE = 8


def resolve_image_axes(image: np.ndarray, axes: str | None) -> str:
    """Axes string (letters TZCYXS) of ``image``: validated ``axes``, or inferred from its shape.

    Same rules as :func:`deblur` (:func:`napari_deblurgan.axes.resolve_axes`): the last two axes are YX
    unless a trailing axis of size 3 or 4 makes it RGB(A) samples ("S").
    """
    return resolve_axes(image.shape, axes)


def yx_last(image: np.ndarray, axes: str) -> np.ndarray:
    """A view (never a copy) of ``image`` with Y and X moved last: ``(..., Y, X)``, the other axes in order.

    ``view[idx]`` for ``idx`` in ``np.ndindex(view.shape[:-2])`` walks the YX planes in the order of
    :func:`plane_indices` (and of :func:`to_planes`); writing into the view writes into ``image``.
    """
    return np.moveaxis(image, (axes.index("Y"), axes.index("X")), (-2, -1))


def to_planes(image: np.ndarray, axes: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``image`` as a stack of YX planes ``(P, Y, X)`` and a function that undoes it.

    A view when the layout allows it, but a whole copy for others (channel-last ZYXC/TYXS): per-plane work
    should walk :func:`yx_last` instead. The inverse takes a ``(P, Y, X)`` array (any dtype) and returns it
    in the original axis order.
    """
    y, x = axes.index("Y"), axes.index("X")
    moved = yx_last(image, axes)
    lead_shape = moved.shape[:-2]
    planes = moved.reshape((-1, *moved.shape[-2:]))

    def restore(stack: np.ndarray) -> np.ndarray:
        return np.moveaxis(stack.reshape((*lead_shape, *stack.shape[-2:])), (-2, -1), (y, x))

    return planes, restore


def plane_indices(shape: tuple[int, ...], axes: str) -> list[tuple[int, ...]]:
    """Index tuples (over the non-YX axes, in their original order) of every YX plane, in plane order."""
    other = [n for i, n in enumerate(shape) if axes[i] not in "YX"]
    return [tuple(int(v) for v in idx) for idx in np.ndindex(*other)] if other else [()]


def validate_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as an ndarray; InputError for empty, bool, complex, non-numeric or NaN data, and for
    napari layers and multiscale data (see inputs.py)."""
    reject_viewer_objects(image, name)
    arr = np.asarray(image)
    check_image_kind(arr, name=name)
    # min and max are NaN if any value is, and +-inf if one is: no whole-stack boolean array (np.isfinite)
    if arr.dtype.kind == "f" and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise InputError(not_finite_message(name))
    return arr


def not_finite_message(name: str) -> str:
    """What :func:`validate_image` says about NaN or infinite pixels (also said by readers of lazy arrays)."""
    return f"The {name} contains NaN or infinite values; replace them (e.g. np.nan_to_num)."


def check_image_kind(arr: Any, *, name: str = "image") -> None:
    """The checks of :func:`validate_image` that need only ``dtype`` and ``shape``, so that a lazy array (dask,
    zarr) is checked without reading a pixel: InputError for bool, complex, non-numeric, empty or 1D data."""
    if arr.dtype.kind == "b":
        raise InputError(f"The {name} is boolean; convert it to an integer or float image first.")
    if arr.dtype.kind == "c":
        raise InputError(f"The {name} is complex; pass its magnitude or real part instead.")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"The {name} has dtype {arr.dtype}; pass an integer or floating-point image.")
    shape = tuple(arr.shape)  # from shape alone: not every array-like has size and ndim
    if math.prod(shape) == 0:
        raise InputError(f"The {name} is empty (shape {shape}).")
    if len(shape) < 2:
        raise InputError(f"The {name} needs at least 2 dimensions (Y, X), got shape {shape}.")


def convolve_reflect(plane: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve a 2D float plane with ``psf`` (true convolution, centred), reflect-padding the borders.

    Output has the plane's shape; the image is mirrored (without repeating the edge pixel) so borders keep
    their brightness instead of fading to black as with zero padding.
    """
    ky, kx = psf.shape
    padded = np.pad(plane, (((ky - 1) // 2, ky // 2), ((kx - 1) // 2, kx // 2)), mode="reflect")
    return signal.fftconvolve(padded, psf, mode="valid")


def _work_dtype(dtype: np.dtype) -> type:
    # float64 for float64 and wide integers (precision), float32 otherwise (half the memory)
    return np.float64 if needs_float64(dtype) else np.float32


def check_psf_array(psf: Any) -> np.ndarray:
    """Return ``psf`` as a float64 2D array normalised to sum 1; InputError if it is not a valid PSF."""
    if isinstance(psf, str | bytes):
        raise InputError(
            f"A PSF must be a 2D array, got the string {psf!r}; for a blur kind by name use synthesize_blur(image, "
            f"kind={psf!r}), or make an array with napari_deblurgan.blur.psf (motion_psf, defocus_psf, gaussian_psf)."
        )
    try:
        arr = np.asarray(psf, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"A PSF must be a 2D array of numbers, got {type(psf).__name__}.") from None
    if arr.ndim == 3 and arr.size and arr.shape[-1] in (3, 4) and arr.shape[0] > arr.shape[-1]:
        # (Y, X, 3): a PSF saved as a colour picture (a PNG, napari's RGB layer), not a Z stack
        raise InputError(
            f"A PSF must be a 2D (Y, X) array of one channel, got shape {arr.shape}: an RGB(A) picture; pass a grey "
            "one, such as psf[..., :3].mean(axis=-1)."
        )
    if arr.ndim == 3 and arr.size:
        # a measured 3D PSF (Z, Y, X), as microscopists have them: every YX plane is deblurred with a 2D PSF
        raise InputError(
            f"A PSF must be a 2D (Y, X) array, got a 3D one of shape {arr.shape}: pass its in-focus plane, such as "
            f"psf[{arr.shape[0] // 2}] (the middle one), or psf[psf.max(axis=(1, 2)).argmax()] (the plane of its "
            "brightest peak) if that is not it."
        )
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"A PSF must be a non-empty 2D array, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.sum() <= 0:
        raise InputError("A PSF must be finite, non-negative and have a positive sum.")
    return arr / arr.sum()


def warn_if_even_psf(psf: np.ndarray, shifted: str) -> None:
    """:class:`~napari_deblurgan.errors.EvenPSFWarning` when a side of ``psf`` (2D) is even: convolution takes its
    pixel ``side // 2`` for the centre, half a pixel off the middle of a PSF that is symmetric about it, so
    ``shifted`` (what the caller makes: "blurred image", "result") moves by half a pixel along that side. Call it
    once per public call, not per plane: a stack would say it once for every plane."""
    even = [axis for axis, side in zip("YX", psf.shape, strict=True) if side % 2 == 0]
    if not even:
        return
    warnings.warn(
        f"The PSF is {psf.shape[0]}x{psf.shape[1]} px: an even-sized PSF has no centre pixel, so the {shifted} is "
        f"shifted by half a pixel along {' and '.join(even)} relative to the input. Give it odd sides, with its "
        "peak in the middle (crop or pad it around its brightest pixel).",
        EvenPSFWarning,
        stacklevel=user_stacklevel(),  # the caller of the public function
    )


def apply_psf(image: Any, psf: Any, *, axes: str | None = None) -> np.ndarray:
    """Convolve every YX plane of ``image`` with the 2D ``psf`` (normalised to sum 1); same shape and dtype.

    No noise is added. Integer images are rounded and clipped to their dtype's range.
    """
    arr = validate_image(image)
    kernel = check_psf_array(psf)
    axes = resolve_image_axes(arr, axes)
    out = np.empty(arr.shape, dtype=arr.dtype)
    dst = yx_last(out, axes)
    for idx, blurred in _blurred_planes(yx_last(arr, axes), kernel, _work_dtype(arr.dtype)):
        dst[idx] = cast_like(blurred, arr.dtype)
    _keep_sentinels(dst, yx_last(arr, axes))
    return out


def _blurred_planes(src: np.ndarray, psf: np.ndarray, work: type) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """``(index, convolve_reflect(plane))`` of every YX plane of ``src`` (..., Y, X), in the float dtype ``work``.

    One plane at a time (a new C-contiguous array each), in plane order: memory stays a few planes whatever
    the stack's size. "No data" sentinels (``normalization.SENTINEL_VALUES``) are filled for the convolution
    as ``without_sentinels`` fills them (the plane's low percentile: their 3.4e38 made the FFT's result NaN
    everywhere); the writers put them back unchanged (:func:`_keep_sentinels`).
    """
    kernel = psf.astype(work)
    for idx in np.ndindex(src.shape[:-2]):
        plane = src[idx]
        if sentinel_mask(plane) is not None:
            plane = without_sentinels(plane)
        yield idx, convolve_reflect(plane.astype(work), kernel).astype(work, copy=False)


def _keep_sentinels(dst: np.ndarray, src: np.ndarray) -> None:
    """Set the "no data" sentinels of ``src`` (..., Y, X) in ``dst`` (its blurred copy) as they were."""
    for idx in np.ndindex(src.shape[:-2]):
        missing = sentinel_mask(src[idx])
        if missing is not None:
            dst[idx][missing] = src[idx][missing]


def _rng_from_seed(seed: Any) -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a Generator or an integer >= 0; one InputError otherwise."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, a numpy Generator or None; got {seed!r}.")
    return np.random.default_rng(int(seed))


#: The keys of a ``noise`` dict (synthesize_blur's and finetune's): "photons" is required.
NOISE_KEYS = ("photons", "read_noise")


def noise_keys_error(noise: Mapping[Any, Any], example: str) -> InputError | None:
    """The InputError for a ``noise`` dict with keys other than :data:`NOISE_KEYS` or without "photons",
    naming the unknown and the missing keys and what is accepted (``example``: a dict that works); None for a
    dict whose keys are right."""
    unknown = [k for k in noise if k not in NOISE_KEYS]
    missing = "photons" not in noise
    if not unknown and not missing:
        return None
    problems = []
    if unknown:
        problems.append(f"the unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    if missing:
        problems.append("no 'photons' key")
    return InputError(
        f"noise {dict(noise)!r} has {' and '.join(problems)}; noise takes the keys 'photons' (required: expected "
        f"photons at the bright end) and 'read_noise' (optional, default 0: read-noise standard deviation in "
        f"photons), e.g. {example}."
    )


def _noise_settings(noise: Any, rng: np.random.Generator) -> dict[str, float] | None:
    """Normalise the ``noise`` argument to ``{"photons": p, "read_noise": r}`` (or None)."""
    if noise is None:
        return None
    if isinstance(noise, str):
        if noise != "realistic":
            raise InputError(f"Unknown noise preset {noise!r}; use 'realistic', a number of photons, a dict or None.")
        low, high = REALISTIC_PHOTONS
        photons = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        read_noise = float(rng.uniform(*REALISTIC_READ_NOISE))
        return {"photons": photons, "read_noise": read_noise}
    if isinstance(noise, numbers.Real) and not isinstance(noise, bool):
        noise = {"photons": float(noise), "read_noise": 0.0}
    if isinstance(noise, Mapping) and (error := noise_keys_error(noise, "{'photons': 100.0, 'read_noise': 2.0}")):
        raise error
    if not isinstance(noise, Mapping):
        raise InputError(
            "noise must be None, 'realistic', a number of photons, or a dict like "
            "{'photons': 100.0, 'read_noise': 2.0}."
        )
    for key in ("photons", "read_noise"):
        value = noise.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(
                f"noise {key!r} must be one number, got {value!r} (finetune's noise takes ranges; "
                "synthesize_blur draws one image)."
            )
    photons = float(noise["photons"])
    read_noise = float(noise.get("read_noise", 0.0))
    if not (math.isfinite(photons) and 0 < photons <= MAX_PHOTONS):
        raise InputError(f"noise 'photons' must be > 0 and <= {MAX_PHOTONS:g}, got {noise['photons']!r}.")
    if not (math.isfinite(read_noise) and read_noise >= 0):
        raise InputError(f"noise 'read_noise' must be >= 0, got {noise.get('read_noise')!r}.")
    return {"photons": photons, "read_noise": read_noise}


#: The percentile of the blurred image that receives the requested number of photons.
_NOISE_PERCENTILE = 99.9


def add_poisson_gaussian_noise(
    values: np.ndarray, photons: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Add Poisson (shot) + Gaussian (read) noise to float ``values`` in image units; returns float64.

    The image is converted to photons with one gain for the whole array: the 99.9th percentile of
    ``values`` maps to ``photons`` expected photons (falling back to the maximum, then to 1, for images
    that are zero at that percentile). Negative values get no shot noise. ``read_noise`` is the standard
    deviation of the Gaussian detector noise, in photons.
    """
    gain = _gain(photons, float(np.percentile(values, _NOISE_PERCENTILE)), float(values.max()))
    return _noisy(values, gain, read_noise, rng, rng)


def _gain(photons: float, reference: float, maximum: float) -> float:
    """Photons per image unit: ``reference`` intensity (else the maximum, else 1) maps to ``photons``."""
    if reference <= 0:
        reference = maximum if maximum > 0 else 1.0
    return photons / reference


def _noisy(
    values: np.ndarray, gain: float, read_noise: float, poisson: np.random.Generator, normal: np.random.Generator
) -> np.ndarray:
    """float64 ``values`` with shot noise drawn from ``poisson`` and read noise from ``normal``."""
    counts = poisson.poisson(np.clip(values, 0, None) * gain).astype(np.float64)
    if read_noise > 0:
        counts += normal.normal(0.0, read_noise, size=counts.shape)
    # keep the (noise-free) negative part of float images unchanged: only the positive signal is counted
    return counts / gain + np.minimum(values, 0)


def _stack_percentile(planes: Iterable[np.ndarray], count: int, q: float) -> tuple[float, float]:
    """``np.percentile(stack, q)`` (linear interpolation, exactly) and the maximum of a stack of ``count``
    values given plane by plane.

    Only the values from the percentile's lower neighbour up are kept (``(1 - q / 100) * count`` of them,
    0.1 % of the stack for 99.9), not the stack. Meant for the high percentiles (the noise gain's 99.9th).
    """
    virtual = (count - 1) * np.true_divide(q, 100)  # np.percentile's "virtual index" of the linear method
    lower = min(int(np.floor(virtual)), count - 1)
    keep = count - lower  # sorted positions lower..count-1
    top: np.ndarray | None = None
    for plane in planes:
        flat = plane.reshape(-1)
        if flat.size > keep:
            flat = np.partition(flat, flat.size - keep)[flat.size - keep :]
        if top is not None:
            flat = np.concatenate((top, flat))
            if flat.size > keep:
                flat = np.partition(flat, flat.size - keep)[flat.size - keep :]
        top = flat.copy()  # not a view that keeps a partitioned plane alive
    assert top is not None and top.size == keep, (count, keep)
    maximum = float(top.max())
    if keep < 2:  # the percentile is the last value (a stack of one value, or q = 100)
        return maximum, maximum
    pair = np.partition(top, 1)[:2]  # the values at sorted positions lower and lower + 1
    # NumPy's own interpolation between the two neighbours (so the result is bit-identical to np.percentile):
    # on two values, np.quantile's virtual index is the weight itself
    weight = float(virtual - np.floor(virtual))
    return float(np.quantile(pair, weight)), maximum


def _noisy_planes_into(
    dst: np.ndarray,
    src: np.ndarray,
    psf: np.ndarray,
    work: type,
    photons: float,
    read_noise: float,
    rng: np.random.Generator,
) -> None:
    """Blur every plane of ``src`` (..., Y, X), add noise as :func:`add_poisson_gaussian_noise` does to the
    whole blurred stack, and write the planes (cast to ``dst.dtype``) into ``dst`` (..., Y, X).

    Plane by plane, with the whole stack's draws: the same gain (its 99.9th percentile, exactly) and the same
    random numbers in the same order: all the Poisson draws, then all the Gaussian ones. The planes are blurred
    again for each pass instead of being kept: once for the percentile, once to find where in ``rng``'s
    stream the Gaussian draws start (a copy of ``rng`` draws the Poisson counts ahead and is discarded),
    once to draw. ``rng`` ends where the whole-stack draws left it. A single plane is blurred once (it is the
    whole stack: :func:`add_poisson_gaussian_noise` itself).
    """
    if int(np.prod(src.shape[:-2], dtype=np.int64)) == 1:
        ((idx, blurred),) = _blurred_planes(src, psf, work)
        dst[idx] = cast_like(add_poisson_gaussian_noise(blurred, photons, read_noise, rng), dst.dtype)
        return
    count = int(np.prod(src.shape, dtype=np.int64))
    reference, maximum = _stack_percentile(
        (plane for _, plane in _blurred_planes(src, psf, work)), count, _NOISE_PERCENTILE
    )
    gain = _gain(photons, reference, maximum)
    normal = rng
    if read_noise > 0:
        normal = copy.deepcopy(rng)
        for _, blurred in _blurred_planes(src, psf, work):
            normal.poisson(np.clip(blurred, 0, None) * gain)
    for idx, blurred in _blurred_planes(src, psf, work):
        dst[idx] = cast_like(_noisy(blurred, gain, read_noise, rng, normal), dst.dtype)
    if normal is not rng:
        rng.bit_generator.state = normal.bit_generator.state


def _refuse_a_mix_of_kinds(kind: Any) -> None:
    """InputError for a mix of kinds as ``finetune(blur_kind=)`` takes it ("motion:2,defocus", a list, a dict).

    One call draws one PSF for the whole image and returns only that PSF, which cannot say which kind of a mix
    was drawn; a known ground truth is what the function is for (evaluation, demos), so the caller picks the
    kind (and knows it). A list would otherwise reach the PSF-array check and be called a bad PSF.
    """
    if isinstance(kind, str):
        mixed = "," in kind or ":" in kind
    elif isinstance(kind, Mapping):
        mixed = True
    else:
        mixed = isinstance(kind, list | tuple) and bool(kind) and all(isinstance(k, str) for k in kind)
    if mixed:
        raise InputError(
            f"synthesize_blur takes one blur kind per call, not a mix such as {kind!r}: it draws one PSF for the "
            f"whole image and returns it, so that you know the blur. Use one of {', '.join(PSF_KINDS)} ('mixed' "
            "draws motion, defocus or gaussian at random), or pick a kind per call yourself, e.g. "
            "kind=rng.choice(['motion', 'defocus']) with rng = np.random.default_rng(seed). finetune's blur_kind "
            "takes mixes ('motion:2,defocus') because it draws a kind per training crop."
        )


def synthesize_blur_with_params(
    sharp: Any,
    kind: str | np.ndarray = "motion",
    *,
    strength: float | None = None,
    noise: Any = None,
    seed: int | np.random.Generator | None = None,
    axes: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Like :func:`synthesize_blur` but also returns the JSON-able parameters used (PSF and noise)."""
    arr = validate_image(sharp, name="sharp image")
    inferred = axes is None
    axes = resolve_image_axes(arr, axes)
    if inferred:
        warn_if_alpha_looks_like_a_channel(arr, axes, kept="kept as opacity and not blurred", verb="blur")
    ny, nx = arr.shape[axes.index("Y")], arr.shape[axes.index("X")]
    if ny < MIN_PLANE_SIZE or nx < MIN_PLANE_SIZE:
        raise InputError(
            f"The YX planes are {ny}x{nx} px; synthetic blur needs at least {MIN_PLANE_SIZE}x{MIN_PLANE_SIZE} px."
        )
    rng = _rng_from_seed(seed)
    _refuse_a_mix_of_kinds(kind)
    if isinstance(kind, str):
        kind = kind.strip().lower()  # "Motion" as finetune(blur_kind=) takes it
        if kind not in PSF_KINDS:
            raise InputError(f"Unknown blur kind {kind!r}; use one of {', '.join(PSF_KINDS)} or a 2D PSF array.")
        if strength is not None and (
            isinstance(strength, bool)
            or not isinstance(strength, numbers.Real)
            or not strength > 0
            or not strength <= max(ny, nx)
        ):
            raise InputError(
                f"strength must be a number of pixels > 0 and at most the image's larger side ({max(ny, nx)} px), "
                f"or None for random; got {strength!r}."
            )
        psf, params = random_psf(kind, rng, strength)
    else:
        psf = check_psf_array(kind).astype(np.float32)
        params = {"kind": "custom", "size": list(psf.shape)}
    noise_settings = _noise_settings(noise, rng)

    # plane by plane into the result: no whole-stack float copy of the image
    src = yx_last(arr, axes)
    work = _work_dtype(arr.dtype)
    out = np.empty(arr.shape, dtype=arr.dtype)
    dst = yx_last(out, axes)
    if is_rgba(arr.shape, axes):
        # RGBA, as deblur() reads it: alpha is opacity, not an image; it is copied, not blurred or made noisy
        at = [a for a in axes if a not in "YX"].index("S")
        colours, alpha = (slice(None),) * at + (slice(0, 3),), (slice(None),) * at + (3,)
        dst[alpha] = src[alpha]
        src, dst = src[colours], dst[colours]
    if noise_settings and max(float(src[idx].max()) for idx in np.ndindex(src.shape[:-2])) <= 0:
        raise InputError(
            "noise is drawn as photons from the positive intensities, and this image has none (it is <= 0 "
            "everywhere), so it would come back without noise; shift it first (e.g. image - image.min()) or "
            "pass noise=None."
        )
    if params["kind"] == "custom":  # after every check: a refused call says only what to change
        warn_if_even_psf(psf, "blurred image")
    if noise_settings:
        # one gain for the whole array: a stack is one acquisition with one exposure setting
        _noisy_planes_into(dst, src, psf, work, noise_settings["photons"], noise_settings["read_noise"], rng)
    else:
        for idx, blurred in _blurred_planes(src, psf, work):
            dst[idx] = cast_like(blurred, arr.dtype)
    _keep_sentinels(dst, src)  # "no data" stays no data, neither blurred nor made noisy
    params["noise"] = noise_settings
    return out, psf, params


def synthesize_blur(
    sharp: Any,
    kind: str | np.ndarray = "motion",
    *,
    strength: float | None = None,
    noise: Any = None,
    seed: int | np.random.Generator | None = None,
    axes: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur a sharp image with a random PSF (and optional noise); returns ``(blurred, psf)``.

    Parameters
    ----------
    sharp
        Image of any integer or float dtype with at least two axes; every YX plane is at least 8x8 px.
    kind
        "motion" (camera-shake trajectory), "defocus" (disk or Airy), "airy" (Airy only), "gaussian", "mixed"
        (motion, defocus or Gaussian at random), or a 2D array used as the PSF (normalised to sum 1; give it odd
        sides: an even-sized PSF has no centre pixel and shifts the image by half a pixel, which an
        :class:`~napari_deblurgan.EvenPSFWarning` says once per call). One kind per call:
        unlike ``finetune(blur_kind=)``, which draws a kind per training crop, a mix (``"motion:2,defocus"``, a
        list, a dict) is refused, since the one PSF returned could not say which kind was drawn; pick a kind
        per call instead (``kind=rng.choice(["motion", "defocus"])``).
    strength
        Blur size in pixels for the kind: motion extent, defocus radius or Gaussian sigma. None draws it
        from :data:`napari_deblurgan.blur.psf.DEFAULT_STRENGTH_RANGES`.
    noise
        None for no noise. Otherwise Poisson-Gaussian noise added *after* blurring:
        ``{"photons": P, "read_noise": R}`` where ``P`` is the expected photon count of a pixel at the
        blurred image's 99.9th-percentile intensity (which fixes one gain, photons per intensity unit, for
        the whole array) and ``R`` is the read-noise standard deviation in photons. A number is shorthand for
        ``{"photons": number, "read_noise": 0}``. ``"realistic"`` draws ``P`` log-uniformly in 30..1000 and
        ``R`` uniformly in 1..4. (``finetune``'s ``noise="realistic"`` draws the same photon range but read noise
        in 0.5..4: training covers lower read noise too, so that a model also learns nearly read-noise-free
        images; 1..4 here is the evaluation protocol's range, kept as it is.) Shot noise is drawn from the
        positive intensities only (the negative part of a background-subtracted float image stays noise-free);
        an image that is <= 0 everywhere is refused.
    seed
        Seed (or ``np.random.Generator``) for the PSF and the noise; the same seed gives the same result.
    axes
        Axes letters (TZCYXS) of ``sharp``; None infers them (last two axes are YX, a trailing axis of 3 or
        4 is RGB(A) samples, as in :func:`deblur`). One PSF is applied to every YX plane; an RGBA image's
        alpha (opacity, not an image) is copied unchanged, neither blurred nor made noisy, as :func:`deblur`
        keeps it; when a last axis of 4 was inferred as RGBA but its 4th channel looks like an image (more
        than two values), a warning says to pass ``axes`` ending in ``"YXC"`` to blur all four channels.

    Returns
    -------
    (blurred, psf)
        ``blurred`` has the shape and dtype of ``sharp``: integer images are rounded and clipped to their
        dtype's range, float images keep their value range (no rescaling). ``psf`` is float32, 2D,
        non-negative and sums to 1; odd sized for the named kinds (a given array keeps its shape).
        Convolution reflect-pads the borders, so the mean is preserved. "No data" sentinels (+-float32's or
        float64's largest value) come back unchanged; for the blur they count as the plane's low percentile.
    """
    blurred, psf, _ = synthesize_blur_with_params(sharp, kind, strength=strength, noise=noise, seed=seed, axes=axes)
    return blurred, psf

"""Synthetic blur for NumPy images: PSF convolution per YX plane plus Poisson-Gaussian noise.

:func:`synthesize_blur` turns a sharp image into a realistic blurred one (and returns the PSF it used), to
make training pairs from sharp-only data and to test deblurring against a known ground truth. One PSF is
applied to every YX plane of nD data; borders are reflect-padded so they do not darken.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import signal

from ..axes import resolve_axes
from ..errors import InputError
from ..normalization import cast_like, needs_float64
from .psf import PSF_KINDS, random_psf

#: Ranges drawn by ``noise="realistic"``: photons at the bright end (log-uniform) and read noise (uniform).
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


def to_planes(image: np.ndarray, axes: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """View ``image`` as a stack of YX planes ``(P, Y, X)`` and return a function that undoes it.

    The inverse takes a ``(P, Y, X)`` array (any dtype) and returns it in the original axis order.
    """
    y, x = axes.index("Y"), axes.index("X")
    moved = np.moveaxis(image, (y, x), (-2, -1))
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
    """Return ``image`` as an ndarray; InputError for empty, bool, complex, non-numeric or NaN data."""
    arr = np.asarray(image)
    if arr.dtype.kind == "b":
        raise InputError(f"The {name} is boolean; convert it to an integer or float image first.")
    if arr.dtype.kind == "c":
        raise InputError(f"The {name} is complex; pass its magnitude or real part instead.")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"The {name} has dtype {arr.dtype}; pass an integer or floating-point image.")
    if arr.size == 0:
        raise InputError(f"The {name} is empty (shape {arr.shape}).")
    if arr.ndim < 2:
        raise InputError(f"The {name} needs at least 2 dimensions (Y, X), got shape {arr.shape}.")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"The {name} contains NaN or infinite values; replace them (e.g. np.nan_to_num).")
    return arr


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
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"A PSF must be a non-empty 2D array, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.sum() <= 0:
        raise InputError("A PSF must be finite, non-negative and have a positive sum.")
    return arr / arr.sum()


def apply_psf(image: Any, psf: Any, *, axes: str | None = None) -> np.ndarray:
    """Convolve every YX plane of ``image`` with the 2D ``psf`` (normalised to sum 1); same shape and dtype.

    No noise is added. Integer images are rounded and clipped to their dtype's range.
    """
    arr = validate_image(image)
    kernel = check_psf_array(psf)
    planes, restore = to_planes(arr, resolve_image_axes(arr, axes))
    return cast_like(restore(_convolve_planes(planes, kernel, _work_dtype(arr.dtype))), arr.dtype)


def _convolve_planes(planes: np.ndarray, psf: np.ndarray, work: type) -> np.ndarray:
    """``convolve_reflect`` of every plane of a (P, Y, X) stack, in the float dtype ``work``."""
    kernel = psf.astype(work)
    out = np.empty(planes.shape, dtype=work)
    for i, plane in enumerate(planes):
        out[i] = convolve_reflect(plane.astype(work), kernel)
    return out


def _rng_from_seed(seed: Any) -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a Generator or an integer >= 0; one InputError otherwise."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, a numpy Generator or None; got {seed!r}.")
    return np.random.default_rng(int(seed))


def _noise_settings(noise: Any, rng: np.random.Generator) -> dict[str, float] | None:
    """Normalise the ``noise`` argument to ``{"photons": p, "read_noise": r}`` (or None)."""
    if noise is None:
        return None
    if isinstance(noise, str):
        if noise != "realistic":
            raise InputError(f"Unknown noise preset {noise!r}; use 'realistic', a dict or None.")
        low, high = REALISTIC_PHOTONS
        photons = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        read_noise = float(rng.uniform(*REALISTIC_READ_NOISE))
        return {"photons": photons, "read_noise": read_noise}
    if isinstance(noise, numbers.Real) and not isinstance(noise, bool):
        noise = {"photons": float(noise), "read_noise": 0.0}
    if not isinstance(noise, Mapping) or "photons" not in noise or set(noise) - {"photons", "read_noise"}:
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


def add_poisson_gaussian_noise(
    values: np.ndarray, photons: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Add Poisson (shot) + Gaussian (read) noise to float ``values`` in image units; returns float64.

    The image is converted to photons with one gain for the whole array: the 99.9th percentile of
    ``values`` maps to ``photons`` expected photons (falling back to the maximum, then to 1, for images
    that are zero at that percentile). Negative values get no shot noise. ``read_noise`` is the standard
    deviation of the Gaussian detector noise, in photons.
    """
    reference = float(np.percentile(values, 99.9))
    if reference <= 0:
        reference = float(values.max()) if values.max() > 0 else 1.0
    gain = photons / reference  # photons per image unit
    expected = np.clip(values, 0, None) * gain
    counts = rng.poisson(expected).astype(np.float64)
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, size=counts.shape)
    # keep the (noise-free) negative part of float images unchanged: only the positive signal is counted
    return counts / gain + np.minimum(values, 0)


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
    axes = resolve_image_axes(arr, axes)
    ny, nx = arr.shape[axes.index("Y")], arr.shape[axes.index("X")]
    if ny < MIN_PLANE_SIZE or nx < MIN_PLANE_SIZE:
        raise InputError(
            f"The YX planes are {ny}x{nx} px; synthetic blur needs at least {MIN_PLANE_SIZE}x{MIN_PLANE_SIZE} px."
        )
    rng = _rng_from_seed(seed)
    if isinstance(kind, str):
        if kind not in PSF_KINDS:
            raise InputError(f"Unknown blur kind {kind!r}; use one of {', '.join(PSF_KINDS)} or a 2D PSF array.")
        if strength is not None and (
            isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not strength > 0
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

    planes, restore = to_planes(arr, axes)
    blurred = _convolve_planes(planes, psf, _work_dtype(arr.dtype))
    if noise_settings:
        # one gain for the whole array: a stack is one acquisition with one exposure setting
        blurred = add_poisson_gaussian_noise(blurred, noise_settings["photons"], noise_settings["read_noise"], rng)
    params["noise"] = noise_settings
    return cast_like(restore(blurred), arr.dtype), psf, params


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
        sides: an even-sized PSF has no centre pixel and shifts the image by half a pixel).
    strength
        Blur size in pixels for the kind: motion extent, defocus radius or Gaussian sigma. None draws it
        from :data:`napari_deblurgan.blur.psf.DEFAULT_STRENGTH_RANGES`.
    noise
        None for no noise. Otherwise Poisson-Gaussian noise added *after* blurring:
        ``{"photons": P, "read_noise": R}`` where ``P`` is the expected photon count of a pixel at the
        blurred image's 99.9th-percentile intensity (which fixes one gain, photons per intensity unit, for
        the whole array) and ``R`` is the read-noise standard deviation in photons. A number is shorthand for
        ``{"photons": number, "read_noise": 0}``. ``"realistic"`` draws ``P`` log-uniformly in 30..1000 and
        ``R`` uniformly in 1..4.
    seed
        Seed (or ``np.random.Generator``) for the PSF and the noise; the same seed gives the same result.
    axes
        Axes letters (TZCYXS) of ``sharp``; None infers them (last two axes are YX, a trailing axis of 3 or
        4 is RGB(A) samples, as in :func:`deblur`). One PSF is applied to every YX plane.

    Returns
    -------
    (blurred, psf)
        ``blurred`` has the shape and dtype of ``sharp``: integer images are rounded and clipped to their
        dtype's range, float images keep their value range (no rescaling). ``psf`` is float32, 2D,
        non-negative and sums to 1; odd sized for the named kinds (a given array keeps its shape).
        Convolution reflect-pads the borders, so the mean is preserved.
    """
    blurred, psf, _ = synthesize_blur_with_params(sharp, kind, strength=strength, noise=noise, seed=seed, axes=axes)
    return blurred, psf

"""Point-spread functions (PSFs) in NumPy: camera-shake motion, defocus (disk / Airy) and Gaussian.

Every generator returns a ``float32`` 2D array with an odd side length on both axes, no negative values and
a sum of 1 (so convolving with it preserves the mean brightness of an image). The PSF centre is the central
pixel ``(size // 2, size // 2)``.

Motion PSFs follow the camera-shake trajectory model of Boracchi & Foi, "Modeling the performance of image
restoration from motion blur", IEEE TIP 2012, as implemented in DeblurGAN's ``generate_trajectory.py``: a
complex-valued random walk with constant speed whose direction changes by a Gaussian "shake" term, a
centripetal pull back towards the start ("inertia") and rare impulsive jumps that reverse the direction.
Unlike the reference code the kernel is *not* min-max rescaled: the trajectory is splatted bilinearly
(sub-pixel) and normalised to sum 1, and it is centred on its centre of mass so that blurring does not
shift the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

from ..errors import InputError

#: PSF kinds understood by :func:`random_psf`.
PSF_KINDS: tuple[str, ...] = ("motion", "defocus", "gaussian", "airy", "mixed")

#: Default strength ranges (uniformly sampled) per kind, in pixels: motion trajectory extent, defocus disk
#: radius and Gaussian sigma.
DEFAULT_STRENGTH_RANGES: dict[str, tuple[float, float]] = {
    "motion": (5.0, 25.0),
    "defocus": (1.5, 6.0),
    "gaussian": (0.8, 3.5),
}

# Reference parameters of DeblurGAN's Trajectory (canvas 64, max_len 60, 2000 iterations). The random walk
# is simulated in these units and then scaled, so its shape statistics do not depend on the requested length.
_REF_LENGTH = 60.0
_REF_STEPS = 2000
# DeblurGAN's blur_image.py draws the "anxiety" (expl) from this list.
_REF_ANXIETIES = (0.001, 0.003, 0.005, 0.007, 0.008, 0.009, 0.01)

# First zero of J1: the Airy pattern (2 J1(v)/v)^2 is zero at v = 3.8317...
_J1_FIRST_ZERO = 3.8317059702075125
# Third zero of the Airy pattern, used to size Airy PSFs (three rings are kept).
_AIRY_THIRD_ZERO = 10.173468135062722


def _check_positive(name: str, value: float) -> float:
    """Return ``value`` as float, or raise InputError if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a positive number of pixels, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number of pixels, got {value!r}; pass a value > 0.")
    return value


def _check_size(size: int | None, minimum: int) -> int:
    """Return the odd kernel side to use: ``size`` (validated) or ``minimum`` made odd."""
    if size is None:
        return minimum if minimum % 2 == 1 else minimum + 1
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise InputError(f"PSF size must be a positive odd integer, got {size!r}.")
    return int(size)


def _normalise(psf: np.ndarray) -> np.ndarray:
    """Clip tiny negative round-off, normalise to sum 1 and return float32."""
    psf = np.clip(np.asarray(psf, dtype=np.float64), 0.0, None)
    total = psf.sum()
    if not total > 0:  # pragma: no cover - every generator puts mass on the centre pixel
        raise InputError("The PSF has no positive values; increase its strength or size.")
    return (psf / total).astype(np.float32)


def splat_linear(points: np.ndarray, shape: tuple[int, ...], weights: np.ndarray | None = None) -> np.ndarray:
    """Accumulate sub-pixel ``points`` (P, D) into a float64 array of ``shape`` with (bi/tri)linear weights.

    Linear splatting preserves both the total weight and the centre of mass of the points (as long as all
    points lie inside the array), which is why it is used instead of rounding to the nearest pixel. Points
    outside the array lose the part of their weight that falls outside.
    """
    pts = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = np.zeros(shape, dtype=np.float64)
    base = np.floor(pts).astype(np.int64)
    frac = pts - base
    for corner in np.ndindex(*(2,) * len(shape)):
        idx = base + np.array(corner)
        w = weights.copy()
        for d, c in enumerate(corner):
            w *= frac[:, d] if c else 1.0 - frac[:, d]
        inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        np.add.at(out, tuple(idx[inside].T), w[inside])
    return out


def motion_trajectory(
    rng: np.random.Generator,
    *,
    num_steps: int = _REF_STEPS,
    anxiety: float | None = None,
    inertia: float | None = None,
    shake: float | None = None,
    impulsive: float | None = None,
) -> np.ndarray:
    """Simulate one camera-shake trajectory of total path length 1 (complex array of ``num_steps`` points).

    The walk runs in DeblurGAN's reference units (path length 60 over 2000 steps) and is divided by 60.
    Parameters left as None are drawn like the reference code does: ``inertia`` (centripetal pull)
    in [0, 0.7), ``shake`` (Gaussian direction noise) in [0, 10), ``impulsive`` (probability factor of big
    direction reversals) in [0, 0.2) and ``anxiety`` (overall scale of all perturbations) from DeblurGAN's
    list 0.001..0.01. With fewer steps than the reference, per-step perturbations are rescaled so that the
    accumulated direction noise, pull and number of jumps stay the same on average.
    """
    if num_steps < 2:
        raise InputError(f"A motion trajectory needs at least 2 steps, got {num_steps}.")
    anxiety = float(rng.choice(_REF_ANXIETIES)) if anxiety is None else float(anxiety)
    inertia = 0.7 * rng.uniform() if inertia is None else float(inertia)
    shake = 10.0 * rng.uniform() if shake is None else float(shake)
    impulsive = 0.2 * rng.uniform() if impulsive is None else float(impulsive)

    ratio = (_REF_STEPS - 1) / (num_steps - 1)  # reference steps per simulated step
    step = _REF_LENGTH / (num_steps - 1)
    angle = 2 * np.pi * rng.uniform()
    v = complex(np.cos(angle), np.sin(angle)) * step
    # Draw all random numbers at once (faster than per-step calls); the walk itself is sequential.
    jumps = rng.uniform(size=num_steps - 1) < impulsive * anxiety * ratio
    jump_angles = np.pi + (rng.uniform(size=num_steps - 1) - 0.5)
    noise = rng.standard_normal(num_steps - 1) + 1j * rng.standard_normal(num_steps - 1)
    x = np.zeros(num_steps, dtype=np.complex128)
    # Reference: dv = expl * (shake * N - centripetal * x) * step_ref, with |v| = step_ref. What turns the walk
    # is dv / |v|, so the terms scale with this walk's own step (not the reference's, which made walks of fewer
    # steps ~ratio times straighter), diffusion with sqrt(ratio) and the deterministic pull with ratio.
    shake_term = anxiety * shake * math.sqrt(ratio) * step * noise
    pull = anxiety * inertia * ratio * step
    for t in range(num_steps - 1):
        dv = shake_term[t] - pull * x[t]
        if jumps[t]:
            dv += 2 * v * complex(np.cos(jump_angles[t]), np.sin(jump_angles[t]))
        v += dv
        v = v / abs(v) * step
        x[t + 1] = x[t] + v
    return x / _REF_LENGTH


def trajectory_diameter(traj: np.ndarray, max_points: int = 500) -> float:
    """Largest distance between two points of a complex trajectory (its extent, the blur "length").

    Computed on at most ``max_points`` evenly spaced points (the trajectory's steps are far below a pixel,
    so the subsampling error is negligible) to keep it O(max_points^2).
    """
    stride = max(1, math.ceil(len(traj) / max_points))
    pts = np.concatenate([traj[::stride], traj[-1:]])
    return float(np.abs(pts[:, None] - pts[None, :]).max())


def motion_psf(
    length_px: float,
    rng: np.random.Generator | int | None = None,
    *,
    size: int | None = None,
    exposure: float = 1.0,
    inertia: float | None = None,
    shake: float | None = None,
    impulsive: float | None = None,
    anxiety: float | None = None,
    num_steps: int = _REF_STEPS,
) -> np.ndarray:
    """Random camera-shake motion PSF (Boracchi & Foi 2012 trajectory), float32, sums to 1.

    ``length_px`` is the extent of the whole trajectory in pixels: the largest distance between two of its
    points, i.e. how far a point of the scene is smeared (the random walk curls up, so its path is longer).
    ``exposure`` in (0, 1] keeps only the first fraction of the trajectory's time (the shutter closes early),
    as in the reference code's exposure times; the blur is then shorter than ``length_px``.
    ``inertia``, ``shake``, ``impulsive`` and ``anxiety`` tune the random walk (see
    :func:`motion_trajectory`; None draws them at random). The kernel is centred on the trajectory's centre
    of mass; ``size`` (odd) defaults to the smallest square that holds it. Raises InputError when ``size``
    is too small for the trajectory.
    """
    length_px = _check_positive("Motion length", length_px)
    exposure = _check_positive("exposure", exposure)
    if exposure > 1:
        raise InputError(f"exposure is a fraction of the trajectory in (0, 1], got {exposure}.")
    rng = np.random.default_rng(rng)
    traj = motion_trajectory(
        rng, num_steps=num_steps, anxiety=anxiety, inertia=inertia, shake=shake, impulsive=impulsive
    )
    n_used = max(2, math.ceil(exposure * len(traj)))
    pts = traj[:n_used] * (length_px / max(trajectory_diameter(traj), 1e-12))
    pts = pts - pts.mean()  # centre of mass at the kernel centre: the blurred image is not shifted
    # bilinear splatting touches floor(p) and floor(p) + 1, hence +1 pixel of margin
    radius = max(np.abs(pts.real).max(), np.abs(pts.imag).max())
    needed = 2 * (math.floor(radius) + 1) + 1
    size = _check_size(size, needed)
    if size < needed:
        raise InputError(
            f"Motion PSF of length {length_px:g} px needs a size of at least {needed} px, got {size}; "
            "pass a larger size or leave size=None."
        )
    c = size // 2
    psf = splat_linear(np.stack([pts.imag + c, pts.real + c], axis=1), (size, size))
    return _normalise(psf)


def _supersampled_radial(profile, extent_px: float, size: int, supersample: int) -> np.ndarray:
    """Evaluate ``profile(r)`` (r in pixels) on a supersampled grid and average it back to pixels."""
    c = size // 2
    s = supersample
    # sub-pixel sample centres inside each pixel
    offsets = (np.arange(s) + 0.5) / s - 0.5
    coords = (np.arange(size) - c)[:, None] + offsets[None, :]
    coords = coords.ravel()
    r = np.hypot(coords[:, None], coords[None, :])
    values = profile(r)
    values[r > extent_px] = 0.0
    return values.reshape(size, s, size, s).mean(axis=(1, 3))


def defocus_psf(radius_px: float, *, model: str = "disk", size: int | None = None) -> np.ndarray:
    """Defocus PSF of radius ``radius_px``: an anti-aliased uniform disk or an Airy pattern; float32, sum 1.

    * ``model="disk"``: geometric-optics defocus, a uniform disk whose edge pixels get their covered area
      (8x8 supersampling per pixel).
    * ``model="airy"``: a widefield diffraction-limited pattern ``(2 J1(v) / v)^2`` scaled so that its first
      zero lies at ``radius_px``; the pattern is cut after its third ring (third zero) and supersampled.
    """
    radius_px = _check_positive("Defocus radius", radius_px)
    if model == "disk":
        needed = 2 * math.ceil(radius_px + 0.5) + 1
        size = _check_size(size, needed)
        # coverage of each sub-sample: inside the disk or not; averaged over 8x8 samples per pixel
        psf = _supersampled_radial(lambda r: (r <= radius_px).astype(np.float64), radius_px, size, 8)
        if psf.sum() == 0:  # a disk smaller than one sub-sample: a delta
            psf[size // 2, size // 2] = 1.0
    elif model == "airy":
        extent = radius_px * _AIRY_THIRD_ZERO / _J1_FIRST_ZERO
        needed = 2 * math.ceil(extent + 0.5) + 1
        size = _check_size(size, needed)

        def airy(r: np.ndarray) -> np.ndarray:
            v = _J1_FIRST_ZERO * r / radius_px
            out = np.ones_like(v)
            nz = v > 1e-12
            out[nz] = (2.0 * special.j1(v[nz]) / v[nz]) ** 2
            return out

        psf = _supersampled_radial(airy, extent, size, 5)
    else:
        raise InputError(f"Unknown defocus model {model!r}; use 'disk' or 'airy'.")
    return _normalise(psf)


def gaussian_psf(sigma_px: float, *, size: int | None = None) -> np.ndarray:
    """Gaussian PSF with standard deviation ``sigma_px``, integrated over each pixel; float32, sum 1.

    Pixel values are the Gaussian's integral over the pixel area (differences of erf), so small sigmas
    (< 1 px) are still exact rather than undersampled. The default size covers +-4 sigma.
    """
    sigma_px = _check_positive("Gaussian sigma", sigma_px)
    size = _check_size(size, 2 * math.ceil(4 * sigma_px) + 1)
    c = size // 2
    edges = (np.arange(size + 1) - c - 0.5) / (sigma_px * math.sqrt(2.0))
    g1 = np.diff(special.erf(edges)) * 0.5
    return _normalise(np.outer(g1, g1))


def random_psf(
    kind: str,
    rng: np.random.Generator | int | None = None,
    strength: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw a random PSF of ``kind`` ("motion", "defocus", "gaussian", "airy" or "mixed") and its parameters.

    ``strength`` is the kind's size in pixels (motion extent, defocus radius, Gaussian sigma); None
    draws it uniformly from :data:`DEFAULT_STRENGTH_RANGES`. "mixed" picks one of the three kinds at random
    (a given ``strength`` then applies to whichever kind is picked). Defocus PSFs are disks or Airy patterns
    with equal probability; "airy" is always an Airy pattern (its params say kind "defocus", model "airy").
    Returns ``(psf, params)``; ``params`` is JSON-able, e.g.
    ``{"kind": "motion", "length_px": 12.3, "exposure": 1.0, ...}``.
    """
    if not isinstance(kind, str) or kind not in PSF_KINDS:
        raise InputError(f"Unknown blur kind {kind!r}; use one of {', '.join(PSF_KINDS)}.")
    rng = np.random.default_rng(rng)
    if kind == "mixed":
        kind = ("motion", "defocus", "gaussian")[int(rng.integers(3))]
    if strength is None:
        # "airy" is the Airy half of "defocus" (as in finetune's blur kinds): the same radii
        low, high = DEFAULT_STRENGTH_RANGES["defocus" if kind == "airy" else kind]
        strength = float(rng.uniform(low, high))
    strength = _check_positive("Blur strength", strength)
    params: dict[str, Any]
    if kind == "motion":
        anxiety = float(rng.choice(_REF_ANXIETIES))
        inertia = float(0.7 * rng.uniform())
        shake = float(10.0 * rng.uniform())
        impulsive = float(0.2 * rng.uniform())
        traj_seed = int(rng.integers(2**31))
        psf = motion_psf(
            strength,
            np.random.default_rng(traj_seed),
            anxiety=anxiety,
            inertia=inertia,
            shake=shake,
            impulsive=impulsive,
        )
        params = {
            "kind": "motion",
            "length_px": strength,
            "exposure": 1.0,
            "anxiety": anxiety,
            "inertia": inertia,
            "shake": shake,
            "impulsive": impulsive,
            "trajectory_seed": traj_seed,
        }
    elif kind in ("defocus", "airy"):
        model = "airy" if kind == "airy" else ("disk" if rng.uniform() < 0.5 else "airy")
        psf = defocus_psf(strength, model=model)
        params = {"kind": "defocus", "radius_px": strength, "model": model}
    else:
        psf = gaussian_psf(strength)
        params = {"kind": "gaussian", "sigma_px": strength}
    params["size"] = int(psf.shape[0])
    return psf, params

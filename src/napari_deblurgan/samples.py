"""Offline sample data: generated microscopy-like scenes, bundled photos, and blurred/sharp demo pairs.

Nothing here downloads anything. Generated scenes are deterministic given their seed; the photographs come
from scikit-image's *bundled* data files (images scikit-image would download on first use are skipped).

Generated scenes (float32, roughly 0..1, 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` shapes):

* :func:`beads` - sub-resolution fluorescent beads (diffraction-limited spots of varied brightness),
* :func:`filaments` - curvy cytoskeleton-like filaments (smooth random paths, anti-aliased),
* :func:`nuclei` - textured, elliptical nuclei with soft edges and bright chromocentres,
* :func:`cells` - nuclei plus filaments, :func:`brightfield` - a transmitted-light scene (grey background,
  haloed cells).

:func:`sharp_training_images` collects sharp images for training and validation;
:data:`VALIDATION_IMAGES` names the ones reserved for validation, which the default model never trains on.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .blur.psf import splat_linear
from .errors import InputError

#: Images of :func:`sharp_training_images` reserved for validation: the default model is never trained on
#: them, so they measure generalisation. One photograph, one microscopy image and one generated scene.
VALIDATION_IMAGES: tuple[str, ...] = ("camera", "cell", "synthetic_cells")

# scikit-image loader name -> file it reads. Only loaders whose file ships inside the scikit-image package
# (or was already fetched) are used; "clock" is excluded because it is a motion-blurred photograph, "horse"
# because it is a binary silhouette.
_SKIMAGE_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "page": "page.png",
    "rocket": "rocket.jpg",
    "text": "text.png",
    "human_mitosis": "mitosis.tif",
}

# side of the generated scenes in the training collection
_GENERATED_SIZE = (512, 512)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a tuple like (256, 256) or (16, 256, 256), got {shape!r}.") from None
    if len(shape) not in (2, 3) or min(shape[-2:]) < 8 or min(shape) < 1:
        raise InputError(f"shape must be 2D (Y, X) or 3D (Z, Y, X) with Y and X >= 8, got {shape}.")
    return shape


def _to_unit(image: np.ndarray) -> np.ndarray:
    peak = float(image.max())
    return (image / peak if peak > 0 else image).astype(np.float32)


def beads(shape: Sequence[int] = (256, 256), seed: int = 0, *, density: float = 1.0) -> np.ndarray:
    """Sub-resolution fluorescent beads: diffraction-limited spots (sigma 0.8 px) of log-normal brightness.

    About one bead per 400 px (2D) or 4000 voxels (3D) times ``density``, on a faint background.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    volume = math.prod(shape)
    count = max(1, int(volume / (400 if len(shape) == 2 else 4000) * density))
    points = rng.uniform(0, 1, size=(count, len(shape))) * (np.array(shape) - 1)
    brightness = rng.lognormal(0.0, 0.5, size=count)
    image = ndimage.gaussian_filter(splat_linear(points, shape, brightness), 0.8)
    image = image / max(float(np.percentile(image, 99.9)), 1e-12)
    return _to_unit(np.clip(image, 0, None) + 0.02)


def filaments(
    shape: Sequence[int] = (256, 256), seed: int = 0, *, count: int | None = None, curl: float = 0.15
) -> np.ndarray:
    """Curvy filaments (cytoskeleton-like): smooth random paths drawn with sub-pixel anti-aliasing.

    Each filament is a persistent random walk (step 0.3 px, slowly turning direction; ``curl`` scales the
    turning) of random length and brightness, splatted linearly and widened by a Gaussian of sigma 0.7 px.
    ``count`` defaults to about one filament per 5000 px of the YX plane (at least 3).
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    plane = shape[-2] * shape[-1]
    count = count if count is not None else max(3, int(plane / 5000) * (1 if ndim == 2 else 2))
    size = np.array(shape, dtype=np.float64)
    step = 0.3
    all_points = []
    all_weights = []
    for _ in range(count):
        n = int(rng.uniform(0.3, 1.2) * max(shape[-2:]) / step)
        direction = rng.normal(size=ndim)
        if ndim == 3:
            direction[0] *= 0.3  # mostly lateral filaments, as in a thin cell
        direction /= np.linalg.norm(direction)
        # smoothly varying turning: low-pass filtered noise accumulated onto the direction, renormalised
        turns = ndimage.gaussian_filter1d(rng.normal(size=(n, ndim)), 20, axis=0) * curl
        directions = direction + np.cumsum(turns, axis=0)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        start = rng.uniform(0, 1, size=ndim) * (size - 1)
        path = start + np.cumsum(directions * step, axis=0)
        all_points.append(path)
        all_weights.append(np.full(n, rng.uniform(0.4, 1.0) * step))
    image = splat_linear(np.concatenate(all_points), shape, np.concatenate(all_weights))
    image = ndimage.gaussian_filter(image, 0.7)
    image = image / max(float(np.percentile(image[image > 0], 99.5)), 1e-12)
    return _to_unit(np.clip(image, 0, 1.5) + 0.03)


def nuclei(shape: Sequence[int] = (256, 256), seed: int = 0, *, count: int | None = None) -> np.ndarray:
    """Cell nuclei: soft-edged ellipses (ellipsoids in 3D) with chromatin texture and bright chromocentres.

    Radii are 8..22 px (at most a quarter of the smallest YX side); ``count`` defaults to filling about a
    quarter of the plane. Centres are drawn with rejection so nuclei rarely overlap.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    size = np.array(shape, dtype=np.float64)
    r_max = max(3.0, min(22.0, min(shape[-2:]) / 4))
    r_min = min(8.0, r_max * 0.6)
    plane = shape[-2] * shape[-1]
    mean_r = (r_min + r_max) / 2
    count = count if count is not None else max(1, int(0.25 * plane / (math.pi * mean_r**2)))

    # chromatin texture: smooth noise field shared by all nuclei
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    texture /= max(float(texture.std()), 1e-12)
    image = np.zeros(shape, dtype=np.float64)
    centres: list[np.ndarray] = []
    radii_list: list[float] = []
    for _ in range(count):
        radii = rng.uniform(r_min, r_max, size=ndim)
        if ndim == 3:
            radii[0] = min(radii[0], shape[0] / 2)
        for _try in range(30):
            centre = rng.uniform(0, 1, size=ndim) * (size - 1)
            if all(
                np.linalg.norm(centre - c) > 0.8 * (r + radii.mean()) for c, r in zip(centres, radii_list, strict=True)
            ):
                break
        centres.append(centre)
        radii_list.append(float(radii.mean()))
        rotation, _ = np.linalg.qr(rng.normal(size=(ndim, ndim)))
        lo = np.maximum(np.floor(centre - radii.max() - 2), 0).astype(int)
        hi = np.minimum(np.ceil(centre + radii.max() + 3), size).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        coords = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        local = (coords - centre) @ rotation
        rho = np.sqrt(np.sum((local / radii) ** 2, axis=-1))
        # soft edge about one pixel wide: distance to the boundary is roughly (1 - rho) * radius
        mask = np.clip((1.0 - rho) * radii.mean() + 0.5, 0.0, 1.0)
        brightness = rng.uniform(0.5, 1.0)
        image[box] += mask * brightness * (0.75 + 0.12 * texture[box])
        # chromocentres: a few bright, small spots inside the nucleus
        for _spot in range(int(rng.integers(2, 6))):
            offset = rng.normal(size=ndim) * radii * 0.35
            point = centre + offset
            spot = np.exp(-np.sum((coords - point) ** 2, axis=-1) / (2 * 1.2**2))
            image[box] += 0.5 * brightness * spot * mask
    image = ndimage.gaussian_filter(np.clip(image, 0, None), 0.6)
    return _to_unit(image + 0.03)


def cells(shape: Sequence[int] = (256, 256), seed: int = 0) -> np.ndarray:
    """A two-component cell scene: :func:`nuclei` plus :func:`filaments` (as in a DAPI + actin overlay)."""
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    s1, s2 = (int(v) for v in rng.integers(0, 2**31, size=2))
    return _to_unit(0.6 * nuclei(shape, s1) + 0.7 * filaments(shape, s2))


def brightfield(shape: Sequence[int] = (256, 256), seed: int = 0) -> np.ndarray:
    """A transmitted-light (brightfield / phase-contrast-like) scene: mid-grey, unevenly lit background with a
    faint fine texture and interference fringes, a few round cells with a bright or dark interior inside a
    halo of the opposite sign, and small debris. 2D only.

    The fluorescence scenes above are dark with bright objects; transmitted light is the opposite case: most
    of the image is smooth, low-contrast background at high signal, where a deblurring model must add next
    to nothing (docs/model-card.md: the held-out ``cell`` image).
    """
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise InputError(f"brightfield scenes are 2D (Y, X), got shape {shape}.")
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    gy, gx = rng.uniform(-0.08, 0.08, size=2)
    image = 0.45 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(0.8, 3.0))
    image += rng.uniform(0.01, 0.05) * texture / max(float(texture.std()), 1e-12)
    for _ in range(int(rng.integers(1, 4))):  # fringes, fading in and out
        angle, period = rng.uniform(0, math.pi), rng.uniform(5.0, 20.0)
        phase = (yy * math.sin(angle) + xx * math.cos(angle)) * 2 * math.pi / period
        envelope = ndimage.gaussian_filter(rng.random(shape), 25.0)
        envelope = (envelope - envelope.min()) / max(float(np.ptp(envelope)), 1e-12)
        image += rng.uniform(0.004, 0.02) * envelope * np.sin(phase + rng.uniform(0, 2 * math.pi))
    r_max = max(4.0, min(45.0, min(shape) / 5))
    for _ in range(int(rng.integers(1, 7))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(min(12.0, r_max * 0.5), r_max)
        aspect, theta = rng.uniform(0.75, 1.0), rng.uniform(0, math.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * math.cos(theta) + dx * math.sin(theta)) / aspect
        v = -dy * math.sin(theta) + dx * math.cos(theta)
        distance = np.sqrt(u * u + v * v) - radius  # < 0 inside
        inside = np.clip(0.5 - distance / rng.uniform(1.0, 2.5), 0.0, 1.0)
        halo_width = rng.uniform(3.0, 9.0)
        halo = np.exp(-np.clip(distance, 0, None) / halo_width) * (distance > 0)
        sign = 1.0 if rng.random() < 0.7 else -1.0  # phase-bright cells, or absorbing ones
        granules = ndimage.gaussian_filter(rng.normal(size=shape), 1.2)
        granules /= max(float(granules.std()), 1e-12)
        image += sign * inside * (rng.uniform(0.15, 0.4) + 0.04 * granules)
        image -= sign * rng.uniform(0.08, 0.2) * halo
    for _ in range(int(rng.integers(0, 8))):  # debris: small dark specks
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        image -= rng.uniform(0.05, 0.2) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.6, 1.5) ** 2))
    return _to_unit(np.clip(ndimage.gaussian_filter(image, 0.5), 0.0, None))


# ------------------------------------------------------------------------------------ bundled images


def _skimage_file_is_local(filename: str) -> bool:
    """True when scikit-image has ``filename`` on disk (bundled or already cached): loading it won't download."""
    from skimage import data as skdata
    from skimage.data import _fetchers

    folders = [getattr(_fetchers, "_LEGACY_DATA_DIR", None), getattr(skdata, "data_dir", None)]
    return any(folder and os.path.exists(os.path.join(folder, filename)) for folder in folders)


def _as_gray_float(image: np.ndarray) -> np.ndarray:
    from skimage import color, util

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = color.rgba2rgb(image)
    if image.ndim == 3:
        image = color.rgb2gray(image)
    return util.img_as_float32(image)


@functools.lru_cache(maxsize=1)
def _load_all() -> dict[str, np.ndarray]:
    from skimage import data as skdata

    images: dict[str, np.ndarray] = {}
    for name, filename in _SKIMAGE_FILES.items():
        if _skimage_file_is_local(filename):
            images[name] = _as_gray_float(getattr(skdata, name)())
    images["synthetic_beads"] = beads(_GENERATED_SIZE, 1001)
    images["synthetic_filaments"] = filaments(_GENERATED_SIZE, 1002)
    images["synthetic_nuclei"] = nuclei(_GENERATED_SIZE, 1003)
    images["synthetic_cells"] = cells(_GENERATED_SIZE, 1004)
    for image in images.values():
        image.setflags(write=False)
    return images


def sharp_training_images(split: str = "all") -> dict[str, np.ndarray]:
    """Sharp grayscale images (float32, 0..1, 2D) for training and validating deblurring models, offline.

    Photographs and microscopy images bundled with scikit-image (only those whose files are on disk, so
    nothing is downloaded) plus generated scenes ("synthetic_beads", "synthetic_filaments",
    "synthetic_nuclei", "synthetic_cells"; fixed seeds). ``split`` is "all", "train" (everything except
    :data:`VALIDATION_IMAGES`) or "validation" (only those). Returns fresh copies.
    """
    if split not in ("all", "train", "validation"):
        raise InputError(f"split must be 'all', 'train' or 'validation', got {split!r}.")
    images = _load_all()
    if split == "train":
        names = [n for n in images if n not in VALIDATION_IMAGES]
    elif split == "validation":
        names = [n for n in images if n in VALIDATION_IMAGES]
    else:
        names = list(images)
    return {name: images[name].copy() for name in names}


# -------------------------------------------------------------------------------------------- demo data


def _to_uint16(image: np.ndarray, peak: float) -> np.ndarray:
    return np.clip(np.rint(image * peak), 0, 65535).astype(np.uint16)


#: Noise of the demo data: photons at the 99.9th percentile and read noise (photons), see synthesize_blur.
DEMO_NOISE: dict[str, float] = {"photons": 200.0, "read_noise": 2.0}


def blurred_sharp_pair(seed: int = 0) -> dict[str, Any]:
    """A 512x512 uint16 cell scene (nuclei + filaments), motion-blurred (extent 15 px) with realistic noise.

    Returns ``{"blurred", "sharp", "psf", "params"}``; ``sharp`` is the noise-free ground truth (peak about
    4000 counts), ``params`` the JSON-able blur/noise parameters. Deterministic for a given ``seed``.
    """
    from .blur.synthesize import synthesize_blur_with_params

    sharp = _to_uint16(cells((512, 512), seed), 4000.0)
    blurred, psf, params = synthesize_blur_with_params(sharp, "motion", strength=15.0, noise=DEMO_NOISE, seed=seed)
    params["seed"] = seed
    return {"blurred": blurred, "sharp": sharp, "psf": psf, "params": params}


def blurred_stack_3d(seed: int = 0) -> dict[str, Any]:
    """A 16x256x256 (ZYX) uint16 stack of nuclei and beads, each plane defocus-blurred (radius 3 px), noisy.

    Same keys as :func:`blurred_sharp_pair`; one 2D PSF is applied to every Z plane. Deterministic per seed.
    """
    from .blur.synthesize import synthesize_blur_with_params

    rng = np.random.default_rng(seed)
    s1, s2 = (int(v) for v in rng.integers(0, 2**31, size=2))
    shape = (16, 256, 256)
    scene = _to_unit(0.8 * nuclei(shape, s1) + 0.5 * beads(shape, s2, density=0.5))
    sharp = _to_uint16(scene, 4000.0)
    blurred, psf, params = synthesize_blur_with_params(
        sharp, "defocus", strength=3.0, noise=DEMO_NOISE, seed=seed, axes="ZYX"
    )
    params["seed"] = seed
    return {"blurred": blurred, "sharp": sharp, "psf": psf, "params": params}


def clock() -> np.ndarray:
    """scikit-image's clock photograph: a real motion-blurred photo (uint8, 300x400), no ground truth."""
    from skimage import data as skdata

    return skdata.clock()

"""NumPy PSFs (blur/psf.py) and synthesize_blur (blur/synthesize.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_deblurgan import synthesize_blur
from napari_deblurgan.blur import synthesize as synthesize_module
from napari_deblurgan.blur.psf import defocus_psf, gaussian_psf, motion_psf, random_psf
from napari_deblurgan.blur.synthesize import (
    add_poisson_gaussian_noise,
    apply_psf,
    convolve_reflect,
    synthesize_blur_with_params,
)
from napari_deblurgan.errors import InputError


def _check_psf(psf: np.ndarray) -> None:
    assert psf.dtype == np.float32
    assert psf.ndim == 2 and psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    assert psf.min() >= 0
    assert abs(float(psf.sum(dtype=np.float64)) - 1.0) < 1e-5


def _centroid_offset(psf: np.ndarray) -> np.ndarray:
    yy, xx = np.indices(psf.shape)
    c = psf.shape[0] // 2
    total = psf.sum(dtype=np.float64)
    return np.array([(psf * yy).sum() / total - c, (psf * xx).sum() / total - c])


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["motion", "defocus", "gaussian", "mixed"]),
    strength=st.one_of(st.none(), st.floats(0.3, 30.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_psf_properties(kind, strength, seed):
    psf, params = random_psf(kind, np.random.default_rng(seed), strength)
    _check_psf(psf)
    json.dumps(params)  # JSON-able
    assert params["kind"] in ("motion", "defocus", "gaussian")
    assert kind == "mixed" or params["kind"] == kind
    assert params["size"] == psf.shape[0]
    # reproducible from the same seed
    again, params_again = random_psf(kind, np.random.default_rng(seed), strength)
    np.testing.assert_array_equal(psf, again)
    assert params == params_again


@settings(max_examples=15, deadline=None)
@given(length=st.floats(1.0, 40.0), seed=st.integers(0, 2**32 - 1), exposure=st.floats(0.05, 1.0))
def test_motion_psf_extent_and_centre(length, seed, exposure):
    psf = motion_psf(length, seed, exposure=exposure)
    _check_psf(psf)
    # centred on its centre of mass (bilinear splatting keeps the centroid): blurring does not shift images
    np.testing.assert_allclose(_centroid_offset(psf), 0, atol=1e-3)
    # the support's extent is at most the requested length (+2 px for the bilinear footprint)
    ys, xs = np.nonzero(psf > 0)
    pts = np.stack([ys, xs], 1)
    extent = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
    assert extent <= length + 2 * np.sqrt(2) + 1e-6


def test_motion_psf_full_exposure_reaches_length():
    psf = motion_psf(20.0, 3)
    ys, xs = np.nonzero(psf > 1e-6)
    pts = np.stack([ys, xs], 1)
    extent = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
    assert 19.0 <= extent <= 23.0


def test_motion_psf_size_argument():
    psf = motion_psf(10.0, 1, size=41)
    assert psf.shape == (41, 41)
    with pytest.raises(InputError, match="size"):
        motion_psf(30.0, 1, size=5)
    with pytest.raises(InputError):
        motion_psf(10.0, 1, size=40)  # even


def test_defocus_disk_and_airy():
    disk = defocus_psf(4.0)
    _check_psf(disk)
    c = disk.shape[0] // 2
    # flat inside, zero outside the radius, partial on the edge
    assert disk[c, c] == pytest.approx(disk[c, c + 2])
    assert disk[c, c + 5] == 0
    assert 0 < disk[c, c + 4] < disk[c, c]
    airy = defocus_psf(4.0, model="airy")
    _check_psf(airy)
    c = airy.shape[0] // 2
    assert airy[c, c] == airy.max()
    # near-zero at the first dark ring (radius 4) compared with the centre
    assert airy[c, c + 4] < 0.02 * airy[c, c]
    # tiny radii degrade gracefully to (nearly) a delta
    assert defocus_psf(0.2).max() > 0.9
    with pytest.raises(InputError, match="model"):
        defocus_psf(3.0, model="ring")


def test_gaussian_psf_matches_sigma():
    sigma = 2.0
    psf = gaussian_psf(sigma)
    _check_psf(psf)
    yy, _ = np.indices(psf.shape)
    c = psf.shape[0] // 2
    variance = float((psf * (yy - c) ** 2).sum())
    # pixel integration adds 1/12 px^2 of variance to sigma^2
    assert variance == pytest.approx(sigma**2 + 1 / 12, rel=0.01)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "3"])
def test_psf_rejects_bad_strength(bad):
    with pytest.raises(InputError):
        gaussian_psf(bad)
    with pytest.raises(InputError):
        random_psf("motion", 0, bad)


def test_random_psf_rejects_unknown_kind():
    with pytest.raises(InputError, match="kind"):
        random_psf("zoom", 0)


# ---------------------------------------------------------------------------------------- synthesize


_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]


def _random_image(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    smooth = ndimage.gaussian_filter(rng.uniform(0, 1, shape), 1.5) + rng.uniform(0, 0.3, shape)
    smooth = smooth / smooth.max()
    if np.dtype(dtype).kind in "iu":
        top = min(np.iinfo(dtype).max, 4000)
        return np.rint(smooth * top * 0.9 + 5).astype(dtype)
    return (smooth * 3.0 - 0.5).astype(dtype)  # floats keep negative values


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(_DTYPES),
    kind=st.sampled_from(["motion", "defocus", "gaussian", "mixed"]),
    shape=st.sampled_from([(32, 40), (3, 24, 24), (2, 2, 16, 20)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_synthesize_preserves_shape_dtype_mean(dtype, kind, shape, seed):
    rng = np.random.default_rng(seed)
    sharp = _random_image(rng, shape, dtype)
    blurred, psf = synthesize_blur(sharp, kind, seed=seed)
    assert blurred.shape == sharp.shape and blurred.dtype == sharp.dtype
    _check_psf(psf)
    mean_sharp = float(sharp.astype(np.float64).mean())
    span = float(sharp.max()) - float(sharp.min())
    # reflect padding keeps the brightness; only rounding and mirrored borders change the mean a little
    assert abs(float(blurred.astype(np.float64).mean()) - mean_sharp) <= 0.03 * span
    again, psf_again = synthesize_blur(sharp, kind, seed=seed)
    np.testing.assert_array_equal(blurred, again)
    np.testing.assert_array_equal(psf, psf_again)


def test_synthesize_blurs_and_matches_convolution():
    rng = np.random.default_rng(0)
    sharp = rng.uniform(0, 1, (48, 48))
    blurred, psf = synthesize_blur(sharp, "gaussian", strength=2.0, seed=1)
    assert blurred.dtype == np.float64
    # high frequencies are removed: much smaller pixel-to-pixel differences
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.3 * np.abs(np.diff(sharp, axis=1)).mean()
    # interior equals a plain convolution (borders differ only by the padding)
    ref = ndimage.convolve(sharp, psf.astype(np.float64), mode="mirror")
    np.testing.assert_allclose(blurred, ref, atol=1e-6)


def test_synthesize_same_psf_on_every_plane():
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 1, (32, 32)).astype(np.float32)
    stack = np.stack([plane, plane * 2, plane])
    blurred, psf = synthesize_blur(stack, "motion", strength=9.0, seed=5, axes="ZYX")
    np.testing.assert_allclose(blurred[0], blurred[2])
    np.testing.assert_allclose(blurred[1], 2 * blurred[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blurred[0], convolve_reflect(plane.astype(np.float32), psf), atol=1e-6)


def test_synthesize_rgb_axes():
    rng = np.random.default_rng(1)
    rgb = (rng.uniform(0, 255, (32, 32, 3))).astype(np.uint8)
    blurred, psf = synthesize_blur(rgb, "defocus", strength=2.0, seed=0)
    assert blurred.shape == rgb.shape
    for ch in range(3):
        ref = convolve_reflect(rgb[..., ch].astype(np.float32), psf)
        np.testing.assert_array_equal(blurred[..., ch], np.clip(np.rint(ref), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("axes", [None, "SYX"])
def test_an_rgba_images_alpha_is_copied_and_its_colours_blur_and_noise_like_the_rgb_image(axes):
    """deblur() keeps alpha (opacity, not an image); synthetic blur did blur and noise it, which then made
    deblur() warn that the blurred alpha looked like a fourth image channel."""
    rng = np.random.default_rng(2)
    rgba = rng.uniform(0, 255, (32, 32, 4)).astype(np.uint8)
    rgba[..., 3] = 0
    rgba[8:24, 8:24, 3] = 255  # a sharp transparency edge
    if axes == "SYX":
        rgba = np.moveaxis(rgba, -1, 0)
    blurred, _ = synthesize_blur(rgba, "motion", noise=50, seed=3, axes=axes)
    colours = rgba[:3] if axes == "SYX" else rgba[..., :3]
    alpha = (lambda a: a[3]) if axes == "SYX" else (lambda a: a[..., 3])
    np.testing.assert_array_equal(alpha(blurred), alpha(rgba))
    rgb_blurred, _ = synthesize_blur(colours, "motion", noise=50, seed=3, axes=axes and "SYX")
    np.testing.assert_array_equal(blurred[:3] if axes == "SYX" else blurred[..., :3], rgb_blurred)


def test_noise_on_an_image_with_no_positive_intensity_is_refused_not_silently_skipped():
    negative = -1 - np.random.default_rng(3).random((32, 32))  # e.g. background-subtracted, all below zero
    with pytest.raises(InputError, match=r"none \(it is <= 0 everywhere\).*image - image.min\(\)"):
        synthesize_blur(negative, "gaussian", noise=100, seed=0)
    blurred, _ = synthesize_blur(negative, "gaussian", seed=0)  # without noise it is fine
    assert blurred.shape == negative.shape
    partly = negative + 1.5  # some positive signal: shot noise on it, the negative part noise-free
    noisy, _ = synthesize_blur(partly, "gaussian", strength=1.0, noise=100, seed=0)
    clean, _ = synthesize_blur(partly, "gaussian", strength=1.0, seed=0)
    assert not np.array_equal(noisy[clean > 0], clean[clean > 0])


def test_integer_output_is_rounded_and_clipped_not_wrapped():
    sharp = np.zeros((32, 32), np.uint8)
    sharp[10:20, 10:20] = 255
    noise = {"photons": 5.0, "read_noise": 3.0}  # strong noise: values beyond 0..255 before clipping
    blurred, _ = synthesize_blur(sharp, "gaussian", strength=1.0, noise=noise, seed=0)
    as_float, _ = synthesize_blur(sharp.astype(np.float32), "gaussian", strength=1.0, noise=noise, seed=0)
    assert as_float.max() > 255 and as_float.min() < 0  # the test really exercises clipping
    assert blurred.dtype == np.uint8
    np.testing.assert_array_equal(blurred, np.clip(np.rint(as_float), 0, 255).astype(np.uint8))


def test_noise_statistics_follow_photon_count():
    flat = np.full((128, 128), 1000.0)
    blurred, _ = synthesize_blur(flat, "gaussian", strength=1.0, noise={"photons": 100.0, "read_noise": 0.0}, seed=3)
    # 100 photons at the 99.9th percentile -> Poisson: relative std 1/sqrt(100) = 10 %
    assert blurred.mean() == pytest.approx(1000.0, rel=0.01)
    assert blurred.std() == pytest.approx(100.0, rel=0.05)
    blurred, _ = synthesize_blur(flat, "gaussian", strength=1.0, noise={"photons": 100.0, "read_noise": 10.0}, seed=3)
    # variance adds up: sqrt(100 + 10^2) photons = 14.1 % of the signal
    assert blurred.std() == pytest.approx(1000.0 * np.sqrt(200) / 100, rel=0.05)


def test_noise_realistic_and_params():
    img = np.full((32, 32), 200, np.uint16)
    blurred, _psf, params = synthesize_blur_with_params(img, "motion", noise="realistic", seed=7)
    json.dumps(params)
    assert 30 <= params["noise"]["photons"] <= 1000 and 1 <= params["noise"]["read_noise"] <= 4
    assert blurred.std() > 0
    blurred2, _, params2 = synthesize_blur_with_params(img, "motion", noise="realistic", seed=7)
    np.testing.assert_array_equal(blurred, blurred2)
    assert params == params2
    _, _, params3 = synthesize_blur_with_params(img, "motion", noise="realistic", seed=8)
    assert params3 != params


def test_custom_psf_array_and_apply_psf():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 100, (20, 24)).astype(np.float32)
    kernel = np.ones((3, 5))
    blurred, psf = synthesize_blur(img, kernel)
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(blurred, apply_psf(img, kernel), rtol=1e-6)
    ref = ndimage.uniform_filter(img.astype(np.float64), size=(3, 5), mode="mirror")
    np.testing.assert_allclose(blurred, ref, rtol=1e-4)


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((16, 16), bool), {}, "boolean"),
        (np.zeros((16, 16), complex), {}, "complex"),
        (np.full((16, 16), np.nan), {}, "NaN"),
        (np.pad(np.full((1, 1), np.nan, np.float32), ((3, 12), (9, 6))), {}, "NaN"),
        (np.pad(np.full((2, 1, 1), np.inf), ((1, 0), (15, 0), (0, 15))), {}, "infinite"),
        (np.pad(np.full((1, 1), -np.inf, np.float16), ((0, 15), (4, 11))), {}, "infinite"),
        (np.zeros((0, 16)), {}, "empty"),
        (np.zeros((16, 7)), {}, "at least 8"),
        (np.zeros(16), {}, "2 dimensions"),
        (np.zeros((16, 16)), {"kind": "zoom"}, "kind"),
        (np.zeros((16, 16)), {"strength": 0}, "strength"),
        (np.zeros((16, 16)), {"strength": -2.0}, "strength"),
        (np.zeros((16, 16)), {"noise": "loud"}, "noise"),
        (np.zeros((16, 16)), {"noise": {"photons": -1}}, "photons"),
        (np.zeros((16, 16)), {"noise": {"photons": 10, "gain": 2}}, "noise"),
        (np.zeros((16, 16)), {"axes": "ZYX"}, "axes"),
        (np.zeros((16, 16)), {"kind": np.zeros((3, 3))}, "PSF"),
        (np.zeros((16, 16)), {"kind": ["motion"]}, "one blur kind per call"),  # a list of kinds, not a PSF
        (np.zeros((16, 16)), {"seed": -1}, "seed must be an integer >= 0"),
        (np.zeros((16, 16)), {"seed": 1.5}, "seed must be an integer >= 0"),
        (np.zeros((16, 16)), {"noise": {"photons": "a"}}, "'photons' must be one number"),
        (np.zeros((16, 16)), {"noise": {"photons": (10, 100)}}, "'photons' must be one number"),
        (np.zeros((16, 16)), {"noise": 1e30}, "photons' must be > 0 and <="),
        (np.zeros((16, 16)), {"kind": "motion", "strength": 1e6}, "at most the image's larger side"),
    ],
)
def test_synthesize_rejects_bad_input(image, kwargs, match):
    with pytest.raises(InputError, match=match):
        synthesize_blur(image, **kwargs)


def test_numpy_scalars_are_numbers_like_python_ones():
    image = np.random.default_rng(0).random((32, 32))
    a = synthesize_blur(image, "motion", strength=np.int64(5), noise=np.float32(100), seed=np.int64(3))
    b = synthesize_blur(image, "motion", strength=5, noise=100.0, seed=3)
    np.testing.assert_array_equal(a[0], b[0])


def test_a_psf_given_by_name_to_deconvolution_is_explained():
    from napari_deblurgan import richardson_lucy

    with pytest.raises(InputError, match="got the string 'gaussian'"):
        richardson_lucy(np.ones((16, 16)), "gaussian")


def test_airy_is_a_kind_as_in_finetune():
    """finetune's blur kinds include "airy"; synthesize_blur takes the same name."""
    image = np.random.default_rng(0).random((48, 48))
    for seed in range(4):
        _, psf, params = synthesize_blur_with_params(image, "airy", seed=seed)
        assert params["kind"] == "defocus" and params["model"] == "airy"
        assert psf.shape[0] % 2 == 1 and psf.shape == psf.T.shape
    # the "defocus" stream is unchanged by the new kind: disk and Airy still alternate at random
    models = {synthesize_blur_with_params(image, "defocus", seed=seed)[2]["model"] for seed in range(12)}
    assert models == {"disk", "airy"}


@pytest.mark.parametrize("axes", ["ZYX", "ZYXC", "YX"])
@pytest.mark.parametrize("read_noise", [0.0, 2.5])
def test_noise_on_a_stack_draws_what_the_whole_stack_did(axes, read_noise):
    """Stacks are blurred and noised plane by plane, but with the whole stack's draws: one gain from the
    stack's 99.9th percentile, all the Poisson draws then all the Gaussian ones, in plane order, and the
    generator left where the whole-stack noise left it (seeds reproduce what they did before)."""
    shape = {"ZYX": (5, 24, 20), "ZYXC": (3, 24, 20, 2), "YX": (24, 20)}[axes]
    sharp = (np.random.default_rng(0).random(shape) * 3000).astype(np.uint16)
    psf = gaussian_psf(1.5)
    noise = {"photons": 40.0, "read_noise": read_noise}
    moved = np.moveaxis(sharp, (axes.index("Y"), axes.index("X")), (-2, -1))
    planes = moved.reshape(-1, *moved.shape[-2:])
    whole = np.stack([convolve_reflect(p.astype(np.float32), psf.astype(np.float32)) for p in planes])
    expected_rng = np.random.default_rng(9)
    noisy = add_poisson_gaussian_noise(whole, 40.0, read_noise, expected_rng)
    expected = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    expected = np.moveaxis(expected.reshape(moved.shape), (-2, -1), (axes.index("Y"), axes.index("X")))
    rng = np.random.default_rng(9)
    blurred, _ = synthesize_blur(sharp, psf, noise=noise, seed=rng, axes=axes)
    np.testing.assert_array_equal(blurred, expected)
    assert rng.random() == expected_rng.random()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 9, 11), (7, 40, 33), (2, 1000, 3)])
def test_stack_percentile_is_numpys(dtype, shape):
    rng = np.random.default_rng(shape[1])
    stack = rng.normal(size=shape).astype(dtype)
    stack[0, :2] = stack.max()  # ties at the top
    for q in (99.9, 99.0, 50.0, 100.0):
        value, maximum = synthesize_module._stack_percentile(iter(stack), stack.size, q)
        assert value == float(np.percentile(stack, q)) and maximum == float(stack.max())


@pytest.mark.parametrize(
    ("axes", "noise"),
    [("ZYX", None), ("ZYX", "realistic"), ("ZYXC", {"photons": 80.0, "read_noise": 0.0}), ("ZYX", "apply_psf")],
)
def test_synthesize_memory_does_not_grow_with_the_stack(axes, noise, numpy_peak):
    """Synthetic blur works plane by plane: a stack 4x larger needs its larger result and nothing else (it made
    whole-stack float copies: 6x the input without noise and 14x with it, for a uint16 stack)."""

    def peak(planes: int) -> tuple[int, int]:
        shape = (planes, 128, 128) if axes == "ZYX" else (planes // 2, 128, 128, 2)
        sharp = (np.random.default_rng(1).random(shape) * 3000).astype(np.uint16)
        if noise == "apply_psf":
            return numpy_peak(lambda: apply_psf(sharp, gaussian_psf(1.5), axes=axes)), sharp.nbytes
        return numpy_peak(
            lambda: synthesize_blur(sharp, "gaussian", strength=1.5, noise=noise, seed=0, axes=axes)
        ), sharp.nbytes

    small, small_bytes = peak(6)
    large, large_bytes = peak(24)
    extra_input = large_bytes - small_bytes
    # the result grows with the input (same dtype): anything beyond that must be a small fraction of it
    assert large - small < 1.25 * extra_input, (small, large, extra_input)


@pytest.mark.parametrize("noise", [None, {"photons": 200.0, "read_noise": 1.0}])
@pytest.mark.parametrize("value", [float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max)])
def test_a_no_data_border_stays_no_data_and_out_of_the_blur(noise, value):
    """A border at float32's largest value ("no data") made synthesize_blur's FFT overflow: NaN everywhere.
    It is filled (the plane's low percentile) for the blur and comes back unchanged; far from it the blurred
    image is the one without the border."""
    rng = np.random.default_rng(0)
    sharp = ndimage.gaussian_filter(rng.random((96, 96)), 1).astype(np.float32)
    sharp /= sharp.max()
    with_border = sharp.copy()
    with_border[:, :10] = value
    with np.errstate(all="raise"):
        blurred, psf = synthesize_blur(with_border, "gaussian", strength=2.0, seed=0, noise=noise)
    assert np.array_equal(blurred[:, :10], with_border[:, :10])
    assert np.isfinite(blurred).all() and blurred[:, 10:].min() >= 0.0 and blurred[:, 10:].max() < 1.5
    if noise is None:
        clean, _ = synthesize_blur(sharp, "gaussian", strength=2.0, seed=0)
        np.testing.assert_allclose(blurred[:, 30:], clean[:, 30:], atol=1e-5)
        np.testing.assert_allclose(apply_psf(with_border, psf)[:, 30:], clean[:, 30:], atol=1e-5)
        assert np.array_equal(apply_psf(with_border, psf)[:, :10], with_border[:, :10])


def test_synthesize_blur_warns_as_deblur_does_when_inferred_alpha_looks_like_an_image():
    """deblur() warns that a 4th channel of many values, taken as RGBA alpha, is kept, not deblurred;
    synthesize_blur() kept it silently."""
    rng = np.random.default_rng(4)
    channels = rng.uniform(0, 255, (32, 32, 4)).astype(np.uint8)  # a channels-last 4-channel image
    with pytest.warns(UserWarning, match=r"taken as RGBA.*kept as opacity and not blurred.*axes='YXC'") as caught:
        blurred, _ = synthesize_blur(channels, "gaussian", strength=1.5, seed=0)
    assert caught[0].filename == __file__  # the caller's line
    np.testing.assert_array_equal(blurred[..., 3], channels[..., 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synthesize_blur(channels, "gaussian", strength=1.5, seed=0, axes="YXS")  # said: no warning
        mask = channels.copy()
        mask[..., 3] = np.where(mask[..., 3] > 127, 255, 0)  # opacity: no warning
        synthesize_blur(mask, "gaussian", strength=1.5, seed=0)
    all_four, _ = synthesize_blur(channels, "gaussian", strength=1.5, seed=0, axes="YXC")
    assert not np.array_equal(all_four[..., 3], channels[..., 3])  # a C axis of 4: four channels blurred


def test_an_even_sized_psf_is_warned_once_per_call():
    """The docstring's "give it odd sides" is also a warning (the category wiener and richardson_lucy raise): a
    stack of planes says it once; an odd PSF says nothing."""
    import napari_deblurgan as ndg

    stack = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synthesize_blur(stack, np.ones((5, 4)), axes="ZYX")
    said = [str(w.message) for w in caught if issubclass(w.category, ndg.EvenPSFWarning)]
    assert len(said) == 1 and "blurred image is shifted by half a pixel along X" in said[0], said
    # a refused call says only what to change: the warning comes after every argument is checked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="noise"):
            synthesize_blur(stack, np.ones((5, 4)), axes="ZYX", noise="bogus")
        with pytest.raises(InputError, match="<= 0 everywhere"):
            synthesize_blur(np.zeros_like(stack), np.ones((5, 4)), axes="ZYX", noise="realistic")
    assert [w for w in caught if issubclass(w.category, ndg.EvenPSFWarning)] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synthesize_blur(stack, np.ones((5, 5)), axes="ZYX")


def test_integer_results_are_rounded_to_nearest_not_truncated():
    # apply_psf casts its float result to the image's dtype: 0.2 * 4 + ... = 2.4 and 1.6 both round to 2
    # (truncation would give 2 and 1)
    image = np.zeros((16, 16), np.uint8)
    image[:, ::2] = 4
    psf = np.array([[0.2, 0.6, 0.2]])
    out = apply_psf(image, psf)
    expected = np.rint(convolve_reflect(image.astype(np.float64), psf))
    assert set(np.unique(expected).tolist()) == {2.0}  # the case really rounds 1.6 up
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_motion_jumps_happen_as_often_whatever_the_number_of_steps():
    # Without shake or pull the walk turns only at impulsive jumps (a reversal, pi +- 0.5): a walk of 256 steps
    # must jump as often as the reference's 2000-step walk (the per-step rate scales with the step ratio)
    from napari_deblurgan.blur.psf import motion_trajectory

    def mean_jumps(steps: int) -> float:
        counts = []
        for seed in range(40):
            x = motion_trajectory(
                np.random.default_rng(seed), num_steps=steps, anxiety=0.01, inertia=0.0, shake=0.0, impulsive=0.2
            )
            v = np.diff(x)
            turn = np.abs(np.angle(v[1:] / v[:-1]))
            counts.append(int((turn > np.pi / 2).sum()))
        return float(np.mean(counts))

    reference = mean_jumps(2000)  # 1999 steps x 0.2 x 0.01 = 4 jumps on average
    assert 2.5 < reference < 6
    assert mean_jumps(256) == pytest.approx(reference, rel=0.35)


def test_a_motion_psfs_trajectory_seed_reproduces_it():
    # random_psf's params are the recipe: motion_psf with them (and the trajectory seed) gives the same kernel
    for seed in range(3):
        psf, params = random_psf("motion", seed, strength=9.0)
        again = motion_psf(
            params["length_px"],
            params["trajectory_seed"],
            exposure=params["exposure"],
            anxiety=params["anxiety"],
            inertia=params["inertia"],
            shake=params["shake"],
            impulsive=params["impulsive"],
        )
        np.testing.assert_array_equal(psf, again)


def test_noise_gain_is_set_by_the_99_9th_percentile():
    # 81 of 16384 pixels (0.5 %) at 4000 on a floor of 1000: the 99.9th percentile is 4000, so 100 photons there
    # leave the floor 25 photons: relative noise 20 % (the 99th percentile, 1000, would give 10 %)
    image = np.full((128, 128), 1000.0)
    image[:9, :9] = 4000.0
    delta = np.ones((1, 1))
    blurred, _ = synthesize_blur(image, delta, noise={"photons": 100.0}, seed=1)
    floor = blurred[20:, 20:]
    assert floor.mean() == pytest.approx(1000.0, rel=0.02)
    assert floor.std() == pytest.approx(1000.0 / np.sqrt(25.0), rel=0.05)


def test_the_negative_part_of_a_float_image_keeps_its_value_under_noise():
    # only positive intensities are counted as photons: a negative region comes back as it was, not as 0
    image = np.full((64, 64), -5.0)
    image[:, 32:] = 100.0
    blurred, _ = synthesize_blur(image, np.ones((1, 1)), noise={"photons": 50.0, "read_noise": 0.0}, seed=0)
    np.testing.assert_allclose(blurred[:, :32], -5.0, atol=1e-9)
    assert blurred[:, 32:].std() > 1.0  # the positive part is noisy

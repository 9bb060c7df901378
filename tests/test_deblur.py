"""deblur(): dtypes, axes, channels, dask laziness, progress, cancel, and one clear error per bad input."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan import Cancelled, InputError, ModelFileError, create_model, deblur  # noqa: E402

TINY = {"width": 4, "depth": 2, "n_blocks": 1}


@pytest.fixture(scope="module")
def model():
    return create_model("unet_lite", channels=1, seed=0, **TINY)


@pytest.fixture(scope="module")
def rgb_model():
    return create_model("unet_lite", channels=3, seed=0, **TINY)


def _image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.random(shape)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return (info.min + values * (min(info.max, 60000) - info.min)).astype(dtype)
    return (values * 100 - 20).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "int32", "float16", "float32", "float64"])
def test_same_shape_and_dtype_and_input_untouched(model, dtype):
    image = _image((40, 36), dtype)
    before = image.copy()
    out = deblur(image, model, device="cpu")
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_array_equal(image, before)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        assert out.min() >= info.min and out.max() <= info.max
    assert np.isfinite(out.astype(np.float64)).all()


def test_output_is_in_the_input_units(model):
    """Percentile normalisation is inverted: an identity-like network returns the input's intensities."""
    identity = create_model("unet_lite", channels=1, seed=0, **TINY)
    with torch.no_grad():
        identity.generator.tail.weight.zero_()
        identity.generator.tail.bias.zero_()
    image = _image((48, 40), "float32") * 37 + 5000
    np.testing.assert_allclose(deblur(image, identity, device="cpu"), image, rtol=1e-5, atol=1e-2)
    image16 = _image((48, 40), "uint16")
    np.testing.assert_array_equal(deblur(image16, identity, device="cpu"), image16)


def test_a_constant_plane_comes_back_unchanged(model, rgb_model):
    """A flat plane has nothing to deblur: it came back as the network's residual on a flat input, about
    +-0.01 around the constant (an all-zero float32 image gave values of +-0.01), in float images visibly."""
    for value in (0.0, 1000.5, -3.25):
        flat = np.full((40, 36), value, np.float32)
        np.testing.assert_array_equal(deblur(flat, model, device="cpu"), flat)
    np.testing.assert_array_equal(deblur(np.zeros((40, 36)), model, device="cpu", normalize="local"), 0.0)
    # in a stack only the flat plane is left alone, and the progress still counts its tiles
    stack = np.stack([np.zeros((40, 36), np.float32), _image((40, 36), "float32")])
    seen = []
    out = deblur(stack, model, axes="ZYX", device="cpu", progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(out[0], 0.0)
    assert not np.array_equal(out[1], stack[1])
    assert seen[-1][0] == seen[-1][1] == len(seen)
    # a joint (RGB) model: the flat channel stays flat, the others are deblurred together as before
    rgb = _image((40, 36, 3), "float32")
    rgb[..., 1] = 7.0
    out = deblur(rgb, rgb_model, axes="YXS", device="cpu")
    np.testing.assert_array_equal(out[..., 1], 7.0)
    assert not np.array_equal(out[..., 0], rgb[..., 0])


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((2, 3, 32, 30), "TZYX"),
        ((3, 32, 30), "CYX"),
        ((32, 30, 3), "YXS"),
        ((2, 3, 2, 32, 30), "TCZYX"),
        ((32, 2, 30), "YZX"),
    ],
)
def test_axes_every_plane_processed_like_a_2d_image(model, shape, axes):
    image = _image(shape, "uint16", seed=1)
    out = deblur(image, model, axes=axes, device="cpu")
    assert out.shape == image.shape and out.dtype == image.dtype
    # every YX plane (and channel) equals deblurring that plane alone
    moved_in = np.moveaxis(image, [axes.index("Y"), axes.index("X")], [-2, -1]).reshape(-1, 32, 30)
    moved_out = np.moveaxis(out, [axes.index("Y"), axes.index("X")], [-2, -1]).reshape(-1, 32, 30)
    for plane_in, plane_out in zip(moved_in[::2], moved_out[::2], strict=True):
        np.testing.assert_array_equal(deblur(plane_in, model, device="cpu"), plane_out)


def test_axes_inferred_from_shape(model):
    assert deblur(_image((3, 32, 30), "uint8"), model, device="cpu").shape == (3, 32, 30)  # ZYX
    assert deblur(_image((32, 30, 3), "uint8"), model, device="cpu").shape == (32, 30, 3)  # YXS
    with pytest.raises(InputError, match="pass axes"):
        deblur(_image((2, 2, 2, 32, 30), "uint8"), model, device="cpu")


def test_multichannel_model_takes_channels_together(rgb_model, model):
    rgb = _image((40, 36, 3), "uint8")
    out = deblur(rgb, rgb_model, device="cpu")
    assert out.shape == rgb.shape and out.dtype == np.uint8
    with pytest.raises(InputError, match="takes 3 channels"):
        deblur(_image((40, 36), "uint8"), rgb_model, device="cpu")
    with pytest.raises(InputError, match="takes 3 channels"):
        deblur(_image((2, 40, 36), "uint8"), rgb_model, axes="CYX", device="cpu")


def test_dask_input_is_lazy_and_matches_numpy(model):
    da = pytest.importorskip("dask.array")
    image = _image((4, 40, 36), "uint16", seed=2)
    calls = []
    lazy = deblur(da.from_array(image, chunks=(1, 20, 36)), model, device="cpu", progress=lambda d, t: calls.append(d))
    assert isinstance(lazy, da.Array) and not calls  # nothing computed yet
    np.testing.assert_array_equal(lazy.compute(), deblur(image, model, device="cpu"))
    assert sorted(calls) == [1, 2, 3, 4]


def test_dask_progress_restarts_when_blocks_are_computed_again(model):
    """napari computes blocks again as the user moves through a stack: each pass counts from 1 to total."""
    da = pytest.importorskip("dask.array")
    image = _image((3, 32, 32), "uint16", seed=3)
    calls = []
    lazy = deblur(
        da.from_array(image, chunks=(1, 32, 32)), model, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    lazy.compute(scheduler="synchronous")
    lazy.compute(scheduler="synchronous")
    assert calls == [(1, 3), (2, 3), (3, 3)] * 2


@pytest.mark.parametrize("dtype", ["uint32", "int32", "int64", "uint64"])
def test_wide_integers_clip_at_the_top_instead_of_wrapping(dtype):
    """A network that brightens everything pushes the brightest pixels past the dtype's maximum: they must
    come back at the top of the range, not wrap to 0 or to the most negative value (float32 rounds
    2**31 - 1 up to 2**31, and float64 rounds 2**63 - 1 up to 2**63)."""
    brighten = create_model("unet_lite", channels=1, seed=0, **TINY)
    with torch.no_grad():
        brighten.generator.tail.weight.zero_()
        brighten.generator.tail.bias.fill_(0.5)  # + half the normalised range everywhere
    info = np.iinfo(dtype)
    yy, xx = np.mgrid[:48, :48]
    image = (np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / 72.0) * 0.999 * float(info.max)).astype(dtype)
    out = deblur(image, brighten, device="cpu")
    top = out[24, 24]
    assert top >= image[24, 24] and info.max - top <= info.max // 2**52  # at the top, up to float64 rounding
    assert (out >= image).all()


def test_cast_like_clips_float32_and_float64_values_to_wide_integer_ranges():
    from napari_deblurgan.normalization import cast_like

    for dtype in (np.int32, np.uint32, np.int64, np.uint64):
        info = np.iinfo(dtype)
        for ftype in (np.float32, np.float64):
            values = np.array([-1e30, float(info.min), 0.0, float(info.max), 1e30], dtype=ftype)
            out = cast_like(values, np.dtype(dtype))
            assert out[0] == info.min and out[1] == info.min and out[2] == 0
            assert out[3] > info.max // 2 and out[4] > info.max // 2  # not wrapped


def test_float64_and_wide_integer_precision_survives(model):
    """An offset far above the signal's range: normalising in float32 would leave a few distinct values."""
    identity = create_model("unet_lite", channels=1, seed=0, **TINY)
    with torch.no_grad():
        identity.generator.tail.weight.zero_()
        identity.generator.tail.bias.zero_()
    fine = 1e4 + 1e-3 * np.random.default_rng(0).random((40, 36))
    np.testing.assert_allclose(deblur(fine, identity, device="cpu"), fine, rtol=0, atol=1e-9)
    counts = (1_000_000_000 + np.random.default_rng(1).integers(0, 60_000, (40, 36))).astype(np.uint32)
    np.testing.assert_array_equal(deblur(counts, identity, device="cpu"), counts)
    tiny = np.random.default_rng(2).random((40, 36)) * 1e-40  # below float32's normal range
    np.testing.assert_allclose(deblur(tiny, identity, device="cpu"), tiny, rtol=1e-6, atol=0)
    with pytest.raises(InputError, match="too small to normalise"):
        deblur(np.random.default_rng(3).random((40, 36)) * 1e-320, identity, device="cpu")


@pytest.mark.parametrize("normalize", ["plane", "local"])
def test_float32_planes_of_extreme_range_deblur_like_their_rescaled_copy_not_to_nan(model, normalize):
    """Normalisation makes deblur() scale-invariant: a float32 plane spanning 1e-40 (below float32's normal
    numbers) or reaching +-3e38 restores like a rescaled copy of itself. Both came back all NaN, with exit
    status 0 from the CLI, when 1 / span or the offset overflowed float32."""
    base = np.random.default_rng(4).random((40, 36))
    reference = deblur(base.astype(np.float32), model, device="cpu", normalize=normalize).astype(np.float64)
    for factor in (1e-40, 3e38):
        image = (base * factor).astype(np.float32)
        out = deblur(image, model, device="cpu", normalize=normalize)
        assert out.dtype == np.float32 and np.isfinite(out).all(), factor
        np.testing.assert_allclose(out / factor, reference, rtol=1e-3, atol=2e-3 if factor < 1 else 1e-5)
    wide = (base * 2 - 1) * 3e38  # +-3e38: the span itself exceeds float32's largest value
    out = deblur(wide.astype(np.float32), model, device="cpu", normalize=normalize)
    expected = deblur(base * 2 - 1, model, device="cpu", normalize=normalize) * 3e38
    big = float(np.finfo(np.float32).max)
    # where the restoration exceeds float32's largest value, it is clipped to it
    np.testing.assert_allclose(out / 3e38, np.clip(expected, -big, big) / 3e38, rtol=1e-3, atol=1e-5)


def test_a_range_float64_cannot_hold_is_one_error(model):
    with pytest.raises(InputError, match=r"too large to normalise.*divide it by a power of ten"):
        deblur((np.random.default_rng(5).random((40, 36)) * 2 - 1) * 1.5e308, model, device="cpu")


@pytest.mark.parametrize("normalize", ["plane", "local"])
def test_a_sentinel_pixel_comes_back_unchanged_and_leaves_its_neighbours_alone(model, normalize):
    """'No data' marked with float32's largest value: the network overflowed into NaN around it. It is taken as
    missing (the low percentile, to the network) and returned as it was."""
    image = np.random.default_rng(6).random((48, 48)).astype(np.float32)
    low = np.float32(np.percentile(image, 1))
    with_sentinel = image.copy()
    with_sentinel[10, 10] = np.finfo(np.float32).max
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warnings either
        out = deblur(with_sentinel, model, device="cpu", normalize=normalize)
    assert out[10, 10] == with_sentinel[10, 10] and np.isfinite(out).all()
    image[10, 10] = low  # what the network saw there
    expected = deblur(image, model, device="cpu", normalize=normalize)
    out[10, 10] = expected[10, 10]
    np.testing.assert_allclose(out, expected, atol=0.02)  # (one pixel moves the upper percentile a little)


@pytest.mark.parametrize("normalize", ["plane", "local"])
@pytest.mark.parametrize("sign", [1, -1])
def test_a_wide_no_data_border_is_missing_not_the_images_range(model, normalize, sign):
    """A "no data" border at +-float32's largest value wider than the upper percentile's share (0.2 %) became
    the percentile itself: the rest of the plane was squeezed to ~0 and came back as values of 1e36. Sentinels
    are recognised by magnitude, however many there are."""
    image = (np.random.default_rng(16).random((48, 64)) * 200 + 10).astype(np.float32)
    with_border = image.copy()
    with_border[:, :10] = sign * np.finfo(np.float32).max  # 21 % of the plane
    out = deblur(with_border, model, device="cpu", normalize=normalize)
    np.testing.assert_array_equal(out[:, :10], with_border[:, :10])
    image[:, :10] = np.percentile(image[:, 10:], 1)  # what the network saw there
    expected = deblur(image, model, device="cpu", normalize=normalize)
    np.testing.assert_allclose(out[:, 10:], expected[:, 10:], rtol=1e-3, atol=0.2)  # of a 200 range


@pytest.mark.parametrize("span", [1.0, 1e12])
def test_sentinels_are_missing_however_wide_the_planes_range(model, span):
    """A plane spanning 1e12 scales a float32-max sentinel to 3e26 normalised units, below the limit at which
    pixels count as missing: it must be recognised by its magnitude."""
    image = (np.random.default_rng(17).random((40, 40)) * span).astype(np.float32)
    with_sentinel = image.copy()
    with_sentinel[20, 20] = np.finfo(np.float32).max
    out = deblur(with_sentinel, model, device="cpu")
    assert out[20, 20] == with_sentinel[20, 20]
    image[20, 20] = np.percentile(image, 1)
    expected = deblur(image, model, device="cpu")
    out[20, 20] = expected[20, 20]
    np.testing.assert_allclose(out / span, expected / span, atol=0.02)


def test_bright_beads_on_a_tiny_float_floor_are_restored_not_clipped(model):
    """Huge dynamic range is legal: beads at 1e3 on a floor of 1e-7 are 1e10 in normalised units. A limit of
    1e6 there once clipped them to 0.3."""
    rng = np.random.default_rng(7)
    image = (rng.random((64, 64)) * 1e-7).astype(np.float32)
    ys, xs = np.array([10, 20, 40, 50]), np.array([50, 12, 30, 44])  # 0.1 % of the pixels: above the 99.8th percentile
    image[ys, xs] = 1000
    assert np.percentile(image, 99.8) < 1e-6
    out = deblur(image, model, device="cpu")
    assert np.isfinite(out).all()
    assert out[ys, xs].min() > 100, out[ys, xs]


def test_a_float16_batch_that_overflows_is_computed_again_in_float32(model, monkeypatch):
    """float16 autocast (MPS, GPUs without bfloat16) overflows beyond 65504, which a bright outlier's
    activations can reach. The CPU's float16 autocast does not overflow where a GPU's does, so the overflow is
    simulated: the autocast pass returns inf, and the batch must be recomputed without autocast."""
    from napari_deblurgan import devices
    from napari_deblurgan.inference import deblur as deblur_module

    image = np.random.default_rng(8).random((40, 36)).astype(np.float32)
    expected = deblur(image, model, device="cpu")
    monkeypatch.setattr(devices, "autocast_dtype", lambda device: torch.float16)
    forward = deblur_module.ensemble_forward
    passes: list[bool] = []

    def overflowing_in_float16(gen, x, **kwargs):
        passes.append(torch.is_autocast_enabled("cpu"))
        y = forward(gen, x, **kwargs)
        return y + float("inf") if passes[-1] else y

    monkeypatch.setattr(deblur_module, "ensemble_forward", overflowing_in_float16)
    out = deblur(image, model, device="cpu")
    assert passes == [True, False]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("architecture", ["unet_lite", "resnet9", "unet_fast"])
def test_every_convolution_runs_channels_last_on_the_cpu(architecture):
    """NHWC weights and activations (docs: faster on the CPU). A 1-channel model's first weight, (W, 1, k, k),
    counts as channels_last in either layout, and the check looked only at it: 1-channel unet_lite and resnet9
    kept every weight NCHW while their inputs were NHWC (measured 1.3-1.45x slower)."""
    small = {
        "unet_lite": {"width": 4, "depth": 2, "n_blocks": 1},
        "resnet9": {"width": 4, "n_blocks": 1},
        "unet_fast": {"width": 8, "depth": 2},
    }[architecture]
    model = create_model(architecture, 1, seed=0, **small)
    deblur(np.random.default_rng(9).random((40, 36)).astype(np.float32), model, device="cpu")
    weights = [p for p in model.generator.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_a_too_small_tile_size_gets_a_recommendation_that_works():
    """The minimum that the error recommends must itself be accepted with the default overlap, and small
    tiles that multiply the work get a warning that says by how much."""
    import re

    model = create_model("unet_fast", channels=1, seed=0)  # a shipped architecture: large receptive field
    image = _image((64, 64), "float32")
    with pytest.raises(InputError, match="tile_size 100 is too small") as info:
        deblur(image, model, tile_size=100, device="cpu")
    minimum = int(re.search(r"use tile_size >= (\d+)", str(info.value)).group(1))
    out = deblur(image, model, tile_size=minimum, device="cpu")
    np.testing.assert_allclose(out, deblur(image, model, device="cpu"), rtol=0, atol=1e-4)
    deblur(image, model, tile_size=np.int64(2 * minimum), batch_size=np.int64(2), device="cpu")


def test_the_small_tile_warning_states_the_work_on_these_planes():
    """The repeated work of small tiles depends on the plane: the warning's factor and tile count must be what
    the run then computes (it had said 144x, the limit on huge planes, for 25 tiles, 14x, on 512 px)."""
    import re

    model = create_model("unet_fast", channels=1, seed=0)
    image = _image((512, 512), "float32")
    tiles: list[tuple[int, ...]] = []
    hook = model.generator.register_forward_hook(lambda _m, inputs, _o: tiles.append(tuple(inputs[0].shape)))
    try:
        with pytest.warns(UserWarning, match="computes every pixel about") as record:
            deblur(image, model, tile_size=384, device="cpu")
    finally:
        hook.remove()
    warning = next(w for w in record if "computes every pixel" in str(w.message))
    assert warning.filename == __file__  # the caller of deblur()
    message = str(warning.message)
    factor, count = re.search(r"about (\d+) times on these 512 x 512 px planes \((\d+) tiles", message).groups()
    assert int(count) == sum(shape[0] for shape in tiles)
    from napari_deblurgan.inference.deblur import _PlaneRunner

    # the plane as the tiles cover it: the image with its context padding, rounded up to the stride
    runner = _PlaneRunner(model, device="cpu", tile_size=384, overlap=None, batch_size=None)
    hp, wp = runner.padded_shape(512, 512)
    computed = sum(shape[0] * shape[-2] * shape[-1] for shape in tiles)
    assert int(factor) == round(computed / (hp * wp))
    assert 4 < int(factor) < 40
    # large tiles: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deblur(image, model, tile_size=1024, device="cpu")


@pytest.mark.parametrize("joint", [False, True])
def test_rgba_keeps_its_alpha_and_deblurs_the_colours_as_rgb(model, rgb_model, joint):
    """Alpha is opacity: a binary mask must come back unchanged, not deblurred into 60 grey levels."""
    net = rgb_model if joint else model
    rgba = _image((40, 36, 4), "uint8", seed=4)
    rgba[..., 3] = np.where(np.arange(36) < 18, 255, 0)[None, :]
    out = deblur(rgba, net, axes="YXS", device="cpu")
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[..., :3], deblur(rgba[..., :3].copy(), net, axes="YXS", device="cpu"))


def test_progress_reports_every_batch(model):
    seen = []
    deblur(
        _image((2, 200, 200), "float32"),
        model,
        tile_size=96,
        batch_size=3,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert len(seen) > 2


def test_cpu_default_runs_one_tile_per_forward_pass(model):
    """On the CPU batching tiles gains no speed and holds another tile's activations (docs/benchmarks.md)."""
    shapes = []
    hook = model.generator.register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    try:
        deblur(_image((200, 200), "float32"), model, tile_size=96, device="cpu")
    finally:
        hook.remove()
    assert len(shapes) > 2 and all(s[0] == 1 for s in shapes), shapes


def test_cancel_stops_within_one_batch(model):
    stop = threading.Event()
    batches = []

    def progress(done, total):
        batches.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled):
        deblur(
            _image((3, 200, 200), "float32"),
            model,
            tile_size=96,
            batch_size=1,
            device="cpu",
            progress=progress,
            cancel=stop,
        )
    assert batches == [1, 2]
    with pytest.raises(Cancelled):
        deblur(_image((64, 64), "float32"), model, device="cpu", cancel=lambda: True)


def test_inference_runs_in_eval_mode_and_restores_the_mode():
    m = create_model("resnet9", channels=1, seed=0, width=4, n_blocks=1)
    modes = []
    m.generator.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    m.generator.train()
    deblur(_image((32, 32), "float32"), m, device="cpu")
    assert modes == [False] and m.generator.training


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((0, 10), np.float32), {}, "empty"),
        (np.zeros((10, 0, 10), np.float32), {}, "empty"),
        (np.zeros((7, 20), np.float32), {}, "at least 8x8"),
        (np.zeros(20, np.float32), {}, "at least 2 dimensions"),
        (np.zeros((20, 20), bool), {}, "dtype bool"),
        (np.zeros((20, 20), np.complex64), {}, "dtype complex64"),
        (np.zeros((20, 20), object), {}, "dtype object"),
        (np.zeros((2, 20, 20), np.float32), {"axes": "YX"}, "has 2 letters but the image has 3"),
        (np.zeros((2, 20, 20), np.float32), {"axes": "QYX"}, "unknown letter"),
        (np.zeros((2, 20, 20), np.float32), {"axes": "YYX"}, "repeats"),
        (np.zeros((2, 20, 20), np.float32), {"axes": "ZTY"}, "must contain both 'Y' and 'X'"),
        (np.zeros((20, 20), np.float32), {"tile_size": 16}, "tile_size 16 is too small"),
        (np.zeros((20, 20), np.float32), {"batch_size": True}, "batch_size must be a positive integer"),
        (np.zeros((20, 20), np.float32), {"tile_size": 128, "overlap": 128}, "must be smaller than tile_size"),
        (
            np.zeros((20, 20), np.float32),
            {"tile_size": 128, "overlap": 4999},
            r"^overlap \(4999 px, rounded up to a multiple of \d+ px: \d+ px\) must be smaller than tile_size",
        ),
        (np.zeros((20, 20), np.float32), {"device": "tpu"}, "unknown device|unsupported device"),
        (np.zeros((20, 20), np.float32), {"batch_size": 0}, "batch_size"),
        (np.zeros((20, 20), np.float32), {"context_padding": -4}, "context_padding must be >= 0"),
        (np.zeros((20, 20), np.float32), {"context_padding": 2.5}, "context_padding must be a whole number"),
        (np.zeros((20, 20), np.float32), {"context_padding": 100_000}, "more than the image plane's longest side"),
        (np.zeros((20, 20), np.float32), {"cancel": True}, "cancel must be a threading.Event"),
        (np.zeros((20, 20), np.float32), {"rgb": True}, "rgb=True needs a last axis of 3 or 4 samples"),
        (np.zeros((20, 20), np.float32), {"progress": 5}, "progress must be a function"),
    ],
)
def test_bad_input_one_clear_error(model, image, kwargs, match):
    with pytest.raises(InputError, match=match):
        deblur(image, model, **{"device": "cpu", **kwargs})


def test_nan_pixels_are_counted(model):
    image = np.ones((20, 20), np.float32)
    image[3, 4] = np.nan
    image[5, 6] = np.inf
    before = image.copy()
    with pytest.raises(InputError, match="2 NaN/inf"):
        deblur(image, model, device="cpu")
    np.testing.assert_array_equal(image, before)
    stack = np.ones((3, 20, 20), np.float32)
    stack[2, 5, 5] = stack[2, 6, 6] = np.nan
    stack[2, 7, 7] = -np.inf
    # an array in memory is checked whole: the count over the image, and the first plane holding one
    with pytest.raises(InputError, match=r"has 3 NaN/inf .* out of 1200 \(the first in plane Z=2\).*np\.nan_to_num"):
        deblur(stack.transpose(1, 0, 2), model, axes="YZX", device="cpu")  # a non-contiguous view
    # a dask block is checked as it is computed: the error names the plane and counts its NaN/inf pixels
    da = pytest.importorskip("dask.array")
    with pytest.raises(InputError, match="plane Z=2 has 3 NaN/inf"):  # named by its place in the whole stack
        deblur(da.from_array(stack, chunks=(1, 20, 20)), model, device="cpu").compute()


def test_nan_in_a_later_plane_of_an_array_in_memory_is_refused_before_any_work(model, tmp_path):
    """A NumPy array in memory is scanned whole up front (fast): a NaN in its last plane fails at once, not
    after the planes before it were deblurred (minutes wasted in the panel or the CLI)."""
    stack = _image((4, 40, 36), "float32", seed=7)
    stack[3, 3, 4] = np.nan
    calls = []
    with pytest.raises(InputError, match=r"the image has 1 NaN/inf pixel\(s\) out of 5760 \(the first in plane Z=3\)"):
        deblur(stack, model, device="cpu", progress=lambda d, t: calls.append(d))
    assert not calls  # no plane was deblurred
    # the channel holding it is named too: a single-channel model deblurs each channel on its own
    czyx = _image((3, 2, 40, 36), "float32", seed=8)
    czyx[2, 1, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"out of 8640 \(the first in plane Z=2, C=1\)"):
        deblur(czyx, model, axes="ZCYX", device="cpu", progress=lambda d, t: calls.append(d))
    assert not calls
    # a memory map, even seen as a plain ndarray, is checked plane by plane (a whole scan reads the file)
    mapped = np.asarray(_nan_in_last_plane(tmp_path))
    assert type(mapped) is np.ndarray
    with pytest.raises(InputError, match=r"the image's plane Z=3 has 1 NaN/inf pixel\(s\) out of 1440;"):
        deblur(mapped, model, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == 3 * calls[-1][1] // 4


def test_a_dask_block_of_one_channel_names_its_channel_in_a_nan_error(model):
    """A single-channel model on ZCYX: dask blocks are one channel of one plane, and the error names both (it
    named the plane only, from a block that does not know which channel it is)."""
    da = pytest.importorskip("dask.array")
    czyx = _image((3, 2, 40, 36), "float32", seed=8)
    czyx[2, 1, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"the image's plane Z=2, C=1 has 1 NaN/inf pixel\(s\) out of 1440;"):
        deblur(da.from_array(czyx), model, axes="ZCYX", device="cpu").compute()
    # a plane of an array-like is read with all its channels: only the channel holding NaN is named and counted
    wrapped = PlaneReads(czyx, 2 * 40 * 36)
    with pytest.raises(InputError, match=r"the image's plane Z=2, C=1 has 1 NaN/inf pixel\(s\) out of 1440;"):
        deblur(wrapped, model, axes="ZCYX", device="cpu")


class PlaneReads:
    """An array-like over a NumPy stack as zarr and h5py arrays look (shape, dtype, ndim, tuple ``__getitem__``):
    records every key, refuses a read of more than ``plane_size`` pixels at once and refuses to be read whole
    through ``np.asarray`` (which a stack larger than the memory would exhaust it with)."""

    def __init__(self, array: np.ndarray, plane_size: int) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.plane_size = plane_size
        self.keys: list = []

    def __getitem__(self, key):
        self.keys.append(key)
        region = self._array[key]
        if region.size > self.plane_size:
            raise AssertionError(f"read {region.shape} at once ({key!r}), more than one plane")
        return np.array(region)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the array-like was read whole")


@pytest.mark.parametrize(
    ("shape", "axes", "joint", "plane"),
    [
        ((4, 40, 36), "ZYX", False, 40 * 36),
        ((2, 3, 40, 36), "CZYX", False, 2 * 40 * 36),  # a channel before Z: the plane's channels read together
        ((3, 40, 36, 3), "ZYXS", True, 40 * 36 * 3),
        ((2, 40, 36, 4), None, True, 40 * 36 * 4),  # RGBA inferred: the alpha check reads one plane's alpha
    ],
)
def test_an_array_like_is_read_one_plane_at_a_time_and_matches_numpy(model, rgb_model, shape, axes, joint, plane):
    image = _image(shape, "uint16", seed=5)
    wrapped = PlaneReads(image, plane)
    kwargs = {"axes": axes, "device": "cpu"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = deblur(wrapped, rgb_model if joint else model, **kwargs)
        expected = deblur(image, rgb_model if joint else model, **kwargs)
    assert type(out) is np.ndarray and out.dtype == image.dtype
    np.testing.assert_array_equal(out, expected)
    # the alpha check works on an array-like too (from one plane's alpha): the same warning for both
    assert sum("RGBA samples" in str(w.message) for w in caught) == (2 if axes is None else 0)
    assert all(isinstance(key, tuple) for key in wrapped.keys)
    planes = int(np.prod(shape)) // plane
    alpha_reads = 1 if axes is None else 0
    assert len(wrapped.keys) == planes + alpha_reads  # every plane read once


def test_a_zarr_array_is_deblurred_plane_by_plane(model, monkeypatch):
    zarr = pytest.importorskip("zarr")
    image = _image((3, 40, 36), "float32", seed=6)
    z = zarr.array(image, chunks=(1, 40, 36))

    def whole(self, *args, **kwargs):
        raise AssertionError("the zarr array was read whole")

    monkeypatch.setattr(type(z), "__array__", whole)
    out = deblur(z, model, device="cpu")
    monkeypatch.undo()
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, deblur(np.asarray(z), model, device="cpu"))


class ChunkedReads(PlaneReads):
    """:class:`PlaneReads` with zarr's ``chunks`` (and no limit on a read's size: what was read is checked)."""

    def __init__(self, array: np.ndarray, chunks: tuple[int, ...]) -> None:
        super().__init__(array, array.size)
        self.chunks = chunks


@pytest.mark.parametrize(
    ("shape", "axes", "chunks", "slab_planes", "reads"),
    [
        # a chunk 4 planes deep: read 4 planes at once, each chunk once
        ((8, 40, 36), "ZYX", (4, 40, 36), None, [(slice(0, 4),), (slice(4, 8),)]),
        # SLAB_BYTES holds 3 planes: slabs of 3 within each chunk, never across chunks
        ((8, 40, 36), "ZYX", (4, 40, 36), 3, [(slice(0, 3),), (slice(3, 4),), (slice(4, 7),), (slice(7, 8),)]),
        # chunks across T and Z: a slab of whole chunks over both, slab by slab
        ((2, 4, 40, 36), "TZYX", (2, 2, 20, 36), None, [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4))]),
        # SLAB_BYTES holds 2 planes: the outer axis gives up its depth first
        (
            (2, 4, 40, 36),
            "TZYX",
            (2, 2, 20, 36),
            2,
            [(slice(t, t + 1), slice(z, z + 2)) for t in (0, 1) for z in (0, 2)],
        ),
        # channels are in the plane: a chunk of all of them, 3 Z planes deep
        ((2, 3, 40, 36), "CZYX", (1, 3, 40, 36), None, [(slice(0, 3),)]),
        # chunks one plane deep: one plane per read (integer keys), as without chunks
        ((3, 40, 36), "ZYX", (1, 40, 36), None, [(0,), (1,), (2,)]),
    ],
)
def test_a_chunked_array_like_is_read_a_slab_of_whole_chunks_at_a_time(
    model, monkeypatch, shape, axes, chunks, slab_planes, reads
):
    """zarr arrays chunked across Z (OME-Zarr's usual layout) decoded a whole Z chunk for every plane read
    (64x the data for 64-deep chunks): now a slab of whole chunks is read at once, up to SLAB_BYTES."""
    from napari_deblurgan.inference import deblur as deblur_module

    image = _image(shape, "uint16", seed=9)
    if slab_planes is not None:  # ZYX and TZYX planes: 40 x 36 uint16 pixels
        monkeypatch.setattr(deblur_module, "SLAB_BYTES", slab_planes * 40 * 36 * 2)
    wrapped = ChunkedReads(image, chunks)
    out = deblur(wrapped, model, axes=axes, device="cpu")
    np.testing.assert_array_equal(out, deblur(image, model, axes=axes, device="cpu"))
    other = [i for i, a in enumerate(axes) if a in "TZ"]
    assert [tuple(key[i] for i in other) for key in wrapped.keys] == reads


def test_a_zarr_array_chunked_across_z_decodes_each_chunk_once(model):
    zarr = pytest.importorskip("zarr")
    store_type = getattr(getattr(zarr, "storage", None), "MemoryStore", None)
    if store_type is None or not hasattr(zarr, "create_array"):
        pytest.skip("needs zarr 3")

    class CountingStore(store_type):
        async def get(self, key, prototype=None, byte_range=None):
            if not key.endswith(".json"):
                chunk_reads.append(key)
            return await super().get(key, prototype, byte_range)

    chunk_reads: list[str] = []
    image = _image((8, 40, 36), "uint16", seed=10)
    z = zarr.create_array(store=CountingStore(), shape=image.shape, dtype=image.dtype, chunks=(4, 20, 36))
    z[...] = image
    chunk_reads.clear()
    out = deblur(z, model, axes="ZYX", device="cpu")
    np.testing.assert_array_equal(out, deblur(image, model, axes="ZYX", device="cpu"))
    # 2 x 2 chunks, each decoded once (plane by plane: every plane decoded both chunks it crosses, 16 reads)
    assert sorted(chunk_reads) == ["c/0/0/0", "c/0/1/0", "c/1/0/0", "c/1/1/0"]


def test_an_array_like_whose_indexing_gives_no_pixels_is_refused_clearly(model, tmp_path):
    """tifffile's TiffPageSeries has a NumPy dtype, a shape and __getitem__ (that gives pages, not pixels):
    it failed with a bare TypeError from deep inside the reader."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _image((3, 40, 36), "uint16", seed=11), photometric="minisblack")
    with (
        tifffile.TiffFile(path) as tif,
        pytest.raises(
            InputError, match=r"reading one plane of this TiffPageSeries failed \(TypeError.*pass its pixels as a NumPy"
        ) as caught,
    ):
        deblur(tif.series[0], model, axes="ZYX", device="cpu")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    class KeyedOnly:  # a mapping-like with a dtype and a shape: KeyError for a key it does not hold
        dtype, shape = np.dtype(np.uint16), (3, 40, 36)

        def __getitem__(self, key):
            return {"pixels": None}[str(key)]

    with pytest.raises(InputError, match=r"failed \(KeyError.*pass its pixels as a NumPy array or a dask array"):
        deblur(KeyedOnly(), model, axes="ZYX", device="cpu")


def _nan_in_last_plane(tmp_path, shape=(4, 40, 36)):
    stack = np.lib.format.open_memmap(tmp_path / "stack.npy", mode="w+", dtype=np.float32, shape=shape)
    stack[...] = _image(shape, "float32", seed=7)
    stack[-1, 3, 4] = np.nan
    stack.flush()
    return np.load(tmp_path / "stack.npy", mmap_mode="r")


def test_nan_in_the_last_plane_is_refused_when_that_plane_is_read(model, tmp_path):
    stack = _nan_in_last_plane(tmp_path)
    calls = []
    with pytest.raises(InputError, match=r"plane Z=3 has 1 NaN/inf pixel\(s\) out of 1440.*np\.nan_to_num"):
        deblur(stack, model, device="cpu", progress=lambda d, t: calls.append((d, t)))
    # the planes before it were deblurred (progress counted them), then the error: no result is returned
    assert calls and calls[-1][0] == 3 * calls[-1][1] // 4
    wrapped = PlaneReads(np.asarray(stack), 40 * 36)
    with pytest.raises(InputError, match="plane Z=3 has 1 NaN/inf"):
        deblur(wrapped, model, device="cpu")
    assert len(wrapped.keys) == 4


def test_cancel_set_before_the_call_stops_before_a_stack_is_read(model, tmp_path):
    stack = _nan_in_last_plane(tmp_path)
    stop = threading.Event()
    stop.set()
    calls = []
    # Cancelled, not the NaN of the last plane: the stack is not scanned up front
    with pytest.raises(Cancelled):
        deblur(stack, model, device="cpu", cancel=stop, progress=lambda d, t: calls.append(d))
    wrapped = PlaneReads(np.asarray(stack), 40 * 36)
    with pytest.raises(Cancelled):
        deblur(wrapped, model, device="cpu", cancel=stop, progress=lambda d, t: calls.append(d))
    assert len(wrapped.keys) <= 1 and not calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU exists")
def test_cuda_asked_where_none_exists(model):
    with pytest.raises(InputError, match="CUDA is not available"):
        deblur(np.zeros((20, 20), np.float32), model, device="cuda")


def test_bad_model_argument(tmp_path):
    with pytest.raises(InputError, match="model must be"):
        deblur(np.zeros((20, 20), np.float32), model=3.5)
    with pytest.raises(ModelFileError):
        deblur(np.zeros((20, 20), np.float32), model=tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------- border context
def test_border_context_comes_from_the_model_unless_the_caller_sets_it(model):
    from napari_deblurgan.normalization import normalize, percentile_range

    image = _image((48, 40), np.float32)  # sides are multiples of the stride: no rounding pad
    zero = model.with_generator(model.generator)
    zero.context_padding = 0
    # 0: the generator sees exactly the plane, bordered by its own zero padding (as in training crops)
    low, high = percentile_range(image, 1.0, 99.8)
    with torch.no_grad():
        direct = model.generator(torch.from_numpy(normalize(image, low, high))[None, None]).numpy()[0, 0]
    np.testing.assert_allclose(deblur(image, zero, device="cpu"), direct * (high - low) + low, rtol=0, atol=1e-3)
    # the caller's value wins over the model's, and the default rule (reflected context) gives another result
    np.testing.assert_array_equal(deblur(image, model, device="cpu", context_padding=0), deblur(image, zero))
    assert not np.allclose(deblur(image, model, device="cpu"), deblur(image, zero, device="cpu"), atol=1e-3)
    np.testing.assert_array_equal(
        deblur(image, zero, device="cpu", context_padding=12), deblur(image, model, device="cpu", context_padding=12)
    )


@pytest.mark.parametrize("context_padding", [0, 5])
def test_tiles_stay_seamless_with_any_border_context(model, context_padding):
    image = _image((70, 61), np.float32, seed=3)  # not multiples of the stride either
    whole = deblur(image, model, device="cpu", context_padding=context_padding)
    radius, stride = model.receptive_radius, model.stride
    tile = 2 * (-(-radius // stride) * stride) + 2 * stride + 8  # just above the smallest allowed tile
    tiled = deblur(image, model, device="cpu", context_padding=context_padding, tile_size=tile)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4 * float(np.ptp(image)))


# --------------------------------------------------------------------------------------------- self-ensemble
def _dihedral_images(image):
    """The 8 flipped/rotated versions of a 2-D image, each with the function that turns a result back."""
    versions = []
    for flip in (False, True):
        for turns in range(4):
            view = np.rot90(image[:, ::-1] if flip else image, turns)

            def back(result, turns=turns, flip=flip):
                result = np.rot90(result, -turns)
                return result[:, ::-1] if flip else result

            versions.append((np.ascontiguousarray(view), back))
    return versions


def test_self_ensemble_is_the_mean_over_the_eight_symmetries(model):
    image = _image((48, 40), np.float32, seed=5)  # not square: rotated tiles change shape
    zero = model.with_generator(model.generator)
    zero.context_padding = 0  # sides are multiples of the stride: every version sees the same pixels
    expected = np.mean([back(deblur(view, zero, device="cpu")) for view, back in _dihedral_images(image)], axis=0)
    ensembled = deblur(image, zero, device="cpu", self_ensemble=True)
    np.testing.assert_allclose(ensembled, expected, rtol=0, atol=1e-5 * float(np.ptp(image)))
    plain = deblur(image, zero, device="cpu")
    assert np.abs(ensembled - plain).max() > 1e-3 * float(np.ptp(image))  # a random network is not symmetric
    np.testing.assert_array_equal(deblur(image, zero, device="cpu", self_ensemble=False), plain)


def test_self_ensemble_stays_seamless_and_keeps_dtype(model):
    image = _image((70, 61), "uint16", seed=3)
    radius, stride = model.receptive_radius, model.stride
    tile = 2 * (-(-radius // stride) * stride) + 2 * stride + 8
    whole = deblur(image, model, device="cpu", self_ensemble=True)
    tiled = deblur(image, model, device="cpu", self_ensemble=True, tile_size=tile)
    assert whole.dtype == image.dtype and whole.shape == image.shape
    np.testing.assert_allclose(tiled.astype(np.float64), whole.astype(np.float64), rtol=0, atol=1.0)


def test_self_ensemble_checks_for_cancel_between_symmetries(model):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # once before the batch, then between the symmetries

    with pytest.raises(Cancelled):
        deblur(_image((64, 64), "float32"), model, device="cpu", self_ensemble=True, cancel=cancel)
    assert len(calls) == 4


@pytest.mark.parametrize("bad", [8, "yes", None])
def test_self_ensemble_must_be_a_bool(model, bad):
    with pytest.raises(InputError, match="self_ensemble must be True or False"):
        deblur(np.zeros((20, 20), np.float32), model, device="cpu", self_ensemble=bad)


def test_a_train_mode_model_is_neither_switched_nor_raced_by_parallel_dask_blocks():
    """A generator in train mode (BatchNorm: resnet9) is deblurred in eval mode through a copy, so dask blocks
    computed in parallel threads give the NumPy result, and the caller's model keeps its mode and statistics."""
    import torch

    da = pytest.importorskip("dask.array")
    m = create_model("resnet9", channels=1, seed=0, width=4, n_blocks=1)
    with torch.no_grad():
        for _ in range(3):
            m.generator(torch.rand(2, 1, 32, 32) * 3 + 1)  # running statistics away from their defaults
    stats = {k: v.clone() for k, v in m.generator.state_dict().items()}
    stack = _image((6, 48, 48), "float32")
    m.generator.train()
    expected = deblur(stack, m, axes="ZYX", device="cpu")
    for _ in range(3):
        lazy = deblur(da.from_array(stack, chunks=(1, 48, 48)), m, axes="ZYX", device="cpu")
        np.testing.assert_array_equal(lazy.compute(scheduler="threads", num_workers=4), expected)
    assert m.generator.training
    for key, value in m.generator.state_dict().items():
        assert torch.equal(value, stats[key]), key


def test_rgb_that_contradicts_axes_is_an_error_not_ignored(model):
    image = _image((32, 32, 3), "uint8")
    with pytest.raises(InputError, match="contradicts axes"):
        deblur(image, model, axes="ZYX", rgb=True, device="cpu")
    with pytest.raises(InputError, match="contradicts axes"):
        deblur(image, model, axes="YXS", rgb=False, device="cpu")
    assert deblur(image, model, axes="YXS", rgb=True, device="cpu").shape == image.shape


def test_a_memmap_input_gives_a_plain_array(model, tmp_path):
    image = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.uint16, shape=(40, 40))
    image[:] = _image((40, 40), "uint16")
    out = deblur(image, model, device="cpu")
    assert type(out) is np.ndarray and out.dtype == np.uint16


def test_lazy_blocks_are_single_planes_whatever_the_input_chunks(model):
    """Deep input chunks (64 Z planes) are deblurred a plane per block: memory stays that of a plane per thread."""
    da = pytest.importorskip("dask.array")
    stack = _image((6, 2, 40, 40), "uint16")
    lazy = deblur(da.from_array(stack, chunks=(6, 2, 40, 40)), model, axes="ZCYX", device="cpu")
    assert lazy.numblocks == (6, 2, 1, 1)  # a single-channel model: one channel per block as well
    np.testing.assert_array_equal(lazy.compute(), deblur(stack, model, axes="ZCYX", device="cpu"))
    rgb = deblur(da.from_array(_image((3, 40, 40, 3), "uint8"), chunks=(3, 40, 40, 3)), model, device="cpu")
    assert rgb.numblocks == (3, 1, 1, 1)  # RGB samples stay together


@pytest.mark.parametrize(("dtype", "planes"), [("uint16", 4.5), ("float32", 4.5), ("int32", 5.5), ("float64", 7.0)])
def test_a_large_plane_is_deblurred_in_a_few_plane_sized_buffers(model, dtype, planes):
    """Whole-image inference must not run out of memory: one plane takes the padded input, the blended output
    and the result (about 3 float32 planes with the output itself; it was about 8.5). Wide dtypes are restored
    in one float64 array (2 planes more); per-channel float64 temporaries made it about 2 more again."""
    import tracemalloc

    image = _image((1024, 1024), dtype)
    deblur(image[:64, :64], model, device="cpu")  # first-call caches
    tracemalloc.start()
    try:
        out = deblur(image, model, device="cpu", tile_size=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == image.shape and out.dtype == image.dtype
    assert peak < planes * image.size * 4, f"{peak / (image.size * 4):.1f} float32 planes"


def test_percentiles_override_the_models_normalisation(model):
    image = _image((48, 48), "uint16")
    default = deblur(image, model, device="cpu")
    assert np.array_equal(deblur(image, model, device="cpu", percentiles=(1, 99.8)), default)
    assert not np.array_equal(deblur(image, model, device="cpu", percentiles=(0, 90)), default)
    for bad in ((50, 10), (1, 101), "x", (1,)):
        with pytest.raises(InputError, match="percentiles must be two numbers"):
            deblur(image, model, device="cpu", percentiles=bad)


def _scene_with_a_bright_object(side: int, object_side: int):
    """The model card's case for the shipped `fast` model: a generated cell scene with Gaussian blur (sigma
    2 px, no noise), and a copy with a square 4x its brightest value in the top-left corner. Returns the
    model, both images and ``psnr(image)`` of the plane from 100 px on (far from the square) against the
    sharp scene."""
    from napari_deblurgan import load_model, samples, synthesize_blur

    sharp = (samples.cells((side, side), seed=5) * 3000 + 100).astype(np.float32)
    blurred, _ = synthesize_blur(sharp, kind="gaussian", strength=2.0, noise=None, seed=0)
    with_object = blurred.copy()
    with_object[10 : 10 + object_side, 10 : 10 + object_side] = 4 * blurred.max()
    rest = (slice(100, side), slice(100, side))

    def psnr(image: np.ndarray) -> float:
        span = float(sharp[rest].max() - sharp[rest].min())
        return 10 * np.log10(span**2 / np.mean((image[rest] - sharp[rest]) ** 2))

    return load_model("fast"), blurred, with_object, psnr


def test_a_bright_object_over_the_high_percentile_is_what_a_lower_high_fixes():
    """The model card's limitation, measured on the shipped `fast` model: a 20 x 20 px object 4x brighter
    than the scene (0.6 % of the plane, above the 0.2 % that the 99.8th percentile leaves out) compresses the
    rest of the plane, which the model then over-corrects far from the object; percentiles (1, 99) let it
    pass and the rest of the plane is restored as without it."""
    model, blurred, with_object, psnr = _scene_with_a_bright_object(side=256, object_side=20)
    clean = psnr(deblur(blurred, model, device="cpu"))
    assert clean > psnr(blurred) + 2
    assert psnr(deblur(with_object, model, device="cpu")) < psnr(blurred) - 5  # worse than doing nothing
    assert abs(psnr(deblur(with_object, model, device="cpu", percentiles=(1, 99))) - clean) < 0.2


def test_local_normalisation_fields_follow_the_blocks_within_the_training_limits():
    from napari_deblurgan.normalization import local_percentile_fields, percentile_range

    plane = np.full((256, 384), 100.0)
    plane += np.random.default_rng(0).random(plane.shape) * 100  # a scene spanning ~100 counts
    plane[:40, :40] = 1_000  # a bright object in one corner block (the plane's span becomes ~9x the scene's)
    lo, span = local_percentile_fields(plane, 1.0, 99.8)
    assert lo.shape == span.shape == plane.shape and lo.dtype == np.float32
    plane_lo, plane_hi = percentile_range(plane, 1.0, 99.8)
    assert plane_hi - plane_lo > 800
    assert span[:64, :64].mean() > 5 * span[-64:, -64:].mean()  # the object's neighbourhood only
    assert 80 < span[-64:, -64:].mean() < 120  # far away: the scene's own span
    assert span.min() >= 0.1 * (plane_hi - plane_lo) - 1e-3 and span.max() <= 2.0 * (plane_hi - plane_lo) + 1e-3
    plane[:40, :40] = 100_000  # 1,000x the scene: the gain far away is bounded as in training (10x)
    _, span = local_percentile_fields(plane, 1.0, 99.8)
    assert span[-64:, -64:].mean() == pytest.approx(0.1 * np.subtract(*percentile_range(plane, 1.0, 99.8)[::-1]))
    assert np.all(np.abs(np.diff(span, axis=1)) < 0.05 * span.max())  # smooth: no block edges
    flat_lo, flat_span = local_percentile_fields(np.full((100, 100), 7.0), 1.0, 99.8)
    assert np.all(flat_lo == 7.0) and np.all(flat_span == 1.0)


def test_local_normalisation_restores_the_plane_around_a_bright_object_and_tiles_seamlessly():
    """The shipped `fast` model on the model card's case: with per-plane scaling a 40 px object 4x brighter
    than the scene spoils the rest of a 512 px plane; with local scaling it is restored as without the object,
    and tiles agree with the whole plane (the fields are computed per plane, not per tile)."""
    import warnings

    model, blurred, with_object, psnr = _scene_with_a_bright_object(side=512, object_side=40)
    clean = psnr(deblur(blurred, model, device="cpu"))
    assert psnr(deblur(with_object, model, device="cpu")) < clean - 10
    local = deblur(with_object, model, device="cpu", normalize="local")
    assert abs(psnr(local) - clean) < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small tiles on purpose
        tiled = deblur(with_object, model, device="cpu", normalize="local", tile_size=400)
    np.testing.assert_allclose(tiled, local, atol=1e-4 * float(local.max() - local.min()))
    with pytest.raises(InputError, match="normalize must be one of"):
        deblur(blurred, model, device="cpu", normalize="global")


def test_a_four_channel_image_read_as_rgba_warns_when_its_alpha_looks_like_an_image(model):
    """(Y, X, 4) is RGBA to napari and to deblur(), and alpha is passed through: a channels-last 4-channel
    microscopy image would silently come back with one channel untouched, so that case warns (and says how
    to deblur all four); a real alpha (constant or a mask) does not."""
    channels = _image((40, 36, 4), "uint16", seed=5)
    with pytest.warns(UserWarning, match=r"axes='YXC'"):
        out = deblur(channels, model, device="cpu")
    np.testing.assert_array_equal(out[..., 3], channels[..., 3])  # the RGBA reading itself is unchanged
    four = deblur(channels, model, axes="YXC", device="cpu")  # what the warning proposes deblurs the 4th
    assert not np.array_equal(four[..., 3], channels[..., 3])
    rgba = channels.copy()
    rgba[..., 3] = np.where(np.arange(36) < 18, 65535, 0)[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deblur(rgba, model, device="cpu")
        deblur(channels, model, rgb=True, device="cpu")
        deblur(channels, model, axes="YXS", device="cpu")  # what the warning proposes to keep RGBA


def test_a_few_bright_pixels_on_a_flat_floor_normalise_by_min_and_max():
    # 10 of 10,000 pixels (0.1 %) lie above the 99.8th percentile: both percentiles are the floor, and the range
    # falls back to min..max (a unit range would send the beads to 100 normalised units)
    from napari_deblurgan.normalization import percentile_range

    plane = np.zeros((100, 100), np.float32)
    plane[:5, :2] = 100.0
    assert percentile_range(plane, 1.0, 99.8) == (0.0, 100.0)
    assert percentile_range(np.full((8, 8), 7.0), 1.0, 99.8) == (7.0, 8.0)  # constant: a unit range


def test_ensemble_forward_averages_over_the_transforms_it_is_given():
    # each transform is undone before the mean: the identity network gives its input back, for any subset
    import torch

    from napari_deblurgan.inference.self_ensemble import DIHEDRAL_TRANSFORMS, ensemble_forward

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for count in (1, 2, 5, 8):
        out = ensemble_forward(lambda t: t, x, transforms=DIHEDRAL_TRANSFORMS[:count])
        torch.testing.assert_close(out, x)


def test_a_constant_plane_counts_all_its_tile_batches_in_the_progress(model):
    # a flat plane is skipped, but the progress total counted its tiles: it must still report each batch of them
    stack = np.stack([np.zeros((200, 200), np.float32), _image((200, 200), "float32")])
    seen = []
    deblur(
        stack, model, axes="ZYX", tile_size=96, device="cpu", progress=lambda done, total: seen.append((done, total))
    )
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1]
    assert seen[-1][1] % 2 == 0 and seen[-1][1] >= 4  # two planes of the same number of batches, several each


def test_progress_of_channels_deblurred_one_by_one_counts_every_channel(model):
    # a one-channel model runs once per channel of an RGB image: the total counts all three runs
    seen = []
    deblur(_image((200, 200, 3), "uint8"), model, tile_size=96, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert {t for _, t in seen} == {len(seen)} and len(seen) % 3 == 0

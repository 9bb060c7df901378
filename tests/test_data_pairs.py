"""Paired training data: shapes, axes, normalisation, validation split, offset warning, lazy sampling."""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from napari_deblurgan.data.pairs import (
    BatchSource,
    PairedData,
    format_blur_mix,
    measure_offset,
    resolve_blur_kinds,
    resolve_blur_mix,
)
from napari_deblurgan.errors import InputError
from napari_deblurgan.normalization import normalize, percentile_range


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    sharp = data.camera()[::2, ::2].astype(np.uint16) * 16
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 2.0).astype(np.uint16)
    return blurred, sharp


def test_mismatched_shapes_raise_input_error(pair):
    blurred, sharp = pair
    with pytest.raises(InputError, match="differ in shape"):
        PairedData(blurred[:, :200], sharp, patch_size=32)


def test_unpaired_lists_raise(pair):
    blurred, sharp = pair
    with pytest.raises(InputError, match="in pairs"):
        PairedData([blurred, blurred], [sharp], patch_size=32)


def test_offset_pair_warns_with_the_offset(pair):
    blurred, sharp = pair
    shifted = np.roll(blurred, (5, -3), axis=(0, 1))
    with pytest.warns(UserWarning, match=r"offset .*\(dy, dx\) = \(\+5\.0, -3\.0\)"):
        PairedData(shifted, sharp, patch_size=32)


def test_an_offset_validation_pair_warns_too(pair):
    blurred, sharp = pair
    with pytest.warns(UserWarning, match=r"The validation blurred image is offset .*\(\+4\.0, \+2\.0\)"):
        PairedData(blurred, sharp, patch_size=32, validation=(np.roll(blurred, (4, 2), axis=(0, 1)), sharp))


def test_aligned_pair_does_not_warn(pair):
    blurred, sharp = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairedData(blurred, sharp, patch_size=32)


def test_measure_offset_subpixel_scale():
    img = data.camera().astype(np.float32)  # 512 px: downsampled by 2 for the check
    moved = ndimage.shift(img, (2.0, 0.0), order=1, mode="nearest")
    dy, dx = measure_offset(moved, img)
    assert abs(dy - 2.0) <= 0.5 and abs(dx) <= 0.5


def test_a_constant_plane_has_no_offset_and_no_scikit_image_warning():
    """scikit-image warned "Could not determine RMS error ... may be empty" for a constant plane (it reached a
    user training on a blank pair next to the project's own message about blank data)."""
    img = data.camera().astype(np.float32)
    flat = np.full_like(img, 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert measure_offset(flat, img) == (0.0, 0.0)
        assert measure_offset(img, flat) == (0.0, 0.0)


def test_both_normalised_with_the_blurred_planes_percentiles(pair):
    blurred, sharp = pair
    d = PairedData(blurred, sharp, patch_size=32, validation=0.0)
    b, s = d.sources[0].crop((), 0, 10, 20, 32)
    lo, hi = percentile_range(blurred, 1.0, 99.8)
    np.testing.assert_allclose(b[0], normalize(blurred[10:42, 20:52], lo, hi), rtol=1e-6)
    np.testing.assert_allclose(s[0], normalize(sharp[10:42, 20:52], lo, hi), rtol=1e-6)


def test_band_validation_split_is_disjoint(pair):
    blurred, sharp = pair
    d = PairedData(blurred, sharp, patch_size=32, stride=4, validation=0.25)
    (train,) = d.train_planes
    (val,) = d.validation_planes
    assert train.rows[1] <= val.rows[0]  # held-out band below the training rows
    assert val.rows == (192, 256) and len(d.validation_grid) == 2 * 8
    vb, vs = d.validation_arrays()
    assert vb.shape == vs.shape == (16, 1, 32, 32)


def test_plane_split_for_stacks_and_explicit_validation(pair):
    blurred, sharp = pair
    stack_b, stack_s = np.stack([blurred] * 5), np.stack([sharp] * 5)
    d = PairedData(stack_b, stack_s, patch_size=32, validation=0.2, seed=1)
    # the last plane is held out, its neighbour is in neither set (see the next test)
    assert [p.index for p in d.train_planes] == [(0,), (1,), (2,)] and [p.index for p in d.validation_planes] == [(4,)]
    d2 = PairedData(blurred, sharp, patch_size=32, validation=(blurred[:64, :64], sharp[:64, :64]))
    assert len(d2.validation_grid) == 4 and d2.train_planes[0].rows == (0, 256)


@pytest.mark.parametrize(
    ("shape", "axes", "channels"),
    [((24, 40, 40), "ZYX", 1), ((6, 8, 40, 40), "TZYX", 1), ((2, 12, 40, 40), "CZYX", 1), ((10, 40, 40, 3), "ZYXS", 3)],
)
def test_validation_planes_of_a_stack_have_no_training_plane_next_to_them(shape, axes, channels):
    """Neighbouring Z/T planes of real stacks are nearly the same image: a random choice of held-out planes put
    a training plane next to almost every validation plane, so validation rewarded memorising. The held-out
    planes are a block at the stack's end, and no training plane is next to one along any Z/T axis."""
    rng = np.random.default_rng(0)
    stack = rng.random(shape, dtype=np.float32)
    d = PairedData(None, stack, axes=axes, channels=channels, patch_size=32, validation=0.2, check_alignment=False)
    held = {p.index for p in d.validation_planes}
    trained = {p.index for p in d.train_planes}
    assert held and trained and held.isdisjoint(trained)
    n_positions = math.prod(shape[: len(shape) - 2 - (axes[-1] == "S")]) // (shape[0] if axes[0] == "C" else 1)
    assert abs(len(held) - 0.2 * n_positions) <= 1  # the fraction asked for, as near as whole planes get
    for index in held:
        for axis in range(len(index)):
            for step in (-1, 1):
                assert (*index[:axis], index[axis] + step, *index[axis + 1 :]) not in trained
    assert len(trained) >= n_positions - 2 * len(held)  # the gap costs at most a block's worth of neighbours
    assert any("neighbouring plane" in note for note in d.notes)
    if axes[0] == "C":  # a one-channel model trains on each channel: a held-out position holds out both
        assert {p.channel for p in d.validation_planes} == {0, 1}


def test_one_image_of_many_channels_is_held_out_by_a_band_not_by_its_channels():
    """A 2D image of 6 channels for a one-channel model is 6 planes but one scene: the choice between holding out
    whole planes and a band counts plane positions, so it gets a band of every channel (it once held out the whole
    position, every channel, and left nothing to train on)."""
    rng = np.random.default_rng(0)
    image = rng.random((6, 96, 96), dtype=np.float32)
    d = PairedData(None, image, axes="CYX", channels=1, patch_size=32, validation=0.1, check_alignment=False)
    assert len(d.train_planes) == len(d.validation_planes) == 6
    assert {p.channel for p in d.train_planes} == {p.channel for p in d.validation_planes} == set(range(6))
    assert all(t.rows[1] <= v.rows[0] for t, v in zip(d.train_planes, d.validation_planes, strict=True))


def test_the_note_counts_stack_planes_and_separate_images_apart():
    rng = np.random.default_rng(0)
    stack = rng.random((10, 40, 40), dtype=np.float32)
    images = [rng.random((40, 40), dtype=np.float32) for _ in range(5)]
    d = PairedData(None, [stack, *images], axes=["ZYX"] + ["YX"] * 5, patch_size=32, validation=0.2)
    (note,) = [n for n in d.notes if "neighbouring plane" in n]
    assert "the last 2 planes of the stack(s) and 1 separate image, and leaves 1 neighbouring plane out" in note, note


def test_separate_images_are_still_held_out_at_random_and_whole():
    rng = np.random.default_rng(0)
    images = [rng.random((40, 40), dtype=np.float32) for _ in range(10)]
    picks = [
        {p.source for p in PairedData(None, images, patch_size=32, validation=0.2, seed=s).validation_planes}
        for s in range(4)
    ]
    assert all(len(p) == 2 for p in picks) and len({frozenset(p) for p in picks}) > 1
    assert not any("neighbouring" in note for note in PairedData(None, images, patch_size=32, validation=0.2).notes)


def test_channels_independent_or_joint():
    rgb = data.astronaut()[::4, ::4]  # (128, 128, 3) uint8 -> axes YXS
    blurred = ndimage.gaussian_filter(rgb, (1.5, 1.5, 0))
    d1 = PairedData(blurred, rgb, channels=1, patch_size=32, validation=0.0)
    assert len(d1.train_planes) == 3
    b, _ = d1.sample(2, np.random.default_rng(0))
    assert b.shape == (2, 1, 32, 32)
    d3 = PairedData(blurred, rgb, channels=3, patch_size=32, validation=0.0)
    assert d3.sample(2, np.random.default_rng(0))[1].shape == (2, 3, 32, 32)
    with pytest.raises(InputError, match="2 channels"):
        PairedData(blurred, rgb, channels=2, patch_size=32)


def test_patch_reduced_to_fit_small_images(pair):
    blurred, sharp = pair
    d = PairedData(blurred[:40, :50], sharp[:40, :50], patch_size=130, stride=8, validation=0.0)
    # the number asked for, not the multiple of the stride (128) it was rounded to first
    assert d.patch_size == 40
    assert d.notes == ["patch_size reduced from 130 to 40 px to fit the images (shorter side 40 px)"]


def test_a_pair_of_identical_images_is_refused_and_an_identical_pair_among_others_warns(pair):
    blurred, sharp = pair
    with pytest.raises(InputError, match="blurred and sharp images are identical: a model trained on them learns"):
        PairedData(sharp, sharp, patch_size=32)
    with pytest.raises(InputError, match="In every pair the images are identical"):
        PairedData([sharp, blurred], [sharp.copy(), blurred.copy()], patch_size=32)
    with pytest.warns(UserWarning, match=r"Training pair 2 of 2: the blurred image is identical to the sharp one"):
        PairedData([blurred, sharp], [sharp, sharp], patch_size=32)
    with pytest.raises(InputError, match="validation pair's blurred and sharp images are identical"):
        PairedData(blurred, sharp, patch_size=32, validation=(sharp, sharp))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairedData(None, sharp, patch_size=32)  # sharp images alone: blur is synthesised, nothing to compare


def test_sampling_reads_crops_lazily(pair):
    """Sampling must not touch the whole stack: only the crop region (and one plane for percentiles)."""
    _, sharp = pair

    class Spy(np.ndarray):
        largest = 0

        def __getitem__(self, key):
            out = np.asarray(super().__getitem__(key))
            Spy.largest = max(Spy.largest, out.size)
            return out

    stack = np.stack([sharp] * 6).view(Spy)
    d = PairedData(None, stack, patch_size=32, validation=0.0)
    d.sample(4, np.random.default_rng(0))
    assert 0 < Spy.largest <= sharp.size  # a plane at most, never the stack


def test_plane_cache_gives_the_same_crops_within_its_budget(pair):
    blurred, sharp = pair
    plane_bytes = sharp.size * 4
    stack_b, stack_s = np.stack([blurred] * 4), np.stack([sharp] * 4)  # 4 planes
    lazy = PairedData(stack_b, stack_s, patch_size=32, validation=0.0, cache_bytes=0)
    # room for 3 of the 8 normalised planes (4 blurred + 4 sharp): the rest stay lazy
    cached = PairedData(stack_b, stack_s, patch_size=32, validation=0.0, cache_bytes=3 * plane_bytes + 10)
    for seed in range(3):
        for margin in (0, 9):  # 9: crops at the border are reflect-padded
            got = cached.sample(16, np.random.default_rng(seed), margin)
            want = lazy.sample(16, np.random.default_rng(seed), margin)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert len(cached._cache.planes) == 3 and cached._cache.remaining == 10
    assert not lazy._cache.planes
    # the cache is read-only; crops handed out by default are writable copies
    plane = next(iter(cached._cache.planes.values()))
    assert not plane.flags.writeable
    _, s = cached.sources[0].crop((0,), None, 0, 0, 32)
    s[:] = -1.0
    assert cached.sources[0].crop((0,), None, 0, 0, 32)[1].min() > -1.0


def test_lazy_arrays_are_not_cached(pair):
    da = pytest.importorskip("dask.array")
    _, sharp = pair
    d = PairedData(None, da.from_array(np.stack([sharp] * 2), chunks=(1, 64, 64)), patch_size=32, validation=0.0)
    d.sample(4, np.random.default_rng(0))
    assert not d._cache.planes


def test_memory_maps_are_not_cached(pair, tmp_path):
    """A memory-mapped stack stays on disk: the plane cache is for in-memory arrays only."""
    _, sharp = pair
    mapped = np.lib.format.open_memmap(tmp_path / "stack.npy", mode="w+", dtype=sharp.dtype, shape=(2, *sharp.shape))
    mapped[:] = sharp
    d = PairedData(None, mapped, patch_size=32, validation=0.0)
    d.sample(4, np.random.default_rng(0))
    assert not d._cache.planes
    in_memory = PairedData(None, np.array(mapped), patch_size=32, validation=0.0)
    in_memory.sample(4, np.random.default_rng(0))
    assert in_memory._cache.planes  # the control: the same data in memory is cached


@pytest.mark.parametrize("cache_bytes", [0, 2**26])
def test_nan_in_training_images_is_an_input_error_up_front_naming_the_plane(cache_bytes):
    """Any plane of an in-memory stack, not only the middle one the pair check looks at: said before
    training, not when a crop first reaches it (as the percentiles' 'range (nan) too small' message). The plane
    is named by its axes' letters, as deblur() names it ("plane T=2, Z=4"; it said "the plane at index (2, 4) of
    the non-YX axes")."""
    stack = np.random.default_rng(0).random((3, 6, 64, 64)).astype(np.float32)
    stack[2, 4, 40, 40] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite values \(in plane T=2, Z=4\)"):
        PairedData(stack, stack * 0.5, axes="TZYX", patch_size=32, validation=0.0, cache_bytes=cache_bytes)


@pytest.mark.parametrize("cache_bytes", [0, 2**26])
def test_nan_in_a_memory_mapped_image_is_an_input_error_when_read(cache_bytes, tmp_path):
    image = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.float32, shape=(3, 64, 64))
    image[:] = np.random.default_rng(0).random((3, 64, 64))
    image[2, 40, 40] = np.nan
    d = PairedData(None, image, axes="ZYX", patch_size=32, validation=0.0, cache_bytes=cache_bytes)
    with pytest.raises(InputError, match=r"NaN or infinite values \(in plane Z=2\)"):
        for seed in range(50):  # some crop reaches the NaN plane
            d.sample(8, np.random.default_rng(seed))


@pytest.mark.parametrize("where", ["blurred", "sharp"])
def test_nan_in_a_training_pair_is_an_input_error_before_alignment(where):
    """The pair's alignment check (an FFT cross-correlation) runs first; a NaN must not reach it."""
    sharp = np.random.default_rng(0).random((64, 64))
    blurred = sharp.copy()
    (blurred if where == "blurred" else sharp)[5, 5] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        PairedData(blurred, sharp, patch_size=32, validation=0.0)


def test_batch_source_uses_the_kind_weights(pair):
    import torch

    _, sharp = pair
    d = PairedData(None, sharp, patch_size=32, validation=0.0)

    def batch(weights):
        src = BatchSource(
            d,
            torch.device("cpu"),
            seed=3,
            blur_kinds=("gaussian", "motion"),
            blur_weights=weights,
            noise=False,
            strength_ranges={"gaussian": (0.8, 0.8), "motion": (12.0, 12.0)},
        )
        return src.next_batch(4)

    gaussian_only, motion_only, again = batch((1.0, 0.0)), batch((0.0, 1.0)), batch((1.0, 0.0))

    def standardized(t):  # both crops are rescaled by their blurred crop's percentiles: compare up to that
        return (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)

    assert torch.allclose(standardized(gaussian_only[1]), standardized(motion_only[1]), atol=1e-4)  # same crops...
    assert not torch.allclose(gaussian_only[0], motion_only[0], atol=1e-3)  # ...blurred by different kinds
    assert torch.equal(gaussian_only[0], again[0])


def test_synthetic_batches_are_blurred_and_reproducible(pair):
    import torch

    _, sharp = pair
    d = PairedData(None, sharp, patch_size=32, validation=0.1)
    src = BatchSource(d, torch.device("cpu"), seed=3, blur_kinds=resolve_blur_kinds("gaussian"), noise=False)
    state = src.state_dict()
    b1, s1 = src.next_batch(4)
    assert b1.shape == s1.shape == (4, 1, 32, 32)
    # blur removes high frequencies: the Laplacian energy drops
    lap = lambda t: torch.diff(t, 2, dim=-1).abs().mean()  # noqa: E731
    assert lap(b1) < 0.8 * lap(s1)
    src.load_state_dict(state)
    b2, _ = src.next_batch(4)
    assert torch.equal(b1, b2)
    vb, vs = src.validation_batch()
    assert vb.shape == vs.shape and torch.equal(src.validation_batch()[0], vb)


def test_bad_blur_kind_and_validation_args(pair):
    blurred, sharp = pair
    with pytest.raises(InputError, match="blur kind"):
        resolve_blur_kinds("sideways")
    assert resolve_blur_kinds("motion, gaussian") == ("motion", "gaussian")
    with pytest.raises(InputError, match="validation"):
        PairedData(blurred, sharp, patch_size=32, validation=1.5)
    with pytest.raises(InputError, match="too small"):
        PairedData(blurred[:40, :40], sharp[:40, :40], patch_size=32, validation=0.5)
    import torch

    bad_values = ("abc", "0.1", True, np.array([0.1, 0.2]), np.array(True), torch.tensor(0.1 + 0j))
    for bad in bad_values:  # one InputError, never a ValueError (nor a complex number's real part)
        with pytest.raises(InputError, match=r"validation must be a fraction in \[0, 1\) such as 0.1"):
            PairedData(blurred, sharp, patch_size=32, validation=bad)
    reference = PairedData(blurred, sharp, patch_size=32, validation=0.25, check_alignment=False).validation_grid
    for number in (np.array(0.25), np.float32(0.25), torch.tensor(0.25)):  # 0-d numbers, as float() took them
        grid = PairedData(blurred, sharp, patch_size=32, validation=number, check_alignment=False).validation_grid
        assert [(y, x) for _, y, x in grid] == [(y, x) for _, y, x in reference]


def test_torch_tensors_as_training_images_are_one_input_error_saying_what_to_pass(pair):
    import torch

    blurred, sharp = pair
    tensor = torch.from_numpy(sharp.astype(np.float32))
    for args in ((torch.from_numpy(blurred.astype(np.float32)), tensor), (blurred, tensor), (None, tensor)):
        with pytest.raises(InputError, match=r"is a torch tensor; pass a NumPy array: tensor.detach\(\).cpu\(\)"):
            PairedData(*args, patch_size=32)
    with pytest.raises(InputError, match="The validation sharp image is a torch tensor"):
        PairedData(blurred, sharp, patch_size=32, validation=(blurred[:64, :64], tensor[:64, :64]))


def test_tensors_numpy_cannot_read_are_one_input_error_in_deblur_synthesize_blur_and_compare():
    import torch

    from napari_deblurgan import compare, deblur, synthesize_blur
    from napari_deblurgan.model_file import create_model

    plain = torch.rand(64, 64)
    grad = torch.rand(64, 64, requires_grad=True)
    model = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    assert deblur(plain, model=model, device="cpu").shape == (64, 64)  # a CPU tensor NumPy reads is fine
    for call in (
        lambda: deblur(grad, model=model, device="cpu"),
        lambda: synthesize_blur(grad),
        lambda: compare({"a": grad}, plain),
        lambda: compare({"a": plain}, grad),
    ):
        with pytest.raises(InputError, match=r"torch tensor that requires grad; pass a NumPy array"):
            call()


def test_weighted_blur_mix():
    assert resolve_blur_mix("mixed") == (("motion", "defocus", "gaussian"), None)
    assert resolve_blur_mix("motion:2, defocus, gaussian") == (("motion", "defocus", "gaussian"), (2.0, 1.0, 1.0))
    assert resolve_blur_mix({"motion": 1, "airy": 0.5}) == (("motion", "airy"), (1.0, 0.5))
    assert resolve_blur_mix("motion:3,defocus:3") == (("motion", "defocus"), None)  # equal weights: uniform
    assert resolve_blur_mix("motion:0,gaussian") == (("gaussian",), None)  # a zero weight drops the kind
    for spec in ("mixed", "motion:2,defocus,gaussian", "gaussian:0.5,airy:1.5"):
        kinds, weights = resolve_blur_mix(spec)
        assert resolve_blur_mix(format_blur_mix(kinds, weights)) == (kinds, weights)  # round trip (checkpoints)
    for bad in ("motion:x", "motion:-1", "motion:0,defocus:0", "motion:inf", "zoom:2"):
        with pytest.raises(InputError, match=r"(?i)blur kind"):
            resolve_blur_mix(bad)


# -- synthetic blur strength and noise settings ------------------------------------------------------------
def test_noise_settings_resolve_to_ranges():
    from napari_deblurgan.data.pairs import REALISTIC_NOISE, resolve_noise

    assert resolve_noise("realistic") == REALISTIC_NOISE and resolve_noise(True) == REALISTIC_NOISE
    assert resolve_noise(None) is None and resolve_noise(False) is None
    assert resolve_noise(200) == {"photons": (200.0, 200.0), "read_noise": (0.0, 0.0)}
    assert resolve_noise({"photons": (50, 100), "read_noise": 2}) == {
        "photons": (50.0, 100.0),
        "read_noise": (2.0, 2.0),
    }
    for bad in (0, -5, {"read_noise": 1}, {"photons": 10, "gain": 2}, (100, 10), "loud"):
        with pytest.raises(InputError):
            resolve_noise(bad)


def test_blur_strength_resolves_for_every_kind():
    from napari_deblurgan.data.pairs import resolve_blur_strength

    assert resolve_blur_strength(None, ("motion",)) is None
    assert resolve_blur_strength(3, ("motion", "gaussian")) == {"motion": (3.0, 3.0), "gaussian": (3.0, 3.0)}
    assert resolve_blur_strength((1, 4), ("defocus",)) == {"defocus": (1.0, 4.0)}
    for bad in (0, -1, (5, 2), "big", (1, 2, 3)):
        with pytest.raises(InputError):
            resolve_blur_strength(bad, ("motion",))


def test_batch_source_uses_the_given_strength_and_noise():
    """A fixed small Gaussian without noise blurs much less than a large one; noise-free batches repeat."""
    torch = pytest.importorskip("torch")
    from napari_deblurgan.data.pairs import BatchSource, PairedData

    sharp = data.camera()[100:228, 100:228].astype(np.float32)
    pairs = PairedData(None, sharp, patch_size=32, validation=0.0)

    def mean_abs_change(strength: float, noise) -> float:
        source = BatchSource(
            pairs,
            torch.device("cpu"),
            seed=0,
            blur_kinds=("gaussian",),
            noise=noise,
            strength_ranges={"gaussian": (strength, strength)},
        )
        blurred, target = source.next_batch(4)
        return float((blurred - target).abs().mean())

    assert mean_abs_change(0.5, None) < 0.5 * mean_abs_change(3.0, None)
    assert mean_abs_change(3.0, {"photons": (5.0, 5.0), "read_noise": (0.0, 0.0)}) > mean_abs_change(3.0, None)


def test_synthetic_crops_are_scaled_as_inference_scales_the_blurred_image():
    """Blur spreads a sparse scene's light, so the blurred crop's bright percentile falls well below the sharp
    plane's; training must present it at the contrast inference will (its own 1/99.8 percentiles at 0/1),
    with the target in the same units - otherwise the model learns the wrong contrast (issue 4)."""
    torch = pytest.importorskip("torch")
    from napari_deblurgan import samples
    from napari_deblurgan.data.pairs import BatchSource, PairedData

    sharp = samples.filaments((256, 256), seed=11).astype(np.float32)
    pairs = PairedData(None, sharp, patch_size=128, validation=0.0)
    source = BatchSource(
        pairs,
        torch.device("cpu"),
        seed=0,
        blur_kinds=("gaussian",),
        noise=None,
        strength_ranges={"gaussian": (3.0, 3.0)},
    )
    blurred, target = source.next_batch(6)
    q = torch.quantile(blurred.flatten(1), torch.tensor([0.01, 0.998]), dim=1)
    spans = q[1] - q[0]
    content = spans > 0  # every crop of this dense scene has structure
    assert content.all()
    assert torch.allclose(q[0], torch.zeros(6), atol=1e-4)
    assert torch.allclose(q[1], torch.ones(6), atol=1e-4), q[1]
    # the target is in the same units: its bright end lies above the blurred one (blur lowered the peaks)
    assert (torch.quantile(target.flatten(1), 0.998, dim=1) > 1.05).all()


def test_psf_blocks_make_several_batches_psfs_in_one_walk_and_resume_exactly(pair, monkeypatch):
    """On a GPU the sequential motion walk cost ~37 ms per batch whatever its size (bench_data --phases): with
    ``psf_block`` the PSFs of that many batches come from one call; a resumed source draws the same batches."""
    import torch

    from napari_deblurgan.blur import torch_synthesis

    _, sharp = pair
    d = PairedData(None, sharp, patch_size=32, validation=0.0)
    calls = []
    real = torch_synthesis.random_psf_batch

    def counting(n, *args, **kwargs):
        calls.append(n)
        return real(n, *args, **kwargs)

    monkeypatch.setattr(torch_synthesis, "random_psf_batch", counting)

    def source(block):
        return BatchSource(d, torch.device("cpu"), seed=5, blur_kinds=("motion", "gaussian"), psf_block=block)

    src = source(3)
    first = src.next_batch(4)
    state = src.state_dict()
    rest = [src.next_batch(4) for _ in range(4)]  # crosses into a second block at the 3rd of these
    assert calls == [12, 12]
    # every batch got fresh PSFs: no two batches were blurred alike
    blurred = [first[0], *(b for b, _ in rest)]
    assert all(not torch.allclose(a, b, atol=1e-3) for i, a in enumerate(blurred) for b in blurred[i + 1 :])

    resumed = source(3)
    resumed.load_state_dict(state)
    again = [resumed.next_batch(4) for _ in range(4)]
    for (b1, s1), (b2, s2) in zip(rest, again, strict=True):
        assert torch.equal(b1, b2) and torch.equal(s1, s2)

    # the default on a CPU makes each batch's PSFs with the batch (the shipped recipes' random stream)
    calls.clear()
    cpu_default = BatchSource(d, torch.device("cpu"), seed=5, blur_kinds=("motion",))
    assert cpu_default.psf_block == 1
    cpu_default.next_batch(2)
    cpu_default.next_batch(2)
    assert calls == [2, 2]
    with pytest.raises(InputError, match="psf_block"):
        source(0)


@pytest.mark.parametrize(
    "case", ["synthetic", "synthetic-band-split", "pairs", "joint-channels", "independent-channels", "small-planes"]
)
def test_crops_cut_on_the_device_are_the_cpu_crops_bit_for_bit(pair, case):
    """BatchSource cuts crops on the training device (data/device_crops.py) from the same random draws as
    PairedData.sample: the batches must not depend on which path cut them (edges, flips/turns, channels)."""
    import torch

    blurred, sharp = pair
    rng = np.random.default_rng(4)
    kwargs: dict = {"patch_size": 32, "validation": 0.0}
    if case == "synthetic":
        args = (None, [sharp, sharp[:150, :200].copy()])
    elif case == "synthetic-band-split":
        args, kwargs["validation"] = (None, sharp), 0.25
    elif case == "pairs":
        args = (blurred, sharp)
    elif case == "joint-channels":
        args, kwargs["channels"] = (None, rng.random((2, 90, 110)).astype(np.float32)), 2
        kwargs["axes"] = "CYX"
    elif case == "independent-channels":
        args, kwargs["axes"] = (None, rng.random((3, 90, 110)).astype(np.float32)), "CYX"
    else:  # planes barely larger than a patch: most crops reach the reflect padding
        args = (None, [rng.random((36, 40)).astype(np.float32), rng.random((33, 60)).astype(np.float32)])
    d = PairedData(*args, **kwargs)

    def batches(device_crops: bool) -> list:
        src = BatchSource(d, torch.device("cpu"), seed=9, blur_kinds=("motion", "gaussian"), device_crops=device_crops)
        return [src.next_batch(6) for _ in range(3)]

    on_device, on_cpu = batches(True), batches(False)
    for (b1, s1), (b2, s2) in zip(on_device, on_cpu, strict=True):
        assert torch.equal(s1, s2) and torch.equal(b1, b2)
    # the device path really ran (the data qualifies), and it uploads each plane once
    src = BatchSource(d, torch.device("cpu"), seed=9, device_crops=True)
    src.next_batch(2)
    assert src._device_crops is not False
    regions = {(p.source, p.index, p.channel, p.rows, p.cols): p for p in d.train_planes}.values()
    expected = sum(d.channels * (p.height + 2 * src.margin) * (p.width + 2 * src.margin) for p in regions)
    assert src._device_crops._flat["sharp"].numel() == expected


@pytest.mark.parametrize("device_crops", [False, True])
def test_training_crops_never_read_the_held_out_band_nor_validation_crops_the_training_rows(device_crops):
    """Synthetic blur reads a margin around each crop; next to a held-out validation band that margin is
    reflected from the training rows, not read from the band (which would blur validation pixels into
    training inputs), and the validation crops' margin stays inside the band."""
    import torch

    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, (128, 96)).astype(np.float32)
    d = PairedData(None, image, patch_size=32, validation=0.25)
    (train,), (held_out,) = d.train_planes, d.validation_planes
    assert train.rows == (0, 96) and held_out.rows == (96, 128)  # a band of rows at the end
    image[96:] += 10.0  # marks the band: every band pixel is brighter than every training pixel
    d = PairedData(None, image, patch_size=32, validation=0.25)
    lo, hi = d.sources[0].norm_range((), 0)
    train_ceiling, band_floor = (1.0 - lo) / (hi - lo), (10.0 - lo) / (hi - lo)
    src = BatchSource(
        d,
        torch.device("cpu"),
        seed=3,
        blur_kinds=("motion",),
        strength_ranges={"motion": (20.0, 25.0)},
        device_crops=device_crops,
    )
    assert src.margin >= 10
    _, sharp = d.sample(256, np.random.default_rng(1), src.margin)
    assert sharp.max() < train_ceiling  # the margins included
    if device_crops:
        src.next_batch(1)
        assert src._device_crops is not False
        _, sharp = src._device_crops.gather(*d.draw_crops(256, np.random.default_rng(1)))
        assert float(sharp.max()) < train_ceiling
    _, val_sharp = d.validation_arrays(src.margin)
    assert val_sharp.min() >= band_floor - 1e-6


def test_device_crops_fall_back_to_the_cpu_path_when_the_data_does_not_qualify(pair):
    import torch

    from napari_deblurgan.data.device_crops import DeviceCrops

    _, sharp = pair
    d = PairedData(None, sharp, patch_size=16, validation=0.0)
    assert DeviceCrops.build(d, torch.device("cpu"), margin=16) is None  # patch not larger than the margin
    assert DeviceCrops.build(d, torch.device("cpu"), margin=8, budget_bytes=1000) is None  # over the budget
    assert DeviceCrops.build(d, torch.device("cpu"), margin=8) is not None
    mapped = np.lib.format.open_memmap(
        str(Path(tempfile.mkdtemp()) / "s.npy"), mode="w+", dtype=sharp.dtype, shape=sharp.shape
    )
    mapped[:] = sharp
    lazy = PairedData(None, mapped, patch_size=16, validation=0.0)
    assert DeviceCrops.build(lazy, torch.device("cpu"), margin=8) is None  # stays on disk, never copied whole
    src = BatchSource(
        d,
        torch.device("cpu"),
        seed=1,
        device_crops=True,
        blur_kinds=("motion",),
        strength_ranges={"motion": (30.0, 40.0)},
    )  # margin 22 > patch 16
    b, s = src.next_batch(3)
    assert src._device_crops is False and b.shape == s.shape == (3, 1, 16, 16)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_on_a_gpu_crops_are_cut_there_psfs_come_in_blocks_and_batches_match_the_cpu_cut(pair):
    """The CUDA defaults (crops cut on the GPU, PSFs 16 batches at a time) give the batches the CPU-cut crops
    give with the same settings, and a resumed GPU source continues exactly."""
    import torch

    _, sharp = pair
    d = PairedData(None, [sharp, sharp[:150, :200].copy()], patch_size=64, validation=0.0)
    cuda = torch.device("cuda")

    def source(**kwargs):
        return BatchSource(d, cuda, seed=2, blur_kinds=("motion", "defocus", "gaussian"), **kwargs)

    gpu = source()
    assert gpu.psf_block == 16 and gpu.use_device_crops
    first = [gpu.next_batch(8) for _ in range(2)]
    assert gpu._device_crops is not False and first[0][0].device.type == "cuda"
    cpu_cut = source(device_crops=False)
    for (b1, s1), (b2, s2) in zip(first, [cpu_cut.next_batch(8) for _ in range(2)], strict=True):
        assert torch.equal(s1, s2) and torch.equal(b1, b2)
    state = gpu.state_dict()
    rest = [gpu.next_batch(8) for _ in range(3)]
    resumed = source()
    resumed.load_state_dict(state)
    for (b1, s1), (b2, s2) in zip(rest, [resumed.next_batch(8) for _ in range(3)], strict=True):
        assert torch.equal(s1, s2) and torch.equal(b1, b2)


def test_description_stays_one_short_line_for_many_images():
    images = [np.full((32 + i, 40), i, np.float32) for i in range(7)]
    few = PairedData(None, images[:3], patch_size=16, validation=0.0)
    many = PairedData(None, images, patch_size=16, validation=0.0)
    assert few.describe() == "3 planes of sharp images + synthetic blur ((32, 40), (33, 40), (34, 40))"
    assert many.describe() == (
        "7 planes of sharp images + synthetic blur ((32, 40), (33, 40), (34, 40), (35, 40), ... 3 more)"
    )


def test_a_validation_band_far_above_the_fraction_is_noted():
    """validation=0.1 on one 256-px image with 128-px patches holds out half of it: the run says so."""
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    small = PairedData(None, image, patch_size=128, validation=0.1)
    assert any("validation holds out 50 % of the image area, not 10 %" in n for n in small.notes)
    large = PairedData(
        None, np.random.default_rng(0).random((640, 640)).astype(np.float32), patch_size=64, validation=0.1
    )
    assert not any("validation holds out" in n for n in large.notes)


def test_a_pair_in_different_units_warns():
    sharp = np.random.default_rng(0).random((64, 64))
    blurred = ndimage.gaussian_filter(sharp, 1.0)
    for other_units in ((sharp * 60000).astype(np.uint16), sharp / 255):
        with pytest.warns(UserWarning, match="look like different units or exposures"):
            PairedData(blurred, other_units, patch_size=32, validation=0.0)
    beads = np.zeros((96, 96))
    beads[np.random.default_rng(1).integers(0, 96, (2, 12)).tolist()] = 1000.0
    defocused = ndimage.uniform_filter(beads, 13, mode="reflect")  # peaks drop ~170-fold, the mean stays
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*different units")  # the same units: no such warning
        PairedData(blurred, sharp, patch_size=32, validation=0.0)
        PairedData(defocused, beads, patch_size=32, validation=0.0)


@pytest.mark.parametrize("kind", ["disk", "motion", "gaussian"])
def test_registered_bead_pairs_are_not_called_offset_and_shifted_ones_are(kind):
    """A pair's correlation peaks where the PSF peaks (off-centre for motion blur, anywhere on a defocus disk's
    plateau, on either twin maximum of sparse beads): registered defocused beads used to be warned about as
    2-5 px offset. Scenes, PSF sizes and shifts here were not used to choose the method (seeds 1-6, 200-211
    and 300-329 were)."""
    from napari_deblurgan.blur.psf import defocus_psf, gaussian_psf, motion_psf
    from napari_deblurgan.blur.synthesize import convolve_reflect

    for seed in range(100, 108):
        rng = np.random.default_rng(seed)
        beads = np.zeros((160, 160))
        beads[tuple(rng.integers(0, 160, (2, 20)))] = 1000.0
        psf = {"disk": defocus_psf(4.5), "motion": motion_psf(16.0, rng), "gaussian": gaussian_psf(2.0)}[kind]
        blurred = convolve_reflect(beads, psf.astype(np.float64)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*is offset from its sharp image")
            PairedData(blurred, beads.astype(np.float32), patch_size=32, validation=0.0)
        with pytest.warns(UserWarning, match="is offset from its sharp image") as record:
            PairedData(np.roll(blurred, (5, -3), axis=(0, 1)), beads.astype(np.float32), patch_size=32, validation=0.0)
        assert record[0].filename == __file__  # the user's line, not one inside the package


def test_blank_validation_crops_are_left_out_and_said_once(pair):
    """A constant held-out plane (an empty frame) scores ~100 dB for the input whatever the model does: its crops
    would dominate the mean validation PSNR. They are left out, the notes say how many, and all-blank is refused."""
    blurred, sharp = pair
    stack_b, stack_s = np.stack([blurred[:64, :64]] * 5), np.stack([sharp[:64, :64]] * 5)
    stack_b[:4] = stack_s[:4] = 7  # planes 0-3 blank: the held-out last two are one blank plane and one with content
    args = dict(patch_size=32, validation=0.4, check_alignment=False)
    d = PairedData(stack_b, stack_s, seed=3, **args)
    assert sorted(p.index for p in d.validation_planes) == [(3,), (4,)]
    assert len(d.validation_grid) == 4 and {p.index for p, _, _ in d.validation_grid} == {(4,)}
    assert [n for n in d.notes if "blank" in n] == [
        "4 blank (constant) validation crops were left out of validation (others of the held-out grid take their "
        "place where there are any): the blurred input already scores ~100 dB on them, whatever the model does"
    ]
    assert d.describe_validation() == "4 crops of 32 px from 1 planes"
    _, vs = d.validation_arrays()
    assert vs.shape == (4, 1, 32, 32) and all(np.ptp(c) > 0 for c in vs)
    stack_b[:] = stack_s[:] = 7
    stack_b[0], stack_s[0] = blurred[:64, :64], sharp[:64, :64]
    with pytest.raises(InputError, match="All 8 validation crops checked are blank"):
        PairedData(stack_b, stack_s, seed=0, **args)  # holds out the last two planes, both blank
    blank = np.zeros((64, 64), np.uint16)
    with pytest.raises(InputError, match=r"All 4 validation crops checked are blank .*validation pair's sharp image"):
        PairedData(blurred, sharp, patch_size=32, validation=(blank, blank + 1), check_alignment=False)
    # sharp-only data with a blank band, and a plane whose band is partly blank: only the blank crops go
    image = sharp.copy()
    image[224:, 128:] = 0
    band = PairedData(None, image, patch_size=32, validation=0.125)
    assert len(band.validation_grid) == 4 and all(x0 < 128 for _, _, x0 in band.validation_grid)


def test_blank_validation_crops_are_replaced_by_other_crops_of_the_held_out_grid(pair):
    """Blank crops are left out before the grid is thinned to max_validation_crops, not after: content in two
    of ten held-out planes gave 2 validation crops of 16 (and content in one crop was refused as all-blank)."""
    blurred, sharp = (image[:64, :64] for image in pair)
    stack_b, stack_s = np.zeros((10, 64, 64), np.float32), np.zeros((10, 64, 64), np.float32)
    for z in (1, 6):
        stack_b[z], stack_s[z] = blurred, sharp
    d = PairedData(
        stack_b,
        stack_s,
        patch_size=32,
        validation=(stack_b, stack_s),
        axes="ZYX",
        check_alignment=False,
        max_validation_crops=16,
    )
    assert len(d.validation_grid) == 8 and {p.index for p, _, _ in d.validation_grid} == {(1,), (6,)}
    one = np.zeros((10, 64, 64), np.float32), np.zeros((10, 64, 64), np.float32)
    one[0][4, :32, :32], one[1][4, :32, :32] = blurred[:32, :32], sharp[:32, :32]
    d = PairedData(stack_b, stack_s, patch_size=32, validation=one, axes="ZYX", check_alignment=False)
    assert [(p.index, y0, x0) for p, y0, x0 in d.validation_grid] == [((4,), 0, 0)]
    # without blank crops the thinned grid is the evenly spaced one, as before
    full = PairedData(
        np.stack([blurred] * 10),
        np.stack([sharp] * 10),
        patch_size=32,
        validation=(np.stack([blurred] * 10), np.stack([sharp] * 10)),
        axes="ZYX",
        check_alignment=False,
        max_validation_crops=16,
    )
    grid = [(p.index[0], y0, x0) for p, y0, x0 in full.validation_grid]
    everything = [(z, y0, x0) for z in range(10) for y0 in (0, 32) for x0 in (0, 32)]
    assert grid == [everything[i] for i in np.linspace(0, 39, 16).round().astype(int)]


def test_the_registration_check_ignores_a_no_data_region_however_large(pair):
    """A stitched border at float32's largest value: the check's FFT turned it into NaN and scikit-image raised
    its own ValueError. Sentinels under 0.2 % of the plane were recognised by the percentiles; a region is
    recognised by its magnitude."""
    blurred, sharp = (image.astype(np.float32) for image in pair)
    for image in (blurred, sharp):
        image[:, :24] = np.finfo(np.float32).max  # about 9 % of the plane
    PairedData(blurred, sharp, patch_size=32, validation=0.0)  # no error, and no misalignment warning


def test_a_long_blank_run_of_planes_is_not_walked_crop_by_crop(pair, monkeypatch):
    """Zero-padded first slices: the search for crops with content read every blank crop in grid order (and
    rebuilt its list each time: quadratic). Replacements are spread over the grid, and reads are bounded."""
    blurred, sharp = (image[:64, :64].astype(np.float32) for image in pair)
    stack_b, stack_s = np.zeros((400, 64, 64), np.float32), np.zeros((400, 64, 64), np.float32)
    stack_b[300:], stack_s[300:] = blurred, sharp  # the first 300 planes are blank
    reads: list[int] = []
    is_blank = PairedData._is_blank
    monkeypatch.setattr(PairedData, "_is_blank", lambda self, *crop: reads.append(1) or is_blank(self, *crop))
    d = PairedData(
        stack_b,
        stack_s,
        patch_size=32,
        validation=(stack_b, stack_s),
        axes="ZYX",
        check_alignment=False,
        max_validation_crops=16,
    )
    assert len(d.validation_grid) == 16 and all(p.index[0] >= 300 for p, _, _ in d.validation_grid)
    assert len(reads) < 200, len(reads)  # 1,600 crops, 1,200 of them blank
    reads.clear()
    empty = np.zeros((400, 64, 64), np.float32)
    with pytest.raises(InputError, match="All 256 validation crops checked are blank"):
        PairedData(
            stack_b,
            stack_s,
            patch_size=32,
            validation=(empty, empty + 1),
            axes="ZYX",
            check_alignment=False,
            max_validation_crops=16,
        )
    assert len(reads) == 256


def test_messages_name_what_is_wrong(pair):
    from napari_deblurgan.data.pairs import resolve_blur_strength, resolve_noise

    blurred, sharp = pair
    rgb = np.stack([sharp] * 3)
    with pytest.raises(InputError, match=r"has 1\. Use a 1-channel model\.$"):  # not "a 1-channel model, or a 1-..."
        PairedData(blurred, sharp, channels=3, patch_size=32)
    with pytest.raises(InputError, match=r"^validation 0\.99 holds out so much of each 256 x 256 image plane"):
        PairedData(blurred, sharp, patch_size=32, validation=0.99)
    with pytest.raises(
        InputError,
        match=r"^The validation pair \(shape \(64, 64\)\) must have the same axes as the "
        r"training images \(axes 'CYX'\): the axes apply to it too, or pass its own as validation_axes\. axes 'CYX'",
    ):
        PairedData(
            rgb + 1,
            rgb,
            axes="CYX",
            patch_size=32,
            validation=(blurred[:64, :64], sharp[:64, :64]),
            check_alignment=False,
        )
    with pytest.raises(InputError, match=r"but the validation image .* has 2\. Give a validation pair with 3 channels"):
        PairedData(None, rgb, axes="CYX", channels=3, patch_size=32, validation=(None, rgb[:2, :64, :64]))
    with pytest.raises(InputError, match=r"noise photons must be > 0 \(fewer photons = noisier\), got -3"):
        resolve_noise({"photons": -3})
    with pytest.raises(InputError, match=r"noise \(photons\) must be > 0"):
        resolve_noise((-3, 5))
    with pytest.raises(InputError, match="blur_strength must be > 0 pixels"):
        resolve_blur_strength((-1, 2), ("motion",))


def test_a_wide_no_data_border_is_missing_to_training_not_its_range():
    """A border at float32's largest value ("no data") wider than the upper percentile's share (0.2 %) became
    the upper percentile itself: every training crop was squeezed to ~0 and the border read as image at 1.
    Sentinels are recognised by magnitude: the plane's range is its image's, and they are 0 in the crops."""
    rng = np.random.default_rng(4)
    sharp = rng.uniform(0.0, 1.0, (96, 96)).astype(np.float32)
    blurred = ndimage.gaussian_filter(sharp, 1.0)
    for image in (sharp, blurred):
        image[:, :8] = np.finfo(np.float32).max  # 8 % of the plane
    d = PairedData(blurred, sharp, patch_size=32, validation=0)
    lo, hi = d.sources[0].norm_range((), 0)
    assert 0.2 < lo < hi < 0.8, (lo, hi)  # the blurred plane's percentiles
    crops_blurred, crops_sharp = d.sample(64, np.random.default_rng(1), 0)
    for crops in (crops_blurred, crops_sharp):
        assert np.isfinite(crops).all() and np.abs(crops).max() < 2.0
        assert crops.max() > 0.5  # the image in unit range, not squeezed to ~0


_F32_MAX = float(np.finfo(np.float32).max)
_F64_MAX = float(np.finfo(np.float64).max)


def _sentinel_pair(dtype, value, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A 96 px float pair with a no-data border (8 columns) at ``value`` in ``where`` ("sharp", "blurred")."""
    rng = np.random.default_rng(4)
    sharp = rng.uniform(0.2, 1.0, (96, 96)).astype(dtype)
    blurred = ndimage.gaussian_filter(sharp, 1.0)
    (sharp if where == "sharp" else blurred)[:, :8] = value
    return blurred, sharp


@pytest.mark.parametrize("cache_bytes", [0, 2**26])
@pytest.mark.parametrize(("dtype", "value"), [(np.float32, _F32_MAX), (np.float64, -_F64_MAX)])
@pytest.mark.parametrize("where", ["sharp", "blurred"])
def test_no_data_in_one_image_of_a_pair_is_missing_in_both_crops(cache_bytes, dtype, value, where):
    """A no-data border in the sharp image only: its mean (2.8e37) raised a false "different units" warning
    (and overflowed at float64's largest value), and its crops had target 0 where the blurred input was image,
    which teaches the model to darken image to 0. Either image's sentinels are 0 in both crops."""
    blurred, sharp = _sentinel_pair(dtype, value, where)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no units warning, no overflow, no misalignment warning
        d = PairedData(blurred, sharp, patch_size=32, validation=0, cache_bytes=cache_bytes)
    b, s = d.sources[0].crop((), None, 10, 0, 32)
    assert np.all(b[:, :, :8] == 0) and np.all(s[:, :, :8] == 0)
    assert np.all(b[:, :, 8:] != 0) and np.all(s[:, :, 8:] != 0)  # image (normalised: may be < 0)
    crops_b, crops_s = d.sample(64, np.random.default_rng(1), 0)
    assert np.array_equal(crops_b == 0, crops_s == 0)  # nowhere input image with target 0, or the reverse
    assert (crops_s == 0).any() and np.abs(crops_s).max() < 3 and np.abs(crops_b).max() < 3


def test_a_units_mismatch_is_still_said_beside_a_no_data_border():
    """The control: the units check leaves out the no-data pixels, not the check."""
    blurred, sharp = _sentinel_pair(np.float32, _F32_MAX, "sharp")
    sharp[:, 8:] *= 1000
    with pytest.warns(UserWarning, match="different units"):
        PairedData(blurred, sharp, patch_size=32, validation=0, check_alignment=True)


def test_synthetic_blur_of_a_no_data_border_stays_out_of_its_neighbours():
    """Sharp-only training: the crops are normalised (sentinels 0) before blur is synthesised, so the border
    blurs into its neighbours as a dark region, never as 1e30 (a NaN or a 1e29 input)."""
    import torch

    _, sharp = _sentinel_pair(np.float32, _F32_MAX, "sharp")
    d = PairedData(None, sharp, patch_size=32, validation=0)
    batches = BatchSource(d, torch.device("cpu"), seed=0, noise=True)
    blurred, target = batches.next_batch(32)
    assert torch.isfinite(blurred).all() and torch.isfinite(target).all()
    assert blurred.abs().max() < 10 and target.abs().max() < 10


def test_normalize_of_float64_sentinels_warns_nothing():
    """float64's largest value overflowed ``(plane - lo) * scale`` with a RuntimeWarning, which the napari
    panel shows as a notification; it is clipped to the limit anyway."""
    from napari_deblurgan.normalization import NORMALIZED_LIMIT

    plane = np.random.default_rng(0).uniform(0, 1, (32, 32))
    plane[:, :3] = _F64_MAX
    plane[:, 3] = -_F64_MAX
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(plane, 0.0, 1e-3)
    assert np.all(out[:, :3] == NORMALIZED_LIMIT) and np.all(out[:, 3] == -NORMALIZED_LIMIT)


def test_float32_max_written_as_text_is_a_sentinel_in_float64_data():
    """GDAL and rasterio write float32's largest value as -3.4028235e+38, which parses to a float64 a little off
    it: only the exact value was taken as "no data". Every float64 that rounds to it in float32 is; values
    farther off (3.4e38, half a float32 step off exactly) remain image."""
    from napari_deblurgan.normalization import NORMALIZED_LIMIT, sentinel_mask

    half_step = 2.0**103
    sentinels = [
        float("-3.4028235e+38"),
        float("3.4028235e+38"),
        -_F32_MAX,
        _F64_MAX,
        np.nextafter(_F32_MAX + half_step, 0.0),
        np.nextafter(_F32_MAX - half_step, np.inf),
    ]
    image = [3.4e38, -3e38, _F32_MAX + half_step, _F32_MAX - half_step, 1e300, 0.5]
    mask = sentinel_mask(np.array(sentinels + image))
    assert mask is not None and mask.tolist() == [True] * len(sentinels) + [False] * len(image)
    assert sentinel_mask(np.array(image, dtype=np.float64)) is None
    plane = np.random.default_rng(0).uniform(0, 1, (64, 64))
    plane[:, :20] = float("-3.4028235e+38")  # 31 % of the plane
    lo, hi = percentile_range(plane)
    assert 0 <= lo < hi <= 1
    assert np.all(normalize(plane, lo, hi)[:, :20] == -NORMALIZED_LIMIT)


def _image_and_grey_stack(pair) -> tuple[np.ndarray, np.ndarray]:
    """A 2D image and a grey stack of 3 planes kept last (Y, X, Z): its last axis of 3 is inferred as RGB."""
    _blurred, sharp = pair
    return sharp[:96, :96], np.stack([sharp[:64, :80], sharp[64:128, :80], sharp[128:192, :80]], axis=-1)


def test_axes_may_be_one_string_per_image(pair):
    """A list of images of different axes: one axes string per image (None infers that image's), so a grey stack
    whose last axis is 3 long is read as 3 planes next to a 2D image, not as RGB."""
    image, stack = _image_and_grey_stack(pair)
    inferred = PairedData(None, [image, stack], patch_size=32, validation=0)
    assert [src.axes for src in inferred.sources] == ["YX", "YXS"]  # as before: RGB samples
    assert inferred.sources[1].plane_keys() == [((), 0), ((), 1), ((), 2)]  # 3 channels of one plane
    for axes in (["YX", "YXZ"], ("yx", "yxz"), [None, "YXZ"]):
        data = PairedData(None, [image, stack], axes=axes, patch_size=32, validation=0)
        assert [src.axes for src in data.sources] == ["YX", "YXZ"], axes
        assert data.sources[1].plane_keys() == [((0,), 0), ((1,), 0), ((2,), 0)]  # 3 planes along Z
        assert sorted((p.source, p.index, p.channel) for p in data.train_planes) == [
            (0, (), 0),
            (1, (0,), 0),
            (1, (1,), 0),
            (1, (2,), 0),
        ]
    # one string still applies to every image, blurred/sharp pairs take their sharp image's
    data = PairedData([stack + 1, stack + 2], [stack, stack], axes="YXZ", patch_size=32, validation=0)
    assert [src.axes for src in data.sources] == ["YXZ", "YXZ"]


def test_axes_lists_that_do_not_fit_say_what_to_change(pair):
    image, stack = _image_and_grey_stack(pair)
    images = [image, stack]
    with pytest.raises(InputError, match=r"^axes lists 3 axes strings but there are 2 training images: give one per"):
        PairedData(None, images, axes=["YX", "YXZ", "ZYX"], patch_size=32)
    with pytest.raises(InputError, match=r"^axes lists 2 axes strings but there is 1 training image"):
        PairedData(None, stack, axes=["YX", "YXZ"], patch_size=32)
    with pytest.raises(InputError, match=r"^axes\[1\] \(for image 2\) must be an axes string such as 'ZYX', or None"):
        PairedData(None, images, axes=["YX", 3], patch_size=32)
    with pytest.raises(InputError, match=r"^axes must be an axes string such as 'ZYX' \(for every image\), None"):
        PairedData(None, images, axes={"YX": 0}, patch_size=32)
    # the image whose axes do not fit is named, with its index in the list
    with pytest.raises(
        InputError, match=r"^Image 2 of 2 \(shape \(64, 80, 3\), axes\[1\]='ZYXC'\): axes 'ZYXC' has 4 letters"
    ):
        PairedData(None, images, axes=["YX", "ZYXC"], patch_size=32)
    # one string that fits one image but not another: named, and how to give each its own
    with pytest.raises(
        InputError,
        match=r"^Image 1 of 2 \(shape \(96, 96\), axes='YXZ'\): axes 'YXZ' has 3 letters but the image has 2 "
        r"dimensions.*\. One axes string applies to every image: for images of different axes, pass a list of "
        r"one per image \(None infers that image's\)\.$",
    ):
        PairedData(None, images, axes="YXZ", patch_size=32)
    # a single image keeps its message as it was
    with pytest.raises(InputError, match=r"^axes 'YXZ' has 3 letters but the image has 2 dimensions"):
        PairedData(None, image, axes="YXZ", patch_size=32)


def test_validation_pair_axes_with_axes_per_image(pair):
    """With one string the validation pair has it too (as before); with a list of axes (one per training image)
    the pair's are inferred, or given as validation_axes."""
    image, stack = _image_and_grey_stack(pair)
    images = [image, stack]
    data = PairedData(None, images, axes=["YX", "YXZ"], patch_size=32, validation=(None, stack))
    assert data.validation_sources[0].axes == "YXS"  # inferred from its shape
    data = PairedData(None, images, axes=["YX", "YXZ"], validation_axes="YXZ", patch_size=32, validation=(None, stack))
    assert data.validation_sources[0].axes == "YXZ"
    assert [p.index for p in data.validation_planes] == [(0,), (1,), (2,)]
    data = PairedData(None, stack, axes="YXZ", patch_size=32, validation=(None, stack))
    assert data.validation_sources[0].axes == "YXZ"
    data = PairedData(None, stack, axes="YXZ", validation_axes="YXC", patch_size=32, validation=(None, stack))
    assert data.validation_sources[0].axes == "YXC"
    with pytest.raises(
        InputError, match=r"^The validation pair \(shape \(64, 80, 3\), validation_axes\): axes 'YX' has"
    ):
        PairedData(None, images, axes=["YX", "YXZ"], validation_axes="YX", patch_size=32, validation=(None, stack))
    with pytest.raises(
        InputError, match=r"inferred from its shape: give them as validation_axes\.$"
    ):  # a 5-D pair has no inferred axes
        PairedData(None, images, axes=["YX", "YXZ"], patch_size=8, validation=(None, stack[None, None, :8, :8, :1]))
    with pytest.raises(InputError, match=r"^validation_axes is for an explicit \(blurred, sharp\) validation pair"):
        PairedData(None, images, axes=["YX", "YXZ"], validation_axes="YXZ", patch_size=32, validation=0.1)


def test_a_validation_pair_whose_axes_differ_from_the_one_axes_string_is_told_of_validation_axes():
    stack = np.ones((3, 64, 64), np.float32) * np.arange(64)
    plane = stack[0]
    with pytest.raises(InputError, match=r"axes 'ZYX'\): the axes apply to it too, or pass its own as validation_axes"):
        PairedData(stack, stack * 2, axes="ZYX", patch_size=32, validation=(plane, plane * 2))
    data = PairedData(stack, stack * 2, axes="ZYX", validation_axes="YX", patch_size=32, validation=(plane, plane * 2))
    assert data.validation_sources[0].axes == "YX"


def test_training_crops_take_all_eight_flips_and_turns_alike_for_both_images(pair):
    # a patch the size of the image leaves one position: the crops differ only by their flip/turn, and all 8
    # symmetries of the square come, each the same for the blurred and the sharp crop
    blurred, sharp = pair
    b_img, s_img = blurred[:48, :48], sharp[:48, :48]
    d = PairedData(b_img, s_img, patch_size=48, validation=0.0, check_alignment=False)
    b, s = d.sample(200, np.random.default_rng(0))
    lo, hi = d.sources[0].norm_range((), 0)
    views = [np.rot90(v, k) for v in (s_img, s_img[:, ::-1]) for k in range(4)]
    seen = set()
    for crop_b, crop_s in zip(b[:, 0], s[:, 0], strict=True):
        (k,) = [k for k, v in enumerate(views) if np.allclose(crop_s, normalize(v, lo, hi))]
        seen.add(k)
        view_b = np.rot90(b_img if k < 4 else b_img[:, ::-1], k % 4)
        np.testing.assert_array_equal(crop_b, normalize(view_b, lo, hi))
    assert seen == set(range(8))


def test_synthetic_blur_leaves_the_crops_of_a_pair_aligned(pair):
    # one fixed Gaussian (sigma 0.5 px) and no noise: away from its edges each blurred crop is its own sharp
    # crop convolved in place, with no shift between the two (the PSF's margin is cut from both alike)
    import torch

    from napari_deblurgan.blur.torch_synthesis import blur_batch, random_psf_batch

    _, sharp = pair
    d = PairedData(None, sharp, patch_size=48, validation=0.0)
    fixed = {"gaussian": (0.5, 0.5)}
    kinds = resolve_blur_kinds("gaussian")
    src = BatchSource(d, torch.device("cpu"), seed=1, blur_kinds=kinds, noise=False, strength_ranges=fixed)
    blurred, crops = src.next_batch(6)
    psf = random_psf_batch(1, src.psf_size, kinds, generator=torch.Generator(), strength_ranges=fixed)
    expected = blur_batch(crops, psf.expand(len(crops), -1, -1, -1))
    r = src.psf_size // 2
    torch.testing.assert_close(blurred[..., r:-r, r:-r], expected[..., r:-r, r:-r], rtol=0, atol=1e-5)


def test_a_constant_channel_does_not_make_a_joint_validation_crop_blank():
    # joint (RGB) crops are blank only when every channel is constant: one flat channel leaves the crop in
    rgb = data.astronaut()[::4, ::4].copy()
    rgb[..., 2] = 40
    blurred = ndimage.gaussian_filter(rgb, (1.5, 1.5, 0))
    d = PairedData(blurred, rgb, channels=3, patch_size=32, validation=0.25, check_alignment=False)
    assert d.validation_grid and not [n for n in d.notes if "blank" in n]


def test_validation_crops_lie_inside_their_plane(pair):
    # a 63 px validation image holds one 32 px crop per axis: none may reach past its last row or column
    blurred, sharp = pair
    d = PairedData(blurred, sharp, patch_size=32, validation=(blurred[:63, :63], sharp[:63, :63]))
    assert len(d.validation_grid) == 1
    assert all(y0 + 32 <= p.rows[1] and x0 + 32 <= p.cols[1] for p, y0, x0 in d.validation_grid)

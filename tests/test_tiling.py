"""Tile consistency: tiled inference equals whole-image inference, for every architecture.

Property (hypothesis): for random images of random shapes - odd sizes, sizes that are not multiples of the
stride, up to two tiles long, always more than one tile (checked on the grid deblur itself plans) - the tiled
output with the default overlap matches the whole-image output within 2e-6 of the output range (max abs,
float32, CPU; see TOLERANCE), and the error has no structure along tile borders. A negative control shows the
border check does detect seams when the overlap is too small.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from napari_deblurgan import create_model, deblur, list_architectures  # noqa: E402
from napari_deblurgan.inference.tiling import (  # noqa: E402
    balanced_tile_length,
    blend_window,
    default_overlap,
    halo_for,
    plan_tiles,
    tile_starts,
)

# Small variants of each architecture (same code, fewer channels/blocks) keep the property test fast on CPU.
SMALL = {
    "resnet9": {"width": 4, "n_blocks": 2},
    "unet_lite": {"width": 4, "depth": 2, "n_blocks": 1},
    "unet_fast": {"width": 4, "depth": 2, "n_blocks": 1},
}


def _model(arch: str, seed: int = 0):
    model = create_model(arch, channels=1, seed=seed, **SMALL[arch])
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained resnet9 has
        g = torch.Generator().manual_seed(seed)
        for m in model.generator.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def test_every_architecture_is_covered():
    assert set(SMALL) == set(list_architectures())


#: Max |tiled - whole| over the output range that tiling may add (float32 on CPU). Correct tiling measured
#: 1e-7..3.6e-7 over ~180 random examples like the property test's (the summation order inside the
#: convolutions differs between a tile and the whole plane: a few float32 ulps of the range) and 5e-8..1.3e-7
#: on the default-size networks. Trusting the tiles' untrusted borders (halo 0) measured 1e-5..6.6e-5 in most
#: property examples (rarely below 2e-6; six examples together failed in every run) and 3.3e-6..6.5e-6 on the
#: default-size networks: 1e-5 would let those pass.
TOLERANCE = 2e-6


def _plane_grid(model, shape: tuple[int, int], tile: int):
    """(context padding, tile grid) that deblur itself uses for a plane of ``shape`` with ``tile_size=tile``."""
    from napari_deblurgan.inference.deblur import _PlaneRunner

    runner = _PlaneRunner(model, device="cpu", tile_size=tile, overlap=None, batch_size=None)
    return runner.pad, runner.plane_grid(*shape)


def _tile_boundaries(length: int, starts: tuple[int, ...], tile: int, pad: int) -> list[int]:
    """Positions (in image coordinates) where a tile edge falls inside the image."""
    edges = [s - pad for s in starts[1:]] + [s + tile - pad for s in starts[:-1]]
    return [e for e in edges if 0 < e < length]


def _border_structure(err: np.ndarray, rows: list[int], cols: list[int], width: int = 3) -> tuple[float, float]:
    """(mean |err| within `width` px of tile edges, mean |err| elsewhere)."""
    band = np.zeros(err.shape, bool)
    for r in rows:
        band[max(r - width, 0) : r + width, :] = True
    for c in cols:
        band[:, max(c - width, 0) : c + width] = True
    if not band.any() or band.all():
        return 0.0, 0.0
    return float(np.abs(err[band]).mean()), float(np.abs(err[~band]).mean())


@pytest.mark.parametrize("arch", sorted(SMALL))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    seed=st.integers(min_value=0, max_value=2**16),
    extra=st.integers(min_value=0, max_value=3),
    transpose=st.booleans(),
)
def test_tiled_equals_whole_image(arch, data, seed, extra, transpose):
    model = _model(arch)
    overlap = default_overlap(model.receptive_radius, model.stride)
    tile = overlap + model.stride * (8 + 4 * extra)  # small tiles: several per axis
    # one side up to two tiles long, the other narrow (cheap): sizes relative to the tile, whatever the
    # architecture's halo (unet_fast's tiles are 208-304 px)
    long = data.draw(st.integers(min_value=8, max_value=2 * tile), label="long side")
    short = data.draw(st.integers(min_value=8, max_value=48), label="short side")
    height, width = (short, long) if transpose else (long, short)
    pad, grid = _plane_grid(model, (height, width), tile)
    assume(len(grid) > 1)  # one tile would compare the whole image with itself
    rng = np.random.default_rng(seed)
    image = (rng.random((height, width)) * 1000).astype(np.float32)
    whole = deblur(image, model, tile_size=4096, device="cpu")
    tiled = deblur(image, model, tile_size=tile, device="cpu")
    err = tiled.astype(np.float64) - whole
    out_range = float(whole.max() - whole.min()) or 1.0
    assert np.abs(err).max() <= TOLERANCE * out_range, np.abs(err).max() / out_range
    th, tw = grid.tile_shape
    band, rest = _border_structure(
        err, _tile_boundaries(height, grid.starts_y, th, pad), _tile_boundaries(width, grid.starts_x, tw, pad)
    )
    assert band <= 2 * rest + 1e-6 * out_range, (band, rest)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_too_small_overlap_leaves_detectable_seams(arch):
    """Negative control: the checks above do fail when tiles are blended without enough context."""
    model = _model(arch)
    halo = halo_for(model.receptive_radius, model.stride)
    tile = 2 * halo + 12 * model.stride
    side = max(160, tile + 64)  # more than one tile, whatever the architecture's halo
    image = (np.random.default_rng(1).random((side, side)) * 1000).astype(np.float32)
    whole = deblur(image, model, tile_size=4096, device="cpu")
    with pytest.warns(UserWarning, match="below this model's seamless overlap"):  # the user is told
        seamy = deblur(image, model, tile_size=tile, overlap=model.stride, device="cpu")
    err = seamy.astype(np.float64) - whole
    out_range = float(whole.max() - whole.min())
    assert np.abs(err).max() > 1e-3 * out_range


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_default_sized_architectures_tile_seamlessly(arch):
    """The real (default-size) networks, once each: default overlap, tiles forced small along Y, the image 40 px
    shorter than a tile, so that with its 32 px of context on each side Y takes two tiles (a narrow image keeps
    this affordable on a CPU: X fits in one)."""
    model = create_model(arch, channels=1, seed=3)
    overlap = default_overlap(model.receptive_radius, model.stride)
    tile = overlap + 8 * model.stride
    image = (np.random.default_rng(2).random((tile - 40, 36)) * 60000).astype(np.float32)
    assert len(_plane_grid(model, image.shape, tile)[1].starts_y) == 2
    whole = deblur(image, model, tile_size=8192, device="cpu")
    tiled = deblur(image, model, tile_size=tile, device="cpu")
    err = np.abs(tiled.astype(np.float64) - whole).max() / float(whole.max() - whole.min())
    assert err <= TOLERANCE, err


# ------------------------------------------------------------------------------------------ unit pieces


@settings(max_examples=50, deadline=None)
@given(
    n_stride=st.integers(min_value=1, max_value=200),
    tile_mult=st.integers(min_value=4, max_value=40),
    overlap_mult=st.integers(min_value=0, max_value=3),
)
def test_tile_starts_cover_the_axis_on_the_stride_grid(n_stride, tile_mult, overlap_mult):
    stride = 4
    length, tile = n_stride * stride, tile_mult * stride
    overlap = min(overlap_mult * stride, tile - stride)
    starts = tile_starts(length, min(tile, length), overlap, stride)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    assert all(s % stride == 0 for s in starts)
    assert all(b - a <= t - overlap for a, b in itertools.pairwise(starts))


@settings(max_examples=100, deadline=None)
@given(
    n_stride=st.integers(min_value=1, max_value=600),
    tile_mult=st.integers(min_value=8, max_value=300),
    overlap_mult=st.integers(min_value=0, max_value=6),
)
def test_balanced_tiles_need_no_more_tiles_and_no_more_pixels(n_stride, tile_mult, overlap_mult):
    stride = 4
    length, tile, overlap = n_stride * stride, tile_mult * stride, overlap_mult * stride
    balanced = balanced_tile_length(length, tile, overlap, stride)
    assert balanced % stride == 0 and balanced <= min(tile, length)
    if length > tile:  # several tiles: each must reach past the overlap
        assert balanced > overlap
    n_plain = len(tile_starts(length, min(tile, length), overlap, stride))
    n_balanced = len(tile_starts(length, balanced, overlap, stride))
    assert n_balanced <= n_plain
    assert n_balanced * balanced <= n_plain * min(tile, length)


def test_blend_windows_form_a_partition_of_unity_with_exact_overlap():
    halo, overlap, tile = 8, 24, 64
    grid = plan_tiles((64 * 3 - 2 * 24, 40), tile_size=tile, overlap=overlap, halo=halo, stride=4)
    total = np.zeros(grid.shape)
    for ys, xs, w in grid.tiles():
        total[ys, xs] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    w = blend_window(tile, halo, overlap, left=True, right=True)
    assert np.all(w[:halo] < 1e-6) and np.all(w[-halo:] < 1e-6)  # the halo is never trusted


@pytest.mark.parametrize(
    ("shape", "rows", "cols"),
    [
        ((1, 40, 52), (8, 30), (4, 44)),
        ((2, 16, 16), (0, 16), (3, 9)),
        ((1, 20, 20), (6, 10), (2, 18)),
        ((3, 12, 12), (0, 12), (0, 12)),
    ],
)
def test_reflect_fill_matches_numpy_reflect_padding(shape, rows, cols):
    """deblur pads each plane in place (no second plane-sized buffer); the values are np.pad's 'reflect'."""
    from napari_deblurgan.inference.deblur import reflect_fill

    rng = np.random.default_rng(0)
    inner = rng.random((shape[0], rows[1] - rows[0], cols[1] - cols[0])).astype(np.float32)
    padded = np.full(shape, np.nan, dtype=np.float32)
    padded[:, rows[0] : rows[1], cols[0] : cols[1]] = inner
    reflect_fill(padded, rows, cols)
    pads = ((0, 0), (rows[0], shape[1] - rows[1]), (cols[0], shape[2] - cols[1]))
    np.testing.assert_array_equal(padded, np.pad(inner, pads, mode="reflect"))


def test_the_weight_sums_factor_into_one_dimensional_sums():
    grid = plan_tiles((200, 168), tile_size=64, overlap=24, halo=8, stride=4)
    total = np.zeros(grid.shape)
    for ys, xs, w in grid.tiles():
        total[ys, xs] += w
    sum_y, sum_x = grid.weight_sums()
    np.testing.assert_allclose(sum_y[:, None] * sum_x[None, :], total, rtol=1e-6)


@pytest.mark.parametrize(("radius", "stride"), [(29, 4), (155, 16), (3, 1), (40, 8)])
@pytest.mark.parametrize("overlap", [None, 0, 5, 64, 200, 401])
def test_minimum_tile_size_is_where_check_tiling_starts_to_accept(radius, stride, overlap):
    """What the Deblur panel offers as the smallest tile: accepted as it is, and no smaller size gives a smaller
    tile (each is refused or rounded up to at least it)."""
    import contextlib
    import warnings

    from napari_deblurgan.errors import InputError
    from napari_deblurgan.inference.tiling import check_tiling, minimum_tile_size

    smallest = minimum_tile_size(radius, stride, overlap)
    assert smallest % stride == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an overlap below the seamless one warns that seams may show
        assert check_tiling(smallest, overlap, radius, stride)[0] == smallest
        for tile in range(1, smallest):
            with contextlib.suppress(InputError):  # refused, or rounded up
                assert check_tiling(tile, overlap, radius, stride)[0] >= smallest

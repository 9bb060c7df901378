"""Metrics, classical deconvolution baselines and comparison tables (compare.py)."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage import metrics as sk_metrics

from napari_deblurgan import compare, comparison, richardson_lucy, wiener
from napari_deblurgan.blur.psf import gaussian_psf, motion_psf
from napari_deblurgan.blur.synthesize import synthesize_blur
from napari_deblurgan.comparison import ComparisonTable, best_classical, nrmse, psnr, sharpness, ssim
from napari_deblurgan.errors import InputError


@pytest.fixture(scope="module")
def camera_crop() -> np.ndarray:
    return data.camera()[160:256, 200:296].copy()  # 96 x 96 uint8, with edges and texture


def test_psnr_data_range_and_values(camera_crop):
    noisy = np.clip(camera_crop.astype(int) + 10, 0, 255).astype(np.uint8)
    expected = sk_metrics.peak_signal_noise_ratio(camera_crop, noisy, data_range=255)
    assert psnr(camera_crop, noisy) == pytest.approx(expected)
    assert psnr(camera_crop, camera_crop) == math.inf
    # float reference: data range is its max - min
    ref = camera_crop.astype(np.float64) / 255 * 3
    img = ref + 0.03
    assert psnr(ref, img) == pytest.approx(10 * np.log10((ref.max() - ref.min()) ** 2 / 0.03**2))
    assert psnr(ref, img, data_range=1.0) == pytest.approx(10 * np.log10(1 / 0.03**2))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "a", True])
def test_a_bad_data_range_is_one_clear_error(camera_crop, bad):
    noisy = camera_crop + 0.01
    for call in (
        lambda: psnr(camera_crop, noisy, bad),
        lambda: ssim(camera_crop, noisy, bad),
        lambda: compare({"noisy": noisy}, camera_crop, data_range=bad),
    ):
        with pytest.raises(InputError, match="data_range must be a finite number > 0"):
            call()
    assert psnr(camera_crop, noisy, np.float32(2.0)) == pytest.approx(psnr(camera_crop, noisy, 2.0))


def test_ssim_and_nrmse(camera_crop):
    assert ssim(camera_crop, camera_crop) == pytest.approx(1.0)
    blurred = ndimage.gaussian_filter(camera_crop, 2)
    assert 0 < ssim(camera_crop, blurred) < 0.95
    expected = sk_metrics.structural_similarity(camera_crop.astype(float), blurred.astype(float), data_range=255)
    assert ssim(camera_crop, blurred) == pytest.approx(expected)
    ref = camera_crop.astype(np.float64)
    assert nrmse(ref, ref) == 0
    assert nrmse(ref, 1.1 * ref) == pytest.approx(0.1)
    # stacks: mean over planes
    stack_ref = np.stack([camera_crop, camera_crop])
    stack_img = np.stack([camera_crop, blurred])
    assert ssim(stack_ref, stack_img) == pytest.approx((1 + expected) / 2)


def test_metrics_reject_shape_mismatch(camera_crop):
    with pytest.raises(InputError, match="same shape"):
        psnr(camera_crop, camera_crop[:-1])
    with pytest.raises(InputError, match="same shape"):
        compare({"a": camera_crop[:-1]}, camera_crop)


def test_sharpness_orders_blur_and_is_scale_invariant(camera_crop):
    image = camera_crop.astype(np.float64)
    values = [sharpness(ndimage.gaussian_filter(image, s)) for s in (0, 1, 2, 4)]
    assert values == sorted(values, reverse=True)
    assert sharpness(image * 7 + 100) == pytest.approx(sharpness(image))
    assert sharpness(np.ones((16, 16))) == 0


def _blurred_camera(kind_psf, noise_photons=None, seed=0):
    sharp = data.camera()[128:224, 192:288].copy()
    noise = None if noise_photons is None else {"photons": noise_photons, "read_noise": 1.0}
    blurred, psf = synthesize_blur(sharp, kind_psf, noise=noise, seed=seed)
    return sharp, blurred, psf


def test_richardson_lucy_and_wiener_improve_psnr():
    sharp, blurred, psf = _blurred_camera(gaussian_psf(1.5), noise_photons=2000)
    base = psnr(sharp, blurred)
    rl = richardson_lucy(blurred, psf, 20)
    wi = wiener(blurred, psf, 0.01)
    assert rl.dtype == blurred.dtype == wi.dtype and rl.shape == blurred.shape
    assert psnr(sharp, rl) > base + 0.5
    assert psnr(sharp, wi) > base + 0.5
    assert sharpness(rl) > sharpness(blurred)


def test_deconvolution_keeps_alignment_and_any_range():
    # a point blurred by an asymmetric motion PSF must be restored at the same place (no shift)
    img = np.zeros((48, 48))
    img[20, 27] = 1000.0
    psf = motion_psf(9.0, 4)
    blurred, _ = synthesize_blur(img, psf)
    for result in (richardson_lucy(blurred, psf, 60), wiener(blurred, psf, 1e-3)):
        assert np.unravel_index(np.argmax(result), result.shape) == (20, 27)
    # float data with an offset and negative values: works and returns the same dtype
    shifted = (blurred - 50).astype(np.float32)
    out = richardson_lucy(shifted, psf, 5)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_deconvolution_borders_do_not_ring():
    # a bright flat image: reflect padding means the result stays flat up to the borders
    flat = np.full((40, 40), 200, np.uint16)
    psf = motion_psf(7.0, 1)
    for result in (richardson_lucy(flat, psf, 10), wiener(flat, psf, 0.01)):
        assert np.abs(result.astype(float) - 200).max() <= 2


def test_richardson_lucy_matches_stepwise_and_best_classical():
    sharp, blurred, psf = _blurred_camera("motion", noise_photons=1000, seed=3)
    result = best_classical(blurred, sharp, psf, rl_iterations=range(2, 11), wiener_balances=[1e-3, 1e-2, 1e-1])
    scan = result["richardson_lucy"]
    assert scan["iterations"] == list(range(2, 11))
    # the one-pass scan scores exactly what separate runs give
    for n in (2, 7, 10):
        assert scan["psnr"][scan["iterations"].index(n)] == pytest.approx(psnr(sharp, richardson_lucy(blurred, psf, n)))
    assert result["wiener"]["psnr"][1] == pytest.approx(psnr(sharp, wiener(blurred, psf, 1e-2)))
    all_scores = scan["psnr"] + result["wiener"]["psnr"]
    assert result["psnr"] == pytest.approx(max(all_scores))
    assert result["psnr"] == pytest.approx(psnr(sharp, result["image"]))
    assert result["psnr"] > psnr(sharp, blurred)
    assert result["method"] in ("richardson_lucy", "wiener")
    key = "iterations" if result["method"] == "richardson_lucy" else "balance"
    assert set(result["parameters"]) == {key}
    assert result["image"].dtype == blurred.dtype


def test_best_classical_on_stack():
    sharp, blurred, psf = _blurred_camera(gaussian_psf(1.2))
    stack_sharp = np.stack([sharp, sharp[::-1]])
    stack_blurred = np.stack([blurred, blurred[::-1]])
    result = best_classical(stack_blurred, stack_sharp, psf, rl_iterations=[3, 5], wiener_balances=[0.01])
    assert result["image"].shape == stack_sharp.shape
    assert result["psnr"] > psnr(stack_sharp, stack_blurred)


def test_bad_arguments():
    img = np.zeros((16, 16))
    with pytest.raises(InputError):
        richardson_lucy(img, np.ones((3, 3)), 0)
    with pytest.raises(InputError):
        wiener(img, np.ones((3, 3)), 0)
    with pytest.raises(InputError):
        wiener(img, -np.ones((3, 3)))
    with pytest.raises(InputError):
        compare({})
    with pytest.raises(InputError):
        compare("image")


def test_compare_table(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1000, (3, 32, 32)).astype(np.uint16)
    good = ref.copy()
    good[0, 0, 0] += 5
    bad = ndimage.uniform_filter(ref, (1, 5, 5))
    table = compare({"good": good, "bad": bad}, ref, per_slice=True)
    assert isinstance(table, ComparisonTable)
    assert [(r["name"], r["slice"]) for r in table.rows] == [
        ("good", None),
        ("good", (0,)),
        ("good", (1,)),
        ("good", (2,)),
        ("bad", None),
        ("bad", (0,)),
        ("bad", (1,)),
        ("bad", (2,)),
    ]
    whole_good, whole_bad = table.rows[0], table.rows[4]
    assert whole_good["psnr"] == pytest.approx(psnr(ref, good))
    assert whole_good["psnr"] > whole_bad["psnr"]
    assert whole_good["ssim"] > whole_bad["ssim"]
    assert whole_good["nrmse"] < whole_bad["nrmse"]
    assert table.rows[2]["psnr"] == math.inf  # planes 1 and 2 of "good" are identical
    assert table.rows[5]["psnr"] == pytest.approx(psnr(ref[0], bad[0], 65535))

    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "slice", "psnr", "ssim", "nrmse", "sharpness"]
    assert len(lines) == 9 and len({len(line) for line in lines}) == 1  # aligned columns
    assert "<table>" in table._repr_html_()

    path = tmp_path / "metrics.csv"
    table.to_csv(path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and rows[1]["slice"] == "0"
    assert float(rows[4]["psnr"]) == pytest.approx(whole_bad["psnr"])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left


def test_compare_without_reference_and_sequence(camera_crop):
    table = compare([camera_crop, ndimage.gaussian_filter(camera_crop, 2)])
    assert [r["name"] for r in table.rows] == ["image 0", "image 1"]
    assert table.rows[0]["psnr"] is None and table.rows[0]["ssim"] is None
    assert table.rows[0]["sharpness"] > table.rows[1]["sharpness"]
    assert "-" in str(table)


def test_compare_stays_the_function_after_importing_the_module(camera_crop):
    """The module is ``comparison``, so ``napari_deblurgan.compare`` is always the function."""
    import importlib

    import napari_deblurgan

    importlib.import_module("napari_deblurgan.comparison")
    assert callable(napari_deblurgan.compare)
    table = napari_deblurgan.compare({"same": camera_crop}, camera_crop)
    assert table.rows[0]["psnr"] == math.inf


_MEMORY_CALLS = {
    "psnr": lambda ref, img, psf, axes: psnr(ref, img),
    "nrmse": lambda ref, img, psf, axes: nrmse(ref, img),
    "compare": lambda ref, img, psf, axes: compare({"a": img}, ref, axes=axes, per_slice=True),
    "compare without reference": lambda ref, img, psf, axes: compare({"a": img}, axes=axes),
    "richardson_lucy": lambda ref, img, psf, axes: richardson_lucy(img, psf, 3, axes=axes),
    "wiener": lambda ref, img, psf, axes: wiener(img, psf, 0.01, axes=axes),
    "best_classical": lambda ref, img, psf, axes: best_classical(
        img, ref, psf, rl_iterations=[1, 3], wiener_balances=[0.01, 1.0], axes=axes
    ),
}


@pytest.mark.parametrize("axes", ["ZYX", "ZYXC"])
@pytest.mark.parametrize("what", list(_MEMORY_CALLS))
def test_memory_does_not_grow_with_the_stack(what, axes, monkeypatch, numpy_peak):
    """Metrics and classical deconvolution work plane by plane (metrics in blocks of rows): a stack 4x larger
    needs its larger result, if any, and nothing else. They made whole-stack float64 copies (PSNR/NRMSE 8-12x
    the input, Wiener 16x, Richardson-Lucy 36x for a uint16 stack) and channel-last stacks (ZYXC) were copied
    whole to make a stack of planes."""
    # small test stacks must span several of the metrics' float64 blocks (1M elements by default)
    monkeypatch.setattr(comparison, "_BLOCK_ELEMENTS", 128 * 128, raising=False)
    call = _MEMORY_CALLS[what]
    psf = gaussian_psf(1.5)

    def peak(planes: int) -> tuple[int, int]:
        shape = (planes, 128, 128) if axes == "ZYX" else (planes // 2, 128, 128, 2)
        rng = np.random.default_rng(2)
        ref = (rng.random(shape) * 3000).astype(np.uint16)
        img = (rng.random(shape) * 3000).astype(np.uint16)
        return numpy_peak(lambda: call(ref, img, psf, axes)), ref.nbytes

    small, small_bytes = peak(6)
    large, large_bytes = peak(24)
    extra_input = large_bytes - small_bytes
    extra_result = extra_input if what in ("richardson_lucy", "wiener", "best_classical") else 0
    assert large - small < extra_result + 0.25 * extra_input, (small, large, extra_input)


@pytest.mark.parametrize("axes", ["ZYX", "YX"])
def test_best_classical_result_is_the_winner_computed_alone(axes):
    """The winner of the scan (computed again for stacks, kept for single planes) is exactly what the method
    gives with that parameter, and its score is the PSNR of the returned image."""
    sharp, blurred, psf = _blurred_camera(gaussian_psf(1.5), noise_photons=300, seed=4)
    if axes == "ZYX":
        sharp, blurred = np.stack([sharp, sharp.T, sharp[::-1]]), np.stack([blurred, blurred.T, blurred[::-1]])
    for balances in ([1e-3, 1e-1, 10.0], []):
        result = best_classical(blurred, sharp, psf, rl_iterations=[1, 4, 8], wiener_balances=balances, axes=axes)
        if result["method"] == "wiener":
            expected = wiener(blurred, psf, result["parameters"]["balance"], axes=axes)
        else:
            expected = richardson_lucy(blurred, psf, result["parameters"]["iterations"], axes=axes)
        np.testing.assert_array_equal(result["image"], expected)
        assert result["psnr"] == pytest.approx(psnr(sharp, expected), rel=1e-12)
        assert result["ssim"] == pytest.approx(ssim(sharp, expected, axes=axes))


def test_compare_can_be_cancelled_between_planes():
    import threading

    from napari_deblurgan import Cancelled

    stack = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="comparison was cancelled"):
        compare({"a": stack}, stack, cancel=stop)
    asked = []
    compare({"a": stack}, stack, cancel=lambda: asked.append(1) or False)
    assert len(asked) == 5  # once a plane


def test_classical_baselines_can_be_cancelled():
    import threading

    from napari_deblurgan import Cancelled, richardson_lucy, wiener
    from napari_deblurgan.blur.psf import gaussian_psf

    stack = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        richardson_lucy(stack, gaussian_psf(1.0), iterations=5, cancel=stop)
    with pytest.raises(Cancelled):
        wiener(stack, gaussian_psf(1.0), cancel=lambda: True)
    calls = []
    richardson_lucy(stack[0], gaussian_psf(1.0), iterations=4, cancel=lambda: calls.append(1) or False)
    assert len(calls) >= 4  # asked between iterations, not only between planes


def test_a_result_in_other_units_than_the_ground_truth_gets_a_note():
    from napari_deblurgan import compare, samples, synthesize_blur

    sharp = (samples.cells((96, 96), seed=2) * 3000 + 100).astype(np.uint16)
    blurred, _ = synthesize_blur(sharp, kind="motion", strength=15.0, noise="realistic", seed=1)
    table = compare({"blurred": blurred, "sharp copy": sharp.copy()}, sharp)
    assert table.notes == []  # heavy blur and noise are not other units
    floats = (blurred.astype(np.float32) - blurred.min()) / np.ptp(blurred)
    table = compare({"blurred": blurred, "as floats": floats, "8 bit": (blurred // 16).astype(np.uint8)}, sharp)
    assert len(table.notes) == 2 and "'as floats'" in table.notes[0] and "'8 bit'" in table.notes[1]
    assert "other units?" in str(table)
    assert "other units?" in table._repr_html_()  # what a notebook shows must say it too


class _PlaneStore:
    """A zarr-like array (shape, dtype, ndim, __getitem__) that counts the planes read and refuses to be read
    whole: np.asarray of it raises, as a too-large zarr or h5py dataset would exhaust memory."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        region = self._array[key]
        self.reads.append(region.size)
        return region.copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def _stack_pair(planes: int = 4, axes: str = "ZYX"):
    rng = np.random.default_rng(5)
    sharp = (ndimage.uniform_filter(rng.random((planes, 48, 40)), (1, 5, 5)) * 3000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.5, 1.5)).astype(np.uint16)
    if axes == "ZYXC":
        sharp, blurred = (a.reshape(planes // 2, 2, 48, 40).transpose(0, 2, 3, 1) for a in (sharp, blurred))
    return sharp, blurred


@pytest.mark.parametrize("axes", ["ZYX", "ZYXC"])
@pytest.mark.parametrize("method", ["richardson_lucy", "wiener"])
def test_baselines_on_a_dask_stack_stay_lazy_and_match_numpy(method, axes):
    """A dask array in gives a lazy dask array out (one plane per block, as deblur() does) with the NumPy
    result's values: the [0, 1] scaling takes the whole stack's range, read once up front."""
    da = pytest.importorskip("dask.array")
    _, blurred = _stack_pair(4, axes)
    call = (
        (lambda img: richardson_lucy(img, gaussian_psf(1.5), 5, axes=axes))
        if method == "richardson_lucy"
        else (lambda img: wiener(img, gaussian_psf(1.5), 0.05, axes=axes))
    )
    computed: list[tuple[int, ...]] = []

    def counted(block):
        if block.size:  # not dask's own call on an empty block, to learn the output type
            computed.append(block.shape)
        return block

    lazy_in = da.from_array(blurred, chunks=(1, 24, 40, 1)[: blurred.ndim]).map_blocks(counted, dtype=blurred.dtype)
    lazy = call(lazy_in)
    assert isinstance(lazy, da.Array) and lazy.shape == blurred.shape and lazy.dtype == blurred.dtype
    assert len(computed) == lazy_in.npartitions  # the range pass read each block once; nothing deconvolved yet
    assert all(set(sizes) == {1} for sizes, a in zip(lazy.chunks, axes, strict=True) if a not in "YX")
    np.testing.assert_array_equal(lazy.compute(), call(blurred))


def test_baselines_and_compare_read_a_zarr_like_array_plane_by_plane(monkeypatch):
    monkeypatch.setattr(comparison, "_BLOCK_ELEMENTS", 48 * 40)  # the range pass's blocks: one plane here
    sharp, blurred = _stack_pair(4)
    store, ref_store = _PlaneStore(blurred), _PlaneStore(sharp)
    result = wiener(store, gaussian_psf(1.5), 0.05, axes="ZYX")
    assert type(result) is np.ndarray
    np.testing.assert_array_equal(result, wiener(blurred, gaussian_psf(1.5), 0.05, axes="ZYX"))
    assert max(store.reads) == 48 * 40  # planes (and the range pass's blocks), never the stack
    store.reads.clear()
    table = compare({"blurred": store}, ref_store, axes="ZYX", per_slice=True)
    expected = compare({"blurred": blurred}, sharp, axes="ZYX", per_slice=True)
    assert store.reads == [48 * 40] * 4  # every plane read once for all the metrics, whole and per slice
    for got, want in zip(table.rows, expected.rows, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_compare_reads_each_plane_of_lazy_results_once():
    """All the metrics of a plane (whole-image and per-slice rows, the units note) come from one read: a lazy
    result (a dask deblur() output, say) is computed once, not once per metric."""
    da = pytest.importorskip("dask.array")
    sharp, blurred = _stack_pair(4)
    computed: list[int] = []

    def counted(block):
        if block.size:  # not dask's own call on an empty block, to learn the output type
            computed.append(1)
        return block

    lazy = {
        name: da.from_array(a, chunks=(1, 48, 40)).map_blocks(counted, dtype=a.dtype)
        for name, a in (("blurred", blurred), ("sharp", sharp))
    }
    reference = da.from_array(sharp.astype(np.float32), chunks=(1, 48, 40)).map_blocks(counted, dtype=np.float32)
    table = compare(lazy, reference, per_slice=True)
    # the float reference's range (PSNR's data range) is one more pass over it
    assert len(computed) == 4 * 3 + 4
    expected = compare({"blurred": blurred, "sharp": sharp}, sharp.astype(np.float32), per_slice=True)
    assert [r["psnr"] for r in table.rows] == pytest.approx([r["psnr"] for r in expected.rows], rel=1e-12)
    assert [r["ssim"] for r in table.rows] == pytest.approx([r["ssim"] for r in expected.rows], rel=1e-12)


def test_compare_computes_a_dask_block_of_several_planes_once():
    """A block may hold several planes (a lazy RGB deblur() keeps its samples in one block; stacks are often
    chunked many planes deep): computing one plane computes the block, so reading plane by plane must not
    compute it once per plane - for a lazy deblur() result that is the network run again."""
    da = pytest.importorskip("dask.array")
    sharp, blurred = _stack_pair(6)
    computed: list[int] = []

    def counted(block):
        if block.size:
            computed.append(block.shape[0])
        return block

    lazy = da.from_array(blurred, chunks=(3, 48, 40)).map_blocks(counted, dtype=blurred.dtype)
    table = compare({"blurred": lazy}, sharp, per_slice=True)
    assert computed == [3, 3]  # two blocks, each computed once (it was six computations of three planes)
    expected = compare({"blurred": blurred}, sharp, per_slice=True)
    assert [r["psnr"] for r in table.rows] == pytest.approx([r["psnr"] for r in expected.rows], rel=1e-12)
    # samples last, as in an RGB result: the block holds all three of a plane's samples
    computed.clear()
    rgb = np.moveaxis(blurred[:3], 0, -1)
    lazy_rgb = da.from_array(rgb, chunks=(48, 40, 3)).map_blocks(counted, dtype=rgb.dtype)
    compare({"rgb": lazy_rgb}, np.moveaxis(sharp[:3], 0, -1), axes="YXS")
    assert len(computed) == 1


def test_block_planes_are_kept_only_for_shallow_blocks_deep_along_the_fastest_axis():
    """Keeping a block's planes pays for computed blocks a few planes deep (an RGB result, a stack chunked 3
    deep); a dask array over a file in one chunk (da.from_array of a memmap) must be read a plane at a time
    instead (dask then reads one plane of the file, not the stack), and a block deep along a slower axis is
    computed again for the faster one's planes anyway."""
    da = pytest.importorskip("dask.array")
    from napari_deblurgan.inputs import dask_slab_fits

    def fits(shape, chunks, axes):
        image = da.zeros(shape, chunks=chunks, dtype=np.float32)
        others = [i for i, a in enumerate(axes) if a not in "YX"]
        plane_bytes = shape[axes.index("Y")] * shape[axes.index("X")] * image.dtype.itemsize
        return dask_slab_fits(image, others, plane_bytes)

    assert fits((64, 64, 3), (64, 64, 3), "YXS")  # a lazy RGB deblur() result
    assert fits((6, 64, 64), (3, 64, 64), "ZYX")
    assert fits((2, 6, 64, 64), (1, 3, 64, 64), "TZYX")
    assert not fits((24, 64, 64), (24, 64, 64), "ZYX")  # one chunk for the stack: a plane at a time
    assert not fits((6, 64, 64), (1, 64, 64), "ZYX")  # nothing to keep
    assert not fits((4, 2, 64, 64), (4, 1, 64, 64), "TZYX")  # deep along T, read with Z fastest
    assert not fits((5, 4096, 4096), (5, 4096, 4096), "ZYX")  # 320 MiB of float32 planes (over 256)


def test_lazy_results_with_nan_are_one_clear_error():
    da = pytest.importorskip("dask.array")
    sharp, _ = _stack_pair(2)
    bad = sharp.astype(np.float32)
    bad[1, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        compare({"bad": da.from_array(bad, chunks=(1, 48, 40))}, sharp)
    with pytest.raises(InputError, match="NaN"):
        richardson_lucy(da.from_array(bad, chunks=(1, 48, 40)), gaussian_psf(1.0), 2)
    with pytest.raises(InputError, match="NaN"):
        wiener(_PlaneStore(bad), gaussian_psf(1.0))


_LAZY_MEMORY_CALLS = {
    "psnr": lambda ref, img, psf: psnr(ref, img),
    "nrmse": lambda ref, img, psf: nrmse(ref, img),
    "ssim": lambda ref, img, psf: ssim(ref, img, axes="ZYX"),
    "sharpness": lambda ref, img, psf: sharpness(img, axes="ZYX"),
    "best_classical": lambda ref, img, psf: best_classical(img, ref, psf, rl_iterations=[1, 3], wiener_balances=[0.01]),
    "richardson_lucy": lambda ref, img, psf: richardson_lucy(img, psf, 3, axes="ZYX")[-1].compute(),
    "wiener": lambda ref, img, psf: wiener(img, psf, 0.01, axes="ZYX")[-1].compute(),
    "compare": lambda ref, img, psf: compare({"a": img, "b": img}, ref, axes="ZYX", per_slice=True),
    "compare, float reference": lambda ref, img, psf: compare({"a": img}, ref, axes="ZYX"),
}


@pytest.mark.parametrize("what", list(_LAZY_MEMORY_CALLS))
def test_memory_on_dask_stacks_does_not_grow_with_the_stack(what, numpy_peak, monkeypatch):
    """Baselines and metrics of dask stacks hold a few planes, whatever the stack: they made NumPy copies of
    the whole input (np.asarray) and, for the baselines, a whole NumPy result, 4x larger for a 4x stack
    (psnr, nrmse, ssim, sharpness and best_classical did until the fifteenth session)."""
    da = pytest.importorskip("dask.array")
    # psnr's and nrmse's float64 blocks: one plane here, so that 6 and 24 planes both span several of them
    # (1M elements by default: 16 of these planes, a bounded size that a 6-plane stack would not reach)
    monkeypatch.setattr(comparison, "_BLOCK_ELEMENTS", 256 * 256)
    call = _LAZY_MEMORY_CALLS[what]
    psf = gaussian_psf(1.5)

    def peak(planes: int) -> tuple[int, int]:
        rng = np.random.default_rng(2)
        # planes large enough that their pixels, not dask's graph (a few kB a block), make the difference
        ref = (rng.random((planes, 256, 256)) * 3000).astype(np.uint16)
        img = (rng.random((planes, 256, 256)) * 3000).astype(np.uint16)
        # map_blocks: the planes are made when computed (as a lazy deblur() result is), not NumPy views
        lazy_ref, lazy_img = (da.from_array(a, chunks=(1, 256, 256)).map_blocks(np.copy) for a in (ref, img))
        if what == "compare, float reference":
            lazy_ref = lazy_ref.astype(np.float32)
        # the lower of two measurements: a one-off resize of an interpreter-wide table (seen: the dict of
        # sys.intern'ed strings, 7.7 MB, in a full test run) can land in either, and is not this code's memory
        return min(numpy_peak(lambda: call(lazy_ref, lazy_img, psf)) for _ in range(2)), img.nbytes

    small, small_bytes = peak(6)
    large, large_bytes = peak(24)
    assert large - small < 0.25 * (large_bytes - small_bytes), (small, large, large_bytes - small_bytes)


def _metrics_of(ref, img, axes, float_ref):
    """Every metric of a pair (and of each image alone): the values a lazy pair must give to the last bit."""
    values = {
        "psnr": psnr(ref, img, axes=axes),
        "psnr, data_range": psnr(ref, img, 300.0, axes=axes),
        "nrmse": nrmse(ref, img, axes=axes),
        "ssim": ssim(ref, img, axes=axes),
        "sharpness": sharpness(img, axes=axes),
        "sharpness of the reference": sharpness(ref, axes=axes),
    }
    if float_ref is not None:  # the data range from a float reference's own range: one more pass over it
        values["psnr, float reference"] = psnr(float_ref, img, axes=axes)
        values["ssim, float reference"] = ssim(float_ref, img, axes=axes)
    return values


# (axes, shape, dask chunkings): a plane per chunk, chunks that split a plane (rows, and rows and columns),
# chunks of several planes (uneven too), one chunk for the whole stack; RGB samples in one chunk or split
_CHUNKINGS = [
    ("ZYX", (6, 48, 40), [(1, 48, 40), (1, 24, 40), (1, 20, 16), (3, 48, 40), (4, 48, 40), (6, 48, 40)]),
    ("TZYX", (2, 3, 48, 40), [(1, 1, 48, 40), (1, 3, 48, 40), (2, 1, 24, 40)]),
    ("YXS", (48, 40, 3), [(48, 40, 3), (24, 40, 3), (48, 40, 1), (16, 20, 2)]),
    ("ZYXC", (2, 48, 40, 2), [(1, 48, 40, 2), (1, 24, 40, 1), (2, 48, 40, 2)]),
]


@pytest.mark.parametrize("block_elements", [1 << 20, 4000, 1000])
@pytest.mark.parametrize(("axes", "shape", "chunkings"), _CHUNKINGS, ids=[c[0] for c in _CHUNKINGS])
def test_metrics_of_a_dask_array_are_those_of_its_numpy_copy(axes, shape, chunkings, block_elements, monkeypatch):
    """psnr, nrmse, ssim and sharpness read a dask array a plane at a time and give its NumPy copy's values
    bit for bit, whatever its chunks, and also when the metrics' blocks (``_BLOCK_ELEMENTS``) hold several
    planes (1 << 20 and 4000 here) or rows of one (1000). A zarr-like array too."""
    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(comparison, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(11)
    ref = (ndimage.uniform_filter(rng.random(shape), 3) * 3000).astype(np.uint16)
    img = (ref + rng.normal(0, 40, shape)).clip(0, 3000).astype(np.uint16)
    float_ref = ref.astype(np.float32) / 7
    expected = _metrics_of(ref, img, axes, float_ref)
    for chunks in chunkings:
        lazy = [da.from_array(a, chunks=chunks).map_blocks(np.copy) for a in (ref, img, float_ref)]
        assert _metrics_of(*lazy[:2], axes, lazy[2]) == expected, chunks
        # one of the two lazy, the other not
        assert _metrics_of(ref, lazy[1], axes, None) == _metrics_of(ref, img, axes, None), chunks
        assert _metrics_of(lazy[0], img, axes, None) == _metrics_of(ref, img, axes, None), chunks
    stores = [_PlaneStore(a) for a in (ref, img, float_ref)]  # refuses to be read whole
    assert _metrics_of(*stores[:2], axes, stores[2]) == expected
    assert max(stores[0].reads + stores[1].reads) == 48 * 40  # a plane at a time
    # and the float reference's range pass (value_range), in the metrics' blocks
    assert max(stores[2].reads) <= max(48 * 40, block_elements)


@pytest.mark.parametrize("block_elements", [1000, 1 << 20])
@pytest.mark.parametrize(
    ("shape", "chunks", "axes"),
    [
        ((4, 48, 40), (1, 48, 40), "ZYX"),  # a lazy deblur() result of a stack: a plane per block
        ((4, 48, 40), (1, 24, 40), "ZYX"),  # blocks that split a plane
        ((4, 48, 40), (2, 48, 40), "ZYX"),  # blocks of several planes
        ((48, 40, 3), (48, 40, 3), "YXS"),  # a lazy RGB deblur() result: the samples in one block
    ],
)
def test_metrics_compute_each_dask_block_once(shape, chunks, axes, block_elements, monkeypatch):
    """Reading a plane computes its dask block: the metrics must compute each block once (for a lazy deblur()
    result, a block computed again is the network run again), also when psnr's and nrmse's blocks are rows
    of a plane (``_BLOCK_ELEMENTS`` of 1000 here: planes over 1M pixels) or several planes."""
    monkeypatch.setattr(comparison, "_BLOCK_ELEMENTS", block_elements)
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    ref = (rng.random(shape) * 3000).astype(np.uint16)
    img = (rng.random(shape) * 3000).astype(np.uint16)
    computed: list[tuple[int, ...]] = []

    def counted(block):
        if block.size:  # not dask's own call on an empty block, to learn the output type
            computed.append(block.shape)
        return block.copy()

    lazy = da.from_array(img, chunks=chunks).map_blocks(counted, dtype=img.dtype)
    for metric in (
        lambda a: psnr(ref, a),
        lambda a: nrmse(ref, a),
        lambda a: ssim(ref, a, axes=axes),
        lambda a: sharpness(a, axes=axes),
    ):
        computed.clear()
        assert metric(lazy) == metric(img)
        assert len(computed) == lazy.npartitions, computed


def test_lazy_metrics_say_what_the_numpy_ones_say():
    """Bad lazy input gets the NumPy input's messages: the shape mismatch before any pixel is read, NaN when
    the plane that holds it is read (it is not read twice to check it up front)."""
    da = pytest.importorskip("dask.array")
    sharp, blurred = _stack_pair(2)
    bad = sharp.astype(np.float32)
    bad[1, 3, 4] = np.nan

    def said(name):  # as deblur() says it: the image and the plane
        return (
            f"the {name}'s plane Z=1 has 1 NaN/inf pixel(s) out of 1920; replace them first, e.g. "
            "np.nan_to_num(image, nan=0.0) or with a local median"
        )

    for lazy in (lambda a: da.from_array(a, chunks=(1, 24, 40)), _PlaneStore):
        for call, name in [
            (lambda ref, img: psnr(ref, img), None),
            (lambda ref, img: psnr(ref, img, 1.0), None),
            (lambda ref, img: nrmse(ref, img), None),
            (lambda ref, img: ssim(ref, img, 1.0), None),
            (lambda ref, img: sharpness(img), "image"),
            (lambda ref, img: best_classical(img, ref, gaussian_psf(1.0), rl_iterations=[1], wiener_balances=[]), None),
        ]:
            with pytest.raises(InputError) as numpy_error:
                call(sharp, bad)
            with pytest.raises(InputError) as lazy_error:
                call(lazy(sharp), lazy(bad))
            assert str(lazy_error.value) == str(numpy_error.value) == said("image")
            if name is None:  # a reference with NaN
                with pytest.raises(InputError) as lazy_error:
                    call(lazy(bad), lazy(sharp))
                assert str(lazy_error.value) == said("reference")
                with pytest.raises(InputError) as numpy_error:
                    call(sharp, blurred[:, :-1])
                with pytest.raises(InputError) as lazy_error:
                    call(lazy(sharp), lazy(np.ascontiguousarray(blurred[:, :-1])))
                assert str(lazy_error.value) == str(numpy_error.value)
                assert "same shape" in str(lazy_error.value)


@pytest.mark.parametrize("axes", ["ZYX", "YX"])
def test_best_classical_of_a_dask_stack_is_that_of_its_numpy_copy(axes):
    """A dask pair is scanned a plane at a time with the NumPy pair's scores to the last bit, and gives a lazy
    winner (as richardson_lucy() and wiener() of a dask array do) with the NumPy winner's pixels; a zarr-like
    pair gives a NumPy winner."""
    da = pytest.importorskip("dask.array")
    sharp, blurred = _stack_pair(3)
    if axes == "YX":
        sharp, blurred = sharp[1], blurred[1]
    chunks = (2, 24, 40)[-sharp.ndim :]

    def run(ref, img):
        return best_classical(img, ref, gaussian_psf(1.5), rl_iterations=[1, 4], wiener_balances=[0.01, 1.0], axes=axes)

    expected = run(sharp, blurred)
    for pair, kind in [
        ((da.from_array(sharp, chunks=chunks), da.from_array(blurred, chunks=chunks)), da.Array),
        ((_PlaneStore(sharp), _PlaneStore(blurred)), np.ndarray),
    ]:
        got = run(*pair)
        assert isinstance(got["image"], kind)
        np.testing.assert_array_equal(np.asarray(got["image"]), expected["image"])
        for key in ("method", "parameters", "psnr", "ssim", "richardson_lucy", "wiener"):
            assert got[key] == expected[key], key


def test_a_wrong_axes_string_is_an_error_for_numpy_images_too():
    from napari_deblurgan.comparison import nrmse, psnr

    a = np.zeros((16, 16), np.float32)
    b = np.ones((16, 16), np.float32)
    for metric in (psnr, nrmse):
        with pytest.raises(InputError, match="axes"):
            metric(a, b, axes="TZYX")


def _old_plane_sharpness(plane: np.ndarray) -> float:
    """The whole-plane sharpness that compare() computed before its bands: float64 copy, filters, np.var."""
    smooth = ndimage.gaussian_filter(plane.astype(np.float64), 1.0, mode="reflect")
    variance = float(smooth.var())
    return 0.0 if variance == 0 else float(ndimage.laplace(smooth, mode="reflect").var()) / variance


def _metric_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    camera = data.camera().astype(np.float64)
    pairs = []
    for shape in [(512, 512), (301, 777), (3000, 45), (130, 2100), (40, 3), (7, 9), (3, 5)]:
        base = camera[: shape[0], : shape[1]] if shape[0] <= 512 and shape[1] <= 512 else np.resize(camera, shape)
        blurred = ndimage.gaussian_filter(base, 1.5) + rng.normal(0, 5, shape)
        pairs += [
            (f"uint8 {shape}", base.astype(np.uint8), blurred.clip(0, 255).astype(np.uint8)),
            (f"uint16 {shape}", (base * 200).astype(np.uint16), (blurred * 200).clip(0, 65535).astype(np.uint16)),
            (f"int16 {shape}", (base * 100 - 20000).astype(np.int16), (blurred * 100 - 20000).astype(np.int16)),
            (
                f"tiny floats {shape}",
                (base * 1e-7 - 3e-5).astype(np.float32),
                (blurred * 1e-7 - 3e-5).astype(np.float32),
            ),
            (f"large offset {shape}", base * 1e9 + 1e12, blurred * 1e9 + 1e12),
        ]
    flat = np.full((200, 300), 7, np.uint16)
    return [*pairs, ("constant", flat, flat), ("two constants", flat + 0.5, np.full((200, 300), 3.25))]


@pytest.mark.parametrize("band_elements", [None, 50])
def test_banded_ssim_and_sharpness_equal_the_whole_plane_computation(band_elements, monkeypatch):
    """SSIM and sharpness are computed in bands of rows (memory: a few bands, not 16 float64 planes); they give
    scikit-image's ``structural_similarity`` of float64 copies (the computation they replace: 7x7 uniform window,
    sample covariance, border cropped) and the whole-plane sharpness to 1e-9, for every dtype and range, both the
    dtype's and the data's own data_range, planes narrower than the window's band, transposed views, and bands of
    a few rows (band_elements=50)."""
    if band_elements is not None:
        monkeypatch.setattr(comparison, "_BAND_ELEMENTS", band_elements)
    for name, ref, img in _metric_pairs():
        ranges = {comparison.default_data_range(ref), float(ref.max()) - float(ref.min()) or 1.0}
        for a, b in ((ref, img), (ref.T, img.T)):
            win = comparison._ssim_window(a.shape)
            for dr in ranges:
                expected = sk_metrics.structural_similarity(
                    a.astype(np.float64), b.astype(np.float64), data_range=dr, win_size=win
                )
                assert comparison._plane_ssim(a, b, dr, win) == pytest.approx(expected, rel=1e-9, abs=1e-12), name
            for plane in (a, b):
                assert comparison._plane_sharpness(plane) == pytest.approx(
                    _old_plane_sharpness(plane), rel=1e-9, abs=0
                ), name
    ref, img = _metric_pairs()[1][1:]
    table = compare({"img": img}, ref, data_range=1000.0)
    expected = sk_metrics.structural_similarity(ref.astype(float), img.astype(float), data_range=1000.0)
    assert table.rows[0]["ssim"] == pytest.approx(expected, rel=1e-9)
    assert table.rows[0]["sharpness"] == pytest.approx(_old_plane_sharpness(img), rel=1e-9)


def test_compare_needs_a_few_planes_of_memory_not_dozens(numpy_peak):
    """compare() on one 1024x1024 uint16 pair: its SSIM took 16 float64 copies of the plane (scikit-image's
    buffers, 32 float32 planes' worth) and its sharpness 4; the bands need a fixed few MB."""
    rng = np.random.default_rng(3)
    ref = ndimage.zoom(data.camera(), 2, order=1).astype(np.uint16) * 200
    img = (ref + rng.normal(0, 300, ref.shape)).clip(0, 65535).astype(np.uint16)
    plane = ref.size * 4  # one float32 plane
    assert numpy_peak(lambda: compare({"img": img}, ref, data_range=50000.0)) < 6 * plane
    assert numpy_peak(lambda: ssim(ref, img, 50000.0)) < 3 * plane
    assert numpy_peak(lambda: sharpness(img)) < 1.5 * plane


def test_best_classicals_default_wiener_scan_reaches_the_model_cards_balances():
    """The oracle's Wiener scan runs to balance 1e4 (the model card's; it stopped at 1e2, where one of the card's
    cases peaked). A flat scene under strong noise is best restored by the strongest smoothing the scan offers."""
    rng = np.random.default_rng(3)
    sharp = np.full((48, 48), 0.5)
    blurred = sharp + rng.normal(0, 0.2, sharp.shape)
    psf = np.ones((3, 3)) / 9
    result = best_classical(blurred, sharp, psf, rl_iterations=[])
    assert result["method"] == "wiener" and result["parameters"]["balance"] > 1e2, result["parameters"]
    assert max(result["wiener"]["balance"]) == pytest.approx(1e4)


_F32_MAX = float(np.finfo(np.float32).max)


def _with_border(image: np.ndarray, value: float = _F32_MAX, columns: int = 10) -> np.ndarray:
    out = image.copy()
    out[:, :columns] = value
    return out


@pytest.fixture(scope="module")
def smooth_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sharp = ndimage.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)
    sharp = (sharp / sharp.max()).astype(np.float32)
    return sharp, ndimage.gaussian_filter(sharp, 2)


def test_metrics_leave_the_references_no_data_out(smooth_pair):
    """A no-data border (float32's largest value) in both images made the data range 3.4e38: PSNR 803 dB and
    SSIM 1.0 whatever the images. The range, the squared errors and SSIM's windows leave it out: the scores are
    those of the images without the border."""
    da = pytest.importorskip("dask.array")
    sharp, blurred = smooth_pair
    ref, img = _with_border(sharp), _with_border(blurred)
    inner_ref, inner_img = sharp[:, 10:], blurred[:, 10:]
    inner_range = float(inner_ref.max()) - float(inner_ref.min())
    assert comparison.default_data_range(ref) == pytest.approx(inner_range)
    assert comparison.default_data_range(da.from_array(ref, chunks=(32, 32))) == pytest.approx(inner_range)
    assert comparison.value_range(np.full((8, 8), _F32_MAX, np.float32)) == (0.0, 0.0)
    assert psnr(ref, img) == pytest.approx(psnr(inner_ref, inner_img), rel=1e-9)
    assert 20 < psnr(ref, img) < 40
    assert ssim(ref, img) == pytest.approx(ssim(inner_ref, inner_img), rel=1e-9)
    assert nrmse(ref, img) == pytest.approx(nrmse(inner_ref, inner_img), rel=1e-9)
    row = compare({"blurred": img}, ref).rows[0]
    want = compare({"blurred": inner_img}, inner_ref).rows[0]
    for key in ("psnr", "ssim", "nrmse"):
        assert row[key] == pytest.approx(want[key], rel=1e-9), key
    nothing = np.full((16, 16), _F32_MAX, np.float32)
    assert math.isnan(psnr(nothing, nothing)) and math.isnan(ssim(nothing, nothing))


@pytest.mark.parametrize("method", ["richardson_lucy", "wiener"])
@pytest.mark.parametrize("value", [_F32_MAX, -_F32_MAX])
def test_classical_baselines_keep_no_data_pixels_out_of_the_image(smooth_pair, method, value):
    """Richardson-Lucy and Wiener scaled a plane by its range, 3.4e38 with a no-data border: the image part
    came back 0..1e24 from 0.59..0.93. Sentinels are filled for the deconvolution and come back unchanged;
    away from the border the result is the one without it (both methods are linear in the scale)."""
    _, blurred = smooth_pair
    psf = np.ones((5, 5)) / 25
    run = (
        (lambda image: richardson_lucy(image, psf, iterations=10))
        if method == "richardson_lucy"
        else (lambda image: wiener(image, psf, balance=0.1))
    )
    with_border = _with_border(blurred, value)
    with np.errstate(all="raise"):
        out = run(with_border)
    assert np.array_equal(out[:, :10], with_border[:, :10])
    part = out[:, 10:]
    assert np.isfinite(part).all() and part.min() > 0.3 and part.max() < 1.5
    clean = run(blurred)
    np.testing.assert_allclose(out[:, 40:70], clean[:, 40:70], atol=1e-3)  # (the FFT wraps the border round)


def test_best_classical_scores_beside_a_no_data_border(smooth_pair):
    sharp, blurred = smooth_pair
    best = best_classical(
        _with_border(blurred),
        _with_border(sharp),
        gaussian_psf(2.0),
        rl_iterations=[5, 10],
        wiener_balances=[0.01, 0.1],
        data_range=None,
    )
    clean = best_classical(
        blurred[:, 10:],
        sharp[:, 10:],
        gaussian_psf(2.0),
        rl_iterations=[5, 10],
        wiener_balances=[0.01, 0.1],
        data_range=None,
    )
    assert 20 < best["psnr"] < 80 and abs(best["psnr"] - clean["psnr"]) < 3
    assert np.all(best["image"][:, :10] == _F32_MAX)


def _rgba(image_like_alpha: bool = False) -> np.ndarray:
    """A 48 x 40 RGBA uint8 photo: textured colours (up to 200) and an opacity mask of 0 and 255 (or, with
    ``image_like_alpha``, a 4th channel of many values, as a channels-last 4-channel image has)."""
    rng = np.random.default_rng(11)
    rgba = (ndimage.uniform_filter(rng.random((48, 40, 4)), (5, 5, 1)) * 200).astype(np.uint8)
    if not image_like_alpha:
        rgba[..., 3] = 0
        rgba[12:36, 10:30, 3] = 255  # a sharp transparency edge, which deconvolution would ring
    return rgba


@pytest.mark.parametrize("method", ["richardson_lucy", "wiener"])
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr-like"])
def test_baselines_keep_an_rgba_images_alpha_and_deconvolve_its_colours_as_rgb(method, kind):
    """As deblur() and synthesize_blur() do: alpha is opacity, not an image. It was deconvolved (a binary mask
    came back with 166 values), and its 255s set the colours' [0, 1] scaling."""
    rgba = _rgba()

    def call(image, axes=None):
        if method == "richardson_lucy":
            return richardson_lucy(image, gaussian_psf(1.5), 5, axes=axes)
        return wiener(image, gaussian_psf(1.5), 0.05, axes=axes)

    if kind == "dask":
        da = pytest.importorskip("dask.array")
        source = da.from_array(rgba, chunks=(24, 40, 2))
    else:
        source = _PlaneStore(rgba) if kind == "zarr-like" else rgba
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask is opacity: no warning
        out = np.asarray(call(source))
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[..., :3], call(rgba[..., :3].copy()))  # the colours as the RGB image's
    # a C axis of 4 is four image channels: all deconvolved, as before
    assert not np.array_equal(call(rgba, "YXC")[..., 3], rgba[..., 3])


@pytest.mark.parametrize("method", ["richardson_lucy", "wiener"])
def test_baselines_warn_as_deblur_does_when_inferred_alpha_looks_like_an_image(method):
    channels = _rgba(image_like_alpha=True)
    call = richardson_lucy if method == "richardson_lucy" else wiener
    with pytest.warns(UserWarning, match=r"taken as RGBA.*kept as opacity and not deconvolved.*axes='YXC'") as caught:
        out = call(channels, gaussian_psf(1.5))
    assert caught[0].filename == __file__  # the caller's line
    np.testing.assert_array_equal(out[..., 3], channels[..., 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(channels, gaussian_psf(1.5), axes="YXS")  # the axes the warning proposes to keep RGBA


def test_compare_leaves_an_rgba_images_alpha_out_of_the_metrics_and_says_so():
    """Zeroing alpha alone scored 12 dB: alpha was a plane of the metrics."""
    rgba = _rgba()
    transparent = rgba.copy()
    transparent[..., 3] = 0
    blurred = ndimage.uniform_filter(rgba, (5, 5, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # axes said: no warning that alpha differs between the images
        table = compare({"alpha zeroed": transparent, "blurred": blurred}, rgba, axes="YXS", per_slice=True)
    with pytest.warns(UserWarning, match=r"differs between the reference and result 'alpha zeroed'") as said:
        assert compare({"alpha zeroed": transparent, "blurred": blurred}, rgba, per_slice=True).rows == table.rows
    assert len(said) == 1  # once, for the first result whose alpha is not the reference's
    rgb = compare({"alpha zeroed": rgba[..., :3], "blurred": blurred[..., :3]}, rgba[..., :3].copy(), per_slice=True)
    assert [row["slice"] for row in table.rows] == [None, (0,), (1,), (2,)] * 2  # no alpha row
    assert table.rows[0]["psnr"] == math.inf and table.rows[0]["ssim"] == 1
    for got, want in zip(table.rows, rgb.rows, strict=True):
        assert got.pop("slice") == want.pop("slice")
        assert got == pytest.approx(want)  # the colours scored as the RGB image's
    assert rgb.notes == []
    assert len(table.notes) == 1 and "alpha" in table.notes[0] and "axes='YXC'" in table.notes[0]
    assert "note: the 4th sample of these RGBA images" in str(table)
    # a C axis of 4 is four image channels: all scored, as before, with no note
    channels = compare({"alpha zeroed": transparent}, rgba, axes="YXC", per_slice=True)
    assert len(channels.rows) == 5 and channels.rows[0]["psnr"] < 20 and channels.notes == []


def test_compare_leaves_a_float_rgba_references_alpha_out_of_its_data_range():
    rgba = _rgba().astype(np.float32)
    rgba[..., 3] *= 10  # an opacity of 0..2550 must not set the colours' PSNR peak
    result = rgba.copy()
    result[..., :3] += 1
    table = compare({"r": result}, rgba)
    assert table.rows[0]["psnr"] == pytest.approx(psnr(rgba[..., :3].copy(), result[..., :3].copy()))


def test_compare_warns_as_deblur_does_when_inferred_alpha_looks_like_an_image():
    channels = _rgba(image_like_alpha=True)
    with pytest.warns(UserWarning, match=r"taken as RGBA.*left out of the metrics as opacity.*To score all four"):
        table = compare({"same": channels}, channels)
    assert len(table.rows) == 1 and len(table.notes) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare({"same": channels}, channels, axes="YXS")


def test_best_classical_scores_an_rgba_image_as_compare_does():
    """best_classical follows the RGBA rule of the baselines and compare(): alpha is kept in its image and left out
    of its scan, its ranges and its scores, so its PSNR and SSIM are compare()'s of the image it returns (they
    once scored the alpha plane, 18.55 against compare's 11.28 dB in a reviewer's case)."""
    rng = np.random.default_rng(0)
    sharp = np.zeros((64, 64, 4), np.float32)
    sharp[..., :3] = rng.random((64, 64, 3)) * 0.5
    sharp[..., 3] = 1.0  # opaque
    psf = gaussian_psf(1.5)
    blurred = sharp.copy()
    for c in range(3):
        blurred[..., c] = ndimage.convolve(sharp[..., c], psf, mode="reflect")
    best = best_classical(blurred, sharp, psf, rl_iterations=[2, 5], wiener_balances=[0.01, 0.1], axes="YXS")
    row = compare({"best": best["image"]}, sharp, axes="YXS").rows[0]
    assert best["psnr"] == pytest.approx(row["psnr"], abs=1e-9) and best["ssim"] == pytest.approx(row["ssim"], abs=1e-9)
    np.testing.assert_array_equal(best["image"][..., 3], sharp[..., 3])
    colours = best_classical(blurred[..., :3], sharp[..., :3], psf, rl_iterations=[2, 5], wiener_balances=[0.01, 0.1])
    assert (best["method"], best["parameters"]) == (colours["method"], colours["parameters"])
    assert best["psnr"] == pytest.approx(colours["psnr"], abs=1e-6)


def _even_psf_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    import napari_deblurgan as ndg

    return [str(w.message) for w in caught if issubclass(w.category, ndg.EvenPSFWarning)]


@pytest.mark.parametrize("method", ["wiener", "richardson_lucy", "best_classical", "dask wiener"])
def test_an_even_sized_psf_is_warned_once_per_call_as_synthesize_blur_warns(method):
    """An even side has no centre pixel: the result is shifted by half a pixel along it (a point deconvolved with
    a 4x4 box lands at 32.5, not 32). Said once per call, whatever the planes, in a category a user can filter;
    an odd PSF says nothing."""
    import napari_deblurgan as ndg

    stack = np.random.default_rng(0).uniform(0.1, 1.0, (3, 32, 32)).astype(np.float32)  # three planes: one warning
    calls = {
        "wiener": lambda psf: wiener(stack, psf, axes="ZYX"),
        "richardson_lucy": lambda psf: richardson_lucy(stack, psf, 3, axes="ZYX"),
        "best_classical": lambda psf: best_classical(stack, stack, psf, rl_iterations=[2], wiener_balances=[0.1]),
        "dask wiener": lambda psf: wiener(pytest.importorskip("dask.array").from_array(stack), psf).compute(),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls[method](np.ones((4, 5)))
    said = _even_psf_warnings(caught)
    assert len(said) == 1, said
    assert "4x5" in said[0] and "shifted by half a pixel along Y" in said[0] and "odd sides" in said[0], said[0]
    assert issubclass(ndg.EvenPSFWarning, UserWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls[method](np.ones((5, 5)))
    assert not _even_psf_warnings(caught)
    with warnings.catch_warnings():  # the documented way to accept the shift
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ndg.EvenPSFWarning)
        calls[method](np.ones((4, 4)))


def test_an_even_sized_psf_shifts_the_deconvolved_image_by_half_a_pixel():
    """What the warning says, measured: a point deconvolved with a symmetric 4x4 PSF is centred half a pixel off."""
    point = np.full((64, 64), 0.01)
    point[32, 32] = 1.0
    for method in (wiener, richardson_lucy):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = np.clip(method(point, np.ones((4, 4))) - 0.01, 0, None)
        yy, xx = np.indices(result.shape)
        centre = ((result * yy).sum() / result.sum(), (result * xx).sum() / result.sum())
        np.testing.assert_allclose(centre, (32.5, 32.5), atol=0.01)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr-like"])
@pytest.mark.parametrize("axes", [None, "YXS"])
def test_the_standalone_metrics_leave_an_rgba_images_alpha_out_as_compare_does(kind, axes):
    """psnr, ssim, nrmse and sharpness read an S axis of 4 as compare() does: alpha is opacity, left out of the
    score and of the default data range, so each equals compare()'s number (zeroing alpha alone scored 13 dB in
    psnr while compare() said inf); a C axis of 4 is four channels, all scored."""
    rgba = _rgba().astype(np.float32)
    rgba[..., 3] *= 10  # an opacity of 0..2550 must not set the colours' PSNR peak either
    result = ndimage.uniform_filter(rgba, (3, 3, 1))
    result[..., 3] = 0  # alpha zeroed: no colour changed by it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with inferred axes: alpha differs (checked below)
        row = compare({"r": result}, rgba, axes=axes).rows[0]

    def wrap(image):
        if kind == "dask":
            return pytest.importorskip("dask.array").from_array(image, chunks=(24, 40, 2))
        return _PlaneStore(image) if kind == "zarr-like" else image

    ref, img = wrap(rgba), wrap(result)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # (a zarr-like reference's range took in its alpha: 54.42 dB, not 25.38)
        assert compare({"r": img}, ref, axes=axes).rows[0] == row
        scores = [psnr(ref, img, axes=axes), ssim(ref, img, axes=axes), nrmse(ref, img, axes=axes)]
        assert scores == [row["psnr"], row["ssim"], row["nrmse"]]
        assert sharpness(img, axes=axes) == row["sharpness"]
    # a mask is opacity, not an image: the only warning is that alpha differs between the two (inferred axes)
    said = [str(w.message) for w in caught]
    if axes:
        assert said == []
    else:  # once each from compare, psnr, ssim and nrmse; sharpness takes one image
        assert len(said) == 4 and all("differs between the reference and" in m for m in said), said
    colours = [rgba[..., :3].copy(), result[..., :3].copy()]
    assert scores == pytest.approx([psnr(*colours), ssim(*colours), nrmse(*colours)], rel=1e-12)
    same_colours = rgba.copy()
    same_colours[..., 3] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with inferred axes: alpha differs (said above)
        assert psnr(rgba, same_colours, axes=axes) == math.inf and nrmse(rgba, same_colours, axes=axes) == 0
    # four channels: alpha scored
    assert psnr(rgba, same_colours, axes="YXC") < 30 and sharpness(result, axes="YXC") != row["sharpness"]


def test_the_standalone_metrics_warn_as_compare_does_when_inferred_alpha_looks_like_an_image():
    channels = _rgba(image_like_alpha=True)
    for score in (lambda: psnr(channels, channels), lambda: ssim(channels, channels), lambda: sharpness(channels)):
        with pytest.warns(UserWarning, match=r"taken as RGBA.*left out of the metrics as opacity.*To score all four"):
            score()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        psnr(channels, channels, axes="YXS")


def test_the_metrics_warn_when_inferred_alpha_differs_between_the_images():
    """A (Y, X, 4) image whose 4th channel is sparse (puncta: at most two values, so it reads as a mask) is taken
    as RGBA and its 4th channel left out; a result that lost that channel scored inf dB without a word (a
    reviewer's case). Now a warning says that the 4th channel differs and how to score it. The same opacity
    stored as 0-255 and as 0-1, or said with axes, gives none."""
    rng = np.random.default_rng(5)
    reference = rng.uniform(0, 1, (64, 64, 4)).astype(np.float32)
    reference[..., 3] = 0
    reference[1::4, 1::4, 3] = 1  # puncta
    lost = reference.copy()
    lost[..., 3] = 0
    for score in (psnr, nrmse, ssim):
        with pytest.warns(UserWarning, match=r"differs between the reference and the image.*axes='YXC'"):
            score(reference, lost)
    with pytest.warns(UserWarning, match=r"differs between the reference and result 'lost'"):
        compare({"kept": reference.copy(), "lost": lost}, reference)
    assert psnr(reference, lost, axes="YXC") < 20  # scored as four channels: the loss shows
    as_uint8 = (reference * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        psnr(reference, lost, axes="YXS")  # said: no warning
        compare({"lost": lost}, reference, axes="YXS")
        # the same alpha in other units: a float result of a uint8 RGBA reference
        psnr(as_uint8, as_uint8.astype(np.float32) / 255, data_range=255)
        compare({"float": as_uint8.astype(np.float32) / 255}, as_uint8)
        # ... and the same alpha rounded to 8 bits (half a step off), or from 16 bits to 8 (a reviewer's 30000)
        soft = reference.copy()
        soft[..., 3] = np.where(reference[..., 3] > 0, 1.0, 0.3)
        psnr(soft, np.round(soft * 255).astype(np.uint8).astype(np.float32) / 255)
        wide = np.zeros((64, 64, 4), np.uint16)
        wide[..., 3] = 30000
        wide[::2, :, 3] = 65535
        psnr(wide, np.round(wide / 257).astype(np.uint8))
    # the alphas are compared in blocks of rows: a change in the last row of a tall plane is seen
    tall = np.zeros((3000, 8, 4), np.uint8)
    tall[..., 3] = 255
    changed = tall.copy()
    changed[-1, -1, 3] = 0
    with pytest.warns(UserWarning, match="differs between the reference and the image"):
        psnr(tall, changed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sharpness_leaves_no_data_sentinels_out(dtype):
    """A "no data" border (the dtype's largest value) made sharpness NaN (float64: overflow) or a meaningless
    number (float32), as psnr and ssim no longer do: now the sentinels and the pixels whose filtered values
    reach them are left out, and a plane of nothing else is left out of the mean."""
    rng = np.random.default_rng(0)
    scene = ndimage.gaussian_filter(rng.random((64, 64)), 1.5).astype(dtype)
    with_border = scene.copy()
    with_border[:, :10] = np.finfo(dtype).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        value = sharpness(with_border)
        assert value == pytest.approx(sharpness(scene[:, 15:]), rel=0.1)  # the pixels with data, 5 px from none
        assert compare({"x": with_border}).rows[0]["sharpness"] == value
        stack = np.stack([with_border, np.full_like(scene, np.finfo(dtype).max)])
        assert sharpness(stack, axes="ZYX") == value  # the plane of nothing but no data is left out
        assert math.isnan(sharpness(stack[1]))
    if dtype is np.float64:  # a plane whose variance overflows is not "no data": the mean stays NaN, as before
        huge = np.stack([scene, scene * 1e300])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert math.isnan(sharpness(huge, axes="ZYX"))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16])
def test_integer_data_range_is_the_dtypes_whole_span_signed_too(dtype):
    # as scikit-image: int16 spans -32768..32767, a range of 65535 (not its maximum, 32767)
    info = np.iinfo(dtype)
    ref = np.zeros((16, 16), dtype)
    img = ref.copy()
    img[::2] = 10
    expected = sk_metrics.peak_signal_noise_ratio(ref, img, data_range=float(info.max) - float(info.min))
    assert psnr(ref, img) == pytest.approx(expected)


def test_deconvolution_brings_nothing_over_from_the_opposite_border():
    # a ramp dark at the top and bright at the bottom: the FFT's wrap-around must stay in the mirrored border, or
    # the bottom rows' brightness lands in the top rows (and back); the borders are restored as well as the middle
    from napari_deblurgan.blur.psf import gaussian_psf
    from napari_deblurgan.blur.synthesize import convolve_reflect

    rng = np.random.default_rng(0)
    sharp = np.linspace(0, 1, 96)[:, None] + 0.2 * (rng.random((96, 80)) > 0.9)
    psf = gaussian_psf(3.0).astype(np.float64)  # 25 px: reaches 12 rows
    blurred = convolve_reflect(sharp, psf)
    for result in (wiener(blurred, psf, balance=1e-2), richardson_lucy(blurred, psf, iterations=30)):
        error = np.abs(result - sharp)
        middle = error[40:56].mean()
        assert error[:5].mean() < 2 * middle and error[-5:].mean() < 2 * middle

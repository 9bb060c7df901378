"""inputs.PlaneReader: the one plane reader (and per-plane NaN/inf check) of deblur() and the comparison functions."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_deblurgan import InputError, compare, comparison
from napari_deblurgan.inputs import PlaneReader


class CountedReads:
    """A zarr-like array (dtype, shape, __getitem__ and optionally int ``chunks``) that records each key read and
    refuses to be read whole through np.asarray."""

    def __init__(self, array: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        self._array = array
        self.dtype, self.shape = array.dtype, array.shape
        if chunks is not None:
            self.chunks = chunks
        self.keys: list[tuple] = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self._array[key].copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def _stack(shape, dtype=np.float32, seed=0):
    return (np.random.default_rng(seed).random(shape) * 100).astype(dtype)


def _planes(reader: PlaneReader) -> dict[tuple[int, ...], np.ndarray]:
    return {index: reader(index).copy() for index in reader.indices()}


@pytest.mark.parametrize("axes", ["TZCYX", "ZCXY", "YXS"])
@pytest.mark.parametrize("channels_in_plane", [True, False])
def test_an_ndarray_and_a_memmap_give_views_of_their_planes(tmp_path, axes, channels_in_plane):
    shape = {"T": 2, "Z": 3, "C": 2, "S": 3, "Y": 10, "X": 12}
    image = _stack(tuple(shape[a] for a in axes))
    path = tmp_path / "stack.npy"
    np.save(path, image)
    mapped = np.load(path, mmap_mode="r")
    inner = [a for a in "CSYX" if a in axes and (channels_in_plane or a in "YX")]
    for source in (image, mapped):
        reader = PlaneReader(source, axes, channels_in_plane=channels_in_plane)
        assert [axes[i] for i in reader.other] == [a for a in axes if a not in inner]
        count = 0
        for index in reader.indices():
            plane = reader(index)
            assert np.shares_memory(plane, source)  # a view: a memory map's pages are read when it is used
            key = [slice(None)] * len(axes)
            for axis, value in zip(reader.other, index, strict=True):
                key[axis] = value
            expected = np.moveaxis(
                image[tuple(key)],
                [sorted(axes.index(a) for a in inner).index(axes.index(a)) for a in inner],
                range(len(inner)),
            )
            if channels_in_plane and not any(a in axes for a in "CS"):
                expected = expected[None]
            np.testing.assert_array_equal(plane, expected)
            count += 1
        assert count == int(np.prod([source.shape[i] for i in reader.other]))


@pytest.mark.parametrize(
    ("c_order", "reads"),
    [
        # slab by slab (deblur): a slab of whole chunks over T and Z, each chunk read once
        (False, [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4))]),
        # in C order (the comparison functions): deep along the fastest axis only, else a slab is read again
        (True, [(slice(t, t + 1), slice(z, z + 2)) for t in (0, 1) for z in (0, 2)]),
    ],
)
def test_a_chunked_array_like_is_read_a_slab_of_whole_chunks_at_a_time(c_order, reads):
    image = _stack((2, 4, 10, 12))
    wrapped = CountedReads(image, chunks=(2, 2, 5, 12))
    reader = PlaneReader(wrapped, "TZYX", channels_in_plane=False, c_order=c_order)
    indices = list(reader.indices())
    if c_order:
        assert indices == list(np.ndindex(2, 4))
    planes = {index: reader(index).copy() for index in indices}
    assert [key[:2] for key in wrapped.keys] == reads
    for (t, z), plane in planes.items():
        np.testing.assert_array_equal(plane, image[t, z])


def test_one_slab_is_held_at_a_time():
    image = _stack((8, 10, 12))
    reader = PlaneReader(CountedReads(image, chunks=(4, 10, 12)), "ZYX", channels_in_plane=False)
    slabs: list[weakref.ref] = []
    for index in reader.indices():
        plane = reader(index)
        if not slabs or slabs[-1]() is not plane.base:
            slabs.append(weakref.ref(plane.base))
        del plane
        gc.collect()
        assert sum(ref() is not None for ref in slabs) == 1
    assert len(slabs) == 2


def test_slabs_are_cut_to_slab_bytes():
    image = _stack((8, 10, 12))
    wrapped = CountedReads(image, chunks=(4, 10, 12))
    reader = PlaneReader(wrapped, "ZYX", channels_in_plane=False, slab_bytes=3 * 10 * 12 * 4)
    _planes(reader)
    assert [key[0] for key in wrapped.keys] == [slice(0, 3), slice(3, 4), slice(4, 7), slice(7, 8)]


def test_an_array_like_without_chunks_is_read_one_plane_at_a_time():
    image = _stack((2, 3, 10, 12))
    wrapped = CountedReads(image)
    planes = _planes(PlaneReader(wrapped, "ZCYX", channels_in_plane=True))
    assert [key[0] for key in wrapped.keys] == [0, 1]
    np.testing.assert_array_equal(planes[(1,)], image[1])


def test_a_dask_block_of_a_few_planes_is_computed_once_and_a_deep_one_read_a_plane_at_a_time():
    da = pytest.importorskip("dask.array")
    image = _stack((6, 10, 12))
    computed: list[tuple[int, ...]] = []

    def counted(block):
        if block.size:
            computed.append(block.shape)
        return block.copy()

    for chunks, blocks in [((3, 10, 12), [(3, 10, 12)] * 2), ((1, 10, 12), [(1, 10, 12)] * 6)]:
        computed.clear()
        lazy = da.from_array(image, chunks=chunks).map_blocks(counted, dtype=image.dtype)
        planes = _planes(PlaneReader(lazy, "ZYX", channels_in_plane=False, c_order=True))
        assert computed == blocks
        np.testing.assert_array_equal(np.stack([planes[(z,)] for z in range(6)]), image)
    # a block of all 24 planes (da.from_array of a memory map): one plane at a time, never the stack
    deep = da.from_array(_stack((24, 10, 12)), chunks=(24, 10, 12))
    reader = PlaneReader(deep, "ZYX", channels_in_plane=False, c_order=True)
    assert reader((5,)).shape == (10, 12) and not reader._held


def test_a_dask_graph_error_is_passed_on_as_it_is():
    da = pytest.importorskip("dask.array")

    def fail(block):
        raise InputError("the graph's own message")

    lazy = da.zeros((2, 10, 12), chunks=(1, 10, 12), dtype=np.float32).map_blocks(fail, dtype=np.float32)
    with pytest.raises(InputError, match=r"^the graph's own message$"):
        PlaneReader(lazy, "ZYX", channels_in_plane=False)((0,))


def test_an_array_like_whose_indexing_gives_no_pixels_is_refused_clearly():
    class KeyedOnly:  # a mapping-like with a dtype and a shape, as tifffile's TiffPageSeries gives pages
        dtype, shape = np.dtype(np.uint16), (3, 10, 12)

        def __getitem__(self, key):
            return {"pixels": None}[str(key)]

    class Scalars(KeyedOnly):
        def __getitem__(self, key):
            return np.zeros(3)

    for channels_in_plane in (True, False):
        with pytest.raises(InputError, match=r"reading one plane of this KeyedOnly failed \(KeyError.*NumPy array"):
            PlaneReader(KeyedOnly(), "ZYX", channels_in_plane=channels_in_plane)((0,))
        with pytest.raises(InputError, match=r"of this Scalars gave ndarray of shape \(3,\), not \(10, 12\)"):
            PlaneReader(Scalars(), "ZYX", channels_in_plane=channels_in_plane)((0,))


def test_check_finite_names_the_plane_by_its_axes_letters():
    image = _stack((2, 3, 2, 10, 12))
    image[1, 2, 1, 4, 5] = np.nan
    by_plane = PlaneReader(image, "TZCYX", channels_in_plane=False)
    by_plane.check_finite(by_plane((0, 0, 0)), (0, 0, 0))
    with pytest.raises(InputError, match=r"^the reference's plane T=1, Z=2, C=1 has 1 NaN/inf pixel\(s\) out of 120;"):
        by_plane.check_finite(by_plane((1, 2, 1)), (1, 2, 1), "reference")
    with_channels = PlaneReader(image, "TZCYX", channels_in_plane=True)
    with pytest.raises(InputError, match=r"^plane T=1, Z=2, C=1 of the result 'x' has 1 NaN/inf pixel\(s\) out of 120"):
        with_channels.check_finite(with_channels((1, 2)), (1, 2), "result 'x'")
    # in a dask block that starts at T=1: named by its place in the whole image
    block = PlaneReader(image[1:], "TZCYX", channels_in_plane=True)
    with pytest.raises(InputError, match=r"plane T=1, Z=2, C=1 has .*np\.nan_to_num\(image, nan=0\.0\)"):
        block.check_finite(block((0, 2)), (0, 2), origin=(1, 0, 0, 0, 0))


def _with_nan(tmp_path):
    """A (T, Z, Y, X) float stack with NaN in plane T=1, Z=2, as a memory map."""
    stack = np.lib.format.open_memmap(tmp_path / "bad.npy", mode="w+", dtype=np.float32, shape=(2, 3, 16, 20))
    stack[...] = _stack(stack.shape)
    stack[1, 2, 3, 4] = np.nan
    stack.flush()
    return np.load(tmp_path / "bad.npy", mmap_mode="r")


def test_compare_names_the_image_and_the_plane_with_nan(tmp_path):
    da = pytest.importorskip("dask.array")
    bad = _with_nan(tmp_path)
    good = _stack(bad.shape, seed=1)
    for kind in (bad, da.from_array(np.asarray(bad), chunks=(1, 1, 16, 20)), CountedReads(np.asarray(bad))):
        with pytest.raises(
            InputError,
            match=r"^plane T=1, Z=2 of the result 'bad' has 1 NaN/inf pixel\(s\) out of 320;"
            r" replace them first, e\.g\. np\.nan_to_num",
        ):
            compare({"bad": kind}, good)
        with pytest.raises(InputError, match=r"^the reference's plane T=1, Z=2 has 1 NaN/inf pixel\(s\) out of 320;"):
            compare({"good": good}, kind)
        # axes given: named by them
        with pytest.raises(InputError, match=r"^the image's plane C=1, Z=2 has 1 NaN/inf"):
            comparison.sharpness(kind, axes="CZYX")


def test_the_comparison_functions_read_a_chunked_array_like_a_slab_of_whole_chunks_at_a_time():
    image = _stack((2, 4, 10, 12))
    wrapped = CountedReads(image, chunks=(1, 2, 10, 12))
    assert comparison.sharpness(wrapped) == comparison.sharpness(image)
    assert [key[:2] for key in wrapped.keys] == [(slice(t, t + 1), slice(z, z + 2)) for t in (0, 1) for z in (0, 2)]

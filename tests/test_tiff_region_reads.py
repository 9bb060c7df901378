"""Region reads of compressed (or scattered) TIFF stacks through the CLI's TiffPages: a region that needs only
some strips or tiles of a page reads and decodes only those, with the very pixels of tifffile's whole read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from _helpers import lazy_tiff_pair
from napari_deblurgan.cli.deblur_command import TiffPages
from napari_deblurgan.data.pairs import PairedData

PAGES, HEIGHT, WIDTH = 3, 150, 137  # neither a multiple of the strips' rows nor of the 64 px tiles

#: name -> imwrite options; every one written as a stack of PAGES pages of HEIGHT x WIDTH (x samples)
LAYOUTS: dict[str, dict[str, Any]] = {
    "zlib": {"compression": "zlib"},  # tifffile's default strips (~256 KiB): one strip per page here
    "zlib strips": {"compression": "zlib", "rowsperstrip": 16},
    "zlib predictor": {"compression": "zlib", "rowsperstrip": 16, "predictor": True},
    "lzw": {"compression": "lzw", "rowsperstrip": 7},
    "lzw predictor": {"compression": "lzw", "rowsperstrip": 7, "predictor": True},
    "zlib tiled": {"compression": "zlib", "tile": (64, 64)},
    "lzw tiled predictor": {"compression": "lzw", "tile": (64, 64), "predictor": True},
    "uncompressed strips": {"rowsperstrip": 16},
    "uncompressed tiled": {"tile": (64, 64)},
    "jpeg-free packbits": {"compression": "packbits", "rowsperstrip": 16},
}

#: regions of the (PAGES, HEIGHT, WIDTH) stack: crops at every edge and corner, the last partial strip/tile,
#: single rows and columns, steps (also negative), and whole pages
REGIONS: list[tuple[Any, ...]] = [
    (1, slice(10, 42), slice(20, 52)),
    (0, slice(0, 32), slice(0, 32)),  # top left
    (2, slice(HEIGHT - 32, None), slice(WIDTH - 32, None)),  # bottom right: the last partial strip and tile
    (slice(None), slice(140, 150), slice(100, 137)),
    (1, slice(63, 65), slice(63, 65)),  # across a tile corner
    (0, 5),  # one row
    (2, slice(None), 70),  # one column
    (slice(0, 3, 2), slice(149, 20, -9), slice(1, None, 5)),
    (-1, -1, -1),
    (1, slice(None), slice(None)),  # a whole page: tifffile's own read
    (slice(None), slice(0, 0), slice(None)),  # empty
    (Ellipsis, slice(30, 35)),
]


def _stack(dtype: str, samples: int = 1) -> np.ndarray:
    rng = np.random.default_rng(2)
    shape = (PAGES, HEIGHT, WIDTH) + ((samples,) if samples > 1 else ())
    if dtype == "float32":
        return (rng.standard_normal(shape) * 100).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


@contextlib.contextmanager
def _pages(path: Path) -> Iterator[TiffPages]:
    with tifffile.TiffFile(path) as tif:
        pages = TiffPages.of(tif)
        assert pages is not None
        yield pages


def _check_regions(path: Path, regions: list[tuple[Any, ...]] = REGIONS) -> None:
    expected = tifffile.imread(path)
    with _pages(path) as pages:
        assert pages.shape == expected.shape
        for region in regions:
            got = pages[region]
            assert got.shape == expected[region].shape, region
            assert got.dtype == expected.dtype
            assert got.tobytes() == expected[region].tobytes(), region


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_regions_are_those_of_the_whole_read(tmp_path: Path, layout: str, dtype: str):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack(dtype), photometric="minisblack", **LAYOUTS[layout])
    _check_regions(path)


@pytest.mark.parametrize("options", [{"rowsperstrip": 16}, {"tile": (64, 64)}])
def test_floating_point_predictor(tmp_path: Path, options: dict[str, Any]):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, _stack("float32"), photometric="minisblack", compression="zlib", predictor=3, **options)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].predictor == 3
    _check_regions(path)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("options", [{"rowsperstrip": 8}, {"tile": (64, 64)}, {"tile": (64, 64), "predictor": True}])
def test_rgb_pages(tmp_path: Path, dtype: str, options: dict[str, Any]):
    """Contiguous samples (YXS pages) and planar-separate ones (SYX pages)."""
    stack = _stack(dtype, samples=3)
    contiguous, separate = tmp_path / "contig.tif", tmp_path / "separate.tif"
    tifffile.imwrite(contiguous, stack, photometric="rgb", compression="zlib", **options)
    tifffile.imwrite(
        separate, np.moveaxis(stack, -1, 1), photometric="rgb", planarconfig="separate", compression="zlib", **options
    )
    _check_regions(contiguous, [*REGIONS, (1, slice(10, 40), slice(3, 50), 1), (0, slice(100, None), 5, slice(0, 2))])
    # the same regions of the separate pages' SYX: every sample plane
    planar = [r if Ellipsis in r else (r[0], slice(None), *r[1:]) for r in REGIONS]
    _check_regions(separate, [*planar, (1, 2, slice(10, 40), slice(3, 50)), (2, slice(0, 2), slice(100, None), 5)])


@pytest.mark.parametrize("layout", ["zlib predictor", "uncompressed strips", "lzw tiled predictor"])
def test_big_endian_files(tmp_path: Path, layout: str):
    path = tmp_path / "big-endian.tif"
    tifffile.imwrite(path, _stack("uint16"), byteorder=">", photometric="minisblack", **LAYOUTS[layout])
    _check_regions(path)


def test_scattered_uncompressed_pages(tmp_path: Path):
    """Uncompressed pages with other data between them (no memory map of the series): each page is in one piece,
    and only a region's rows of it are read."""
    path = tmp_path / "scattered.tif"
    stack = _stack("uint16")
    with tifffile.TiffWriter(path) as writer:
        for page in stack:
            writer.write(page, contiguous=False, metadata=None, description="between the pages")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dataoffset is None and tif.pages[0].is_contiguous
    _check_regions(path)


def test_missing_pages_are_zeros(tmp_path: Path):
    """An OME series that lists planes the file lacks: tifffile reads them as zeros, and so do regions."""
    stack = _stack("uint16")
    ome = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
        f'SizeX="{WIDTH}" SizeY="{HEIGHT}" SizeZ="{PAGES}" SizeC="1" SizeT="1">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData IFD="0" FirstZ="0" PlaneCount="1"/>'
        '<TiffData IFD="1" FirstZ="2" PlaneCount="1"/></Pixels></Image></OME>'
    )
    path = tmp_path / "missing.ome.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(stack[0], description=ome, metadata=None, compression="zlib", rowsperstrip=16)
        writer.write(stack[2], metadata=None, compression="zlib", rowsperstrip=16)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0][1] is None
    _check_regions(path, [*REGIONS, (1, slice(10, 42), slice(20, 52)), (slice(None), slice(140, None), 3)])


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list: the bytes of pixel data tifffile has read from files since it was last set to 0 (its
    segment reads, and the one read of a page stored in one piece)."""
    total = [0]
    read_segments, read_array = tifffile.FileHandle.read_segments, tifffile.FileHandle.read_array

    def counted_segments(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in read_segments(self, *args, **kwargs):
            for data, _ in item if isinstance(item, list) else [item]:
                total[0] += 0 if data is None else len(data)
            yield item

    def counted_array(self: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        array = read_array(self, *args, **kwargs)
        total[0] += array.nbytes
        return array

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", counted_segments)
    monkeypatch.setattr(tifffile.FileHandle, "read_array", counted_array)
    return total


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "zlib"},  # tifffile's default strips: 128 rows of 1024 uint16
        {"compression": "zlib", "tile": (64, 64)},
        {"compression": "lzw", "predictor": True},
        {},  # uncompressed, in one piece: only the rows are read
    ],
)
def test_a_small_crop_of_a_big_page_reads_only_its_strips(tmp_path: Path, bytes_read: list[int], options: dict):
    """A 40 x 40 crop of a 1024 x 1024 page reads (and decodes) the strips or tiles it covers, not the page."""
    side, crop = 1024, (1, slice(300, 340), slice(500, 540))
    stack = np.random.default_rng(0).integers(0, 4000, size=(2, side, side)).astype(np.uint16)
    path = tmp_path / "big.tif"
    if options:
        tifffile.imwrite(path, stack, photometric="minisblack", **options)
    else:  # pages apart, as for a series that cannot be memory-mapped
        with tifffile.TiffWriter(path) as writer:
            for page in stack:
                writer.write(page, contiguous=False, metadata=None, description="between the pages")
    with _pages(path) as pages:
        bytes_read[0] = 0
        whole = pages[1]
        whole_bytes = bytes_read[0]
        bytes_read[0] = 0
        region = pages[crop]
        assert region.tobytes() == whole[crop[1:]].tobytes() == stack[crop].tobytes()
        # one strip of 128 rows (an eighth of the page, give or take its compression), four tiles, or 40 rows
        assert 0 < bytes_read[0] < whole_bytes / 4, (bytes_read[0], whole_bytes)


def test_a_region_that_needs_every_strip_is_read_by_tifffile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Rows across the whole page (every strip) go to tifffile's whole-page read (its threads, its checks)."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack("uint16"), photometric="minisblack", compression="zlib", rowsperstrip=16)
    keys: list[int] = []
    whole_read = TiffPages._page
    monkeypatch.setattr(TiffPages, "_page", lambda self, index: keys.append(index) or whole_read(self, index))
    with _pages(path) as pages:
        pages[1, :, 10:20]
        assert keys == [1]
        pages[2, 20:40, :]
        assert keys == [1]  # two strips of ten: read alone


def test_jpeg_pages_are_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Layouts the strip reader does not take (JPEG here) are read by tifffile whole, then cut: same pixels."""
    pytest.importorskip("imagecodecs")
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, _stack("uint8", samples=3), photometric="rgb", compression="jpeg", rowsperstrip=16)
    keys: list[int] = []
    whole_read = TiffPages._page
    monkeypatch.setattr(TiffPages, "_page", lambda self, index: keys.append(index) or whole_read(self, index))
    _check_regions(path, [(1, slice(10, 42), slice(20, 52)), (2, slice(140, None), slice(0, 5))])
    assert keys == [1, 2]


def test_a_tifffile_without_the_private_decoder_api_falls_back_to_whole_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The segment reads use tifffile's per-segment decoder with its private ``_fullsize`` keyword (and its
    ``_dtype``); a tifffile version that spells them otherwise (a TypeError or AttributeError in the segment
    reader) must cost speed (whole-page reads), not a crash or other pixels."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack("uint16"), photometric="minisblack", compression="zlib", rowsperstrip=16)
    keys: list[int] = []
    whole_read = TiffPages._page
    monkeypatch.setattr(TiffPages, "_page", lambda self, index: keys.append(index) or whole_read(self, index))

    def reader_of_another_tifffile(*args: Any) -> Any:
        raise TypeError("decode() got an unexpected keyword argument '_fullsize'")

    monkeypatch.setattr(TiffPages, "_read_block", reader_of_another_tifffile)
    _check_regions(path, [(1, slice(10, 42), slice(20, 52))])
    assert keys == [1]


@contextlib.contextmanager
def _lazy_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Iterator[tuple[Any, ...]]:
    """A (blurred, sharp) pair of zlib stacks read back as `finetune` reads stacks over its in-memory limit."""
    rng = np.random.default_rng(1)
    sharp = rng.integers(100, 4000, size=(4, 96, 80)).astype(np.uint16)
    blurred = ((sharp.astype(np.float64) + np.roll(sharp, 1, 1) + np.roll(sharp, 1, 2)) / 3).astype(np.uint16)
    with lazy_tiff_pair(tmp_path, monkeypatch, blurred, sharp, **options) as (lazy_blurred, lazy_sharp, axes):
        yield lazy_blurred, lazy_sharp, blurred, sharp, axes


@pytest.mark.parametrize("options", [{"rowsperstrip": 8}, {"tile": (32, 32)}])
@pytest.mark.parametrize("synthetic", [False, True])
def test_planes_too_big_to_keep_are_read_by_their_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytes_read: list[int], options: dict, synthetic: bool
):
    """Training on planes larger than the decoded-plane budget reads each crop's strips (or tiles) only, not
    the page; the batches are those of the stack in memory, bit for bit."""
    with _lazy_pair(tmp_path, monkeypatch, **options) as (blurred, sharp, blurred_array, sharp_array, axes):
        batches = {}
        for name, (b, s, keep) in {
            "strips": (blurred, sharp, {"decoded_cache_bytes": 100}),  # below one plane (15 KiB)
            "in memory": (blurred_array, sharp_array, {"cache_bytes": 0}),
        }.items():
            data = PairedData(None if synthetic else b, s, axes=axes, patch_size=16, validation=0.25, seed=3, **keep)
            for source in data.sources:  # the percentiles of the planes first: whole planes, read once
                for index, channel in source.plane_keys():
                    source.norm_range(index, channel or 0)
            rng = np.random.default_rng(7)
            bytes_read[0] = 0
            arrays = [a for _ in range(4) for a in data.sample(8, rng, margin=2) if a is not None]
            batches[name] = (arrays, bytes_read[0])
            arrays += [a for a in data.validation_arrays(margin=2) or () if a is not None]
        for got, expected in zip(batches["strips"][0], batches["in memory"][0], strict=True):
            assert got.tobytes() == expected.tobytes()
        # 32 crops of 20 x 20 px, each of one or two pages (sharp-only: one): whole pages would be 32-64 of 15 KiB
        pages_bytes = 32 * (1 if synthetic else 2) * 96 * 80 * 2
        assert 0 < batches["strips"][1] < pages_bytes / 2


def test_regions_read_from_several_threads(tmp_path: Path):
    """Reads from several threads at once (the file handle's seeks and reads under one lock, decodes outside
    it) give the pixels of reads one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack("uint16"), photometric="minisblack", compression="zlib", rowsperstrip=4)
    expected = tifffile.imread(path)
    rng = np.random.default_rng(5)
    regions = [
        (int(p), slice(int(y), int(y) + 24), slice(int(x), int(x) + 24))
        for p, y, x in zip(
            rng.integers(0, PAGES, 200),
            rng.integers(0, HEIGHT - 24, 200),
            rng.integers(0, WIDTH - 24, 200),
            strict=True,
        )
    ]
    with _pages(path) as pages, ThreadPoolExecutor(4) as pool:
        for region, got in zip(regions, pool.map(pages.__getitem__, regions), strict=True):
            assert got.tobytes() == expected[region].tobytes()

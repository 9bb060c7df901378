"""Training crops from compressed TIFF stacks read lazily (the CLI's TiffPages): decoded planes are kept in a
small byte-bounded cache, so a plane is not decoded again for each crop, and the crops are the same."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _helpers import lazy_tiff_pair
from napari_deblurgan.cli import finetune_command
from napari_deblurgan.cli.deblur_command import TiffPages
from napari_deblurgan.data.pairs import BatchSource, PairedData

PLANES, SIDE, PATCH = 6, 64, 16


@pytest.fixture
def page_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list counting TiffPages page decodes."""
    count = [0]
    decode_page = TiffPages._page

    def counted(self: TiffPages, index: int) -> np.ndarray:
        count[0] += 1
        return decode_page(self, index)

    monkeypatch.setattr(TiffPages, "_page", counted)
    return count


def _stacks(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A (blurred, sharp) uint16 pair: the blurred one a box blur of the sharp one (registered, same units)."""
    rng = np.random.default_rng(1)
    sharp = rng.integers(100, 4000, size=shape).astype(np.uint16)
    blurred = sharp.astype(np.float64)
    for axis in (1, 2):
        blurred = (blurred + np.roll(blurred, 1, axis) + np.roll(blurred, -1, axis)) / 3
    return blurred.astype(np.uint16), sharp


@contextlib.contextmanager
def _lazy_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...] = (PLANES, SIDE, SIDE)
) -> Iterator[tuple[TiffPages, TiffPages, np.ndarray, np.ndarray, str]]:
    """The pair written as zlib TIFFs and read back as `finetune` reads stacks over its in-memory limit."""
    blurred, sharp = _stacks(shape)
    with lazy_tiff_pair(tmp_path, monkeypatch, blurred, sharp) as (lazy_blurred, lazy_sharp, axes):
        yield lazy_blurred, lazy_sharp, blurred, sharp, axes


def test_crops_of_a_plane_decode_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_decodes: list[int]):
    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, _, _, axes):
        data = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0)
        page_decodes[0] = 0
        crops = 64
        data.sample(crops, np.random.default_rng(0))
        # the percentiles' read and every crop of a plane share one decode of each of its two pages; without
        # the cache each crop decoded both pages (128 decodes, and 6 more for the percentiles)
        assert page_decodes[0] <= 2 * PLANES
        page_decodes[0] = 0
        data.sample(crops, np.random.default_rng(1))
        assert page_decodes[0] == 0  # 12 planes of 8 KiB fit the default budget


def test_cache_is_bounded_and_evicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_decodes: list[int]):
    plane_bytes = SIDE * SIDE * 2  # uint16
    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, _, _, axes):
        data = PairedData(
            blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0, decoded_cache_bytes=3 * plane_bytes
        )
        decoded = data._decoded
        assert decoded is not None
        page_decodes[0] = 0
        rng = np.random.default_rng(0)
        for _ in range(10):
            data.sample(8, rng)
            assert decoded.used_bytes <= 3 * plane_bytes and len(decoded.planes) <= 3
        # 12 pages do not fit in 3: planes were evicted and decoded again, yet a batch's crops of one plane
        # (read one after another) still share a decode
        assert 2 * PLANES < page_decodes[0] < 2 * 10 * 8
        # a plane larger than the budget is not kept at all
        small = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0, decoded_cache_bytes=100)
        small.sample(8, np.random.default_rng(0))
        assert small._decoded is not None and not small._decoded.planes and small._decoded.used_bytes == 0


@pytest.mark.parametrize("synthetic", [False, True])
def test_batches_are_the_same_as_uncached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic: bool):
    """Cached, uncached and in-memory data give bit-identical batches (and validation crops) for a seed."""
    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, blurred_array, sharp_array, axes):
        variants = {
            "cached": (blurred, sharp, {"decoded_cache_bytes": 3 * SIDE * SIDE * 2}),  # evicts, too
            "uncached": (blurred, sharp, {"decoded_cache_bytes": 0}),
            "in memory": (blurred_array, sharp_array, {"cache_bytes": 0}),
        }
        batches: dict[str, list[np.ndarray]] = {}
        for name, (b, s, options) in variants.items():
            data = PairedData(None if synthetic else b, s, axes=axes, patch_size=PATCH, validation=0.2, **options)
            rng = np.random.default_rng(7)
            arrays: list[np.ndarray] = []
            for _ in range(5):
                batch_blurred, batch_sharp = data.sample(8, rng, margin=3)
                arrays += [batch_sharp] + ([] if batch_blurred is None else [batch_blurred])
            validation = data.validation_arrays(margin=3)
            assert validation is not None
            arrays += [a for a in validation if a is not None]
            batches[name] = arrays
        for name in ("uncached", "in memory"):
            assert len(batches[name]) == len(batches["cached"])
            for cached, other in zip(batches["cached"], batches[name], strict=True):
                np.testing.assert_array_equal(cached, other)
                assert cached.tobytes() == other.tobytes()


def test_channels_in_the_page_share_one_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_decodes: list[int]
):
    """A single-channel model on RGB pages (ZYXS) reads each channel as a plane of its own: one decode of the
    page serves all three, and the crops are those of the in-memory stack."""
    shape = (3, SIDE, SIDE, 3)
    with _lazy_pair(tmp_path, monkeypatch, shape) as (blurred, sharp, blurred_array, sharp_array, axes):
        assert axes == "ZYXS"
        data = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0)
        page_decodes[0] = 0
        lazy = data.sample(48, np.random.default_rng(3))
        assert page_decodes[0] <= 2 * 3  # 2 files x 3 pages, whatever the channel of the crop
        in_memory = PairedData(blurred_array, sharp_array, axes=axes, patch_size=PATCH, validation=0.0)
        for got, expected in zip(lazy, in_memory.sample(48, np.random.default_rng(3)), strict=True):
            assert got is not None and expected is not None
            np.testing.assert_array_equal(got, expected)


def _batches(source: BatchSource, sizes: list[int]) -> list[np.ndarray]:
    arrays = []
    for size in sizes:
        blurred, sharp = source.next_batch(size)
        arrays += [blurred.numpy().copy(), sharp.numpy().copy()]
    return arrays


@pytest.mark.parametrize("synthetic", [False, True])
def test_batches_read_ahead_are_the_batches_read_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_decodes: list[int], synthetic: bool
):
    """BatchSource reads the crops of several batches of a compressed lazy stack at once, plane by plane: the
    batches are those read one by one (and those of the stack in memory), a change of batch size included,
    with fewer page decodes."""
    import torch

    sizes = [4] * 20 + [2] * 4 + [4] * 20  # a batch size halved (out of GPU memory) and back
    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, blurred_array, sharp_array, axes):
        results, decodes = {}, {}
        variants = {
            "read ahead": (blurred, sharp, {}),  # 32 batches at a time (READ_AHEAD_BATCHES)
            "one by one": (blurred, sharp, {"read_ahead_bytes": 0}),
            "in memory": (blurred_array, sharp_array, {}),
        }
        for name, (b, s, options) in variants.items():
            data = PairedData(
                None if synthetic else b,
                s,
                axes=axes,
                patch_size=PATCH,
                validation=0.0,
                decoded_cache_bytes=2 * SIDE * SIDE * 2,
            )  # one pair of planes
            source = BatchSource(data, torch.device("cpu"), seed=5, **options)
            assert (source.read_ahead_bytes > 0) == (name == "read ahead")
            page_decodes[0] = 0
            results[name] = _batches(source, sizes)
            decodes[name] = page_decodes[0]
        for name in ("one by one", "in memory"):
            for got, expected in zip(results["read ahead"], results[name], strict=True):
                assert got.tobytes() == expected.tobytes()
        # 32 batches' crops share a decode of each of the 6 planes; one by one, a batch's 4 crops share only
        # the decodes of the planes they have in common
        assert decodes["read ahead"] < decodes["one by one"] / 2


def test_a_resumed_run_draws_the_batches_read_ahead_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A checkpoint taken while batches read ahead are unused resumes with exactly those batches."""
    import torch

    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, _, _, axes):
        data = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0)
        source = BatchSource(data, torch.device("cpu"), seed=5, read_ahead_bytes=2**20)
        _batches(source, [4, 4])
        assert source._read_ahead  # some batches were read ahead and are not used yet
        state = source.state_dict()
        expected = _batches(source, [4, 4, 4])
        resumed = BatchSource(data, torch.device("cpu"), seed=99, read_ahead_bytes=2**20)
        resumed.load_state_dict(state)
        for got, want in zip(_batches(resumed, [4, 4, 4]), expected, strict=True):
            assert got.tobytes() == want.tobytes()


def test_read_ahead_reads_no_batch_the_run_will_not_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Near the end of a run (batches_needed, set by the trainer before each step) and in a whole short run."""
    import torch

    from napari_deblurgan.model_file import create_model
    from napari_deblurgan.training.trainer import iter_finetune

    with _lazy_pair(tmp_path, monkeypatch) as (blurred, sharp, _, _, axes):
        data = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0)
        source = BatchSource(data, torch.device("cpu"), seed=5)
        assert source.read_ahead_bytes > 0
        source.batches_needed = 3
        _batches(source, [4])
        assert len(source._read_ahead) == 2  # 3 read, 1 taken: not READ_AHEAD_BATCHES

        crops_read: list[int] = []
        read_crops = PairedData.read_crops

        def counted(self: PairedData, plane_ids: np.ndarray, *args, **kwargs):
            crops_read.append(len(plane_ids))
            return read_crops(self, plane_ids, *args, **kwargs)

        monkeypatch.setattr(PairedData, "read_crops", counted)
        steps, batch_size = 3, 2
        run = iter_finetune(
            blurred,
            sharp,
            axes=axes,
            model=create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1),
            preset="content",  # no critic: one batch a step
            steps=steps,
            batch_size=batch_size,
            patch_size=PATCH,
            validation=0.0,
            device="cpu",
            seed=0,
        )
        run.run_to_end()
        assert sum(crops_read) == steps * batch_size


def _stacks_with_a_nan_plane(tmp_path: Path, nan_plane: int) -> None:
    """float32 zlib stacks (6 planes of 64 x 64 px) whose sharp plane ``nan_plane`` holds a NaN."""
    blurred, sharp = (stack.astype(np.float32) for stack in _stacks((PLANES, SIDE, SIDE)))
    sharp[nan_plane, 10, 10] = np.nan
    for name, stack in (("blurred", blurred), ("sharp", sharp)):
        tifffile.imwrite(tmp_path / f"{name}.tif", stack, compression="zlib")


def test_a_nan_plane_read_ahead_fails_the_step_that_takes_it_not_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Read ahead with many batches, a NaN crop in a later one failed the run before its first step (no "model so
    far"); now the steps before it train, as they do when batches are read one by one, and the CLI saves them."""
    import warnings

    from napari_deblurgan.cli import main
    from napari_deblurgan.errors import InputError
    from napari_deblurgan.model_file import create_model, load_model
    from napari_deblurgan.training import events
    from napari_deblurgan.training.trainer import iter_finetune

    _stacks_with_a_nan_plane(tmp_path, nan_plane=4)
    monkeypatch.setattr(finetune_command, "TRAINING_IN_MEMORY_BYTES", 1)
    tiny = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    tiny.save(tmp_path / "tiny.pt")

    def steps_before_the_error(read_ahead: bool) -> tuple[int, str]:
        with contextlib.ExitStack() as opened:
            blurred, axes = finetune_command.read_image(tmp_path / "blurred.tif", None, opened)
            sharp, _ = finetune_command.read_image(tmp_path / "sharp.tif", None, opened)
            assert isinstance(sharp, TiffPages)
            with monkeypatch.context() as patched:
                if not read_ahead:
                    patched.setattr(PairedData, "decodes_whole_pages", property(lambda self: False))
                run = iter_finetune(
                    blurred, sharp, axes=axes, model=tiny, preset="content", steps=40, batch_size=2, patch_size=16,
                    validation=0.0, device="cpu", seed=0,
                )  # fmt: skip
                done = 0
                with warnings.catch_warnings(), pytest.raises(InputError) as error:
                    warnings.simplefilter("ignore")
                    for event in run:
                        done += isinstance(event, events.Step)
        return done, str(error.value)

    one_by_one, message = steps_before_the_error(read_ahead=False)
    assert 0 < one_by_one < 40, "the NaN plane must be met after the first step for this test to mean anything"
    assert "NaN or infinite values" in message
    assert steps_before_the_error(read_ahead=True) == (one_by_one, message)

    out = tmp_path / "so_far.pt"
    args = ["finetune", "--blurred", str(tmp_path / "blurred.tif"), "--sharp", str(tmp_path / "sharp.tif")]
    args += ["--model", str(tmp_path / "tiny.pt"), "--preset", "content", "--steps", "40", "--batch-size", "2"]
    args += ["--patch-size", "16", "--validation", "0", "--device", "cpu", "--seed", "0", "-o", str(out)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err  # an InputError (the data), after the model so far is saved
    assert "training failed; the model so far is saved to" in err and "NaN or infinite" in err
    assert load_model(out).metadata["training"]["base_model"]


def _warm_percentiles(data: PairedData) -> None:
    """Every training plane's percentiles read (a whole-plane read each), as the first visits would."""
    for plane in data.train_planes:
        source = data.sources[plane.source]
        for channel in [plane.channel] if plane.channel is not None else range(source.n_channels):
            source.norm_range(plane.index, channel)


def test_crops_of_planes_that_seldom_stay_cached_are_read_by_their_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_decodes: list[int]
):
    """48 pages of which 2 fit the budget: a plane decoded whole for one crop would seldom serve another, so a
    crop decodes only the strips it covers (2-3 of 16). Where every plane fits, planes are decoded whole once,
    as before. The batches are the in-memory arrays' either way."""
    side, planes = 128, 24
    blurred_array, sharp_array = _stacks((planes, side, side))
    with lazy_tiff_pair(tmp_path, monkeypatch, blurred_array, sharp_array, rowsperstrip=8) as (blurred, sharp, axes):
        block_reads = [0]
        read_block = TiffPages._read_block

        def counted(self: TiffPages, *args: object) -> object:
            block = read_block(self, *args)
            block_reads[0] += block is not None  # None: the region needs every strip (then the page is decoded)
            return block

        monkeypatch.setattr(TiffPages, "_read_block", counted)
        plane_bytes = side * side * 2
        in_memory = PairedData(blurred_array, sharp_array, axes=axes, patch_size=PATCH, validation=0.0)
        for budget, whole_decodes in ((2 * plane_bytes, False), (2 * planes * plane_bytes, True)):
            data = PairedData(blurred, sharp, axes=axes, patch_size=PATCH, validation=0.0, decoded_cache_bytes=budget)
            _warm_percentiles(data)
            page_decodes[0] = block_reads[0] = 0
            rng, expected_rng = np.random.default_rng(3), np.random.default_rng(3)
            for _ in range(4):
                batch = data.sample(8, rng, margin=2)
                expected = in_memory.sample(8, expected_rng, margin=2)
                for got, want in zip(batch, expected, strict=True):
                    np.testing.assert_array_equal(got, want)
            if whole_decodes:  # the percentiles' reads kept the blurred planes; each sharp one is decoded once
                assert block_reads[0] == 0 and 0 < page_decodes[0] <= planes
            else:  # 64 crops: each read two regions (blurred, sharp) by their strips, no page decoded whole
                assert page_decodes[0] == 0 and block_reads[0] >= 2 * 32 - 4


def test_region_share_counts_the_strips_or_tiles_a_region_needs(tmp_path: Path):
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    cases = {
        "strips.tif": ({"compression": "zlib", "rowsperstrip": 8}, [((0, 8), 1 / 8), ((4, 20), 3 / 8), ((0, 64), 1.0)]),
        "tiles.tif": ({"compression": "zlib", "tile": (16, 16)}, [((0, 16), 1 / 16), ((8, 40), 9 / 16)]),
        "raw.tif": ({}, [((0, 8), 8 / 64), ((10, 42), 32 / 64)]),  # uncompressed in one piece: its rows
    }
    for name, (options, regions) in cases.items():
        tifffile.imwrite(tmp_path / name, image, **options)
        with tifffile.TiffFile(tmp_path / name) as tif:
            pages = TiffPages.of(tif)
            assert pages is not None
            for (start, stop), share in regions:
                assert pages.region_share((start, stop), (start, stop)) == pytest.approx(share), (name, start, stop)
    with tifffile.TiffFile(tmp_path / "strips.tif") as tif:
        pages = TiffPages.of(tif)
        assert pages is not None
        pages._page_layout = lambda keyframe: None  # a layout read whole (JPEG, a volume...): the whole page
        assert pages.region_share((0, 8), (0, 8)) == 1.0


def test_crops_of_the_channels_of_one_rgb_page_count_as_crops_of_one_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A one-channel model reads an RGB page's channels as three training planes, but one decode of the page
    serves all three: the rule weighs the crops of all of them against that decode (it counted a third)."""
    from napari_deblurgan.data import pairs

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 4000, (2, 64, 64, 3)).astype(np.uint16)
    blurred = (sharp // 2 + 100).astype(np.uint16)
    seen: list[int] = []
    rule = pairs._Source._worth_decoding_whole
    monkeypatch.setattr(pairs._Source, "_worth_decoding_whole", lambda self, *a: seen.append(a[-1]) or rule(self, *a))
    with lazy_tiff_pair(tmp_path, monkeypatch, blurred, sharp, rowsperstrip=8) as (lazy_b, lazy_s, axes):
        assert axes.endswith("YXS")
        data = PairedData(lazy_b, lazy_s, axes=axes, patch_size=PATCH, validation=0.0, channels=1)
        _warm_percentiles(data)
        first = [i for i, p in enumerate(data.train_planes) if p.index == (0,)]
        assert sorted(data.train_planes[i].channel for i in first) == [0, 1, 2]
        seen.clear()
        positions = np.array([[8, 8, 0]] * 3)
        data.read_crops(np.array(first), positions)
        assert seen and set(seen) == {3}, seen  # one crop of each channel: three crops for the one decode


def test_region_share_of_one_sample_plane_of_a_planar_page(tmp_path: Path):
    image = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64)
    tifffile.imwrite(tmp_path / "planar.tif", image, photometric="rgb", planarconfig="separate", rowsperstrip=8)
    with tifffile.TiffFile(tmp_path / "planar.tif") as tif:
        pages = TiffPages.of(tif)
        assert pages is not None
        assert pages.region_share((0, 8), (0, 64)) == pytest.approx(1 / 8)  # every sample plane's first strip
        assert pages.region_share((0, 8), (0, 64), samples_read=1) == pytest.approx(1 / 8 / 3)

"""The command-line tool: deblur (TIFF in/out, metadata kept, safe writes), info, exit codes, progress bar."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time

import numpy as np
import pytest
import tifffile

import napari_deblurgan.inference.deblur as deblur_module
from napari_deblurgan.cli import deblur_command, main
from napari_deblurgan.cli.progress import ProgressBar
from napari_deblurgan.errors import InputError
from napari_deblurgan.model_file import load_model


@pytest.fixture
def imagej_stack(tmp_path):
    """A ZYX uint16 ImageJ hyperstack with z spacing 0.5 um and 0.1 um pixels."""
    rng = np.random.default_rng(0)
    data = (rng.random((3, 40, 48)) * 4000).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, data, imagej=True, metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"}, resolution=(10.0, 10.0)
    )
    return path, data


def _files(directory) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ------------------------------------------------------------------------------------------------- deblur
def test_deblur_2d_plain_tiff(tiny_model_file, small_image, tmp_path, capsys):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, small_image, resolution=(20.0, 20.0), resolutionunit="CENTIMETER")
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file)]) == 0
    result = tifffile.imread(out)
    assert result.shape == small_image.shape and result.dtype == np.uint16
    # The CLI is a thin front end: exactly what the Python API returns.
    expected = deblur_module.deblur(small_image, load_model(tiny_model_file), axes="YX", device="cpu")
    np.testing.assert_array_equal(result, expected)
    assert not np.array_equal(result, small_image)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].resolution == pytest.approx((20.0, 20.0))
        assert tif.pages[0].resolutionunit == tifffile.RESUNIT.CENTIMETER
    err = capsys.readouterr().err
    assert "100%" in err and "wrote" in err
    assert _files(tmp_path) == {"in.tif", "out.tif", "tiny.pt"}  # no temp file left


def test_deblur_border_context_option(tiny_model_file, small_image, tmp_path, capsys):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, small_image)
    argv = ["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]
    assert main([*argv, "--context-padding", "0"]) == 0
    expected = deblur_module.deblur(small_image, load_model(tiny_model_file), axes="YX", context_padding=0)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert not np.array_equal(expected, deblur_module.deblur(small_image, load_model(tiny_model_file), axes="YX"))
    assert main([*argv, "--force", "--context-padding", "-3"]) == 2
    assert "--context-padding must be >= 0" in capsys.readouterr().err


def test_deblur_self_ensemble_option(tiny_model_file, small_image, tmp_path):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, small_image)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q", "--self-ensemble"]) == 0
    model = load_model(tiny_model_file)
    expected = deblur_module.deblur(small_image, model, axes="YX", self_ensemble=True)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert not np.array_equal(expected, deblur_module.deblur(small_image, model, axes="YX"))


def test_deblur_imagej_stack_keeps_axes_and_spacing(tiny_model_file, imagej_stack, tmp_path):
    inp, data = imagej_stack
    out = tmp_path / "out.tif"
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == "ZYX"
        assert tif.series[0].shape == data.shape and tif.series[0].dtype == data.dtype
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].resolution == pytest.approx((10.0, 10.0))


def test_deblur_ome_keeps_physical_sizes(tiny_model_file, tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.random((2, 3, 32, 32)) * 200).astype(np.uint8)
    inp, out = tmp_path / "in.ome.tif", tmp_path / "out.ome.tif"
    meta = {"axes": "CZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5}
    tifffile.imwrite(inp, data, ome=True, metadata=meta)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].axes == "CZYX" and tif.series[0].shape == data.shape
        sizes = dict(re.findall(r'(PhysicalSize[XYZ])="([^"]+)"', tif.ome_metadata))
    expected = {"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5}
    assert {k: float(v) for k, v in sizes.items()} == expected


def test_lazy_memory_mapped_path_matches_in_memory(tiny_model_file, imagej_stack, tmp_path, monkeypatch):
    inp, _ = imagej_stack
    eager, lazy = tmp_path / "eager.tif", tmp_path / "lazy.tif"
    assert main(["deblur", str(inp), "-o", str(eager), "--model", str(tiny_model_file), "-q"]) == 0
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)
    calls = []
    real_memmap = tifffile.memmap
    monkeypatch.setattr(tifffile, "memmap", lambda *a, **k: calls.append(1) or real_memmap(*a, **k))
    assert main(["deblur", str(inp), "-o", str(lazy), "--model", str(tiny_model_file), "-q"]) == 0
    assert calls, "the lazy path was not taken"
    np.testing.assert_array_equal(tifffile.imread(lazy), tifffile.imread(eager))
    with tifffile.TiffFile(lazy) as tif:
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == pytest.approx(0.5)


def _deblur_eager_and_lazy(inp, model_file, monkeypatch):
    """Deblur ``inp`` with the CLI in memory, then by its lazy (large-file) path; returns the shapes of the
    blocks the lazy path computed and the two output files."""
    eager, lazy = inp.with_name("eager.tif"), inp.with_name("lazy.tif")
    argv = ["--model", str(model_file), "-q"]
    assert main(["deblur", str(inp), "-o", str(eager), *argv]) == 0
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)
    blocks = []
    real = deblur_module._deblur_numpy
    monkeypatch.setattr(
        deblur_module, "_deblur_numpy", lambda block, *a, **k: blocks.append(block.shape) or real(block, *a, **k)
    )
    assert main(["deblur", str(inp), "-o", str(lazy), *argv]) == 0
    return blocks, eager, lazy


def test_lazy_path_computes_each_page_once_with_channels_before_z(tiny_model_file, tmp_path, monkeypatch):
    """An OME CZYX file (channels outermost): a single-channel model deblurs each (c, z) page once; chunks of
    all channels were computed again for every channel's pages (C times the work)."""
    rng = np.random.default_rng(2)
    data = (rng.random((2, 3, 40, 40)) * 3000).astype(np.uint16)
    inp = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(inp, data, ome=True, metadata={"axes": "CZYX"})
    planes, eager, lazy = _deblur_eager_and_lazy(inp, tiny_model_file, monkeypatch)
    assert len(planes) == 6 and all(int(np.prod(shape[:-2])) == 1 for shape in planes)
    np.testing.assert_array_equal(tifffile.imread(lazy), tifffile.imread(eager))


@pytest.mark.parametrize("axes", ["CZYX", "ZCYX"])
def test_lazy_path_computes_each_plane_group_once_with_a_joint_model(make_tiny_model, tmp_path, monkeypatch, axes):
    """A joint (2-channel) model deblurs each Z plane's channels together: one computation per Z, whatever the
    order of C and Z in the file. With C outermost (CZYX) the pages of one computation lie C pages apart, and
    each plane group was computed again for every channel's pages (C times the work)."""
    model_file = make_tiny_model(channels=2).save(tmp_path / "joint.pt")
    rng = np.random.default_rng(4)
    data = (rng.random((2, 3, 40, 40)) * 3000).astype(np.uint16)
    if axes == "ZCYX":
        data = np.ascontiguousarray(data.transpose(1, 0, 2, 3))
    inp = tmp_path / "in.ome.tif"
    tifffile.imwrite(inp, data, ome=True, metadata={"axes": axes})
    groups, eager, lazy = _deblur_eager_and_lazy(inp, model_file, monkeypatch)
    channel_axis = axes.index("C")
    assert len(groups) == 3 and all(shape[channel_axis] == 2 for shape in groups), groups
    np.testing.assert_array_equal(tifffile.imread(lazy), tifffile.imread(eager))
    with tifffile.TiffFile(lazy) as tif:
        assert tif.is_ome and tif.series[0].axes == axes


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_lazy_path_memory_does_not_grow_with_the_file(tiny_model_file, tmp_path, monkeypatch, compression):
    """The lazy path exists for files larger than memory: NumPy's peak allocation stays the same for a file 4x
    larger (dask's from_array copied a memmap whole before the pages were wrapped; a compressed file was read
    whole, and its result held whole)."""
    import tracemalloc

    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)

    def peak_bytes(planes: int) -> tuple[int, int]:
        data = (np.random.default_rng(3).random((planes, 128, 128)) * 3000).astype(np.uint16)
        inp, out = tmp_path / f"in{planes}.tif", tmp_path / f"out{planes}.tif"
        tifffile.imwrite(inp, data, imagej=True, metadata={"axes": "ZYX"}, compression=compression)
        del data
        tracemalloc.start()
        try:
            assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
            return tracemalloc.get_traced_memory()[1], inp.stat().st_size
        finally:
            tracemalloc.stop()

    peak_bytes(4)  # first-time imports and caches
    small, small_file = peak_bytes(48)
    large, large_file = peak_bytes(192)
    assert large - small < 0.25 * (large_file - small_file), (small, large)


def _without_uuids(xml):
    return re.sub(r'UUID="[^"]*"', "", xml or "")


@pytest.mark.parametrize(
    ("kind", "compression"),
    [("imagej", "zlib"), ("ome-czyx-joint", "lzw"), ("ome-zcyx-joint", "zlib"), ("plain-tiled", "zlib")],
)
def test_a_compressed_stack_is_deblurred_page_by_page(
    make_tiny_model, tmp_path, monkeypatch, kind, compression, refuse_whole_tiff_reads
):
    """A compressed stack above the lazy threshold was read whole (tifffile cannot memory-map it), whatever its
    size: now its pages are decoded one at a time, and the output, compressed as the input, is the in-memory
    path's to the last bit, with the same axes and metadata. The joint (2-channel) cases put a plane's pages
    next to each other in the file (ZCYX) or a channel stack apart (CZYX)."""
    rng = np.random.default_rng(5)
    channels = 2 if "joint" in kind else 1
    model_file = make_tiny_model(channels=channels).save(tmp_path / "model.pt")
    inp = tmp_path / "in.tif"
    if kind == "imagej":
        data = (rng.random((4, 40, 48)) * 4000).astype(np.uint16)
        kw = dict(imagej=True, metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"}, resolution=(10.0, 10.0))
    elif kind.startswith("ome"):
        axes = kind.split("-")[1].upper()
        data = (rng.random((2, 3, 40, 40) if axes == "CZYX" else (3, 2, 40, 40)) * 4000).astype(np.uint16)
        kw = dict(ome=True, metadata={"axes": axes, "PhysicalSizeX": 0.2, "Channel": {"Name": ["a", "b"]}})
    else:
        data = (rng.random((3, 40, 48)) * 4000).astype(np.uint16)
        kw = dict(tile=(16, 16), description="a plain stack", metadata=None, photometric="minisblack")
    tifffile.imwrite(inp, data, compression=compression, **kw)
    eager, lazy = tmp_path / "eager.tif", tmp_path / "lazy.tif"
    assert main(["deblur", str(inp), "-o", str(eager), "--model", str(model_file), "-q"]) == 0

    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 100)  # far below this stack
    keys = refuse_whole_tiff_reads()
    assert main(["deblur", str(inp), "-o", str(lazy), "--model", str(model_file), "-q"]) == 0
    monkeypatch.undo()
    pages = int(np.prod(data.shape[:-2]))
    assert sorted(keys) == list(range(pages)), keys  # each page decoded on its own, once
    assert _files(tmp_path) == {"in.tif", "model.pt", "eager.tif", "lazy.tif"}  # no scratch file left
    np.testing.assert_array_equal(tifffile.imread(lazy), tifffile.imread(eager))
    with tifffile.TiffFile(eager) as e, tifffile.TiffFile(lazy) as z:
        assert z.series[0].dtype == e.series[0].dtype == data.dtype
        assert z.series[0].axes == e.series[0].axes and z.series[0].shape == data.shape
        assert z.pages[0].compression == e.pages[0].compression == {"zlib": 8, "lzw": 5}[compression]
        assert len(z.pages) == len(e.pages) == pages
        assert _without_uuids(z.pages[0].description) == _without_uuids(e.pages[0].description)
        assert z.pages[0].resolution == e.pages[0].resolution
        assert z.imagej_metadata == e.imagej_metadata


def test_a_compressed_stack_is_written_as_it_is_deblurred_and_atomically(
    tiny_model_file, tmp_path, monkeypatch, capsys
):
    """The lazy path writes each plane as it is done (the in-memory one only at the end): the temporary file
    grows while later planes are deblurred, and an interruption mid-way leaves neither the output nor its
    temporary file."""
    rng = np.random.default_rng(6)
    data = (rng.random((5, 256, 256)) * 4000).astype(np.uint16)
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 100)
    monkeypatch.setenv("TIFFFILE_NUM_THREADS", "1")  # tifffile compresses each page as it comes
    sizes = []
    real = deblur_module._deblur_numpy

    def deblur_then_interrupt(block, *args, **kwargs):
        sizes.append(sum(p.stat().st_size for p in tmp_path.glob(".out.tif.*.part")))
        if len(sizes) == 4:
            raise KeyboardInterrupt  # Ctrl-C while the 4th plane is deblurred
        return real(block, *args, **kwargs)

    monkeypatch.setattr(deblur_module, "_deblur_numpy", deblur_then_interrupt)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(sizes) == 4 and sizes[3] > sizes[1] > 0, sizes
    print(sizes)  # planes 1-3 went to disk as they were done
    assert _files(tmp_path) == {"in.tif", "tiny.pt"}


def test_axes_override_and_bad_axes(tiny_model_file, imagej_stack, tmp_path, capsys):
    inp, _ = imagej_stack
    out = tmp_path / "out.tif"
    argv = ["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]
    assert main([*argv, "--axes", "YX"]) == 2
    assert "--axes" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--axes", "TYX"]) == 0
    assert tifffile.imread(out).shape == (3, 40, 48)


def test_axes_out_of_imagej_order_write_a_plain_tiff_that_keeps_them(tiny_model_file, tmp_path, capsys):
    """--axes that ImageJ cannot store (not in TZCYXS order) on an ImageJ input: said before the work, and the
    output is a plain TIFF recording those axes (tifffile refused to write it after all the deblurring)."""
    data = (np.arange(2 * 2 * 32 * 32) % 4000).astype(np.uint16).reshape(2, 2, 32, 32)
    inp, out = tmp_path / "ij.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, data, imagej=True, metadata={"axes": "TCYX"}, resolution=(10.0, 10.0))
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "--axes", "CTYX"]) == 0
    assert "TZCYXS order" in capsys.readouterr().err
    with tifffile.TiffFile(out) as tif:
        assert not tif.is_imagej and tif.series[0].axes == "CTYX" and tif.series[0].shape == data.shape
        assert tif.pages[0].resolution == pytest.approx((10.0, 10.0))


def test_a_min_is_white_tiff_stays_min_is_white(tiny_model_file, small_image, tmp_path):
    inp, out = tmp_path / "mw.tif", tmp_path / "mw_out.tif"
    tifffile.imwrite(inp, small_image, photometric="miniswhite")
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric.name == "MINISWHITE"  # else every viewer shows it inverted


def _lut(red: bool, green: bool, blue: bool) -> np.ndarray:
    """An ImageJ LUT (3 x 256 uint8): a ramp in the given colours."""
    return np.stack([np.arange(256, dtype=np.uint8) * on for on in (red, green, blue)]).astype(np.uint8)


def test_imagej_8bit_images_with_a_colour_lut_are_intensities_and_keep_their_lut(tiny_model_file, tmp_path):
    """ImageJ saves an 8-bit image with a non-grey LUT, and an 8-bit composite, as a palette TIFF whose values
    are intensities: both were refused as indexed colour. Deblurred, they keep the ColorMap (so Fiji shows the
    same LUT), the per-channel LUTs, display ranges and the composite mode; ``finetune`` reads them too."""
    from napari_deblurgan.cli.finetune_command import read_image

    rng = np.random.default_rng(3)
    green = tmp_path / "green.tif"
    image = (rng.random((48, 40)) * 200).astype(np.uint8)
    tifffile.imwrite(green, image, imagej=True, photometric="palette", colormap=_lut(0, 1, 0).astype(np.uint16) * 257)
    out = tmp_path / "green_out.tif"
    assert main(["deblur", str(green), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    expected = deblur_module.deblur(image, load_model(tiny_model_file), axes="YX", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.pages[0].photometric.name == "PALETTE"
        np.testing.assert_array_equal(tif.pages[0].colormap, _lut(0, 1, 0).astype(np.uint16) * 257)
    data, axes = read_image(green, None)
    np.testing.assert_array_equal(data, image)
    assert axes == "YX"

    # an 8-bit composite as Fiji writes it: palette (the first channel's LUT), LUTs per channel, composite
    stack = (rng.random((3, 2, 40, 40)) * 255).astype(np.uint8)
    comp = tmp_path / "composite.tif"
    luts = [_lut(0, 1, 0), _lut(1, 0, 1)]
    tifffile.imwrite(
        comp,
        stack,
        imagej=True,
        photometric="palette",
        colormap=luts[0].astype(np.uint16) * 257,
        metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "micron", "LUTs": luts, "Ranges": (0.0, 200.0, 10.0, 255.0)},
    )
    # tifffile cannot write mode=composite for a palette image; Fiji does
    description = tifffile.tiffcomment(comp).rstrip("\x00")
    description = description.replace("hyperstack=false", "hyperstack=true\nmode=composite")
    tifffile.tiffcomment(comp, description.encode())
    out = tmp_path / "composite_out.tif"
    assert main(["deblur", str(comp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZCYX" and tif.pages[0].photometric.name == "PALETTE"
        assert tif.pages[0].description.rstrip("\x00") == description
        meta = tif.imagej_metadata
        assert meta["mode"] == "composite" and meta["spacing"] == pytest.approx(0.3)
        assert meta["Ranges"] == (0.0, 200.0, 10.0, 255.0)
        for lut, kept in zip(luts, meta["LUTs"], strict=True):
            np.testing.assert_array_equal(lut, kept)


def test_a_palette_tiff_that_is_a_lut_is_deblurred_and_one_of_distinct_colours_is_refused(
    tiny_model_file, small_image, tmp_path, capsys
):
    image = (small_image % 256).astype(np.uint8)
    ramp = tmp_path / "ramp.tif"  # a plain (not ImageJ) palette that is a ramp: intensities with a LUT
    inverted = _lut(1, 1, 0)[:, ::-1].astype(np.uint16) * 257
    tifffile.imwrite(ramp, image, photometric="palette", colormap=inverted)
    out = tmp_path / "ramp_out.tif"
    assert main(["deblur", str(ramp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric.name == "PALETTE"
        np.testing.assert_array_equal(tif.pages[0].colormap, inverted)
    indexed = tmp_path / "indexed.tif"  # distinct colours: the values are colour-table indices
    colours = (np.random.default_rng(0).random((3, 256)) * 65535).astype(np.uint16)
    tifffile.imwrite(indexed, image, photometric="palette", colormap=colours)
    assert main(["deblur", str(indexed), "-o", str(tmp_path / "p_out.tif"), "--model", str(tiny_model_file)]) == 2
    assert "colour-table indices" in capsys.readouterr().err and not (tmp_path / "p_out.tif").exists()
    assert deblur_command.is_lut(_lut(1, 0, 0)) and not deblur_command.is_lut(np.zeros((3, 256)))


def test_colour_interpretation_is_kept_or_refused(tiny_model_file, tmp_path, capsys):
    """CMYK came back as RGB plus alpha (its black ink kept as 'alpha', not deblurred); an RGB image read with
    --axes YXC came back as a 3-sample grayscale TIFF. Colour spaces the output cannot keep are refused."""
    rng = np.random.default_rng(4)
    image = (rng.random((40, 40, 4)) * 255).astype(np.uint8)
    cmyk, out = tmp_path / "cmyk.tif", tmp_path / "cmyk_out.tif"
    tifffile.imwrite(cmyk, image, photometric="separated")
    assert main(["deblur", str(cmyk), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric.name == "SEPARATED" and tif.pages[0].extrasamples == ()
        result = tif.asarray()
    expected = deblur_module.deblur(image, load_model(tiny_model_file), axes="YXC", device="cpu")
    np.testing.assert_array_equal(result, expected)  # all four inks deblurred, black too

    rgb, out = tmp_path / "rgb.tif", tmp_path / "rgb_out.tif"
    tifffile.imwrite(rgb, image[..., :3], photometric="rgb")
    assert main(["deblur", str(rgb), "-o", str(out), "--model", str(tiny_model_file), "-q", "--axes", "YXC"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric.name == "RGB" and tif.series[0].axes == "YXS"

    rgba, out = tmp_path / "rgba.tif", tmp_path / "rgba_out.tif"
    tifffile.imwrite(rgba, image, photometric="rgb", extrasamples=["assocalpha"])
    assert main(["deblur", str(rgba), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].photometric.name == "RGB" and tif.pages[0].extrasamples == (1,)  # associated alpha

    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, image[..., :3], photometric="cielab")
    assert main(["deblur", str(lab), "-o", str(tmp_path / "lab_out.tif"), "--model", str(tiny_model_file)]) == 2
    assert "CIELAB" in capsys.readouterr().err and not (tmp_path / "lab_out.tif").exists()


def test_imagej_display_settings_labels_and_info_are_kept(tiny_model_file, tmp_path):
    """LUTs, composite mode, display ranges (per channel and min/max), slice labels, Info and Properties were
    dropped; --axes that change the channels drop only what is per channel."""
    data = (np.random.default_rng(5).random((2, 3, 2, 32, 32)) * 3000).astype(np.uint16)
    inp, out = tmp_path / "ij.tif", tmp_path / "ij_out.tif"
    luts = [_lut(0, 1, 0), _lut(1, 0, 1)]
    meta = {
        "axes": "TZCYX",
        "spacing": 0.5,
        "unit": "um",
        "finterval": 2.0,
        "mode": "composite",
        "min": 10.0,
        "max": 2000.0,
        "Ranges": (0.0, 1000.0, 5.0, 2000.0),
        "LUTs": luts,
        "Info": "objective 63x",
        "Labels": [f"plane {i}" for i in range(12)],
        "Properties": {"lab": "cells"},
    }
    tifffile.imwrite(inp, data, imagej=True, metadata=meta, resolution=(10.0, 10.0))
    # written by other software: a non-ASCII unit, which tifffile cannot write (it failed after the work)
    tifffile.tiffcomment(inp, tifffile.tiffcomment(inp).replace("unit=um", "unit=µm").encode())
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(inp) as a, tifffile.TiffFile(out) as b:
        assert b.pages[0].description == a.pages[0].description and "unit=µm" in a.pages[0].description
        kept, given = b.imagej_metadata, a.imagej_metadata
        for key in ("mode", "min", "max", "Ranges", "Info", "Labels", "Properties", "spacing", "finterval"):
            assert kept[key] == given[key], key
        for lut, lut_kept in zip(luts, kept["LUTs"], strict=True):
            np.testing.assert_array_equal(lut, lut_kept)
    other = tmp_path / "ij_other.tif"  # the channels read as Z: per-channel settings would be wrong
    tifffile.imwrite(inp, data.reshape(6, 2, 32, 32), imagej=True, metadata={**meta, "axes": "ZCYX"})
    assert main(["deblur", str(inp), "-o", str(other), "--model", str(tiny_model_file), "-q", "--axes", "TZYX"]) == 0
    with tifffile.TiffFile(other) as tif:
        kept = tif.imagej_metadata
        assert tif.series[0].axes == "TZYX" and "LUTs" not in kept and "Ranges" not in kept
        assert kept["Info"] == "objective 63x" and kept["Labels"] == meta["Labels"]


def test_ome_channel_names_image_name_and_description_are_kept(tiny_model_file, tmp_path):
    data = (np.random.default_rng(6).random((3, 2, 32, 32)) * 200).astype(np.uint8)
    inp, out = tmp_path / "in.ome.tif", tmp_path / "out.ome.tif"
    channel = {"Name": ["DAPI", "GFP"], "EmissionWavelength": [461.0, 510.0], "Color": [-16776961, 16711935]}
    meta = {
        "axes": "ZCYX",
        "PhysicalSizeX": 0.1,
        "PhysicalSizeZ": 0.5,
        "Name": "cells 1",
        "Description": "fixed, 4% PFA",
        "Channel": channel,
    }
    tifffile.imwrite(inp, data, ome=True, metadata=meta)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        xml = tif.ome_metadata
    assert '<Image ID="Image:0" Name="cells 1">' in xml and "<Description>fixed, 4% PFA</Description>" in xml
    assert re.findall(r'<Channel [^>]*Name="([^"]+)"', xml) == ["DAPI", "GFP"]
    assert re.findall(r'EmissionWavelength="([^"]+)"', xml) == ["461.0", "510.0"]
    assert 'PhysicalSizeZ="0.5"' in xml


def test_plain_tiff_description_software_datetime_and_shaped_keys_are_kept(tiny_model_file, small_image, tmp_path):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    description = "Acquired on scope 3; exposure=100ms; pixel 0.1 µm"  # not ASCII: tifffile failed on it
    tifffile.imwrite(
        inp,
        small_image,
        description=description.encode(),
        metadata=None,
        software="MicroscopeSoft 2.1",
        datetime="2024:05:06 07:08:09",
    )
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.description == description  # first: the one viewers show
        assert page.software == "MicroscopeSoft 2.1" and page.tags["DateTime"].value == "2024:05:06 07:08:09"
        assert tif.series[0].axes == "YX"

    # tifffile's own (JSON) metadata: its extra keys, e.g. the Z spacing, were dropped
    stack = np.stack([small_image, small_image[::-1]])
    shaped, out = tmp_path / "shaped.tif", tmp_path / "shaped_out.tif"
    tifffile.imwrite(shaped, stack, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "note": "hi"})
    assert main(["deblur", str(shaped), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.shaped_metadata[0] == {"shape": [2, 64, 64], "axes": "ZYX", "PhysicalSizeZ": 2.0, "note": "hi"}


def test_map_axes():
    assert deblur_command.map_axes("QYX") == "ZYX"
    assert deblur_command.map_axes("IYX") == "ZYX"
    assert deblur_command.map_axes("ZQYX") == "ZTYX"
    assert deblur_command.map_axes("TZCYX") == "TZCYX"
    with pytest.raises(InputError, match="--axes"):
        deblur_command.map_axes("TZQYX")
    assert deblur_command.map_axes("CYXS") == "ZYXS"  # RGB pages described as ImageJ channels
    assert deblur_command.map_axes("TCYXS") == "TZYXS"


def test_imagej_stack_of_rgb_pages(tiny_model_file, tmp_path):
    """``tifffile.imwrite(stack_of_rgb, imagej=True)`` describes the pages as channels (axes CYXS): it was
    refused ("has both 'C' and 'S'", naming an --axes flag that was not given); each RGB page is a plane now,
    deblurred as the same page of a ZYXS stack is, and the output keeps the input's layout."""
    rng = np.random.default_rng(5)
    stack = (rng.random((3, 48, 40, 3)) * 255).astype(np.uint8)
    inp, out = tmp_path / "rgb_stack.tif", tmp_path / "rgb_stack_out.tif"
    tifffile.imwrite(inp, stack, imagej=True, photometric="rgb")
    with tifffile.TiffFile(inp) as tif:
        assert tif.series[0].axes == "CYXS"  # the case: tifffile's reading of its own ImageJ RGB stack
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    as_z, out_z = tmp_path / "as_z.tif", tmp_path / "as_z_out.tif"
    tifffile.imwrite(as_z, stack, imagej=True, photometric="rgb", metadata={"axes": "ZYXS"})
    assert main(["deblur", str(as_z), "-o", str(out_z), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif, tifffile.TiffFile(inp) as before:
        assert tif.series[0].axes == "CYXS" and len(tif.pages) == len(before.pages) == 3
        assert tif.imagej_metadata["channels"] == 3 and tif.pages[0].photometric == before.pages[0].photometric
        np.testing.assert_array_equal(tif.asarray(), tifffile.imread(out_z))


# ----------------------------------------------------------------------------------- never overwrite input
@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink"])
def test_never_overwrites_input(tiny_model_file, small_image, tmp_path, capsys, how):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    before = inp.read_bytes()
    sub = tmp_path / "sub"
    sub.mkdir()
    if how == "same":
        out = inp
    elif how == "dotdot":
        out = sub / ".." / "in.tif"
    elif how == "symlink":
        out = sub / "link.tif"
        out.symlink_to(inp)
    else:
        out = sub / "hard.tif"
        os.link(inp, out)
    code = main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "--force", "-q"])
    assert code == 2
    assert "input" in capsys.readouterr().err
    assert inp.read_bytes() == before


def test_existing_output_needs_force(tiny_model_file, small_image, tmp_path, capsys):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, small_image)
    out.write_bytes(b"precious")
    argv = ["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main([*argv, "--force"]) == 0
    assert tifffile.imread(out).shape == small_image.shape


# ----------------------------------------------------------------------------------------------- exit codes
def test_exit_codes_for_user_errors(tiny_model_file, small_image, tmp_path, capsys):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"garbage")
    not_tiff = tmp_path / "not_tiff.tif"
    not_tiff.write_bytes(b"this is not a TIFF file" * 10)
    cases = [
        ["deblur", str(not_tiff), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_file)],
        ["deblur", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_file)],
        ["deblur", str(inp), "-o", str(tmp_path / "o.tif"), "--model", str(bad_model)],
        ["deblur", str(inp), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_file)],
        ["deblur", str(inp), "-o", str(tmp_path / "nodir" / "o.tif"), "--model", str(tiny_model_file)],
        ["deblur", str(inp)],  # argparse: -o is required
        ["info"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err, argv
    assert _files(tmp_path) == {"in.tif", "bad.pt", "tiny.pt", "not_tiff.tif"}


def test_compressed_truncated_and_multi_series_tiffs(tiny_model_file, small_image, tmp_path, capsys):
    """LZW (Fiji, microscope software) reads with imagecodecs; a truncated file is one clear error; a file
    with several series says that only the first is used instead of dropping pages silently."""
    lzw = tmp_path / "lzw.tif"
    tifffile.imwrite(lzw, small_image, compression="lzw")
    assert main(["deblur", str(lzw), "-o", str(tmp_path / "o1.tif"), "--model", str(tiny_model_file), "-q"]) == 0
    expected = deblur_module.deblur(small_image, load_model(tiny_model_file), axes="YX", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o1.tif"), expected)
    with tifffile.TiffFile(tmp_path / "o1.tif") as tif:
        assert tif.pages[0].compression.name == "LZW"  # kept (lossless), not written 3-4x larger
    jpeg = tmp_path / "jpeg.tif"
    tifffile.imwrite(jpeg, (small_image // 256).astype(np.uint8), compression="jpeg")
    assert main(["deblur", str(jpeg), "-o", str(tmp_path / "oj.tif"), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(tmp_path / "oj.tif") as tif:
        assert tif.pages[0].compression.name == "NONE"  # lossy compression is not repeated on the result

    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.stack([small_image] * 4), photometric="minisblack")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert main(["deblur", str(cut), "-o", str(tmp_path / "o2.tif"), "--model", str(tiny_model_file)]) == 2
    err = capsys.readouterr().err
    assert "Cannot read" in err and "Traceback" not in err and not (tmp_path / "o2.tif").exists()
    cut.write_bytes(whole.read_bytes()[:8])  # cut inside the first page's header: no page at all
    assert main(["deblur", str(cut), "-o", str(tmp_path / "o2.tif"), "--model", str(tiny_model_file)]) == 2
    err = capsys.readouterr().err
    assert "holds no image" in err and "Traceback" not in err

    several = tmp_path / "several.tif"
    with tifffile.TiffWriter(several) as writer:
        writer.write(small_image)
        writer.write(small_image[:40, :40])
    assert main(["deblur", str(several), "-o", str(tmp_path / "o3.tif"), "--model", str(tiny_model_file)]) == 0
    assert "holds 2 image series; only the first" in capsys.readouterr().err
    # -q hides progress, not what was left out of the file (as finetune's -q)
    argv = ["deblur", str(several), "-o", str(tmp_path / "o4.tif"), "--model", str(tiny_model_file), "-q"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "holds 2 image series; only the first" in err and "wrote" not in err
    assert "deblur [" not in err and "100%" not in err  # nor the progress bar


def test_an_unwritable_output_folder_is_said_before_the_work(
    tiny_model_file, small_image, tmp_path, capsys, monkeypatch
):
    from napari_deblurgan import atomic_files

    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    ran = []
    monkeypatch.setattr(deblur_module, "deblur", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(atomic_files.os, "access", lambda *a, **k: False)  # root writes anywhere: simulate
    assert main(["deblur", str(inp), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_file)]) == 2
    assert "no permission" in capsys.readouterr().err and not ran


def test_errors_name_the_flags_the_user_typed(small_image, tmp_path, capsys):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    assert main(["deblur", str(inp), "-o", str(tmp_path / "o.tif"), "--tile-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "--tile-size 100 is too small" in err and "use --tile-size >= " in err and "tile_size" not in err
    assert main(["deblur", str(inp), "-o", str(tmp_path / "o.tif"), "--tile-size", "512", "--overlap", "600"]) == 2
    err = capsys.readouterr().err
    assert "error: --overlap (600 px" in err and "smaller than --tile-size" in err  # one-word names too


def test_default_model_not_shipped_is_a_user_error(small_image, tmp_path, capsys, monkeypatch):
    from napari_deblurgan import model_file

    registry = tmp_path / "registry.json"
    registry.write_text('{"models": {}}')
    monkeypatch.setattr(model_file, "REGISTRY_PATH", registry)
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    assert main(["deblur", str(inp), "-o", str(tmp_path / "o.tif")]) == 2
    assert "not shipped" in capsys.readouterr().err


def test_unexpected_error_exits_1_with_traceback(tiny_model_file, small_image, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(deblur_module, "deblur", boom)
    assert main(["deblur", str(inp), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_file)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "boom" in err


def test_interrupt_while_writing_leaves_nothing(tiny_model_file, small_image, tmp_path, capsys, monkeypatch):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, small_image)
    real_imwrite = tifffile.imwrite

    def write_then_interrupt(fh, data, **kwargs):
        real_imwrite(fh, data[: len(data) // 2], **kwargs)  # half the file is on disk ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(tifffile, "imwrite", write_then_interrupt)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _files(tmp_path) == {"in.tif", "tiny.pt"}


@pytest.mark.parametrize(
    ("signame", "lazy"), [("SIGTERM", False), ("SIGTERM", True), ("SIGTERM", "zlib"), ("SIGHUP", False)]
)
def test_sigterm_and_sighup_stop_like_ctrl_c(
    tiny_model_file, imagej_stack, tmp_path, capsys, monkeypatch, signame, lazy
):
    """A cluster's time limit (SIGTERM) or a closed terminal (SIGHUP) killed the process outright: its hidden
    temporary file, as large as the output, stayed next to it, and nothing was said. Now the signal unwinds
    as Ctrl-C does: the temporary file is removed, stderr says so, and the exit status is 128 + the signal."""
    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")
    signum = getattr(signal, signame)
    inp, _ = imagej_stack
    out = tmp_path / "out.tif"
    if lazy:
        monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)
    if lazy == "zlib":  # compressed: read page by page, and the output streamed, compressed as the input
        with tifffile.TiffFile(inp) as tif:
            metadata = tif.imagej_metadata
        tifffile.imwrite(inp, tifffile.imread(inp), imagej=True, metadata=metadata, compression="zlib")
    parts = []

    def signal_once_written(path, info):  # the whole output is in the temporary file when the signal comes
        parts.append(path.stat().st_size)
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the handler raises here at the latest

    def unhandled(signum, frame):  # instead of the default, which would end the test session
        raise AssertionError(f"{signame} reached the caller's handler: the command did not handle it")

    monkeypatch.setattr(deblur_command, "restore_description", signal_once_written)
    before = signal.signal(signum, unhandled)
    try:
        status = main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"])
        assert signal.getsignal(signum) is unhandled  # the handler is the caller's again
    finally:
        signal.signal(signum, before)
    assert status == 128 + signum
    # the signal came with a full-size temporary file on disk (compressed: with all its pages)
    assert parts and parts[0] > (3 * 40 * 48 if lazy == "zlib" else 3 * 40 * 48 * 2)
    assert f"stopped by {signame}; no output was written" in capsys.readouterr().err
    assert _files(tmp_path) == {"stack.tif", "tiny.pt"}


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "deblur" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "napari-deblurgan" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------ info
def test_info_prints_metadata(tiny_model, tmp_path, capsys):
    tiny_model.metadata.update(name="tiny", description="a test model", training={"preset": "content"})
    path = tiny_model.save(tmp_path / "m.pt")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    sha = load_model(path).metadata["sha256"]
    for text in ("unet_lite", "tiny", "a test model", "independent", "GMAC per megapixel", "percentile", sha):
        assert text in out, text
    assert f"{sum(p.numel() for p in tiny_model.generator.parameters()):,}" in out
    radius = tiny_model.receptive_radius
    assert f"{2 * radius + 1} px (radius {radius})" in out
    assert "border context:" in out and "default (receptive radius" in out

    assert main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sha256"] == sha and summary["channels"] == 1
    assert summary["training"] == {"preset": "content"} and summary["macs_per_megapixel"] > 0
    assert summary["context_padding"] is None
    tiny_model.context_padding = 0
    assert main(["info", str(tiny_model.save(tmp_path / "zero.pt"))]) == 0
    assert "none (the generator's own zero padding)" in capsys.readouterr().out


def test_info_into_a_closed_pipe_exits_quietly(tiny_model_file, monkeypatch, capsys):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["info", str(tiny_model_file)]) == 141
    assert capsys.readouterr().err == ""  # no traceback, no "unexpected error"


def test_info_list(capsys):
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    assert "unet_lite" in out and "resnet9" in out and "shipped models" in out


def test_info_with_a_model_and_list_is_a_usage_error(capsys):
    assert main(["info", "default", "--list"]) == 2
    assert "either a model (default) or --list" in capsys.readouterr().err


def test_info_bad_file_is_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- progress bar
def test_progress_bar_logs_deciles_when_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar("deblur", stream=stream)
    for i in range(1, 101):
        bar(i, 100)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first update, then one line per 10 %
    assert "  1% 1/100" in lines[0]
    assert lines[-1].startswith("deblur [" + "#" * 30 + "] 100% 100/100")


def test_progress_bar_disabled():
    stream = io.StringIO()
    bar = ProgressBar(stream=stream, enabled=False)
    bar(1, 2)
    bar.close()
    assert stream.getvalue() == ""


def test_percentiles_flag_reaches_the_normalisation(tiny_model_file, small_image, tmp_path):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, small_image)
    argv = ["deblur", str(inp), "--model", str(tiny_model_file), "-q"]
    default = deblur_module.deblur(small_image, load_model(tiny_model_file), device="cpu")
    assert main([*argv, "-o", str(tmp_path / "a.tif"), "--percentiles", "0", "90"]) == 0
    expected = deblur_module.deblur(small_image, load_model(tiny_model_file), device="cpu", percentiles=(0, 90))
    assert not np.array_equal(expected, default)  # the flag's setting changes the output: the check can fail
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), expected)
    assert main([*argv, "-o", str(tmp_path / "b.tif"), "--percentiles", "90", "10"]) == 2
    # local normalisation scales 128 px blocks: a 256 px image whose right half is dimmer, so that it matters
    uneven = np.tile(small_image, (4, 4))
    uneven[:, 128:] //= 4
    tifffile.imwrite(inp, uneven)
    assert main([*argv, "-o", str(tmp_path / "c.tif"), "--normalize", "local"]) == 0
    expected = deblur_module.deblur(uneven, load_model(tiny_model_file), device="cpu", normalize="local")
    assert not np.array_equal(expected, deblur_module.deblur(uneven, load_model(tiny_model_file), device="cpu"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c.tif"), expected)


def test_with_flags_leaves_prose_alone():
    from napari_deblurgan.cli import with_flags

    flags = {"resume": "--resume", "overlap": "--overlap", "tile_size": "--tile-size", "model": "--model"}
    assert with_flags("this run was started without a teacher; resume it without one.", flags).endswith(
        "; resume it without one."
    )
    assert with_flags("overlap (9 px) must be smaller than tile_size (8 px)", flags) == (
        "--overlap (9 px) must be smaller than --tile-size (8 px)"
    )
    assert with_flags("model must be a DeblurModel; the seamless overlap is 5 px", flags) == (
        "--model must be a DeblurModel; the seamless overlap is 5 px"
    )


def test_an_unspecified_extra_sample_is_said_to_be_kept_and_how_to_deblur_it(tiny_model_file, tmp_path, capsys):
    """A 4th RGB sample marked 'unspecified' is data, not opacity; deblur() keeps a 4th sample as alpha, so the
    note says so and names the --axes that deblur it (which it then does, keeping RGB + the extra sample)."""
    rgbx = np.random.default_rng(0).integers(0, 255, (48, 40, 4)).astype(np.uint8)
    inp = tmp_path / "rgbx.tif"
    tifffile.imwrite(inp, rgbx, photometric="rgb", extrasamples=["unspecified"])
    assert main(["deblur", str(inp), "-o", str(tmp_path / "a.tif"), "--model", str(tiny_model_file), "-q"]) == 0
    err = capsys.readouterr().err
    assert "extra sample is unspecified data, not alpha" in err and "--axes YXC" in err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif")[..., 3], rgbx[..., 3])
    argv = ["deblur", str(inp), "-o", str(tmp_path / "b.tif"), "--model", str(tiny_model_file), "-q", "--axes", "YXC"]
    assert main(argv) == 0
    assert "extra sample" not in capsys.readouterr().err
    assert not np.array_equal(tifffile.imread(tmp_path / "b.tif")[..., 3], rgbx[..., 3])
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.pages[0].photometric.name == "RGB" and [int(e) for e in tif.pages[0].extrasamples] == [0]


def test_python_calls_quoted_in_messages_stay_code():
    """with_flags writes the API's keywords as flags, but not inside a quoted call: a path with a parenthesis,
    a dotted module path and several calls in one message are code to paste."""
    from napari_deblurgan.cli import with_flags

    flags = {"resume": "--resume", "steps": "--steps", "tile_size": "--tile-size"}
    call = "napari_deblurgan.finetune(blurred, sharp, resume='/data/run(1/ck.pt', steps=5)"
    assert with_flags(f"x: {call}; leave steps unset", flags) == f"x: {call}; leave --steps unset"
    dotted = "napari_deblurgan.inference.deblur(img, tile_size=512)"
    assert with_flags(f"use {dotted} or tile_size=512", flags) == f"use {dotted} or --tile-size 512"
    two = "ndg.deblur(x, tile_size=3) then ndg.finetune(y, steps=2)"
    assert with_flags(two, flags) == two
    assert with_flags("mndg.finetune(a, steps=5)", flags) == "mndg.finetune(a, --steps 5)"  # not the API


def _ome_planes(xml: str) -> dict[tuple[int, int, int], dict[str, str]]:
    planes = {}
    for attributes in re.findall(r"<Plane ([^>]*?)/?>", xml):
        items = dict(re.findall(r'(\w+)="([^"]*)"', attributes))
        planes[tuple(int(items.pop(f"The{a}")) for a in "CZT")] = items
    return planes


@pytest.mark.parametrize("lazy", [False, True], ids=["in-memory", "memory-mapped"])
def test_ome_plane_times_exposures_and_positions_are_kept(tiny_model_file, tmp_path, monkeypatch, lazy):
    # A time-lapse's per-plane DeltaT and stage positions are what tracking and drift correction read.
    data = (np.random.default_rng(7).random((3, 2, 32, 32)) * 200).astype(np.uint8)
    inp, out = tmp_path / "in.ome.tif", tmp_path / "out.ome.tif"
    plane = {
        "DeltaT": [0.5 * i for i in range(6)],
        "DeltaTUnit": ["s"] * 6,
        "ExposureTime": [10.0 + i for i in range(6)],
        "PositionZ": [1.25 * i for i in range(6)],
        "PositionZUnit": ["µm"] * 6,
    }
    tifffile.imwrite(inp, data, ome=True, metadata={"axes": "TCYX", "Plane": plane})
    with tifffile.TiffFile(inp) as tif:
        written = _ome_planes(tif.ome_metadata)
    assert len(written) == 6 and written[(1, 0, 2)]["PositionZUnit"] == "µm"
    if lazy:
        monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].axes == "TCYX" and tif.series[0].shape == data.shape
        assert _ome_planes(tif.ome_metadata) == written
        np.testing.assert_array_equal(tif.series[0].asarray().shape, data.shape)


def test_ome_planes_are_dropped_when_axes_rename_the_dimensions(tiny_model_file, tmp_path, capsys):
    data = (np.random.default_rng(8).random((3, 32, 32)) * 200).astype(np.uint8)
    inp, out = tmp_path / "in.ome.tif", tmp_path / "out.ome.tif"
    tifffile.imwrite(inp, data, ome=True, metadata={"axes": "TYX", "Plane": {"DeltaT": [0.0, 1.0, 2.0]}})
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "--axes", "ZYX", "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert "DeltaT" not in tif.ome_metadata  # plane 2 of T is not plane 2 of Z
    assert "the input's per-plane OME metadata (DeltaT" in capsys.readouterr().err  # said, not silently dropped


@pytest.mark.parametrize("flavour", ["imagej", "ome"])
def test_metadata_that_cannot_be_written_back_is_said_in_a_note(
    tiny_model_file, tmp_path, monkeypatch, capsys, flavour
):
    """The ImageJ description and the OME Plane attributes are written back into the output after tifffile wrote
    it; where that failed (a classic TIFF past 4 GiB, an unwritable description), they were dropped silently."""
    data = (np.random.default_rng(9).random((3, 32, 32)) * 200).astype(np.uint8)
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    if flavour == "imagej":
        tifffile.imwrite(inp, data, imagej=True, metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
        # written by other software: a non-ASCII unit, which tifffile cannot write: the description is put back
        tifffile.tiffcomment(inp, tifffile.tiffcomment(inp).replace("unit=um", "unit=µm").encode())
    else:
        tifffile.imwrite(inp, data, ome=True, metadata={"axes": "TYX", "Plane": {"DeltaT": [0.0, 1.0, 2.0]}})
    real = tifffile.tiffcomment

    def unwritable(path, comment=None, **kwargs):
        if comment is not None:
            raise ValueError("description too large to rewrite")
        return real(path, **kwargs)

    monkeypatch.setattr(tifffile, "tiffcomment", unwritable)
    if flavour == "imagej":
        # tifffile's own description differs from the input's (it leaves out what it does not know)
        monkeypatch.setattr(deblur_command, "restore_planes", lambda path, info: None)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 0
    err = capsys.readouterr().err
    expected = "ImageJ description, not the input's" if flavour == "imagej" else "per-plane OME metadata"
    assert expected in err and "description too large to rewrite" in err


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "napari_deblurgan.cli", "info", "--list"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "unet_fast" in done.stdout


@pytest.mark.parametrize(
    ("shape", "planarconfig"),
    [((2, 40, 48, 2), "contig"), ((2, 2, 40, 48), "separate"), ((2, 40, 48), "separate")],
    ids=["QYXS", "QSYX", "SYX"],
)
def test_grey_images_with_several_samples_keep_their_pages_lazily_and_in_memory(
    tiny_model_file, tmp_path, monkeypatch, shape, planarconfig
):
    """A compressed MINISBLACK image with 2 samples per pixel, contiguous (YXS pages) or planar (SYX pages): both
    paths write the input's pages (not one page per row or per sample, as tifffile does when not told the
    planar configuration), and the lazy path's stream, cut into pages of the output, gives the same pixels."""
    data = (np.random.default_rng(9).random(shape) * 4000).astype(np.uint16)
    inp = tmp_path / "in.tif"
    tifffile.imwrite(
        inp, data, photometric="minisblack", planarconfig=planarconfig, extrasamples=["unassalpha"], compression="zlib"
    )
    monkeypatch.setenv("TIFFFILE_NUM_THREADS", "1")
    argv = ["--model", str(tiny_model_file), "-q"]
    assert main(["deblur", str(inp), "-o", str(tmp_path / "eager.tif"), *argv]) == 0
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 100)
    assert main(["deblur", str(inp), "-o", str(tmp_path / "lazy.tif"), *argv]) == 0
    with tifffile.TiffFile(inp) as tif:
        pages = [(p.shape, p.planarconfig, p.extrasamples, p.compression) for p in tif.pages]
    for name in ("eager.tif", "lazy.tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert [(p.shape, p.planarconfig, p.extrasamples, p.compression) for p in tif.pages] == pages, name
            assert tif.series[0].shape == data.shape
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "lazy.tif"), tifffile.imread(tmp_path / "eager.tif"))


def test_the_lazy_stream_is_cut_into_the_pages_tifffile_writes(tiny_model_file, tmp_path, monkeypatch):
    """Where the output's pages are not the input's (here: write keywords without the planar configuration,
    so tifffile writes every row of a YXS page as a page of its own), the lazy path still writes what the
    in-memory path writes, not a crash after the first page."""
    data = (np.random.default_rng(10).random((2, 40, 48, 2)) * 4000).astype(np.uint16)
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, data, photometric="minisblack", planarconfig="contig", compression="zlib")
    real = deblur_command.write_kwargs
    monkeypatch.setattr(
        deblur_command,
        "write_kwargs",
        lambda info: {k: v for k, v in real(info).items() if k not in ("planarconfig", "extrasamples")},
    )
    argv = ["--model", str(tiny_model_file), "-q"]
    assert main(["deblur", str(inp), "-o", str(tmp_path / "eager.tif"), *argv]) == 0
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 100)
    assert main(["deblur", str(inp), "-o", str(tmp_path / "lazy.tif"), *argv]) == 0
    with tifffile.TiffFile(tmp_path / "eager.tif") as e, tifffile.TiffFile(tmp_path / "lazy.tif") as z:
        assert len(z.pages) == len(e.pages) == 80  # 2 x 40 rows of 48 x 2
        np.testing.assert_array_equal(z.series[0].asarray(), e.series[0].asarray())


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's memory maps (Linux)")
@pytest.mark.parametrize(
    ("channels", "axes", "compression"),
    [(1, "ZYX", None), (2, "CZYX", "zlib")],
    ids=["memory-mapped-output", "scratch-map"],
)
def test_a_failed_lazy_run_unmaps_its_files_before_removing_them(
    make_tiny_model, tmp_path, monkeypatch, capsys, channels, axes, compression
):
    """An error in a later plane: the temporary output (mapped, for an uncompressed output) and the scratch map
    (a joint model's CZYX compressed output) are no longer mapped when they are deleted (Windows refuses to
    delete a mapped file, and the run would leave a file the size of the output behind)."""
    import pathlib

    model = tmp_path / "m.pt"
    make_tiny_model(channels=channels).save(model)
    shape = (2, 4, 48, 48)[4 - len(axes) :]
    data = np.random.default_rng(11).random(shape).astype(np.float32)
    data[(slice(None),) * (len(shape) - 3) + (2, 5, 5)] = np.nan  # in the 3rd plane: after the first are written
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, data, ome=True, metadata={"axes": axes}, compression=compression)

    def mapped(path) -> bool:
        with open("/proc/self/maps") as maps:
            return os.path.basename(str(path)) in maps.read()

    deleted = []
    real_unlink, real_path_unlink = os.unlink, pathlib.Path.unlink

    def unlink(path, *args, **kwargs):
        deleted.append((os.path.basename(str(path)), mapped(path)))
        return real_unlink(path, *args, **kwargs)

    def path_unlink(self, *args, **kwargs):
        deleted.append((self.name, mapped(self)))
        return real_path_unlink(self, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(pathlib.Path, "unlink", path_unlink)
    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 0)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(model), "-q"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert len({name for name, _ in deleted if name.endswith(".part")}) == (2 if compression else 1), deleted
    assert not any(is_mapped for _, is_mapped in deleted), deleted
    assert _files(tmp_path) == {"in.tif", "m.pt"}


def test_inputs_that_cannot_be_deblurred_get_one_error_in_the_commands_words_and_no_notes(
    tiny_model_file, tmp_path, capsys
):
    """A plane too small to deblur, or a dtype that is no image, is one error naming --axes (not the API's "axes
    argument" or its Python advice), said before any note about the output that would have been written."""
    from PIL import Image

    model = ["--model", str(tiny_model_file)]
    row = tmp_path / "row.png"
    Image.fromarray(np.zeros((1, 128), np.uint8)).save(row)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((4, 64, 64), np.uint16), imagej=True)
    flags = tmp_path / "flags.tif"
    tifffile.imwrite(flags, np.zeros((64, 64), bool))
    cases = [
        ([str(row), "-o", str(tmp_path / "row.jpg")], "is 1x128 pixels", "check --axes"),
        ([str(stack), "-o", str(tmp_path / "s.tif"), "--axes", "YXZ"], "is 4x64 pixels", "check --axes"),
        ([str(flags), "-o", str(tmp_path / "f.tif")], "dtype bool cannot be deblurred", "Fiji's Image > Type"),
    ]
    for argv, error, advice in cases:
        assert main(["deblur", *argv, *model]) == 2
        err = capsys.readouterr().err
        assert error in err and advice in err, err
        assert "note:" not in err and "axes argument" not in err and "astype" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert _files(tmp_path) == {"row.png", "stack.tif", "flags.tif", "tiny.pt"}  # nothing written


def test_what_tifffile_logs_of_a_damaged_file_is_part_of_the_one_error(tiny_model_file, tmp_path, capsys):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00garbage")  # a TIFF header, then junk
    argv = [["deblur", str(garbage), "-o", str(tmp_path / "out.tif"), "--model", str(tiny_model_file)]]
    argv.append(["finetune", "--sharp", str(garbage), "-o", str(tmp_path / "out.pt"), "--steps", "1"])
    for args in argv:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err  # tifffile's own line came first, raw
        assert "holds no image" in err and "(tifffile: invalid offset to first page" in err, err
        assert "<tifffile." not in err


def test_what_tifffile_logs_of_a_file_that_opens_is_said_as_notes(capsys):
    import logging

    with deblur_command.tifffile_log_in_errors():
        logging.getLogger("tifffile").warning("<tifffile.TiffPage 3 @8> something odd in a tag")
        logging.getLogger("tifffile").warning("<tifffile.TiffPage 4 @9> something odd in a tag")
    assert capsys.readouterr().err == "note: tifffile: something odd in a tag\n"  # once
    with (
        pytest.raises(InputError, match=r"^nothing here \(tifffile: a reason\)$"),
        deblur_command.tifffile_log_in_errors(),
    ):
        logging.getLogger("tifffile").warning("a reason")
        raise InputError("nothing here")
    with pytest.raises(KeyError), deblur_command.tifffile_log_in_errors():
        logging.getLogger("tifffile").warning("<tifffile.TiffTag 270 @10> invalid value offset")
        raise KeyError(270)  # tifffile's own error on a damaged file: its diagnosis is still said
    assert capsys.readouterr().err == "note: tifffile: invalid value offset\n"
    assert not logging.getLogger("tifffile").handlers  # put back as it was


def test_an_imagej_description_with_a_key_of_other_than_ascii_is_written_back(tiny_model_file, tmp_path, capsys):
    """tifffile writes an ImageJ description as ASCII only: a key with other characters in it (a damaged
    description, say) made the write fail after the work, as an 'unexpected error'. Such keys are left to the
    input's own description, which is put back as it was (values of other than ASCII already were)."""
    inp, out = tmp_path / "odd.tif", tmp_path / "out.tif"
    stack = (np.random.default_rng(0).random((2, 64, 64)) * 1000).astype(np.uint16)
    tifffile.imwrite(inp, stack, imagej=True, metadata={"axes": "ZYX", "unit": "micron"}, resolution=(5.0, 5.0))
    with tifffile.TiffFile(inp) as tif:
        description = tif.pages[0].description.rstrip("\n") + "\nhypersta\u00b3k=true\nunit\u00b3=\u00b5m"
    tifffile.tiffcomment(inp, description.encode("utf-8"))
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file)]) == 0, capsys.readouterr().err
    with tifffile.TiffFile(out) as tif:
        written = tif.pages[0].description
        assert tif.series[0].shape == stack.shape and tif.series[0].axes == "ZYX"
    assert written == description  # the input's, as it was


def test_a_quoted_tilde_in_a_path_is_the_home_folder(tiny_model, small_image, tmp_path, monkeypatch, capsys):
    """The shell expands ~ but not '~' in quotes (nor a script's argument list): the CLI does it too."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    tiny_model.save(home / "m.pt")
    tifffile.imwrite(home / "in.tif", small_image)
    assert main(["info", "~/m.pt"]) == 0
    assert main(["deblur", "~/in.tif", "-o", "~/out.tif", "--model", "~/m.pt", "-q"]) == 0
    assert tifffile.imread(home / "out.tif").shape == small_image.shape
    assert not list(work.iterdir())

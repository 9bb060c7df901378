"""``napari-deblurgan deblur`` on photographs: PNG, JPEG and other still images in; PNG, JPEG or TIFF out by the
output's extension, with bit depth, alpha, EXIF orientation, ICC profile and resolution kept; the same checks,
exit codes and atomic writes as the TIFF path (tests/test_cli.py)."""

from __future__ import annotations

import contextlib
import io
import struct

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from napari_deblurgan.cli import main, photo_files
from napari_deblurgan.inference.deblur import deblur
from napari_deblurgan.model_file import load_model


@pytest.fixture(scope="module")
def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    """A photo-like image: smooth shapes, edges and noise, full range of ``dtype``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.2 * ((xx // 10 + yy // 10) % 2)
    if len(shape) == 3:
        base = base[..., None] * np.linspace(0.6, 1.0, shape[2])
    top = np.iinfo(dtype).max
    return np.clip((base + rng.normal(0, 0.03, shape)) * 0.8 * top, 0, top).astype(dtype)


def _expected(image, model_file, axes) -> np.ndarray:
    return deblur(image, load_model(model_file), axes=axes, device="cpu")


def _run(inp, out, model_file, *extra) -> int:
    return main(["deblur", str(inp), "-o", str(out), "--model", str(model_file), *extra])


def _png_bit_depth(path) -> int:
    return path.read_bytes()[24]


# ----------------------------------------------------------------------------------------------- reading
def test_png_8bit_rgb_in_png_out(tiny_model_file, tmp_path, capsys):
    """The report: a photo was 'not a TIFF file'. An 8-bit RGB PNG is deblurred as RGB and written 8-bit."""
    image = _photo((40, 48, 3))
    inp, out = tmp_path / "photo.png", tmp_path / "sharp.png"
    Image.fromarray(image).save(inp)
    assert _run(inp, out, tiny_model_file) == 0
    err = capsys.readouterr().err
    assert "100%" in err and "wrote" in err and "YXS" in err
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.format == "PNG"
        result = np.asarray(im)
    assert _png_bit_depth(out) == 8
    np.testing.assert_array_equal(result, _expected(image, tiny_model_file, "YXS"))
    assert not np.array_equal(result, image)
    assert {p.name for p in tmp_path.iterdir()} == {"photo.png", "sharp.png", "tiny.pt"}  # no temp file left


def test_png_16bit_grey_stays_16bit(tiny_model_file, tmp_path):
    image = _photo((40, 44), np.uint16)
    inp, out = tmp_path / "grey16.png", tmp_path / "out.png"
    Image.fromarray(image).save(inp)
    assert _png_bit_depth(inp) == 16
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert _png_bit_depth(out) == 16
    with Image.open(out) as im:
        result = np.asarray(im)
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, _expected(image, tiny_model_file, "YX"))


def test_png_16bit_colour_keeps_16_bits_and_alpha(tiny_model_file, tmp_path):
    """Pillow reads a 16-bit RGB(A) PNG as 8-bit: read (and written) through imagecodecs instead."""
    import imagecodecs

    image = _photo((36, 40, 4), np.uint16)
    image[..., 3] = np.linspace(0, 65535, 40, dtype=np.uint16)  # opacity ramp
    inp, out = tmp_path / "rgba16.png", tmp_path / "out.png"
    inp.write_bytes(imagecodecs.png_encode(image))
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert _png_bit_depth(out) == 16
    result = imagecodecs.png_decode(out.read_bytes())
    assert result.dtype == np.uint16 and result.shape == image.shape
    np.testing.assert_array_equal(result[..., 3], image[..., 3])  # alpha kept as it is
    np.testing.assert_array_equal(result, _expected(image, tiny_model_file, "YXS"))


def test_rgba_and_grey_alpha_keep_their_alpha(tiny_model_file, tmp_path):
    """Alpha is opacity, not an image: kept as it is (deblur() keeps RGBA's; grey + alpha is split here)."""
    rgba = _photo((40, 40, 4))
    rgba[..., 3] = np.where(np.arange(40) < 20, 0, 255).astype(np.uint8)[None, :]
    inp, out = tmp_path / "rgba.png", tmp_path / "rgba_out.png"
    Image.fromarray(rgba).save(inp)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        result = np.asarray(im)
    np.testing.assert_array_equal(result[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(result, _expected(rgba, tiny_model_file, "YXS"))

    grey_alpha = np.stack((_photo((40, 40)), rgba[..., 3]), axis=-1)
    inp, out = tmp_path / "la.png", tmp_path / "la_out.png"
    Image.fromarray(grey_alpha).save(inp)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    with Image.open(out) as im:
        assert im.mode == "LA"
        result = np.asarray(im)
    np.testing.assert_array_equal(result[..., 1], grey_alpha[..., 1])  # without the split: deblurred as a channel
    np.testing.assert_array_equal(result[..., 0], _expected(grey_alpha[..., 0], tiny_model_file, "YX"))


def test_jpeg_in_png_out(tiny_model_file, tmp_path):
    image = _photo((48, 40, 3))
    inp, out = tmp_path / "photo.jpg", tmp_path / "photo-sharp.png"
    Image.fromarray(image).save(inp, quality=90)
    with Image.open(inp) as im:
        decoded = np.asarray(im)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), _expected(decoded, tiny_model_file, "YXS"))


def test_a_photo_is_read_by_its_content_not_its_name(tiny_model_file, tmp_path):
    """A PNG named .tif is a PNG (and its output may be a TIFF: -o decides the format)."""
    image = _photo((32, 32))
    inp, out = tmp_path / "misnamed.tif", tmp_path / "out.tif"
    Image.fromarray(image).save(inp, format="PNG")
    assert _run(inp, out, tiny_model_file, "-q") == 0
    np.testing.assert_array_equal(tifffile.imread(out), _expected(image, tiny_model_file, "YX"))


# ------------------------------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_as_viewers_do(orientation):
    """orient() (used for every input, 16-bit PNGs too) does what Pillow's exif_transpose does."""
    image = _photo((6, 9, 3))
    exif = Image.Exif()
    exif[photo_files.ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", exif=exif.tobytes())
    with Image.open(buf) as im:
        viewed = np.asarray(ImageOps.exif_transpose(im))
    turned = image if orientation == 1 else photo_files.orient(image, orientation)
    np.testing.assert_array_equal(turned, viewed)


def test_jpeg_exif_orientation_is_written_upright(tiny_model_file, tmp_path, capsys):
    """A phone photo stored sideways (Orientation 6): the output is upright, as viewers showed the input, with
    the tag removed (a viewer that ignores it shows the output right too) and the rest of the EXIF kept."""
    stored = _photo((32, 48, 3))
    exif = Image.Exif()
    exif[photo_files.ORIENTATION_TAG] = 6
    exif[0x010F] = "PhoneMaker"  # Make
    inp, out, out_jpg = tmp_path / "phone.jpg", tmp_path / "phone.png", tmp_path / "phone-sharp.jpg"
    Image.fromarray(stored).save(inp, quality=95, exif=exif.tobytes())
    with Image.open(inp) as im:
        upright = np.asarray(ImageOps.exif_transpose(im))
    assert upright.shape == (48, 32, 3)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert "Orientation 6" in capsys.readouterr().err  # -q keeps notes
    with Image.open(out) as im:
        result = np.asarray(im)
        written = im.getexif()
    np.testing.assert_array_equal(result, _expected(upright, tiny_model_file, "YXS"))
    assert photo_files.ORIENTATION_TAG not in written and written[0x010F] == "PhoneMaker"
    assert _run(inp, out_jpg, tiny_model_file, "-q") == 0
    with Image.open(out_jpg) as im:
        assert im.size == (32, 48)  # width x height: upright
        assert photo_files.ORIENTATION_TAG not in im.getexif() and im.getexif()[0x010F] == "PhoneMaker"
    capsys.readouterr()
    assert _run(inp, tmp_path / "phone.tif", tiny_model_file, "-q") == 0  # a TIFF output holds no EXIF: said
    assert "not written to phone.tif: phone.jpg's EXIF (camera, exposure, date; write .png or .jpg to keep it)" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------------- colour profile, dpi
@pytest.mark.parametrize(
    ("src", "dst"), [("png", "png"), ("jpg", "jpg"), ("jpg", "png"), ("png", "jpg"), ("png", "tif")]
)
def test_icc_profile_and_resolution_are_kept(tiny_model_file, tmp_path, srgb_profile, src, dst):
    """Without its ICC profile a photo's colours shift in colour-managed viewers."""
    image = _photo((32, 32, 3))
    inp, out = tmp_path / f"in.{src}", tmp_path / f"out.{dst}"
    Image.fromarray(image).save(inp, icc_profile=srgb_profile, dpi=(300, 300))
    assert _run(inp, out, tiny_model_file, "-q") == 0
    if dst == "tif":
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            assert page.iccprofile == srgb_profile
            assert page.photometric.name == "RGB" and page.compression.name == "ADOBE_DEFLATE"  # lossless
            assert page.resolution == pytest.approx((300, 300)) and page.resolutionunit.name == "INCH"
        return
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == srgb_profile
        assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_a_16bit_colour_png_keeps_its_profile(tiny_model_file, tmp_path, srgb_profile):
    """The imagecodecs-written PNG (16-bit colour) carries the profile in its own iCCP chunk."""
    import imagecodecs

    image = _photo((24, 24, 3), np.uint16)
    inp, out = tmp_path / "rgb16.png", tmp_path / "out.png"
    inp.write_bytes(
        photo_files._with_chunks(
            bytes(imagecodecs.png_encode(image)),
            [(b"iCCP", b"ICC Profile\x00\x00" + __import__("zlib").compress(srgb_profile))],
        )
    )
    with Image.open(inp) as im:
        assert im.info["icc_profile"] == srgb_profile  # the test's input is a valid PNG with a profile
    assert _run(inp, out, tiny_model_file, "-q") == 0
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == srgb_profile
    assert imagecodecs.png_decode(out.read_bytes()).dtype == np.uint16


# ----------------------------------------------------------------------------------------- JPEG output
def test_jpeg_output_is_allowed_with_a_note_and_refused_where_it_cannot_hold_the_image(
    tiny_model_file, tmp_path, capsys
):
    image = _photo((40, 40, 3))
    inp, out = tmp_path / "photo.png", tmp_path / "photo-sharp.jpeg"
    Image.fromarray(image).save(inp)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    err = capsys.readouterr().err
    assert err.count("note: JPEG is lossy") == 1 and "quality 95" in err
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        result = np.asarray(im)
    reference = io.BytesIO()  # the deblurred pixels at quality 95 with full-resolution colour (4:4:4)
    Image.fromarray(_expected(image, tiny_model_file, "YXS")).save(reference, "JPEG", quality=95, subsampling=0)
    with Image.open(reference) as im:
        np.testing.assert_array_equal(result, np.asarray(im))

    for name, array in [("rgba.png", _photo((40, 40, 4))), ("grey16.png", _photo((40, 40), np.uint16))]:
        Image.fromarray(array).save(tmp_path / name)
        assert _run(tmp_path / name, tmp_path / "o.jpg", tiny_model_file) == 2
        err = capsys.readouterr().err
        assert "write .png or .tif" in err and "100%" not in err  # said before the work
        assert not (tmp_path / "o.jpg").exists()


# ------------------------------------------------------------------------------------------ refusals
def test_output_extensions_and_tiff_inputs(tiny_model_file, small_image, tmp_path, capsys):
    inp = tmp_path / "photo.png"
    Image.fromarray(_photo((32, 32))).save(inp)
    assert _run(inp, tmp_path / "o.webp", tiny_model_file) == 2
    err = capsys.readouterr().err
    assert ".tif or .tiff" in err and ".png, .jpg or .jpeg" in err
    tif = tmp_path / "in.tif"  # a TIFF keeps axes, pixel sizes and metadata only as TIFF
    tifffile.imwrite(tif, small_image)
    assert _run(tif, tmp_path / "o.png", tiny_model_file) == 2
    assert "a TIFF input is written as TIFF" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {"photo.png", "in.tif", "tiny.pt"}


def test_what_is_no_image_names_the_accepted_formats(tiny_model_file, tmp_path, capsys):
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"this is neither a TIFF nor a photo" * 10)
    assert _run(junk, tmp_path / "o.png", tiny_model_file) == 2
    err = capsys.readouterr().err
    assert "neither a TIFF file nor an image" in err and "PNG, JPEG" in err and "Traceback" not in err

    truncated = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.fromarray(_photo((64, 64, 3))).save(buf, format="JPEG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _run(truncated, tmp_path / "o.png", tiny_model_file) == 2
    assert "Cannot read the pixels" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_palettes_and_colour_spaces_as_in_the_tiff_path(tiny_model_file, tmp_path, capsys):
    """A palette that is a ramp holds intensities: deblurred, written with its palette. (Distinct colours:
    test_colour_palettes_and_transparent_palettes_are_read_as_their_colours.)"""
    image = np.minimum(_photo((40, 40)) // 3, 63).astype(np.uint8)  # indices 0..63 of a 64-entry ramp
    ramp = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[:, None], 3, axis=1)
    inp, out, out_tif = tmp_path / "ramp.png", tmp_path / "ramp_out.png", tmp_path / "ramp_out.tif"
    im = Image.fromarray(image)
    im.putpalette(ramp.ravel().tobytes(), "RGB")
    im.save(inp)
    with Image.open(inp) as check:
        assert check.mode == "P"
    assert _run(inp, out, tiny_model_file, "-q") == 0
    expected = _expected(image, tiny_model_file, "YX")
    assert expected.max() > 63  # the deblurred indices overshoot the palette ...
    expected = np.minimum(expected, 63)  # ... and are kept within its 64 entries
    with Image.open(out) as written:
        assert written.mode == "P"
        np.testing.assert_array_equal(np.asarray(written), expected)
        np.testing.assert_array_equal(np.asarray(written.getpalette("RGB")).reshape(-1, 3)[:64], ramp)
    assert _run(inp, out_tif, tiny_model_file, "-q") == 0
    with tifffile.TiffFile(out_tif) as tif:
        assert tif.pages[0].photometric.name == "PALETTE"
        np.testing.assert_array_equal(tif.asarray(), expected)

    capsys.readouterr()

    cmyk = tmp_path / "cmyk.jpg"  # printers' JPEGs: as a colour space the TIFF path does not keep
    Image.fromarray(_photo((40, 40, 3))).convert("CMYK").save(cmyk)
    assert _run(cmyk, tmp_path / "o.png", tiny_model_file) == 2
    assert "error: cmyk.jpg stores its pixels as CMYK" in capsys.readouterr().err


def test_animations_are_refused_and_a_phones_extra_images_are_noted(tiny_model_file, tmp_path, capsys):
    frames = [Image.fromarray(_photo((32, 32, 3), seed=s)) for s in range(3)]
    for name in ("anim.gif", "anim.webp", "anim.png"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        assert _run(tmp_path / name, tmp_path / "o.tif", tiny_model_file) == 2, name
        err = capsys.readouterr().err
        assert "holds 3 frames" in err and "TIFF stack" in err, name
    mpo = tmp_path / "phone.jpg"  # MPO: the photo and, here, one more image (a phone's depth map, a preview)
    frames[0].save(mpo, format="MPO", save_all=True, append_images=frames[1:2])
    assert _run(mpo, tmp_path / "o.png", tiny_model_file, "-q") == 0
    assert "only the photo is used" in capsys.readouterr().err
    with Image.open(mpo) as im:
        first = np.asarray(im)
    with Image.open(tmp_path / "o.png") as im:
        np.testing.assert_array_equal(np.asarray(im), _expected(first, tiny_model_file, "YXS"))


# ------------------------------------------------------------------------------- the TIFF path's rules
def test_never_overwrites_input_force_and_atomic_writes(tiny_model_file, tmp_path, capsys, monkeypatch):
    inp, out = tmp_path / "photo.png", tmp_path / "out.png"
    Image.fromarray(_photo((32, 32, 3))).save(inp)
    before = inp.read_bytes()
    assert _run(inp, inp, tiny_model_file, "--force") == 2
    assert "input" in capsys.readouterr().err and inp.read_bytes() == before
    out.write_bytes(b"precious")
    assert _run(inp, out, tiny_model_file) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"precious"

    real_write = photo_files.write_photo

    def write_then_interrupt(tmp, *args):
        real_write(tmp, *args)  # the file is on disk ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(photo_files, "write_photo", write_then_interrupt)
    assert _run(inp, out, tiny_model_file, "--force", "-q") == 130
    assert out.read_bytes() == b"precious"
    assert {p.name for p in tmp_path.iterdir()} == {"photo.png", "out.png", "tiny.pt"}


def test_black_and_white_images_and_axes(tiny_model_file, tmp_path, capsys):
    bw = _photo((32, 32)) > 100
    inp, out = tmp_path / "bw.png", tmp_path / "bw_out.png"
    Image.fromarray(bw).save(inp)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert "deblurred and written as 8-bit grey" in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), _expected(bw.astype(np.uint8) * 255, tiny_model_file, "YX"))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(_photo((32, 32, 3))).save(rgb)
    assert _run(rgb, tmp_path / "o.png", tiny_model_file, "--axes", "YX") == 2
    assert "--axes 'YX' has 2 letters but the image has 3 dimensions" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ review 2
def _keyed(image, key):
    """``image`` with the alpha a PNG tRNS colour key ``key`` stands for (0 where the pixel is the key)."""
    opaque = (image != np.asarray(key)).reshape(*image.shape[:2], -1).any(axis=-1)
    top = np.iinfo(image.dtype).max
    return np.dstack([image, (opaque * top).astype(image.dtype)])


@pytest.mark.parametrize("kind", ["rgb", "grey", "grey16"])
def test_a_png_transparent_colour_key_becomes_alpha(tiny_model_file, tmp_path, capsys, kind):
    """Review 2: a tRNS colour key (RGB, grey, 16-bit grey) was lost, and the image was accepted for JPEG
    although the same image as RGBA is refused. It is read as an alpha channel of the input's pixels."""
    if kind == "rgb":
        image = _photo((40, 48, 3))
        key = tuple(int(v) for v in image[3, 5])
    else:
        image = _photo((40, 48), np.uint16 if kind == "grey16" else np.uint8)
        key = int(image[3, 5])
    image[:4, :4] = key  # a transparent corner
    inp, out = tmp_path / "keyed.png", tmp_path / "out.png"
    Image.fromarray(image).save(inp, transparency=key)
    with Image.open(inp) as check:
        assert check.info["transparency"] == key
    keyed = _keyed(image, key)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert "transparent (PNG tRNS)" in capsys.readouterr().err
    result = np.asarray(imagecodecs.png_decode(out.read_bytes()))
    if kind == "rgb":
        expected = _expected(keyed, tiny_model_file, "YXS")
    else:
        expected = np.dstack([_expected(image, tiny_model_file, "YX"), keyed[..., 1]])
    np.testing.assert_array_equal(result, expected)
    assert (result[:4, :4, -1] == 0).all() and result[..., -1].dtype == image.dtype
    assert _run(inp, tmp_path / "out.jpg", tiny_model_file) == 2
    why = "16-bit samples" if kind == "grey16" else "an alpha channel"
    assert why in capsys.readouterr().err and not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize(
    "name", ["indexed.png", "indexed.gif", "transparent.gif", "greys.png", "ramp_trns.png", "alpha_entries.png"]
)
def test_colour_palettes_and_transparent_palettes_are_read_as_their_colours(tiny_model_file, tmp_path, capsys, name):
    """Review 2: colour palettes (every GIF, quantised PNGs) and grey palettes that are no ramp were refused;
    a ramp with transparency was deblurred as indices, its transparency then following the deblurred values.
    They are read as their colours without loss (grey or RGB, transparency as alpha) and written so."""
    rng = np.random.default_rng(1)
    indices = _photo((40, 44))
    if name.startswith(("greys", "ramp")):
        entries = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        if name.startswith("greys"):
            entries = entries[rng.permutation(256)]  # grey, but no ramp
    else:
        entries = (rng.random((256, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(indices)
    im.putpalette(entries.ravel().tobytes(), "RGB")
    opacity = np.full(256, 255, np.uint8)
    kw = {}
    if name in ("transparent.gif", "ramp_trns.png"):
        kw["transparency"] = int(indices[0, 0])
        opacity[int(indices[0, 0])] = 0
    elif name == "alpha_entries.png":
        opacity = rng.integers(0, 256, 256).astype(np.uint8)
        kw["transparency"] = opacity.tobytes()
    inp = tmp_path / name
    im.save(inp, **kw)
    with Image.open(inp) as check:
        assert check.mode == "P"
        stored = np.asarray(check)
        entries = np.asarray(check.getpalette("RGB")).reshape(-1, 3).astype(np.uint8)  # GIF: as stored
        if name == "transparent.gif":  # GIF's writer reorders the palette
            opacity = np.full(256, 255, np.uint8)
            opacity[check.info["transparency"]] = 0
    entries = np.concatenate([entries, np.zeros((256 - len(entries), 3), np.uint8)])
    colours = entries[stored]
    grey = name.startswith(("greys", "ramp"))
    image = colours[..., 0] if grey else colours
    out = tmp_path / "out.png"
    assert _run(inp, out, tiny_model_file, "-q") == 0
    err = capsys.readouterr().err
    result = np.asarray(imagecodecs.png_decode(out.read_bytes()))
    if kw:
        alpha = opacity[stored]
        if grey:
            expected = np.dstack([_expected(image, tiny_model_file, "YX"), alpha])
        else:
            expected = _expected(np.dstack([image, alpha]), tiny_model_file, "YXS")
        assert "written as " + ("grey + alpha" if grey else "RGBA") in err
    else:
        expected = _expected(image, tiny_model_file, "YX" if grey else "YXS")
        assert "written as " + ("grey" if grey else "RGB") + ", not with a palette" in err
    np.testing.assert_array_equal(result, expected)


def _jpeg_app1(path) -> bytes:
    """The payload of the first APP1 segment of a JPEG file."""
    data = path.read_bytes()
    at = data.index(b"\xff\xe1")
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    return data[at + 4 : at + 2 + length]


@pytest.mark.parametrize("order", [b"MM\x00*", b"II*\x00"])
def test_exif_without_its_prefix_is_written_as_jpeg_holds_it(tiny_model_file, tmp_path, order):
    """Review 2: WebP stores EXIF as the TIFF structure alone (libwebp; no ``Exif\\0\\0``); written as it is
    into a JPEG's APP1 it was malformed (readers found no EXIF)."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    tiff = exif.tobytes()[6:]
    if order == b"II*\x00":  # a little-endian one, by hand: one ASCII tag
        tiff = (
            b"II*\x00"
            + (8).to_bytes(4, "little")
            + (1).to_bytes(2, "little")
            + (0x010F).to_bytes(2, "little")
            + (2).to_bytes(2, "little")
            + (4).to_bytes(4, "little")
            + b"abc\x00"
            + bytes(4)
        )
    inp = tmp_path / "phone.webp"
    Image.fromarray(_photo((32, 40, 3))).save(inp, lossless=True, exif=tiff)
    with Image.open(inp) as check:
        assert check.info["exif"][:4] == order
    for out in (tmp_path / "o.jpg", tmp_path / "o.png"):
        assert _run(inp, out, tiny_model_file, "-q") == 0
        with Image.open(out) as written:
            assert written.getexif().get(0x010F) in ("PhoneMaker", "abc")
    app1 = _jpeg_app1(tmp_path / "o.jpg")
    assert app1.startswith(b"Exif\x00\x00" + order)


def test_exif_too_large_for_jpeg_is_left_out_with_a_note(tiny_model_file, tmp_path, capsys):
    """Review 2: EXIF over ~64 KB (a maker note, an embedded preview) failed the JPEG write after the whole
    deblur (Pillow: 'EXIF data is too long', exit 1). The JPEG is written without it, with a note; PNG keeps it."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x010E] = "x" * 70000  # ImageDescription
    inp = tmp_path / "big_exif.png"
    Image.fromarray(_photo((32, 40, 3))).save(inp, exif=exif)
    assert _run(inp, tmp_path / "o.jpg", tiny_model_file, "-q") == 0
    assert "is written without it" in capsys.readouterr().err
    with Image.open(tmp_path / "o.jpg") as written:
        assert not written.getexif()
    assert _run(inp, tmp_path / "o.png", tiny_model_file, "-q") == 0
    assert "without it" not in capsys.readouterr().err
    with Image.open(tmp_path / "o.png") as written:
        assert written.getexif()[0x010F] == "PhoneMaker"


def test_an_input_that_cannot_be_read_is_an_input_error(tiny_model_file, tmp_path, capsys, monkeypatch):
    """Review 2: a PermissionError (or another OSError) reading the input's first bytes escaped as a
    traceback. It is one error message saying why (exit 2)."""
    inp = tmp_path / "locked.png"
    Image.fromarray(_photo((16, 16))).save(inp)

    def no_permission(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(photo_files, "open", no_permission, raising=False)
    for out in ("o.png", "o.tif"):
        assert _run(inp, tmp_path / out, tiny_model_file) == 2
        err = capsys.readouterr().err
        assert "error: Cannot read" in err and "Permission denied" in err and "Traceback" not in err


def _png_chunk(path, kind):
    """The data of the first ``kind`` chunk of a PNG file, or None."""
    data = path.read_bytes()
    at = 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        if data[at + 4 : at + 8] == kind:
            return data[at + 8 : at + 8 + length]
        at += 12 + length
    return None


@pytest.mark.parametrize("kind", ["grey", "rgb", "ramp"])
def test_png_colour_chunks_are_kept_and_what_is_not_is_noted(tiny_model_file, tmp_path, capsys, kind):
    """Review 2: a PNG's gAMA, cHRM, sRGB (how its values are colours) were lost in a PNG output; sBIT is kept
    where the output's sample layout is the input's. XMP and text, not kept, are named in a note."""
    from PIL.PngImagePlugin import PngInfo

    chunks = {
        b"gAMA": struct.pack(">I", 45455),
        b"cHRM": struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000),
        b"sRGB": b"\x00",
        b"sBIT": b"\x05" if kind != "rgb" else b"\x05\x06\x05",
    }
    meta = PngInfo()
    for name, data in chunks.items():
        meta.add(name, data)
    meta.add_text("Author", "me")
    meta.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    im = Image.fromarray(_photo((24, 32, 3) if kind == "rgb" else (24, 32)))
    if kind == "ramp":
        im = im.convert("P")
        im.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes(), "RGB")
    inp, out = tmp_path / "colour.png", tmp_path / "o.png"
    im.save(inp, pnginfo=meta)
    assert _run(inp, out, tiny_model_file, "-q") == 0
    err = capsys.readouterr().err
    assert "not written to o.png: colour.png's XMP, text (Author)" in err
    for name, data in chunks.items():
        assert _png_chunk(out, name) == data, name
    with Image.open(out) as written:
        assert written.info["gamma"] == pytest.approx(0.45455)
    assert _run(inp, tmp_path / "o.tif", tiny_model_file, "-q") == 0
    assert "colour.png's XMP, text (Author), the PNG's gAMA/cHRM/sRGB/sBIT" in capsys.readouterr().err

    plain = tmp_path / "plain.png"
    Image.fromarray(_photo((24, 32))).save(plain)
    assert _run(plain, tmp_path / "p.png", tiny_model_file, "-q") == 0
    assert "not written" not in capsys.readouterr().err


def test_sbit_is_left_out_where_the_output_has_another_sample_layout(tiny_model_file, tmp_path):
    """sBIT gives bits per stored sample: a colour key read as alpha adds a sample, so it is left out there."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add(b"sBIT", b"\x05\x05\x05")
    meta.add(b"gAMA", struct.pack(">I", 45455))
    image = _photo((24, 32, 3))
    inp, out = tmp_path / "keyed.png", tmp_path / "o.png"
    Image.fromarray(image).save(inp, pnginfo=meta, transparency=tuple(int(v) for v in image[0, 0]))
    assert _run(inp, out, tiny_model_file, "-q") == 0
    assert _png_chunk(out, b"sBIT") is None and _png_chunk(out, b"gAMA") == struct.pack(">I", 45455)


def test_help_and_messages_say_what_a_photo_gets(tiny_model_file, tmp_path, capsys):
    """Review 2: the help said OUTPUT has the input's shape and dtype (not so for a turned photo or a 1/2/4-bit
    image) and --axes came from ImageJ/OME metadata; a directory output was asked to end in .tif."""
    with contextlib.suppress(SystemExit):
        main(["deblur", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "photos: YX or YXS" in text and "1/2/4-bit images as 8-bit" in text
    assert "A TIFF is written as TIFF with the same shape, dtype, axes and pixel sizes" in text
    photo, folder = tmp_path / "p.png", tmp_path / "out.png"
    Image.fromarray(_photo((16, 16))).save(photo)
    folder.mkdir()
    assert _run(photo, folder, tiny_model_file, "--force") == 2
    assert "ending in .png, .jpg, .jpeg, .tif or .tiff" in capsys.readouterr().err

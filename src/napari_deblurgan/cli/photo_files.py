"""Photographs for ``napari-deblurgan deblur``: reading PNG, JPEG and the other still-image formats Pillow reads,
and writing PNG, JPEG or TIFF by the output's extension (TIFF inputs go through ``deblur_command``'s own path).

What a photo is read as, and what it keeps:

* axes ``YX`` (grey) or ``YXS`` (grey + alpha, RGB, RGBA); 8-bit stays 8-bit and 16-bit stays 16-bit (16-bit
  colour PNGs, which Pillow reads as 8-bit, are decoded by imagecodecs). Alpha is opacity, not an image: kept
  as it is, as ``deblur()`` keeps an RGBA image's. A 1-bit image is deblurred as 8-bit grey.
* a phone photo stored sideways with an EXIF Orientation is turned upright, as viewers show it, and written
  upright with the Orientation tag removed: a viewer that ignores the tag (many do for PNG) shows it right too.
* the ICC colour profile (colour-managed viewers need it to show the colours the camera or editor meant), EXIF
  (PNG and JPEG outputs; left out of a JPEG, with a note, where over 64 KB; a TIFF output has none, with a
  note) and the resolution (dpi); a PNG's gAMA, cHRM, sRGB, cICP (and sBIT, where the output's sample layout
  is the input's) in a PNG output. XMP and text (PNG tEXt/iTXt/zTXt, a JPEG comment) are not kept: a note says
  so where the input has them.
* a palette (indexed-colour) image whose palette is a ramp (a LUT of intensities) is deblurred and written with
  its palette (PNG, TIFF); any other (a colour palette: every GIF, quantised PNGs), or a ramp with transparency,
  is read as its colours without loss (grey or RGB, with the transparency as alpha) and written so, with a note.
  (The TIFF path refuses indexed colour.)
* a PNG's transparent colour (tRNS of a grey or RGB image) is read as an alpha channel.
* an animation or a multi-page file is refused (a still image per file; a TIFF stack holds frames); the extra
  images a phone stores next to the photo (MPO: a depth map, a preview) are left out with a note.

Nothing is written here but into the temporary file ``deblur_command`` gives (atomic writes, ``--force`` and
never overwriting the input are its business).
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: Output formats by the output's extension (lower case).
OUTPUT_FORMATS = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

#: What the input may be, for messages.
ACCEPTED_INPUTS = (
    "TIFF (ImageJ, OME or plain), PNG, JPEG, BMP, WebP, single-frame GIF and the other still-image formats "
    "that Pillow reads"
)

#: JPEG quality of the output: high (JPEG is lossy; re-compressing the deblurred image coarsely would undo part
#: of the work), with full-resolution colour (4:4:4 chroma, subsampling=0), as photo editors export at it.
JPEG_QUALITY = 95

#: Pillow modes read as they are, and the dtype their pixels have (I;16 variants: uint16 in native order).
MODES = {
    "L": np.uint8,
    "LA": np.uint8,
    "RGB": np.uint8,
    "RGBA": np.uint8,
    "P": np.uint8,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I;16N": np.uint16,
}

#: The most bytes of EXIF a JPEG holds: one APP1 segment (Pillow refuses more, after the work).
JPEG_MAX_EXIF = 65533

ORIENTATION_TAG = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

PALETTE_PHOTO_MESSAGE = (
    "This is an indexed-colour (palette) image: its pixel values are colour-table indices, not intensities, "
    "so deblurring them means nothing. Save it as grayscale or RGB first (a PNG; GIMP: Image > Mode > RGB; "
    "Pillow: Image.open(path).convert('RGB').save('rgb.png'))."
)


def is_tiff(path: Path) -> bool:
    """Whether ``path`` starts like a TIFF (read by the TIFF path whatever its name); InputError if it cannot be
    read (no permission, an I/O error)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except OSError as exc:
        raise InputError(f"Cannot read {str(path)!r}: {exc.strerror or exc}.") from None


@dataclass
class PhotoInfo:
    """What is read from a photo and carried over to the output."""

    axes: str  # the model's axes: YX or YXS (or --axes)
    shape: tuple[int, ...]  # upright (after the EXIF orientation)
    dtype: Any
    format: str  # Pillow's name of the input's format: PNG, JPEG, GIF, ...
    alpha: bool = False  # the last sample is opacity (LA, RGBA)
    palette: Any = None  # (N, 3) uint8: a palette that is a ramp (a LUT), written back with the indices
    icc_profile: bytes | None = None
    exif: bytes | None = None  # as Pillow gives it ("Exif\0\0" + TIFF structure), Orientation removed
    dpi: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    name: str = ""  # the input's file name, for notes
    #: a PNG's colour chunks (gAMA, cHRM, sRGB, cICP, sBIT) as stored, written back into a PNG output
    png_colour: list[tuple[bytes, bytes]] = field(default_factory=list)
    png_ihdr: bytes = b""  # a PNG input's bit depth and colour type (sBIT is kept only where they are the same)
    unkept: list[str] = field(default_factory=list)  # what the input has and no output keeps (XMP, text)


@contextlib.contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """Pillow refuses images over ~179 megapixels as possible 'decompression bombs' (and warns over 89): the
    user's own panorama is none; what limits a deblur is memory, which deblur() plans for."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_photo(path: Path, axes_override: str | None) -> tuple[np.ndarray, PhotoInfo]:
    """The pixels of the still image ``path`` (upright) and what is kept of it; InputError for what is no
    image, an animation, or an image whose values are no intensities (a palette that is not a LUT)."""
    from PIL import Image, UnidentifiedImageError

    with _no_pixel_limit():
        try:
            im = Image.open(path)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            why = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
            raise InputError(
                f"Cannot read {str(path)!r}: it is neither a TIFF file nor an image in a format that can be read"
                f"{why}. Accepted: {ACCEPTED_INPUTS}."
            ) from None
        with im:
            frames = getattr(im, "n_frames", 1)
            info = PhotoInfo("", (), None, im.format or "image", name=path.name)
            if frames > 1:
                if im.format != "MPO":
                    raise InputError(
                        f"{path.name} holds {frames} frames (an animation or a multi-page {im.format} file); "
                        "deblur reads still images: save the frames as a TIFF stack (axes TYX or TYXS) and "
                        "deblur that."
                    )
                info.notes.append(
                    f"{path.name} also holds {frames - 1} other image(s) next to the photo (MPO, as phones and "
                    "cameras store a depth map or a preview); only the photo is used."
                )
            if info.format == "PNG":  # first: its bit depth tells how Pillow read the pixels
                info.png_ihdr, info.png_colour = _png_colour_chunks(path)
            try:
                im.load()
                data = _pixels(im, path, info)
                exif = im.getexif()
            except InputError:  # what _pixels refuses (an InputError is a ValueError too)
                raise
            except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
                raise InputError(f"Cannot read the pixels of {str(path)!r}: {exc}") from None
            info.icc_profile = im.info.get("icc_profile") or None
            dpi = im.info.get("dpi")
            if dpi and len(dpi) == 2 and all(float(d) > 0 for d in dpi):
                # a PNG stores pixels per metre: 300 dpi comes back as 299.9994, 72 as 72.009
                info.dpi = tuple(round(d) if abs(d - round(d)) < 0.05 else d for d in map(float, dpi[:2]))
            raw_exif = _exif_bytes(im.info.get("exif"))
            info.unkept = _unkept(im)
    orientation = exif.get(ORIENTATION_TAG, 1) if exif else 1
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        data = orient(data, orientation)
        if orientation >= 5 and info.dpi:
            info.dpi = info.dpi[::-1]
        del exif[ORIENTATION_TAG]
        info.exif = exif.tobytes()
        info.notes.append(
            f"{path.name} is stored turned (EXIF Orientation {orientation}); it is deblurred and written upright, "
            "as viewers show it, without the Orientation tag."
        )
    elif raw_exif:
        info.exif = bytes(raw_exif)  # as it is: nothing to change in it
    info.shape, info.dtype = tuple(data.shape), data.dtype
    info.axes = "YX" if data.ndim == 2 else "YXS"
    if axes_override is not None:
        from .deblur_command import axes_flag

        info.axes = axes_flag(axes_override, info.shape, f"a {info.format} image")
    return data, info


#: A PNG's chunks that say how its values are colours, kept in a PNG output (Pillow reads some, writes none).
PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB", b"cICP", b"sBIT")


def _png_colour_chunks(path: Path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A PNG's IHDR bit depth and colour type, and its :data:`PNG_COLOUR_CHUNKS` (they come before IDAT)."""
    chunks = []
    with open(path, "rb") as fh:
        head = fh.read(33)
        if not (head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR"):
            return b"", []
        while True:
            header = fh.read(8)
            if len(header) < 8 or header[4:] in (b"IDAT", b"IEND"):
                break
            length, kind = struct.unpack(">I", header[:4])[0], header[4:]
            if kind in PNG_COLOUR_CHUNKS and length <= 64:
                chunks.append((kind, fh.read(length)))
                fh.seek(4, 1)
            else:
                fh.seek(length + 4, 1)
    return head[24:26], chunks


def _unkept(im: Any) -> list[str]:
    """What of the input's metadata no output keeps, in words: XMP, text (PNG tEXt/iTXt/zTXt, a JPEG
    comment)."""
    unkept = []
    text = dict(getattr(im, "text", None) or {}) if im.format == "PNG" else {}
    png_xmp = text.pop("XML:com.adobe.xmp", None)
    if im.info.get("xmp") or png_xmp:
        unkept.append("XMP")
    if text:
        unkept.append(f"text ({', '.join(sorted(text))})")
    if im.info.get("comment"):
        unkept.append("a comment")
    return unkept


def _exif_bytes(raw: Any) -> bytes | None:
    """EXIF as JPEG's APP1 holds it and Pillow writes it as it is: ``Exif\0\0`` + the TIFF structure. WebP
    (libwebp) and some PNGs store the TIFF structure alone; a JPEG written with it would have a malformed APP1."""
    if not raw:
        return None
    raw = bytes(raw)
    return b"Exif\x00\x00" + raw if raw[:4] in TIFF_MAGIC[:2] else raw


def _pixels(im: Any, path: Path, info: PhotoInfo) -> np.ndarray:
    """The pixels of an open, loaded Pillow image, in the dtype of their bit depth; a PNG's transparent colour
    (tRNS of a grey or RGB image: one value that stands for "transparent") as an alpha channel."""
    data = _stored_pixels(im, path, info)
    key = im.info.get("transparency")
    if (
        key is None
        or info.alpha
        or info.palette is not None
        or im.mode not in ("1", "L", "I", "RGB", "I;16", "I;16L", "I;16B", "I;16N")
    ):
        return data
    top = np.iinfo(data.dtype).max
    if data.ndim == 2 and isinstance(key, int):
        bits = 1 if im.mode == "1" else _png_bit_depth(info) if info.format == "PNG" and im.mode == "L" else 8
        if bits < 8:  # the key is in the stored bit depth; Pillow scales 1/2/4-bit values to 0..255
            key = key * 255 // (2**bits - 1)
        opaque = data != key
    elif data.ndim == 3 and data.shape[-1] == 3 and isinstance(key, tuple) and len(key) == 3:
        opaque = (data != np.asarray(key, dtype=data.dtype)).any(axis=-1)
    else:
        return data
    info.alpha = True
    info.notes.append(
        f"{path.name} marks one colour as transparent (PNG tRNS); that transparency is kept as an alpha channel."
    )
    return np.concatenate((data.reshape(*data.shape[:2], -1), (opaque * top).astype(data.dtype)[..., None]), -1)


def _stored_pixels(im: Any, path: Path, info: PhotoInfo) -> np.ndarray:
    """The pixels of an open, loaded Pillow image, in the dtype of their bit depth."""
    from .deblur_command import is_lut

    mode = im.mode
    if info.format == "PNG" and _png_bit_depth(info) == 16 and mode not in ("I;16", "I;16B", "I", "P"):
        # 16-bit grey+alpha and colour: Pillow has no such modes and reads them as 8-bit
        import imagecodecs

        data = np.asarray(imagecodecs.png_decode(path.read_bytes()))
        info.alpha = data.ndim == 3 and data.shape[-1] in (2, 4)
        return data
    if mode == "1":
        info.notes.append(f"{path.name} is black and white (1 bit); it is deblurred and written as 8-bit grey.")
        return np.asarray(im, dtype=np.uint8) * np.uint8(255)
    if mode == "I":  # 32-bit integers: how Pillow holds some 16-bit images (PGM, older Pillow's PNG)
        data = np.asarray(im)
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise InputError(f"{path.name} holds 32-bit integers beyond 16 bits; save it as a 16-bit TIFF first.")
        return data.astype(np.uint16)
    if mode == "P":
        palette = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
        if not len(palette):
            raise InputError(PALETTE_PHOTO_MESSAGE)
        if is_lut(palette.T) and im.info.get("transparency") is None:
            info.palette = palette  # intensities: deblurred as they are, written with the palette
        else:
            return _unpalette(im, palette, path, info)
    elif mode not in MODES:
        raise InputError(
            f"{path.name} stores its pixels as {mode} (Pillow's name of its colour mode), which the output could "
            "not keep: written as grayscale or RGB the same values would show other colours. Save it as "
            "grayscale or RGB (8 or 16 bit) first."
        )
    info.alpha = mode in ("LA", "RGBA")
    data = np.asarray(im)
    return data.astype(data.dtype.newbyteorder("="), copy=False)  # I;16B: big-endian in, native out


def _unpalette(im: Any, palette: np.ndarray, path: Path, info: PhotoInfo) -> np.ndarray:
    """A palette image's colours, without loss: grey if every palette entry is grey, else RGB; with its
    transparency (an index, or an opacity per entry) as an alpha channel. Its indices are no intensities (a
    colour palette), or they are but with a transparency that belongs to the stored indices, not to the
    deblurred values (a ramp with tRNS)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    grey = bool((palette == palette[:, :1]).all())
    colours = lut[np.asarray(im, dtype=np.uint8)]
    data = colours[..., 0] if grey else colours
    transparency = im.info.get("transparency")
    opacity = np.full(256, 255, np.uint8)
    if isinstance(transparency, int) and 0 <= transparency < 256:
        opacity[transparency] = 0
    elif isinstance(transparency, (bytes, bytearray)):
        opacity[: min(len(transparency), 256)] = np.frombuffer(bytes(transparency[:256]), np.uint8)
    else:
        transparency = None
    kind = "grey" if grey else "RGB"
    if transparency is not None:
        data = np.concatenate((data.reshape(*data.shape[:2], -1), opacity[np.asarray(im)][..., None]), -1)
        info.alpha = True
        kind = "grey + alpha" if grey else "RGBA"
    info.notes.append(
        f"{path.name} is an indexed-colour (palette) image: its colours are deblurred and written as {kind}, "
        "not with a palette."
    )
    return data


def _png_bit_depth(info: PhotoInfo) -> int:
    """A PNG input's bits per sample (from its IHDR, read by :func:`_png_colour_chunks`); 8 for other inputs."""
    return info.png_ihdr[0] if info.png_ihdr else 8


def orient(data: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned as EXIF ``orientation`` (2..8) says viewers show them (the first two axes)."""
    turned = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # 180 degrees
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
    }[orientation](data)
    return np.ascontiguousarray(turned)


def without_grey_alpha(data: np.ndarray, info: PhotoInfo) -> tuple[np.ndarray, str, np.ndarray | None]:
    """``(pixels for deblur(), their axes, the alpha to put back or None)``: deblur() keeps an RGBA image's alpha
    itself, but takes the 2 samples of grey + alpha as two channels; the grey is deblurred alone here."""
    if info.alpha and info.axes.endswith("S") and data.shape[-1] == 2:
        return data[..., 0], info.axes[:-1], data[..., 1]
    return data, info.axes, None


def check_output(info: PhotoInfo, out: Path) -> None:
    """InputError before the work if the output's format cannot hold the image; the note JPEG needs."""
    fmt = OUTPUT_FORMATS[out.suffix.lower()]
    if fmt == "JPEG":
        problem = (
            "16-bit samples (JPEG holds 8)"
            if info.dtype != np.uint8
            else "an alpha channel (transparency), which JPEG cannot hold"
            if info.alpha
            else "a palette, which JPEG cannot hold"
            if info.palette is not None
            else None
        )
        if problem:
            raise InputError(f"Output {str(out)!r}: the image has {problem}; write .png or .tif instead.")
        if info.exif and len(info.exif) > JPEG_MAX_EXIF:
            info.notes.append(
                f"the input's EXIF ({len(info.exif):,} bytes) is larger than a JPEG's EXIF segment holds (64 KB); "
                f"{out.name} is written without it (write .png or .tif to keep it)."
            )
            info.exif = None
        info.notes.append(
            f"JPEG is lossy: {out.name} is written at quality {JPEG_QUALITY}; write .png or .tif to keep every "
            "pixel of the result."
        )
    elif fmt == "PNG" and info.dtype not in (np.uint8, np.uint16):
        raise InputError(f"Output {str(out)!r}: PNG holds 8 or 16 bits, the image is {info.dtype}; write .tif.")
    unkept = list(info.unkept)
    if info.exif and fmt == "TIFF":
        # a TIFF holds EXIF in an IFD of its own, which the TIFF writer here does not write: said, not lost silently
        unkept.append("EXIF (camera, exposure, date; write .png or .jpg to keep it)")
    if info.png_colour and fmt != "PNG":
        unkept.append(f"the PNG's {'/'.join(k.decode() for k, _ in info.png_colour)} (how its values are colours)")
    if unkept:
        info.notes.append(f"not written to {out.name}: {info.name}'s {', '.join(unkept)}.")


def write_photo(tmp: Path, result: np.ndarray, info: PhotoInfo, out: Path) -> None:
    """Write ``result`` (the deblurred pixels, in the input's layout) to ``tmp`` in the format of ``out``'s
    extension, with the input's ICC profile, EXIF and resolution where the format holds them."""
    fmt = OUTPUT_FORMATS[out.suffix.lower()]
    if fmt == "TIFF":
        _write_tiff(tmp, result, info)
    elif fmt == "PNG" and info.palette is None:
        import imagecodecs

        png = bytes(imagecodecs.png_encode(np.ascontiguousarray(result)))
        tmp.write_bytes(_with_chunks(png, _png_chunks(info) + _colour_chunks(info, png[24:26])))
    else:  # JPEG, and a palette PNG (Pillow writes both with their metadata)
        from PIL import Image

        im = Image.fromarray(np.ascontiguousarray(result))
        kw: dict[str, Any] = {}
        if info.icc_profile:
            kw["icc_profile"] = info.icc_profile
        if info.exif:
            kw["exif"] = info.exif
        if info.dpi:
            kw["dpi"] = info.dpi
        if fmt == "JPEG":
            im.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0, **kw)
        else:
            im.putpalette(info.palette.ravel().tobytes(), "RGB")  # a ramp without transparency
            from PIL.PngImagePlugin import PngInfo

            kw["pnginfo"] = PngInfo()
            for kind, data in _colour_chunks(info, b"\x08\x03"):  # 8-bit, palette
                kw["pnginfo"].add(kind, data)
            im.save(tmp, format="PNG", **kw)


def clip_to_palette(result: np.ndarray, info: PhotoInfo) -> np.ndarray:
    """A palette image's deblurred indices kept within its palette (a short one has fewer than 256 entries;
    as the dtype's range clips other images)."""
    if info.palette is not None and len(info.palette) < 256:
        np.minimum(result, len(info.palette) - 1, out=result)
    return result


def _png_chunks(info: PhotoInfo) -> list[tuple[bytes, bytes]]:
    """The PNG chunks of the input's ICC profile (iCCP), EXIF (eXIf) and resolution (pHYs)."""
    chunks = []
    if info.icc_profile:
        chunks.append((b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(info.icc_profile)))
    if info.exif:
        exif = info.exif[6:] if info.exif.startswith(b"Exif\x00\x00") else info.exif
        chunks.append((b"eXIf", exif))
    if info.dpi:
        per_metre = [max(1, round(d / 0.0254)) for d in info.dpi]
        chunks.append((b"pHYs", struct.pack(">IIB", *per_metre, 1)))
    return chunks


def _colour_chunks(info: PhotoInfo, ihdr: bytes) -> list[tuple[bytes, bytes]]:
    """The input PNG's colour chunks for an output PNG of bit depth and colour type ``ihdr``: sBIT (bits per
    sample) only where those are the input's."""
    return [(kind, data) for kind, data in info.png_colour if kind != b"sBIT" or ihdr == info.png_ihdr]


def _with_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ``chunks`` inserted right after its IHDR (before any PLTE or IDAT, as iCCP must be)."""
    end = len(PNG_SIGNATURE) + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    if not (png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"):
        raise ValueError("not a PNG written by imagecodecs")
    extra = b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )
    return png[:end] + extra + png[end:]


def _write_tiff(tmp: Path, result: np.ndarray, info: PhotoInfo) -> None:
    """A plain TIFF, written by the TIFF path's writer: RGB(A) or grey (+ alpha), deflate-compressed (lossless,
    as a PNG is), with the ICC profile, the resolution in dpi and a palette that is a LUT."""
    from .deblur_command import TiffInfo, write_kwargs, write_tiff

    tiff = TiffInfo(info.axes, "YX" if result.ndim == 2 else "YXS", info.shape, info.dtype, "plain")
    tiff.compression = "zlib"
    samples = result.shape[-1] if result.ndim == 3 else 1
    tiff.photometric = "PALETTE" if info.palette is not None else "RGB" if samples >= 3 else "MINISBLACK"
    if info.palette is not None:
        colormap = np.zeros((3, 256), np.uint16)  # TIFF's ColorMap: 2**8 entries of 16 bits
        colormap[:, : len(info.palette)] = info.palette.T.astype(np.uint16) * 257
        colormap[:, len(info.palette) :] = colormap[:, len(info.palette) - 1 : len(info.palette)]
        tiff.colormap = colormap
    if info.alpha:
        tiff.extrasamples = (2,)  # unassociated alpha: PNG's and WebP's alpha is not premultiplied
    if info.dpi:
        tiff.resolution, tiff.resolutionunit = info.dpi, 2  # RESUNIT.INCH
    kw = write_kwargs(tiff)
    if info.icc_profile:
        kw["iccprofile"] = info.icc_profile
    write_tiff(tmp, result, tiff, kw)

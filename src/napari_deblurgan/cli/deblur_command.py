"""``napari-deblurgan deblur INPUT.tif -o OUTPUT.tif``: deblur a TIFF file, keeping its axes and pixel sizes;
or a photo (``INPUT.jpg -o OUTPUT.png``: PNG, JPEG and the other still-image formats, read and written by
:mod:`.photo_files`, through the same checks, deblur() call, progress and atomic write).

A TIFF's output is written in the same TIFF flavour as the input (ImageJ hyperstack, OME-TIFF or plain TIFF) with
the same shape, dtype, axes and pixel sizes (resolution tags, ImageJ ``spacing``/``unit``, OME
``PhysicalSize*``), photometric interpretation (MINISWHITE, RGB(A), CMYK, a palette that is a LUT) and
metadata (ImageJ LUTs, display mode and ranges, labels, Info; OME image and channel names, and each plane's
DeltaT, exposure and stage position; a plain TIFF's description, Software and DateTime; the extra keys of
tifffile's JSON metadata). It is written to a temporary file next to the target and renamed at the end, so an
interrupted run leaves no partial output; the input is never overwritten.

Images larger than :data:`LARGE_FILE_BYTES` (decoded) are processed lazily with dask, plane by plane, whatever
their compression: read a page at a time (memory-mapped where stored uncompressed and contiguous, else
decoded page by page by tifffile) and written as each plane is done (into a memory-mapped output, or, for a
compressed output, as a stream of compressed pages), so they need not fit in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import check_writable
from ..errors import InputError
from ..user_paths import expand_user

#: Images bigger than this (decoded: ``series.nbytes``, whatever the file's compression) are read and deblurred
#: lazily, plane by plane, and written as each plane is done. 64 MiB: the in-memory path holds the input, its
#: float32 work copies and the result (about 3.6x the image measured, 1.5 GB for a 419 MB stack), which stays
#: small below this; above it, the lazy path's cost (one dask block per plane, a page decoded or mapped per
#: read) is nothing next to the model's work on each plane, and memory follows a plane, not the file.
LARGE_FILE_BYTES = 64 << 20

#: Axis letters napari-deblurgan understands (see axes.py); tifffile may report others.
OUR_AXES = "TZCYXS"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``deblur`` subcommand."""
    p = subparsers.add_parser(
        "deblur",
        help="deblur a TIFF image (2D, stacks, time series, multichannel) or a photo (PNG, JPEG, ...)",
        description="Deblur INPUT with a DeblurGAN-style model and write OUTPUT. A TIFF is written as TIFF with "
        "the same shape, dtype, axes and pixel sizes. A photo (PNG, JPEG, BMP, WebP, single-frame GIF, ...) is "
        "written as the extension of OUTPUT says: .png (lossless; 8 or 16 bits as the input, 1/2/4-bit images "
        "as 8-bit), .jpg/.jpeg (quality 95: lossy) or .tif/.tiff, upright as viewers show it (EXIF orientation: "
        "a sideways photo comes out turned), with its alpha and ICC colour profile; a palette image other than "
        "a grey ramp is written as its colours (grey or RGB).",
    )
    p.add_argument(
        "input",
        type=expand_user,
        metavar="INPUT",
        help="input image: a TIFF (ImageJ, OME or plain) or a photo (PNG, JPEG, BMP, WebP, single-frame GIF, ...)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=expand_user,
        required=True,
        metavar="OUTPUT",
        help="output file: .tif/.tiff; for a photo also .png or .jpg/.jpeg",
    )
    p.add_argument(
        "--model",
        type=expand_user,
        default="default",
        metavar="M",
        help="model file (.pt) or shipped model name (see `napari-deblurgan info --list`); default: %(default)s",
    )
    p.add_argument(
        "--axes",
        default=None,
        metavar="A",
        help="axes of the image, e.g. ZYX, TCYX, YXS (default: from the file's ImageJ/OME metadata (photos: YX "
        "or YXS); "
        "unnamed leading axes are treated as Z, which is fine because every YX plane is deblurred)",
    )
    p.add_argument("--tile-size", type=int, default=None, metavar="N", help="tile edge in pixels (default: auto)")
    p.add_argument("--overlap", type=int, default=None, metavar="N", help="tile overlap in pixels (default: auto)")
    p.add_argument(
        "--context-padding",
        type=int,
        default=None,
        metavar="N",
        help="pixels of reflected context around each plane (default: the model's own setting)",
    )
    p.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the results of the 8 flipped/rotated versions of every tile: 8x slower, a little "
        "better (docs/model-card.md, 'Self-ensemble')",
    )
    p.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="intensity percentiles of each plane mapped to 0 and 1 for the model (default: the model's own, "
        "1 99.8); a lower HIGH (e.g. 99) helps when bright objects cover more than 0.2%% of a plane",
    )
    p.add_argument(
        "--normalize",
        choices=("plane", "local"),
        default="plane",
        help="scale each plane by its percentiles (plane, the default) or by those of 128 px blocks, "
        "interpolated (local: a bright object then spoils only its own neighbourhood)",
    )
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists (never INPUT)")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress: hides the progress bar and 'wrote ...'; notes and warnings are still printed",
    )
    return p


# ------------------------------------------------------------------------------------------ TIFF metadata
@dataclass
class TiffInfo:
    """What is read from the input file and carried over to the output."""

    axes: str  # axes in our letters (TZCYXS), one per dimension of the data, as the model sees them
    file_axes: str  # axes as tifffile reported them
    shape: tuple[int, ...]
    dtype: Any
    flavour: str  # "imagej" | "ome" | "plain"
    resolution: tuple[Any, Any] | None = None
    resolutionunit: Any = None
    imagej: dict[str, Any] = field(default_factory=dict)  # description keys and IJMetadata items kept
    imagej_description: str | None = None  # written over tifffile's (see restore_description)
    ome_sizes: dict[str, Any] = field(default_factory=dict)  # PhysicalSizeX, PhysicalSizeXUnit, ...
    ome_image: dict[str, Any] = field(default_factory=dict)  # Name, Description, AcquisitionDate, Channel
    # the first Image's Plane attributes (time, exposure, stage position) by (TheC, TheZ, TheT): restore_planes
    ome_planes: dict[tuple[int, int, int], dict[str, str]] = field(default_factory=dict)
    shaped: dict[str, Any] = field(default_factory=dict)  # extra keys of tifffile's JSON ("shaped") metadata
    description: str | None = None  # a plain TIFF's own ImageDescription (not ImageJ's, OME's or tifffile's)
    software: str | None = None
    datetime: str | None = None
    photometric: str | None = None
    colormap: Any = None  # a palette TIFF's ColorMap (a LUT: its values are intensities)
    extrasamples: tuple[int, ...] = ()  # RGBA: what the 4th sample is (associated/unassociated alpha); others'
    # more than one sample per pixel: "contig" (YXS pages) or "separate" (SYX pages), kept so that the output's
    # pages are the input's (a grey image with 2 samples would otherwise be written as YX pages of 2 columns)
    planarconfig: str | None = None
    inkset: int | None = None  # SEPARATED (CMYK)
    note: str | None = None  # how the output's flavour differs from the input's, for stderr
    compression: str | None = None  # the input's lossless compression, kept for the output


#: Lossless TIFF compressions kept from input to output (tifffile's COMPRESSION names -> imwrite's names).
#: Lossy ones (JPEG...) are not: re-compressing a deblurred image lossily would undo part of the work.
LOSSLESS_COMPRESSIONS = {
    "ADOBE_DEFLATE": "zlib",
    "DEFLATE": "zlib",
    "LZW": "lzw",
    "ZSTD": "zstd",
    "LZMA": "lzma",
    "PACKBITS": "packbits",
}

#: JPEG-type compressions: tifffile decodes their YCbCr to RGB.
JPEG_COMPRESSIONS = {"JPEG", "OJPEG", "JPEGXL", "JPEG_LOSSY"}

#: Photometric interpretations written back as they are (tifffile's PHOTOMETRIC names -> imwrite's names).
#: Others (CIELab, CFA, LogLuv...) would come back as RGB or grayscale, another meaning for the same values.
KEPT_PHOTOMETRICS = {
    "MINISBLACK": "minisblack",
    "MINISWHITE": "miniswhite",  # 0 is white: written as MINISBLACK the same values would show inverted
    "RGB": "rgb",
    "PALETTE": "palette",  # a LUT (checked in read_tiff_info), written with the same ColorMap
    "SEPARATED": "separated",  # CMYK
}

#: ImageJ metadata not carried over: recomputed by tifffile from the output's shape (images, channels,
#: slices, frames), or not about the image (Plot, a plot window's data).
IMAGEJ_NOT_KEPT = {"images", "channels", "slices", "frames", "Plot"}
#: ImageJ metadata per channel (display mode, display range, LUTs): kept when the channel count is the same.
#: The display range stays meaningful: the deblurred image is in the input's intensity units (the model's
#: output is mapped back through the input's normalisation), so the user's contrast setting shows it as it
#: showed the input; sharper peaks may saturate it, as they would in the microscope software.
IMAGEJ_PER_CHANNEL = {"mode", "min", "max", "Ranges", "LUTs"}
#: ImageJ metadata stored in the IJMetadata tag, not in the description.
IMAGEJ_TAG_ITEMS = {"Info", "Labels", "Ranges", "LUTs", "Plot", "ROI", "Overlays", "Properties"}

#: OME Channel attributes kept (those tifffile writes; ID and SamplesPerPixel are the file's structure).
OME_CHANNEL_ATTRIBUTES = (
    "Name",
    "AcquisitionMode",
    "Color",
    "ContrastMethod",
    "EmissionWavelength",
    "EmissionWavelengthUnit",
    "ExcitationWavelength",
    "ExcitationWavelengthUnit",
    "Fluor",
    "IlluminationType",
    "NDFilter",
    "PinholeSize",
    "PinholeSizeUnit",
    "PockelCellSetting",
)

#: OME Plane attributes kept: each plane's time, exposure and stage position (TheC/TheZ/TheT say which plane).
OME_PLANE_ATTRIBUTES = (
    "DeltaT",
    "DeltaTUnit",
    "ExposureTime",
    "ExposureTimeUnit",
    "PositionX",
    "PositionXUnit",
    "PositionY",
    "PositionYUnit",
    "PositionZ",
    "PositionZUnit",
)

PALETTE_MESSAGE = (
    "This is an indexed-colour (palette) TIFF: its pixel values are colour-table indices, not "
    "intensities, so deblurring them means nothing. Save it as grayscale or RGB first (Fiji: Image > "
    "Type > 8-bit or RGB Color)."
)


def in_imagej_order(axes: str) -> bool:
    """Whether ``axes`` run in ImageJ's hyperstack order (a subsequence of TZCYXS), which ImageJ files need."""
    order = "TZCYXS"
    positions = [order.find(a) for a in axes]
    return -1 not in positions and positions == sorted(positions)


def axes_flag(axes: str, shape: tuple[int, ...], what: str) -> str:
    """``--axes`` checked against the input's ``shape``; its error names the flag, the shape and ``what`` the
    file says of itself (its axes, its format)."""
    from ..axes import validate_axes

    try:
        return validate_axes(axes, len(shape))
    except InputError as exc:
        raise InputError(f"--axes: {exc} (shape {shape}, {what})") from None


def map_axes(file_axes: str) -> str:
    """tifffile axes -> our letters: unknown letters ('Q', 'I', ...) become Z, then T; else InputError. A C
    next to S becomes Z or T too: tifffile reads an ImageJ file of RGB pages described as channels (what
    ``tifffile.imwrite(..., imagej=True)`` writes for a stack of RGB images) as CYXS, and an image has one
    channel axis at most; each RGB page is then deblurred as a plane of its own, and the file is written back
    as it was."""
    out = [a if a in OUR_AXES else "?" for a in file_axes.upper()]
    if "C" in out and "S" in out:
        out[out.index("C")] = "?"
    free = [a for a in "ZT" if a not in out]
    for i, a in enumerate(out):
        if a == "?":
            if not free:
                raise InputError(
                    f"Cannot interpret the file's axes {file_axes!r}; pass --axes with one of the letters "
                    f"{OUR_AXES} per dimension (e.g. --axes TZYX)."
                )
            out[i] = free.pop(0)
    return "".join(out)


def is_lut(colormap: Any) -> bool:
    """Whether a palette's ColorMap (3 x N) is a lookup table of intensities: every colour component runs
    monotonically one way (a grey, green, or inverted ramp...), and not all of them are constant. An image
    with such a palette stores intensities; any other palette (distinct colours) stores colour indices."""
    import numpy as np

    steps = np.diff(np.asarray(colormap, dtype=np.int64), axis=-1)
    return bool(steps.any() and ((steps >= 0).all() or (steps <= 0).all()))


def _ome_metadata(xml: str | None) -> tuple[dict[str, Any], dict[str, Any], dict[tuple[int, int, int], dict[str, str]]]:
    """Of the first OME Image: its Pixels' PhysicalSize{X,Y,Z} (and units) and TimeIncrement; its Name,
    Description, AcquisitionDate and its Channels' attributes (names, colours, wavelengths); and its Planes'
    times, exposures and positions by (TheC, TheZ, TheT)."""
    if not xml:
        return {}, {}, {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}, {}, {}

    def local(el: Any) -> str:
        return el.tag.rsplit("}", 1)[-1]

    image = next((el for el in root.iter() if local(el) == "Image"), None)
    pixels = next((el for el in (image if image is not None else root).iter() if local(el) == "Pixels"), None)
    sizes: dict[str, Any] = {}
    if pixels is not None:
        keys = [f"PhysicalSize{a}{u}" for a in "XYZ" for u in ("", "Unit")]
        keys += ["TimeIncrement", "TimeIncrementUnit"]
        for k in keys:
            if k in pixels.attrib:
                v = pixels.attrib[k]
                sizes[k] = v if k.endswith("Unit") else float(v)
    described: dict[str, Any] = {}
    if image is not None:
        if image.get("Name"):
            described["Name"] = image.get("Name")
        for el in image:
            if local(el) in ("Description", "AcquisitionDate") and el.text:
                described[local(el)] = el.text
    if pixels is not None:
        channels = [el for el in pixels if local(el) == "Channel"]
        kept = [{k: el.attrib[k] for k in OME_CHANNEL_ATTRIBUTES if k in el.attrib} for el in channels]
        if any(kept):
            described["Channel"] = kept
    planes: dict[tuple[int, int, int], dict[str, str]] = {}
    if pixels is not None:
        for el in pixels:
            attributes = {k: el.attrib[k] for k in OME_PLANE_ATTRIBUTES if k in el.attrib}
            if local(el) == "Plane" and attributes:
                try:
                    key = tuple(int(el.get(f"The{a}", 0)) for a in "CZT")
                except ValueError:
                    continue
                planes[key] = attributes  # type: ignore[index]
    return sizes, described, planes


def _size(axes: str, shape: tuple[int, ...], letter: str) -> int:
    return shape[axes.index(letter)] if letter in axes else 1


def read_tiff_info(tif: Any, axes_override: str | None) -> TiffInfo:
    """Axes, flavour, pixel sizes and the other metadata kept, of the first series of an open
    ``tifffile.TiffFile``; InputError for colour interpretations that the output could not keep."""
    if not tif.series:  # a file cut short inside its first page's header, or one written without pages
        raise InputError(f"{tif.filename!r} holds no image (no readable page); it may be truncated.")
    series = tif.series[0]
    file_axes = series.axes
    if axes_override is not None:
        axes = axes_flag(axes_override, tuple(series.shape), f"file axes {file_axes!r}")
    else:
        axes = map_axes(file_axes)
    shape = tuple(series.shape)
    flavour = "imagej" if tif.is_imagej else "ome" if tif.is_ome else "plain"
    page = series.pages[0] if series.pages else tif.pages[0]
    info = TiffInfo(axes, file_axes, shape, series.dtype, flavour)
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags:
        info.resolution = (tags["XResolution"].value, tags["YResolution"].value)
        info.resolutionunit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
    photometric = getattr(page, "photometric", None)
    info.photometric = getattr(photometric, "name", None)
    compression = getattr(getattr(page, "compression", None), "name", "")
    info.compression = LOSSLESS_COMPRESSIONS.get(compression)
    _check_photometric(info, page, compression, tif.is_imagej)
    if getattr(page, "samplesperpixel", 1) > 1:
        info.planarconfig = {1: "contig", 2: "separate"}.get(int(getattr(page, "planarconfig", 1) or 1))
        if info.photometric != "RGB":  # RGB's are read (and noted) in _check_photometric
            info.extrasamples = tuple(int(e) for e in getattr(page, "extrasamples", ()))
    if flavour == "imagej":
        ij = dict(tif.imagej_metadata or {})
        not_kept = set(IMAGEJ_NOT_KEPT)
        if _size(axes, shape, "C") != ij.get("channels", 1):  # --axes changed the channels
            not_kept |= IMAGEJ_PER_CHANNEL
        # tifffile writes only ASCII descriptions (and fails after the work): other text, in a value or in a
        # key (a damaged description), is left to the input's description, written back as it is where it
        # still holds (below)
        not_kept |= {
            k
            for k, v in ij.items()
            if not str(k).isascii() or (isinstance(v, str) and not v.isascii() and k not in IMAGEJ_TAG_ITEMS)
        }
        info.imagej = {k: v for k, v in ij.items() if k not in not_kept}
        if axes == map_axes(file_axes):  # the file's own dimensions: its description is still true
            info.imagej_description = page.imagej_description
        elif info.photometric == "PALETTE" and in_imagej_order(axes):
            # tifffile drops the display mode (composite) of a palette image: written from the kept keys
            import tifffile

            described = {k: v for k, v in info.imagej.items() if k not in IMAGEJ_TAG_ITEMS}
            info.imagej_description = tifffile.imagej_description(shape, axes, **described)
    elif flavour == "ome":
        info.ome_sizes, info.ome_image, info.ome_planes = _ome_metadata(tif.ome_metadata)
        mapped = map_axes(file_axes)
        if axes != mapped and info.ome_planes:  # --axes renamed the dimensions: TheC/TheZ/TheT would name others
            info.ome_planes = {}
            info.note = (f"{info.note} " if info.note else "") + (
                f"--axes {axes} renames the file's dimensions ({mapped}): the input's per-plane OME metadata "
                "(DeltaT, exposure times, stage positions) is not in the output, as it would name other planes."
            )
        channels = _size(axes, shape, "C") * _size(axes, shape, "S")
        if channels != _size(mapped, shape, "C") * _size(mapped, shape, "S"):  # --axes changed the channels
            info.ome_image.pop("Channel", None)
    else:
        if page.shaped_description is not None:
            info.shaped = {
                k: v for k, v in (tif.shaped_metadata or ({},))[0].items() if k not in ("shape", "axes", "truncated")
            }
        info.description = next(
            (d for d in (page.description, page.description1) if d and d != page.shaped_description), None
        )
    software, when = tags.valueof("Software"), tags.valueof("DateTime")
    if isinstance(software, str):
        info.software = software
    if isinstance(when, str) and len(when) == 19 and when[16] == ":" and when.isascii():  # as tifffile writes it
        info.datetime = when
    if flavour == "imagej" and not in_imagej_order(axes):
        # checked here, before the work: tifffile would refuse to write it only after the deblurring
        info.flavour, info.file_axes, info.imagej, info.imagej_description = "plain", axes, {}, None
        info.note = (f"{info.note} " if info.note else "") + (  # after the photometric note, not instead
            f"ImageJ files need their axes in TZCYXS order, and --axes {axes} is not: the output is a plain "
            "TIFF that records the axes (pixel sizes kept; ImageJ's z-spacing, unit, frame interval, LUTs and "
            "display settings not)."
        )
    return info


def _check_photometric(info: TiffInfo, page: Any, compression: str, imagej: bool) -> None:
    """Refuse what the output could not show as the input shows it; note what keeps it (palette, alpha, CMYK)."""
    name = info.photometric
    if name == "YCBCR" and compression in JPEG_COMPRESSIONS:
        info.photometric = "RGB"  # tifffile decodes a JPEG's YCbCr to RGB, and RGB is what is written
    elif name == "PALETTE":
        # ImageJ saves an 8-bit image with a colour LUT (and 8-bit composites) as palette TIFFs: their values
        # are intensities, and so are those of any palette that is a ramp; others index distinct colours
        if not (imagej or is_lut(page.colormap)):
            raise InputError(PALETTE_MESSAGE)
        info.colormap = page.colormap
    elif name is not None and name not in KEPT_PHOTOMETRICS:
        raise InputError(
            f"This TIFF stores its pixels as {name} (its photometric interpretation), which the output could "
            "not keep: written as grayscale or RGB the same values would show other colours. Save it as "
            "grayscale or RGB first (Fiji: Image > Type)."
        )
    if name == "RGB":
        info.extrasamples = tuple(int(e) for e in page.extrasamples)
        if info.extrasamples == (0,) and info.axes.endswith("S"):
            # EXTRASAMPLE_UNSPECIFIED: data of another kind, not opacity; deblur() keeps a 4th sample (only a 4th:
            # with 5 or more samples all are deblurred) as alpha
            advice = "" if "C" in info.axes else f" To deblur it as a channel too, pass --axes {info.axes[:-1]}C."
            info.note = (
                "this RGB TIFF's extra sample is unspecified data, not alpha: it is kept as it is, not deblurred."
                + advice
            )
    if name == "SEPARATED":
        # CMYK: four inks, none of them an alpha channel (as a 4th sample of 'S' would be taken): deblurred as
        # channels of their own, and written back as CMYK
        if "S" in info.axes:
            if "C" in info.axes:
                raise InputError(
                    f"A CMYK (separated) TIFF with axes {info.axes}: its inks cannot be channels of their own "
                    "next to C; pass --axes without C."
                )
            info.axes = info.axes.replace("S", "C")
        info.inkset = page.tags.valueof("InkSet")


def write_kwargs(info: TiffInfo) -> dict[str, Any]:
    """``tifffile.imwrite`` keyword arguments reproducing the input's flavour, axes, pixel sizes, photometric
    interpretation and metadata."""
    kw: dict[str, Any] = {}
    if info.compression is not None:
        kw["compression"] = info.compression
    if info.resolution is not None:
        kw["resolution"] = info.resolution
        if info.resolutionunit is not None and info.flavour != "imagej":
            kw["resolutionunit"] = info.resolutionunit
    # From the input's photometric, not from the axes: the output has the input's layout whatever --axes
    # called its dimensions (an RGB image read with --axes YXC is still RGB).
    kw["photometric"] = KEPT_PHOTOMETRICS.get(info.photometric or "", "minisblack")
    if info.colormap is not None:
        kw["colormap"] = info.colormap
    if info.extrasamples:
        kw["extrasamples"] = info.extrasamples
    if info.planarconfig is not None and info.flavour != "imagej":  # ImageJ's own: RGB contiguous, else 1 sample
        kw["planarconfig"] = info.planarconfig
    extratags = []
    if info.inkset is not None:
        extratags.append((332, 3, 1, int(info.inkset), True))  # InkSet
    if extratags:
        kw["extratags"] = extratags
    if info.software is not None:
        kw["software"] = tiff_text(info.software)
    if info.datetime is not None:
        kw["datetime"] = info.datetime
    if info.flavour == "imagej":
        kw["imagej"] = True
        kw["metadata"] = {**info.imagej, "axes": info.axes}
    elif info.flavour == "ome":
        kw["ome"] = True
        kw["metadata"] = {**info.ome_image, **info.ome_sizes, "axes": info.axes}
    else:
        # tifffile's "shaped" description keeps the original letters so the file reads back the same; the
        # input's own description comes first (the one other readers show), tifffile's second, as it writes
        # them for a description given next to metadata.
        kw["metadata"] = {"axes": info.file_axes, **info.shaped}
        if info.description is not None:
            kw["description"] = tiff_text(info.description)
    return kw


def restore_description(path: Path, info: TiffInfo) -> None:
    """Put the input's ImageJ description back into the written file ``path`` (or, with --axes that change
    its dimensions, one written from its kept keys): tifffile writes its own from the keys it knows, drops the
    display mode (composite) of a palette (8-bit LUT) image, and rounds or re-escapes values. Skipped,
    keeping tifffile's, where it cannot be written (a classic TIFF past 4 GiB)."""
    import tifffile

    if info.imagej_description is None:
        return
    try:
        written = tifffile.tiffcomment(path)
        if isinstance(written, bytes):
            written = written.decode("latin-1")
        if written.rstrip("\x00") != info.imagej_description:
            tifffile.tiffcomment(path, tiff_text(info.imagej_description, always_bytes=True))
    except (ValueError, OSError) as exc:
        # the output is still right (its pixels, axes and tifffile's own ImageJ keys); what it lacks is said
        print(
            f"note: the output keeps tifffile's ImageJ description, not the input's (which could not be written "
            f"back: {exc}); ImageJ settings tifffile does not write (display ranges, LUT mode) are not in it.",
            file=sys.stderr,
        )


def restore_planes(path: Path, info: TiffInfo) -> None:
    """Put the input's OME Plane attributes (each plane's DeltaT, exposure and stage position) into the
    written OME-TIFF ``path``: tifffile writes Plane elements only in its own plane order, so they are added
    to its OME-XML here, each with the TheC/TheZ/TheT it had. Skipped where the written file already has
    Planes, has a plane the input did not, or its description cannot be rewritten (a classic TIFF past 4 GiB)."""
    from xml.sax.saxutils import quoteattr

    import tifffile

    if info.flavour != "ome" or not info.ome_planes:
        return
    try:
        xml = tifffile.tiffcomment(path)
        if isinstance(xml, bytes):
            xml = xml.decode("utf-8")
        end = xml.find("</Pixels>")
        if end < 0 or "<Plane " in xml[:end]:
            _note_planes_left_out("the written OME-XML has Plane elements of its own")
            return
        pixels = re.search(r"<Pixels [^>]*>", xml[:end])
        sizes = {a: int(v) for a, v in re.findall(r'\bSize([CZT])="(\d+)"', pixels.group(0))} if pixels else {}
        samples = re.search(r'SamplesPerPixel="(\d+)"', xml[:end])
        sizes["C"] = sizes.get("C", 1) // (int(samples.group(1)) if samples else 1)
        if any(key[i] >= sizes.get(a, 1) for key in info.ome_planes for i, a in enumerate("CZT")):
            _note_planes_left_out("the output's planes are not the input's (--axes changed them)")
            return
        elements = "".join(
            f'<Plane TheC="{c}" TheZ="{z}" TheT="{t}"'
            + "".join(f" {k}={quoteattr(v)}" for k, v in attributes.items())
            + "/>"
            for (c, z, t), attributes in info.ome_planes.items()
        )
        tifffile.tiffcomment(path, tiff_text(xml[:end] + elements + xml[end:], always_bytes=True))
    except (ValueError, OSError) as exc:
        _note_planes_left_out(f"the description could not be written back: {exc}")


def _note_planes_left_out(why: str) -> None:
    """Say that the input's OME Plane attributes are not in the output (the README promises a note for
    metadata that is not kept)."""
    print(
        f"note: the input's per-plane OME metadata (DeltaT, exposure times, stage positions) is not in the output: "
        f"{why}.",
        file=sys.stderr,
    )


def tiff_text(text: str, always_bytes: bool = False) -> str | bytes:
    """``text`` as tifffile writes it into an ASCII tag: as it is if it is ASCII (tifffile refuses other
    strings, after all the work), else its UTF-8 bytes, which tifffile reads back as the same text."""
    return text.encode("utf-8") if always_bytes or not text.isascii() else text


def read_series(series: Any, path: Path):
    """The pixels of a tifffile series, with one InputError for files tifffile can open but not decode
    (truncated files, compressions that need the optional ``imagecodecs`` package)."""
    try:
        return series.asarray()
    except (ValueError, OSError, RuntimeError) as exc:
        hint = " (install it: pip install imagecodecs)" if "imagecodecs" in str(exc) else ""
        raise InputError(f"Cannot read the pixels of {str(path)!r}: {exc}{hint}") from None


def note_other_series(tif: Any, path: Path) -> None:
    """Say on stderr that only the first series is used when a TIFF holds several (images of other sizes,
    thumbnails, label images): never drop pages silently."""
    if len(tif.series) > 1:
        others = ", ".join(f"{tuple(s.shape)}" for s in tif.series[1:4]) + (" ..." if len(tif.series) > 4 else "")
        print(
            f"note: {path.name} holds {len(tif.series)} image series; only the first, {tuple(tif.series[0].shape)}, "
            f"is used (the others: {others}). Save each image as its own file to process it.",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------------------- checks
def same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` are the same file (also via symlinks, hard links, ``..``)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist yet
        return False


def check_paths(inp: Path, out: Path, force: bool) -> None:
    """InputError if the input is missing, the output would overwrite the input, or exists without --force."""
    if not inp.is_file():
        raise InputError(f"Input file {str(inp)!r} does not exist (or is not a file).")
    from .photo_files import OUTPUT_FORMATS, is_tiff

    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(
            f"Output {str(out)!r} must end in .tif or .tiff, or for a photo .png, .jpg or .jpeg (the extension "
            "says the format)."
        )
    if OUTPUT_FORMATS[out.suffix.lower()] != "TIFF" and is_tiff(inp):
        raise InputError(
            f"Output {str(out)!r}: a TIFF input is written as TIFF (only TIFF keeps its axes, pixel sizes and "
            "metadata); give an output ending in .tif or .tiff."
        )
    if same_file(inp, out):
        raise InputError(
            f"Output {str(out)!r} is the input file; choose a different output path (the input is never overwritten)."
        )
    if out.exists() and not force:
        raise InputError(f"Output {str(out)!r} already exists; pass --force to overwrite it.")
    if out.is_dir():
        endings = ".tif or .tiff" if is_tiff(inp) else ".png, .jpg, .jpeg, .tif or .tiff"
        raise InputError(f"Output {str(out)!r} is a directory; give a file name ending in {endings}.")
    check_writable(out)  # folder exists and is writable: before the work, not after it


# ---------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    """Deblur ``args.input`` into ``args.output``; returns the exit status. SIGTERM (a cluster's time limit,
    ``kill``) and SIGHUP (a closed terminal) stop it as Ctrl-C does: the temporary output is removed, a message
    says so, and the exit status is 128 + the signal's number (143, 129)."""
    from . import PROG
    from .signals import Terminated, terminate_like_ctrl_c

    try:
        with terminate_like_ctrl_c():
            info = _deblur_file(args)
    except Terminated as exc:
        print(f"\n{PROG}: stopped by {exc.name}; no output was written.", file=sys.stderr)
        return exc.exit_status
    if not args.quiet:  # the output is in place: a signal from here on finds nothing to clean up
        print(f"wrote {args.output} ({' x '.join(map(str, info.shape))} {info.axes}, {info.dtype})", file=sys.stderr)
    return 0


def _deblur_file(args: argparse.Namespace) -> Any:
    """The work of :func:`run`: read, deblur, write atomically; returns what was read of the input (a
    :class:`TiffInfo`, or a photo's :class:`~.photo_files.PhotoInfo`)."""
    import tifffile

    from ..model_file import load_model
    from .photo_files import is_tiff
    from .progress import ProgressBar

    inp, out = Path(args.input), Path(args.output)
    check_paths(inp, out, args.force)
    model = load_model(args.model, device="cpu")
    if not is_tiff(inp):
        return _deblur_photo(args, inp, out, model)

    with tifffile_log_in_errors():
        try:
            tif = tifffile.TiffFile(inp)
        except (tifffile.TiffFileError, ValueError) as exc:
            raise InputError(f"Cannot read {str(inp)!r} as TIFF: {exc}") from None
        try:
            info = read_tiff_info(tif, args.axes)
        except BaseException:
            tif.close()
            raise
    with tif:  # open until the end: the lazy path reads its pages as it goes
        series = tif.series[0]
        pages = None
        # The lazy path writes page by page, so the planes must be the trailing YX (or YXS) axes.
        trailing_planes = info.axes.endswith(("YX", "YXS"))
        if series.nbytes > LARGE_FILE_BYTES and trailing_planes:
            pages = lazy_pages(tif, inp)
        data = pages if pages is not None else read_series(series, inp)
        if data.shape != info.shape:  # tifffile squeezes the same way for series and asarray; be sure
            raise InputError(f"Unexpected data shape {data.shape} for axes {info.axes!r}; pass --axes.")
        _check_before_notes(data, info.axes)
        note_other_series(tif, inp)  # notes are not progress: -q keeps them, as finetune's -q does
        if info.note:
            print(f"note: {info.note}", file=sys.stderr)

        kw = write_kwargs(info)
        if pages is None:
            _deblur_and_write(args, model, data, info.axes, out, lambda tmp, result: write_tiff(tmp, result, info, kw))
            return info
        bar = ProgressBar("deblur", enabled=not args.quiet)
        try:
            _deblur_lazy(pages, info, _deblur_common(args, model, info.axes), out, kw, bar)
        finally:
            bar.close()
    return info


@contextlib.contextmanager
def tifffile_log_in_errors() -> Iterator[None]:
    """While a TIFF is opened and its axes read: what tifffile logs (its warnings about a damaged file,
    "invalid offset to first page") is added to the InputError that follows, in one line, instead of being
    printed raw on its own line before it; where nothing fails, or another error does, it is printed as notes,
    as before but worded as the command's other notes."""
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # tifffile starts a message with the object it is about (<tifffile.TiffPages @123>): not for a user
            records.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))

    logger = logging.getLogger("tifffile")
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    in_the_error = False
    try:
        yield
    except InputError as exc:
        if not records:
            raise
        in_the_error = True
        raise InputError(f"{exc} (tifffile: {'; '.join(dict.fromkeys(records))})") from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        # said once: in the InputError, else as notes (where nothing failed, or another error did: tifffile's
        # own on a damaged file, a bug, whose diagnosis is not to be lost with it)
        if not in_the_error:
            for message in dict.fromkeys(records):
                print(f"note: tifffile: {message}", file=sys.stderr)


def _check_before_notes(pixels: Any, axes: str) -> None:
    """The checks of deblur() that need no pixels read (the dtype, the planes' size), made before the command
    prints its notes about the output: an input that cannot be deblurred gets its one error, not first notes
    about how an output that will not be written would be written."""
    from ..inference.deblur import check_plane_size
    from ..normalization import check_dtype

    check_dtype(pixels.dtype)
    check_plane_size(tuple(pixels.shape), axes)


def _deblur_and_write(
    args: argparse.Namespace, model: Any, pixels: Any, axes: str, out: Path, write: Callable[[Path, Any], None]
) -> None:
    """deblur() of in-memory ``pixels`` with the command's flags and a progress bar, then ``write(tmp, result)``
    into the atomic temporary file of ``out``, flushed to the disk before it is renamed into place: the one
    tail of the TIFF and the photo paths."""
    from ..atomic_files import atomic_write
    from ..inference.deblur import deblur
    from .progress import ProgressBar

    bar = ProgressBar("deblur", enabled=not args.quiet)
    try:
        result = deblur(pixels, progress=bar, **_deblur_common(args, model, axes))
        with atomic_write(out) as tmp:
            write(tmp, result)
            _fsync(tmp)
    finally:
        bar.close()


def _deblur_common(args: argparse.Namespace, model: Any, axes: str) -> dict[str, Any]:
    """The keyword arguments of deblur() that the command's flags set."""
    return dict(
        model=model,
        axes=axes,
        tile_size=args.tile_size,
        overlap=args.overlap,
        device=args.device,
        context_padding=args.context_padding,
        self_ensemble=args.self_ensemble,
        percentiles=args.percentiles,
        normalize=args.normalize,
    )


def _deblur_photo(args: argparse.Namespace, inp: Path, out: Path, model: Any) -> Any:
    """:func:`_deblur_file` for a photo (PNG, JPEG, ...): read (upright), check that the output's format holds
    it, deblur, write atomically in the format of the output's extension."""
    import numpy as np

    from . import photo_files

    data, info = photo_files.read_photo(inp, args.axes)
    photo_files.check_output(info, out)  # before the work
    pixels, axes, alpha = photo_files.without_grey_alpha(data, info)
    _check_before_notes(pixels, axes)
    for note in info.notes:  # notes are not progress: -q keeps them
        print(f"note: {note}", file=sys.stderr)

    def write(tmp: Path, result: Any) -> None:
        if alpha is not None:  # the grey+alpha photo's alpha, kept as it was
            result = np.stack((result, alpha), axis=-1)
        photo_files.write_photo(tmp, photo_files.clip_to_palette(result, info), info, out)

    _deblur_and_write(args, model, pixels, axes, out, write)
    return info


def write_tiff(tmp: Path, result: Any, info: TiffInfo, kw: dict[str, Any]) -> None:
    """Write ``result`` to the temporary file ``tmp`` with the ``tifffile.imwrite`` keywords ``kw``
    (:func:`write_kwargs`), then put back what tifffile does not write itself."""
    import tifffile

    with open(tmp, "wb") as fh:
        tifffile.imwrite(fh, result, **kw)
    restore_description(tmp, info)
    restore_planes(tmp, info)


def lazy_pages(tif: Any, path: Path, raw_memmap: bool = False) -> Any:
    """The first series of the open ``tifffile.TiffFile`` ``tif`` (of ``path``) as a lazy array that reads only
    the regions asked for: a memory map where its pixels are stored uncompressed in one piece (wrapped for
    dask in :class:`MemmapPages`, unless ``raw_memmap``), else a :class:`TiffPages` reader that decodes the
    pages a region needs, one at a time (compressed, tiled or scattered pages; it keeps ``tif`` open); None
    where the series' pages do not tile its shape (then it is read whole)."""
    import tifffile

    series = tif.series[0]
    if series.dataoffset is not None:  # uncompressed and contiguous: mapped, the fastest way to read it
        try:
            mapped = tifffile.memmap(path, series=0, mode="r")
        except ValueError:
            pass
        else:
            return mapped if raw_memmap else MemmapPages(mapped)
    return TiffPages.of(tif)


class MemmapPages:
    """A read-only memory-mapped array as dask should see it: shape, dtype and region reads, nothing else.

    ``da.from_array`` copies an ``np.memmap`` whole into memory (dask >= 2024.12 calls its ``.copy()``; dask
    issue #11850), which is the very thing the lazy path exists to avoid; and it would tokenize one by hashing
    its bytes. This wrapper has no ``.copy`` and a token made of the file's identity.
    """

    #: the size and shape of one page of the file, in elements: see TiffPages.page_size (not used for a memory
    #: map, whose output is itself a memory map)
    page_size = page_shape = None

    def __init__(self, array: Any) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        return np.array(self._array[key])  # a copy of the region only, detached from the file mapping

    def __dask_tokenize__(self) -> tuple:
        filename = getattr(self._array, "filename", None)
        stamp = os.stat(filename).st_mtime_ns if filename else id(self._array)
        return (
            "napari-deblurgan-memmap",
            str(filename),
            getattr(self._array, "offset", 0),
            self.shape,
            str(self.dtype),
            stamp,
        )


#: tifffile's codes of the compressions whose strips or tiles a region read of :class:`TiffPages` decodes one by
#: one (only those the region covers): none, LZW, deflate (both codes), PackBits, LZMA and Zstandard - lossless
#: byte codecs that tifffile decodes per segment through one function (``TiffPage.decode``), exactly as its own
#: whole-page read does. JPEG (a whole NDPI strip, JPEG tables), image codecs (PNG, JPEG 2000, WebP...), CCITT,
#: EER and others are left to the whole-page read.
_SEGMENT_COMPRESSIONS = frozenset({1, 5, 8, 32773, 32946, 34925, 50000})


@dataclass(frozen=True)
class _PageLayout:
    """Where a page's pixels lie, for a region read of part of it (:meth:`TiffPages._page_layout`).

    ``shaped``: tifffile's normalised page shape (separate samples, depth, length, width, contiguous samples),
    depth 1. ``tail``: the page's own axes as they end ``TiffPages.page_shape`` (YX, YXS or SYX, ``S`` only
    for more than one sample); the axes before them have length 1. ``segment``: rows and columns of one
    strip or tile; ``grid``: strips or tiles down and across one sample plane. ``contiguous``: uncompressed,
    unpredicted pixels in one piece in ``shaped`` order from the page's first data offset (tifffile reads such
    a page with one read, not per strip), whose rows are read as bytes, without any decode."""

    shaped: tuple[int, int, int, int, int]
    tail: str
    segment: tuple[int, int]
    grid: tuple[int, int]
    contiguous: bool


class TiffPages:
    """The first series of an open TIFF as a lazy array, read page by page through tifffile: a region read
    decodes only the pages it covers, one at a time, so memory follows a page, not the file, whatever the
    compression. Within a page, a region that needs only some of its strips or tiles reads and decodes just
    those, through tifffile's own per-segment decoder (``TiffPage.decode``), and an uncompressed page stored in
    one piece has only the region's rows read (:meth:`_page_region`); where that does not apply (JPEG, volumes,
    bit order, a page read whole...) the page is decoded whole by tifffile (``series.asarray(key=i)``) and
    sliced - the same pixels either way. For data that cannot be memory-mapped (zlib, LZW, ... or pages
    scattered through the file); the reader keeps ``tif`` open and closes it with :meth:`close` (or when it is
    garbage-collected)."""

    def __init__(self, tif: Any, lead_ndim: int) -> None:
        import threading

        series = tif.series[0]
        self._tif, self._series, self._lock = tif, series, threading.Lock()
        self.shape, self.dtype, self.ndim = tuple(series.shape), series.dtype, len(series.shape)
        self._lead = self.shape[:lead_ndim]  # one page per index of these axes, in C order, as asarray stacks them
        self._page_shape = self.page_shape = self.shape[lead_ndim:]
        #: elements in one page of the file (the unit a compressed output is streamed in where tifffile writes
        #: the output's pages as the input's: _written_page_size)
        self.page_size = math.prod(self._page_shape)

    @classmethod
    def of(cls, tif: Any) -> TiffPages | None:
        """A reader of ``tif``'s first series, or None if its pages are not the trailing axes of its shape
        (tifffile's squeezed shape: the page's own axes of length 1 may be gone, which changes nothing)."""
        series = tif.series[0]
        shape = tuple(series.shape)
        try:
            count, page_size = len(series), math.prod(series.keyframe.shape)
        except (TypeError, AttributeError, ValueError):
            return None
        if count * page_size != math.prod(shape) or page_size == 0 or getattr(series, "transform", None):
            return None
        for lead_ndim in range(len(shape) + 1):
            if math.prod(shape[lead_ndim:]) == page_size:
                return cls(tif, lead_ndim)
        return None

    def _cannot_read(self, exc: Exception) -> InputError:
        hint = " (install it: pip install imagecodecs)" if "imagecodecs" in str(exc) else ""
        return InputError(f"Cannot read the pixels of {self._tif.filehandle.path!r}: {exc}{hint}")

    def _page(self, index: int) -> Any:
        """Page ``index`` (C order over the leading axes) in the page axes' shape; zeros for a missing page,
        as tifffile's whole-series read gives them."""
        import numpy as np

        with self._lock:  # one file handle: its seeks and reads must not interleave
            try:
                if self._series[index] is None:
                    return np.zeros(self._page_shape, self.dtype)
                return self._series.asarray(key=index).reshape(self._page_shape)
            except (ValueError, OSError, RuntimeError) as exc:  # as read_series says it of a whole read
                raise self._cannot_read(exc) from None

    def _page_layout(self, keyframe: Any) -> _PageLayout | None:
        """How a page of ``keyframe`` is stored, where a region of it can be read strip by strip (or tile by
        tile, or row by row) with the very pixels tifffile's whole-page read gives; None where it cannot be
        told so for certain (then the page is read whole): only the plain layouts are taken - 8 to 64 bits per
        sample, integers or floats, no chroma subsampling, no reversed bit order, a 2D page (no depth), one
        of ``_SEGMENT_COMPRESSIONS`` with no predictor, the horizontal one or the floating-point one."""
        try:
            sep, depth, length, width, samples = (int(n) for n in keyframe.shaped)
            contiguous = bool(keyframe.is_contiguous)
            plain = (
                keyframe.dtype is not None
                and keyframe.dtype == self.dtype
                and keyframe.compression in _SEGMENT_COMPRESSIONS
                and keyframe.predictor in (1, 2, 3)
                and keyframe.fillorder == 1
                and keyframe.sampleformat in (1, 2, 3)
                and keyframe.bitspersample in (8, 16, 32, 64)
                and not keyframe.is_subsampled
                and depth == 1
                and (not keyframe.is_tiled or keyframe.tiledepth == 1)
                and min(sep, length, width, samples) >= 1
                and (sep == 1 or samples == 1)
            )
            if not plain:
                return None
            # tifffile reads a contiguous page in one piece and unpredicts it whole: only an unpredicted one
            # reads the same row by row
            if contiguous and keyframe.predictor != 1:
                return None
            if keyframe.is_tiled:
                segment = (int(keyframe.tilelength), int(keyframe.tilewidth))
            else:
                segment = (int(keyframe.rowsperstrip), width)  # tifffile's own: at most the page's length
        except (AttributeError, TypeError, ValueError):  # a tag that is not there or not a number
            return None
        if min(segment) < 1:
            return None
        tail, tail_shape = "YX", (length, width)
        if samples > 1:
            tail, tail_shape = "YXS", (length, width, samples)
        elif sep > 1:
            tail, tail_shape = "SYX", (sep, length, width)
        # the page as the series shapes it: its own axes last, any others of length 1 (then a page's pixels, in
        # C order, are tifffile's shaped ones: a region of them is a region of the page)
        shape = self._page_shape
        if tuple(shape[len(shape) - len(tail) :]) != tail_shape or math.prod(shape[: len(shape) - len(tail)]) != 1:
            return None
        grid = (-(-length // segment[0]), -(-width // segment[1]))
        return _PageLayout((sep, depth, length, width, samples), tail, segment, grid, contiguous)

    def region_share(self, rows: tuple[int, int], cols: tuple[int, int], samples_read: int | None = None) -> float:
        """The share of a page's stored bytes that reading rows ``rows`` x columns ``cols`` of it decodes (0-1],
        worked out from the first page's layout, without reading pixels: the strips or tiles the region covers
        over all of them (its rows, uncompressed in one piece), or 1.0 where a region read decodes the whole
        page (:meth:`_page_layout`). ``samples_read``: how many of a planar page's sample planes the read
        takes (None: all; contiguous samples always come together). Training weighs it against decoding a
        plane once and keeping it (``data.pairs._Source._read``)."""
        with self._lock:
            try:
                layout = self._page_layout(self._series.keyframe)
            except (ValueError, OSError, RuntimeError, AttributeError):
                layout = None
        if layout is None:
            return 1.0
        sep, _, length, width, _ = layout.shaped
        planes = 1.0 if samples_read is None else min(samples_read, sep) / sep  # of the page's sample planes
        y0, y1 = max(0, rows[0]), min(length, rows[1])
        x0, x1 = max(0, cols[0]), min(width, cols[1])
        if y1 <= y0 or x1 <= x0:
            return 0.0
        if layout.contiguous:
            return planes * (y1 - y0) / length
        (seg_rows, seg_cols), (down, across) = layout.segment, layout.grid
        needed = ((y1 - 1) // seg_rows - y0 // seg_rows + 1) * ((x1 - 1) // seg_cols - x0 // seg_cols + 1)
        return planes * needed / (down * across)

    def _page_region(self, index: int, within: tuple) -> Any:
        """``page[within]`` of page ``index``: where the region needs only some of the page's strips or tiles
        (or, uncompressed in one piece, some of its rows), only those are read and decoded; else the whole
        page (:meth:`_page`). Zeros (a read-only view) for a missing page."""
        import numpy as np

        with self._lock:  # one file handle: its seeks and reads must not interleave
            try:
                page = self._series[index]
                if page is None:
                    return np.broadcast_to(np.zeros((), self.dtype), self._page_shape)[within]
                # worked out per read, not kept by page: a few of tifffile's (cached) attributes, and a page
                # object tifffile drops and makes again would not keep its identity
                layout = self._page_layout(page.keyframe)
            except (ValueError, OSError, RuntimeError) as exc:
                raise self._cannot_read(exc) from None
        if layout is None:
            return self._page(index)[within]
        # the region's bounds along the page's own axes (rows, columns and, for separate samples, sample
        # planes): what is read; the key taken relative to those bounds then picks the region out of it
        sep, _, length, width, samples = layout.shaped
        offset = len(self._page_shape) - len(layout.tail)
        bounds = {"S": (0, sep), "Y": (0, length), "X": (0, width)}
        relative = list(within)
        for i, axis in enumerate(layout.tail):
            if axis == "S" and samples > 1:
                continue  # contiguous samples are always read whole: they come together in every pixel
            picked = range(self._page_shape[offset + i])[within[offset + i]]
            if isinstance(picked, int):
                bounds[axis] = (picked, picked + 1)
                relative[offset + i] = 0
            elif len(picked) == 0:
                return self._page(index)[within]  # an empty region: no fast path needed
            else:
                lo, hi = min(picked), max(picked) + 1
                stop = picked.stop - lo
                bounds[axis] = (lo, hi)
                relative[offset + i] = slice(picked.start - lo, stop if stop >= 0 else None, picked.step)
        try:
            block = self._read_block(page, layout, bounds)
        except (ValueError, OSError, RuntimeError) as exc:  # as _page says it
            raise self._cannot_read(exc) from None
        except (TypeError, AttributeError, KeyError, IndexError):
            # the segment reads lean on tifffile's per-segment decoder and a private attribute or two
            # (``_fullsize``, ``_dtype``): where another tifffile version spells them otherwise, the page is
            # read whole, as before this fast path existed - slower, the same pixels
            block = None
        if block is None:  # the region needs the whole page
            return self._page(index)[within]
        (s0, s1), (y0, y1), (x0, x1) = bounds["S"], bounds["Y"], bounds["X"]
        # (sample planes, rows, columns, contiguous samples) as the page's own axes lay them out
        if layout.tail == "YX":
            block = block.reshape(y1 - y0, x1 - x0)
        elif layout.tail == "YXS":
            block = block.reshape(y1 - y0, x1 - x0, samples)
        else:
            block = block.reshape(s1 - s0, y1 - y0, x1 - x0)
        return block.reshape((1,) * offset + block.shape)[tuple(relative)]

    def _read_block(self, page: Any, layout: _PageLayout, bounds: dict[str, tuple[int, int]]) -> Any:
        """The pixels of ``page`` within ``bounds`` (sample planes, rows, columns) as ``(planes, rows,
        columns, samples)``, read and decoded as tifffile does it for the whole page, but only for the strips or
        tiles (or rows) they need; None where they need them all (the whole-page read is as cheap, and keeps
        tifffile's threads)."""
        import numpy as np

        sep, _, length, width, samples = layout.shaped
        (s0, s1), (y0, y1), (x0, x1) = bounds["S"], bounds["Y"], bounds["X"]
        keyframe = page.keyframe
        fh = self._tif.filehandle
        if layout.contiguous:
            # uncompressed in one piece (tifffile reads it with one read from the first offset): rows s, y0..y1
            # of each sample plane, all columns (a row's columns are next to each other in the file)
            if (s0, y0, s1, y1) == (0, 0, sep, length):
                return None
            typecode = keyframe.parent.byteorder + keyframe._dtype.char
            itemsize = np.dtype(typecode).itemsize
            row = width * samples
            block = np.empty((s1 - s0, y1 - y0, width, samples), self.dtype)
            with self._lock:
                if fh.closed:
                    return None
                start = int(page.dataoffsets[0])
                for s in range(s0, s1):
                    fh.seek(start + (s * length + y0) * row * itemsize)
                    block[s - s0] = fh.read_array(typecode, (y1 - y0) * row).reshape(y1 - y0, width, samples)
            return block[:, :, x0:x1]
        seg_rows, seg_cols = layout.segment
        down, across = layout.grid
        wanted = [
            s * down * across + r * across + c  # tifffile's segment order: sample plane, then row-major
            for s in range(s0, s1)
            for r in range((y0 // seg_rows), (y1 - 1) // seg_rows + 1)
            for c in range((x0 // seg_cols), (x1 - 1) // seg_cols + 1)
        ]
        if len(wanted) == sep * down * across:
            return None
        with self._lock:
            offsets, counts = page.dataoffsets, page.databytecounts
            if fh.closed or len(offsets) < sep * down * across or len(counts) < sep * down * across:
                return None  # a damaged page: tifffile's whole-page read says what it says of it
            decode = keyframe.decode  # built (and cached by tifffile) on first use: under the lock too
            segments = list(
                fh.read_segments([offsets[i] for i in wanted], [counts[i] for i in wanted], indices=wanted, sort=True)
            )
        # decoded outside the lock (other threads read meanwhile), each placed as TiffPage.asarray places it
        block = np.empty((s1 - s0, y1 - y0, x1 - x0, samples), self.dtype)
        for data, segment_index in segments:
            segment, (s, _, h, w, _), shape = decode(data, segment_index, _fullsize=False)
            top, bottom = max(h, y0), min(h + shape[1], y1, length)
            left, right = max(w, x0), min(w + shape[2], x1, width)
            target = block[s - s0, top - y0 : bottom - y0, left - x0 : right - x0]
            if segment is None:  # a strip or tile not written: tifffile fills it with the page's nodata
                target[...] = keyframe.nodata
            else:
                target[...] = segment[0, top - h : bottom - h, left - w : right - w]
        return block

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or not all(isinstance(k, (slice, int, np.integer)) for k in key):
            raise IndexError(f"TiffPages takes integers and slices, one per axis (of {self.ndim}); got {key!r}")
        lead, within = key[: len(self._lead)], key[len(self._lead) :]
        ranges = [range(n)[k] for k, n in zip(lead, self._lead, strict=True)]
        kept = [len(r) for r in ranges if isinstance(r, range)]
        picks = [r if isinstance(r, range) else (r,) for r in ranges]
        planes = [
            self._page_region(int(np.ravel_multi_index(index, self._lead)) if self._lead else 0, within)
            for index in itertools.product(*picks)
        ]
        if not planes:  # an empty selection along a leading axis
            return np.empty((*kept, *np.empty(self._page_shape, self.dtype)[within].shape), self.dtype)
        out = np.empty((len(planes), *planes[0].shape), self.dtype)
        for i, plane in enumerate(planes):
            out[i] = plane
        return out.reshape((*kept, *planes[0].shape))  # a tuple: all-integer keys give shape ()

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        self._tif.close()

    def __dask_tokenize__(self) -> tuple:
        filename = self._tif.filehandle.path
        return ("napari-deblurgan-tiffpages", filename, os.stat(filename).st_mtime_ns, self.shape, str(self.dtype))


def _deblur_lazy(pages: Any, info: TiffInfo, common: dict, out: Path, kw: dict, bar: Any) -> None:
    """Lazy input (:func:`lazy_pages`) -> dask -> deblur lazily -> each block computed once and written as it is
    done: into a memory-mapped output, or, for a compressed output, as a stream of compressed pages (bounded
    memory: one block at a time)."""
    import tempfile

    import dask.array as da
    import numpy as np
    import tifffile

    from ..atomic_files import atomic_write
    from ..inference.deblur import deblur

    # One chunk per page, or per plane with all its channels for a joint (multichannel) model, which needs
    # them together. A single-channel model gets one channel per chunk: with C before Z or T in the file
    # (CZYX), a chunk of all channels would hold the pages of every channel.
    page_axes = "YXS" if info.axes.endswith("YXS") else "YX"
    keep_whole = set(page_axes) | ({"C", "S"} if common["model"].channel_mode == "joint" else {"S"})
    chunks = tuple(-1 if a in keep_whole else 1 for a in info.axes)
    # meta given: otherwise dask reads a block to guess the array type
    result = deblur(da.from_array(pages, chunks=chunks, meta=np.empty((0,) * pages.ndim, pages.dtype)), **common)
    page_count = math.prod(info.shape[: len(info.axes) - len(page_axes)])
    page_size = math.prod(info.shape[len(info.axes) - len(page_axes) :])
    bounds = [np.cumsum((0, *sizes)) for sizes in result.chunks]

    def blocks() -> Any:
        """(region, block) of each block of the result, computed one at a time in the order of the block grid
        (C order), the progress bar moved as each is handed on (written)."""
        done = 0
        for index in np.ndindex(*result.numblocks):
            region = tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index, strict=True))
            block = np.asarray(result.blocks[index].compute())
            yield region, block
            done += block.size // page_size
            bar(done, page_count)

    def fill(target: Any) -> None:
        for region, block in blocks():
            target[region] = block

    # An uncompressed output is written through a memory map of the output, not as a stream of pages in file
    # order: the pages of one block need not be neighbours in the file (a joint model's channels lie a whole
    # channel stack apart when C comes before Z, as in CZYX), and a stream had to compute such a block again
    # for each of its pages (C times the work) or hold its other pages until their turn (most of the output).
    # A compressed output (the input's lossless compression, kept) cannot be mapped: it is streamed, page by
    # page in file order, through the same writer as the in-memory path (write_tiff) - straight from the
    # blocks where they come in file order (every block but such a joint CZYX one), else from an uncompressed
    # scratch map of the output that the blocks are written into first (disk, not memory).
    with atomic_write(out) as tmp:
        if "compression" not in kw:
            with _mapped(tifffile.memmap(tmp, shape=info.shape, dtype=info.dtype, **kw)) as target:
                reserve_disk_space(tmp)
                fill(target)
            restore_description(tmp, info)
            restore_planes(tmp, info)
        else:
            # what tifffile takes per item of a stream: one page of the OUTPUT, as it will write it with kw (the
            # input's page, for the layouts write_kwargs keeps; None where that cannot be told)
            unit = _written_page_size(info, kw, pages.page_shape)
            # tifffile's encoder holds buffersize bytes of strips at a time (512 MiB by default: the whole
            # output of a smaller file): one page's worth keeps the stream as small as the blocks
            itemsize = np.dtype(info.dtype).itemsize
            stream = {
                "shape": info.shape,
                "dtype": info.dtype,
                "buffersize": (unit or pages.page_size or page_size) * itemsize,
            }
            if unit is not None and _in_file_order(result.numblocks, info.shape):
                write_tiff(tmp, _split_pages((block for _, block in blocks()), unit), info, {**kw, **stream})
            else:
                # blocks out of file order, or output pages of unknown size: the whole output in a scratch map
                # first, handed to tifffile as an array (it cuts its own pages); named as atomic_write names its
                # temporary files: a killed run's one is removed as stale too
                fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=tmp.parent)
                os.close(fd)
                try:
                    _write_through_scratch(
                        name, fill, info, lambda array: write_tiff(tmp, array, info, {**kw, **stream})
                    )
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
        _fsync(tmp)  # the header imwrite wrote, and the pages flush() (or the stream) wrote


def reserve_disk_space(path: str | os.PathLike[str]) -> None:
    """Allocate the disk blocks of a file that is about to be filled through a memory map (its size already
    set): a map of a sparse file gets its blocks only as its pages are written, and on a full disk such a write
    kills the process with SIGBUS, mid-run and without a message. Allocated up front, a full disk (or quota)
    is an OSError now, before any work, which ``atomic_write`` says in words. Where the platform or the file
    system cannot allocate (no ``posix_fallocate``, EOPNOTSUPP, EINVAL) the map stays sparse, as before."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _mapped(array: Any) -> Any:
    """``array`` (a ``numpy.memmap``) for the body; then flushed and unmapped, also when the body fails, so
    that no map of its file is left when the file is removed or renamed (Windows refuses to delete a mapped
    file). An error's traceback holds the frames that used the array (``fill(target)``...): their references
    are dropped first (``traceback.clear_frames``), as nothing may read a closed map."""
    import traceback

    try:
        yield array
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the frames below this one, done with: not the running ones
        raise
    finally:
        mapping = getattr(array, "_mmap", None)
        try:
            if mapping is not None and not mapping.closed:
                array.flush()
        finally:
            del array
            if mapping is not None:
                mapping.close()


def _written_page_size(info: TiffInfo, kw: dict[str, Any], page_shape: Any) -> int | None:
    """Elements in one page of the output as ``tifffile.imwrite`` writes it with ``kw``: found by writing (in
    memory, uncompressed, with the layout's keywords) an image whose leading axes are 1 and whose page axes
    ``page_shape`` are those of one input page; tifffile lays a file's pages out from its trailing axes. None
    where it cannot be told (then the output is written from a scratch map, whole, not as a stream)."""
    import io
    import warnings

    import tifffile

    if not page_shape or tuple(info.shape[len(info.shape) - len(page_shape) :]) != tuple(page_shape):
        return None
    shape = (1,) * (len(info.shape) - len(page_shape)) + tuple(page_shape)
    layout = {
        k: v for k, v in kw.items() if k in ("photometric", "planarconfig", "extrasamples", "colormap", "imagej", "ome")
    }
    if "metadata" in kw:
        layout["metadata"] = {"axes": kw["metadata"]["axes"]}
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tifffile.imwrite(buffer, shape=shape, dtype=info.dtype, **layout)
            buffer.seek(0)
            with tifffile.TiffFile(buffer) as written:
                count, size = len(written.pages), math.prod(written.pages[0].shape)
    except Exception:  # any failure: the scratch path, which needs no page size
        return None
    return size if count * size == math.prod(page_shape) else None


def _write_through_scratch(
    name: str, fill: Callable[[Any], None], info: TiffInfo, write: Callable[[Any], None]
) -> None:
    """``fill`` an uncompressed memory map of the output in the file ``name``, then ``write`` it (the map, as
    an array: tifffile reads it page by page); unmapped before this returns or raises."""
    import numpy as np

    with _mapped(np.memmap(name, dtype=info.dtype, mode="w+", shape=info.shape)) as scratch:
        reserve_disk_space(name)
        fill(scratch)
        write(scratch)


def _in_file_order(numblocks: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a result's blocks, taken in C order and each flattened, run through the image in C (file)
    order: no axis split into blocks after an axis (longer than 1) that each block holds whole."""
    whole_seen = False
    for blocks, size in zip(numblocks, shape, strict=True):
        if blocks > 1 and whole_seen:
            return False
        whole_seen = whole_seen or (blocks == 1 and size > 1)
    return True


def _split_pages(blocks: Any, unit: int) -> Any:
    """The C-order elements of ``blocks`` (arrays, in file order) as flat pieces of ``unit`` elements (one
    page of the file each, as tifffile's writer takes an iterator), whatever the blocks' own sizes."""
    import numpy as np

    rest = None
    for block in blocks:
        flat = np.ascontiguousarray(block).reshape(-1)
        if rest is not None:
            flat = np.concatenate((rest, flat))
        whole = flat.size - flat.size % unit
        for i in range(0, whole, unit):
            yield flat[i : i + unit]
        rest = flat[whole:] if whole < flat.size else None
    if rest is not None:
        raise ValueError(f"the blocks hold {rest.size} elements past the last whole page of {unit}")


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk before it is renamed into place."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())

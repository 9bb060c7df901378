"""Region reads of a compressed TIFF stack: crops per second through the CLI's lazy reader (``TiffPages``), side
by side in one run.

Training on a stack over ``finetune``'s in-memory limit reads random crops (128 px plus the synthetic-blur
margin) through ``TiffPages``; a page too big for the decoded-plane cache is read per crop. This writes a stack
of ``--pages`` pages of ``--side`` x ``--side`` uint16 (smooth cells plus noise, as microscopy compresses) with
``--compression`` and tifffile's default strips (~256 KiB each: 32 rows of 4096 uint16), then prints, for the
same random ``--crop`` px crops:

* ``whole page``: each crop cut from its page decoded whole (tifffile's ``series.asarray(key=i)``, as every
  region read did before strip reads; tifffile decodes a page's strips on several threads);
* ``strips``: ``TiffPages[region]``, which reads and decodes only the strips the crop covers;

each as the median crops/s over ``--rounds`` rounds (interleaved, so that a shared machine's drift hits both
alike), and their ratio. The crops of both are checked to be the same bytes.

    python benchmarks/bench_tiff_reads.py
    python benchmarks/bench_tiff_reads.py --side 2048 --compression lzw --json tiff_reads.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_deblurgan.cli import positive_int


def write_stack(path: Path, pages: int, side: int, compression: str, seed: int = 0) -> None:
    """Smooth blobs plus Poisson-like noise (uint16; ``seed``: the noise's): compresses like a fluorescence image,
    not like zeros."""
    import tifffile

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    with tifffile.TiffWriter(path) as writer:
        for i in range(pages):
            signal = 1000 + 800 * np.sin(12 * x + i) * np.cos(9 * y - i)
            page = (signal + rng.normal(0, 30, (side, side))).clip(0, 65535).astype(np.uint16)
            writer.write(page, photometric="minisblack", compression=compression, metadata=None)


def crops_per_second(read: Callable[[int, int, int], np.ndarray], crops: np.ndarray, repeats: int) -> float:
    """Crops per second of ``read(page, y, x)`` over the rows of ``crops``, ``repeats`` times over."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        for page, y, x in crops:
            read(int(page), int(y), int(x))
    return len(crops) * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=positive_int, default=4096, help="page height and width (px)")
    parser.add_argument("--pages", type=positive_int, default=2)
    parser.add_argument("--crop", type=positive_int, default=160, help="crop side (px): 128 + margin")
    parser.add_argument("--crops", type=positive_int, default=16, help="random crops per round")
    parser.add_argument("--strip-repeats", type=positive_int, default=10, help="strip reads: passes per round")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--compression", default="zlib", help="tifffile's name: zlib, lzw, zstd, ...")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.crop > args.side:
        parser.error(f"--crop {args.crop} is larger than --side {args.side}")

    import tifffile

    from napari_deblurgan.cli.deblur_command import TiffPages

    rng = np.random.default_rng(1)
    positions = np.stack(
        [rng.integers(0, args.pages, args.crops), *rng.integers(0, args.side - args.crop + 1, (2, args.crops))],
        axis=1,
    )
    c = args.crop
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        write_stack(path, args.pages, args.side, args.compression)
        with tifffile.TiffFile(path) as tif:
            keyframe = tif.pages[0]
            strips = len(keyframe.dataoffsets)
            pages = TiffPages.of(tif)
            assert pages is not None

            def whole_page(page: int, y: int, x: int) -> np.ndarray:
                return pages._page(page)[y : y + c, x : x + c]  # the decode every region read did before

            def strip_read(page: int, y: int, x: int) -> np.ndarray:
                return pages[page, y : y + c, x : x + c]

            for page, y, x in positions[:2]:  # the same pixels (and a warm-up of both)
                assert whole_page(page, y, x).tobytes() == strip_read(page, y, x).tobytes()
            results: dict[str, list[float]] = {"whole page": [], "strips": []}
            for _ in range(args.rounds):
                results["whole page"].append(crops_per_second(whole_page, positions, 1))
                results["strips"].append(crops_per_second(strip_read, positions, args.strip_repeats))

    medians = {name: statistics.median(values) for name, values in results.items()}
    ratio = medians["strips"] / medians["whole page"]
    print(
        f"{args.pages} pages of {args.side} x {args.side} uint16, {args.compression}, {strips} strips of "
        f"{keyframe.rowsperstrip} rows per page; crops of {c} px; median of {args.rounds} rounds"
    )
    for name, value in medians.items():
        print(f"{name:10s}: {value:9.1f} crops/s")
    print(f"ratio     : {ratio:9.1f}x (strips / whole page)")
    if args.json:
        report = {
            "side": args.side,
            "pages": args.pages,
            "crop": c,
            "compression": args.compression,
            "strips_per_page": strips,
            "rows_per_strip": int(keyframe.rowsperstrip),
            "crops_per_s": results,
            "median_crops_per_s": medians,
            "ratio": ratio,
        }
        Path(args.json).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training crops from a compressed TIFF stack of many planes: crops per second of ``PairedData.sample`` under
the decoded-plane cache's two rules, side by side in one run.

Training on a blurred/sharp pair of stacks over ``finetune``'s in-memory limit reads random crops through the
CLI's lazy reader (``TiffPages``). A plane that fits the 64 MiB decoded-plane cache used to be decoded whole
for its first crop and kept; with many planes, few fit, so most crops paid for a whole decode that served
them alone. Now a plane is decoded whole only where that is expected to cost less than reading the crops'
strips (``data.pairs._Source._worth_decoding_whole``). This writes a pair of stacks of ``--pages`` pages of
``--side`` x ``--side`` uint16 (smooth cells plus noise, as microscopy compresses; tifffile's default strips),
reads every plane's percentiles once (a training run reads them on a plane's first visit, under either rule),
then times batches of ``--batch`` random crops of ``--patch`` px plus a ``--margin`` on each side, read two
ways: ``one batch`` at a time (``PairedData.sample``), and ``read ahead``: the crops of as many batches at once
as ``BatchSource`` reads ahead for the trainer (up to 32 MiB of crops, 32 batches), plane by plane, so that a
plane decoded whole serves all of its crops among them. Under each:

* ``keep what fits``: the earlier rule (every plane that fits the cache is decoded whole and kept);
* ``expected cost``: the current rule;

each the median crops/s over ``--rounds`` rounds (interleaved, so that a shared machine's drift hits both
alike), and their ratio. The batches of both rules are checked to be the same bytes.

    python benchmarks/bench_training_reads.py
    python benchmarks/bench_training_reads.py --pages 64 --side 1024 --json training_reads.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_deblurgan.cli import positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiff_reads import write_stack  # the same synthetic pages


@contextlib.contextmanager
def keep_what_fits() -> Iterator[None]:
    """The earlier rule: every plane that fits the decoded-plane cache is decoded whole and kept."""
    from napari_deblurgan.data import pairs

    rule = pairs._Source._worth_decoding_whole
    pairs._Source._worth_decoding_whole = lambda self, *args: True
    try:
        yield
    finally:
        pairs._Source._worth_decoding_whole = rule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=positive_int, default=2048, help="page height and width (px)")
    parser.add_argument("--pages", type=positive_int, default=32, help="pages per stack (two stacks: a pair)")
    parser.add_argument("--patch", type=positive_int, default=128, help="crop side (px) without the margin")
    parser.add_argument("--margin", type=int, default=16, help="context on each side (synthetic blur's)")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--batches", type=positive_int, default=4, help="batches per round, one at a time")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--compression", default="zlib", help="tifffile's name: zlib, lzw, zstd, ...")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.margin < 0:
        parser.error(f"--margin must be >= 0, got {args.margin}")
    if args.patch + 2 * args.margin > args.side:
        parser.error(f"--patch {args.patch} plus twice --margin {args.margin} is larger than --side {args.side}")

    import tifffile

    from napari_deblurgan.cli.deblur_command import TiffPages
    from napari_deblurgan.data.pairs import (
        DEFAULT_DECODED_CACHE_BYTES,
        READ_AHEAD_BATCHES,
        READ_AHEAD_BYTES,
        PairedData,
    )

    rules = {"keep what fits": keep_what_fits, "expected cost": contextlib.nullcontext}
    side = args.patch + 2 * args.margin
    ahead = min(READ_AHEAD_BATCHES, max(1, READ_AHEAD_BYTES // (2 * args.batch * side * side * 4)))  # BatchSource's
    modes = {"one batch": args.batches, "read ahead": ahead}
    results: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in rules} for mode in modes}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as opened:
        stacks = []
        for seed, name in enumerate(("blurred", "sharp")):
            path = Path(tmp) / f"{name}.tif"
            write_stack(path, args.pages, args.side, args.compression, seed)  # not identical (PairedData refuses)
            tif = opened.enter_context(tifffile.TiffFile(path))
            pages = TiffPages.of(tif)
            assert pages is not None
            stacks.append(pages)
        strips = len(tif.pages[0].dataoffsets)  # the sharp stack's (both are written alike)
        data = {name: PairedData(*stacks, axes="ZYX", patch_size=args.patch, validation=0.0, seed=0) for name in rules}
        for name, paired in data.items():  # every plane's percentiles: a whole decode each, under either rule
            with rules[name]():
                for plane in paired.train_planes:
                    paired.sources[plane.source].norm_range(plane.index, 0)
        for round_index in range(args.rounds):
            for mode, count in modes.items():
                batches: dict[str, list[np.ndarray]] = {}
                for name, rule in rules.items():
                    rng = np.random.default_rng(round_index)
                    draws = [data[name].draw_crops(args.batch, rng) for _ in range(count)]
                    with rule():
                        t0 = time.perf_counter()
                        if mode == "one batch":
                            batches[name] = [data[name].read_crops(*draw, args.margin)[1] for draw in draws]
                        else:
                            ids, where = (np.concatenate(parts) for parts in zip(*draws, strict=True))
                            batches[name] = [data[name].read_crops(ids, where, args.margin)[1]]
                        results[mode][name].append(args.batch * count / (time.perf_counter() - t0))
                first, second = batches.values()
                assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second, strict=True))

    medians = {mode: {name: statistics.median(v) for name, v in by_rule.items()} for mode, by_rule in results.items()}
    ratios = {mode: m["expected cost"] / m["keep what fits"] for mode, m in medians.items()}
    plane_mib = args.side * args.side * 2 / 2**20
    print(
        f"2 x {args.pages} pages of {args.side} x {args.side} uint16 ({plane_mib:g} MiB each), {args.compression}, "
        f"{strips} strips per page; {DEFAULT_DECODED_CACHE_BYTES // 2**20} MiB decoded-plane cache; crops of "
        f"{args.patch} + 2 x {args.margin} px, batches of {args.batch}; median of {args.rounds} rounds"
    )
    print(f"{'':28s}{'keep what fits':>16s}{'expected cost':>16s}{'ratio':>8s}")
    for mode, m in medians.items():
        label = f"{mode} ({modes[mode]} batches)"
        print(f"{label:28s}{m['keep what fits']:10.1f} crops/s{m['expected cost']:8.1f} /s{ratios[mode]:7.1f}x")
    if args.json:
        report = {
            "side": args.side,
            "pages": args.pages,
            "patch": args.patch,
            "margin": args.margin,
            "batch": args.batch,
            "batches": modes,
            "compression": args.compression,
            "strips_per_page": strips,
            "crops_per_s": results,
            "median_crops_per_s": medians,
            "ratio": ratios,
        }
        Path(args.json).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

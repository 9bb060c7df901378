"""``napari-deblurgan demo``: deblur the shipped samples with the default model and report (the README's
main job)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="deblur the shipped samples with the default model; compare with Richardson-Lucy",
        description=(
            "Deblur a shipped synthetic blurred/sharp pair (PSNR/SSIM against the sharp original, next to "
            "Richardson-Lucy given the true PSF) and skimage's clock() photo (real motion blur), offline. "
            "Results go to --output."
        ),
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("demo-output"), help="results folder (default: demo-output)"
    )
    parser.add_argument("--model", default=None, help="model file or shipped name (default: the shipped default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the model over 8 flips/rotations of each tile (8x slower; docs/model-card.md)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from .progress import ProgressBar

    bar = ProgressBar("deblurring")

    def log(message: str) -> None:
        bar.close()  # finish a progress line before printing results
        print(message, flush=True)

    run_demo(
        args.output, model=args.model, device=args.device, progress=bar, log=log, self_ensemble=args.self_ensemble
    )
    return 0

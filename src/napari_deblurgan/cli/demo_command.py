"""``napari-deblurgan demo``: deblur the shipped samples with the default model and report (the README's
main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..user_paths import expand_user


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
        "-o", "--output", type=expand_user, default="demo-output", help="results folder (default: demo-output)"
    )
    parser.add_argument(
        "--model", type=expand_user, default=None, help="model file or shipped name (default: the shipped default)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the model over 8 flips/rotations of each tile (8x slower; docs/model-card.md)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into --output even if it holds files (they may be replaced)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (the results are printed)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..devices import resolve_device
    from ..errors import InputError
    from ..model_file import load_model
    from . import EXIT_BROKEN_PIPE, _silence_stdout
    from .progress import ProgressBar

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"The demo writes a folder of results, but {str(out)!r} is a file; choose a folder name.")
    if out.is_dir() and not args.force and any(out.iterdir()):
        raise InputError(
            f"{str(out)!r} exists and is not empty (an earlier demo's results?); pass --force to write into it "
            "(files of the same names are replaced) or choose another -o."
        )
    # the inputs are checked before the folder is made: a wrong --model or --device leaves nothing behind
    resolve_device(args.device)
    model = load_model("default" if args.model is None else args.model)

    bar = ProgressBar("deblurring", enabled=not args.quiet)
    pipe_closed = False

    def log(message: str) -> None:
        nonlocal pipe_closed
        bar.close()  # finish a progress line before printing results; the next image gets a bar of its own
        if pipe_closed:
            return
        try:
            print(message, flush=True)
        except BrokenPipeError:
            # `demo | head`: the reader has what it wanted, but the results folder is the demo's product and
            # is still written in full; the exit status says the pipe closed, as for the other subcommands
            pipe_closed = True
            _silence_stdout()

    run_demo(out, model=model, device=args.device, progress=bar, log=log, self_ensemble=args.self_ensemble)
    return EXIT_BROKEN_PIPE if pipe_closed else 0

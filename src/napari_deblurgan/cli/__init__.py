"""The ``napari-deblurgan`` command-line tool: ``deblur``, ``info`` and the other subcommands.

Each subcommand lives in its own module next to this one and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Subcommands are thin: they parse arguments, call the public Python API and report.

Exit status: 0 success; 1 unexpected error (traceback printed); 2 a usage or input problem the user can fix
(bad arguments, :class:`~napari_deblurgan.errors.InputError`, :class:`~napari_deblurgan.errors.ModelFileError`;
message only); 130 interrupted (Ctrl-C or cancelled; nothing half-written is left behind).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Sequence

from .. import __version__

#: Subcommand modules (in this package), in the order ``--help`` lists them. Add new ones here.
SUBCOMMAND_MODULES: list[str] = ["demo_command", "deblur_command", "finetune_command", "info_command"]

PROG = "napari-deblurgan"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a reader closing the pipe (`| head`) makes of other tools


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module in :data:`SUBCOMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Remove blur from images with a DeblurGAN-style model, finetune it, compare it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        sub = module.add_parser(subparsers)
        # the Python keywords that error messages of the API name, and the flags that set them here
        flags = {
            action.dest: next(o for o in action.option_strings if o.startswith("--"))
            for action in sub._actions
            if any(o.startswith("--") for o in action.option_strings) and action.dest != "help"
        }
        sub.set_defaults(_run=module.run, _flags=flags)
    return parser


def with_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with the Python keywords it names (``tile_size``) written as this command's flags
    (``--tile-size``): the messages come from the Python API, the user typed flags. Keywords with an
    underscore anywhere (prose does not contain them); one-word keywords (``overlap``, ``device``) only where
    a message or one of its clauses starts with one and a value or "must" follows (``overlap (600 px)``,
    ``device 'cuda'``, ``steps 5``, ``model must``), which is how the API's messages name an argument; the
    same words also occur as prose ("this model's seamless overlap", "; resume it without one")."""
    for dest, flag in flags.items():
        if "_" in dest:
            message = re.sub(rf"(?<![\w-]){re.escape(dest)}\b", flag, message)
        else:
            message = re.sub(
                rf"(^|; |: )({re.escape(dest)})(?= (?:must\b|[('\"{{\[\d-]))", rf"\g<1>{flag}", message
            )
    return message


def error(message: str) -> None:
    """Print a user-facing error message (no traceback) on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from ..errors import Cancelled, InputError, ModelFileError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse usage errors: keep their status
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args._run(args) or EXIT_OK)
    except (InputError, ModelFileError) as exc:
        error(with_flags(str(exc), getattr(args, "_flags", {})))
        return EXIT_USAGE
    except BrokenPipeError:  # `napari-deblurgan info default | head`: the reader has all it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (KeyboardInterrupt, Cancelled):
        print(f"\n{PROG}: interrupted; no output was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        error("unexpected error (traceback above); please report it if the input looks fine.")
        return EXIT_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail on the closed pipe again
    (the recipe of Python's ``signal`` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stdout (tests, IDEs) has no descriptor to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # python -m napari_deblurgan.cli
    sys.exit(main())

"""The ``napari-deblurgan`` command-line tool: ``deblur``, ``info`` and the other subcommands.

Each subcommand lives in its own module next to this one and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Subcommands are thin: they parse arguments, call the public Python API and report.

Exit status: 0 success; 1 unexpected error (traceback printed); 2 a usage or input problem the user can fix
(bad arguments, :class:`~napari_deblurgan.errors.InputError`, :class:`~napari_deblurgan.errors.ModelFileError`;
message only); 130 interrupted (Ctrl-C or cancelled; nothing half-written is left behind).

The API's error messages and warnings name Python keywords (``tile_size``); the CLI says them in the command's
flags (:func:`with_flags`), errors as ``napari-deblurgan: error: ...``, warnings as one ``warning: ...`` line
on stderr (:func:`show_warning`, installed by :func:`main` for every subcommand).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TextIO

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


#: Advice of the Python API that names Python (``np.nan_to_num``) or an argument in words where a command-line user
#: has a file or a flag: (pattern, the CLI's words, the keyword a command needs for them or None). The CLI's words
#: may name keywords (``validation_sharp``), which then become flags. tests/test_cli_finetune.py checks that the
#: API still says the left side.
CLI_PHRASES: list[tuple[str, str, str | None]] = [
    (r"\(e\.g\. np\.nan_to_num\)", "(e.g. with 0, or Fiji's Process > Math > Remove NaNs)", None),
    (r"np\.nan_to_num\([^)]*\)", "with 0", None),
    (
        r"a separate validation pair",
        "a separate validation image (validation_sharp, and validation_blurred for pairs)",
        "validation_sharp",
    ),
    (r"\bnoise(?: \(photons\)| photons)(?= must be > 0)", "noise_photons", "noise_photons"),
    (r"check the axes argument", "check `axes`", "axes"),
    (
        r"\(e\.g\. image\.astype\('float32'\)\)",
        "(e.g. save it as 32-bit float: Fiji's Image > Type > 32-bit)",
        None,
    ),
    (r"(\bema must be a decay in \(0, 1\) such as 0\.999), or None", r"\1, or leave `ema` out", "ema"),
    (
        r"\bchannels sets the channels of a new model only \(model= ",
        "`channels` sets the channels of a new model only (`model` ",
        "channels",
    ),
]


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (0 or less would divide by zero or time nothing). Shared by
    the benchmarks and scripts/evaluate_default_model.py."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text}")
    return value


def with_flags(
    message: str, flags: dict[str, str], *, phrases: Sequence[tuple[str, str, str | None]] | None = None
) -> str:
    """``message`` with the Python keywords it names (``tile_size``) written as this command's flags
    (``--tile-size``): the messages come from the Python API, the user typed flags.

    ``flags`` maps keywords to what the front end calls them, and ``phrases`` (default :data:`CLI_PHRASES`) is
    its table of advice said in its own terms: the Finetune panel uses the same rules with its control labels
    (``patch_size`` -> ``patch size``; ``widgets/finetune_widget.py``, ``in_panel_words``).

    * ``keyword=value`` (``device='cpu'``, ``validation=0``, ``perceptual_weights=<file>``) becomes
      ``--flag value`` (``--device cpu``, ``--perceptual-weights FILE``);
    * keywords with an underscore anywhere (prose does not contain them), and any keyword in backticks
      (```validation```), become the flag;
    * one-word keywords (``overlap``, ``device``) only where a message or one of its clauses starts with one
      and a value or "must" follows (``overlap (600 px)``, ``device 'cuda'``, ``steps 5``, ``model must``),
      or after "pass", "leave" or "(without" and before "with", "out", "unset" or punctuation (``pass axes
      with ...``, ``leave resume out``, ``(without resume)``; not "pass sharp images"), which is how the
      API's messages name an argument; the same words also occur as prose ("this model's seamless overlap",
      "; resume it without one");
    * a flag written twice in a row by the translation (``--checkpoint-dir / --checkpoint-dir``,
      ``--axes: --axes 'ZYX'``) is written once;
    * advice that names Python (:data:`CLI_PHRASES`) is said in the CLI's terms;
    * a Python call quoted as advice (``napari_deblurgan.finetune(sharp, resume='...', steps=5)``) is left as it
      is: it is code to paste, not a sentence about this command's options.
    """
    table = CLI_PHRASES if phrases is None else phrases
    parts = _PYTHON_CALL.split(message)  # the calls are the odd parts (the pattern's one group)
    return "".join(part if i % 2 else _say_in_flags(part, flags, table) for i, part in enumerate(parts))


#: A call of the Python API quoted in a message: quoted strings are single units (a path may hold parentheses),
#: and one level of nested parentheses is allowed.
_PYTHON_CALL = re.compile(
    r"((?<![\w.])(?:napari_deblurgan|ndg)(?:\.\w+)+"  # napari_deblurgan.finetune, ndg.inference.deblur
    r"\((?:'[^']*'|\"[^\"]*\"|[^()'\"]|\((?:'[^']*'|\"[^\"]*\"|[^()'\"])*\))*\))"  # quoted strings whole
)


def _say_in_flags(message: str, flags: dict[str, str], phrases: Sequence[tuple[str, str, str | None]]) -> str:
    """:func:`with_flags` of a message part that quotes no Python call."""
    for pattern, replacement, needs in phrases:
        if needs is None or needs in flags:
            message = re.sub(pattern, replacement, message)
    for dest, flag in flags.items():
        message = message.replace(f"`{dest}`", flag)
        message = re.sub(
            rf"(?<![\w-]){re.escape(dest)}=(?:'([^']*)'|\"([^\"]*)\"|<([^>]*)>|([^\s,;()'\"<]+))",
            lambda m, flag=flag: _flag_with_value(flag, m),
            message,
        )
        if "_" in dest:
            message = re.sub(rf"(?<![\w-]){re.escape(dest)}\b", flag, message)
        else:
            message = re.sub(rf"(^|; |: |, )({re.escape(dest)})(?= (?:must\b|[('\"{{\[\d-]))", rf"\g<1>{flag}", message)
            verb = r"(\b[Pp]ass |\b[Ll]eave |\(without )"
            message = re.sub(
                rf"{verb}({re.escape(dest)})(?= with\b| out\b| unset\b|[).,;]|$)", rf"\g<1>{flag}", message
            )
    # a flag the message already named, named again by the translation
    message = re.sub(r"(?<![\w-])(--[\w-]+)(?: /|:) \1(?![\w-])", r"\1", message)
    return message


def _flag_with_value(flag: str, match: re.Match[str]) -> str:
    """``--flag value`` for a ``keyword=value`` match of :func:`with_flags` (quotes dropped, ``<file>`` as
    ``FILE``, ``=True`` of a switch as the bare flag)."""
    quoted, double, placeholder, bare = match.groups()
    if placeholder is not None:
        return f"{flag} {placeholder.upper()}"
    value = next(v for v in (quoted, double, bare) if v is not None)
    return flag if value == "True" else f"{flag} {value}"


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
    *,
    flags: dict[str, str] | None = None,
) -> None:
    """The CLI's ``warnings.showwarning``: ``warning: <message>`` on stderr, in the command's flags
    (:func:`with_flags`), without Python's ``file.py:599: UserWarning:`` and source line. Every subcommand
    runs under it (:func:`main`); a progress line being drawn is ended first."""
    from .progress import end_progress_line

    stream = file if file is not None else sys.stderr
    end_progress_line()
    try:
        stream.write(f"warning: {with_flags(str(message), flags or {})}\n")
        stream.flush()
    except OSError:  # stderr closed: nothing to say it on (Python's own showwarning gives up the same way)
        pass


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
    flags = getattr(args, "_flags", {})
    try:
        with warnings.catch_warnings():  # restores the caller's warnings.showwarning (tests, scripts calling main)
            warnings.showwarning = functools.partial(show_warning, flags=flags)
            return int(args._run(args) or EXIT_OK)
    except (InputError, ModelFileError) as exc:
        error(with_flags(str(exc), flags))
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

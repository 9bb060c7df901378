"""``napari-deblurgan finetune``: finetune (or train) a model on your own TIFF images.

Two kinds of data:

* ``--blurred A.tif --sharp B.tif``: a registered pair (same shape; stacks and multichannel are fine);
  several files after each flag (or the flags repeated) are paired in order: ``--blurred A1.tif A2.tif
  --sharp B1.tif B2.tif`` is (A1, B1) and (A2, B2);
* ``--sharp B.tif [B2.tif ...]`` alone: sharp images; blur is synthesised on the fly (``--blur-kind``).

Notes (``note: ...``) and warnings (``warning: ...``) are printed with ``-q`` too, in the command's flags;
``-q`` hides the progress only.

A progress line on stderr shows the step, the losses, the speed and the latest validation PSNR with the step it
was measured at (``val@200 PSNR 18.13 dB (+2.77, best)``: its gain over the blurred input, and whether it is
the best so far, the model the run returns). Ctrl-C stops cleanly: the best model so far is still written to
``-o`` (and a checkpoint to ``--checkpoint-dir``, from which ``--resume`` continues), then the exit status is
130 (a stop before the first step writes nothing: nothing was trained). A second Ctrl-C aborts at once without
writing the model (the run still writes its checkpoint if it was between two steps, and says that ``--resume``
continues from the last one).

Where ``-o`` cannot be written at the end (a full disk, its folder removed during the run), the trained model is
not lost: it is saved next to the checkpoints, in ``~/.napari-deblurgan/models`` or in the system's temporary
folder instead (:func:`~napari_deblurgan.training.saving.save_trained_model`, which the Finetune panel uses
too), and the error says where.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from ..atomic_files import check_writable
from ..devices import PRECISIONS
from ..errors import InputError
from ..signal_safe_stderr import stderr_from_signal_handlers
from ..training.saving import save_trained_model, stopped_before_the_first_step
from ..user_paths import expand_user
from .progress import line_drawn, line_ended
from .signals import TERMINATING_SIGNALS, detach_from_terminal, handling


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``finetune`` subcommand."""
    p = subparsers.add_parser(
        "finetune",
        help="finetune a model on your blurred/sharp TIFF images (or sharp ones with synthetic blur)",
        description="Finetune a deblurring model on blurred/sharp TIFF pairs (one or several), or on sharp TIFF "
        "images with blur synthesised on the fly, and save it to OUTPUT (.pt).",
    )
    p.add_argument(
        "--blurred",
        type=expand_user,
        action="extend",
        nargs="+",
        metavar="A.tif",
        help="blurred image files, each registered to the --sharp file in the same place: --blurred A1.tif "
        "A2.tif --sharp B1.tif B2.tif (or the flag repeated) gives the pairs (A1, B1) and (A2, B2)",
    )
    p.add_argument(
        "--sharp",
        type=expand_user,
        action="extend",
        nargs="+",
        metavar="B.tif",
        help="sharp image files (one or several, or the flag repeated); without --blurred, blur is synthesised",
    )
    p.add_argument(
        "-o",
        "--output",
        type=expand_user,
        required=True,
        metavar="model.pt",
        help="where to save the finetuned model (a .pt file)",
    )
    p.add_argument(
        "--model",
        type=expand_user,
        default=None,
        metavar="M",
        help="starting model: file (.pt), shipped name, or an architecture (unet_fast, unet_lite, resnet9) to train "
        "from scratch (default: default, the shipped model; with --resume, the run's own)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="generator updates, at least 1 (default: 1000; with --resume, the resumed run's own total; --resume "
        "with N = the checkpoint's step trains nothing and writes the model the checkpoint keeps)",
    )
    p.add_argument("--patch-size", type=int, default=128, metavar="N", help="crop side (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="crops per step (default: %(default)s)")
    p.add_argument(
        "--preset",
        default="default",
        metavar="P",
        help="default, deblurgan (paper), content (L1), content-mse or content-psnr (default: %(default)s)",
    )
    p.add_argument("--learning-rate", type=float, default=None, metavar="LR", help="override the preset's rate")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (default: random, recorded)")
    p.add_argument(
        "--validation",
        type=float,
        default=None,
        metavar="F",
        help="fraction of the training images held out for validation, 0 for none (default: 0.1)",
    )
    p.add_argument(
        "--validation-blurred",
        type=expand_user,
        default=None,
        metavar="A.tif",
        help="validate on this blurred image (with --validation-sharp) instead of holding out a fraction",
    )
    p.add_argument(
        "--validation-sharp",
        type=expand_user,
        default=None,
        metavar="B.tif",
        help="validate on this sharp image instead of holding out a fraction (its blurred counterpart is "
        "--validation-blurred; without it, for sharp-only training, blur is synthesised)",
    )
    p.add_argument("--validate-every", type=int, default=100, metavar="N", help="default: %(default)s")
    p.add_argument("--ema", type=float, default=None, metavar="D", help="keep an EMA of the weights (e.g. 0.999)")
    p.add_argument(
        "--checkpoint-dir", type=expand_user, default=None, metavar="DIR", help="write resumable checkpoints here"
    )
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="N", help="default: %(default)s")
    p.add_argument(
        "--resume",
        type=expand_user,
        default=None,
        metavar="DIR",
        help="continue the run checkpointed in DIR (or DIR/checkpoint.pt)",
    )
    p.add_argument(
        "--blur-kind",
        default="mixed",
        metavar="K",
        help="synthetic blur: mixed, motion, defocus, gaussian, airy or a comma list; a kind may carry a "
        "weight, e.g. motion:2,defocus,gaussian (default: %(default)s)",
    )
    p.add_argument(
        "--blur-strength",
        type=float,
        nargs="+",
        default=None,
        metavar="PX",
        help="synthetic blur size in px (motion extent, defocus radius, Gaussian sigma): one value or LOW HIGH "
        "(default: each kind's random range)",
    )
    p.add_argument(
        "--noise-photons",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="synthetic Poisson noise: photons at the bright end, one value or LOW HIGH (default: realistic, "
        "30-1000 photons with 0.5-4 photons of read noise); 0 for no noise",
    )
    p.add_argument(
        "--teacher",
        type=expand_user,
        default=None,
        metavar="M",
        help="self-ensemble distillation: mix this model's mean output over the 8 flips/rotations of each crop "
        "into the targets (a model file or shipped name, e.g. the --model itself; 8 teacher passes per step)",
    )
    p.add_argument(
        "--teacher-weight", type=float, default=0.5, metavar="W", help="the teacher's share of the targets (0-1]"
    )
    p.add_argument(
        "--axes", default=None, metavar="A", help="axes of every image, e.g. ZYX, YXS (default: each file's own)"
    )
    p.add_argument("--channels", type=int, default=None, metavar="C", help="channels of a from-scratch model")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUTPUT if it exists, and an earlier run's checkpoint in --checkpoint-dir",
    )
    p.add_argument(
        "--perceptual-weights",
        type=expand_user,
        default=None,
        metavar="FILE",
        help="VGG-19 weight file for the perceptual loss (vgg19-dcbb9e9d.pth; default: torchvision's cache; "
        "without either, critic feature matching is used, with a note)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="arithmetic of the training steps: auto (bfloat16 autocast on a GPU, float32 on the CPU), float32, "
        "bfloat16 or float16 (GPU only); kept on --resume (default: %(default)s)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress: hides the start line, the step lines, checkpoint and end lines and 'wrote ...'; notes "
        "and warnings are still printed",
    )
    return p


def read_images(
    paths: list[str], axes: str | None, opened: contextlib.ExitStack | None = None
) -> tuple[list[Any], list[str]]:
    """The first series of each file (:func:`read_image`) and the axes of each (``axes``, or the file's own:
    training takes one axes string per image); the lazy readers that keep a file open are closed by
    ``opened``."""
    images, all_axes = [], []
    for path in paths:
        image, image_axes = read_image(path, axes, opened)
        images.append(image)
        all_axes.append(image_axes)
    return images, all_axes


#: Training stacks up to this size (decoded) are read into memory, above it lazily. Higher than deblur's
#: LARGE_FILE_BYTES (64 MiB): training reads random crops over and over, which an in-memory array serves from
#: the normalised plane cache (data/pairs.py), while a compressed lazy stack decodes for a crop a whole page
#: (shared only by the crops of that plane among the batches read ahead: BatchSource, _DecodedPlanes) or, for a
#: page too big for that cache, the strips or tiles the crop covers (TiffPages).
TRAINING_IN_MEMORY_BYTES = 1 << 30


def read_image(path: str | Path, axes: str | None, opened: contextlib.ExitStack | None = None) -> tuple[Any, str]:
    """The first series of a TIFF file and its axes: in memory up to :data:`TRAINING_IN_MEMORY_BYTES`
    (decoded); larger, a lazy array that training reads crops from, whatever the file's compression (a memory
    map of uncompressed pixels, else pages decoded one at a time by a reader that keeps the file open: closed
    when ``opened`` closes, given one)."""
    import tifffile

    from .deblur_command import lazy_pages, note_other_series, read_series, read_tiff_info, tifffile_log_in_errors
    from .photo_files import is_tiff

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Input file {str(path)!r} does not exist.")
    if not is_tiff(path):
        raise InputError(
            f"{str(path)!r} is not a TIFF file: finetune reads TIFF only (deblur also reads photos). Save the "
            "image as TIFF first, e.g. Fiji's File > Save As > Tiff..., or tifffile.imwrite('image.tif', array)."
        )
    with tifffile_log_in_errors():  # what tifffile logs of a damaged file: in the error, or as notes
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError) as exc:
            raise InputError(f"Cannot read {str(path)!r} as TIFF: {exc}") from None
        data = None
        try:
            info = read_tiff_info(tif, axes)
            series = tif.series[0]
            # Training reads random crops (np.asarray(array[key]) in data/pairs.py): a large stack stays on disk,
            # memory-mapped, or read through a TiffPages reader (compressed), which keeps the file open
            if series.nbytes > TRAINING_IN_MEMORY_BYTES:
                data = lazy_pages(tif, path, raw_memmap=True)
            if data is None:
                data = read_series(series, path)
            note_other_series(tif, path)
        finally:
            if getattr(data, "_tif", None) is not tif:
                tif.close()
            elif opened is not None:
                opened.callback(data.close)
    if data.shape != info.shape:
        raise InputError(f"Unexpected data shape {data.shape} for axes {info.axes!r} in {path}; pass --axes.")
    return data, info.axes


class ProgressLine:
    """Renders training events on ``stream``: a start line, one status line (redrawn in place on a terminal,
    every 10 % of the steps in a log), checkpoint and end lines, and every :class:`Notice` as ``note: ...``
    (``warning: ...`` for the kinds other than "info"), in the command's flags (``flags``: keyword -> flag,
    :func:`~napari_deblurgan.cli.with_flags`). ``enabled=False`` (``-q``) hides the progress, not the notes."""

    def __init__(
        self,
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.2,
        flags: dict[str, str] | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.min_interval = min_interval
        self.flags = flags or {}
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -float("inf")
        self._val = ""
        self._best = ""  # the best validation's step and gain, for the last line
        self._last_decile = -1

    def __call__(self, event: Any) -> None:
        from ..training import events as ev
        from . import with_flags

        if isinstance(event, ev.Notice):  # shown with -q too: a note changes what the run does
            prefix = "note" if event.kind == "info" else "warning"
            self._print(f"{prefix}: {with_flags(event.message, self.flags)}")
            return
        if not self.enabled:
            return
        if isinstance(event, ev.Started):
            resumed = f", resumed at step {event.start_step}" if event.start_step else ""
            self._print(
                f"finetune: {event.architecture} on {event.device}, preset {event.preset}, batch "
                f"{event.batch_size} x {event.patch_size} px, {event.train_samples}; validation: "
                f"{event.validation_samples}{resumed}"
            )
        elif isinstance(event, ev.Validation):
            if event.source == "generator" or event.is_best:
                # the last validation stays on the step lines until the next one: it says the step it was made at
                gain = event.psnr - event.psnr_input
                best = ", best" if event.is_best else ""
                self._val = f" | val@{event.step} PSNR {event.psnr:.2f} dB ({gain:+.2f}{best})"
                if event.is_best:
                    self._best = f" at step {event.step} ({gain:+.2f} dB over the blurred input)"
        elif isinstance(event, ev.Step):
            losses = " ".join(f"{k} {v:.4g}" for k, v in event.losses.items() if k != "total")
            line = (
                f"step {event.step}/{event.total_steps} | loss {event.losses.get('total', float('nan')):.4g} "
                f"({losses}) | {event.images_per_second:.1f} img/s{self._val}"
            )
            now = time.monotonic()
            if self.tty:
                if now - self._last >= self.min_interval or event.step == event.total_steps:
                    self.stream.write("\r\033[K" + line)
                    self.stream.flush()
                    self._last = now
                    line_drawn(self, self.stream)
            else:
                decile = (10 * event.step) // max(event.total_steps, 1)
                if decile != self._last_decile:
                    self._last_decile = decile
                    self._print(line)
        elif isinstance(event, ev.CheckpointSaved) and not self.tty:
            self._print(f"checkpoint at step {event.step}: {event.path}")
        elif isinstance(event, ev.Finished):
            how = "stopped" if event.stopped else "finished"
            # the validation after the last step comes after its step line: the best one is named here
            best = "" if event.best_psnr is None else f"; best validation PSNR {event.best_psnr:.2f} dB{self._best}"
            self._print(f"{how} at step {event.step}{best}")

    def _print(self, text: str) -> None:
        if line_ended(self):  # the status line drawn in place: end it first
            self.stream.write("\n")
        self.stream.write(text + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Finetune on the given files and save the model; returns the exit status. The training files read lazily
    (above :data:`TRAINING_IN_MEMORY_BYTES`) are closed when it returns or fails."""
    with contextlib.ExitStack() as opened:
        return _run(args, opened)


def _run(args: argparse.Namespace, opened: contextlib.ExitStack) -> int:
    """:func:`run`, with the files it reads lazily closed by ``opened``."""
    from ..training.checkpoint import checkpoint_folder, checkpoint_path
    from ..training.events import TrainingNoticeWarning
    from ..training.trainer import iter_finetune
    from . import EXIT_INTERRUPTED, PROG
    from .deblur_command import same_file

    if args.blurred is None and args.sharp is None:
        raise InputError("Pass --blurred A.tif --sharp B.tif (a pair), or --sharp B.tif alone (synthetic blur).")
    if args.sharp is None:
        raise InputError(
            "--blurred needs its sharp counterpart: add --sharp B.tif. To train on sharp images with "
            "synthetic blur, pass them as --sharp alone."
        )
    if args.blurred is not None and len(args.blurred) != len(args.sharp):
        raise InputError(
            f"Got {len(args.blurred)} --blurred but {len(args.sharp)} --sharp files: pairs are made in order "
            "(the first --blurred with the first --sharp, ...), so give as many of each. To train on sharp images "
            "with synthetic blur, pass them as --sharp alone."
        )
    for i, (b, s) in enumerate(zip(args.blurred, args.sharp, strict=True) if args.blurred else []):
        if same_file(Path(b), Path(s)):
            pair = f" (pair {i + 1})" if len(args.sharp) > 1 else ""
            raise InputError(
                f"--blurred and --sharp are the same file, {b}{pair}: a model trained on an image paired with "
                "itself learns to change nothing. Give the blurred image and its sharp counterpart, or pass sharp "
                "images as --sharp alone to train with synthetic blur."
            )
    if args.steps is not None and args.steps < 1 and args.resume is None:
        raise InputError(
            f"--steps {args.steps} would train nothing and write a copy of the starting model; give at least 1."
        )
    if args.validation is not None and (args.validation_sharp or args.validation_blurred):
        raise InputError("Pass either --validation F (a held-out fraction) or a validation image, not both.")
    if args.validation_blurred is not None and args.validation_sharp is None:
        raise InputError("--validation-blurred needs its sharp counterpart: add --validation-sharp B.tif.")
    if args.validation_sharp is not None and args.validation_blurred is None and args.blurred is not None:
        raise InputError(
            "Training on blurred/sharp pairs validates on a pair too: add --validation-blurred A.tif (the blurred "
            "counterpart of --validation-sharp)."
        )
    out = Path(args.output)
    folder = args.checkpoint_dir or (checkpoint_folder(args.resume) if args.resume is not None else None)
    if folder is not None and (same_file(out, Path(folder)) or same_file(out, checkpoint_path(folder))):
        raise InputError(
            f"-o {str(out)!r} is the run's checkpoint folder or file; the model and the checkpoint are two files: "
            "choose another path for the model."
        )
    if out.suffix.lower() != ".pt":
        what = f"ends in {out.suffix!r}" if out.suffix else "has no extension"
        raise InputError(
            f"-o {str(out)!r} {what}, but finetune writes a model file, which ends in .pt; give e.g. "
            f"-o {str(out.with_suffix('.pt'))!r}. (An image is deblurred with `napari-deblurgan deblur`.)"
        )
    if out.exists() and not args.force:
        raise InputError(f"{str(out)!r} exists; pass --force to overwrite it or choose another -o.")
    check_writable(out)  # a folder, a missing folder or no permission: said now, not after the training
    used = args.checkpoint_dir is not None and Path(args.checkpoint_dir).is_dir()
    if used and not args.force and checkpoint_path(args.checkpoint_dir).is_file():
        # a new run, or a resume told to checkpoint into another run's folder
        same_run = args.resume is not None and same_file(
            checkpoint_path(args.checkpoint_dir), checkpoint_path(args.resume)
        )
        if not same_run:
            raise InputError(
                f"--checkpoint-dir {args.checkpoint_dir} holds an earlier run's checkpoint: pass --resume "
                f"{args.checkpoint_dir} to continue that run, --force to replace it, or another folder."
            )
    given = [*args.sharp, *(args.blurred or []), args.validation_sharp, args.validation_blurred]
    for path in given:
        if path is not None and same_file(Path(path), out):
            raise InputError(f"-o {str(out)!r} is a training image; choose another path for the model.")

    sharp, sharp_axes = read_images(args.sharp, args.axes, opened)
    blurred = None
    if args.blurred is not None:
        blurred, blurred_axes = read_images(args.blurred, args.axes, opened)
        if len(args.blurred) == len(args.sharp):  # else the API says the files do not pair up
            pairs = zip(args.blurred, args.sharp, blurred_axes, sharp_axes, strict=True)
            for i, (b_path, s_path, b_axes, s_axes) in enumerate(pairs):
                if b_axes != s_axes:
                    raise InputError(
                        f"The files of pair {i + 1} have different axes (--blurred {Path(b_path).name}: {b_axes}, "
                        f"--sharp {Path(s_path).name}: {s_axes}); pass matching files, or --axes if the files' "
                        "axes are wrong."
                    )
    first, second = (blurred, sharp) if blurred is not None else (sharp, None)
    # one string where the files agree (the common case), else one per image: files of different axes train
    # together, each read with its own
    axes: str | list[str] = sharp_axes[0] if len(set(sharp_axes)) == 1 else sharp_axes
    validation: Any = 0.1 if args.validation is None else args.validation
    validation_axes = None
    if args.validation_sharp is not None:
        loaded: dict[str, Any] = {}
        read_axes: dict[str, str] = {}
        named = (("--validation-blurred", args.validation_blurred), ("--validation-sharp", args.validation_sharp))
        for flag, path in named:
            if path is not None:
                loaded[flag], read_axes[flag] = read_image(path, args.axes, opened)
        validation_axes = read_axes["--validation-sharp"]
        if read_axes.get("--validation-blurred", validation_axes) != validation_axes:
            raise InputError(
                f"--validation-blurred has axes {read_axes['--validation-blurred']!r} but --validation-sharp "
                f"{validation_axes!r}; pass matching files, or --axes if the files' axes are wrong."
            )
        validation = (loaded.get("--validation-blurred"), loaded["--validation-sharp"])

    progress = ProgressLine(enabled=not args.quiet, flags=getattr(args, "_flags", {}))
    training = iter_finetune(
        first,
        second,
        model=args.model,
        steps=args.steps,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        preset=args.preset,
        learning_rate=args.learning_rate,
        device=args.device,
        seed=args.seed,
        validation=validation,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        ema=args.ema,
        blur_kind=args.blur_kind,
        blur_strength=_one_or_range(args.blur_strength, "--blur-strength"),
        noise=_noise(args.noise_photons),
        resume=args.resume,
        axes=axes,
        validation_axes=validation_axes,
        channels=args.channels,
        on_event=progress,
        preview=False,
        teacher=args.teacher,
        teacher_weight=args.teacher_weight,
        perceptual_weights=args.perceptual_weights,
        precision=args.precision,
    )

    # Ctrl-C (SIGINT) and SIGTERM (a cluster's time limit, `kill`) stop after the current step and save;
    # a second Ctrl-C during training aborts without saving; once the model is being saved, signals wait
    stop_signal: list[int] = []
    saving = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if saving.is_set():
            return  # the save takes a moment, and an interrupted save would leave nothing
        if stop_signal and signum == signal.SIGINT:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        if not stop_signal:
            stop_signal.append(signum)
            training.stop()
            if signum == getattr(signal, "SIGHUP", None):
                detach_from_terminal()  # the progress lines and the save's message would fail on it (EIO)
            again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            # not printed here: a handler that writes to stderr inside an interrupted progress line raises
            # (a re-entrant write); the writer thread prints it at once (and ignores a terminal gone after SIGHUP)
            stderr_from_signal_handlers.say(f"\nstopping after this step{again}...")

    # SIGHUP (the terminal or SSH session closed) as SIGTERM: stop after the step and save, not die mid-save
    # (not a signal ignored, as nohup ignores SIGHUP: such a run goes on when the terminal closes)
    trained = False
    stderr_from_signal_handlers.ready()
    with handling([signal.SIGINT, *TERMINATING_SIGNALS], on_signal):
        with warnings.catch_warnings():
            # the progress line prints every Notice as "note: ..." (or nothing with -q): not twice
            warnings.simplefilter("ignore", TrainingNoticeWarning)
            checkpointed: Any = None  # the last CheckpointSaved of this run
            try:
                for event in training:
                    trained = trained or type(event).__name__ == "Step"
                    if type(event).__name__ == "CheckpointSaved":
                        checkpointed = event
            except KeyboardInterrupt:
                # a second Ctrl-C: no model, but the run so far is not lost when a checkpoint holds it
                if checkpointed is None:
                    raise
                print(
                    f"\n{PROG}: interrupted; the model was not written.{_checkpoint_kept(checkpointed)}",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
            except Exception:
                # a failure mid-run (unreadable data, a device error): the best model so far is still saved
                unsaved = _why_not_saved(training) if trained else None
                if unsaved is not None:
                    # the model so far is the starting model: under the output's name it would pass for a
                    # finetuned one
                    print(f"{PROG}: training failed; {unsaved}.{_checkpoint_kept(checkpointed)}", file=sys.stderr)
                elif trained:
                    saving.set()
                    try:
                        saved, not_written = save_trained_model(
                            training.model, out, args.checkpoint_dir, _checkpoint_kept(checkpointed)
                        )
                    except InputError as exc:
                        print(f"{PROG}: training failed; {exc}", file=sys.stderr)
                    else:
                        instead = f" (could not write {str(out)!r}: {not_written})" if not_written else ""
                        print(
                            f"{PROG}: training failed; the model so far is saved to {saved}{instead}", file=sys.stderr
                        )
                raise
        saving.set()
        if stop_signal and stopped_before_the_first_step(training.finished):
            print(f"{PROG}: stopped before the first step: nothing was trained, no model written", file=sys.stderr)
            return EXIT_INTERRUPTED if stop_signal[0] == signal.SIGINT else 128 + stop_signal[0]
        saved, not_written = save_trained_model(
            training.model, out, args.checkpoint_dir, _checkpoint_kept(checkpointed)
        )
        if not_written is not None:
            raise InputError(
                f"Could not write {str(out)!r} ({not_written}); the trained model was saved to {str(saved)!r} "
                "instead: move it where you want it."
            )
        if not args.quiet:
            print(f"wrote {out}", file=sys.stderr)
    if stop_signal:
        return EXIT_INTERRUPTED if stop_signal[0] == signal.SIGINT else 128 + stop_signal[0]
    return 0


def _why_not_saved(run: Any) -> str | None:
    """:func:`~napari_deblurgan.training.saving.why_not_saved_after_a_failure` of a failed run's model so far;
    None also where the model cannot be built (the save path then says its own error)."""
    from ..training.saving import why_not_saved_after_a_failure

    try:
        return why_not_saved_after_a_failure(run.model)
    except Exception:  # the failure being reported is the one the user must see
        return None


def _checkpoint_kept(event: Any) -> str:
    """The sentence that a checkpoint of this run keeps it and how to continue it; "" where none was written."""
    if event is None:
        return ""
    from ..training.checkpoint import checkpoint_folder

    folder = checkpoint_folder(event.path)
    return f" The checkpoint of step {event.step} in {str(folder)!r} is kept: --resume {folder} continues the run."


def _one_or_range(values: list[float] | None, flag: str) -> float | tuple[float, float] | None:
    if values is None:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise InputError(f"{flag} takes one value or two (LOW HIGH), got {len(values)}")


def _noise(photons: list[float] | None) -> object:
    if photons is None:
        return "realistic"
    if photons == [0.0]:
        return None
    from ..data.pairs import REALISTIC_NOISE

    return {"photons": _one_or_range(photons, "--noise-photons"), "read_noise": REALISTIC_NOISE["read_noise"]}

"""Saving a trained model where hours of training are not lost to a full disk: the one save that the CLI's
``finetune`` and the Finetune panel both use, at the end of a run and for the model so far when a run fails.

Qt-free and torch-free at import (the model's own :meth:`~napari_deblurgan.DeblurModel.save` imports torch).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from ..errors import InputError


def save_trained_model(
    model: Any, out: Path, checkpoint_dir: str | None, checkpoint_note: str = ""
) -> tuple[Path, str | None]:
    """Save the trained ``model`` to ``out``; where that fails (a full disk, a read-only one, its folder removed
    during the run), to ``<stem>-unsaved-<date>-<time>.pt`` in the first of :func:`fallback_folders` that takes
    it: hours of training are not lost to a full disk. Returns where it was saved and, if not to ``out``, why
    ``out`` could not be written ("no space left on device"). Raises :class:`InputError` when nothing could be
    saved, naming each place tried and why, then ``checkpoint_note`` (a checkpoint that keeps the run, if any)."""
    out = Path(out)
    try:
        return Path(model.save(out)), None
    except (OSError, RuntimeError) as exc:  # atomic_write's WriteFailed, or a failure it could not put in words
        not_written = save_failure_cause(exc)
    name = f"{out.stem}-unsaved-{time.strftime('%Y%m%d-%H%M%S')}.pt"
    tried: list[str] = []
    for folder in fallback_folders(checkpoint_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return Path(model.save(folder / name)), not_written
        except (OSError, RuntimeError) as exc:
            tried.append(f"{str(folder)!r} ({save_failure_cause(exc)})")
    raise InputError(
        f"Could not write {str(out)!r} ({not_written}), nor a copy in {' or '.join(tried)}: the trained model could "
        f"not be saved anywhere; free some space before the next run.{checkpoint_note}"
    )


def fallback_folders(checkpoint_dir: str | None) -> list[Path]:
    """Where :func:`save_trained_model` puts a model that its destination cannot take, in order: the run's
    checkpoint folder (the user chose it and looks there), the Finetune panel's models folder
    ``~/.napari-deblurgan/models``, and the system's temporary folder (another disk, often, than a full one)."""
    import tempfile

    from ..model_file import default_model_dir

    folders = [Path(checkpoint_dir)] if checkpoint_dir is not None else []
    with contextlib.suppress(RuntimeError):  # no home folder (a service account): the others
        folders.append(default_model_dir())
    folders.append(Path(tempfile.gettempdir()))
    return folders


def save_failure_cause(exc: BaseException) -> str:
    """Why a save failed, in words: a WriteFailed's reason ("no space left on device"), else the error's own."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(reason).strip().splitlines()[0]


def stopped_before_the_first_step(finished: Any) -> bool:
    """Whether a run's ``Finished`` event says it was stopped before its first step, so that it holds only the
    starting model (a resumed run's step is its checkpoint's, above 0): the CLI and the Finetune panel then save
    nothing, since a copy of the starting model under the chosen name would pass for a finetuned one."""
    return finished is not None and finished.stopped and finished.step == 0


def why_not_saved_after_a_failure(model: Any) -> str | None:
    """Why a failed run's model so far is not saved, as a sentence (no capital, no full stop), or None where it
    holds trained weights. It holds the starting model's where the best validated step is still step 0 (no
    validation after the start scored better, or none gave a finite score) or, without validation, where the
    failure came before any trained weights were kept (an abort inside the first steps' update falls back to the
    start); under the output's name those would pass for a finetuned model. A finished or stopped run still
    saves them: they are the best it found."""
    training = (getattr(model, "metadata", None) or {}).get("training") or {}
    if training.get("best_step") != 0:
        return None
    # whether the run had validation at all, as it recorded it (TrainingRun.provenance): a run with validation
    # has no val_psnr either until a validation gives a finite score
    if training.get("validation") == "none":  # no validation: the latest weights kept are the start's
        return "the failure came before any trained weights were kept, so no model was written"
    if training.get("val_psnr") is None:
        # none had finished (an abort in the first) or each scored NaN/inf: no better score than the start's either
        return "no validation had given a finite score yet, so no model was written"
    return "no validation had scored better than the starting model yet, so no model was written"

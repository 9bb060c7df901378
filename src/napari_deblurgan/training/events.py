"""Typed events of one training run.

:func:`napari_deblurgan.iter_finetune` returns a :class:`~napari_deblurgan.training.trainer.TrainingRun`;
iterating it yields these dataclasses in this order::

    Started, (Step | Validation | Preview | CheckpointSaved | Notice)*, Finished

Every front end (napari widget, CLI progress line, console) consumes the same events, so none of them needs to
know how the loop works. The events are plain data (no torch tensors): images are NumPy arrays, losses floats.
This module imports neither torch nor napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # only for type checkers: importing model_file pulls in torch
    from ..model_file import DeblurModel


@dataclass(frozen=True)
class Started:
    """The run is set up (data checked, models on the device) and about to take its first step.

    ``start_step`` is 0 for a fresh run and the checkpoint's step when resuming.
    """

    total_steps: int
    start_step: int
    preset: str
    device: str
    architecture: str
    batch_size: int
    patch_size: int
    train_samples: str
    validation_samples: str
    perceptual: str  # "vgg19", "critic-features" (fallback) or "none"


@dataclass(frozen=True)
class Step:
    """One generator update finished.

    ``losses`` holds the weighted loss terms of this step (e.g. ``{"content": ..., "perceptual": ...,
    "adversarial": ..., "critic": ..., "gradient_penalty": ...}``); ``images_per_second`` counts generator
    training images (batch size / wall time of the whole step, critic updates included).
    """

    step: int
    total_steps: int
    losses: dict[str, float]
    learning_rate: float
    images_per_second: float


@dataclass(frozen=True)
class Validation:
    """Validation metrics of the current generator (or its EMA, ``source="ema"``) on the held-out crops.

    Both metrics are means over the validation crops of each crop's own value (trainer.VALIDATION_METRIC).
    ``psnr_input``/``ssim_input`` are the metrics of the blurred input itself: the gain is
    ``psnr - psnr_input``. ``is_best`` is True when this is the best validation PSNR so far (that model is
    what the run returns).

    Scale: the metrics are computed on *normalised* crops, as the network sees them: each channel plane is
    scaled by the 1st-99.8th percentiles of its blurred plane (the sharp one where there is no blurred one),
    ``(x - p1) / (p99.8 - p1)``, and PSNR and SSIM take data range 1, that percentile span. So the PSNR (in dB)
    is not comparable to :func:`~napari_deblurgan.compare`'s, which takes the ground truth's dtype range or
    min-max (or ``data_range=``) on the whole image: on the cells sample the blurred input scores
    ``psnr_input`` 15.21 dB here and 22.92 dB in ``compare()``. A crop whose error exceeds the percentile span
    (bright objects above the 99.8th percentile) can score below 0 dB. Compare validation values with each
    other (within one run, or runs on the same data), not with ``compare()``.
    """

    step: int
    psnr: float
    ssim: float
    psnr_input: float
    ssim_input: float
    is_best: bool
    source: str = "generator"


@dataclass(frozen=True)
class Preview:
    """The current restoration of one fixed validation crop, with its blurred input and sharp target.

    Images are float32 arrays in normalised intensity units (each channel's percentiles of the blurred crop at
    0 and 1): 2-D (Y, X) for a one-channel model, (C, Y, X) with every channel for a C-channel model (an RGB
    model's preview is in colour).
    """

    step: int
    image: np.ndarray = field(repr=False)
    input: np.ndarray = field(repr=False)
    target: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class CheckpointSaved:
    """A resumable checkpoint was written (atomically) to ``path``."""

    step: int
    path: str


class TrainingNoticeWarning(UserWarning):
    """The Python warning that accompanies a :class:`Notice` the user must not miss (a UserWarning, so the usual
    filters apply). Front ends that show the Notice events themselves ignore this category: the CLI with a
    warnings filter, the Finetune panel (whose run is in a worker thread, where a process-wide filter is not
    safe) with ``TrainingRun.notice_warnings = False``."""


@dataclass(frozen=True)
class Notice:
    """Something the user should know that did not stop the run.

    ``kind`` is one of ``"rollback"`` (non-finite loss: weights restored, learning rate halved),
    ``"oom"`` (out of GPU memory: batch halved), ``"perceptual-fallback"`` (no VGG-19 weights: critic feature
    matching used instead), ``"diverged"`` (too many rollbacks: run ended), ``"resume-data"`` (resumed with
    other training data than the checkpoint's), ``"checkpoint-failed"`` (a checkpoint could not be written, or
    was not because the state is not finite: the run goes on, the previous checkpoint kept), ``"interrupted"``
    (Ctrl-C: the run stops after the step in progress), or ``"info"``.
    """

    step: int
    message: str
    kind: str = "info"


@dataclass(frozen=True)
class Finished:
    """The run ended; ``model`` is the model the run returns (best validation PSNR, or last/EMA without
    validation). ``stopped`` is True when it ended early (``TrainingRun.stop()``, Ctrl-C, divergence)."""

    model: DeblurModel | Any = field(repr=False)
    step: int
    stopped: bool
    best_psnr: float | None


TrainingEvent = Union[Started, Step, Validation, Preview, CheckpointSaved, Notice, Finished]  # noqa: UP007

__all__ = [
    "CheckpointSaved",
    "Finished",
    "Notice",
    "Preview",
    "Started",
    "Step",
    "TrainingEvent",
    "TrainingNoticeWarning",
    "Validation",
]

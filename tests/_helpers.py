"""Builders shared by the training tests: the tiny model and the tiny run they start from.

Plain functions, not fixtures: the tests call them many times with different arguments (``tiny_run(pair,
steps=4, resume=...)``), often more than once in a test. Import them as ``from _helpers import ...``
(pytest puts ``tests/`` on ``sys.path`` for its conftest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_deblurgan.model_file import DeblurModel
    from napari_deblurgan.training.trainer import TrainingRun

#: Smallest sensible unet_lite: a few thousand parameters, stride 4; enough to exercise every code path.
TINY_UNET_ARGS: dict[str, int] = {"width": 4, "depth": 2, "n_blocks": 1}

#: A run of 3 steps of 2 crops of 32 px on the CPU, seeded, validated only at its start and end (every 100
#: steps): seconds on a 2-core machine. MSE content loss only: no critic, no VGG-19 weights needed.
TINY_RUN_ARGS: dict[str, Any] = {
    "steps": 3,
    "patch_size": 32,
    "batch_size": 2,
    "preset": "content-mse",
    "device": "cpu",
    "seed": 0,
    "validate_every": 100,
}


def tiny_unet(channels: int = 1, seed: int = 0, **arch_args: int) -> DeblurModel:
    """An untrained ``unet_lite`` of :data:`TINY_UNET_ARGS` (``arch_args`` override them), deterministic by
    ``seed``."""
    from napari_deblurgan.model_file import create_model

    return create_model("unet_lite", channels, seed=seed, **{**TINY_UNET_ARGS, **arch_args})


def tiny_run(data: Sequence[Any], **kwargs: Any) -> TrainingRun:
    """``iter_finetune(*data, ...)`` with :data:`TINY_RUN_ARGS` and a fresh :func:`tiny_unet` as the model,
    each overridden by ``kwargs``; nothing is trained until the run is iterated."""
    from napari_deblurgan.training.trainer import iter_finetune

    args = {**TINY_RUN_ARGS, **kwargs}
    if "model" not in args:  # a fresh one per run: training never changes the caller's model, but be sure
        args["model"] = tiny_unet()
    return iter_finetune(*data, **args)

"""Builders shared by the training tests: the tiny model and the tiny run they start from.

Plain functions, not fixtures: the tests call them many times with different arguments (``tiny_run(pair,
steps=4, resume=...)``), often more than once in a test. Import them as ``from _helpers import ...``
(pytest puts ``tests/`` on ``sys.path`` for its conftest.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pytest

    from napari_deblurgan.cli.deblur_command import TiffPages
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


@contextlib.contextmanager
def lazy_tiff_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blurred: np.ndarray, sharp: np.ndarray, **options: Any
) -> Iterator[tuple[TiffPages, TiffPages, str]]:
    """``(blurred, sharp)`` written as zlib TIFFs (``options``: tifffile's strips or tiles) and read back as
    `finetune` reads stacks over its in-memory limit (lazily, through ``TiffPages``), with their axes."""
    import tifffile

    from napari_deblurgan.cli import finetune_command
    from napari_deblurgan.cli.deblur_command import TiffPages

    for name, stack in (("blurred", blurred), ("sharp", sharp)):
        photometric = "rgb" if stack.shape[-1] == 3 else "minisblack"
        tifffile.imwrite(tmp_path / f"{name}.tif", stack, compression="zlib", photometric=photometric, **options)
    monkeypatch.setattr(finetune_command, "TRAINING_IN_MEMORY_BYTES", 1)
    with contextlib.ExitStack() as opened:
        lazy_blurred, axes = finetune_command.read_image(tmp_path / "blurred.tif", None, opened)
        lazy_sharp, _ = finetune_command.read_image(tmp_path / "sharp.tif", None, opened)
        assert isinstance(lazy_blurred, TiffPages) and isinstance(lazy_sharp, TiffPages)
        yield lazy_blurred, lazy_sharp, axes


def raise_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, n: int, error: BaseException) -> None:
    """Make ``owner.name`` (a method of a class, counted over all its instances, or a module's function) raise
    ``error`` on its ``n``-th call and behave as before on every other: a failure or a Ctrl-C at a chosen point
    of a run (a batch that cannot be read, an abort inside an update)."""
    original = getattr(owner, name)
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing_once)

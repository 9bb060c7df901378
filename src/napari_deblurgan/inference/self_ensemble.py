"""The geometric self-ensemble: a generator run on the 8 flips/rotations of its input, averaged turned back.

Used by ``deblur(self_ensemble=True)`` (inference) and by a finetuning teacher (training/distillation.py),
so that both compute the same thing. Torch is imported inside the functions: deblur.py imports this module at
its top, and importing the package must not import torch (napari starts faster).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The 8 symmetries of the square as (quarter turns, mirror left-right first); the identity first.
DIHEDRAL_TRANSFORMS: tuple[tuple[int, bool], ...] = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def dihedral(x: Any, turns: int, flip: bool) -> Any:
    """Apply one symmetry to the last two axes of a (N, C, H, W) tensor: mirror left-right, then rotate."""
    import torch

    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def dihedral_inverse(y: Any, turns: int, flip: bool) -> Any:
    """Undo :func:`dihedral`: rotate back, then mirror."""
    import torch

    if turns:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y


def ensemble_forward(
    generator: Callable[[Any], Any],
    x: Any,
    *,
    transforms: tuple[tuple[int, bool], ...] = DIHEDRAL_TRANSFORMS,
    channels_last: bool = False,
    before_pass: Callable[[int], None] | None = None,
) -> Any:
    """Mean over ``transforms`` of ``generator`` applied to the transformed ``x`` and turned back (float32).

    One forward pass at a time, so memory stays that of one pass. The caller sets the grad/autocast mode.
    ``before_pass(index)`` runs before every pass (e.g. to raise on cancellation).
    """
    import torch

    total = None
    for index, (turns, flip) in enumerate(transforms):
        if before_pass is not None:
            before_pass(index)
        t = dihedral(x, turns, flip)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        y = dihedral_inverse(generator(t).float(), turns, flip)
        total = y if total is None else total + y
    if len(transforms) > 1:
        total /= len(transforms)
    return total

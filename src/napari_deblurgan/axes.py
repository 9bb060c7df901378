"""Axes strings: which array dimension is what.

Letters: ``T`` time, ``Z`` depth, ``C`` channel, ``Y``/``X`` the image plane, ``S`` RGB(A) samples (last axis
of an RGB image, as napari's ``rgb=True`` layers and tifffile's ``S``). The 2D models run on every YX plane; a
channel axis (``C`` or ``S``) either feeds a multichannel model or is processed channel by channel.
No torch, no napari here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError

AXES_LETTERS = "TZCYXS"
CHANNEL_LETTERS = "CS"


def validate_axes(axes: str, ndim: int) -> str:
    """Upper-cased ``axes`` after checking length, letters, repeats and the presence of Y and X."""
    if not isinstance(axes, str):
        raise InputError(f"axes must be a string such as 'YX' or 'ZYX', got {type(axes).__name__}")
    axes = axes.upper()
    if len(axes) != ndim:
        raise InputError(
            f"axes {axes!r} has {len(axes)} letters but the image has {ndim} dimensions; "
            f"give one letter per dimension from {AXES_LETTERS!r}"
        )
    unknown = sorted(set(axes) - set(AXES_LETTERS))
    if unknown:
        raise InputError(f"axes {axes!r} has unknown letter(s) {unknown}; use only letters from {AXES_LETTERS!r}")
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise InputError(f"axes {axes!r} repeats {repeated}; each letter may appear once")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes {axes!r} must contain both 'Y' and 'X' (the image plane)")
    if "C" in axes and "S" in axes:
        raise InputError(f"axes {axes!r} has both 'C' and 'S'; an image has one channel axis at most")
    return axes


def infer_axes(shape: Sequence[int], *, rgb: bool | None = None) -> str:
    """Axes for an array of ``shape`` when the user gave none; raises asking for ``axes`` when ambiguous.

    The last two dimensions are the image plane unless the last one is RGB samples (``rgb=True``, or size 3/4
    when ``rgb`` is None). 3D is a Z stack, 4D a time-lapse of Z stacks; 5D and more need explicit axes.
    """
    ndim = len(shape)
    if rgb and (ndim < 3 or shape[-1] not in (3, 4)):
        raise InputError(
            f"rgb=True needs a last axis of 3 or 4 samples (RGB/RGBA), but the image has shape {tuple(shape)}; "
            "pass rgb=False (or leave it unset) for a grey image"
        )
    if rgb is None:
        rgb = ndim >= 3 and shape[-1] in (3, 4)
    rgb_suffix = "S" if rgb else ""
    spatial = ndim - len(rgb_suffix)
    by_ndim = {2: "YX", 3: "ZYX", 4: "TZYX"}
    if spatial not in by_ndim:
        raise InputError(
            f"cannot tell the axes of a {ndim}D image of shape {tuple(shape)}; pass axes, e.g. "
            f"axes='TCZYX' ({AXES_LETTERS!r}: time, depth, channel, Y, X, RGB samples)"
        )
    return by_ndim[spatial] + rgb_suffix


def resolve_axes(shape: Sequence[int], axes: str | None = None, *, rgb: bool | None = None) -> str:
    """Validated axes: ``axes`` as given (checked against ``shape``) or inferred from it. ``rgb`` may be given
    with ``axes`` only if the two agree (an RGB image's axes end in ``S``): one of them would be ignored."""
    if axes is None:
        return infer_axes(shape, rgb=rgb)
    resolved = validate_axes(axes, len(shape))
    if rgb is not None and bool(rgb) != resolved.endswith("S"):
        raise InputError(
            f"rgb={bool(rgb)} contradicts axes {resolved!r} ("
            + ("RGB samples are the last axis, 'S'" if rgb else "the last axis 'S' holds RGB samples")
            + "); pass only axes, or axes that agree with rgb"
        )
    return resolved


def channel_axis(axes: str) -> int | None:
    """Index of the channel axis (``C`` or ``S``), or None."""
    for letter in CHANNEL_LETTERS:
        if letter in axes:
            return axes.index(letter)
    return None


def is_rgba(shape: Sequence[int], axes: str) -> bool:
    """Whether an image of ``shape`` with ``axes`` is RGBA: an ``S`` axis of 4 samples. The one rule of every
    public function (``deblur``, ``synthesize_blur``, ``wiener``, ``richardson_lucy``, ``compare``, and the
    metrics ``psnr``, ``ssim``, ``nrmse``, ``sharpness``): the 4th sample is alpha, opacity rather than an image,
    and is kept as it is (or, in ``compare`` and the metrics, left out of the scores); the colours are processed
    as RGB. A ``C`` axis of 4 is four image channels, all processed."""
    return "S" in axes and shape[axes.index("S")] == 4


def plane_name(axes: str, named: dict[int, list[int]]) -> str:
    """``"plane Z=2, C=1"``, as error messages name a plane of a stack: ``named`` maps axes (their positions in
    ``axes``) to the indices to name, given in the axes' order; "" when there is nothing to name (a single
    plane)."""
    parts = [f"{axes[a]}={','.join(map(str, named[a]))}" for a in sorted(named)]
    if not parts:
        return ""
    only_channels = all(axes[a] in "CS" for a in named)
    return f"{'channel' if only_channels else 'plane'} {', '.join(parts)}"

"""Generator architectures and the PatchGAN critic.

``ARCHITECTURES`` maps a name to (generator class, default constructor arguments, one-line description).
Every generator has ``stride``, ``receptive_radius`` and ``config`` attributes (see docs/architecture.md).
This package imports torch: import it lazily (``napari_deblurgan.list_architectures`` does).
"""

from __future__ import annotations

from typing import Any

from .resnet_generator import ResnetGenerator
from .unet_generator import UNetGenerator

ARCHITECTURES: dict[str, tuple[type, dict[str, Any], str]] = {
    "resnet9": (
        ResnetGenerator,
        {"width": 64, "n_blocks": 9, "norm": "batch", "residual": "tanh"},
        "DeblurGAN (CVPR 2018) ResNet generator: 9 residual blocks at 256 channels; GPU-class cost",
    ),
    "unet_lite": (
        UNetGenerator,
        {
            "width": 16,
            "depth": 3,
            "n_blocks": 2,
            "stem": "conv",
            "padding_mode": "reflect",
            "residual": "tanh",
            "context_window": 0,
        },
        "light residual U-Net for CPUs: no normalisation, ~1/20 of resnet9's arithmetic",
    ),
    "unet_fast": (
        UNetGenerator,
        {
            "width": 24,
            "depth": 3,
            "n_blocks": 2,
            "stem": "unshuffle",
            "padding_mode": "zeros",
            "residual": "tanh",
            "context_window": 0,
        },
        "U-Net at half resolution and below (pixel unshuffle/shuffle), zero padding: ~2.8x unet_lite's CPU speed",
    ),
}


def list_architectures() -> list[str]:
    """Names accepted by :func:`build_generator` and ``create_model``."""
    return list(ARCHITECTURES)


def build_generator(architecture: str, channels: int = 1, **arch_args: Any):
    """An untrained generator; ``arch_args`` override the architecture's defaults (e.g. ``width=8``)."""
    from ..errors import InputError

    try:
        cls, defaults, _ = ARCHITECTURES[architecture]
    except KeyError:
        raise InputError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}") from None
    if not isinstance(channels, int) or channels < 1:
        raise InputError(f"channels must be a positive integer, got {channels!r}")
    unknown = set(arch_args) - set(defaults)
    if unknown:
        raise InputError(f"{architecture} takes no argument(s) {sorted(unknown)}; it takes {sorted(defaults)}")
    try:
        return cls(channels=channels, **{**defaults, **arch_args})
    except ValueError as exc:  # a value the generator rejects (e.g. an even context window): say which model
        raise InputError(f"{architecture}: {exc}") from None

"""Tile-consistent building blocks shared by the generators.

Why no InstanceNorm: DeblurGAN's reference generator normalises every feature map with statistics of the image
it sees. When a large image is processed tile by tile those statistics differ from tile to tile and the tiles
disagree at their borders (visible seams). Every block here either uses no normalisation or BatchNorm, whose
running statistics are fixed at inference, so a pixel's output depends only on its receptive field.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "none")

#: How a generator's last feature map becomes the residual added to its input (the global skip ``x + r``).
#: "tanh" bounds it to (-1, 1) as DeblurGAN does; "linear" leaves it unbounded. In percentile-normalised
#: units (blurred image's 1st..99.8th percentile -> 0..1) the sharp image of sparse bright objects - beads,
#: thin filaments - under a long blur peaks at many times 1: a bead smeared over 20 pixels is 20x dimmer
#: than its sharp self. A tanh residual cannot bring it back above ``x + 1`` and its gradient vanishes on the
#: way there, so only "linear" can restore those peaks.
RESIDUALS = ("tanh", "linear")


def check_residual(residual: str) -> str:
    """``residual`` if it is one of :data:`RESIDUALS`, else ValueError (generators check it at construction)."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    return residual


def residual_output(x: torch.Tensor, raw: torch.Tensor, residual: str) -> torch.Tensor:
    """The global residual ``x + tanh(raw)`` or ``x + raw`` (see :data:`RESIDUALS`)."""
    return x + (torch.tanh(raw) if residual == "tanh" else raw)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A normalisation layer that is tile-consistent in eval mode (``kind`` in :data:`NORMS`)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm with an identity shortcut (both convs: the reference code lost the second)."""

    def __init__(self, channels: int, norm: str = "batch", padding_mode: str = "reflect") -> None:
        super().__init__()
        bias = norm == "none"  # a bias before BatchNorm is redundant
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x):
        return x + self.body(x)

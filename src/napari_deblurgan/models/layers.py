"""Tile-consistent building blocks shared by the generators.

Why no InstanceNorm: DeblurGAN's reference generator normalises every feature map with statistics of the image
it sees. When a large image is processed tile by tile those statistics differ from tile to tile and the tiles
disagree at their borders (visible seams). Every block here either uses no normalisation or BatchNorm, whose
running statistics are fixed at inference, so a pixel's output depends only on its receptive field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class PooledContext(nn.Module):
    """Modulate every position by the mean of its neighbourhood's features: ``x * (1 + s) + t`` with
    ``(s, t) = MLP(mean of x over a window x window box)``.

    Why: motion blur is (nearly) the same streak all over a field of view, but a network that judges one
    neighbourhood at a time cannot tell a streak that every bead shares from a short curved filament. The box
    mean pools the evidence of many objects into one description of the blur that every position then uses.
    A box mean (not a global pool) keeps the block translation-equivariant with a finite reach, so tiled
    inference stays seamless: the reach is part of the generator's receptive radius. Borders average only
    the positions inside the image (``count_include_pad=False``), as they do in training crops.
    The MLP's last layer starts at zero: a new block is the identity (a warm start for a trained network).
    """

    def __init__(self, channels: int, window: int) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"context window must be a positive odd number of positions, got {window!r}")
        self.window = int(window)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 2 * channels, 1)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.window // 2
        context = F.avg_pool2d(x, self.window, stride=1, padding=pad, count_include_pad=False)
        scale, shift = self.mlp(context).chunk(2, dim=1)
        return x * (1.0 + scale) + shift

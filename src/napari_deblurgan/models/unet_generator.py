"""Residual U-Nets for CPU users: `unet_lite` and `unet_fast` (1/20 to 1/40 of resnet9's arithmetic).

Each level halves the resolution and doubles the width; the bottom level holds residual blocks that give the
large receptive field motion blur needs; the decoder uses 2x2 transposed convolutions and skip connections.
No normalisation at all (tile-consistent by construction) and ReLU everywhere (fused by oneDNN on CPU).
Output: ``x + tanh(G(x))``, the same global residual as DeblurGAN, or ``x + G(x)`` with ``residual="linear"``
(unbounded: sparse bright objects under a long blur need residuals far above 1; layers.RESIDUALS says why).

``stem="unshuffle"`` (`unet_fast`) folds each 2x2 pixel block into 4 channels before the first convolution
and unfolds the output the same way (pixel shuffle), so no convolution runs at full resolution. On a CPU the
full-resolution level is the expensive one - its 16-channel feature maps are memory-bound - and a deblurring
network gains little from it. ``padding_mode="zeros"`` lets oneDNN pad inside the convolution; reflect padding
is a separate copy of every feature map (about a fifth of `unet_lite`'s CPU time).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import PooledContext, ResidualBlock, check_residual, residual_output

STEMS = ("conv", "unshuffle")


def _conv_relu(c_in: int, c_out: int, stride: int = 1, padding_mode: str = "reflect") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, padding_mode=padding_mode), nn.ReLU(inplace=True)
    )


class UNetGenerator(nn.Module):
    """Residual U-Net with ``depth`` downsamplings and ``n_blocks`` residual blocks at the bottom.

    Args:
        channels: image channels in and out.
        width: feature channels of the first level (doubled at every level below).
        depth: number of stride-2 levels below the first.
        n_blocks: residual blocks at the bottom level.
        stem: ``"conv"`` (the first level works at full resolution) or ``"unshuffle"`` (2x2 pixel unshuffle
            in, pixel shuffle out: every level works at half resolution or less).
        padding_mode: ``"reflect"`` or ``"zeros"`` for every 3x3 convolution.
        residual: ``"tanh"`` (``x + tanh(G(x))``, DeblurGAN) or ``"linear"`` (``x + G(x)``, unbounded).
        context_window: 0 (none) or an odd number of bottom-level positions: after the residual blocks, a
            :class:`~napari_deblurgan.models.layers.PooledContext` block modulates every position by the mean
            features of the ``context_window`` x ``context_window`` box around it (``context_window * stride``
            pixels wide), so the network can use blur evidence from many objects.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 16,
        depth: int = 3,
        n_blocks: int = 2,
        stem: str = "conv",
        padding_mode: str = "reflect",
        residual: str = "tanh",
        context_window: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if padding_mode not in ("reflect", "zeros"):
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
        if (
            isinstance(context_window, bool)
            or not isinstance(context_window, int)
            or context_window < 0
            or (context_window and context_window % 2 == 0)
        ):
            raise ValueError(f"context_window must be 0 or a positive odd integer, got {context_window!r}")
        self.residual = check_residual(residual)
        self.config = {
            "channels": channels,
            "width": width,
            "depth": depth,
            "n_blocks": n_blocks,
            "stem": stem,
            "padding_mode": padding_mode,
            "residual": residual,
        }
        if context_window:  # only when used: files without a context block stay readable by older versions
            self.config["context_window"] = context_window
        fold = 2 if stem == "unshuffle" else 1
        self.stride = fold * 2**depth
        pm = padding_mode
        widths = [width * 2**i for i in range(depth + 1)]
        self.unshuffle = nn.PixelUnshuffle(2) if fold == 2 else nn.Identity()
        self.shuffle = nn.PixelShuffle(2) if fold == 2 else nn.Identity()
        c_io = channels * fold * fold
        self.head = nn.Sequential(
            _conv_relu(c_io, widths[0], padding_mode=pm), _conv_relu(widths[0], widths[0], padding_mode=pm)
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                _conv_relu(widths[i], widths[i + 1], stride=2, padding_mode=pm),
                _conv_relu(widths[i + 1], widths[i + 1], padding_mode=pm),
            )
            for i in range(depth)
        )
        self.bottom = nn.Sequential(*(ResidualBlock(widths[-1], norm="none", padding_mode=pm) for _ in range(n_blocks)))
        self.context = PooledContext(widths[-1], context_window) if context_window else None
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(
            _conv_relu(2 * widths[i], widths[i], padding_mode=pm) for i in reversed(range(depth))
        )
        self.tail = nn.Conv2d(widths[0], c_io, 3, padding=1, padding_mode=pm)
        # Receptive radius in pixels of the first level: head 2; level i (stride 2**i after its s2 conv) adds
        # 2**(i-1) for the strided conv and 2**i for the second conv; bottom blocks add 2 * 2**depth each; on the
        # way up each 2x2 transposed conv may reach one pixel further (2**i) and each merge conv adds 2**i; tail 1.
        radius = 2
        for i in range(1, depth + 1):
            radius += 2 ** (i - 1) + 2**i
        radius += n_blocks * 2 * 2**depth
        radius += (context_window // 2) * 2**depth  # the context box reaches window // 2 bottom positions
        for i in reversed(range(depth)):
            radius += 2 ** (i + 1) + 2**i
        radius += 1
        # A first-level pixel of the unshuffled stem covers 2x2 input pixels: radius doubles, plus the block.
        self.receptive_radius = radius * fold + (fold - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = self.head(self.unshuffle(x))
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        if self.context is not None:
            h = self.context(h)
        for up, merge in zip(self.up, self.merge, strict=True):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return residual_output(x, self.shuffle(self.tail(h)), self.residual)

"""`unet_lite`: a light residual U-Net for CPU users (about 1/20 of resnet9's arithmetic).

Each level halves the resolution and doubles the width; the bottom level holds residual blocks that give the
large receptive field motion blur needs; the decoder uses 2x2 transposed convolutions and skip connections.
No normalisation at all (tile-consistent by construction) and ReLU everywhere (fused by oneDNN on CPU).
Output: ``x + tanh(G(x))``, the same global residual as DeblurGAN.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ResidualBlock


def _conv_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="reflect"), nn.ReLU(inplace=True)
    )


class UNetGenerator(nn.Module):
    """Residual U-Net with ``depth`` downsamplings and ``n_blocks`` residual blocks at the bottom."""

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 3, n_blocks: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.config = {"channels": channels, "width": width, "depth": depth, "n_blocks": n_blocks}
        self.stride = 2**depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.head = nn.Sequential(_conv_relu(channels, widths[0]), _conv_relu(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_relu(widths[i], widths[i + 1], stride=2), _conv_relu(widths[i + 1], widths[i + 1]))
            for i in range(depth)
        )
        self.bottom = nn.Sequential(*(ResidualBlock(widths[-1], norm="none") for _ in range(n_blocks)))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(_conv_relu(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.tail = nn.Conv2d(widths[0], channels, 3, padding=1, padding_mode="reflect")
        # Receptive radius in input pixels: head 2; level i (stride 2**i after its s2 conv) adds 2**(i-1) for the
        # strided conv and 2**i for the second conv; bottom blocks add 2 * 2**depth each; on the way up each
        # 2x2 transposed conv may reach one input pixel further (2**i) and each merge conv adds 2**i; tail 1.
        radius = 2
        for i in range(1, depth + 1):
            radius += 2 ** (i - 1) + 2**i
        radius += n_blocks * 2 * 2**depth
        for i in reversed(range(depth)):
            radius += 2 ** (i + 1) + 2**i
        self.receptive_radius = radius + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = self.head(x)
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        for up, merge in zip(self.up, self.merge, strict=True):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return x + torch.tanh(self.tail(h))

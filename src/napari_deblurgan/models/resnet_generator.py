"""`resnet9`: the DeblurGAN generator (Kupyn et al., CVPR 2018), without the reference code's bugs.

7x7 conv -> two stride-2 convs -> 9 residual blocks (conv-norm-ReLU-conv-norm, 256 channels) -> two transposed
convs -> 7x7 conv -> tanh, with the global residual ``x + tanh(G(x))``. Differences from the reference code,
each on purpose: both convs of every residual block are kept; normalisation is BatchNorm (running statistics
at inference) instead of InstanceNorm, so tiled inference has no seams; the output is not clamped to [-1, 1]
because inputs are percentile-normalised microscopy intensities where highlights may exceed 1, and
``residual="linear"`` drops the tanh for the same reason (layers.RESIDUALS).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ResidualBlock, check_residual, norm_layer, residual_output


class ResnetGenerator(nn.Module):
    """DeblurGAN ResNet generator with ``n_blocks`` residual blocks at 1/4 resolution."""

    stride = 4  # two stride-2 convolutions: input sides must be multiples of 4

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        n_blocks: int = 9,
        norm: str = "batch",
        residual: str = "tanh",
    ) -> None:
        super().__init__()
        self.residual = check_residual(residual)
        self.config = {"channels": channels, "width": width, "n_blocks": n_blocks, "norm": norm, "residual": residual}
        bias = norm == "none"
        w = width
        layers: list[nn.Module] = [
            nn.Conv2d(channels, w, 7, padding=3, padding_mode="reflect", bias=bias),
            norm_layer(norm, w),
            nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):  # downsampling: w -> 2w -> 4w
            layers += [
                nn.Conv2d(w * mult, w * mult * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, w * mult * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [ResidualBlock(w * 4, norm) for _ in range(n_blocks)]
        for mult in (4, 2):  # upsampling: 4w -> 2w -> w
            layers += [
                nn.ConvTranspose2d(w * mult, w * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                norm_layer(norm, w * mult // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(w, channels, 7, padding=3, padding_mode="reflect")]
        self.body = nn.Sequential(*layers)
        # Receptive field, counted layer by layer in input pixels (radius = (k - 1) / 2 * current stride):
        # 7x7 (3) + s2 conv (1) + s2 conv (2) + 2 convs per block at stride 4 (8 each) + 2 transposed convs
        # (4 + 2) + 7x7 (3). Tests check it against the measured gradient support.
        self.receptive_radius = 3 + 1 + 2 + 8 * n_blocks + 4 + 2 + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_output(x, self.body(x), self.residual)

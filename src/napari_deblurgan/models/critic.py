"""The 70x70 PatchGAN critic used by WGAN-GP training (pix2pix / DeblurGAN).

Five 4x4 convolutions (three with stride 2) give each output score a 70x70 pixel receptive field, so the
critic judges local texture and sharpness, not global layout. No BatchNorm: the WGAN-GP gradient penalty is
defined per sample, and batch statistics would couple the samples; InstanceNorm (affine) is used instead
(training only: the critic never runs at inference).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchCritic(nn.Module):
    """Conditional-free 70-px PatchGAN critic: image (N, C, H, W) -> score map (N, 1, H/8 - 2, W/8 - 2)."""

    receptive_field = 70

    def __init__(self, channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.config = {"channels": channels, "width": width}
        w = width

        def block(c_in: int, c_out: int, stride: int, norm: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1)]
            if norm:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return nn.Sequential(*layers)

        self.blocks = nn.ModuleList(
            [
                block(channels, w, 2, norm=False),
                block(w, 2 * w, 2, norm=True),
                block(2 * w, 4 * w, 2, norm=True),
                block(4 * w, 8 * w, 1, norm=True),
            ]
        )
        self.score = nn.Conv2d(8 * w, 1, 4, stride=1, padding=1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate activations (for pix2pixHD-style feature matching) followed by the score map."""
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        out.append(self.score(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]

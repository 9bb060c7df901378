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

    @classmethod
    def smallest_input(cls) -> int:
        """The smallest side (px) of a square image the critic can score while training, worked out from its
        layers: every convolution's output at least 1 px, and every InstanceNorm's input more than one value
        (it normalises over the plane; torch refuses a 1 x 1 one in training). The width does not matter."""
        with torch.random.fork_rng(devices=[]):  # the probe's initialisation leaves the caller's RNG alone
            probe = cls(channels=1, width=1)
        layers = [m for m in probe.modules() if isinstance(m, (nn.Conv2d, nn.InstanceNorm2d))]

        def fits(side: int) -> bool:
            for layer in layers:  # modules() lists them in the order the forward pass runs them
                if isinstance(layer, nn.InstanceNorm2d):
                    if side * side < 2:
                        return False
                    continue
                k, s, p, d = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]
                side = (side + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[operator]
                if side < 1:
                    return False
            return True

        side = 1
        while not fits(side):
            side += 1
        return side

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

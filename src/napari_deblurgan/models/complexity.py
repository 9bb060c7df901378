"""Size and cost of a network, computed from the network itself (not quoted from papers).

* :func:`count_parameters` - trainable parameters.
* :func:`macs_per_megapixel` - multiply-accumulates of one forward pass per megapixel of input, counted with
  forward hooks on every convolution (the layers that dominate the cost; activations and norms are ignored).
  FLOPs are 2 x MACs.
* :func:`measured_receptive_radius` - how far (in pixels) the input can influence one output pixel, measured
  as the support of the gradient of a centre output pixel. Used by the tests to check each generator's
  declared ``receptive_radius``, which sets the tile overlap.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def macs_per_megapixel(module: nn.Module, channels: int, side: int = 256) -> float:
    """Convolution MACs of one forward pass on a ``side`` x ``side`` input, scaled to 10**6 pixels."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.ConvTranspose2d):
            # every input pixel scatters a full kernel into the output
            x = inputs[0]
            total += (
                x.shape[2]
                * x.shape[3]
                * layer.in_channels
                * layer.out_channels
                * layer.kernel_size[0]
                * (layer.kernel_size[1])
                // layer.groups
            )
        else:
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            total += output.shape[2] * output.shape[3] * layer.out_channels * k

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    was_training = module.training
    try:
        module.eval()
        with torch.inference_mode():
            module(torch.zeros(1, channels, side, side))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return total * 1e6 / (side * side)


def measured_receptive_radius(module: nn.Module, channels: int, side: int = 256) -> int:
    """Largest distance (Chebyshev, pixels) from the centre at which the input changes the centre output.

    Weights are replaced by small positive constants (1 / fan-in, so activations neither vanish nor saturate
    the output tanh) on a copy, so that no influence cancels out by chance.
    """
    import copy

    probe = copy.deepcopy(module).eval().double()
    with torch.no_grad():
        for name, p in probe.named_parameters():
            if p.ndim > 1:  # conv weights: (out, in, k, k) or, transposed, (in, out, k, k)
                p.copy_(torch.full_like(p, 0.5 / (p[0].numel() + p[:, 0].numel())))
            else:  # biases, norm scales and shifts
                p.copy_(torch.full_like(p, 1.0 if name.endswith("weight") else 0.0))
    x = torch.rand(1, channels, side, side, dtype=torch.float64, requires_grad=True)
    out = probe(x)
    c = side // 2
    out[0, :, c, c].sum().backward()
    support = (x.grad[0].abs().sum(0) > 0).nonzero()
    return int((support - c).abs().max())

"""Loss functions of the GAN finetuning engine.

* content: L1 / MSE between restoration and sharp target, or the mean over crops of each crop's log MSE;
* perceptual: MSE between VGG-19 conv3_3 features (:mod:`.perceptual`), or - when no VGG weights are
  available - pix2pixHD feature matching: L1 between the critic's intermediate activations of the restoration
  and of the sharp target;
* WGAN-GP: critic loss ``D(fake) - D(real) + lambda * (||grad D(x_hat)||_2 - 1)^2`` with one interpolation
  factor *per sample* and the gradient norm taken over all of a sample's pixels and channels (the reference
  DeblurGAN code drew one factor per batch and took the norm over channels only); generator term
  ``-D(fake)``.

All functions take and return tensors; the trainer calls them through this module (``losses.content_loss``)
so tests can monkeypatch one to inject a NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


#: Floor added to each crop's MSE in the ``log-mse`` loss (normalised units, i.e. 60 dB): a crop restored
#: better than that stops pulling, so nearly perfect crops do not chase float round-off.
LOG_MSE_FLOOR = 1e-6


def content_loss(fake: torch.Tensor, real: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Pixel loss between restoration ``fake`` and target ``real``: ``"l1"`` and ``"mse"`` average over all
    elements; ``"log-mse"`` averages ``log(MSE_i + floor)`` over the crops ``i``.

    Why ``log-mse``: the evaluation reports the mean PSNR over images, and ``-10 log10(MSE)`` summed over crops
    is that up to a constant. It weighs each crop's *relative* error alike (its gradient is each crop's MSE
    gradient divided by that crop's MSE), whereas under the pooled MSE a crop pulls in proportion to its error
    and under L1 every pixel pulls alike: a smooth, nearly restored crop (a 40 dB brightfield image) counts
    as much as a motion-blurred bead at 15 dB in the same batch, and the loss does not depend on how each
    crop was scaled.
    """
    import torch
    import torch.nn.functional as F

    if kind == "l1":
        return F.l1_loss(fake.float(), real.float())
    if kind == "mse":
        return F.mse_loss(fake.float(), real.float())
    if kind == "log-mse":
        per_crop = (fake.float() - real.float()).pow(2).flatten(1).mean(dim=1)
        return torch.log(per_crop + LOG_MSE_FLOOR).mean()
    raise ValueError(f"unknown content loss {kind!r}")


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` (Gulrajani et al. 2017), unweighted.

    ``x_hat = eps * real + (1 - eps) * fake`` with ``eps ~ U(0, 1)`` drawn per sample from ``generator``
    (on the tensors' device). Computed in float32 with autocast off: the double backward of a penalty in
    half precision is the classic source of NaNs, and a float32 critic pass costs little.
    """
    import torch

    real = real.detach().float()
    fake = fake.detach().float()
    eps = torch.rand((real.shape[0], 1, 1, 1), device=real.device, generator=generator, dtype=torch.float32)
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def critic_loss(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    gp_weight: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """WGAN-GP critic loss and its parts (``wasserstein`` = D(real) - D(fake) estimate, ``gradient_penalty``).

    ``fake`` must already be detached from the generator.
    """
    d_real = critic(real).float().mean()
    d_fake = critic(fake).float().mean()
    gp = gradient_penalty(critic, real, fake, generator=generator)
    loss = d_fake - d_real + gp_weight * gp
    return loss, {"wasserstein": (d_real - d_fake).detach(), "gradient_penalty": gp.detach()}


def adversarial_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Generator's WGAN term ``-E[D(fake)]``."""
    return -critic(fake).float().mean()


def feature_matching_loss(critic: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """pix2pixHD feature matching: mean L1 between the critic's intermediate activations of fake and real.

    Used as the perceptual term when no VGG-19 weights are available. The critic must expose
    ``features(x) -> list[tensor]`` (:class:`~napari_deblurgan.models.critic.PatchCritic` does); the final
    score map is excluded, and the real features are detached (the critic is not trained by this loss).
    """
    import torch
    import torch.nn.functional as F

    fake_feats = critic.features(fake)[:-1]
    with torch.no_grad():
        real_feats = critic.features(real)[:-1]
    total = fake.new_zeros((), dtype=torch.float32)
    for f_fake, f_real in zip(fake_feats, real_feats, strict=True):
        total = total + F.l1_loss(f_fake.float(), f_real.detach().float())
    return total / max(len(fake_feats), 1)


__all__ = [
    "adversarial_loss",
    "content_loss",
    "critic_loss",
    "feature_matching_loss",
    "gradient_penalty",
]

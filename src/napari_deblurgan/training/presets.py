"""Training recipes ("presets") for :func:`napari_deblurgan.finetune`.

* ``deblurgan`` — the paper's recipe (Kupyn et al., CVPR 2018): WGAN-GP critic (lambda = 10, one
  interpolation factor per sample), 5 critic updates per generator update, each on a *fresh* batch with
  freshly computed (detached) fakes, generator loss = adversarial + 100 x perceptual MSE on VGG-19 conv3_3,
  Adam 1e-4 with betas (0.5, 0.999), learning rate constant for the first half and decayed linearly to 0 over
  the second half.
* ``default`` — what we use for finetuning on a biologist's small data set, chosen by measurement (see
  docs/training.md): L1 content loss + a small perceptual term + a small adversarial term with one critic
  update per step, Adam 2e-4 with a short warm-up and cosine decay. With few training images the paper's
  adversarial-dominated loss mostly teaches the generator to hallucinate texture; the pixel loss keeps it
  faithful, the small GAN term keeps edges from going soft.
* ``content`` — L1 only, no critic: the fastest and most conservative option (and the baseline that shows
  what the GAN terms add).
* ``content-mse`` — MSE only, no critic: the loss whose optimum is the conditional mean, i.e. the highest
  expected PSNR. Where the blur is ambiguous that mean is softer than L1's median; used to polish the
  shipped default, whose targets are PSNR and SSIM.
* ``content-psnr`` — the mean over crops of each crop's log MSE, no critic: the mean PSNR over crops, which
  is what the evaluation averages. Each crop pulls by its error relative to its own MSE, so smooth, nearly
  restored crops count as much as motion-blurred beads with a 100x larger MSE (training/losses.py).

A preset is a frozen dataclass; ``get_preset(name)`` returns it and ``PRESETS`` lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Preset:
    """One training recipe. Loss weights multiply the (mean-reduced) loss terms."""

    name: str
    description: str
    content_loss: str  # "l1", "mse", "log-mse" or "none": pixel loss between restoration and sharp target
    content_weight: float
    perceptual_weight: float  # MSE on VGG-19 conv3_3 features (or critic feature matching as fallback)
    adversarial_weight: float  # weight of -critic(fake).mean() in the generator loss; 0 = no critic at all
    critic_steps: int  # critic updates per generator update (each on a fresh batch)
    gradient_penalty: float  # WGAN-GP lambda
    learning_rate: float
    critic_learning_rate: float
    betas: tuple[float, float]
    schedule: str  # "cosine", "linear-second-half" or "constant"
    warmup_steps: int  # linear warm-up from 10 % of the rate (keeps pretrained weights from being kicked)
    critic_width: int = 64  # PatchCritic base width (64 = the paper's; the critic dominates CPU step time)

    @property
    def uses_critic(self) -> bool:
        """True when the recipe trains a critic (adversarial term, or critic feature matching needed)."""
        return self.adversarial_weight > 0

    def replace(self, **changes: object) -> Preset:
        """A copy with some fields changed (e.g. ``learning_rate``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier (0..1] at 0-based ``step`` of ``total_steps``.

        A pure function of the step, so a resumed run lands on exactly the same schedule.
        """
        import math

        total = max(int(total_steps), 1)
        factor = 1.0
        if self.schedule == "cosine":
            # Decay to 5 % rather than 0: the last steps still do something.
            progress = min(step / total, 1.0)
            factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.schedule == "linear-second-half":
            half = total / 2.0
            if step >= half:
                factor = max(1.0 - (step - half) / max(total - half, 1.0), 0.0)
        elif self.schedule != "constant":
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= 0.1 + 0.9 * (step + 1) / self.warmup_steps
        return factor


PRESETS: dict[str, Preset] = {
    "deblurgan": Preset(
        name="deblurgan",
        description="Paper recipe: WGAN-GP (5 critic steps), 100 x VGG-19 conv3_3 perceptual, Adam 1e-4.",
        content_loss="none",
        content_weight=0.0,
        perceptual_weight=100.0,
        adversarial_weight=1.0,
        critic_steps=5,
        gradient_penalty=10.0,
        learning_rate=1e-4,
        critic_learning_rate=1e-4,
        betas=(0.5, 0.999),
        schedule="linear-second-half",
        warmup_steps=0,
    ),
    "default": Preset(
        name="default",
        description="Finetuning on small data: L1 + small perceptual + small WGAN-GP term, Adam 2e-4 cosine.",
        content_loss="l1",
        content_weight=1.0,
        perceptual_weight=0.01,
        adversarial_weight=0.001,
        critic_steps=1,
        gradient_penalty=10.0,
        learning_rate=2e-4,
        critic_learning_rate=2e-4,
        betas=(0.9, 0.999),
        schedule="cosine",
        warmup_steps=20,
        critic_width=32,
    ),
    "content": Preset(
        name="content",
        description="L1 pixel loss only (no critic): fastest, most conservative.",
        content_loss="l1",
        content_weight=1.0,
        perceptual_weight=0.0,
        adversarial_weight=0.0,
        critic_steps=0,
        gradient_penalty=0.0,
        learning_rate=2e-4,
        critic_learning_rate=0.0,
        betas=(0.9, 0.999),
        schedule="cosine",
        warmup_steps=20,
    ),
}
# ``content`` with the squared error: the same recipe, only the pixel loss differs.
PRESETS["content-mse"] = PRESETS["content"].replace(
    name="content-mse",
    description="MSE pixel loss only (no critic): optimises PSNR directly; soft where blur is ambiguous.",
    content_loss="mse",
)

# ``content`` with each crop's log MSE averaged: optimises the mean PSNR over crops (training/losses.py).
PRESETS["content-psnr"] = PRESETS["content"].replace(
    name="content-psnr",
    description="Mean over crops of log MSE (no critic): optimises the mean PSNR; every crop's relative error counts.",
    content_loss="log-mse",
)


def list_presets() -> list[str]:
    """Names of the available presets."""
    return list(PRESETS)


def get_preset(preset: str | Preset) -> Preset:
    """The :class:`Preset` called ``preset`` (a Preset is returned unchanged)."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[str(preset).lower()]
    except KeyError:
        raise InputError(f"Unknown training preset {preset!r}. Choose one of: {', '.join(PRESETS)}.") from None


__all__ = ["PRESETS", "Preset", "get_preset", "list_presets"]

"""Training speed: our `deblurgan` preset step on `resnet9` vs a faithful re-implementation of the reference.

Measures generator images per second (batch size / wall time of one full step: 5 critic updates + 1
generator update) at 256 x 256 (``--size``) for

* **ours**: :class:`napari_deblurgan.training.trainer.GanStep` with the ``deblurgan`` preset, our ``resnet9``
  and ``PatchCritic``; batch ``--batch-size``; on CUDA bfloat16 autocast, channels-last, fused Adam; each
  critic update on a fresh batch with freshly computed fakes (5 extra no-grad generator forwards per step);
* **reference**: the training step of the original DeblurGAN code (KupynOrest/DeblurGAN,
  ``ConditionalGAN.optimize_parameters`` with ``wgan-gp`` and the perceptual ``content_gan`` loss),
  re-implemented here: ResNet generator with InstanceNorm and dropout, 3-layer PatchGAN with InstanceNorm,
  batch 1, float32, eager, the same fake reused for all 5 critic updates, one interpolation factor per batch.

Both use a **randomly initialised VGG-19** (``features[:15]``) for the perceptual term: only speed is
measured here, and the ImageNet weights are not available offline. Never train with a random VGG.
Inputs are pre-made random tensors on the device, so data loading is not part of either number.

    python benchmarks/bench_train.py --quick          # tiny sizes, CPU-friendly (a minute)
    python benchmarks/bench_train.py --device cuda    # 256 x 256, full widths
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch import nn

from napari_deblurgan.cli import positive_int

# ------------------------------------------------------------------------ reference re-implementation


class RefResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.block(x)


class RefResnetGenerator(nn.Module):
    """The reference ``ResnetGenerator`` (instance norm, dropout, learn_residual with clamp to [-1, 1])."""

    def __init__(self, channels: int = 3, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, ngf, 7, bias=True),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            m = 2**i
            layers += [
                nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(ngf * m * 2),
                nn.ReLU(True),
            ]
        layers += [RefResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ngf * m // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return torch.clamp(x + self.model(x), -1, 1)


class RefNLayerDiscriminator(nn.Module):
    """The reference 3-layer PatchGAN (kernel 4, padding 2, instance norm)."""

    def __init__(self, channels: int = 3, ndf: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, 3):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=2),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, 8
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=2),
            nn.InstanceNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=2)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def random_vgg_conv3_3() -> nn.Module:
    """VGG-19 ``features[:15]`` with RANDOM weights - for timing only."""
    from torchvision.models import vgg19

    features = vgg19(weights=None).features[:15]
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval()


class ReferenceStep:
    """``ConditionalGAN.optimize_parameters`` of the reference code (wgan-gp, content_gan, lambda_A=100)."""

    def __init__(self, device: torch.device, channels: int, width: int, n_blocks: int) -> None:
        self.G = RefResnetGenerator(channels, width, n_blocks).to(device)
        self.D = RefNLayerDiscriminator(channels, width).to(device)
        self.vgg = random_vgg_conv3_3().to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=1e-4, betas=(0.5, 0.999))
        self.device = device

    def _gp(self, real, fake):
        alpha = torch.rand(1, 1, 1, 1, device=self.device).expand_as(real)  # one factor per batch, as the reference
        inter = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out = self.D(inter)
        (grad,) = torch.autograd.grad(out, inter, torch.ones_like(out), create_graph=True, retain_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean() * 10  # norm over channels only, as the reference

    def __call__(self, blurred, sharp):
        self.G.train()
        fake = self.G(blurred)
        for _ in range(5):
            self.opt_d.zero_grad()
            loss_d = self.D(fake.detach()).mean() - self.D(sharp).mean() + self._gp(sharp.data, fake.data)
            loss_d.backward(retain_graph=True)
            self.opt_d.step()
        self.opt_g.zero_grad()
        loss_g = -self.D(fake).mean() + 100 * nn.functional.mse_loss(self.vgg(fake), self.vgg(sharp).detach())
        loss_g.backward()
        self.opt_g.step()
        return loss_g.detach().item()


# --------------------------------------------------------------------------------------------- ours


def our_step(device: torch.device, channels: int, width: int, n_blocks: int):
    from napari_deblurgan.models import build_generator
    from napari_deblurgan.models.critic import PatchCritic
    from napari_deblurgan.training.perceptual import VGGPerceptualLoss
    from napari_deblurgan.training.presets import get_preset
    from napari_deblurgan.training.trainer import GanStep

    G = build_generator("resnet9", channels, width=width, n_blocks=n_blocks).to(device)
    D = PatchCritic(channels, width).to(device)
    if device.type == "cuda":
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    perceptual = VGGPerceptualLoss(random_vgg_conv3_3()).to(device)
    return GanStep(
        G, D, get_preset("deblurgan"), device, perceptual=perceptual, feature_matching=False, ema_decay=None, seed=0
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (64 px, width 16, 2 blocks) for a CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=positive_int, default=None, help="crop side (default 256; 64 with --quick)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="our batch (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--channels", type=positive_int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=None)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    from napari_deblurgan.devices import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 256)
    width, n_blocks = (16, 2) if args.quick else (64, 9)
    batch = args.batch_size or (8 if device.type == "cuda" else 2)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 1 if args.quick else 3
    torch.manual_seed(0)
    c = args.channels

    mine = our_step(device, c, width, n_blocks)
    xb, xs = torch.rand(batch, c, size, size, device=device), torch.rand(batch, c, size, size, device=device)
    if device.type == "cuda":
        xb, xs = xb.contiguous(memory_format=torch.channels_last), xs.contiguous(memory_format=torch.channels_last)
    ours_t = time_steps(lambda: mine.run(lambda n: (xb[:n], xs[:n]), batch), device, warmup, repeats)
    # like-for-like: our step at the reference's batch size 1
    ours1_t = time_steps(lambda: mine.run(lambda n: (xb[:1], xs[:1]), 1), device, warmup, repeats)

    ref = ReferenceStep(device, c, width, n_blocks)
    rb, rs = torch.rand(1, c, size, size, device=device) * 2 - 1, torch.rand(1, c, size, size, device=device) * 2 - 1
    ref_t = time_steps(lambda: ref(rb, rs), device, warmup, repeats)

    ours_ips = batch / float(np.median(ours_t))
    ref_ips = 1 / float(np.median(ref_t))
    ours1_ips = 1 / float(np.median(ours1_t))
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    result = {
        "device": name,
        "size": size,
        "width": width,
        "n_blocks": n_blocks,
        "channels": c,
        "ours_batch": batch,
        "ours_images_per_s": round(ours_ips, 3),
        "ours_batch1_images_per_s": round(ours1_ips, 3),
        "reference_images_per_s": round(ref_ips, 3),
        "ratio": round(ours_ips / ref_ips, 2),
        "ours_step_s_median": round(float(np.median(ours_t)), 4),
        "reference_step_s_median": round(float(np.median(ref_t)), 4),
        "vgg": "random-init VGG-19 conv3_3 (speed only)",
        "torch": torch.__version__,
    }
    print(
        f"training step, deblurgan recipe, {size}x{size}x{c}, resnet9 width {width} x {n_blocks} blocks, {name}\n"
        f"  ours      : {ours_ips:8.2f} images/s (batch {batch}, median step {np.median(ours_t):.3f} s)\n"
        f"  ours b=1  : {ours1_ips:8.2f} images/s (batch 1, like for like)\n"
        f"  reference : {ref_ips:8.2f} images/s (batch 1, float32, eager, median step {np.median(ref_t):.3f} s)\n"
        f"  ratio     : {ours_ips / ref_ips:.2f}x   (perceptual VGG is random-init: speed only)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()

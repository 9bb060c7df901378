"""Perceptual loss on VGG-19 conv3_3 features (DeblurGAN's "content loss").

The network is torchvision's VGG-19 with ImageNet weights, truncated after conv3_3 (``features[:15]``),
frozen and in eval mode. Inputs (normalised intensities, roughly 0..1) are ImageNet-standardised. RGB images
(``rgb=True``: the data's channels are RGB samples, axes ending in ``S``) go in as the colour images VGG was
trained on; any other channels, whatever their count (three fluorescence channels too), are folded into the
batch one channel at a time, each replicated to 3 as grey, so microscopy stacks of any channel count work.

Where the weights come from, in order:

1. ``weights_path`` (a file the user downloaded: a full ``vgg19`` state dict or just its ``features``);
2. torchvision's own cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``) - no network needed;
3. a download through torchvision, **only** when allowed (``allow_download=True`` or the environment
   variable ``NAPARI_DEBLURGAN_ALLOW_DOWNLOAD=1``), with a short socket timeout so an offline machine never
   hangs.

If none works, :func:`load_vgg_features` returns ``None`` plus the reason, and the trainer falls back - with a
visible warning - to feature matching on the critic. A randomly initialised VGG is never used for training.

This module imports torch; only the trainer imports it (lazily).
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

ALLOW_DOWNLOAD_ENV = "NAPARI_DEBLURGAN_ALLOW_DOWNLOAD"
#: ``features`` index after conv3_3 (0-based layer 14 is conv3_3; the slice end is exclusive).
CONV3_3_END = 15
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_DOWNLOAD_TIMEOUT_S = 20.0


def download_allowed(flag: bool | None = None) -> bool:
    """True when a weight download may be attempted (explicit flag, else the environment variable)."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def cached_vgg19_path() -> Path:
    """Where torchvision caches the ImageNet VGG-19 weights on this machine."""
    from torchvision.models import VGG19_Weights

    filename = VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _truncate(vgg_features: nn.Module) -> nn.Sequential:
    layers = list(vgg_features.children())[:CONV3_3_END]
    return nn.Sequential(*layers)


def _features_from_file(path: Path) -> nn.Sequential:
    """VGG-19 ``features[:15]`` with weights from a user file (full model or ``features`` state dict)."""
    from torchvision.models import vgg19

    if not path.is_file():
        raise InputError(
            f"perceptual_weights file {str(path)!r} does not exist. Pass the path of torchvision's "
            "vgg19-dcbb9e9d.pth (or another VGG-19 state dict), or leave it out."
        )
    expected = "give torchvision's vgg19-dcbb9e9d.pth (or another VGG-19 state dict saved with torch.save)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # another kind of file, or pickled objects other than tensors: torch's own text would advise
        # weights_only=False, which runs any code the file holds
        raise InputError(
            f"Cannot read VGG-19 weights from {str(path)!r}: it is not a file of tensors; {expected}."
        ) from None
    except Exception as exc:  # a truncated or corrupt file
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise InputError(
            f"Cannot read VGG-19 weights from {str(path)!r}: the file is damaged or incomplete ({text}); {expected}."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{str(path)!r} does not hold a VGG-19 state dict.")
    model = vgg19(weights=None)
    features_state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if not features_state:  # a state dict of `features` alone
        features_state = dict(state)
    wanted = _truncate(model.features).state_dict()
    missing = [k for k in wanted if k not in features_state]
    if missing:
        raise InputError(
            f"{str(path)!r} is not a VGG-19 state dict: it lacks {missing[:3]} (expected torchvision's "
            "vgg19 layout, keys like 'features.0.weight')."
        )
    truncated = _truncate(model.features)
    truncated.load_state_dict({k: features_state[k] for k in wanted}, strict=True)
    return truncated


def load_vgg_features(
    weights_path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool | None = None,
) -> tuple[nn.Sequential | None, str]:
    """VGG-19 truncated after conv3_3 with ImageNet weights, or ``(None, reason)`` when unavailable.

    Never returns a randomly initialised network. ``reason`` says where the weights came from (or why none
    could be found) in words fit for a user-facing warning.
    """
    if weights_path is not None:
        return _features_from_file(Path(weights_path)), f"VGG-19 weights from {weights_path}"

    from torchvision.models import VGG19_Weights, vgg19

    cached = cached_vgg19_path()
    if cached.is_file():
        try:
            model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)  # finds the cache, no network access
            return _truncate(model.features), f"VGG-19 ImageNet weights from {cached}"
        except Exception as exc:  # a damaged cache file: say so rather than silently downloading
            return None, f"the cached VGG-19 weights at {cached} could not be read ({exc})"
    if not download_allowed(allow_download):
        return None, (
            f"VGG-19 ImageNet weights are not in the torch cache ({cached}) and downloading is off "
            f"(set {ALLOW_DOWNLOAD_ENV}=1 or pass perceptual_weights=<file>)"
        )
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # never hang on a machine without network
    try:
        model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
    except Exception as exc:
        return None, f"downloading the VGG-19 ImageNet weights failed ({type(exc).__name__}: {exc})"
    finally:
        socket.setdefaulttimeout(old_timeout)
    return _truncate(model.features), f"VGG-19 ImageNet weights downloaded to {cached}"


class VGGPerceptualLoss(nn.Module):
    """MSE between VGG-19 conv3_3 features of restoration and target (target features detached); ``rgb``: the
    3 channels are RGB samples (else each channel is a grey image of its own)."""

    def __init__(self, features: nn.Sequential, *, rgb: bool = False) -> None:
        super().__init__()
        self.rgb = bool(rgb)  # 3 channels that are RGB samples, not 3 channels of their own (fluorescence)
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        # The feature extractor stays in eval mode whatever the trainer does with its modules.
        super().train(mode)
        self.features.eval()
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.rgb and c != 3:
            raise ValueError(f"rgb=True needs 3 channels (RGB samples), got {c}")
        if not self.rgb:
            x = x.reshape(n * c, 1, h, w).expand(n * c, 3, h, w)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        f_fake = self.features(self._prepare(fake))
        with torch.no_grad():
            f_real = self.features(self._prepare(real))
        return F.mse_loss(f_fake.float(), f_real.float())


__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "VGGPerceptualLoss",
    "cached_vgg19_path",
    "download_allowed",
    "load_vgg_features",
]

"""Grow a trained U-Net into a larger one that computes exactly the same function (a warm start).

Training a bigger generator from scratch throws away what a smaller one has learnt; on a CPU that is hours.
:func:`grow_unet` instead builds the larger network (more channels per level and/or more residual blocks at
the bottom) and copies the trained weights into it so that its output is unchanged (Net2Net, Chen et al.
2016, in the "new units start silent" form):

* every old output channel keeps its old weights and gets **zero** weights from every new input channel, so
  the old channels compute exactly what they did;
* every new output channel gets fresh random weights (from the new architecture's own initialisation), so it
  carries a signal and its outgoing weights receive gradients from the first step;
* new residual blocks get a zero second convolution: they start as the identity;
* a new pooled-context block (``context_window`` from 0 to an odd size) starts as the identity too (its last
  layer is zero from construction, models/layers.PooledContext).

Only :class:`~napari_deblurgan.models.unet_generator.UNetGenerator` can be grown (no normalisation layers, so
no statistics to carry over); depth, stem and padding must stay the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .unet_generator import UNetGenerator

if TYPE_CHECKING:
    from ..model_file import DeblurModel

GROWABLE = ("width", "n_blocks", "context_window")


def _positions(module_name: str, n_old: int, n_new: int) -> torch.Tensor:
    """Where the ``n_old`` input channels of ``module_name`` sit among its ``n_new`` channels after growth."""
    if module_name.startswith("merge."):
        # input is cat([upsampled, skip]): each half keeps its old channels at its start
        half_old, half_new = n_old // 2, n_new // 2
        return torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)])
    return torch.arange(n_old)


@torch.no_grad()
def grow_unet(old: UNetGenerator, seed: int | None = 0, **changes: Any) -> UNetGenerator:
    """A larger copy of ``old`` with ``changes`` (``width`` and/or ``n_blocks``, neither smaller; a
    ``context_window`` where ``old`` has none) and the same output for every input (up to float rounding).
    ``seed`` makes the new channels' random weights reproducible.
    """
    if not isinstance(old, UNetGenerator):
        raise TypeError(f"only UNetGenerator models can be grown, not {type(old).__name__}")
    unknown = set(changes) - set(GROWABLE)
    if unknown:
        raise ValueError(f"can only grow {GROWABLE}, not {sorted(unknown)} (depth, stem and padding stay)")
    old_config = {"context_window": 0, **old.config}  # the key is absent where there is no context block
    config = {**old_config, **changes}
    old_window = int(old_config["context_window"])
    if old_window and config["context_window"] != old_window:
        raise ValueError(f"the context window is already {old_window}: a trained one cannot be resized")
    if old_window and config["width"] != old_config["width"]:
        # the block's (scale, shift) output halves would not line up with the widened channels
        raise ValueError("grow the width before adding a context window, not after")
    for key in GROWABLE:
        if int(config[key]) < int(old_config[key]):
            raise ValueError(f"{key} can only grow: {config[key]} < {old_config[key]}")
    if not config["context_window"]:
        del config["context_window"]  # as UNetGenerator records it
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        new = UNetGenerator(**config)
    old_modules = dict(old.named_modules())
    for name, module in new.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        source = old_modules.get(name)
        if source is None:
            # A residual block the old model does not have: zero its last convolution, so it adds nothing.
            if name.startswith("bottom.") and name.endswith("body.3"):
                module.weight.zero_()
                module.bias.zero_()
            continue
        transposed = isinstance(module, nn.ConvTranspose2d)  # weight is (in, out, kh, kw)
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        n_out = source.weight.shape[out_dim]  # old outputs are the first n_out of the new ones
        ins = _positions(name, source.weight.shape[in_dim], module.weight.shape[in_dim])
        # Views laid out (out, in, kh, kw) for both kinds; writing into them writes into the parameters.
        weight, src = module.weight.movedim(out_dim, 0), source.weight.movedim(out_dim, 0)
        weight[:n_out] = 0.0  # old outputs listen to no new input ...
        weight[:n_out, ins] = src  # ... and to their old inputs exactly as before
        module.bias[:n_out] = source.bias
    return new


def grow_model(model: DeblurModel, seed: int | None = 0, **changes: Any) -> DeblurModel:
    """:func:`grow_unet` for a :class:`~napari_deblurgan.model_file.DeblurModel`: a new model (``model`` is
    not modified) whose metadata records what it was grown from."""
    from ..errors import InputError

    try:
        generator = grow_unet(model.generator, seed=seed, **changes)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot grow this {model.architecture} model: {exc}") from None
    return _derived_model(model, generator, "grown_from", architecture_args=dict(model.architecture_args))


def switch_residual(model: DeblurModel, residual: str) -> DeblurModel:
    """A new model with the same weights and the global residual ``residual`` ("tanh" or "linear",
    :data:`~napari_deblurgan.models.layers.RESIDUALS`); ``model`` is not modified.

    Unlike growth this changes the output wherever the last layer's values are not small (tanh(r) ~ r only
    near 0), so it is a warm start for finetuning, not a finished model: it lets a trained tanh model learn
    the residuals above 1 that sparse bright objects need.
    """
    from ..errors import InputError
    from ..model_file import _args_from_config
    from . import build_generator

    args = {**_args_from_config(model.generator.config), "residual": residual}
    try:
        generator = build_generator(model.architecture, model.channels, **args)
    except ValueError as exc:  # the generator checks the value (layers.check_residual)
        raise InputError(f"cannot switch this {model.architecture} model's residual: {exc}") from None
    generator.load_state_dict(model.generator.state_dict())
    return _derived_model(model, generator, "residual_switched_from", residual=model.generator.config["residual"])


def _derived_model(
    model: DeblurModel, generator: torch.nn.Module, provenance_key: str, **provenance: Any
) -> DeblurModel:
    """``model``'s wrapping around ``generator`` (on ``model``'s device, in eval mode), with the new generator's
    architecture arguments and ``metadata[provenance_key]`` saying which model it came from."""
    from ..model_file import _args_from_config

    metadata = dict(model.metadata)
    source = {"name": model.metadata.get("name"), "sha256": model.metadata.get("sha256")}
    metadata[provenance_key] = {**source, **provenance}
    return model.with_generator(
        generator.to(model.device).eval(), architecture_args=_args_from_config(generator.config), metadata=metadata
    )

"""Generators and critic: shapes, sizes, receptive field, channels, eval-mode tile consistency."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan.models import build_generator, list_architectures  # noqa: E402
from napari_deblurgan.models.complexity import (  # noqa: E402
    count_parameters,
    macs_per_megapixel,
    measured_receptive_radius,
)
from napari_deblurgan.models.critic import PatchCritic  # noqa: E402
from napari_deblurgan.models.layers import ResidualBlock  # noqa: E402

TINY = {
    "resnet9": {"width": 4, "n_blocks": 2},
    "unet_lite": {"width": 4, "depth": 2, "n_blocks": 1},
    "unet_fast": {"width": 4, "depth": 2, "n_blocks": 1},
}


def test_architectures_listed():
    assert {"resnet9", "unet_lite"} <= set(list_architectures())


def test_resnet9_matches_the_paper_size_and_cost():
    gen = build_generator("resnet9", channels=3)
    params = count_parameters(gen)
    assert 11.0e6 < params < 11.8e6, params  # DeblurGAN: ~11.4 M parameters
    tflop_per_mp = 2 * macs_per_megapixel(gen, 3) / 1e12
    assert 1.3 < tflop_per_mp < 1.7, tflop_per_mp  # ~1.5 TFLOP per megapixel


def test_unet_lite_is_light():
    gen = build_generator("unet_lite", channels=1)
    assert 2 * macs_per_megapixel(gen, 1) / 1e12 <= 0.15


def test_unet_fast_runs_no_convolution_at_full_resolution():
    gen = build_generator("unet_fast", channels=1).eval()
    seen = []
    for m in gen.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(lambda mod, inp, out: seen.append(max(inp[0].shape[-1], out.shape[-1])))
    with torch.no_grad():
        assert gen(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    assert seen and max(seen) == 32  # every convolution works at half resolution or less
    assert gen.stride == 16
    # cheaper than unet_lite per pixel although it is wider and deeper
    assert macs_per_megapixel(gen, 1) < macs_per_megapixel(build_generator("unet_lite", channels=1), 1)


def test_unet_options_are_checked():
    with pytest.raises(ValueError, match="stem"):
        build_generator("unet_lite", stem="pool")
    with pytest.raises(ValueError, match="padding_mode"):
        build_generator("unet_fast", padding_mode="circular")
    for arch in TINY:
        with pytest.raises(ValueError, match="residual"):
            build_generator(arch, residual="clamp", **TINY[arch])


@pytest.mark.parametrize("arch", list(TINY))
def test_linear_residual_is_unbounded_and_tanh_is_not(arch):
    """A bead blurred over 20 px needs its intensity raised ~20x: only the linear residual can get there."""
    x = torch.rand(1, 1, 32, 32)
    outputs = {}
    for residual in ("tanh", "linear"):
        gen = build_generator(arch, channels=1, residual=residual, **TINY[arch]).eval()
        assert gen.config["residual"] == residual
        last = [m for m in gen.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(5.0)  # the last layer asks for a residual of +5 everywhere
            outputs[residual] = gen(x)
    torch.testing.assert_close(outputs["linear"], x + 5.0)
    torch.testing.assert_close(outputs["tanh"], x + torch.tanh(torch.tensor(5.0)))
    assert (outputs["tanh"] - x).max() < 1.0


def test_residual_blocks_keep_both_convolutions():
    block = ResidualBlock(8, norm="batch")
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    gen = build_generator("resnet9", channels=1)
    n_blocks = sum(isinstance(m, ResidualBlock) for m in gen.modules())
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in gen.modules())
    assert n_blocks == 9 and n_convs == 2 * 9 + 4  # 7x7 in, two stride-2, two convs per block, 7x7 out


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shapes_and_global_residual(arch, channels):
    gen = build_generator(arch, channels=channels, **TINY[arch]).eval()
    x = torch.rand(2, channels, 64, 48)
    with torch.no_grad():
        y = gen(x)
        assert y.shape == x.shape
        # global residual: with the last layer zeroed the generator is the identity
        last = [m for m in gen.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.zero_()
        last.bias.zero_()
        assert torch.equal(gen(x), x)


@pytest.mark.parametrize("arch", list(TINY))
def test_declared_receptive_radius_covers_the_measured_one(arch):
    gen = build_generator(arch, channels=1, **TINY[arch])
    measured = measured_receptive_radius(gen, 1, side=192)
    assert measured > 0
    assert gen.receptive_radius >= measured
    assert gen.receptive_radius <= measured + 2 * gen.stride  # declared is tight, not wildly conservative


def test_no_per_sample_statistics_in_generators():
    banned = (torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    for arch in list_architectures():
        gen = build_generator(arch, channels=1)
        assert not any(isinstance(m, banned) for m in gen.modules()), arch


@pytest.mark.parametrize("arch", list(TINY))
def test_eval_output_of_a_pixel_does_not_depend_on_far_away_content(arch):
    """The core of tile consistency: changing pixels beyond the receptive radius leaves an output unchanged."""
    gen = build_generator(arch, channels=1, **TINY[arch]).eval()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 1, 128, 128)
    x2 = x.clone()
    r = gen.receptive_radius
    x2[..., :, 64 + r + 1 :] = torch.rand_like(x2[..., :, 64 + r + 1 :])
    with torch.no_grad():
        assert torch.allclose(gen(x)[..., 30:98, :64], gen(x2)[..., 30:98, :64], atol=1e-6)


def test_patch_critic_has_a_70_pixel_receptive_field():
    critic = PatchCritic(channels=1, width=8)
    assert measured_receptive_radius_of_critic(critic) in (34, 35)  # 70 px wide patch
    score = critic(torch.rand(2, 1, 128, 128))
    assert score.shape[:2] == (2, 1) and score.shape[-1] == 14


def test_patch_critic_scores_each_sample_on_its_own_in_training():
    """WGAN-GP penalises the gradient of each sample's score with respect to that sample, which assumes that a
    score does not depend on the rest of the batch: no BatchNorm in the critic (the WGAN-GP paper's advice). In
    training mode, where a BatchNorm would use the batch's statistics, one image's scores must not change when
    other images join its batch."""
    torch.manual_seed(0)
    critic = PatchCritic(channels=1, width=8).train()
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        alone = critic(x[:1])
        together = critic(torch.cat([x[:1], 5 * x[1:] + 2]))
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)


def measured_receptive_radius_of_critic(critic: PatchCritic) -> int:
    import copy

    critic = copy.deepcopy(critic)
    for block in critic.blocks:  # InstanceNorm's image-wide statistics would spread the gradient everywhere
        for i, layer in enumerate(block):
            if isinstance(layer, torch.nn.InstanceNorm2d):
                block[i] = torch.nn.Identity()
    x = torch.rand(1, 1, 256, 256, requires_grad=True)
    score = critic(x)
    c = score.shape[-1] // 2
    score[0, 0, c, c].backward()
    _, xs = (x.grad[0, 0].abs() > 0).nonzero(as_tuple=True)
    return int((xs.max() - xs.min() + 1) // 2)


def test_unknown_architecture_and_arguments_are_clear_errors():
    from napari_deblurgan.errors import InputError

    with pytest.raises(InputError, match="unknown architecture"):
        build_generator("resnet99")
    with pytest.raises(InputError, match="takes no argument"):
        build_generator("unet_lite", blocks=3)
    with pytest.raises(InputError, match="channels"):
        build_generator("unet_lite", channels=0)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_a_residual_block_adds_its_branch_to_its_input(norm):
    """The identity shortcut: with the branch's last layer silenced the block is the identity, not zero."""
    torch.manual_seed(0)
    block = ResidualBlock(4, norm=norm).eval()
    kind = torch.nn.BatchNorm2d if norm == "batch" else torch.nn.Conv2d
    last = [m for m in block.modules() if isinstance(m, kind)][-1]  # the branch's last scale: norm, or conv
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        x = torch.rand(2, 4, 16, 16)
        torch.testing.assert_close(block(x), x)


def test_a_residual_blocks_branch_ends_in_its_normalisation():
    """conv-norm-ReLU-conv-norm: in training mode the branch ``block(x) - x`` is BatchNorm's output, zero mean
    and unit variance per channel over the batch (a block that lost its second norm, or its shortcut, is not)."""
    torch.manual_seed(0)
    block = ResidualBlock(4, norm="batch").train()
    x = torch.rand(4, 4, 16, 16) * 3.0 + 2.0
    with torch.no_grad():
        branch = block(x) - x
    mean = branch.mean(dim=(0, 2, 3))
    var = branch.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(var, torch.ones(4), atol=1e-2, rtol=0)


def test_resnet9_has_exactly_the_papers_layers():
    """Counted layer by layer for RGB (Kupyn et al. 2018): a kernel size, a block, a norm or a bias more or less
    changes the count (the ~11.4 M range of the size test above does not see a lost 7x7 or norm)."""
    bn = 2  # BatchNorm: scale and shift per channel (its convolutions have no bias)
    expected = (
        3 * 64 * 7 * 7 + bn * 64  # 7x7 in
        + 64 * 128 * 3 * 3 + bn * 128  # stride-2 down
        + 128 * 256 * 3 * 3 + bn * 256  # stride-2 down
        + 9 * 2 * (256 * 256 * 3 * 3 + bn * 256)  # 9 residual blocks of two convs and two norms at 256 channels
        + 256 * 128 * 3 * 3 + bn * 128  # transposed up
        + 128 * 64 * 3 * 3 + bn * 64  # transposed up
        + 64 * 3 * 7 * 7 + 3  # 7x7 out, with bias
    )  # fmt: skip
    assert count_parameters(build_generator("resnet9", channels=3)) == expected


def test_resnet9_by_default_bounds_its_residual_with_tanh():
    """The paper's resnet9 ends in tanh before the global skip: x + tanh(G(x)), so by default a residual of +5
    asked for by the last layer comes out as tanh(5) < 1 (``residual="linear"`` is the option, not the default)."""
    gen = build_generator("resnet9", channels=1).eval()
    last = [m for m in gen.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)
        x = torch.rand(1, 1, 16, 16)
        torch.testing.assert_close(gen(x), x + torch.tanh(torch.tensor(5.0)))

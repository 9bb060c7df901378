"""Growing a trained U-Net (models/growth.py): same function, more capacity, and the new units can learn."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan import create_model  # noqa: E402
from napari_deblurgan.errors import InputError  # noqa: E402
from napari_deblurgan.models.growth import grow_model, grow_unet, switch_residual  # noqa: E402
from napari_deblurgan.models.unet_generator import UNetGenerator  # noqa: E402


def _small(stem: str = "unshuffle", channels: int = 1) -> UNetGenerator:
    torch.manual_seed(0)
    gen = UNetGenerator(channels=channels, width=4, depth=2, n_blocks=1, stem=stem, padding_mode="zeros")
    with torch.no_grad():  # non-zero biases everywhere, so that a wrongly copied bias would show
        for module in gen.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.bias.uniform_(-0.1, 0.1)
    return gen.eval()


@pytest.mark.parametrize("stem", ["conv", "unshuffle"])
@pytest.mark.parametrize("changes", [{"width": 6}, {"n_blocks": 3}, {"width": 8, "n_blocks": 2}])
def test_grown_unet_computes_the_same_function(stem, changes):
    old = _small(stem, channels=2)
    x = torch.rand(3, 2, 32, 48)
    new = grow_unet(old, **changes).eval()
    assert new.config == {**old.config, **changes}
    assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in old.parameters())
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), atol=1e-6, rtol=0)


def test_new_units_receive_gradients_from_the_first_step():
    old = _small()
    new = grow_unet(old, width=6, n_blocks=2).train()
    loss = (new(torch.rand(2, 1, 32, 32)) - torch.rand(2, 1, 32, 32)).abs().mean()
    loss.backward()
    added_block_out = new.bottom[1].body[3].weight  # zero-initialised: starts as the identity ...
    assert torch.count_nonzero(added_block_out) == 0
    assert added_block_out.grad.abs().sum() > 0  # ... but is not stuck there
    # the tail's weights from the new channels start at zero and get a gradient (the new channels carry signal)
    tail_from_new = new.tail.weight.grad[:, 4:]
    assert torch.count_nonzero(new.tail.weight[:, 4:]) == 0
    assert tail_from_new.abs().sum() > 0


def test_growth_only_grows_and_only_unets():
    old = _small()
    with pytest.raises(ValueError, match="width can only grow"):
        grow_unet(old, width=2)
    with pytest.raises(ValueError, match="depth"):
        grow_unet(old, depth=3)
    resnet = create_model("resnet9", width=4, n_blocks=1)
    with pytest.raises(InputError, match="cannot grow"):
        grow_model(resnet, n_blocks=2)


def test_grow_model_keeps_the_input_model_and_records_its_origin():
    model = create_model("unet_fast", width=4, depth=2, n_blocks=1, seed=1, metadata={"name": "small"})
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    grown = grow_model(model, n_blocks=2)
    assert grown.architecture_args["n_blocks"] == 2 and model.architecture_args["n_blocks"] == 1
    assert grown.metadata["grown_from"]["architecture_args"]["n_blocks"] == 1
    assert grown.metadata["grown_from"]["name"] == "small"
    for key, value in model.generator.state_dict().items():
        assert torch.equal(value, before[key])
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grown.generator(x), model.generator(x), atol=1e-6, rtol=0)


def test_growth_keeps_a_linear_residual():
    old = UNetGenerator(width=4, depth=2, n_blocks=1, stem="unshuffle", padding_mode="zeros", residual="linear")
    new = grow_unet(old, width=6).eval()
    assert new.residual == "linear"
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old.eval()(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ["unet_fast", "resnet9"])
def test_switch_residual_keeps_the_weights_and_the_input_model(architecture, tmp_path):
    model = create_model(architecture, width=4, n_blocks=1, seed=0, metadata={"name": "base"})
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    switched = switch_residual(model, "linear")
    assert model.generator.residual == "tanh" and model.architecture_args["residual"] == "tanh"  # untouched
    assert switched.generator.residual == "linear" and switched.architecture_args["residual"] == "linear"
    assert switched.metadata["residual_switched_from"] == {"name": "base", "sha256": None, "residual": "tanh"}
    for key, value in switched.generator.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in model.generator.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the switch changes only the output non-linearity: where the last layer's values are small, little changes
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        raw = switched.generator(x) - x
        torch.testing.assert_close(model.generator(x) - x, torch.tanh(raw))
    # and it survives a round trip through a file
    from napari_deblurgan import load_model

    assert load_model(switched.save(tmp_path / "linear.pt")).generator.residual == "linear"


def test_switch_residual_refuses_unknown_residuals():
    model = create_model("unet_fast", width=4, n_blocks=1, seed=0)
    with pytest.raises(InputError, match="residual must be one of"):
        switch_residual(model, "relu")


def test_adding_a_context_window_keeps_the_function_and_can_learn():
    old = _small()
    new = grow_unet(old, context_window=5)
    assert new.config["context_window"] == 5 and "context_window" not in old.config
    # the box reaches 5 // 2 bottom positions each side; a bottom position is 2**depth * 2 (unshuffle) pixels
    assert new.receptive_radius == old.receptive_radius + 2 * 2**2 * 2
    x = torch.rand(2, 1, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), old(x), atol=1e-6, rtol=0)
    loss = (new.train()(x) - torch.rand_like(x)).abs().mean()
    loss.backward()
    last = new.context.mlp[2]  # zero-initialised (identity) but not stuck there
    assert torch.count_nonzero(last.weight) == 0 and last.weight.grad.abs().sum() > 0


def test_a_trained_context_window_is_neither_resized_nor_widened():
    with_context = grow_unet(_small(), context_window=3)
    with pytest.raises(ValueError, match="cannot be resized"):
        grow_unet(with_context, context_window=5)
    with pytest.raises(ValueError, match="width before"):
        grow_unet(with_context, width=6)
    deeper = grow_unet(with_context, n_blocks=2).eval()  # more residual blocks are still fine
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deeper(x), with_context.eval()(x), atol=1e-6, rtol=0)

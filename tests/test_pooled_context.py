"""The pooled-context block (models/layers.PooledContext): what it computes, and that it stays tileable."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan import create_model, deblur  # noqa: E402
from napari_deblurgan.errors import InputError  # noqa: E402
from napari_deblurgan.inference.tiling import default_overlap  # noqa: E402
from napari_deblurgan.models.layers import PooledContext  # noqa: E402


def _box_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over the window x window box around each position, counting only positions inside the map."""
    r = window // 2
    out = np.empty_like(x)
    height, width = x.shape[-2:]
    for i in range(height):
        for j in range(width):
            box = x[..., max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1]
            out[..., i, j] = box.mean(axis=(-2, -1))
    return out


def test_block_modulates_each_position_by_its_box_mean():
    torch.manual_seed(0)
    block = PooledContext(3, window=5).eval()
    with torch.no_grad():
        for conv in (block.mlp[0], block.mlp[2]):
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
    x = torch.rand(2, 3, 7, 9)
    context = _box_mean(x.numpy().astype(np.float64), 5)
    w0, b0 = block.mlp[0].weight[:, :, 0, 0].detach().double().numpy(), block.mlp[0].bias.detach().double().numpy()
    w2, b2 = block.mlp[2].weight[:, :, 0, 0].detach().double().numpy(), block.mlp[2].bias.detach().double().numpy()
    hidden = np.maximum(np.einsum("oc,nchw->nohw", w0, context) + b0[:, None, None], 0.0)
    scale_shift = np.einsum("oc,nchw->nohw", w2, hidden) + b2[:, None, None]
    expected = x.numpy() * (1.0 + scale_shift[:, :3]) + scale_shift[:, 3:]
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), expected, atol=1e-5)


def test_new_block_is_the_identity_and_windows_must_be_odd():
    x = torch.rand(1, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(PooledContext(4, window=3)(x), x)
    for bad in (0, 4, -3):
        with pytest.raises(ValueError, match="odd"):
            PooledContext(4, window=bad)
    for bad in (2, -1, True, 3.0):
        with pytest.raises(InputError, match="unet_fast: context_window"):
            create_model("unet_fast", width=4, depth=2, n_blocks=1, context_window=bad)


def test_models_without_a_context_block_do_not_record_one():
    """Files of models without the block keep the architecture arguments older versions can read."""
    plain = create_model("unet_fast", width=4, depth=2, n_blocks=1, context_window=0)
    assert "context_window" not in plain.architecture_args and plain.generator.context is None


def _context_model(window: int):
    model = create_model("unet_fast", width=4, depth=2, n_blocks=1, context_window=window, seed=0)
    with torch.no_grad():  # a trained block is not the identity
        model.generator.context.mlp[2].weight.normal_(0, 0.3)
    return model


def test_context_window_is_in_the_receptive_radius_so_tiles_stay_seamless():
    model = _context_model(5)
    gen = model.generator
    overlap = default_overlap(gen.receptive_radius, gen.stride)
    image = (np.random.default_rng(0).random((overlap + 96, 40)) * 1000).astype(np.float32)
    whole = deblur(image, model, tile_size=8192, device="cpu")
    tiled = deblur(image, model, tile_size=overlap + 8 * gen.stride, device="cpu")
    out_range = float(whole.max() - whole.min())
    assert np.abs(tiled - whole).max() <= 1e-3 * out_range


def _reach(gen, size: int = 320, block: int = 8) -> int:
    """How far (pixels) the gradient of a central block of output pixels reaches into the input, beyond the
    block (a block, not one pixel: a tiny random network can have every path through one pixel dead)."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)).requires_grad_()
    top = size // 2 - block // 2
    gen.eval()(x)[0, 0, top : top + block, top : top + block].sum().backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1))[:, 0]
    return int(max(top - rows.min(), rows.max() - (top + block - 1)))


def test_receptive_radius_counts_the_context_reach():
    """The radius that the tiling trusts is an upper bound of the real reach, and the context block does
    reach further than the same network without it (so leaving it out of the radius would leave seams)."""
    with_context = _context_model(5).generator
    without = create_model("unet_fast", width=4, depth=2, n_blocks=1, seed=0).generator
    reach_with, reach_without = _reach(with_context), _reach(without)
    assert reach_without <= without.receptive_radius < reach_with <= with_context.receptive_radius


def test_context_window_survives_save_and_load(tmp_path):
    from napari_deblurgan import load_model

    model = _context_model(3)
    model.save(tmp_path / "ctx.pt")
    loaded = load_model(tmp_path / "ctx.pt")
    assert loaded.architecture_args["context_window"] == 3
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.generator(x), model.generator(x))

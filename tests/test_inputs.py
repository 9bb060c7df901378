"""Napari objects passed where pixels are expected: one message naming what to pass instead.

np.asarray of a layer is a 0-d object array (the message used to suggest astype('float32')), and of napari's
multiscale data its coarsest level, which deblur(), synthesize_blur() and the baselines then processed
silently at 1/2^n of the resolution.
"""

from __future__ import annotations

import numpy as np
import pytest

napari_layers = pytest.importorskip("napari.layers")

import napari_deblurgan as ndg  # noqa: E402
from napari_deblurgan.errors import InputError  # noqa: E402

PSF = np.full((3, 3), 1 / 9)


def _pixels() -> np.ndarray:
    return np.random.default_rng(0).random((64, 64)).astype(np.float32)


def _calls(value):
    sharp = _pixels()
    return {
        "deblur": lambda: ndg.deblur(value, device="cpu"),
        "synthesize_blur": lambda: ndg.synthesize_blur(value, seed=0),
        "richardson_lucy": lambda: ndg.richardson_lucy(value, PSF, iterations=2),
        "wiener": lambda: ndg.wiener(value, PSF),
        "compare": lambda: ndg.compare({"result": value}, sharp),
        "finetune": lambda: ndg.finetune(value, sharp, model="unet_lite", preset="content", steps=1, patch_size=32),
    }


@pytest.mark.parametrize("function", list(_calls(None)))
def test_a_layer_is_refused_with_the_array_to_pass(function):
    layer = napari_layers.Image(_pixels(), name="cells blurred")
    expected = r"napari Image layer \('cells blurred'\); pass its pixels instead: layer\.data\."
    with pytest.raises(InputError, match=expected):
        _calls(layer)[function]()


@pytest.mark.parametrize("function", list(_calls(None)))
def test_multiscale_data_is_refused_not_processed_at_its_coarsest_level(function):
    full = _pixels()
    data = napari_layers.Image([full, full[::2, ::2]], multiscale=True).data
    assert np.asarray(data).shape == (32, 32)  # what the functions used to process
    with pytest.raises(InputError, match=r"multiscale data with 2 levels \(\(64, 64\), \(32, 32\)\).*layer\.data\[0\]"):
        _calls(data)[function]()


def test_a_multiscale_layer_names_its_full_resolution_level():
    full = _pixels()
    layer = napari_layers.Image([full, full[::2, ::2]], multiscale=True, name="pyramid")
    with pytest.raises(InputError, match=r"layer\.data\[0\] \(full resolution\)"):
        ndg.deblur(layer)


def test_a_list_of_pyramid_levels_is_refused_but_a_list_of_training_images_is_not():
    full = _pixels()
    with pytest.raises(InputError, match="list of 2 arrays of different shapes"):
        ndg.deblur([full, full[::2, ::2]])
    # finetune takes lists of images of any sizes: one per pair
    pairs = [full, full[:48, :56]]
    model = ndg.finetune(pairs, model="unet_lite", preset="content", steps=1, patch_size=32, validation=0)
    assert model is not None


def test_multiscale_data_behind_napari_plugin_proxy_is_refused_too():
    """A plugin's viewer is wrapped in napari's PublicOnlyProxy, and so is every layer's data it hands out:
    the proxy's own type hides the multiscale data behind it."""
    from napari.utils._proxies import PublicOnlyProxy

    full = _pixels()
    proxied = PublicOnlyProxy(napari_layers.Image([full, full[::2, ::2]], multiscale=True).data)
    assert np.asarray(proxied).shape == (32, 32)
    with pytest.raises(InputError, match="multiscale data with 2 levels"):
        ndg.deblur(proxied)


@pytest.mark.parametrize("function", list(_calls(None)))
@pytest.mark.parametrize("made_by", ["boolean indexing", "from_delayed"])
def test_a_dask_array_with_unknown_chunk_sizes_says_to_compute_them(function, made_by):
    """Dask's shape holds NaN where chunk sizes are unknown; read, it was "cannot convert float NaN to integer"."""
    da = pytest.importorskip("dask.array")
    import dask

    pixels = da.from_array(_pixels(), chunks=32)
    if made_by == "boolean indexing":
        unknown = pixels[pixels[:, 0] > 0.5]
    else:
        unknown = da.from_delayed(dask.delayed(_pixels)(), shape=(np.nan, 64), dtype=np.float32)
    assert np.isnan(unknown.shape[0])
    with pytest.raises(
        InputError, match=r"dask array whose chunk sizes are unknown \(shape \(\?, 64\).*compute_chunk_sizes\(\)"
    ):
        _calls(unknown)[function]()

"""Offline sample data (samples.py): generated scenes, bundled images, demo pairs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_deblurgan import samples
from napari_deblurgan.comparison import sharpness
from napari_deblurgan.errors import InputError


@pytest.mark.parametrize("make", [samples.beads, samples.filaments, samples.nuclei, samples.cells])
@pytest.mark.parametrize("shape", [(64, 80), (6, 48, 48)])
def test_generated_scenes(make, shape):
    a = make(shape, 3)
    assert a.shape == shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() == pytest.approx(1.0)
    assert a.std() > 0.01  # there is structure, not a flat image
    np.testing.assert_array_equal(a, make(shape, 3))  # deterministic per seed
    assert not np.array_equal(a, make(shape, 4))


def test_generated_scenes_reject_bad_shapes():
    with pytest.raises(InputError):
        samples.beads((4, 64))
    with pytest.raises(InputError):
        samples.nuclei((2, 2, 32, 32))


def test_brightfield_scene_is_a_bright_smooth_background_with_cells():
    a = samples.brightfield((96, 128), 3)
    assert a.shape == (96, 128) and a.dtype == np.float32
    assert np.array_equal(a, samples.brightfield((96, 128), 3))
    assert not np.array_equal(a, samples.brightfield((96, 128), 4))
    assert a.min() >= 0.0 and a.max() == pytest.approx(1.0)
    # transmitted light: the typical pixel is background well above black (fluorescence scenes are dark)
    assert np.median(a) > 0.3 and np.median(samples.nuclei((96, 128), 3)) < 0.1
    with pytest.raises(InputError, match="2D"):
        samples.brightfield((4, 32, 32))


def test_sharp_training_images_offline_and_split(monkeypatch):
    import skimage.data._fetchers as fetchers

    real_fetch = fetchers._fetch
    fetched = []

    def local_only(data_filename, prefix=None):
        # any file that is not on disk would be downloaded: fail instead
        name = os.path.basename(data_filename)
        folders = (fetchers._LEGACY_DATA_DIR, fetchers.data_dir)
        if not any(os.path.exists(os.path.join(folder, name)) for folder in folders):
            raise AssertionError(f"sharp_training_images tried to download {data_filename}")
        fetched.append(name)
        return real_fetch(data_filename, prefix)

    monkeypatch.setattr(fetchers, "_fetch", local_only)
    samples._load_all.cache_clear()
    try:
        images = samples.sharp_training_images()
    finally:
        samples._load_all.cache_clear()
    assert "camera.png" in fetched  # the loaders really went through the patched fetcher
    assert {"camera", "coins", "synthetic_filaments", "synthetic_nuclei"} <= set(images)
    assert "clock" not in images  # a motion-blurred photo is never a "sharp" target
    for name, image in images.items():
        assert image.ndim == 2 and image.dtype == np.float32, name
        assert image.min() >= 0 and image.max() <= 1, name
        assert min(image.shape) >= 128, name
    train = samples.sharp_training_images("train")
    validation = samples.sharp_training_images("validation")
    assert set(validation) == set(samples.VALIDATION_IMAGES)
    assert not set(train) & set(validation)
    assert set(train) | set(validation) == set(images)
    # fresh copies: writing into one does not change the next call's data
    train["coins"][:] = 0
    assert samples.sharp_training_images("train")["coins"].max() > 0
    with pytest.raises(InputError):
        samples.sharp_training_images("test")


def test_blurred_sharp_pair():
    pair = samples.blurred_sharp_pair(0)
    assert set(pair) == {"blurred", "sharp", "psf", "params"}
    blurred, sharp = pair["blurred"], pair["sharp"]
    assert blurred.shape == sharp.shape == (512, 512)
    assert blurred.dtype == sharp.dtype == np.uint16
    assert pair["psf"].dtype == np.float32 and pair["psf"].sum() == pytest.approx(1.0, abs=1e-5)
    json.dumps(pair["params"])
    assert pair["params"]["kind"] == "motion" and pair["params"]["noise"] is not None
    # really blurrier, with about the same brightness
    assert sharpness(blurred) < 0.5 * sharpness(sharp)
    assert abs(blurred.mean() / sharp.mean() - 1) < 0.05
    again = samples.blurred_sharp_pair(0)
    np.testing.assert_array_equal(again["blurred"], blurred)
    np.testing.assert_array_equal(again["sharp"], sharp)
    other = samples.blurred_sharp_pair(1)
    assert not np.array_equal(other["sharp"], sharp)


def test_blurred_stack_3d():
    stack = samples.blurred_stack_3d(0)
    blurred, sharp = stack["blurred"], stack["sharp"]
    assert blurred.shape == sharp.shape == (16, 256, 256)
    assert blurred.dtype == sharp.dtype == np.uint16
    assert sharpness(blurred, axes="ZYX") < 0.7 * sharpness(sharp, axes="ZYX")
    np.testing.assert_array_equal(samples.blurred_stack_3d(0)["blurred"], blurred)


def test_clock():
    img = samples.clock()
    assert img.dtype == np.uint8 and img.ndim == 2

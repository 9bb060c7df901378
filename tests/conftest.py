"""Shared pytest fixtures: tiny models (fast on a 2-core CPU) and small test images.

Keep fixtures generic; files that need something special define it locally.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _helpers import TINY_UNET_ARGS  # the training tests' tiny model is this one too


@pytest.fixture
def make_tiny_model() -> Callable[..., object]:
    """Factory: ``make_tiny_model(channels=1, seed=0, architecture="unet_lite", **arch_args)``."""
    from napari_deblurgan.model_file import create_model

    def make(channels: int = 1, seed: int = 0, architecture: str = "unet_lite", **arch_args):
        if architecture == "unet_lite":
            arch_args = {**TINY_UNET_ARGS, **arch_args}
        elif architecture == "resnet9":
            arch_args = {"width": 4, "n_blocks": 1, **arch_args}
        return create_model(architecture, channels=channels, seed=seed, **arch_args)

    return make


@pytest.fixture
def tiny_model(make_tiny_model):
    """An untrained 1-channel ``unet_lite`` with tiny widths (deterministic: seed 0)."""
    return make_tiny_model()


@pytest.fixture
def tiny_model_file(tiny_model, tmp_path: Path) -> Path:
    """``tiny_model`` saved to ``tmp_path / "tiny.pt"``."""
    return tiny_model.save(tmp_path / "tiny.pt")


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: training tests on a shared 2-core machine run several times
    faster than with two. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def training_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 96 x 96 uint16 cells scene and its Gaussian-blurred (sigma 1.5) copy, as (blurred, sharp)."""
    from scipy import ndimage

    from napari_deblurgan import samples

    sharp = (samples.cells((96, 96), seed=1) * 4000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 1.5).astype(np.uint16)
    return blurred, sharp


@pytest.fixture
def small_image() -> np.ndarray:
    """A 64 x 64 uint16 image with structure (blobs and edges), deterministic."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    img = 1000 + 2000 * ((xx // 8 + yy // 8) % 2) + rng.normal(0, 50, (64, 64))
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture
def notifications():
    """Every napari notification dispatched during the test, as (severity, message) (viewer tests only)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[object, str]] = []

    def record(event):
        notification = getattr(event, "value", event)  # napari passes the Notification itself
        seen.append((notification.severity, str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def numpy_peak() -> Callable[[Callable[[], object]], int]:
    """``numpy_peak(call)``: the peak traced allocation (NumPy's buffers included) of ``call()``, measured on
    a second call after a warm-up one (first-time imports, caches and FFT plans)."""
    import gc
    import tracemalloc

    def measure(call: Callable[[], object]) -> int:
        call()
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            call()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    return measure


@pytest.fixture
def refuse_whole_tiff_reads(monkeypatch) -> Callable[[], list[int]]:
    """``refuse_whole_tiff_reads()``: from then on, any read of a whole TIFF series fails (the CLI's
    ``read_series``, and tifffile's ``asarray`` without a page key); returns the list of the page keys read one at
    a time (filled as the test goes on)."""
    import tifffile

    from napari_deblurgan.cli import deblur_command

    def install() -> list[int]:
        keys: list[int] = []
        real_asarray = tifffile.TiffFile.asarray

        def refuse(*args, **kwargs):
            raise AssertionError("the whole series was read into memory")

        def page_by_page(self, *args, **kwargs):
            if kwargs.get("key") is None:
                refuse()
            keys.append(kwargs["key"])
            return real_asarray(self, *args, **kwargs)

        monkeypatch.setattr(deblur_command, "read_series", refuse)
        monkeypatch.setattr(tifffile.TiffFile, "asarray", page_by_page)
        return keys

    return install

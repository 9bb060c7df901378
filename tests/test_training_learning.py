"""A real learning test: finetuning must actually deblur (>= 1 dB validation PSNR over the blurred input).

The model starts untrained (its random residual makes it *worse* than the input, about -0.4 dB), so the test
fails with 0 steps, and it fails if the optimiser, the data pipeline or the validation were broken.
Measured on the 2-core CPU dev machine: +2.3 dB after 200 steps. How long the steps take is not checked here
(it depends on the machine and its load): training speed is measured in benchmarks/bench_train.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_deblurgan import samples
from napari_deblurgan.model_file import create_model
from napari_deblurgan.training import events as ev
from napari_deblurgan.training.trainer import iter_finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _pair() -> tuple[np.ndarray, np.ndarray]:
    sharp = (samples.cells((192, 192), seed=0) * 4000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 2.0).astype(np.uint16)
    return blurred, sharp


def _finetune(steps: int) -> list:
    model = create_model("unet_lite", 1, seed=0, width=8, depth=2, n_blocks=1)
    return list(
        iter_finetune(
            *_pair(),
            model=model,
            steps=steps,
            patch_size=64,
            batch_size=4,
            preset="content",
            learning_rate=2e-3,
            device="cpu",
            seed=0,
            validate_every=100,
            validation=0.25,
        )
    )


def test_untrained_model_does_not_beat_the_input():
    """The control: with 0 steps the gain is negative, so the learning test below can fail."""
    events = _finetune(0)
    (val,) = [e for e in events if isinstance(e, ev.Validation)]
    assert val.psnr - val.psnr_input < 0.0


def test_finetuning_raises_validation_psnr_by_one_db():
    events = _finetune(200)
    vals = [e for e in events if isinstance(e, ev.Validation)]
    finished = events[-1]
    assert isinstance(finished, ev.Finished) and not finished.stopped
    assert finished.step == 200  # the gain below is that of 200 steps, all of them run
    gain = finished.best_psnr - vals[0].psnr_input
    print(f"validation PSNR gain {gain:+.2f} dB after {finished.step} steps ({[round(v.psnr, 2) for v in vals]})")
    assert gain >= 1.0, f"only {gain:+.2f} dB after 200 steps"
    assert finished.model.metadata["training"]["val_psnr"] == pytest.approx(finished.best_psnr)

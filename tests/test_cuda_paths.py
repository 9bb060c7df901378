"""Code paths only a CUDA device runs: autocast inference with tile batches, the self-ensemble and the
pooled-context block on the GPU, and a distillation run whose teacher works under autocast.

Skipped without CUDA (CI never has one); ``scripts/gpu_sweep.py --run-tests`` runs this file first on a lent GPU,
so the first session that draws one checks these paths before spending its minutes on training.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan import create_model, deblur  # noqa: E402
from napari_deblurgan.inference.tiling import default_overlap  # noqa: E402
from napari_deblurgan.training.trainer import iter_finetune  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)"),
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
]


def _model(context_window: int = 0):
    model = create_model(
        "unet_fast", width=8, depth=2, n_blocks=1, residual="linear", context_window=context_window, seed=0
    )
    if context_window:
        with torch.no_grad():  # a trained block is not the identity
            model.generator.context.mlp[2].weight.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("self_ensemble", [False, True])
@pytest.mark.parametrize("context_window", [0, 5])
def test_cuda_deblur_matches_the_cpu(context_window, self_ensemble):
    """Reduced-precision autocast on the GPU, several tiles per batch: the same image as on the CPU in float32,
    up to bfloat16/float16 rounding (a wrong transform or a seam would be errors of the image's own size)."""
    model = _model(context_window)
    gen = model.generator
    overlap = default_overlap(gen.receptive_radius, gen.stride)
    image = (np.random.default_rng(0).random((overlap + 150, 2 * overlap + 40)) * 1000).astype(np.float32)
    cpu = deblur(image, model, device="cpu", tile_size=8192, self_ensemble=self_ensemble)
    gpu = deblur(image, model, device="cuda", tile_size=overlap + 6 * gen.stride, self_ensemble=self_ensemble)
    assert gpu.dtype == image.dtype and gpu.shape == image.shape
    err = np.abs(gpu.astype(np.float64) - cpu) / float(cpu.max() - cpu.min())
    assert err.mean() < 0.01 and err.max() < 0.1, (err.mean(), err.max())


def test_cuda_distillation_run_trains_and_records_its_teacher(training_pair):
    teacher = _model()
    run = iter_finetune(
        *training_pair, model=_model(5), steps=4, patch_size=32, batch_size=4, preset="content-psnr",
        device="cuda", seed=0, validate_every=2, teacher=teacher, teacher_weight=0.5,
    )  # fmt: skip
    model = run.run_to_end()
    training = model.metadata["training"]
    assert training["steps_done"] == 4 and training["device"].startswith("cuda")
    assert training["teacher"]["weight"] == 0.5 and training["teacher"]["self_ensemble"] == 8
    assert model.architecture_args["context_window"] == 5
    assert all(torch.isfinite(p).all() for p in model.generator.parameters())

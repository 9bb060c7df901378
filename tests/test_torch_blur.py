"""Batched torch blur synthesis (blur/torch_synthesis.py), on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan.blur.psf import motion_psf  # noqa: E402
from napari_deblurgan.blur.synthesize import convolve_reflect  # noqa: E402
from napari_deblurgan.blur.torch_synthesis import (  # noqa: E402
    add_poisson_gaussian_noise,
    blur_batch,
    default_psf_size,
    random_psf_batch,
    synthesize_batch,
)
from napari_deblurgan.errors import InputError  # noqa: E402


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "kinds", [("motion",), ("defocus",), ("gaussian",), ("airy",), ("motion", "defocus", "gaussian")]
)
def test_random_psf_batch_properties(kinds):
    psfs = random_psf_batch(12, 21, kinds, generator=_gen(0), device="cpu")
    assert psfs.shape == (12, 1, 21, 21) and psfs.dtype == torch.float32
    assert psfs.min() >= 0
    torch.testing.assert_close(psfs.sum(dim=(1, 2, 3)), torch.ones(12), atol=1e-5, rtol=0)
    # every PSF is different (random kind/strength/trajectory), none is a plain delta
    flat = psfs.reshape(12, -1)
    assert torch.cdist(flat, flat).add(torch.eye(12)).min() > 0
    assert flat.max(dim=1).values.max() < 1.0


def test_random_psf_batch_reproducible_and_seed_dependent():
    a = random_psf_batch(6, None, generator=_gen(3), device="cpu")
    b = random_psf_batch(6, None, generator=_gen(3), device="cpu")
    c = random_psf_batch(6, None, generator=_gen(4), device="cpu")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape[-1] == default_psf_size(("motion", "defocus", "gaussian"))


def test_motion_batch_centred_and_long_enough():
    psfs = random_psf_batch(8, 41, ("motion",), generator=_gen(1), strength_ranges={"motion": (16, 16)})
    yy, xx = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    p = psfs[:, 0]
    cy = (p * yy).sum(dim=(1, 2)) - 20
    cx = (p * xx).sum(dim=(1, 2)) - 20
    # centre of mass on the central pixel: blurring does not shift the image
    assert cy.abs().max() < 1e-2 and cx.abs().max() < 1e-2
    for k in range(8):
        ys, xs = torch.nonzero(p[k] > 1e-6, as_tuple=True)
        pts = torch.stack([ys, xs], 1).float()
        extent = torch.cdist(pts, pts).max().item()
        assert 15.0 <= extent <= 16 + 2 * np.sqrt(2)


def _extent_per_path_length(walks: np.ndarray) -> float:
    """The mean ratio of a walk's extent (its largest point-to-point distance) to its path length: 1 for a
    straight stroke, smaller the more it turns; a statistic that does not depend on the blur length asked for."""
    ratios = []
    for walk in walks:
        sub = walk[:: max(1, len(walk) // 200)]
        extent = np.abs(sub[:, None] - sub[None, :]).max()
        ratios.append(extent / np.abs(np.diff(walk)).sum())
    return float(np.mean(ratios))


def test_training_motion_walks_turn_as_the_reference_2000_step_walks_do():
    """Training draws 256-step walks (MOTION_STEPS) on the device; the evaluation and the NumPy synthesis draw
    the reference's 2000 steps. Both must be the same random walk: the per-step perturbations were once scaled
    by the reference's step instead of the walk's own, so 256-step walks were ~8x straighter (extent/path
    0.62 against 0.34) and the model trained on straighter motion blur than it was evaluated on."""
    from napari_deblurgan.blur.psf import motion_trajectory
    from napari_deblurgan.blur.torch_synthesis import MOTION_STEPS, _motion_walks

    rng = np.random.default_rng(0)
    reference = _extent_per_path_length(np.array([motion_trajectory(rng, num_steps=2000) for _ in range(300)]))
    walks = _motion_walks(600, _gen(0), torch.device("cpu"), MOTION_STEPS).numpy()
    numpy_walks = np.array([motion_trajectory(rng, num_steps=MOTION_STEPS) for _ in range(600)])
    assert 0.25 < reference < 0.45  # the reference's walks curl a lot: a check that the statistic sees that
    assert _extent_per_path_length(walks) == pytest.approx(reference, rel=0.12)
    assert _extent_per_path_length(numpy_walks) == pytest.approx(reference, rel=0.12)


@pytest.mark.parametrize("radius", [0.8, 1.5, 3.0])
def test_airy_batch_matches_numpy_airy_psf(radius):
    """The training's Airy patterns are NumPy's defocus_psf(model="airy") (pixels averaged over sub-samples,
    not sampled at their centres, which made a 1.5 px pattern's centre pixel 0.55 of the kernel, not 0.43)."""
    from napari_deblurgan.blur.psf import defocus_psf

    expected = defocus_psf(radius, model="airy")
    size = expected.shape[0]
    got = random_psf_batch(1, size, ("airy",), generator=_gen(0), strength_ranges={"airy": (radius, radius)})[0, 0]
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)


def test_disk_and_gaussian_shapes():
    disk = random_psf_batch(1, 15, ("defocus",), generator=_gen(0), strength_ranges={"defocus": (3, 3)})[0, 0]
    assert disk[7, 7] == disk.max() and disk[7, 9] == disk[7, 7]  # flat top
    assert disk[7, 11] == 0 and 0 < disk[7, 10] < disk[7, 7]  # anti-aliased edge
    gauss = random_psf_batch(1, 25, ("gaussian",), generator=_gen(0), strength_ranges={"gaussian": (2, 2)})[0, 0]
    yy = torch.arange(25.0)[:, None] - 12
    assert (gauss * yy**2).sum().item() == pytest.approx(4 + 1 / 12, rel=0.01)


@pytest.mark.parametrize(("h", "w", "k"), [(32, 40, 9), (20, 24, 21), (8, 10, 15)])
def test_blur_batch_matches_numpy(h, w, k):
    rng = np.random.default_rng(0)
    sharp = torch.from_numpy(rng.uniform(0, 1, (3, 2, h, w)).astype(np.float32))
    psfs = random_psf_batch(3, k, generator=_gen(2))
    out = blur_batch(sharp, psfs)
    assert out.shape == sharp.shape and out.dtype == sharp.dtype
    for n in range(3):
        for c in range(2):
            ref = convolve_reflect(sharp[n, c].double().numpy(), psfs[n, 0].double().numpy())
            np.testing.assert_allclose(out[n, c].numpy(), ref, atol=2e-5)


def test_blur_batch_with_numpy_motion_psf():
    psf = motion_psf(11.0, 0, size=15)
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (40, 40)).astype(np.float32)
    out = blur_batch(torch.from_numpy(img)[None, None], torch.from_numpy(psf)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, convolve_reflect(img.astype(np.float64), psf.astype(np.float64)), atol=2e-5)


def test_blur_batch_rejects_bad_shapes():
    with pytest.raises(InputError):
        blur_batch(torch.zeros(2, 1, 16, 16), torch.zeros(3, 1, 5, 5))
    with pytest.raises(InputError):
        blur_batch(torch.zeros(2, 16, 16), torch.zeros(2, 1, 5, 5))


def test_noise_is_drawn_by_the_generator_on_its_own_device():
    from napari_deblurgan.blur.torch_synthesis import _randn_on

    drawn = _randn_on((3, 4), _gen(5), torch.device("cpu"))
    assert torch.equal(drawn, torch.randn((3, 4), generator=_gen(5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_noise_for_a_gpu_batch_is_drawn_there_and_determined_by_the_cpu_generator():
    from napari_deblurgan.blur.torch_synthesis import _randn_on

    cuda = torch.device("cuda")
    g1, g2 = _gen(7), _gen(7)
    a, b = _randn_on((2, 1, 64, 64), g1, cuda), _randn_on((2, 1, 64, 64), g2, cuda)
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert torch.equal(g1.get_state(), g2.get_state())  # one draw each: resumable from the CPU state
    assert not torch.equal(a, _randn_on((2, 1, 64, 64), g1, cuda))
    assert abs(a.std().item() - 1) < 0.05


def test_noise_variance_and_reproducibility():
    x = torch.full((2, 1, 128, 128), 0.5)
    x[1] = -0.2  # negative intensity: no shot noise, read noise only
    photons = torch.tensor([200.0, 200.0])
    read = torch.tensor([3.0, 3.0])
    noisy = add_poisson_gaussian_noise(x, photons, read, _gen(0))
    again = add_poisson_gaussian_noise(x, photons, read, _gen(0))
    assert torch.equal(noisy, again)
    expected0 = np.sqrt(0.5 * 200 + 9) / 200
    expected1 = 3 / 200
    assert noisy[0].std().item() == pytest.approx(expected0, rel=0.05)
    assert noisy[1].std().item() == pytest.approx(expected1, rel=0.05)
    assert noisy[0].mean().item() == pytest.approx(0.5, abs=0.002)


def test_synthesize_batch():
    rng = np.random.default_rng(0)
    sharp = torch.from_numpy(rng.uniform(0, 1, (4, 1, 48, 48)).astype(np.float32))
    blurred, psfs = synthesize_batch(sharp, kinds=("motion", "gaussian"), generator=_gen(5))
    again, psfs_again = synthesize_batch(sharp, kinds=("motion", "gaussian"), generator=_gen(5))
    assert torch.equal(blurred, again) and torch.equal(psfs, psfs_again)
    assert blurred.shape == sharp.shape and psfs.shape[:2] == (4, 1)
    clean, psfs_clean = synthesize_batch(sharp, kinds=("motion", "gaussian"), generator=_gen(5), noise=False)
    assert torch.equal(psfs_clean, psfs)  # the PSFs do not depend on the noise setting
    torch.testing.assert_close(clean, blur_batch(sharp, psfs))
    residual = (blurred - clean).std().item()
    assert 0.005 < residual < 0.2  # noise of 30..1000 photons at intensity 1 is present
    assert abs(clean.mean().item() - sharp.mean().item()) < 0.01


def test_random_psf_batch_rejects_bad_arguments():
    with pytest.raises(InputError):
        random_psf_batch(2, 20, generator=_gen(0))  # even size
    with pytest.raises(InputError):
        random_psf_batch(2, 21, ("zoom",), generator=_gen(0))
    with pytest.raises(InputError):
        random_psf_batch(0, 21, generator=_gen(0))
    with pytest.raises(InputError):
        random_psf_batch(2, 21, ("gaussian",), generator=_gen(0), strength_ranges={"gaussian": (0, 1)})


def test_random_psf_batch_kind_weights():
    # fixed strengths: every Gaussian PSF is the same tensor, every disk another, so kinds can be counted
    ranges = {"gaussian": (2.0, 2.0), "defocus": (3.0, 3.0)}
    kinds = ("gaussian", "defocus")
    gaussian = random_psf_batch(1, 21, ("gaussian",), generator=_gen(0), strength_ranges=ranges)[0]

    def gaussian_fraction(weights, seed=1, n=4000):
        psfs = random_psf_batch(n, 21, kinds, generator=_gen(seed), strength_ranges=ranges, kind_weights=weights)
        is_gaussian = (psfs - gaussian).abs().amax(dim=(1, 2, 3)) < 1e-6
        return is_gaussian.float().mean().item()

    assert abs(gaussian_fraction((3.0, 1.0)) - 0.75) < 0.03
    assert abs(gaussian_fraction((1.0, 3.0)) - 0.25) < 0.03
    assert gaussian_fraction((1.0, 0.0)) == 1.0 and gaussian_fraction((0.0, 2.0)) == 0.0
    # equal weights draw exactly what the unweighted (uniform) call draws
    a = random_psf_batch(64, 21, kinds, generator=_gen(2), strength_ranges=ranges)
    b = random_psf_batch(64, 21, kinds, generator=_gen(2), strength_ranges=ranges, kind_weights=(5.0, 5.0))
    assert torch.equal(a, b)
    for bad in ((1.0,), (1.0, -1.0), (0.0, 0.0), (float("nan"), 1.0)):
        with pytest.raises(InputError, match="kind_weights"):
            random_psf_batch(2, 21, kinds, generator=_gen(0), kind_weights=bad)


def test_photon_counts_are_drawn_log_uniformly():
    # a flat image at intensity 1 with no read noise: each crop's noise variance is 1 / photons. Log-uniform in
    # 30..1000 puts the median at sqrt(30 * 1000) = 173 photons (a uniform draw would put it at 515)
    sharp = torch.ones((300, 1, 32, 32))
    blurred, _ = synthesize_batch(
        sharp, kinds=("gaussian",), generator=_gen(3), photons_range=(30.0, 1000.0), read_noise_range=(0.0, 0.0)
    )
    photons = 1.0 / blurred.flatten(1).var(dim=1).double()
    assert photons.min().item() > 30 * 0.8 and photons.max().item() < 1000 * 1.25
    assert photons.median().item() == pytest.approx(np.sqrt(30.0 * 1000.0), rel=0.2)

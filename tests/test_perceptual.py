"""The VGG-19 conv3_3 perceptual loss (DeblurGAN's content loss) and where its weights come from.

No ImageNet weights can be downloaded here, so the loading code is driven with randomly initialised VGG-19
weights written to files in the layouts users have (torchvision's full state dict, or ``features`` alone):
what is tested is that the right layers get exactly the file's weights, that bad files give one clear error,
that nothing is downloaded behind the user's back, and that a training run then really uses VGG features.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from napari_deblurgan.errors import InputError  # noqa: E402
from napari_deblurgan.training import events as ev  # noqa: E402
from napari_deblurgan.training import perceptual  # noqa: E402
from napari_deblurgan.training.perceptual import VGGPerceptualLoss, load_vgg_features  # noqa: E402


@pytest.fixture(scope="module")
def vgg_features_state() -> dict[str, torch.Tensor]:
    """A random VGG-19 ``features[:15]`` state dict (conv1_1 .. conv3_3; 1.7 M weights, not ImageNet's)."""
    torch.manual_seed(0)
    features = torchvision.models.vgg19(weights=None).features[: perceptual.CONV3_3_END]
    return {k: v.clone() for k, v in features.state_dict().items()}


def _patch_downloads(monkeypatch, replacement) -> None:
    """Replace the download function where torchvision's weight enums call it (and in torch.hub)."""
    import torchvision.models._api as weights_api

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", replacement)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", replacement)


@pytest.fixture
def no_cache_no_download(tmp_path, monkeypatch):
    """Point torch's cache at an empty folder and switch downloads off (as on an offline machine)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(perceptual.ALLOW_DOWNLOAD_ENV, raising=False)


def _assert_features_hold(features, state) -> None:
    assert len(features) == perceptual.CONV3_3_END
    last = features[perceptual.CONV3_3_END - 1]
    assert isinstance(last, torch.nn.Conv2d) and last.out_channels == 256  # conv3_3, before its ReLU
    got = features.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_features_state_dict_file_is_loaded_exactly(vgg_features_state, tmp_path):
    path = tmp_path / "vgg_features.pth"
    torch.save(vgg_features_state, path)
    features, reason = load_vgg_features(path)
    _assert_features_hold(features, vgg_features_state)
    assert str(path) in reason


def test_torchvision_layout_file_is_loaded_exactly(vgg_features_state, tmp_path):
    """torchvision's file: keys ``features.N.*`` plus the classifier (a small stand-in here), possibly wrapped
    in ``{"state_dict": ...}``; only conv1_1 .. conv3_3 are taken."""
    full = {f"features.{k}": v for k, v in vgg_features_state.items()}
    full["features.16.weight"] = torch.zeros(512, 256, 3, 3)  # conv3_4: later layers are ignored
    full["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "vgg19-full.pth"
    torch.save({"state_dict": full}, path)
    features, _ = load_vgg_features(path)
    _assert_features_hold(features, vgg_features_state)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"conv.weight": torch.zeros(1)}, "is not a VGG-19 state dict"),
        ([1, 2, 3], "does not hold a VGG-19 state dict"),
        (b"not a torch file", "Cannot read VGG-19 weights from .*: it is not a file of tensors; give torchvision's"),
        (b"PK\x03\x04 cut short", "Cannot read VGG-19 weights from .*: the file is damaged or incomplete"),
    ],
)
def test_a_bad_weights_file_is_one_clear_input_error(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=message) as error:
        load_vgg_features(path)
    assert "weights_only" not in str(error.value)  # torch's advice to load unsafely is not ours to give


def test_without_a_file_cache_or_permission_nothing_is_downloaded(no_cache_no_download, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    _patch_downloads(monkeypatch, no_network)
    features, reason = load_vgg_features()
    assert features is None
    assert perceptual.ALLOW_DOWNLOAD_ENV in reason and "downloading is off" in reason


def test_a_damaged_cache_file_is_reported_not_replaced(no_cache_no_download):
    cached = perceptual.cached_vgg19_path()
    assert "torch-home" in str(cached)  # the test's own cache, not the user's
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")
    features, reason = load_vgg_features()
    assert features is None and "could not be read" in reason
    assert cached.read_bytes() == b"truncated download"  # left for the user to see, not overwritten


def test_download_is_tried_only_when_allowed_and_fails_cleanly(no_cache_no_download, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("network unreachable")

    _patch_downloads(monkeypatch, offline)
    features, reason = load_vgg_features(allow_download=True)
    assert features is None and "downloading the VGG-19 ImageNet weights failed" in reason
    assert len(calls) == 1


def test_perceptual_loss_compares_conv3_3_features(vgg_features_state):
    features = torchvision.models.vgg19(weights=None).features[: perceptual.CONV3_3_END]
    features.load_state_dict(vgg_features_state)
    loss_fn = VGGPerceptualLoss(features)
    loss_fn.train()
    assert not loss_fn.features.training  # the extractor stays in eval mode
    assert not any(p.requires_grad for p in loss_fn.parameters())

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.random((2, 1, 32, 32), dtype=np.float32))
    assert loss_fn(real, real).item() == 0.0
    fake = real + 0.1 * torch.from_numpy(rng.standard_normal((2, 1, 32, 32)).astype(np.float32))
    fake.requires_grad_(True)
    loss = loss_fn(fake, real)
    assert loss.item() > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    # any channel count: each channel is compared on its own (replicated to RGB), so 2 channels that are
    # copies of one give the same loss as that one channel
    two = loss_fn(fake.detach().repeat(1, 2, 1, 1), real.repeat(1, 2, 1, 1))
    assert two.item() == pytest.approx(loss_fn(fake.detach(), real).item(), rel=1e-5)


def test_training_with_a_weights_file_uses_vgg_features(vgg_features_state, tmp_path, no_cache_no_download):
    from napari_deblurgan import iter_finetune, samples
    from napari_deblurgan.model_file import create_model

    path = tmp_path / "vgg_features.pth"
    torch.save(vgg_features_state, path)
    sharp = (samples.cells((64, 64), seed=1) * 4000).astype(np.uint16)
    model = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    events = list(
        iter_finetune(
            sharp, None, model=model, steps=2, patch_size=32, batch_size=2, preset="deblurgan", device="cpu",
            seed=0, validate_every=100, perceptual_weights=path,
        )
    )  # fmt: skip
    started = events[0]
    assert isinstance(started, ev.Started) and started.perceptual == "vgg19"
    assert not any(isinstance(e, ev.Notice) and e.kind == "perceptual-fallback" for e in events)
    step = next(e for e in events if isinstance(e, ev.Step))
    assert step.losses["perceptual"] > 0 and "feature_matching" not in step.losses
    assert events[-1].model.metadata["training"]["perceptual"] == "vgg19"


def test_the_features_compared_are_conv3_3s_output_before_its_relu(tmp_path):
    """DeblurGAN's perceptual loss compares conv3_3 activations: torchvision's ``vgg19().features[:15]`` (index
    14 is conv3_3; its ReLU is index 15). The file given holds more layers (up to conv3_4): only those are used."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    vgg = make_layers(cfgs["E"])[:17].eval()  # VGG-19's features (as vgg19().features), conv1_1 .. conv3_4
    path = tmp_path / "vgg19-first-layers.pth"
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, path)
    features, _ = load_vgg_features(path)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        got, conv3_3 = features.eval()(x), vgg[:15](x)
    assert got.shape == (1, 256, 6, 6)
    torch.testing.assert_close(got, conv3_3)
    assert (got < 0).any()  # before the ReLU

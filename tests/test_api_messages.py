"""Bad input to the public API gets one message that says what to change (the s18 API audit's findings)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import napari_deblurgan as ndg
from napari_deblurgan.errors import InputError, ModelFileError

IMAGE = (np.random.default_rng(0).random((40, 48)) * 1000).astype(np.float32)


# ------------------------------------------------------------------------------------- tiles: rounding


def _warnings_of(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


def test_overlap_warning_names_the_value_passed_and_the_rounded_one(tiny_model):
    """stride 4, seamless overlap 72: overlap=5 runs with 8, and the warning says both."""
    image = np.random.default_rng(1).random((200, 200)).astype(np.float32)
    shown = _warnings_of(lambda: ndg.deblur(image, tiny_model, tile_size=160, overlap=5, device="cpu"))
    seams = [m for m in shown if "seamless overlap" in m]
    assert seams == [
        "overlap 5 px (rounded up to 8, a multiple of the model's stride 4) is below this model's seamless "
        "overlap of 72 px: tile borders may show as faint seams; leave overlap unset for seamless tiles"
    ], shown
    # a multiple of the stride is said as it is
    shown = _warnings_of(lambda: ndg.deblur(image, tiny_model, tile_size=160, overlap=8, device="cpu"))
    assert any(m.startswith("overlap 8 px is below this model's seamless overlap") for m in shown), shown


def test_no_seam_warning_when_the_plane_is_one_tile(tiny_model):
    """A plane that fits one tile has no tile borders: an overlap below the seamless one changes nothing."""
    shown = _warnings_of(lambda: ndg.deblur(IMAGE, tiny_model, overlap=4, device="cpu"))
    assert not [m for m in shown if "overlap" in m], shown


def test_repeat_work_warning_names_the_tile_size_passed_and_the_rounded_one(tiny_model):
    image = np.random.default_rng(1).random((300, 300)).astype(np.float32)
    shown = _warnings_of(lambda: ndg.deblur(image, tiny_model, tile_size=78, device="cpu"))
    assert any(
        m.startswith("tile_size 78 px (rounded up to 80, a multiple of the model's stride 4) with an overlap of 72")
        for m in shown
    ), shown


def test_deblur_docstring_says_tiles_are_rounded_to_the_stride():
    doc = " ".join(ndg.deblur.__doc__.split())
    assert "rounded up to multiples of the model's stride" in doc
    assert "``overlap=4`` runs with 16" in doc


# ------------------------------------------------------------------------------------- paths and None


@pytest.mark.parametrize("path", ["img.tif", Path("img.tif")])
def test_a_path_instead_of_an_image_says_to_read_it(path, tiny_model):
    expected = (
        "pass the image as an array, e.g. tifffile.imread(path) or skimage.io.imread(path); got the path 'img.tif'"
    )
    with pytest.raises(InputError) as info:
        ndg.deblur(path, tiny_model)
    assert str(info.value) == expected
    with pytest.raises(InputError, match=r"^pass the sharp image as an array, e\.g\. tifffile\.imread"):
        ndg.synthesize_blur(path)
    with pytest.raises(InputError, match=r"^pass the reference as an array.*got the path 'img\.tif'$"):
        ndg.compare({"b": IMAGE}, path)
    with pytest.raises(InputError, match=r"^pass the result 'b' as an array"):
        ndg.compare({"b": path}, IMAGE)


def test_none_instead_of_an_image(tiny_model):
    with pytest.raises(InputError, match=r"^The image is None; pass an array\.$"):
        ndg.deblur(None, tiny_model)
    with pytest.raises(InputError, match=r"^The sharp image is None; pass an array\.$"):
        ndg.synthesize_blur(None)
    with pytest.raises(InputError, match=r"^The result 'b' is None; pass an array\.$"):
        ndg.compare({"b": None}, IMAGE)


def test_classical_baselines_and_training_data_refuse_paths_too():
    from napari_deblurgan.comparison import richardson_lucy, wiener
    from napari_deblurgan.data.pairs import _check_array

    psf = np.ones((3, 3), np.float32) / 9
    for function in (richardson_lucy, wiener):
        with pytest.raises(InputError, match=r"^pass the image as an array.*got the path 'img\.tif'$"):
            function("img.tif", psf)
        with pytest.raises(InputError, match=r"^The image is None; pass an array\.$"):
            function(None, psf)
    with pytest.raises(InputError, match=r"^pass the sharp image as an array.*got the path 'a\.tif'$"):
        _check_array("a.tif", "sharp image")
    with pytest.raises(InputError, match=r"^pass the image as an array.*got the paths 'a\.tif', 'b\.tif'$"):
        ndg.deblur(["a.tif", "b.tif"])


# ---------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize(
    ("noise", "said"),
    [
        ({"photon": 50}, "noise {'photon': 50} has the unknown key 'photon' and no 'photons' key"),
        ({"read_noise": 2}, "noise {'read_noise': 2} has no 'photons' key"),
        ({"photons": 50, "gain": 2}, "noise {'photons': 50, 'gain': 2} has the unknown key 'gain';"),
    ],
)
def test_noise_dict_names_unknown_and_missing_keys(noise, said):
    from napari_deblurgan.data.pairs import resolve_noise

    for call in (lambda: ndg.synthesize_blur(IMAGE, noise=noise), lambda: resolve_noise(noise)):
        with pytest.raises(InputError) as info:
            call()
        message = str(info.value)
        assert message.startswith(said), message
        assert "'photons' (required" in message and "'read_noise' (optional" in message, message


def test_realistic_noise_ranges_are_documented_on_both_sides():
    """The ranges differ on purpose (neither is to change); each side says the other's."""
    from napari_deblurgan.blur import synthesize
    from napari_deblurgan.data import pairs

    assert synthesize.REALISTIC_READ_NOISE == (1.0, 4.0)
    assert pairs.REALISTIC_NOISE["read_noise"] == (0.5, 4.0)
    synth_doc = " ".join(ndg.synthesize_blur.__doc__.split())
    assert "read noise in 0.5..4" in synth_doc
    assert "1..4" in " ".join(pairs.resolve_noise.__doc__.split())
    source = Path(pairs.__file__).read_text()
    assert 'per crop - as synthesize_blur("realistic")' not in source


# ---------------------------------------------------------------------------------------------- models


def test_missing_model_file_keeps_the_path_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError) as info:
        ndg.deblur(IMAGE, "./default")
    message = str(info.value)
    assert message.startswith("Model file './default' not found."), message
    assert "a shipped model by its name alone, without a path ('default', 'fast')" in message, message


def test_finetune_model_errors_list_architectures():
    from napari_deblurgan.model_file import load_base_model
    from napari_deblurgan.models import list_architectures

    names = ", ".join(list_architectures())
    with pytest.raises(ModelFileError) as info:
        load_base_model("nope")
    assert f"finetune also takes an architecture name to train from scratch ({names})" in str(info.value)
    with pytest.raises(ModelFileError) as info:
        load_base_model("./nope.pt")
    assert str(info.value).startswith("Model file './nope.pt' not found.")
    assert f"({names})" in str(info.value)
    with pytest.raises(ModelFileError) as info:  # load_model itself does not take architecture names
        ndg.load_model("nope")
    assert "architecture" not in str(info.value)


# ------------------------------------------------------------------------------------------- compare


@pytest.mark.parametrize(
    ("dtype", "said"),
    [
        (np.uint16, "ground truth constant (5); data range 65535 used"),
        (np.float32, "ground truth constant (5); data range 1 assumed"),
    ],
)
def test_constant_reference_note(dtype, said):
    reference = np.full(IMAGE.shape, 5, dtype)
    table = ndg.compare({"b": IMAGE.astype(dtype)}, reference)
    assert len(table.notes) == 1, table.notes
    (note,) = table.notes
    assert note.startswith(said) and "data_range=" in note, note
    assert not re.search(r"5-6", note)


# ------------------------------------------------------------------------------------ validation scale


def test_validation_psnr_scale_is_documented():
    from napari_deblurgan.training.events import Validation

    doc = " ".join(Validation.__doc__.split())
    assert "normalised" in doc and "1st-99.8th percentiles" in doc and "not comparable" in doc
    docs = (Path(__file__).parents[1] / "docs" / "scripting.md").read_text()
    line = docs.index('print(f"step {event.step}: PSNR')
    assert "not compare()'s dB scale" in docs[line - 300 : line]


# ------------------------------------------------------------------------------ device= across the API


def test_load_model_moves_a_given_model_only_to_a_device_asked_for(tiny_model, monkeypatch):
    """``device="cpu"`` was the default, so an explicit "cpu" could not move a model off a GPU: None is now."""
    moved: list[object] = []
    monkeypatch.setattr(type(tiny_model), "to", lambda self, device: moved.append(device) or self)
    assert ndg.load_model(tiny_model) is tiny_model  # not copied
    assert ndg.load_model(tiny_model, device=None) is tiny_model
    assert moved == []  # no device asked for: it stays where it is
    assert ndg.load_model(tiny_model, device="cpu") is tiny_model
    assert moved == ["cpu"]


def test_a_models_to_none_leaves_it_where_it_is_as_torchs_does(tiny_model, monkeypatch):
    """``torch.nn.Module.to(None)`` moves nothing; ``DeblurModel.to(None)`` moved the generator to the CPU."""
    moved: list[object] = []
    monkeypatch.setattr(type(tiny_model.generator), "to", lambda self, *a, **k: moved.append(a) or self)
    assert tiny_model.to(None) is tiny_model and moved == []
    tiny_model.to("cpu")
    assert len(moved) == 1


def test_load_model_puts_a_file_on_the_cpu_unless_told(tiny_model_file):
    assert ndg.load_model(tiny_model_file).device.type == "cpu"
    assert ndg.load_model(tiny_model_file, device=None).device.type == "cpu"


def test_device_none_is_documented_wherever_device_is_taken():
    """None means the default device in every function that takes one (and the docstrings say so)."""
    import inspect

    assert inspect.signature(ndg.load_model).parameters["device"].default is None
    for function in (ndg.deblur, ndg.iter_finetune):
        assert inspect.signature(function).parameters["device"].default == "auto"
        assert "None means the same" in function.__doc__
    assert "None (the default) is the CPU" in ndg.load_model.__doc__
    # why the CPU and not "auto": deblur moves the model itself, finetune trains a copy
    assert "moves the model's generator, in" in ndg.load_model.__doc__
    assert "not copied: its generator is moved to this device in place" in " ".join(ndg.deblur.__doc__.split())


def test_deblur_moves_a_given_model_in_place_and_device_none_is_auto(tiny_model):
    from napari_deblurgan.devices import resolve_device

    out = ndg.deblur(IMAGE, tiny_model, device=None)
    assert out.shape == IMAGE.shape
    assert tiny_model.device.type == resolve_device("auto").type  # the caller's model, not a copy, was moved


# --------------------------------------------------------------------------- synthesize_blur: one kind


@pytest.mark.parametrize("kind", ["motion,defocus", "Motion:2", ["motion", "defocus"], ("gaussian",), {"motion": 1}])
def test_synthesize_blur_refuses_a_mix_of_kinds_and_says_how_to_mix(kind):
    """A list used to be called a bad PSF array ("A PSF must be a 2D array of numbers, got list")."""
    with pytest.raises(InputError, match="one blur kind per call") as info:
        ndg.synthesize_blur(IMAGE, kind)
    said = str(info.value)
    assert "'mixed'" in said and "kind=rng.choice(['motion', 'defocus'])" in said and "finetune's blur_kind" in said


def test_synthesize_blur_takes_a_kind_drawn_per_call_and_a_psf_as_nested_lists():
    kind = np.random.default_rng(0).choice(["motion", "defocus"])  # a numpy str, as the advice writes it
    blurred, psf = ndg.synthesize_blur(IMAGE, kind, seed=0)
    assert blurred.shape == IMAGE.shape and psf.ndim == 2
    _, psf = ndg.synthesize_blur(IMAGE, [[0, 1, 0], [1, 4, 1], [0, 1, 0]])  # a list of numbers is still a PSF
    assert psf.shape == (3, 3)


# --------------------------------------------------------------------------- rgb: deblur only, axes elsewhere


def test_a_grey_stack_three_pixels_wide_is_scored_as_grey_planes_with_axes():
    """compare has no ``rgb``: ``axes`` says what deblur's ``rgb=False`` says, and its docstring says so."""
    rng = np.random.default_rng(0)
    truth = rng.random((4, 24, 3)).astype(np.float32)  # Z=4 planes of 24 x 3 px, not a 4 x 24 RGB image
    result = truth + np.float32(0.01)
    as_rgb = ndg.compare({"r": result}, truth, per_slice=True)
    as_grey = ndg.compare({"r": result}, truth, axes="ZYX", per_slice=True)
    assert [row["slice"] for row in as_rgb.rows[1:]] == [(0,), (1,), (2,)]  # one row per colour
    assert [row["slice"] for row in as_grey.rows[1:]] == [(0,), (1,), (2,), (3,)]  # one row per Z plane
    for function in (ndg.compare, ndg.iter_finetune):
        doc = " ".join(function.__doc__.split())
        assert "rgb=False" in doc and '``"ZYX"``' in doc


def test_a_joint_models_channel_error_names_the_axes_that_would_read_the_channels():
    """A (3, Y, X) array is inferred as ZYX; for a 3-channel model the advice named 'YXS' (RGB), which does not fit
    this array. It names the axes that read its first axis as the channels, and keeps the RGB example otherwise."""
    from napari_deblurgan import create_model, deblur

    model = create_model("unet_lite", channels=3, seed=0)
    with pytest.raises(
        InputError,
        match=r"no channel axis \(C or S\); pass axes with the right channel axis \(e\.g\. "
        r"'CYX', its Z axis as the channels\) or use a single-channel model",
    ):
        deblur(np.zeros((3, 32, 32), np.float32), model, device="cpu")
    with pytest.raises(
        InputError, match=r"axis 'C' has 2; pass axes with the right channel axis \(e\.g\. 'YXS' for RGB\)"
    ):
        deblur(np.zeros((2, 32, 32), np.float32), model, axes="CYX", device="cpu")

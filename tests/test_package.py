"""Package-level promises: cheap import (no torch, napari or Qt), a complete lazy public API."""

from __future__ import annotations

import subprocess
import sys

import napari_deblurgan


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_does_not_import_torch_napari_or_qt():
    loaded = _modules_after("import napari_deblurgan")
    heavy = {"torch", "napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "torchvision", "skimage", "dask"}
    assert not heavy & loaded, heavy & loaded


def test_core_modules_never_import_napari_or_qt():
    statement = (
        "import napari_deblurgan.inference.deblur, napari_deblurgan.training.trainer, "
        "napari_deblurgan.model_file, napari_deblurgan.cli, napari_deblurgan.demo, napari_deblurgan.samples"
    )
    loaded = _modules_after(statement)
    assert not {"napari", "qtpy", "PyQt6", "PyQt5", "PySide6"} & loaded


def test_public_api_resolves_lazily():
    assert set(napari_deblurgan.__all__) == {"__version__", *napari_deblurgan._LAZY_EXPORTS}
    for name in napari_deblurgan._LAZY_EXPORTS:
        assert getattr(napari_deblurgan, name) is not None, name
    for name in ("deblur", "finetune", "load_model", "synthesize_blur", "compare"):
        assert callable(getattr(napari_deblurgan, name))


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        napari_deblurgan.nope  # noqa: B018


def test_training_events_are_top_level_names():
    # a console user checks an event's type by its top-level name: isinstance(event, napari_deblurgan.Validation)
    from napari_deblurgan.training import events

    for name in events.__all__:
        assert getattr(napari_deblurgan, name) is getattr(events, name), name
        assert name in napari_deblurgan.__all__, name
    # ... and reaching them stays cheap: the events module is plain data, no torch
    loaded = _modules_after("import napari_deblurgan as n; n.Validation, n.Step, n.Finished, n.TrainingEvent")
    assert not {"torch", "napari", "qtpy", "skimage", "dask"} & loaded

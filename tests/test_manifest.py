"""The npe2 manifest: valid, complete, and cheap to import (no torch until a job runs)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

WIDGET_MODULES = [
    "napari_deblurgan.widgets._common",
    "napari_deblurgan.widgets.deblur_widget",
    "napari_deblurgan.widgets.finetune_widget",
    "napari_deblurgan.widgets.compare_widget",
    "napari_deblurgan.widgets.sample_data",
    "napari_deblurgan.widgets.layer_menu",
    "napari_deblurgan.widgets.model_list",
    "napari_deblurgan.widgets.loss_plot",
]


@pytest.fixture(scope="module")
def manifest():
    import napari_deblurgan

    path = Path(napari_deblurgan.__file__).with_name("napari.yaml")
    return npe2.PluginManifest.from_file(path)


def test_npe2_validate_cli_passes():
    """`npe2 validate napari-deblurgan` (the check napari-hub runs) finds the installed plugin valid."""
    exe = Path(sys.executable).with_name("npe2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    proc = subprocess.run([*cmd, "validate", "napari-deblurgan"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()


def test_manifest_contributions(manifest):
    contributions = manifest.contributions
    assert manifest.name == "napari-deblurgan"
    assert sorted(w.display_name for w in contributions.widgets) == ["Compare", "Deblur", "Finetune"]
    assert {s.key for s in contributions.sample_data} == {"blurred_sharp_pair", "blurred_stack_3d", "clock"}
    filter_items = contributions.menus["napari/layers/filter"]
    commands = {c.id: c for c in contributions.commands}
    assert [commands[item.command].title for item in filter_items] == ["Deblur (default model)"]


def test_every_command_resolves(manifest):
    """Every python_name points at an importable object (a typo would only show when a user clicks)."""
    import importlib

    for command in manifest.contributions.commands:
        module_name, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module_name), attr)), command.id


def test_widget_modules_do_not_import_torch():
    """napari imports widget modules while building its menus: torch must wait until a job runs."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in WIDGET_MODULES)
        + (
            "bad = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
            "print('LOADED', bad)\nsys.exit(1 if bad else 0)\n"
        )
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sample_data_layers():
    """Sample commands return layer-data tuples; blurred layers carry their PSF for the baselines."""
    import numpy as np

    from napari_deblurgan.widgets import sample_data

    pair = sample_data.blurred_sharp_pair()
    by_name = {meta["name"]: (data, meta, kind) for data, meta, kind in pair}
    blurred, meta, kind = by_name["cells blurred"]
    sharp = by_name["cells sharp (ground truth)"][0]
    assert kind == "image" and blurred.shape == sharp.shape and blurred.ndim == 2
    psf = meta["metadata"]["psf"]
    assert psf.ndim == 2 and np.isclose(psf.sum(), 1.0, atol=1e-4)
    assert not np.array_equal(blurred, sharp)

    clock = sample_data.clock()
    assert len(clock) == 1 and clock[0][0].ndim == 2


@pytest.mark.parametrize("panels_first", [False, True])
def test_with_a_sample_open_every_panel_starts_on_its_blurred_layer_and_ground_truth(
    make_napari_viewer, qtbot, panels_first
):
    """The panels' layer boxes choose a sample's layers by their role: Run, Start and Richardson-Lucy work with
    the defaults. They chose the top layer (the sample's PSF) when the sample was opened first, and its ground
    truth (the first layer inserted) when the panels were opened first."""
    import numpy as np

    from napari_deblurgan.widgets.compare_widget import CompareWidget
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget
    from napari_deblurgan.widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer(strict_qt="raise")
    viewer.add_image(np.zeros((32, 32), np.float32), name="mine")  # the user's own layer, below the sample

    def panels():
        return DeblurWidget(viewer), FinetuneWidget(viewer), CompareWidget(viewer)

    if panels_first:
        deblur, finetune, compare = panels()
    viewer.open_sample("napari-deblurgan", "blurred_sharp_pair")
    if not panels_first:
        deblur, finetune, compare = panels()
    names = {
        "deblur image": deblur.layer_combo.value().name,
        "finetune blurred": finetune.blurred_combo.value().name,
        "finetune sharp": finetune.sharp_combo.value().name,
        "compare ground truth": compare.reference_combo.value().name,
        "compare baseline input": compare.baseline_input.value().name,
        "compare PSF layer": compare.psf_layer.value().name,
    }
    assert names == {
        "deblur image": "cells blurred",
        "finetune blurred": "cells blurred",
        "finetune sharp": "cells sharp (ground truth)",
        "compare ground truth": "cells sharp (ground truth)",
        "compare baseline input": "cells blurred",
        "compare PSF layer": "cells PSF",
    }
    assert viewer.layers[-1].name == "cells blurred"  # the top layer

    # a choice the user made stays, whatever arrives later
    deblur.layer_combo.set_value(viewer.layers["mine"])
    compare.reference_combo.set_value(None)
    viewer.open_sample("napari-deblurgan", "blurred_sharp_pair")
    assert deblur.layer_combo.value().name == "mine" and compare.reference_combo.value() is None
    # without sample layers, the boxes keep their old defaults: the top layer, and no ground truth
    for layer in [layer for layer in viewer.layers if layer.name != "mine"]:
        viewer.layers.remove(layer)
    other = FinetuneWidget(viewer), CompareWidget(viewer)
    assert other[0].blurred_combo.value().name == other[0].sharp_combo.value().name == "mine"
    assert other[1].reference_combo.value() is None


def test_the_boxes_leave_a_samples_ground_truth_and_psf_when_its_blurred_layer_goes(make_napari_viewer):
    """A sample's ground truth and PSF are the right choice only next to their own blurred image: after it was
    removed, the boxes stayed on them (a 2-D motion PSF offered next to a 3-D stack)."""
    from napari_deblurgan.widgets.compare_widget import CompareWidget
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget

    viewer = make_napari_viewer(strict_qt="raise")
    deblur, compare = DeblurWidget(viewer), CompareWidget(viewer)
    signals: list[int] = []
    compare.reference_combo.currentIndexChanged.connect(signals.append)
    viewer.open_sample("napari-deblurgan", "blurred_sharp_pair")
    assert compare.reference_combo.value().name == "cells sharp (ground truth)"
    assert all(a != b for a, b in itertools.pairwise(signals)), signals  # each change signalled once
    viewer.open_sample("napari-deblurgan", "blurred_stack_3d")
    assert deblur.layer_combo.value().name == "cells blurred"  # its own choice stays while it is as good
    viewer.layers.remove("cells blurred")
    assert deblur.layer_combo.value().name == "stack blurred"
    assert compare.reference_combo.value().name == "stack sharp (ground truth)"
    assert compare.psf_layer.value().name == "stack PSF"
    assert compare.baseline_input.value().name == "stack blurred"

"""The npe2 manifest: valid, complete, and cheap to import (no torch until a job runs)."""

from __future__ import annotations

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
    code = "import sys\n" + "".join(f"import {m}\n" for m in WIDGET_MODULES) + (
        "bad = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "print('LOADED', bad)\nsys.exit(1 if bad else 0)\n"
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

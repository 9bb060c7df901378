"""The panels as napari gives them to a user: opened through the plugin (npe2), which hands each dock widget
the viewer wrapped in a ``PublicOnlyProxy`` (and ``viewer.add_image`` through it returns wrapped layers). The
other widget tests build the panels with the real viewer and cannot see what that changes."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer


def test_the_session_model_list_outlives_the_panel_that_opened_it(make_napari_viewer, tiny_model, tmp_path, qtbot):
    viewer = make_napari_viewer(strict_qt="raise")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-deblurgan", "Finetune")
    assert type(finetune.viewer).__name__ == "PublicOnlyProxy"  # what this test is about
    path = tiny_model.save(tmp_path / "mine.pt")
    finetune.registry.add_finetuned(path, tiny_model)  # as a finished run does
    viewer.window.remove_dock_widget(finetune)
    finetune.deleteLater()
    del finetune
    qtbot.wait(50)  # let Qt delete the panel
    gc.collect()
    _, deblur = viewer.window.add_plugin_dock_widget("napari-deblurgan", "Deblur")
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" in labels


def test_a_new_baseline_layer_is_ticked_in_the_compare_panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(strict_qt="raise")
    rng = np.random.default_rng(0)
    sharp = rng.random((64, 64)).astype(np.float32)
    from napari_deblurgan.blur.psf import gaussian_psf

    viewer.add_image(sharp, name="truth")
    viewer.add_image(sharp * 0.9, name="blurred", metadata={"psf": gaussian_psf(1.0)})
    _, compare = viewer.window.add_plugin_dock_widget("napari-deblurgan", "Compare")
    compare.reference_combo.set_value(viewer.layers["truth"])
    compare.baseline_input.set_value(viewer.layers["blurred"])
    compare.rl_iterations.setValue(3)
    compare.rl_button.click()
    qtbot.waitUntil(lambda: compare.worker is None, timeout=60_000)
    assert [layer.name for layer in compare.checked_layers()] == ["blurred Richardson-Lucy 3 it."]


def test_the_deblur_panel_tells_a_removed_input_from_a_live_one_behind_the_proxy(
    make_napari_viewer, tiny_model_file, small_image, qtbot
):
    viewer = make_napari_viewer(strict_qt="raise")
    _, deblur = viewer.window.add_plugin_dock_widget("napari-deblurgan", "Deblur")
    assert type(deblur.viewer).__name__ == "PublicOnlyProxy"
    deblur.model_combo.add_file(str(tiny_model_file))
    deblur.device_combo.setCurrentIndex(deblur.device_combo.findData("cpu"))
    layer = viewer.add_image(small_image, name="cells")
    deblur.run_button.click()
    qtbot.waitUntil(lambda: deblur.worker is None, timeout=60_000)
    assert deblur.status.text() == "Added 'cells deblurred'."  # still there: no note
    deblur.layer_combo.set_value(layer)
    deblur.run_button.click()
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: deblur.worker is None, timeout=60_000)
    assert "'cells' was removed from the viewer" in deblur.status.text()
    assert [lay.name for lay in viewer.layers] == ["cells deblurred", "cells deblurred [2]"]

"""The Finetune dock widget, driven end to end in a real napari viewer with a tiny model on CPU.

Runs are a handful of steps on 64 px images with 32 px crops; what is checked is the plumbing: events reach
the progress bar, plot and preview layer, Stop stops, the model is saved where asked and appears in the
Deblur widget's model list, the input layers are never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer

from napari.utils.notifications import NotificationSeverity  # noqa: E402

from _helpers import raise_on_call  # noqa: E402


@pytest.fixture
def pair():
    """A 64 x 64 sharp image with edges and its Gaussian-blurred version (uint16)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    sharp = 500 + 3000 * ((xx // 8 + yy // 8) % 2) + rng.normal(0, 30, (64, 64))
    blurred = ndimage.gaussian_filter(sharp, 1.5)
    return blurred.clip(0, 65535).astype(np.uint16), sharp.clip(0, 65535).astype(np.uint16)


@pytest.fixture
def setup(make_napari_viewer, tiny_model_file, pair, tmp_path):
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget
    from napari_deblurgan.widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer(strict_qt="raise")
    blurred, sharp = pair
    viewer.add_image(sharp, name="sharp")
    viewer.add_image(blurred, name="blurred")
    finetune = FinetuneWidget(viewer)
    deblur = DeblurWidget(viewer)
    viewer.window.add_dock_widget(finetune, name="Finetune")
    viewer.window.add_dock_widget(deblur, name="Deblur")
    finetune.base_model.add_file(str(tiny_model_file))
    finetune.blurred_combo.set_value(viewer.layers["blurred"])
    finetune.sharp_combo.set_value(viewer.layers["sharp"])
    finetune.device_combo.setCurrentIndex(finetune.device_combo.findData("cpu"))
    finetune.preset_combo.setCurrentText("content")  # no critic: the fastest steps
    finetune.patch_spin.setValue(32)
    finetune.batch_spin.setValue(2)
    finetune.validate_every_spin.setValue(2)
    finetune.val_fraction.setValue(0.25)
    finetune.save_edit.setText(str(tmp_path / "models" / "mine.pt"))
    return viewer, finetune, deblur


def wait_done(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_finetune_pair_end_to_end(setup, qtbot, tmp_path):
    viewer, finetune, deblur = setup
    sharp_before = viewer.layers["sharp"].data.copy()
    blurred_before = viewer.layers["blurred"].data.copy()
    finetune.steps_spin.setValue(4)
    finetune.start_button.click()
    assert finetune.stop_button.isEnabled() and not finetune.start_button.isEnabled()
    wait_done(qtbot, finetune)

    saved = tmp_path / "models" / "mine.pt"
    assert finetune.last_saved == saved and saved.is_file()
    assert finetune.last_finished is not None and not finetune.last_finished.stopped
    assert finetune.progress.value() == finetune.progress.maximum() == 4
    assert finetune.plot.steps == [1, 2, 3, 4]
    assert all(np.isfinite(finetune.plot.generator_loss))
    assert len(finetune.plot.val_psnr) >= 2 and all(np.isfinite(finetune.plot.val_psnr))
    preview = viewer.layers["finetune preview: blurred | restored | sharp"]
    assert preview.data.ndim == 2 and preview.data.shape[1] == 3 * preview.data.shape[0]
    assert preview.metadata["step"] == 4
    np.testing.assert_array_equal(viewer.layers["sharp"].data, sharp_before)
    np.testing.assert_array_equal(viewer.layers["blurred"].data, blurred_before)

    # the saved model is in the Deblur widget's list, and it loads and runs there
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" in labels
    from napari_deblurgan import load_model

    assert load_model(saved).architecture == "unet_lite"
    deblur.model_combo.setCurrentIndex(labels.index("finetuned: mine"))
    deblur.layer_combo.set_value(viewer.layers["blurred"])
    deblur.device_combo.setCurrentIndex(deblur.device_combo.findData("cpu"))
    deblur.run_button.click()
    qtbot.waitUntil(lambda: deblur.worker is None, timeout=60_000)
    assert viewer.layers["blurred deblurred"].data.shape == (64, 64)


def test_a_misaligned_pair_is_a_warning_notification(setup, qtbot, pair, notifications):
    """The data checks' warnings (here: the blurred layer is offset from the sharp one) reach the user once, as a
    warning notification of the panel (superqt's worker sent them to a signal nobody listened to: they reached
    neither napari nor the terminal)."""
    import re

    viewer, finetune, _ = setup
    blurred, _sharp = pair
    viewer.layers["blurred"].data = np.roll(blurred, (5, -3), axis=(0, 1))
    finetune.steps_spin.setValue(1)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    qtbot.wait(50)
    assert finetune.last_saved is not None  # a warning, not an error: the run went on
    shown = [msg for sev, msg in notifications if sev == NotificationSeverity.WARNING]
    assert len(shown) == 1, notifications
    assert shown[0].startswith("Finetune: Training pair 1: blurred image is offset from its sharp image"), shown
    assert "Register the pair before training" in shown[0]
    assert not re.search(r"(?<![\w-])\w+=", shown[0])


def start_long_training(finetune, qtbot):
    """Start a 100,000-step run, wait until it has taken two steps, and return its worker (still running)."""
    finetune.steps_spin.setValue(100_000)
    finetune.validate_every_spin.setValue(1000)
    finetune.start_button.click()
    qtbot.waitUntil(lambda: len(finetune.plot.steps) >= 2 or finetune.worker is None, timeout=120_000)
    assert finetune.worker is not None
    return finetune.worker


def test_stop_then_resume(setup, qtbot, tmp_path):
    viewer, finetune, _ = setup
    sharp_before = viewer.layers["sharp"].data.copy()
    worker = start_long_training(finetune, qtbot)
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    finetune.stop_button.click()
    wait_done(qtbot, finetune, timeout=30_000)
    assert ended and finetune.last_finished.stopped
    stopped_at = finetune.last_finished.step
    assert 2 <= stopped_at < 100_000
    assert (tmp_path / "models" / "mine.pt").is_file()  # saved on stop
    assert finetune.resume_button.isEnabled()
    np.testing.assert_array_equal(viewer.layers["sharp"].data, sharp_before)

    finetune.steps_spin.setValue(stopped_at + 2)
    finetune.resume_button.click()
    wait_done(qtbot, finetune)
    assert not finetune.last_finished.stopped
    assert finetune.last_finished.step == stopped_at + 2
    assert finetune.plot.steps[-2:] == [stopped_at + 1, stopped_at + 2]  # history kept, continued


def test_resume_trains_on_the_last_runs_layers_not_the_ones_chosen_now(setup, qtbot, monkeypatch):
    import napari_deblurgan

    viewer, finetune, _ = setup
    seen: list[tuple[object, object]] = []
    real = napari_deblurgan.iter_finetune

    def recording(blurred, **kwargs):
        seen.append((blurred, kwargs["sharp"]))
        return real(blurred, **kwargs)

    monkeypatch.setattr(napari_deblurgan, "iter_finetune", recording)
    start_long_training(finetune, qtbot)
    finetune.stop_button.click()
    wait_done(qtbot, finetune, timeout=10_000)
    viewer.add_image(np.zeros((48, 48), np.uint16), name="other")
    finetune.sharp_combo.set_value(viewer.layers["other"])
    finetune.blurred_combo.set_value(viewer.layers["other"])
    finetune.steps_spin.setValue(finetune.last_finished.step + 1)
    finetune.resume_button.click()
    wait_done(qtbot, finetune)
    assert len(seen) == 2 and not finetune.last_finished.stopped
    assert seen[1][0] is seen[0][0] and seen[1][1] is seen[0][1]  # the first run's arrays
    assert seen[1][1].shape == (64, 64)


def test_closing_the_panel_stops_training_and_keeps_the_model(setup, qtbot, tmp_path):
    """No training thread outlives the panel, and what it learnt so far is saved (nothing is lost)."""
    _, finetune, _ = setup
    worker = start_long_training(finetune, qtbot)
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    finetune.close()
    qtbot.waitUntil(lambda: bool(ended), timeout=10_000)
    saved = tmp_path / "models" / "mine.pt"
    qtbot.waitUntil(saved.is_file, timeout=5_000)
    from napari_deblurgan import load_model

    training = load_model(saved).metadata["training"]
    assert training["stopped"] and 2 <= training["steps_done"] < 100_000


def test_sharp_only_with_synthetic_blur_and_preview(setup, qtbot):
    viewer, finetune, _ = setup
    finetune.synth_radio.setChecked(True)
    assert not finetune.blurred_combo.isEnabled() and finetune.preview_blur_button.isEnabled()
    finetune.blur_kind.setCurrentText("gaussian")
    finetune.blur_strength.setValue(2.0)
    viewer.layers["sharp"].scale, viewer.layers["sharp"].translate = (0.5, 0.25), (10.0, -3.0)
    finetune.preview_blur_button.click()
    assert not finetune.preview_blur_button.isEnabled()  # made in a worker: napari does not freeze
    qtbot.waitUntil(lambda: finetune.preview_worker is None, timeout=60_000)
    assert finetune.preview_blur_button.isEnabled()
    preview = viewer.layers["sharp synthetic blur"]
    sharp = viewer.layers["sharp"].data
    assert preview.data.shape == sharp.shape and preview.data.dtype == sharp.dtype
    assert not np.array_equal(preview.data, sharp)
    assert preview.metadata["psf"].ndim == 2
    assert tuple(preview.scale) == (0.5, 0.25) and tuple(preview.translate) == (10.0, -3.0)  # on its input

    finetune.blur_noise.setValue(300)
    kwargs = finetune.training_kwargs()  # the panel's blur settings are what training uses
    assert kwargs["blur_kind"] == "gaussian" and kwargs["blur_strength"] == 2.0 and kwargs["noise"] == 300
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert finetune.last_finished is not None and finetune.last_finished.step == 2
    recorded = finetune.last_finished.model.metadata["training"]["synthetic_blur"]
    assert recorded["strength_px"] == [2.0, 2.0] and recorded["noise"]["photons"] == [300.0, 300.0]


def test_bad_settings_give_notification(setup, qtbot, notifications):
    viewer, finetune, _ = setup
    finetune.axes_edit.setText("TZYX")  # wrong for a 2D image
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("axes" in msg.lower() for msg in errors), notifications
    assert finetune.last_saved is None
    assert finetune.start_button.isEnabled()

    finetune.blurred_combo.set_value(viewer.layers["sharp"])  # same layer twice
    finetune.start_button.click()
    assert finetune.worker is None
    assert any("same layer" in msg for sev, msg in notifications if sev == NotificationSeverity.ERROR)


def test_the_precision_box_offers_every_precision_and_its_choice_reaches_the_run(setup, qtbot, tmp_path, notifications):
    from napari_deblurgan import load_model
    from napari_deblurgan.devices import PRECISIONS

    _viewer, finetune, _ = setup
    combo = finetune.precision_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(PRECISIONS)
    assert finetune.settings_kwargs()["precision"] == "auto"  # the API's default unless the user picks one
    combo.setCurrentIndex(combo.findData("bfloat16"))
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    training = load_model(tmp_path / "models" / "mine.pt").metadata["training"]
    assert (training["precision"], training["autocast_dtype"]) == ("bfloat16", "bfloat16")

    combo.setCurrentIndex(combo.findData("float16"))  # needs a GPU; the device is the CPU here
    finetune.save_edit.setText(str(tmp_path / "models" / "other.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("precision" in msg and "needs a GPU" in msg and "precision=" not in msg for msg in errors), errors
    assert not (tmp_path / "models" / "other.pt").exists()


def test_a_second_start_never_overwrites_the_first_runs_model(setup, qtbot, tmp_path, monkeypatch):
    """The proposed file name is replaced by a fresh one once a run has written there."""
    from napari_deblurgan.widgets import finetune_widget

    _viewer, finetune, _ = setup
    monkeypatch.setattr(finetune_widget, "default_model_dir", lambda: tmp_path / "auto")
    proposed = str(finetune_widget.default_model_path())
    finetune._proposed_save_path = proposed
    finetune.save_edit.setText(proposed)
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    first = finetune.last_saved
    first_bytes = first.read_bytes()
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    second = finetune.last_saved
    assert first == Path(proposed) and second != first and second.is_file()
    assert first.read_bytes() == first_bytes
    assert finetune.save_edit.text() == str(second)


def test_an_empty_save_path_is_said_before_training(setup, notifications):
    _viewer, finetune, _ = setup
    finetune.save_edit.setText("  ")
    finetune.start_button.click()
    assert finetune.worker is None
    assert any("Enter where to save the finetuned model" in msg for _, msg in notifications)
    assert finetune.status.text().startswith("Enter where to save the finetuned model")


def test_the_dock_close_button_stops_training_too(setup, qtbot, tmp_path):
    viewer, finetune, _ = setup
    worker = start_long_training(finetune, qtbot)
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    viewer.window.remove_dock_widget(finetune)
    qtbot.waitUntil(lambda: bool(ended), timeout=10_000)
    assert (tmp_path / "models" / "mine.pt").is_file()  # the model so far is kept
    finetune.deleteLater()
    qtbot.wait(50)


def test_napari_quitting_mid_run_stops_the_training_and_saves_the_model(setup, qtbot, tmp_path, capfd):
    """napari's quit path (``WorkerBase.await_workers``, run on ``aboutToQuit``) asks every worker to quit
    and waits: for a training that is a stop after the current step, and the model so far is written."""
    from napari.qt.threading import WorkerBase

    _, finetune, _ = setup
    start_long_training(finetune, qtbot)
    saved = tmp_path / "models" / "mine.pt"
    assert not saved.exists()
    WorkerBase.await_workers(msecs=30_000)  # blocks until the thread is done, as on quitting
    assert saved.is_file()
    from napari_deblurgan import load_model

    training = load_model(saved).metadata["training"]
    assert training["stopped"] and 2 <= training["steps_done"] < 100_000
    assert f"the model is saved to {saved}" in capfd.readouterr().err
    wait_done(qtbot, finetune)


@pytest.mark.parametrize("folder_name", ["models_folder", "a_folder.pt"])
def test_a_folder_as_save_path_is_refused_not_turned_into_folder_dot_pt(setup, tmp_path, notifications, folder_name):
    _, finetune, _ = setup
    folder = tmp_path / folder_name
    folder.mkdir()
    finetune.save_edit.setText(str(folder))
    finetune.start_button.click()
    assert finetune.worker is None
    assert any("is a folder; give a file name inside it" in msg for _, msg in notifications)
    beside = folder.with_suffix(".pt")  # "<folder>.pt" next to it (the folder itself when it ends in .pt)
    assert (beside == folder or not beside.exists()) and not list(folder.iterdir())


@pytest.mark.parametrize(
    ("typed", "saved"),
    [("cells.v2", "cells.v2.pt"), ("run-2026.05", "run-2026.05.pt"), ("plain", "plain.pt"), ("mine.pt", "mine.pt")],
)
def test_a_typed_name_gets_pt_appended_as_the_file_dialog_does_not_its_dotted_part_replaced(
    setup, tmp_path, typed, saved
):
    _, finetune, _ = setup
    finetune.save_edit.setText(str(tmp_path / typed))
    assert finetune._save_path_for_run(resume=False) == tmp_path / saved


def test_lazy_layers_reach_training_unread(setup):
    """A dask layer is handed to training as it is (crops are read lazily), not computed whole first."""
    da = pytest.importorskip("dask.array")
    viewer, finetune, _ = setup
    lazy = da.from_array(viewer.layers["sharp"].data, chunks=(32, 32))
    viewer.add_image(lazy, name="lazy sharp")
    finetune.synth_radio.setChecked(True)
    finetune.sharp_combo.set_value(viewer.layers["lazy sharp"])
    data = finetune.data_kwargs()
    assert data["blurred"] is viewer.layers["lazy sharp"].data  # sharp-only: the images go first


def test_resume_goes_on_into_the_last_runs_file_and_a_refused_start_keeps_it_resumable(
    setup, qtbot, tmp_path, notifications
):
    viewer, finetune, _ = setup
    start_long_training(finetune, qtbot)
    finetune.stop_button.click()
    wait_done(qtbot, finetune, timeout=30_000)
    first = tmp_path / "models" / "mine.pt"
    stopped_at = finetune.last_finished.step
    # a Start that the training itself refuses at its start (a pair of two shapes), in the worker
    viewer.add_image(np.zeros((48, 48), np.uint16), name="small")
    finetune.blurred_combo.set_value(viewer.layers["small"])
    finetune.save_edit.setText(str(tmp_path / "models" / "other.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert any("differ in shape" in msg for _, msg in notifications)
    assert "differ in shape" in finetune.status.text()
    assert finetune.resume_button.isEnabled()
    # and one the panel refuses before any work: the status line says it too, not the last run's text
    finetune.blurred_combo.set_value(viewer.layers["sharp"])
    finetune.start_button.click()
    assert "same layer" in finetune.status.text()
    finetune.steps_spin.setValue(stopped_at + 1)
    finetune.resume_button.click()  # the save box now shows other.pt: Resume still writes the run's own file
    wait_done(qtbot, finetune)
    assert finetune.last_saved == first and not (tmp_path / "models" / "other.pt").exists()
    assert finetune.last_finished.step == stopped_at + 1


def test_a_run_that_fails_before_its_first_checkpoint_leaves_resume_to_the_last_good_run(
    setup, qtbot, tmp_path, monkeypatch
):
    import napari_deblurgan
    from napari_deblurgan.errors import InputError

    _, finetune, _ = setup
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    run_a = finetune.last_checkpoint_dir
    assert finetune.resume_button.isEnabled()
    real = napari_deblurgan.iter_finetune

    def fails_after_starting(*args, **kwargs):  # e.g. out of GPU memory at batch size 1
        run = real(*args, **kwargs)

        class Failing:
            model = None

            def stop(self):
                run.stop()

            def __iter__(self):
                for event in run:
                    yield event
                    if type(event).__name__ == "Started":
                        raise InputError("out of memory (simulated)")

        return Failing()

    monkeypatch.setattr(napari_deblurgan, "iter_finetune", fails_after_starting)
    finetune.save_edit.setText(str(tmp_path / "models" / "b.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert "out of memory" in finetune.status.text()
    assert finetune.last_checkpoint_dir == run_a and finetune.resume_button.isEnabled()


def test_the_blur_preview_reads_the_controls_in_the_gui_thread_and_is_dropped_when_the_panel_closes(setup, qtbot):
    import threading

    viewer, finetune, _ = setup
    finetune.synth_radio.setChecked(True)
    threads = []
    read_axes = finetune._axes
    finetune._axes = lambda: threads.append(threading.current_thread() is threading.main_thread()) or read_axes()
    finetune.preview_blur_button.click()
    viewer.window.remove_dock_widget(finetune)  # closed at once
    qtbot.waitUntil(lambda: finetune.preview_worker is None, timeout=60_000)
    assert threads and all(threads)
    assert "sharp synthetic blur" not in [layer.name for layer in viewer.layers]
    finetune.deleteLater()
    qtbot.wait(50)


def test_an_rgb_models_preview_is_in_colour_and_a_grey_one_replaces_it(setup, make_tiny_model, qtbot, tmp_path):
    """A 3-channel model's preview shows all three channels as colour (it showed channel 0 in grey); a later
    one-channel run's grey preview takes the layer's place."""
    from napari_deblurgan.widgets.finetune_widget import PREVIEW_LAYER

    viewer, finetune, _ = setup
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    photo = np.stack([(xx // 8 % 2) * 200, (yy // 8 % 2) * 200, ((xx + yy) // 11 % 2) * 200], axis=-1)
    photo = (photo + rng.integers(0, 40, photo.shape)).astype(np.uint8)  # three different channels
    viewer.add_image(photo, name="photo", rgb=True)
    finetune.base_model.add_file(str(make_tiny_model(channels=3).save(tmp_path / "rgb.pt")))
    finetune.synth_radio.setChecked(True)
    finetune.sharp_combo.set_value(viewer.layers["photo"])
    assert finetune.axes_edit.text() == "YXS"
    finetune.blur_kind.setCurrentText("gaussian")
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert finetune.last_finished is not None and finetune.last_finished.step == 2, finetune.status.text()

    preview = viewer.layers[PREVIEW_LAYER]
    assert preview.rgb and preview.data.shape == (32, 96, 3) and preview.data.dtype == np.float32
    assert tuple(preview.contrast_limits) == (0.0, 1.0)
    sharp_third = preview.data[:, 64:]
    assert not np.allclose(sharp_third[..., 0], sharp_third[..., 1])  # colour, not one channel three times
    assert not np.allclose(sharp_third[..., 1], sharp_third[..., 2])

    # three fluorescence channels (CYX) are no RGB image: a stack with a channel slider, as the user's layer
    viewer.add_image(np.moveaxis(photo, -1, 0).copy(), name="three channels")
    finetune.sharp_combo.set_value(viewer.layers["three channels"])
    finetune.axes_edit.setText("CYX")
    finetune.save_edit.setText(str(tmp_path / "models" / "cyx.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    preview = viewer.layers[PREVIEW_LAYER]
    assert not preview.rgb and preview.data.shape == (3, 32, 96), finetune.status.text()

    finetune.base_model.select(next(e for e in finetune.registry.entries if e.source.endswith("tiny.pt")))
    finetune.sharp_combo.set_value(viewer.layers["sharp"])
    finetune.save_edit.setText(str(tmp_path / "models" / "grey.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    previews = [layer for layer in viewer.layers if layer.name.startswith("finetune preview")]
    assert len(previews) == 1 and previews[0].name == PREVIEW_LAYER
    assert not previews[0].rgb and previews[0].data.shape == (32, 96) and previews[0].colormap.name == "gray"


def test_a_blur_preview_whose_layer_was_removed_meanwhile_is_added_with_a_note(setup, qtbot, notifications):
    viewer, finetune, _ = setup
    finetune.synth_radio.setChecked(True)
    sharp = viewer.layers["sharp"]
    sharp.scale = (0.5, 0.5)
    finetune.preview_blur_button.click()
    viewer.layers.remove(sharp)  # while the preview is made
    qtbot.waitUntil(lambda: finetune.preview_worker is None, timeout=60_000)
    assert tuple(viewer.layers["sharp synthetic blur"].scale) == (0.5, 0.5)
    infos = [msg for sev, msg in notifications if sev == NotificationSeverity.INFO]
    assert any("'sharp' was removed from the viewer" in msg for msg in infos), notifications


def _stack(pair, planes):
    sharp = pair[1]
    return np.stack([np.roll(sharp, 5 * z, axis=1) for z in range(planes)])


def test_a_dask_stacks_blur_preview_computes_the_shown_plane_only(setup, qtbot, pair):
    """The synthetic blur preview reads and blurs the plane on view, not the layer: a dask (or zarr, or very
    large) stack was computed and blurred whole in the worker for one plane's look."""
    import threading

    import dask
    import dask.array as da

    viewer, finetune, _ = setup
    stack = _stack(pair, 6)
    computed = []  # (plane, in the GUI thread): napari computes the planes it draws there, the preview in its worker

    def plane(z):
        computed.append((z, threading.current_thread() is threading.main_thread()))
        return stack[z]

    lazy = da.stack([da.from_delayed(dask.delayed(plane)(z), (64, 64), np.uint16) for z in range(6)])
    with dask.config.set(scheduler="synchronous"):  # tasks run in the thread that computes them
        layer = viewer.add_image(
            lazy, name="lazy", scale=(2.0, 0.5, 0.25), translate=(100.0, 10.0, -3.0), contrast_limits=(0, 4000)
        )
        viewer.dims.set_point(0, 100 + 2 * 4)  # world coordinates: plane 4 of 6
        finetune.sharp_combo.set_value(layer)
        finetune.synth_radio.setChecked(True)
        finetune.preview_blur_button.click()
        qtbot.waitUntil(lambda: finetune.preview_worker is None, timeout=60_000)
    assert [z for z, gui in computed if not gui] == [4]
    preview = viewer.layers["lazy synthetic blur"]
    assert isinstance(preview.data, np.ndarray) and preview.data.shape == (1, 64, 64)
    # on its plane: a slider elsewhere shows nothing of it
    assert tuple(preview.scale) == (2.0, 0.5, 0.25) and tuple(preview.translate) == (108.0, 10.0, -3.0)


def test_a_numpy_stacks_blur_preview_is_the_shown_planes_blur(setup, qtbot, pair):
    """A NumPy stack's preview is the synthetic blur of the plane on view (the same PSF as the whole stack's
    with that seed), placed on that plane."""
    from napari_deblurgan import synthesize_blur

    viewer, finetune, _ = setup
    stack = _stack(pair, 3)
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.25), translate=(100.0, 10.0, -3.0))
    viewer.dims.set_point(0, 100 + 2 * 1)  # plane 1 of 3
    finetune.sharp_combo.set_value(layer)
    finetune.synth_radio.setChecked(True)
    finetune.blur_kind.setCurrentText("gaussian")
    finetune.blur_strength.setValue(2.0)
    finetune.preview_blur_button.click()
    qtbot.waitUntil(lambda: finetune.preview_worker is None, timeout=60_000)
    preview = viewer.layers["stack synthetic blur"]
    settings, seed = finetune._blur_settings(), finetune.seed_spin.value()
    expected, psf = synthesize_blur(stack[1:2], **settings, seed=seed, axes="ZYX")
    np.testing.assert_array_equal(preview.data, expected)
    np.testing.assert_array_equal(preview.metadata["psf"], psf)
    np.testing.assert_array_equal(psf, synthesize_blur(stack, **settings, seed=seed)[1])
    assert tuple(preview.translate) == (102.0, 10.0, -3.0) and preview.metadata["napari_deblurgan_start"] == (1, 0, 0)


def test_the_blur_preview_takes_what_the_viewer_shows():
    """The part of a layer the preview blurs: the plane at the sliders (all samples of RGB), whole axes that a
    3D view displays, and the viewer's extra leading dimensions ignored."""
    from types import SimpleNamespace

    import napari

    from napari_deblurgan.widgets.finetune_widget import shown_part

    def viewer(point, displayed):
        return SimpleNamespace(dims=SimpleNamespace(point=point, ndim=len(point), displayed=displayed))

    data = np.zeros((4, 5, 16, 16), np.uint16)
    layer = napari.layers.Image(data, scale=(1, 2, 1, 1), translate=(0, 10, 0, 0))
    # a 5D viewer (another layer has one more axis): the layer is its last four dimensions
    assert shown_part(viewer((7, 2.4, 13.9, 0, 0), (3, 4)), layer, data, None) == (
        "TZYX",
        (slice(2, 3), slice(2, 3), slice(None), slice(None)),
        (2, 2, 0, 0),
    )
    assert shown_part(viewer((0, 99, -5, 0, 0), (2, 3, 4)), layer, data, None)[1:] == (
        (slice(3, 4), slice(None), slice(None), slice(None)),
        (3, 0, 0, 0),
    )  # clipped; Z displayed (3D)
    rgb = np.zeros((3, 16, 16, 3), np.uint8)
    layer = napari.layers.Image(rgb, rgb=True)
    assert shown_part(viewer((1, 0, 0), (1, 2)), layer, rgb, None) == (
        "ZYXS",
        (slice(1, 2), slice(None), slice(None), slice(None)),
        (1, 0, 0),
    )


def test_the_preview_sits_below_its_validation_layers_plane_not_at_the_origin_at_unit_scale(setup, qtbot, pair):
    """The preview is a crop of one YX plane of the run's validation layer (here of a ZYX stack with a scale and
    a translate): it takes that plane's YX scale, translate and units, so it is drawn at its input's size,
    instead of unit scale at the world origin (a 0.1 um-pixel image's preview was ten times too large)."""
    from napari_deblurgan.widgets.finetune_widget import PREVIEW_LAYER

    viewer, finetune, _ = setup
    blurred, sharp = pair
    geometry = dict(scale=(2.0, 0.5, 0.25), translate=(7.0, 10.0, -3.0), units=("um", "um", "um"))
    viewer.add_image(np.stack([sharp, sharp[::-1]]), name="sharp stack", **geometry)
    viewer.add_image(np.stack([blurred, blurred[::-1]]), name="blurred stack", **geometry)
    finetune.blurred_combo.set_value(viewer.layers["blurred stack"])
    finetune.sharp_combo.set_value(viewer.layers["sharp stack"])
    assert finetune.axes_edit.text() == "ZYX"
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert finetune.last_finished is not None, finetune.status.text()
    preview = viewer.layers[PREVIEW_LAYER]
    assert preview.data.ndim == 2
    # just below the plane (64 rows of 0.5 um, then a gap of 4 rows), where it hides none of the image
    assert tuple(preview.scale) == (0.5, 0.25) and tuple(preview.translate) == (10.0 + 0.5 * (64 + 4), -3.0)
    assert [str(unit) for unit in preview.units] == ["micrometer", "micrometer"]

    # a later run on other layers moves the preview layer it reuses onto their plane
    finetune.blurred_combo.set_value(viewer.layers["blurred"])
    finetune.sharp_combo.set_value(viewer.layers["sharp"])
    finetune.save_edit.setText(str(Path(finetune.save_edit.text()).with_name("second.pt")))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert viewer.layers[PREVIEW_LAYER] is preview
    assert tuple(preview.scale) == (1.0, 1.0) and tuple(preview.translate) == (64.0 + 4, 0.0)


def test_a_2d_validation_pair_validates_a_3d_training_stack(setup, qtbot, pair):
    """One axes box serves the training layers and the validation pair: ZYX for a stack made the YX validation
    pair 'wrong' (the run was refused); the pair is now given the stack's axes as a view."""
    viewer, finetune, _ = setup
    blurred, sharp = pair
    viewer.add_image(np.stack([sharp, sharp[::-1]]), name="sharp stack")
    viewer.add_image(np.stack([blurred, blurred[::-1]]), name="blurred stack")
    finetune.blurred_combo.set_value(viewer.layers["blurred stack"])
    finetune.sharp_combo.set_value(viewer.layers["sharp stack"])
    assert finetune.axes_edit.text() == "ZYX"
    finetune.val_mode.setCurrentIndex(finetune.val_mode.findData("pair"))
    finetune.val_blurred_combo.set_value(viewer.layers["blurred"])
    finetune.val_sharp_combo.set_value(viewer.layers["sharp"])
    validation = finetune.data_kwargs()["validation"]
    assert [v.shape for v in validation] == [(1, *blurred.shape), (1, *sharp.shape)]
    layers = (viewer.layers["blurred"], viewer.layers["sharp"])
    assert all(np.shares_memory(v, layer.data) for v, layer in zip(validation, layers, strict=True))  # views
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert finetune.last_finished is not None, finetune.status.text()


def test_layer_geometry_of_a_plane_is_the_yx_part_of_the_layers_transforms():
    """widgets._common.layer_geometry: a whole-layer result copies every axis; a plane result (2-D, or 3-D with
    an axis of its own first) gets the YX scale, translate, rotation, extra affine, labels and units, and so
    maps its pixels where the layer maps that plane's pixels."""
    from napari.layers import Image

    from napari_deblurgan.widgets._common import layer_geometry

    stack = Image(
        np.zeros((3, 16, 20), np.float32),
        scale=(2.0, 0.5, 0.25),
        translate=(7.0, 10.0, -3.0),
        rotate=30.0,  # in the YX plane
        affine=np.diag([1.0, 1.5, 1.5, 1.0]),
        axis_labels=("z", "y", "x"),
        units=("um", "nm", "nm"),
    )
    whole = layer_geometry(stack)
    assert whole["scale"] == (2.0, 0.5, 0.25) and whole["translate"] == (7.0, 10.0, -3.0)

    plane = Image(np.zeros((16, 20), np.float32), **layer_geometry(stack, 2))
    assert tuple(plane.scale) == (0.5, 0.25) and tuple(plane.translate) == (10.0, -3.0)
    assert tuple(plane.axis_labels) == ("y", "x") and [str(u) for u in plane.units] == ["nanometer", "nanometer"]
    for y, x in [(0, 0), (5, 0), (0, 7), (11, 13)]:
        np.testing.assert_allclose(plane.data_to_world((y, x)), stack.data_to_world((1, y, x))[1:], atol=1e-9)

    # below=True: the result's first row lies 16 + 4 rows down the rotated plane, where the plane's row 20 would
    under = Image(np.zeros((16, 20), np.float32), **layer_geometry(stack, 2, below=True))
    for y, x in [(0, 0), (3, 7)]:
        np.testing.assert_allclose(under.data_to_world((y, x)), stack.data_to_world((1, y + 20, x))[1:], atol=1e-9)

    channels = Image(np.zeros((3, 16, 20), np.float32), **layer_geometry(stack, 3))  # (C, Y, X) of its own
    assert tuple(channels.scale) == (1.0, 0.5, 0.25) and tuple(channels.translate) == (0.0, 10.0, -3.0)
    np.testing.assert_allclose(channels.data_to_world((2, 11, 13))[1:], stack.data_to_world((1, 11, 13))[1:])
    assert tuple(channels.axis_labels) == ("-3", "y", "x")

    # a channel-last stack with napari's default labels: the run's axes string says which axes are Y and X
    last = Image(np.zeros((16, 20, 5), np.float32), scale=(0.5, 0.25, 7.0), translate=(10.0, -3.0, 40.0))
    assert layer_geometry(last, 2, "YXC")["scale"] == (0.5, 0.25)
    assert layer_geometry(last, 2, "YXC")["translate"] == (10.0, -3.0)
    assert layer_geometry(last, 2, "ZYX")["scale"] == (0.25, 7.0)  # as the axes say (and as without them)


# ------------------------------------------------------------------------------ the API's words, the panel's words
def _form_labels(widget) -> set[str]:
    """The labels of the panel's form rows, alone and after their box's title ("validation" "fraction")."""
    from qtpy.QtWidgets import QFormLayout, QGroupBox, QLabel

    labels = set()
    for box in widget.findChildren(QGroupBox):
        form = box.layout()
        if not isinstance(form, QFormLayout):
            continue
        for row in range(form.rowCount()):
            item = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            if item is not None and isinstance(item.widget(), QLabel):
                text = item.widget().text()
                labels |= {text, f"{box.title()} {text}"}
    return labels


def _named_in_trainer_messages() -> set[str]:
    """The ``iter_finetune`` keywords that string literals of the trainer's modules (its notices and errors,
    docstrings left out) name as keywords: ``patch_size``, ``device='cpu'``, ```validation```, ``model must``."""
    import ast
    import inspect
    import re

    import napari_deblurgan
    from napari_deblurgan.training.trainer import iter_finetune

    keywords = set(inspect.signature(iter_finetune).parameters)
    root = Path(napari_deblurgan.__file__).parent
    modules = [
        "training/trainer.py",
        "training/perceptual.py",
        "training/checkpoint.py",
        "training/presets.py",
        "training/distillation.py",
        "data/pairs.py",
        "devices.py",
        "axes.py",
        "blur/synthesize.py",
    ]
    named = set()
    for module in modules:
        tree = ast.parse((root / module).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            for name in keywords:
                forms = [rf"`{name}`", rf"(?<![\w-]){name}="]
                forms.append(rf"(?<![\w-]){name}\b" if "_" in name else rf"(?:^|; |: |, ){name} must\b")
                if any(re.search(form, node.value) for form in forms):
                    named.add(name)
    return named


def test_every_keyword_the_trainer_names_and_a_control_sets_has_the_panels_label(setup):
    import inspect

    from napari_deblurgan.training.trainer import iter_finetune
    from napari_deblurgan.widgets.finetune_widget import PANEL_LABELS

    _viewer, finetune, _ = setup
    labels = _form_labels(finetune)
    for keyword, label in PANEL_LABELS.items():
        assert keyword in inspect.signature(iter_finetune).parameters, keyword
        assert label in labels, (keyword, label, sorted(labels))
    # what the controls set; the layers' rows are labelled "blurred" and "sharp", the API's own words
    set_by_controls = set(finetune.training_kwargs()) - {"blurred", "sharp"}
    named = _named_in_trainer_messages()
    assert {"patch_size", "perceptual_weights", "learning_rate", "validation", "device"} <= named  # the scan works
    assert (named & set_by_controls) - set(PANEL_LABELS) == set()
    assert set_by_controls <= set(PANEL_LABELS)


def test_the_api_still_says_what_the_panel_rewords(tmp_path, monkeypatch):
    """PANEL_PHRASES and the labels at work on real messages of the API: a message reworded in the API must be
    reworded for the panel too."""
    import re

    from napari_deblurgan import iter_finetune
    from napari_deblurgan.data.pairs import PairedData
    from napari_deblurgan.errors import InputError
    from napari_deblurgan.model_file import create_model
    from napari_deblurgan.training import events as ev
    from napari_deblurgan.training import perceptual
    from napari_deblurgan.widgets.finetune_widget import PANEL_LABELS, PANEL_PHRASES, in_panel_words

    monkeypatch.setattr(perceptual, "cached_vgg19_path", lambda: tmp_path / "no-vgg.pth")
    monkeypatch.delenv(perceptual.ALLOW_DOWNLOAD_ENV, raising=False)
    said = [perceptual.load_vgg_features(None)[1]]
    ones = np.ones((64, 64), np.float32)

    def error(call) -> str:
        with pytest.raises(InputError) as info:
            call()
        return str(info.value)

    said.append(error(lambda: perceptual.load_vgg_features(tmp_path / "vgg.pth")))
    said.append(error(lambda: PairedData(ones, ones * 2, patch_size=32, validation=0.9, check_alignment=False)))
    small = ones[:48, :48]  # too small for a band and a patch whatever the fraction
    said.append(error(lambda: PairedData(small, small * 2, patch_size=32, validation=0.1, check_alignment=False)))
    tall = np.ones((96, 64), np.float32) * np.arange(64)  # not constant: blank validation crops are left out
    said += PairedData(tall, tall * 2, patch_size=32, validation=0.1, check_alignment=False).notes
    said += PairedData(None, ones, patch_size=130, validation=0.0).notes
    said.append(error(lambda: __import__("napari_deblurgan.devices", fromlist=["x"]).resolve_device("cuda:99")))
    stack = np.ones((3, 64, 64), np.float32) * np.arange(64)
    said.append(
        error(lambda: PairedData(stack, stack * 2, axes="ZYX", patch_size=32, validation=(ones, ones * 2)))
    )  # a 2D validation pair for ZYX training images: the panel has no validation_axes to set
    # crops too small for the critic of the panel's default preset
    critic = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    said.append(error(lambda: iter_finetune(ones * np.arange(64), model=critic, patch_size=16, preset="default")))
    # a run with a checkpoint, then: its resume asked for fewer steps, resumed with another recipe, and a new
    # run into its folder
    model = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    common = dict(model=model, patch_size=32, batch_size=2, preset="content", device="cpu", seed=0, validation=None)
    folder = tmp_path / "ck"
    list(iter_finetune(ones * np.arange(64), **common, steps=2, checkpoint_dir=folder))
    said.append(error(lambda: iter_finetune(ones * np.arange(64), **common, steps=1, resume=folder)))
    for run in (
        iter_finetune(ones * np.arange(64), **{**common, "batch_size": 3}, steps=3, resume=folder),
        iter_finetune(ones * np.arange(64), **common, steps=1, checkpoint_dir=folder),
    ):
        run.notice_warnings = False
        said += [e.message for e in run if isinstance(e, ev.Notice)]

    for pattern, _, _ in PANEL_PHRASES:
        assert any(re.search(pattern, text) for text in said), pattern
    for text in said:
        panel = in_panel_words(text)
        for keyword in PANEL_LABELS:
            # no keyword left in Python's spelling: keyword=value, a keyword with an underscore, in backticks
            assert not re.search(rf"(?<![\w-]){keyword}=|`{keyword}`", panel), (keyword, panel)
            if "_" in keyword:
                assert not re.search(rf"(?<![\w-]){keyword}\b", panel), (keyword, panel)
    joined = "\n".join(in_panel_words(text) for text in said)
    assert "under 'VGG-19 weights'" in joined and "a smaller patch size" in joined
    assert "batch size 2 (not 3)" in joined and "(Start, not Resume)" in joined
    assert "Pass patch size 24 or more" in joined and "such as preset content" in joined


def test_the_vgg19_weights_field_reaches_the_run_and_the_fallback_notice_names_it_once(
    setup, qtbot, tmp_path, monkeypatch, notifications
):
    """Without VGG-19 weights the notice points at the panel's field (not at ``perceptual_weights=<file>``), is
    shown once (a notification, not also a TrainingNoticeWarning in the terminal), and a file given in the field
    is what the run's perceptual loss uses."""
    import warnings

    import torch
    import torchvision

    from napari_deblurgan import load_model
    from napari_deblurgan.training import perceptual
    from napari_deblurgan.training.events import TrainingNoticeWarning
    from napari_deblurgan.widgets import finetune_widget

    _viewer, finetune, _ = setup
    monkeypatch.setattr(perceptual, "cached_vgg19_path", lambda: tmp_path / "no-vgg.pth")
    monkeypatch.delenv(perceptual.ALLOW_DOWNLOAD_ENV, raising=False)
    # a warning in the worker thread leaves it as the worker's `warned` signal (superqt's worker catches them)
    relayed: list[tuple] = []
    worker_class = finetune_widget._training_worker_class()

    class Recording(worker_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.warned.connect(relayed.append)

    monkeypatch.setattr(finetune_widget, "_training_worker_class", lambda: Recording)
    finetune.preset_combo.setCurrentText("default")
    finetune.steps_spin.setValue(1)
    with warnings.catch_warnings(record=True) as caught:  # and should one reach the process's warnings
        warnings.simplefilter("always")
        finetune.start_button.click()
        wait_done(qtbot, finetune)
    assert finetune.last_saved is not None
    notes = [msg for _, msg in notifications if "Perceptual loss" in msg]
    assert len(notes) == 1, notifications
    assert "under 'VGG-19 weights'" in notes[0] and "perceptual_weights" not in notes[0]
    said_twice = [str(w[0]) for w in relayed if issubclass(w[1], TrainingNoticeWarning)]
    said_twice += [str(w.message) for w in caught if issubclass(w.category, TrainingNoticeWarning)]
    assert not said_twice
    assert load_model(finetune.last_saved).metadata["training"]["perceptual"] == "critic-features"

    torch.manual_seed(0)
    features = torchvision.models.vgg19(weights=None).features[: perceptual.CONV3_3_END]
    torch.save(features.state_dict(), tmp_path / "vgg.pth")
    finetune.vgg_edit.setText(str(tmp_path / "vgg.pth"))
    finetune.save_edit.setText(str(tmp_path / "models" / "with-vgg.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert load_model(finetune.last_saved).metadata["training"]["perceptual"] == "vgg19"
    finetune.vgg_edit.setText(str(tmp_path / "nothing.pth"))
    finetune.save_edit.setText(str(tmp_path / "models" / "missing-vgg.pt"))
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert finetune.status.text().startswith(f"VGG-19 weights file {str(tmp_path / 'nothing.pth')!r} does not exist")
    assert finetune.status.text().endswith("or leave the field empty.")


def test_a_typed_name_that_holds_an_earlier_run_is_replaced_only_when_the_user_agrees(
    setup, qtbot, tmp_path, monkeypatch
):
    """Nothing is lost: Start with a typed file name where an earlier run saved its model and checkpoint asks
    first (default No); No starts nothing and leaves both as they were, Yes replaces them. The save dialog's own
    "replace?" counts for the file alone, not for a checkpoint folder beside it."""
    from napari_deblurgan.training.checkpoint import checkpoint_path
    from napari_deblurgan.widgets import finetune_widget

    _viewer, finetune, _ = setup
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    saved = tmp_path / "models" / "mine.pt"
    checkpoint = finetune_widget.checkpoint_dir_for(saved)
    model_bytes, checkpoint_bytes = saved.read_bytes(), checkpoint_path(checkpoint).read_bytes()

    asked = []
    monkeypatch.setattr(finetune, "_confirm_replace", lambda path: asked.append(path) or False)
    finetune.start_button.click()
    assert asked == [saved] and finetune.worker is None and "Not started" in finetune.status.text()
    assert saved.read_bytes() == model_bytes and checkpoint_path(checkpoint).read_bytes() == checkpoint_bytes

    finetune._replace_confirmed = saved  # as if chosen in the save dialog: it did not ask about the checkpoint
    finetune.start_button.click()
    assert len(asked) == 2 and finetune.worker is None

    monkeypatch.setattr(finetune, "_confirm_replace", lambda path: asked.append(path) or True)
    finetune.steps_spin.setValue(3)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    assert len(asked) == 3 and finetune.last_saved == saved and saved.read_bytes() != model_bytes


def test_the_replace_question_names_the_file_and_the_checkpoint_and_defaults_to_no(setup, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_deblurgan.widgets import finetune_widget

    _viewer, finetune, _ = setup
    saved = tmp_path / "old.pt"
    saved.write_bytes(b"x")
    finetune_widget.checkpoint_dir_for(saved).mkdir()
    seen = []

    def question(parent, title, text, buttons, default):
        seen.append((text, default))
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", question)
    assert finetune._confirm_replace(saved) is False
    ((text, default),) = seen
    assert str(saved) in text and "old.checkpoint" in text and "Resume" in text
    assert default == QMessageBox.StandardButton.No


@pytest.mark.parametrize("chosen", ["old.pt", "old"])
def test_the_save_dialog_counts_as_asked_only_for_the_file_it_returned(setup, qtbot, tmp_path, monkeypatch, chosen):
    """The save dialog asked about replacing the file it returned: Start does not ask again ("old.pt"). A name
    chosen without .pt ("old") gets .pt added, and the dialog never asked about an existing "old.pt": Start
    asks (a model saved there without a checkpoint folder is not lost on a No)."""
    from qtpy.QtWidgets import QFileDialog

    _viewer, finetune, _ = setup
    finetune.steps_spin.setValue(2)
    (tmp_path / "old.pt").write_bytes(b"an earlier model")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / chosen), "*.pt"))
    finetune._browse_save()
    assert finetune.save_edit.text() == str(tmp_path / "old.pt")
    questions = []
    monkeypatch.setattr(finetune, "_confirm_replace", lambda path: questions.append(path) or False)
    finetune.start_button.click()
    if chosen == "old":
        assert questions == [tmp_path / "old.pt"] and finetune.worker is None
        assert (tmp_path / "old.pt").read_bytes() == b"an earlier model"
    else:
        wait_done(qtbot, finetune)
        assert questions == [] and finetune.last_saved == tmp_path / "old.pt"
        assert (tmp_path / "old.pt").read_bytes() != b"an earlier model"


def test_a_run_that_fails_after_some_steps_saves_and_lists_its_model_so_far(setup, qtbot, tmp_path, monkeypatch):
    """As the CLI does: a failure mid-run (data that cannot be read in step 4) keeps the model so far, saved where
    the run's model was to go and listed in the Deblur panel, and the status says both the error and where."""
    from napari_deblurgan import load_model
    from napari_deblurgan.data.pairs import BatchSource
    from napari_deblurgan.errors import InputError

    _, finetune, deblur = setup
    finetune.steps_spin.setValue(8)
    error = InputError("Plane 3 of 'blurred' contains NaN values (simulated).")
    raise_on_call(monkeypatch, BatchSource, "next_batch", 4, error)  # the content preset: one batch per step
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    saved = tmp_path / "models" / "mine.pt"
    status = finetune.status.text()
    assert "NaN values (simulated)" in status and f"model so far is saved to {saved}" in status
    assert finetune.last_saved == saved and saved.is_file()
    assert load_model(saved).metadata["training"]["steps_done"] == 3
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" in labels


def test_a_model_the_save_path_cannot_take_is_saved_elsewhere_and_said(setup, qtbot, tmp_path, monkeypatch):
    """The panel's final save is the CLI's (training.saving): where the chosen file cannot be written (a full
    disk), the model goes next to its checkpoints, and the status says where and why."""
    from napari_deblurgan.atomic_files import WriteFailed
    from napari_deblurgan.model_file import DeblurModel

    _, finetune, _ = setup
    finetune.steps_spin.setValue(2)
    refused = tmp_path / "models" / "mine.pt"
    real_save = DeblurModel.save

    def save(self, path, *args, **kwargs):
        if Path(path) == refused:
            raise WriteFailed(
                f"Cannot write {str(refused)!r}: no space left on device.", refused, "no space left on device"
            )
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(DeblurModel, "save", save)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    status = finetune.status.text()
    assert not refused.exists()
    assert finetune.last_saved is not None and finetune.last_saved.is_file()
    assert finetune.last_saved.name.startswith("mine-unsaved-")
    assert f"could not write {str(refused)!r}: no space left on device" in status
    assert str(finetune.last_saved) in status


def test_a_stop_before_the_first_step_saves_no_copy_of_the_starting_model(setup, qtbot, tmp_path):
    """Stop clicked while the run is being prepared: nothing was trained, so no file appears under the chosen
    name (it would pass for a finetuned model) and nothing is added to the Deblur panel's list."""
    _, finetune, deblur = setup
    finetune.steps_spin.setValue(100)
    finetune.start_button.click()
    finetune.stop_button.click()
    wait_done(qtbot, finetune)
    assert not (tmp_path / "models" / "mine.pt").exists()
    assert "nothing was trained" in finetune.status.text()
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" not in labels


def test_a_resumed_run_stopped_at_once_still_saves_its_checkpoints_model(setup, qtbot, tmp_path):
    """Unlike a fresh run, a resumed run holds trained weights before its first step (its checkpoint's): a stop
    before that step saves them."""
    from napari_deblurgan import load_model

    _, finetune, _ = setup
    finetune.steps_spin.setValue(2)
    finetune.start_button.click()
    wait_done(qtbot, finetune)
    saved = tmp_path / "models" / "mine.pt"
    saved.unlink()
    finetune.steps_spin.setValue(100)
    finetune.resume_button.click()
    finetune.stop_button.click()
    wait_done(qtbot, finetune)
    assert saved.is_file() and load_model(saved).metadata["training"]["steps_done"] == 2


def _failing_batches(monkeypatch, at_call: int, error: Exception) -> None:
    """The training's ``at_call``-th batch raises ``error`` (the content preset reads one batch per step)."""
    from napari_deblurgan.data.pairs import BatchSource

    raise_on_call(monkeypatch, BatchSource, "next_batch", at_call, error)


def _running_buttons(finetune) -> tuple[bool, bool]:
    return finetune.start_button.isEnabled(), finetune.stop_button.isEnabled()


def test_a_device_error_mid_run_is_a_failed_run_whose_model_so_far_is_saved_and_listed(
    setup, qtbot, tmp_path, monkeypatch, capfd
):
    """A RuntimeError (torch's errors are: a CUDA fault, out of memory) after some steps: superqt's generator
    worker took it for a deleted worker and emitted neither errored nor finished, so the panel stayed "running"
    for good. Now the model so far is saved and listed, and the status names the error (its first line) and the
    file; the traceback goes to stderr, for a bug report."""
    from napari_deblurgan import load_model

    _, finetune, deblur = setup
    finetune.steps_spin.setValue(8)
    finetune.val_fraction.setValue(0.0)  # no validation: the model so far is the latest whole step's
    _failing_batches(monkeypatch, 4, RuntimeError("CUDA error: simulated\nCUDA kernel errors might be reported..."))
    finetune.start_button.click()
    wait_done(qtbot, finetune, timeout=60_000)
    saved = tmp_path / "models" / "mine.pt"
    status = finetune.status.text()
    assert "Training failed (RuntimeError: CUDA error: simulated)" in status, status
    assert f"model so far is saved to {saved}" in status and "might be reported" not in status
    assert finetune.last_saved == saved and load_model(saved).metadata["training"]["steps_done"] == 3
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" in labels
    assert _running_buttons(finetune) == (True, False)
    err = capfd.readouterr().err
    assert "Traceback" in err and "CUDA error: simulated" in err


def test_a_device_error_before_the_first_step_ends_the_run_and_says_so(setup, qtbot, tmp_path, monkeypatch):
    """A RuntimeError before any step trained (nothing to save) reaches napari's error report, and the panel is
    ready again, its status saying that the run failed (it stayed "running", its buttons off, before)."""
    _, finetune, _ = setup
    finetune.steps_spin.setValue(8)
    _failing_batches(monkeypatch, 1, RuntimeError("CUDA error: simulated"))
    with qtbot.capture_exceptions() as raised:  # superqt re-raises a worker's error in the GUI thread: napari's report
        finetune.start_button.click()
        wait_done(qtbot, finetune, timeout=60_000)
    assert [str(exc) for _, exc, _ in raised] == ["CUDA error: simulated"]
    assert finetune.status.text() == "Training failed (RuntimeError: CUDA error: simulated); no model was saved."
    assert _running_buttons(finetune) == (True, False)
    assert not (tmp_path / "models" / "mine.pt").exists()


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("input", "Cannot read the pixels of 'blurred' (simulated)."),
        ("device", "Training failed (RuntimeError: CUDA error: simulated)."),
    ],
)
def test_a_failure_before_any_validation_scored_better_saves_no_copy_of_the_starting_model(
    setup, qtbot, tmp_path, monkeypatch, error, said
):
    """With validation on, the model so far is the best validated one, which stays the starting model's weights
    (step 0's score) until a later validation scores better: a failure before that saves nothing (under the
    chosen name it would pass for a finetuned model), lists nothing, and says why."""
    from napari_deblurgan.errors import InputError

    _, finetune, deblur = setup
    finetune.steps_spin.setValue(8)
    finetune.validate_every_spin.setValue(100)  # only the starting model is scored before the failure
    exc = InputError(said) if error == "input" else RuntimeError("CUDA error: simulated")
    _failing_batches(monkeypatch, 4, exc)
    finetune.start_button.click()
    wait_done(qtbot, finetune, timeout=60_000)
    status = finetune.status.text()
    assert status.startswith(said), status
    assert "No validation had scored better than the starting model yet, so no model was written." in status
    assert not (tmp_path / "models" / "mine.pt").exists() and finetune.last_saved is None
    labels = [deblur.model_combo.itemText(i) for i in range(deblur.model_combo.count())]
    assert "finetuned: mine" not in labels
    assert _running_buttons(finetune) == (True, False)


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed mid-run"])
def test_a_save_folder_that_cannot_be_made_falls_back_instead_of_losing_the_model(tmp_path, monkeypatch, pair, fails):
    """The save path's folder cannot be made any more (a file where it was, a drive unmounted during the run):
    the model goes where save_trained_model falls back to (the checkpoint folder here), not nowhere because the
    panel's own mkdir raised first."""
    from _helpers import TINY_RUN_ARGS, tiny_unet
    from napari_deblurgan.widgets.finetune_widget import _RunControl, _training_job

    blurred, sharp = pair
    (tmp_path / "usb").write_text("a file where the folder was")
    save_to = tmp_path / "usb" / "models" / "cells.pt"
    checkpoint_dir = tmp_path / "cells.checkpoint"
    if fails:
        _failing_batches(monkeypatch, 3, RuntimeError("CUDA error: simulated"))
    kwargs = {"blurred": blurred, "sharp": sharp, "model": tiny_unet(), "checkpoint_dir": checkpoint_dir}
    job = _training_job({**kwargs, **TINY_RUN_ARGS, "steps": 4, "validation": 0}, save_to, _RunControl())
    try:
        while True:
            next(job)
    except StopIteration as stop:
        kind, value = stop.value
    assert kind == ("failed" if fails else "ok"), value
    path = value[1] if fails else value[0]
    assert Path(path).parent == checkpoint_dir and Path(path).is_file()
    if not fails:
        assert "its folder does not exist" in value[3]


def test_the_panel_scrolls_instead_of_being_taller_than_a_laptop_screen(setup, qtbot):
    """The panel could not be shorter than ~1170 px: on a 1080 px screen napari's window grew past the screen's
    bottom, with Start, the status line and the plot below it. Its controls are in a scroll area now."""
    viewer, finetune, _ = setup
    assert finetune.minimumSizeHint().height() < 500
    inner = finetune.scroll_area.widget()
    assert inner.minimumSizeHint().height() > 800  # what the scroll area holds: everything, still there
    for control in (finetune.start_button, finetune.status, finetune.plot, finetune.steps_spin):
        assert inner.isAncestorOf(control)
    # no sideways scrolling at the panel's own minimum width, with the vertical scroll bar showing
    viewer.window._qt_window.show()  # laid out as on screen
    finetune.setFixedSize(finetune.minimumSizeHint().width(), 400)
    qtbot.wait(100)
    assert finetune.isVisible()
    assert finetune.scroll_area.verticalScrollBar().isVisible()
    assert not finetune.scroll_area.horizontalScrollBar().isVisible()


def test_the_wheel_scrolls_the_panel_and_changes_no_setting_it_passes_over(setup, qtbot):
    """Once the panel scrolled, a spin box or list passing under the cursor took the wheel: the validation
    fraction dropped to 0 while the user meant to scroll. A field takes the wheel only once it has the focus."""
    from qtpy.QtCore import QPoint, QPointF, Qt
    from qtpy.QtGui import QWheelEvent
    from qtpy.QtWidgets import QApplication

    viewer, finetune, _ = setup
    viewer.window._qt_window.show()
    finetune.setFixedSize(finetune.minimumSizeHint().width(), 400)
    qtbot.wait(100)

    def wheel(field) -> bool:
        event = QWheelEvent(
            QPointF(5, 5),
            QPointF(field.mapToGlobal(QPoint(5, 5))),
            QPoint(0, 0),
            QPoint(0, -120),  # one notch down
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        )
        QApplication.sendEvent(field, event)
        return event.isAccepted()

    from qtpy.QtWidgets import QComboBox

    late = QComboBox()  # a field added after the panel was shown is quiet too
    late.addItems(["a", "b"])
    finetune.steps_spin.parentWidget().layout().addWidget(late)
    qtbot.wait(50)
    for field in (finetune.val_fraction, finetune.steps_spin, finetune.preset_combo, late):
        value = field.currentText() if hasattr(field, "currentText") else field.value()
        assert field.focusPolicy() == Qt.FocusPolicy.StrongFocus  # the wheel does not give it the focus
        assert not wheel(field)  # passed on, to the scroll area
        assert (field.currentText() if hasattr(field, "currentText") else field.value()) == value
    window = viewer.window._qt_window
    window.activateWindow()
    QApplication.setActiveWindow(window)
    finetune.steps_spin.setFocus()
    qtbot.waitUntil(finetune.steps_spin.hasFocus)
    steps = finetune.steps_spin.value()
    wheel(finetune.steps_spin)
    assert finetune.steps_spin.value() != steps  # a field the user clicked into takes the wheel, as before


def test_a_resume_with_nothing_to_resume_says_so_on_the_status_line(setup, notifications):
    _viewer, finetune, _ = setup
    finetune.status.setText("Run finished at step 2; saved to mine.pt.")
    finetune.resume()
    assert finetune.worker is None
    assert finetune.status.text().startswith("There is no checkpoint of an earlier run to resume from")

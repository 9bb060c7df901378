"""The Deblur dock widget and the Layers > Filter menu item, driven end to end in a real napari viewer.

Tiny untrained models on CPU and 64 px images keep this fast; what is checked is the plumbing (layers,
geometry, dtype, cancel, errors), not image quality.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer

from napari.utils.notifications import NotificationSeverity  # noqa: E402


@pytest.fixture
def viewer_and_widget(make_napari_viewer, tiny_model_file):
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget

    viewer = make_napari_viewer(strict_qt="raise")
    widget = DeblurWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Deblur")
    widget.model_combo.add_file(str(tiny_model_file))
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    return viewer, widget


def wait_done(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_deblur_adds_layer_with_same_geometry(viewer_and_widget, small_image, qtbot):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        small_image,
        name="cells",
        scale=(0.5, 0.25),
        translate=(10.0, -3.0),
        axis_labels=("y", "x"),
        colormap="magma",
        contrast_limits=(500, 3500),
    )
    before = layer.data.copy()
    assert widget.layer_combo.value() is layer
    assert widget.axes_edit.text() == "YX"

    widget.run_button.click()
    wait_done(qtbot, widget)

    out = viewer.layers["cells deblurred"]
    assert out.data.shape == small_image.shape
    assert out.data.dtype == small_image.dtype
    assert tuple(out.scale) == (0.5, 0.25)
    assert tuple(out.translate) == (10.0, -3.0)
    assert tuple(out.axis_labels) == ("y", "x")
    assert out.colormap.name == "magma"
    assert tuple(out.contrast_limits) == (500, 3500)
    assert widget.progress.value() == widget.progress.maximum() > 0
    np.testing.assert_array_equal(layer.data, before)  # input untouched
    assert layer.data is not out.data


def test_border_context_box_reaches_deblur(viewer_and_widget, small_image, tiny_model_file, qtbot):
    from napari_deblurgan import deblur, load_model

    viewer, widget = viewer_and_widget
    viewer.add_image(small_image, name="cells")
    assert widget.context_spin.text() == "model's"
    widget.context_spin.setValue(0)
    widget.run_button.click()
    wait_done(qtbot, widget)
    expected = deblur(small_image, load_model(tiny_model_file), device="cpu", context_padding=0)
    np.testing.assert_array_equal(viewer.layers["cells deblurred"].data, expected)
    assert not np.array_equal(expected, deblur(small_image, load_model(tiny_model_file), device="cpu"))


def test_ensemble_box_reaches_deblur(viewer_and_widget, small_image, tiny_model_file, qtbot):
    from napari_deblurgan import deblur, load_model

    viewer, widget = viewer_and_widget
    viewer.add_image(small_image, name="cells")
    assert not widget.ensemble_check.isChecked()  # off by default: 8x slower
    widget.ensemble_check.setChecked(True)
    widget.run_button.click()
    wait_done(qtbot, widget)
    expected = deblur(small_image, load_model(tiny_model_file), device="cpu", self_ensemble=True)
    np.testing.assert_array_equal(viewer.layers["cells deblurred"].data, expected)
    assert not np.array_equal(expected, deblur(small_image, load_model(tiny_model_file), device="cpu"))


def test_local_intensity_scaling_reaches_deblur(viewer_and_widget, tiny_model_file, qtbot):
    from napari_deblurgan import deblur, load_model

    viewer, widget = viewer_and_widget
    image = (np.random.default_rng(2).random((300, 300)) * 2000).astype(np.uint16)  # several 128 px blocks
    image[:20, :20] = 60000
    viewer.add_image(image, name="cells")
    assert widget.normalize_combo.currentData() == "plane"  # the default, as the models were evaluated
    widget.normalize_combo.setCurrentIndex(widget.normalize_combo.findData("local"))
    widget.run_button.click()
    wait_done(qtbot, widget)
    expected = deblur(image, load_model(tiny_model_file), device="cpu", normalize="local")
    np.testing.assert_array_equal(viewer.layers["cells deblurred"].data, expected)
    assert not np.array_equal(expected, deblur(image, load_model(tiny_model_file), device="cpu"))


def test_axes_prefill_from_layer(viewer_and_widget):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    widget.layer_combo.set_value(viewer.layers["photo"])
    assert widget.axes_edit.text() == "YXS"
    viewer.add_image(np.zeros((3, 64, 64), np.uint16), name="stack")
    widget.layer_combo.set_value(viewer.layers["stack"])
    assert widget.axes_edit.text() == "ZYX"
    viewer.add_image(np.zeros((2, 3, 64, 64), np.uint16), name="channels", axis_labels=("t", "c", "y", "x"))
    widget.layer_combo.set_value(viewer.layers["channels"])
    assert widget.axes_edit.text() == "TCYX"


def test_rgb_and_stack_outputs(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    viewer.add_image(rgb, name="photo", rgb=True)
    widget.run_button.click()
    wait_done(qtbot, widget)
    out = viewer.layers["photo deblurred"]
    assert out.rgb and out.data.shape == rgb.shape and out.data.dtype == np.uint8

    stack = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    viewer.add_image(stack, name="zstack", scale=(2.0, 0.1, 0.1))
    widget.layer_combo.set_value(viewer.layers["zstack"])
    widget.run_button.click()
    wait_done(qtbot, widget)
    out = viewer.layers["zstack deblurred"]
    assert out.data.shape == stack.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == (2.0, 0.1, 0.1)


def test_bad_axes_gives_notification_not_traceback(viewer_and_widget, small_image, qtbot, notifications):
    viewer, widget = viewer_and_widget
    viewer.add_image(small_image, name="cells")
    widget.axes_edit.setText("ZYX")  # 3 letters for a 2D image
    widget.run_button.click()
    wait_done(qtbot, widget)
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("axes" in msg and "dimensions" in msg for msg in errors), notifications
    assert not any("Traceback" in msg for msg in errors)
    assert [lay.name for lay in viewer.layers] == ["cells"]
    assert widget.run_button.isEnabled()


def test_errors_are_said_in_the_panels_words_and_the_api_still_says_what_it_rewords(
    viewer_and_widget, qtbot, notifications
):
    """The Deblur panel's errors name its controls and give advice a panel user can follow (no `image.astype`, no
    'leave tile_size unset'); every phrase it rewords must still be in the API's real messages."""
    import re

    from napari_deblurgan import InputError, create_model, deblur
    from napari_deblurgan.widgets.deblur_widget import PANEL_LABELS, PANEL_PHRASES, in_panel_words
    from napari_deblurgan.widgets.layer_menu import MENU_PHRASES, in_menu_words

    model = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    rgb_model = create_model("unet_lite", 3, seed=0, width=4, depth=2, n_blocks=1)
    flat = np.zeros((20, 20), np.float32)
    said = []
    for image, kwargs in [
        (np.zeros((20, 20), bool), {}),
        (np.full((20, 20), np.nan, np.float32), {}),
        (np.zeros((2, 3, 4, 5, 20, 20), np.float32), {}),
        (np.zeros((5, 5), np.float32), {}),
        (flat, {"tile_size": 16}),
        (flat, {"context_padding": 100_000}),
        (np.zeros((3, 20, 20), np.float32), {"model": rgb_model, "axes": "ZYX"}),
    ]:
        with pytest.raises(InputError) as info:
            deblur(image, **{"model": model, **kwargs})
        said.append(str(info.value))
    # and its warnings (shown by the panel as notifications): tiles that repeat work, an overlap below the seamless
    # one, an RGBA image whose alpha looks like a 4th channel
    rgba = (np.random.default_rng(0).random((64, 64, 4)) * 255).astype(np.uint8)
    for image, kwargs in [
        (np.zeros((100, 100), np.float32), {"tile_size": 80}),
        (np.zeros((100, 100), np.float32), {"overlap": 8, "tile_size": 80}),  # several tiles: seams possible
        (rgba, {"model": rgb_model}),
    ]:
        with pytest.warns(UserWarning) as record:
            deblur(image, **{"model": model, "device": "cpu", **kwargs})
        said += [str(w.message) for w in record]
    for pattern, _, _ in PANEL_PHRASES + MENU_PHRASES:
        assert any(re.search(pattern, text) for text in said), pattern
    for text in said:
        panel = in_panel_words(text)
        assert not re.search(r"image\.astype|np\.nan_to_num\(image|axes=|argument|unset", panel), panel
        for keyword in PANEL_LABELS:
            assert not re.search(rf"(?<![\w-]){keyword}=", panel), (keyword, panel)
            if "_" in keyword:
                assert not re.search(rf"(?<![\w-]){keyword}\b", panel), (keyword, panel)
        # the layer menu's command has no axes field: its advice sends the user to the Deblur panel's
        menu = in_menu_words(text)
        assert not re.search(r"image\.astype|np\.nan_to_num\(image|axes=|argument|the axes field", menu), menu
        if "axes" in text and "axes field" in panel:
            assert "Plugins > DeblurGAN > Deblur" in menu, menu

    # and in the panel itself: a bool layer
    viewer, widget = viewer_and_widget
    viewer.add_image(np.zeros((32, 32), bool), name="mask")
    widget.run_button.click()
    wait_done(qtbot, widget)
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("convert the layer to an integer or float type first" in msg for msg in errors), errors


def warnings_shown(notifications) -> list[str]:
    return [msg for sev, msg in notifications if sev == NotificationSeverity.WARNING]


def test_the_nan_advice_names_the_layer_that_was_run_at_full_resolution(
    viewer_and_widget, tiny_model_file, qtbot, notifications, monkeypatch
):
    """The NaN advice said ``viewer.layers.selection.active.data``: that copied whichever layer was selected (not
    the panel's), and the coarsest level of a pyramid. The layer menu said the API's ``np.nan_to_num(image``."""
    viewer, widget = viewer_and_widget
    full = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    full[1, 5, 5] = np.nan
    viewer.add_image([full, full[:, ::2, ::2]], name="pyr", multiscale=True)
    viewer.add_image(np.zeros((8, 8), np.float32), name="other")  # selected last
    widget.layer_combo.set_value(viewer.layers["pyr"])
    widget.run_button.click()
    wait_done(qtbot, widget)
    (error,) = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert "np.nan_to_num(viewer.layers['pyr'].data[0], nan=0.0)" in error and "copy of 'pyr'" in error, error
    assert "selection" not in error

    from napari_deblurgan.widgets import layer_menu

    notifications.clear()
    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    layer = viewer.add_image(full, name="stack")
    viewer.layers.selection = {layer}
    assert len(layer_menu.deblur_selected_layers(viewer)) == 1
    qtbot.waitUntil(lambda: any(sev == NotificationSeverity.ERROR for sev, _ in notifications), timeout=30_000)
    qtbot.wait(50)
    (error,) = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert error.startswith("Deblur of 'stack' failed:") and "viewer.layers['stack'].data, nan=0.0" in error, error


def test_deblurs_warnings_are_notifications_in_the_panels_words(
    viewer_and_widget, make_tiny_model, tmp_path, qtbot, notifications
):
    """A warning of deblur() in the panel's job reaches the user once, as a warning notification that names the
    panel's controls (superqt's worker sent it to a signal nobody listened to: it reached neither napari nor the
    terminal, and it named keywords: tile_size, overlap unset, axes='YXC')."""
    import re

    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).random((100, 100)).astype(np.float32), name="cells")
    widget.tile_spin.setValue(80)  # the smallest this model can use is 76: every pixel is computed many times
    widget.run_button.click()
    wait_done(qtbot, widget)
    qtbot.wait(50)
    assert "cells deblurred" in viewer.layers
    (shown,) = warnings_shown(notifications)
    assert shown.startswith("Deblur: tile size 80 px with an overlap of 72 px computes every pixel about"), shown
    assert shown.endswith("tile size >= 144 keeps it below 4x, or set tile size to auto"), shown

    notifications.clear()
    widget.overlap_spin.setValue(8)  # below the model's seamless 72 px
    widget.tile_spin.setValue(72)  # several tiles a plane: one tile alone has no seams, and no warning
    widget.run_button.click()
    wait_done(qtbot, widget)
    qtbot.wait(50)
    (shown,) = warnings_shown(notifications)
    assert shown.startswith("Deblur: tile overlap 8 px is below this model's seamless overlap of 72 px"), shown
    assert shown.endswith("set tile overlap to auto for seamless tiles"), shown

    # an RGBA image with the axes field left empty: its alpha holds an image
    notifications.clear()
    widget.tile_spin.setValue(0)
    widget.overlap_spin.setValue(-1)
    widget.model_combo.add_file(str(make_tiny_model(channels=3).save(tmp_path / "rgb.pt")))
    rgba = (np.random.default_rng(1).random((64, 64, 4)) * 255).astype(np.uint8)
    viewer.add_image(rgba, name="photo", rgb=True)
    widget.layer_combo.set_value(viewer.layers["photo"])
    widget.axes_edit.setText("")
    widget.run_button.click()
    wait_done(qtbot, widget)
    qtbot.wait(50)
    assert "photo deblurred" in viewer.layers
    (shown,) = warnings_shown(notifications)
    assert "its 4th channel is kept as opacity" in shown, shown
    assert "write YXC in the axes field" in shown and "write YXS in the axes field" in shown, shown
    for text in warnings_shown(notifications):
        assert not re.search(r"(?<![\w-])\w+=|tile_size|unset", text), text
    assert not [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]


def test_two_jobs_at_once_each_show_their_own_warnings_and_leave_the_hook_as_it_was(qtbot, notifications):
    """superqt swaps the process-wide ``warnings.showwarning`` inside ``catch_warnings()`` in each worker thread:
    with two jobs at once, one job's warning came out with the other panel's prefix, the other's reached only
    the terminal, and the last job to end left its hook behind, so that later main-thread warnings were shown
    as a panel's."""
    import threading
    import warnings

    from napari_deblurgan.widgets._common import create_cancellable_worker

    original = warnings.showwarning
    filters = list(warnings.filters)
    a_started, b_started, a_ended = threading.Event(), threading.Event(), threading.Event()

    def job_a():
        a_started.set()
        assert b_started.wait(10)
        warnings.warn("from A", UserWarning, stacklevel=1)

    def job_b():
        b_started.set()
        assert a_ended.wait(10)  # A's job is over (its worker thread has left the job): B warns after it
        warnings.warn("from B", UserWarning, stacklevel=1)

    worker_a = create_cancellable_worker(job_a, _cancel=threading.Event(), _warning_prefix="Deblur: ")
    worker_b = create_cancellable_worker(job_b, _cancel=threading.Event(), _warning_prefix="Compare: ")
    worker_a.finished.connect(a_ended.set)
    with qtbot.waitSignal(worker_b.finished, timeout=20_000):
        worker_a.start()
        assert a_started.wait(10)
        worker_b.start()
    qtbot.wait(50)
    assert sorted(warnings_shown(notifications)) == ["Compare: from B", "Deblur: from A"], notifications
    assert warnings.showwarning is original
    assert warnings.filters == filters
    notifications.clear()
    with pytest.warns(UserWarning, match="from the main thread"):
        warnings.warn("from the main thread", UserWarning, stacklevel=1)
    qtbot.wait(50)
    assert not warnings_shown(notifications)


def test_a_hook_put_back_by_another_threads_catch_warnings_never_calls_itself(monkeypatch):
    """A thread inside ``warnings.catch_warnings()`` when the last job ends puts the routing hook back when it
    leaves; the next job then took that hook as the one to pass other threads' warnings on to, and every
    main-thread ``warnings.warn`` raised RecursionError."""
    import threading
    import warnings

    from napari_deblurgan.widgets._common import _WarningRoutes

    routes = _WarningRoutes()
    printed = []  # what Python's own hook would print, where warnings from no job go
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", lambda msg: printed.append(str(msg.message)))
    with warnings.catch_warnings():  # this test's changes to the warnings module end with it
        first = routes.route(lambda *w: None)
        first.__enter__()
        other_thread = warnings.catch_warnings()  # in the real case, another thread's; the order is what matters
        other_thread.__enter__()
        first.__exit__(None, None, None)
        other_thread.__exit__(None, None, None)
        assert warnings.showwarning == routes.show  # put back, with no job running
        job_running, main_warned = threading.Event(), threading.Event()
        seen = []

        def job():
            with routes.route(lambda *w: seen.append(str(w[0]))):
                job_running.set()
                assert main_warned.wait(10)
                warnings.warn("from the job", UserWarning, stacklevel=1)

        thread = threading.Thread(target=job)
        thread.start()
        assert job_running.wait(10)
        warnings.simplefilter("always")
        assert warnings.showwarning == routes.show
        warnings.warn("from the main thread", UserWarning, stacklevel=1)  # RecursionError before
        main_warned.set()
        thread.join(10)
        assert seen == ["from the job"] and printed == ["from the main thread"]


def test_warnings_of_a_thread_the_job_started_reach_its_panel(qtbot, notifications):
    """A job that computes in threads of its own (dask's pool) warns from them: superqt's process-wide hook sent
    those warnings to the job, and the routing by thread must too (while it is the only job)."""
    import threading
    import warnings

    from napari_deblurgan.widgets._common import create_cancellable_worker

    def job():
        helper = threading.Thread(target=lambda: warnings.warn("from a helper thread", UserWarning, stacklevel=1))
        helper.start()
        helper.join(10)

    worker = create_cancellable_worker(job, _cancel=threading.Event(), _warning_prefix="Compare: ")
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        worker.start()
    qtbot.wait(50)
    assert warnings_shown(notifications) == ["Compare: from a helper thread"], notifications


def test_the_layer_menus_warnings_are_notifications(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch, notifications
):
    """The layer menu's jobs show deblur()'s warnings too, once, naming the layer."""
    import napari_deblurgan
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    deblur = napari_deblurgan.deblur
    monkeypatch.setattr(napari_deblurgan, "deblur", lambda *args, **kwargs: deblur(*args, tile_size=80, **kwargs))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image(np.random.default_rng(0).random((100, 100)).astype(np.float32), name="cells")
    viewer.layers.selection = {layer}
    assert len(layer_menu.deblur_selected_layers(viewer)) == 1
    qtbot.waitUntil(lambda: "cells deblurred" in viewer.layers, timeout=60_000)
    qtbot.wait(50)
    (shown,) = warnings_shown(notifications)
    assert shown.startswith("Deblur of 'cells': tile size 80 px with an overlap of 72 px"), shown


def test_bad_model_file_gives_notification(make_napari_viewer, tmp_path, small_image, qtbot, notifications):
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget

    viewer = make_napari_viewer(strict_qt="raise")
    widget = DeblurWidget(viewer)
    viewer.window.add_dock_widget(widget)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    widget.model_combo.add_file(str(broken))
    viewer.add_image(small_image, name="cells")
    widget.run_button.click()
    wait_done(qtbot, widget)
    assert any(sev == NotificationSeverity.ERROR and "broken.pt" in msg for sev, msg in notifications)
    assert len(viewer.layers) == 1


def start_long_job(viewer, widget):
    """Start deblurring an 8 x 256 x 256 stack in 128 px tiles (many tile batches: a job that is still running
    when the test acts on it) and return the layer and the worker."""
    image = (np.random.default_rng(0).random((8, 256, 256)) * 4000).astype(np.uint16)
    layer = viewer.add_image(image, name="big")
    widget.tile_spin.setValue(128)
    widget.run_button.click()
    assert widget.worker is not None
    return layer, widget.worker


def hold_the_second_tile_batch(monkeypatch, what: str):
    """Count the tile batches the network runs and hold the second one in the worker until the test has done
    ``what`` (Cancel, closing the panel): returns ``(batches, in_second, done)``, ``batches`` holding per batch
    whether ``done`` was set before it began, ``in_second`` set while batch 2 waits for ``done``. Counted, not
    timed: the batch running when the test acts is the last one that may run."""
    import threading

    from napari_deblurgan.inference import deblur as deblur_module

    generate = deblur_module._PlaneRunner._generate
    batches: list[bool] = []
    in_second, done = threading.Event(), threading.Event()

    def counted(runner, gen, x, cancel):
        batches.append(done.is_set())
        if len(batches) == 2:
            in_second.set()
            assert done.wait(30), f"{what} never happened"
        return generate(runner, gen, x, cancel)

    monkeypatch.setattr(deblur_module._PlaneRunner, "_generate", counted)
    return batches, in_second, done


def test_cancel_stops_after_the_tile_batch_in_progress_and_adds_nothing(viewer_and_widget, qtbot, monkeypatch):
    """Cancel takes effect within one tile batch: the batch running when Cancel is clicked is the last one
    computed. Counted, not timed: the second batch waits in the worker until Cancel was clicked, then goes on."""
    batches, in_second, clicked = hold_the_second_tile_batch(monkeypatch, "clicking Cancel")
    viewer, widget = viewer_and_widget
    layer, _ = start_long_job(viewer, widget)
    before = layer.data.copy()
    qtbot.waitUntil(in_second.is_set, timeout=60_000)
    widget.cancel_button.click()
    clicked.set()
    wait_done(qtbot, widget)
    assert batches == [False, False], f"{batches.count(True)} tile batches were run after Cancel"
    assert widget.progress.value() == 2 < widget.progress.maximum()  # stopped part-way, after batch 2
    assert [lay.name for lay in viewer.layers] == ["big"]
    np.testing.assert_array_equal(layer.data, before)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_napari_quitting_cancels_the_job_instead_of_waiting_for_it(viewer_and_widget, qtbot):
    """napari's quit calls quit() on every worker and waits for it (WorkerBase.await_workers); closing the
    window never reaches the panel's closeEvent, so a plain worker ran the whole stack while napari waited."""
    viewer, widget = viewer_and_widget
    start_long_job(viewer, widget)
    qtbot.waitUntil(lambda: widget.progress.value() > 0 or widget.worker is None, timeout=60_000)
    worker = widget.worker
    assert worker is not None, "finished before it could be cancelled; make the image bigger"
    returned: list = []
    worker.returned.connect(returned.append)
    worker.quit()  # what napari's quit does to it
    assert widget._cancel.is_set()
    wait_done(qtbot, widget, timeout=5_000)
    assert widget.progress.value() < widget.progress.maximum()  # stopped part-way, not run to the end
    assert [lay.name for lay in viewer.layers] == ["big"]


def test_napari_quitting_cancels_a_layer_menu_job(make_napari_viewer, tiny_model_file, qtbot, monkeypatch):
    from napari_deblurgan.widgets import layer_menu

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image((np.random.default_rng(0).random((64, 128, 128)) * 4000).astype(np.uint16), name="big")
    viewer.layers.selection = {layer}
    import napari_deblurgan

    deblur = napari_deblurgan.deblur

    def counting_deblur(*args, **kwargs):  # counts the planes that reach the progress hook
        return deblur(*args, progress=lambda done, total: calls.append((done, total)), **kwargs)

    monkeypatch.setattr(napari_deblurgan, "deblur", counting_deblur)
    (worker,) = layer_menu.deblur_selected_layers(viewer)
    qtbot.waitUntil(lambda: bool(calls), timeout=60_000)
    worker.quit()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    qtbot.wait(50)
    done, total = calls[-1]
    assert done < total  # stopped part-way, not run to the end
    assert [lay.name for lay in viewer.layers] == ["big"]


def test_run_without_an_image_layer_says_what_to_do(viewer_and_widget, notifications):
    viewer, widget = viewer_and_widget
    assert len(viewer.layers) == 0
    widget.run_button.click()
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("Choose an image layer" in msg for msg in errors), notifications
    assert widget.worker is None and widget.run_button.isEnabled()


def test_a_second_run_while_one_is_running_is_refused(viewer_and_widget, qtbot, notifications):
    viewer, widget = viewer_and_widget
    _, worker = start_long_job(viewer, widget)
    widget.run()  # what a second click would do if the button were not disabled
    assert widget.worker is worker  # the running job is kept, no second one started
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("already running" in msg for msg in errors), notifications
    widget.cancel_button.click()
    wait_done(qtbot, widget, timeout=10_000)
    assert [lay.name for lay in viewer.layers] == ["big"]


def test_closing_the_panel_cancels_its_job(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    _, worker = start_long_job(viewer, widget)
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    widget.close()  # closeEvent: no thread may outlive the panel
    qtbot.waitUntil(lambda: bool(ended), timeout=5_000)
    qtbot.wait(50)
    assert [lay.name for lay in viewer.layers] == ["big"]


def test_closing_the_panel_stops_its_job_after_the_tile_batch_in_progress(viewer_and_widget, qtbot, monkeypatch):
    """Closing cancels as the Cancel button does: no tile batch begins after the close (counted, not timed:
    a job that merely ran to its end unseen would pass a test that only waits for it to finish)."""
    batches, in_second, closed = hold_the_second_tile_batch(monkeypatch, "closing the panel")
    viewer, widget = viewer_and_widget
    layer, worker = start_long_job(viewer, widget)
    before = layer.data.copy()
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(in_second.is_set, timeout=60_000)
    widget.close()
    closed.set()
    qtbot.waitUntil(lambda: bool(ended), timeout=60_000)
    qtbot.wait(50)
    assert batches == [False, False], f"{batches.count(True)} tile batches were run after the close"
    assert [lay.name for lay in viewer.layers] == ["big"]
    np.testing.assert_array_equal(layer.data, before)


def test_dask_layer_stays_lazy(viewer_and_widget, qtbot):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_and_widget
    data = da.from_array(np.random.default_rng(0).random((2, 64, 64)).astype(np.float32), chunks=(1, 64, 64))
    viewer.add_image(data, name="lazy", contrast_limits=(0, 1))
    widget.run_button.click()
    wait_done(qtbot, widget)
    out = viewer.layers["lazy deblurred"]
    assert isinstance(out.data, da.Array)
    assert out.data.shape == data.shape and out.data.dtype == np.float32
    assert np.isfinite(np.asarray(out.data[0])).all()


def test_a_pyramid_layer_is_deblurred_at_full_resolution(viewer_and_widget, tiny_model_file, qtbot):
    """np.asarray of napari's multiscale data is the coarsest level: the widget must take level 0."""
    viewer, widget = viewer_and_widget
    full = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    pyramid = [full, full[::2, ::2].copy(), full[::4, ::4].copy()]
    layer = viewer.add_image(pyramid, name="pyramid", multiscale=True, scale=(0.5, 0.5), contrast_limits=(0, 1))
    assert widget.layer_combo.value() is layer and widget.axes_edit.text() == "YX"
    widget.run_button.click()
    wait_done(qtbot, widget)
    out = viewer.layers["pyramid deblurred"]
    assert out.data.shape == full.shape and tuple(out.scale) == (0.5, 0.5)
    from napari_deblurgan import deblur

    np.testing.assert_array_equal(np.asarray(out.data), deblur(full, str(tiny_model_file), device="cpu"))


def test_layer_menu_deblurs_selected_layer(make_napari_viewer, tiny_model_file, small_image, qtbot, monkeypatch):
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image(small_image, name="cells", scale=(2.0, 2.0))
    viewer.layers.selection = {layer}
    workers = layer_menu.deblur_selected_layers(viewer)
    assert len(workers) == 1
    qtbot.waitUntil(lambda: "cells deblurred" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: not workers[0].is_running, timeout=5_000)
    out = viewer.layers["cells deblurred"]
    assert out.data.shape == small_image.shape and out.data.dtype == small_image.dtype
    assert tuple(out.scale) == (2.0, 2.0)


def test_layer_menu_deblurs_several_layers_one_after_the_other(
    make_napari_viewer, tiny_model_file, small_image, qtbot, monkeypatch
):
    """Each job uses every core already: several at once only competed for them (and for memory)."""
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    selected = [viewer.add_image(small_image, name=name) for name in ("a", "b", "c")]
    viewer.layers.selection = set(selected)
    log: list[tuple[str, int]] = []
    workers = layer_menu.deblur_selected_layers(viewer)
    for i, worker in enumerate(workers):
        worker.started.connect(lambda i=i: log.append(("started", i)))
        worker.finished.connect(lambda i=i: log.append(("finished", i)))
    qtbot.waitUntil(lambda: ("finished", 2) in log, timeout=60_000)
    qtbot.wait(50)
    log = [entry for entry in log if entry != ("started", 0)]  # (it may start before its signal is connected)
    expected = [("finished", 0), ("started", 1), ("finished", 1), ("started", 2), ("finished", 2)]
    assert log == expected, log  # never two at once
    assert {f"{name} deblurred" for name in "abc"} <= {layer.name for layer in viewer.layers}


def test_napari_quitting_during_the_first_layer_menu_job_starts_no_other(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    big = (np.random.default_rng(0).random((64, 128, 128)) * 4000).astype(np.uint16)
    viewer.layers.selection = {viewer.add_image(big, name="one"), viewer.add_image(big, name="two")}
    first, second = layer_menu.deblur_selected_layers(viewer)
    qtbot.waitUntil(lambda: first.is_running, timeout=10_000)
    first.quit()  # what napari's quit does to the running worker
    qtbot.waitUntil(lambda: not first.is_running, timeout=10_000)
    qtbot.wait(200)
    assert not second.is_running and not any(layer.name.endswith("deblurred") for layer in viewer.layers)


def test_layer_menu_without_an_image_layer_says_what_to_select(make_napari_viewer, small_image, notifications):
    from napari_deblurgan.widgets import layer_menu

    viewer = make_napari_viewer(strict_qt="raise")
    viewer.add_image(small_image, name="cells")
    points = viewer.add_points([[1.0, 1.0]], name="spots")
    viewer.layers.selection = {points}  # a selection, but no image in it
    assert layer_menu.deblur_selected_layers(viewer) == []
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("Select an image layer" in msg for msg in errors), notifications
    assert [lay.name for lay in viewer.layers] == ["cells", "spots"]


def test_layer_menu_reports_a_model_that_cannot_load(
    make_napari_viewer, tmp_path, small_image, qtbot, monkeypatch, notifications
):
    from napari_deblurgan.widgets import layer_menu

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    monkeypatch.setattr(layer_menu, "MODEL", str(broken))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image(small_image, name="cells")
    viewer.layers.selection = {layer}
    workers = layer_menu.deblur_selected_layers(viewer)
    assert len(workers) == 1
    qtbot.waitUntil(lambda: any("broken.pt" in msg for _, msg in notifications), timeout=30_000)
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("Deblur of 'cells' failed" in msg and "broken.pt" in msg for msg in errors), notifications
    assert not any("Traceback" in msg for msg in errors)
    assert [lay.name for lay in viewer.layers] == ["cells"]  # nothing added, the input untouched


def test_layer_menu_is_registered(make_napari_viewer):
    """The manifest's menu item reaches napari's Layers > Filter menu (app-model registry)."""
    from napari._app_model import get_app_model

    make_napari_viewer()
    items = get_app_model().menus.get_menu("napari/layers/filter")
    titles = [getattr(item, "command", None) and item.command.title for item in items]
    assert any(t and t.startswith("Deblur (default model)") for t in titles), titles


def test_model_picker_offers_every_shipped_model(viewer_and_widget):
    """Each model in the shipped registry is offered by name, the default first (no torch needed to list)."""
    from napari_deblurgan.model_file import list_named_models

    _, widget = viewer_and_widget
    combo = widget.model_combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    sources = [getattr(combo.itemData(i), "source", None) for i in range(combo.count())]
    assert labels[0] == "default (shipped)"
    for name in list_named_models():
        assert sources.count(name) == 1, (name, sources)  # offered, and once (not 'default' twice)
    assert "shipped: fast" in labels


def test_the_dock_close_button_cancels_the_job_too(viewer_and_widget, qtbot):
    """napari's close button removes the dock (setParent(None)) without closing the panel."""
    viewer, widget = viewer_and_widget
    _, worker = start_long_job(viewer, widget)
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: bool(ended), timeout=5_000)
    qtbot.wait(50)
    assert [lay.name for lay in viewer.layers] == ["big"]
    widget.deleteLater()  # napari left it undeleted (as it does for a user); free it for the leak check
    qtbot.wait(50)


def test_a_rotated_or_sheared_layers_result_lies_on_it(viewer_and_widget, small_image, qtbot):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        small_image, name="tilted", scale=(0.5, 0.25), translate=(3.0, -2.0), rotate=30.0, shear=[0.2]
    )
    widget.run_button.click()
    wait_done(qtbot, widget)
    out = viewer.layers["tilted deblurred"]
    point = np.array([10.0, 7.0])
    np.testing.assert_allclose(out.data_to_world(point), layer.data_to_world(point), atol=1e-9)


def test_typed_axes_survive_new_layers_and_a_renamed_layer_stays_selected(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    stack = viewer.add_image(np.random.default_rng(0).random((3, 40, 40)).astype(np.float32), name="channels")
    widget.axes_edit.setText("CYX")
    viewer.add_image(np.zeros((40, 40), np.float32), name="another")
    assert widget.layer_combo.value() is stack and widget.axes_edit.text() == "CYX"
    stack.name = "renamed"
    assert widget.layer_combo.value() is stack and widget.axes_edit.text() == "CYX"
    assert widget.layer_combo.currentText() == "renamed"


def test_the_result_layer_looks_and_sits_like_its_input(viewer_and_widget, small_image, qtbot):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        small_image,
        name="cells",
        scale=(0.5, 0.25),
        translate=(3, 4),
        colormap="magma",
        gamma=0.8,
        opacity=0.6,
        blending="additive",
        contrast_limits=(10, 2000),
    )
    widget.layer_combo.set_value(viewer.layers["cells"])
    widget.run_button.click()
    wait_done(qtbot, widget)
    result = viewer.layers["cells deblurred"]
    assert tuple(result.scale) == tuple(layer.scale) and tuple(result.translate) == tuple(layer.translate)
    assert result.colormap.name == "magma" and result.gamma == pytest.approx(0.8)
    assert result.opacity == pytest.approx(0.6) and result.blending == "additive"
    assert tuple(result.contrast_limits) == (10, 2000)


def test_the_tile_box_offers_no_size_the_model_cannot_use(
    viewer_and_widget, small_image, tiny_model_file, qtbot, notifications
):
    """A tile below the model's smallest can only fail in deblur(): the box raises it (and says so), keeps 'auto'
    and steps from 'auto' to the smallest size whose overlap costs at most 4x (not to the smallest that works,
    which repeats the work 50-500x), down to the smallest, and back to 'auto'."""
    from qtpy.QtCore import Qt

    from napari_deblurgan import load_model
    from napari_deblurgan.inference.tiling import default_overlap, minimum_tile_size

    viewer, widget = viewer_and_widget
    model = load_model(tiny_model_file)
    smallest = minimum_tile_size(model.receptive_radius, model.stride)  # 76 px for the tiny model
    box = widget.tile_spin
    assert box.value() == 0 and box.text() == "auto"
    box.setValue(40)
    qtbot.waitUntil(lambda: box.value() == smallest, timeout=30_000)  # once the panel knows the model
    assert "40 px is too small" in widget.status.text() and f"set to {smallest} px" in widget.status.text()

    box.setValue(0)
    assert box.text() == "auto"  # 'auto' is not a size below the smallest
    first = 2 * default_overlap(model.receptive_radius, model.stride)
    assert box.first() == first > smallest
    box.stepBy(1)
    assert box.value() == first
    while box.value() > smallest:
        box.stepBy(-1)
    assert box.value() == smallest
    box.stepBy(-1)
    assert box.value() == 0
    box.setValue(smallest + 64)
    box.stepBy(-1)
    assert box.value() == smallest
    box.setValue(smallest + 10)
    box.stepBy(-1)
    assert box.value() == smallest

    box.lineEdit().selectAll()  # typed, then Enter
    qtbot.keyClicks(box.lineEdit(), "20")
    qtbot.keyClick(box.lineEdit(), Qt.Key.Key_Return)
    assert box.value() == smallest
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "1280")  # typed digit by digit: 1, 12 and 128 are not raised on the way
    qtbot.keyClick(box.lineEdit(), Qt.Key.Key_Return)
    assert box.value() == 1280

    # with an overlap of its own the smallest tile follows it
    widget.overlap_spin.setValue(200)
    assert widget.tile_spin.smallest() == minimum_tile_size(model.receptive_radius, model.stride, 200) == 204
    box.setValue(100)
    assert box.value() == 204 and "an overlap of 200 px" in widget.status.text()

    viewer.add_image(small_image, name="cells")
    widget.overlap_spin.setValue(-1)
    assert "an overlap of 200 px" not in widget.status.text()  # no longer true: not left standing
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "30")  # still being typed when Run is clicked: raised, and said so
    widget.run_button.click()
    assert box.value() == smallest
    assert "Deblurring 'cells'" in widget.status.text() and "30 px is too small" in widget.status.text()
    box.setValue(40)  # while the job runs: its line stays (the new size is for the next run)
    assert "Deblurring 'cells'" in widget.status.text()
    wait_done(qtbot, widget)
    assert "cells deblurred" in viewer.layers, notifications
    assert not [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    # the result's line replaces the one that said the size was raised: it says it again
    assert "Added 'cells deblurred'" in widget.status.text() and "30 px is too small" in widget.status.text()


def test_the_smallest_tile_follows_the_chosen_model(viewer_and_widget, tiny_model_file, qtbot):
    """Another model, another smallest tile: a size chosen for a small model is raised for a larger one (not
    lowered back), and 'auto' stays 'auto'."""
    from napari_deblurgan import load_model
    from napari_deblurgan.inference.tiling import minimum_tile_size

    _, widget = viewer_and_widget
    combo, box = widget.model_combo, widget.tile_spin
    tiny = combo.value()
    tiny_smallest = minimum_tile_size(load_model(tiny_model_file).receptive_radius, load_model(tiny_model_file).stride)
    qtbot.waitUntil(lambda: box.smallest() == tiny_smallest, timeout=30_000)
    box.setValue(200)
    shipped = next(e for e in widget.registry.entries if e.source == "default")
    default = load_model("default")
    default_smallest = minimum_tile_size(default.receptive_radius, default.stride)
    assert default_smallest > 200  # 368 px: unet_fast's seamless overlap is 352 px
    combo.select(shipped)
    qtbot.waitUntil(lambda: box.value() == default_smallest, timeout=30_000)  # the shipped model is read first
    assert "200 px is too small for default (shipped)" in widget.status.text()
    assert f"{default_smallest} px" in box.toolTip()
    combo.select(tiny)
    assert box.value() == default_smallest and box.smallest() == tiny_smallest
    box.setValue(0)
    combo.select(shipped)
    assert box.value() == 0 and box.text() == "auto"


def test_a_result_whose_input_was_removed_meanwhile_is_added_and_says_so(
    viewer_and_widget, small_image, qtbot, notifications
):
    """The result is valid and may be wanted: it is added where the input was, with the removed layer's look,
    and the status line says the input is gone. A new layer under the removed one's name is not taken for it."""
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        small_image, name="cells", scale=(0.5, 0.25), translate=(3.0, 4.0), colormap="magma", contrast_limits=(10, 2000)
    )
    widget.run_button.click()
    viewer.layers.remove(layer)  # while the job runs: its result reaches the panel through the event loop
    wait_done(qtbot, widget)
    assert [lay.name for lay in viewer.layers] == ["cells deblurred"]
    out = viewer.layers["cells deblurred"]
    assert out.data.shape == small_image.shape and out.data.dtype == small_image.dtype
    assert tuple(out.scale) == (0.5, 0.25) and tuple(out.translate) == (3.0, 4.0)
    assert out.colormap.name == "magma" and tuple(out.contrast_limits) == (10, 2000)
    assert "Added 'cells deblurred'" in widget.status.text()
    assert "'cells' was removed from the viewer" in widget.status.text()
    assert not [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]

    viewer.add_image(small_image, name="cells")  # another layer of that name, still there when its job ends
    widget.layer_combo.set_value(viewer.layers["cells"])
    widget.run_button.click()
    wait_done(qtbot, widget)
    assert widget.status.text() == "Added 'cells deblurred [2]'."


def test_layer_menu_result_whose_input_was_removed_meanwhile_comes_with_a_note(
    make_napari_viewer, tiny_model_file, small_image, qtbot, monkeypatch, notifications
):
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image(small_image, name="cells", scale=(2.0, 2.0))
    viewer.layers.selection = {layer}
    workers = layer_menu.deblur_selected_layers(viewer)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: "cells deblurred" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: not workers[0].is_running, timeout=5_000)
    assert tuple(viewer.layers["cells deblurred"].scale) == (2.0, 2.0)
    infos = [msg for sev, msg in notifications if sev == NotificationSeverity.INFO]
    assert any("'cells' was removed from the viewer" in msg for msg in infos), notifications


@pytest.mark.parametrize("how", ["close", "dock close button"])
def test_a_lazy_deblur_being_prepared_when_the_panel_closes_adds_nothing(viewer_and_widget, qtbot, how):
    """Closing cancels the job; a lazy (dask) job, which no cancel reaches, used to add its result anyway."""
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_and_widget
    data = da.from_array(np.random.default_rng(0).random((2, 64, 64)).astype(np.float32), chunks=(1, 64, 64))
    viewer.add_image(data, name="lazy", contrast_limits=(0, 1))
    widget.run_button.click()
    assert widget.worker is not None
    if how == "close":
        widget.close()
    else:
        viewer.window.remove_dock_widget(widget)
    # the panel's own finished slot (connected before the job started: a slot connected here could miss a
    # lazy job that has already ended) clears its worker after the result was handed over
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    qtbot.wait(50)
    assert [lay.name for lay in viewer.layers] == ["lazy"]
    if how != "close":
        widget.deleteLater()  # napari left it undeleted (as it does for a user); free it for the leak check
        qtbot.wait(50)


def test_a_device_error_ends_the_job_says_so_and_frees_the_panel(viewer_and_widget, small_image, qtbot, monkeypatch):
    """A RuntimeError of the job (torch's errors are: a CUDA fault, out of memory) reaches napari's error report,
    the panel is ready again, and its status line no longer says "Deblurring..." but that the run failed."""
    import napari_deblurgan

    viewer, widget = viewer_and_widget
    viewer.add_image(small_image, name="cells")

    def device_error(*args, **kwargs):
        raise RuntimeError("CUDA error: simulated\nCUDA kernel errors might be reported asynchronously...")

    monkeypatch.setattr(napari_deblurgan, "deblur", device_error)
    with qtbot.capture_exceptions() as raised:  # superqt re-raises a worker's error in the GUI thread: napari's report
        widget.run_button.click()
        wait_done(qtbot, widget)
    assert [type(exc) for _, exc, _ in raised] == [RuntimeError]
    assert widget.status.text() == "Deblur of 'cells' failed (RuntimeError: CUDA error: simulated); no layer was added."
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_a_generator_jobs_runtime_error_is_errored_then_finished():
    """superqt's GeneratorWorker returns a job's RuntimeError as if the worker had been deleted, and its run()
    then emitted only a warning: no errored, no finished. The panels' workers emit both, and keep superqt's
    warning for a worker whose Qt objects are really gone."""
    from qtpy import sip
    from qtpy.QtWidgets import QApplication

    from napari_deblurgan.widgets._common import _worker_alive, create_relayed_worker

    QApplication.instance() or QApplication([])

    def job():
        yield 1
        raise RuntimeError("CUDA error: simulated")

    worker = create_relayed_worker(job)
    seen = []
    worker.errored.disconnect()  # superqt's re-raise, for napari's report: not wanted in this direct run
    worker.errored.connect(lambda exc: seen.append(("errored", str(exc))))
    worker.finished.connect(lambda: seen.append(("finished",)))
    worker.run()  # the thread's body, here: the signals are delivered at once
    assert seen == [("errored", "CUDA error: simulated"), ("finished",)]

    gone = create_relayed_worker(job)
    assert _worker_alive(gone)
    sip.delete(gone.signals)
    assert not _worker_alive(gone)


def test_a_job_that_ends_after_the_panel_was_deleted_touches_none_of_its_widgets(make_napari_viewer):
    """Closing napari's window deletes the panel without its closeEvent (so it is not marked closed), and the
    worker's lambda connections outlive it: a job that ends later (an error, a result, finished) must not touch
    the deleted labels (RuntimeError: wrapped C/C++ object deleted; with PyQt6 and no excepthook, an abort)."""
    import types

    from qtpy import sip

    from napari_deblurgan.widgets.deblur_widget import DeblurWidget

    widget = DeblurWidget(make_napari_viewer(strict_qt="raise"))
    sip.delete(widget)
    assert not widget._closed
    layer = types.SimpleNamespace(name="cells")
    widget._on_errored(layer, RuntimeError("CUDA error: simulated"))
    widget._on_returned(layer, ("error", "simulated"))
    widget._on_finished()
    assert widget.worker is None


def test_a_worker_whose_signals_were_deleted_during_its_job_ends_quietly():
    """napari quitting while a panel's job runs (the Deblur panel loads its model in the background when it
    opens) deletes the worker's signals object with the app's objects; emitting on it raised in the pool
    thread, which PyQt6 answers by aborting the process. The run now drops the signals it can no longer send."""
    from qtpy import sip
    from qtpy.QtWidgets import QApplication

    from napari_deblurgan.widgets._common import create_relayed_worker

    QApplication.instance() or QApplication([])
    workers = []

    def job():
        sip.delete(workers[0].signals)  # as the app's teardown does while the job runs
        return 1

    workers.append(create_relayed_worker(job))
    workers[0].run()  # the thread's body, here; raised RuntimeError (wrapped C/C++ object deleted) before


def test_a_refused_run_says_so_on_the_status_line_not_the_last_ones_result(viewer_and_widget, small_image, qtbot):
    """With every layer removed after a run, Run said why in a notification only: the status line kept "Added
    'cells deblurred'.", as if this click had added it."""
    viewer, widget = viewer_and_widget
    viewer.add_image(small_image, name="cells")
    widget.run_button.click()
    wait_done(qtbot, widget)
    assert widget.status.text().startswith("Added 'cells deblurred'")
    viewer.layers.clear()
    widget.run_button.click()
    assert widget.worker is None
    assert widget.status.text().startswith("Choose an image layer to deblur"), widget.status.text()


def test_the_layer_menu_sends_axes_advice_to_the_deblur_panel(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch, notifications
):
    """A too-small image said "check the axes field": the menu command has none."""
    from napari_deblurgan.widgets import layer_menu

    monkeypatch.setattr(layer_menu, "MODEL", str(tiny_model_file))
    viewer = make_napari_viewer(strict_qt="raise")
    layer = viewer.add_image(np.arange(25, dtype=np.uint16).reshape(5, 5), name="tiny")
    viewer.layers.selection = {layer}
    assert len(layer_menu.deblur_selected_layers(viewer)) == 1
    qtbot.waitUntil(lambda: any(sev == NotificationSeverity.ERROR for sev, _ in notifications), timeout=30_000)
    (error,) = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert error.startswith("Deblur of 'tiny' failed: the image plane is 5x5 pixels"), error
    assert "open Plugins > DeblurGAN > Deblur to set the axes" in error and "axes field" not in error, error

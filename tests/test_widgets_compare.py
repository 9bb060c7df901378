"""The Compare dock widget in a real napari viewer: metrics table, baselines, CSV export, side by side."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer

from napari.utils.notifications import NotificationSeverity  # noqa: E402


@pytest.fixture
def scene():
    """A 64 x 64 float sharp image, its Gaussian blur (sigma 1.5) and that PSF."""
    from scipy import ndimage

    from napari_deblurgan.blur.psf import gaussian_psf

    yy, xx = np.mgrid[:64, :64]
    sharp = (((xx // 8 + yy // 8) % 2) * 0.8 + 0.1).astype(np.float32)
    psf = gaussian_psf(1.5)
    blurred = ndimage.convolve(sharp, psf, mode="reflect").astype(np.float32)
    return sharp, blurred, psf


@pytest.fixture
def setup(make_napari_viewer, scene):
    from napari_deblurgan.widgets.compare_widget import CompareWidget

    viewer = make_napari_viewer(strict_qt="raise")
    sharp, blurred, psf = scene
    viewer.add_image(sharp, name="truth", contrast_limits=(0, 1))
    viewer.add_image(blurred, name="blurred", metadata={"psf": psf}, contrast_limits=(0.2, 0.7))
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare")
    return viewer, widget


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)


def table_rows(widget):
    headers = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    return [{h: widget.table.item(r, c).text() for c, h in enumerate(headers)} for r in range(widget.table.rowCount())]


def test_baseline_and_metrics_table_and_csv(setup, qtbot, tmp_path, scene):
    viewer, widget = setup
    blurred_before = viewer.layers["blurred"].data.copy()
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.baseline_input.set_value(viewer.layers["blurred"])
    assert widget.psf_source.currentText().startswith("sample's PSF")
    widget.rl_iterations.setValue(20)
    widget.rl_button.click()
    wait_done(qtbot, widget)
    rl = viewer.layers["blurred Richardson-Lucy 20 it."]
    assert rl.data.shape == (64, 64) and rl.data.dtype == np.float32
    np.testing.assert_array_equal(viewer.layers["blurred"].data, blurred_before)

    widget.set_checked(viewer.layers["blurred"])
    assert [layer.name for layer in widget.checked_layers()] == [rl.name, "blurred"]
    widget.compute_button.click()
    wait_done(qtbot, widget)
    rows = {row["layer"]: row for row in table_rows(widget)}
    assert set(rows) == {rl.name, "blurred"}
    # deconvolution with the true PSF must beat the blurred input against the ground truth
    assert float(rows[rl.name]["PSNR (dB)"]) > float(rows["blurred"]["PSNR (dB)"])
    assert {"SSIM", "NRMSE", "sharpness"} <= set(rows["blurred"])

    out = tmp_path / "table.csv"
    widget.export_csv(str(out))
    with out.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert {r["name"] for r in csv_rows} == {rl.name, "blurred"}


def test_wiener_with_gaussian_psf_and_no_reference(setup, qtbot):
    viewer, widget = setup
    viewer.layers["blurred"].scale, viewer.layers["blurred"].translate = (0.5, 0.25), (10.0, -3.0)
    widget.baseline_input.set_value(viewer.layers["blurred"])
    widget.psf_source.setCurrentText("Gaussian of sigma")
    widget.psf_sigma.setValue(1.5)
    widget.wiener_button.click()
    wait_done(qtbot, widget)
    wiener = next(layer for layer in viewer.layers if "Wiener" in layer.name)
    assert wiener.data.shape == (64, 64)
    assert tuple(wiener.scale) == (0.5, 0.25) and tuple(wiener.translate) == (10.0, -3.0)  # on its input

    widget.compute_button.click()  # no ground truth chosen: sharpness only
    wait_done(qtbot, widget)
    rows = table_rows(widget)
    assert [r["layer"] for r in rows] == [wiener.name]
    assert "PSNR (dB)" not in rows[0] and float(rows[0]["sharpness"]) > 0


def test_per_slice_rows_for_stacks(make_napari_viewer, qtbot):
    from napari_deblurgan.widgets.compare_widget import CompareWidget

    viewer = make_napari_viewer(strict_qt="raise")
    rng = np.random.default_rng(0)
    truth = rng.random((3, 32, 32)).astype(np.float32)
    viewer.add_image(truth, name="truth")
    viewer.add_image(truth + 0.05 * rng.standard_normal(truth.shape).astype(np.float32), name="noisy")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["noisy"])
    widget.per_slice.setChecked(True)
    widget.compute_button.click()
    wait_done(qtbot, widget)
    assert widget.table.rowCount() == 1 + 3  # whole stack + one row per Z plane


def test_the_tables_rows_are_compares_rows_in_its_order(make_napari_viewer, qtbot):
    """Row r of the panel's table is row r of compare() for the same question, cell for cell: the whole
    stack of each layer, then its planes (a table drawn in another order would pair a plane with another's
    numbers)."""
    from napari_deblurgan import compare
    from napari_deblurgan.widgets.compare_widget import CompareWidget, _format

    viewer = make_napari_viewer(strict_qt="raise")
    rng = np.random.default_rng(0)
    truth = rng.random((3, 32, 32)).astype(np.float32)
    noise = rng.standard_normal(truth.shape).astype(np.float32)
    noise *= np.array([0.02, 0.1, 0.3], np.float32)[:, None, None]  # each plane its own PSNR
    viewer.add_image(truth, name="truth")
    viewer.add_image(truth + noise, name="noisy")
    viewer.add_image(truth + noise[::-1], name="other")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["noisy"])
    widget.set_checked(viewer.layers["other"])
    widget.per_slice.setChecked(True)
    widget.compute_button.click()
    wait_done(qtbot, widget)

    names = [layer.name for layer in widget.checked_layers()]
    span = float(truth.max()) - float(truth.min())
    expected = compare(
        {name: viewer.layers[name].data for name in names}, truth, axes="ZYX", per_slice=True, data_range=span
    )
    shown = table_rows(widget)
    assert len(shown) == len(expected.rows) == 2 * (1 + 3)
    for got, row in zip(shown, expected.rows, strict=True):
        assert got["layer"] == row["name"]
        assert got["slice"] == _format(row.get("slice"))
        for key, header in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("nrmse", "NRMSE")):
            assert got[header] == _format(row[key]), (key, row)


def test_side_by_side_grid_and_matched_contrast(setup):
    viewer, widget = setup
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.side_button.click()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled
    assert [layer.name for layer in viewer.layers if layer.visible] == ["truth", "blurred"]  # nothing else
    assert tuple(viewer.layers["blurred"].contrast_limits) == tuple(viewer.layers["truth"].contrast_limits)
    # two, three and five images: the layout that shows them largest on this canvas
    from napari_deblurgan.widgets.compare_widget import grid_shape

    for names in ((), ("half",), ("quarter", "eighth")):
        for name in names:
            viewer.add_image(viewer.layers["blurred"].data * 0.5, name=name)
            widget.set_checked(viewer.layers[name])
        widget.side_button.click()
        shown = [layer for layer in viewer.layers if layer.visible]
        expected = grid_shape(len(shown), tuple(viewer.canvas.size), viewer.layers["truth"].data.shape[-2:])
        assert grid.actual_shape(shown) == expected


def test_side_by_side_without_ground_truth_leaves_an_rgb_layers_range_out_of_the_grey_ones(setup):
    viewer, widget = setup
    widget.reference_combo.set_value(None)
    rgb = viewer.add_image(np.zeros((*viewer.layers["blurred"].data.shape, 3), np.uint8), name="photo", rgb=True)
    rgb_limits = tuple(rgb.contrast_limits)
    for name in ("truth", "blurred", "photo"):
        widget.set_checked(viewer.layers[name])
    widget.side_button.click()
    # the grey layers' widest range (0..1), not 0..255: a 0..1 result is not drawn black
    assert tuple(viewer.layers["blurred"].contrast_limits) == tuple(viewer.layers["truth"].contrast_limits) == (0, 1)
    assert tuple(rgb.contrast_limits) == rgb_limits
    widget.reference_combo.set_value(rgb)  # an RGB ground truth's 0..255 is not applied to the grey ones either
    widget.side_button.click()
    assert tuple(viewer.layers["blurred"].contrast_limits) == (0, 1)


@pytest.mark.parametrize(
    ("n", "canvas", "shape"),
    [
        (1, (600, 800), (1, 1)),
        (3, (600, 1600), (1, 3)),  # a wide canvas: one row
        (3, (800, 800), (2, 2)),  # square: 2 x 2 shows them larger than a row, despite the empty cell
        (5, (900, 600), (3, 2)),  # the Compare screenshot's tall canvas
        (5, (400, 2000), (1, 5)),
        (6, (600, 900), (2, 3)),
        (4, (800, 800), (2, 2)),
    ],
)
def test_grid_shape_shows_the_images_largest(n, canvas, shape):
    from napari_deblurgan.widgets.compare_widget import grid_shape

    assert grid_shape(n, canvas, (256, 256)) == shape


def test_grid_shape_follows_the_images_aspect():
    from napari_deblurgan.widgets.compare_widget import grid_shape

    assert grid_shape(2, (800, 800), (100, 400)) == (2, 1)  # wide images stack
    assert grid_shape(2, (800, 800), (400, 100)) == (1, 2)  # tall ones sit side by side


def test_errors_are_notifications(setup, qtbot, notifications):
    viewer, widget = setup
    widget.compute_button.click()  # nothing checked
    viewer.layers["truth"].metadata.clear()
    widget.baseline_input.set_value(viewer.layers["truth"])  # no PSF in its metadata
    widget.rl_button.click()
    assert widget.worker is None
    errors = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("Check at least one" in m for m in errors)
    assert any("no PSF" in m for m in errors)
    # shape mismatch is the core's InputError, shown as a notification
    viewer.add_image(np.zeros((16, 16), np.float32), name="small")
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["small"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    assert any("shape" in m for sev, m in notifications if sev == NotificationSeverity.ERROR)


def test_psnr_range_defaults_to_the_ground_truths_own_range(make_napari_viewer, qtbot):
    """A uint16 image spanning ~1,000 counts: PSNR against 65535 would flatter it by ~36 dB; the panel
    defaults to the ground truth's min-max (as the demo does) and offers the dtype's range."""
    from napari_deblurgan.comparison import psnr
    from napari_deblurgan.widgets.compare_widget import CompareWidget

    rng = np.random.default_rng(0)
    truth = (1000 + rng.random((48, 48)) * 1000).astype(np.uint16)
    noisy = (truth + rng.normal(0, 20, truth.shape)).clip(0, 65535).astype(np.uint16)
    viewer = make_napari_viewer(strict_qt="raise")
    viewer.add_image(truth, name="truth")
    viewer.add_image(noisy, name="noisy")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare")
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["noisy"])
    scores = {}
    for choice in ("reference", "dtype"):
        widget.range_combo.setCurrentIndex(widget.range_combo.findData(choice))
        widget.compute_button.click()
        wait_done(qtbot, widget)
        scores[choice] = float(table_rows(widget)[0]["PSNR (dB)"])
    span = float(truth.max()) - float(truth.min())
    assert scores["reference"] == pytest.approx(psnr(truth, noisy, span), abs=0.01)
    assert scores["dtype"] == pytest.approx(psnr(truth, noisy), abs=0.01)
    assert scores["dtype"] - scores["reference"] > 30
    assert widget.range_combo.itemData(0) == "reference"  # the default


def test_exporting_the_table_into_a_folder_is_a_notification(setup, qtbot, tmp_path, notifications):
    viewer, widget = setup
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    widget.export_csv(str(tmp_path))
    assert any("Could not write" in msg and "is a directory" in msg for _, msg in notifications)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_computation_leaves_no_old_numbers_behind(setup, qtbot, notifications):
    viewer, widget = setup
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    assert widget.table.rowCount() == 1 and widget.export_button.isEnabled()
    viewer.add_image(np.zeros((32, 32), np.float32), name="other shape")
    widget.set_checked(viewer.layers["other shape"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    assert any("shape" in msg for _, msg in notifications)
    assert widget.table.rowCount() == 0 and not widget.export_button.isEnabled() and widget.table_result is None


def test_a_tick_belongs_to_its_layer_not_its_name(setup):
    """Renaming a ticked layer keeps its tick; a new layer given a removed layer's name starts unticked."""
    from qtpy.QtCore import Qt

    viewer, widget = setup
    rows = {widget.layer_list.item(r).text(): widget.layer_list.item(r) for r in range(widget.layer_list.count())}
    rows["blurred"].setCheckState(Qt.CheckState.Checked)  # as a click does
    blurred = viewer.layers["blurred"]
    assert widget.checked_layers() == [blurred]
    blurred.name = "blurred, renamed"
    assert widget.checked_layers() == [blurred]
    ticked = [
        widget.layer_list.item(r).text()
        for r in range(widget.layer_list.count())
        if widget.layer_list.item(r).checkState() == Qt.CheckState.Checked
    ]
    assert ticked == ["blurred, renamed"]

    viewer.layers.remove(blurred)
    viewer.add_image(np.zeros((64, 64), np.float32), name="blurred, renamed")
    assert widget.checked_layers() == []


def test_leaving_the_side_by_side_grid_puts_the_view_back(setup):
    viewer, widget = setup
    viewer.add_image(np.zeros((64, 64), np.float32), name="other", contrast_limits=(0.0, 5.0))
    viewer.layers["truth"].visible = False
    before = {layer.name: (layer.visible, tuple(layer.contrast_limits)) for layer in viewer.layers}
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.side_button.click()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled and not viewer.layers["other"].visible and viewer.layers["truth"].visible
    assert tuple(viewer.layers["blurred"].contrast_limits) == tuple(viewer.layers["truth"].contrast_limits)
    grid.enabled = False  # Ctrl+G
    assert {layer.name: (layer.visible, tuple(layer.contrast_limits)) for layer in viewer.layers} == before


def _choose_a_long_richardson_lucy(viewer, widget, *, planes: int, iterations: int) -> None:
    """Add a layer "stack" of ``planes`` copies of the blurred image (with its PSF) and set the panel up to run
    Richardson-Lucy on it for ``iterations``: a job long enough to be interrupted."""
    stack = np.repeat(viewer.layers["blurred"].data[None], planes, axis=0)
    viewer.add_image(stack, name="stack", metadata={"psf": viewer.layers["blurred"].metadata["psf"]})
    widget.baseline_input.set_value(viewer.layers["stack"])
    widget.rl_iterations.setValue(iterations)


def test_a_baseline_still_running_when_the_panel_is_closed_adds_no_layer(setup, qtbot):
    viewer, widget = setup
    _choose_a_long_richardson_lucy(viewer, widget, planes=4, iterations=200)
    widget.rl_button.click()
    worker = widget.worker
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    viewer.window.remove_dock_widget(widget)  # napari's close button
    qtbot.waitUntil(lambda: bool(ended), timeout=120_000)
    qtbot.wait(50)
    assert [layer.name for layer in viewer.layers] == ["truth", "blurred", "stack"]
    widget.deleteLater()
    qtbot.wait(50)


def test_napari_quitting_cancels_a_running_baseline(setup, qtbot):
    """napari's quit calls quit() on every worker and waits (WorkerBase.await_workers): a 1000-iteration
    Richardson-Lucy kept it waiting to the end, since closing the window never reaches the panel."""
    viewer, widget = setup
    _choose_a_long_richardson_lucy(viewer, widget, planes=6, iterations=1000)
    widget.rl_button.click()
    worker = widget.worker
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    worker.quit()
    assert widget._cancel.is_set()
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    assert [layer.name for layer in viewer.layers] == ["truth", "blurred", "stack"]


def test_a_table_names_the_ground_truth_it_was_computed_against_and_a_refused_compute_clears_it(
    setup, qtbot, notifications
):
    viewer, widget = setup
    viewer.add_image(viewer.layers["truth"].data.copy(), name="truth B")
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.compute_button.click()
    widget.reference_combo.set_value(viewer.layers["truth B"])  # changed while the job runs
    wait_done(qtbot, widget)
    assert widget.table_result is not None
    assert "ground truth: 'truth'." in widget.status.text(), widget.status.text()

    for layer in list(viewer.layers):  # nothing checked: Compute is refused, and the old table goes
        widget.set_checked(layer, False)
    widget.compute_button.click()
    assert any("Check at least one" in msg for _, msg in notifications)
    assert widget.table_result is None and widget.table.rowCount() == 0
    assert not widget.export_button.isEnabled() and "ground truth" not in widget.status.text()


def test_cancel_stops_a_long_richardson_lucy_and_adds_nothing(setup, qtbot):
    viewer, widget = setup
    _choose_a_long_richardson_lucy(viewer, widget, planes=6, iterations=1000)
    assert not widget.cancel_button.isEnabled()
    widget.rl_button.click()
    assert widget.cancel_button.isEnabled()
    widget.cancel_button.click()
    wait_done(qtbot, widget)
    assert widget.status.text() == "Cancelled; no layer was added."
    assert [layer.name for layer in viewer.layers] == ["truth", "blurred", "stack"]
    assert not widget.cancel_button.isEnabled() and widget.rl_button.isEnabled()


def test_cancel_stops_the_metrics_of_a_long_lazy_stack(setup, qtbot):
    """Metrics read every plane of every checked layer: on a long lazy stack that takes minutes, so Cancel works
    for them too (it stayed disabled), between planes, and leaves no table."""
    import threading

    da = pytest.importorskip("dask.array")
    viewer, widget = setup
    planes = 60
    # the planes computed (one a block), each with whether Cancel had been clicked before it began; the second
    # plane waits until Cancel was clicked, so what is counted does not depend on how fast anything runs
    computed: list[tuple[int, bool]] = []
    in_second, clicked = threading.Event(), threading.Event()

    def counted(block, block_info=None):  # a lazy result computed when read, as a lazy deblur() is
        if block.size == 0:  # dask's call to learn the result's type, not a plane
            return block
        plane = block_info[0]["chunk-location"][0]
        computed.append((plane, clicked.is_set()))
        if plane == 1 and not in_second.is_set():
            in_second.set()
            assert clicked.wait(30), "Cancel was never clicked"
        return block

    truth = np.repeat(viewer.layers["truth"].data[None], planes, axis=0)
    lazy = da.from_array(np.repeat(viewer.layers["blurred"].data[None], planes, axis=0), chunks=(1, 64, 64))
    viewer.add_image(truth, name="truth stack")
    viewer.add_image(lazy.map_blocks(counted, dtype=lazy.dtype), name="lazy stack")
    widget.reference_combo.set_value(viewer.layers["truth stack"])
    widget.set_checked(viewer.layers["lazy stack"])
    widget.compute_button.click()
    assert widget.cancel_button.isEnabled()
    qtbot.waitUntil(in_second.is_set, timeout=60_000)
    widget.cancel_button.click()
    clicked.set()
    wait_done(qtbot, widget)
    # stopped between planes: the plane being read when Cancel came is the last, not read to the end
    after = [plane for plane, late in computed if late]
    assert after == [], f"{len(after)} of {planes} planes were computed after Cancel"
    assert {0, 1} <= {plane for plane, _ in computed}
    assert widget.status.text() == "Cancelled; no table was made."
    assert widget.table.rowCount() == 0 and widget.table_result is None
    assert not widget.cancel_button.isEnabled() and widget.compute_button.isEnabled()


@pytest.mark.parametrize("through_the_plugin", [False, True])
def test_the_view_comes_back_after_a_second_side_by_side_and_after_the_panel_is_gone(
    make_napari_viewer, qtbot, scene, through_the_plugin
):
    """A layer added while in grid mode (a new baseline) is put back as it was when the second side-by-side
    hid it; and leaving grid mode restores the view even after the panel was closed and deleted."""
    import gc

    from napari_deblurgan.widgets.compare_widget import CompareWidget

    viewer = make_napari_viewer()
    sharp, blurred, psf = scene
    viewer.add_image(sharp, name="truth", contrast_limits=(0, 1))
    viewer.add_image(blurred, name="blurred", metadata={"psf": psf}, contrast_limits=(0.2, 0.7))
    before = {layer.name: (layer.visible, tuple(layer.contrast_limits)) for layer in viewer.layers}
    if through_the_plugin:
        _, widget = viewer.window.add_plugin_dock_widget("napari-deblurgan", "Compare")
    else:
        widget = CompareWidget(viewer)
        viewer.window.add_dock_widget(widget)
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.side_button.click()
    viewer.add_image(np.ones((64, 64), np.float32), name="new", contrast_limits=(0, 3))
    before["new"] = (True, (0.0, 3.0))
    widget.side_button.click()
    assert not viewer.layers["new"].visible
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    del widget
    qtbot.wait(50)
    gc.collect()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    grid.enabled = False  # Ctrl+G, the panel gone
    after = {layer.name: (layer.visible, tuple(float(v) for v in layer.contrast_limits)) for layer in viewer.layers}
    assert after == {name: (v, tuple(float(x) for x in lim)) for name, (v, lim) in before.items()}


def test_a_baseline_whose_input_was_removed_meanwhile_is_added_and_says_so(setup, qtbot, notifications):
    viewer, widget = setup
    blurred = viewer.layers["blurred"]
    blurred.scale = (2.0, 0.5)
    widget.baseline_input.set_value(blurred)
    widget.wiener_button.click()
    viewer.layers.remove(blurred)  # while the job runs
    wait_done(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["truth", "blurred Wiener 0.01"]
    out = viewer.layers["blurred Wiener 0.01"]
    assert tuple(out.scale) == (2.0, 0.5) and tuple(out.contrast_limits) == (0.2, 0.7)
    assert "Added 'blurred Wiener 0.01'" in widget.status.text()
    assert "'blurred' was removed from the viewer" in widget.status.text()
    assert not [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]


def test_a_dask_layer_gets_a_lazy_baseline_and_is_never_read_whole(setup, qtbot, numpy_peak):
    """The baselines of a dask layer are lazy dask layers (one plane per block, computed as napari shows them),
    as a deblurred dask layer is: the panel passed np.asarray(layer.data), a NumPy copy of the whole layer,
    and got a whole NumPy result back. NumPy's peak memory of the job now stays the same for a 4x larger
    layer; the lazy result's planes are the NumPy baseline's."""
    da = pytest.importorskip("dask.array")
    from napari_deblurgan import richardson_lucy

    viewer, widget = setup
    psf = viewer.layers["blurred"].metadata["psf"]
    plane = np.tile(viewer.layers["blurred"].data, (4, 4))  # 256 x 256: its pixels outweigh napari's own noise

    def stack(planes: int):
        # map_blocks: the planes are made when dask computes them (as for a file read lazily), not views
        source = da.from_array(np.broadcast_to(plane, (planes, *plane.shape)), chunks=(1, *plane.shape))
        return source.map_blocks(np.copy)

    cancellable: list[bool] = []

    def run(data) -> None:
        layer = viewer.add_image(data, name="lazy", metadata={"psf": psf}, contrast_limits=(0, 1))
        widget.baseline_input.set_value(layer)
        widget.rl_iterations.setValue(2)
        widget.rl_button.click()
        cancellable.append(widget.cancel_button.isEnabled())
        wait_done(qtbot, widget)

    small_stack, large_stack = stack(4), stack(16)  # made outside the measurement (from_array copies)
    # the lower of two measurements each: a one-off resize of an interpreter-wide table (the dict of
    # sys.intern'ed strings: 7.7 MB, seen in a full run of test_compare) can land in either
    small = min(numpy_peak(lambda: run(small_stack)) for _ in range(2))
    large = min(numpy_peak(lambda: run(large_stack)) for _ in range(2))
    extra_input = 12 * plane.nbytes
    assert large - small < 0.25 * extra_input, (small, large, extra_input)
    assert not any(cancellable)  # nothing to cancel: the job only reads the range; the planes come later

    result = widget.last_baseline
    assert isinstance(result.data, da.Array) and result.data.shape == (16, *plane.shape)
    assert result.data.dtype == np.float32 and set(result.data.chunks[0]) == {1}
    expected = richardson_lucy(np.broadcast_to(plane, (2, *plane.shape)), psf, 2, axes="ZYX")[1]
    np.testing.assert_array_equal(np.asarray(result.data[5]), expected)


def test_the_side_by_side_grid_shows_the_results_in_the_tables_order_and_says_that_order(setup, qtbot, notifications):
    """The grid's cells, read row by row, show the results in the order of the metrics table (the layer list's,
    top first), and the notification names the layers in the grid's reading order (the grid showed them bottom
    layer first, the reverse of the table, while the notification listed them in yet another order)."""
    viewer, widget = setup
    for name in ("half", "quarter"):
        viewer.add_image(viewer.layers["blurred"].data * 0.5, name=name, contrast_limits=(0, 1))
    widget.reference_combo.set_value(viewer.layers["truth"])
    for name in ("blurred", "half", "quarter"):
        widget.set_checked(viewer.layers[name])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    table_order = [row["layer"] for row in table_rows(widget)]
    assert table_order == ["quarter", "half", "blurred"]

    widget.side_button.click()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    layers = list(viewer.layers)
    cells = {grid.position(i, layers): layer.name for i, layer in enumerate(layers) if layer.visible}
    reading_order = [cells[position] for position in sorted(cells)]
    assert [name for name in reading_order if name != "truth"] == table_order
    said = next(message for _, message in reversed(notifications) if message.startswith("Side by side"))
    assert said.startswith(f"Side by side: {', '.join(reading_order)} (")


def test_the_grid_stride_is_asked_of_napari_not_assumed():
    """napari 0.6.2 reversed the grid's order (napari PR #8053): before it, stride 1 put the top layer of the
    list in the first cell; since, the bottom one. The side-by-side view asks the grid which stride puts the
    top layer first, so it is the table's order in both (this napari's grid is checked by the test above)."""
    from napari_deblurgan.widgets.compare_widget import _top_first_stride

    class Layer:
        pass

    layers = [Layer(), Layer(), Layer()]
    shown = {id(layer) for layer in layers[:2]}  # the top one is not shown: the top shown is index 1

    class OldGrid:  # napari < 0.6.2: position(index, nlayers), stride 1 = top layer first
        stride = 1

        def position(self, index, nlayers):
            if not isinstance(nlayers, int):
                raise TypeError("nlayers must be an int")
            return (0, 0) if index == 1 else (0, 1)

    class NewGrid:  # napari >= 0.6.2: position(index, layers), stride 1 = bottom layer first
        stride = 1

        def position(self, index, layers):
            return (0, 0) if index == 0 else (0, index)

    assert _top_first_stride(OldGrid(), layers, shown) == 1
    assert _top_first_stride(NewGrid(), layers, shown) == -1


def test_a_nan_error_names_the_plane_and_the_layer_it_is_in(setup, qtbot, notifications):
    """compare()'s NaN/inf error names the image and the plane (as deblur()'s does); the panel's advice names the
    layer to fix in napari's console, not the API's ``np.nan_to_num(image, ...)`` (the user has no ``image``)."""
    from napari_deblurgan.widgets.compare_widget import PSF_GAUSSIAN

    viewer, widget = setup
    stack = np.repeat(viewer.layers["truth"].data[None], 3, axis=0)
    bad = stack.copy()
    bad[2, 5, 6] = np.nan
    viewer.add_image(stack, name="truth stack", contrast_limits=(0, 1))
    viewer.add_image(bad, name="bad stack", contrast_limits=(0, 1))
    widget.reference_combo.set_value(viewer.layers["truth stack"])
    widget.set_checked(viewer.layers["bad stack"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    said = widget.status.text()
    assert said.startswith("plane Z=2 of the result 'bad stack' has 1 NaN/inf pixel(s)"), said
    assert "np.nan_to_num(viewer.layers['bad stack'].data, nan=0.0)" in said and "np.nan_to_num(image" not in said
    assert any(msg == said for sev, msg in notifications if sev == NotificationSeverity.ERROR)

    widget.set_checked(viewer.layers["bad stack"], False)
    widget.set_checked(viewer.layers["truth stack"])
    widget.reference_combo.set_value(viewer.layers["bad stack"])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    said = widget.status.text()
    assert said.startswith("the ground truth's plane Z=2 has 1 NaN/inf pixel(s)"), said
    assert "np.nan_to_num(viewer.layers['bad stack'].data, nan=0.0)" in said

    widget.baseline_input.set_value(viewer.layers["bad stack"])
    widget.psf_source.setCurrentText(PSF_GAUSSIAN)
    widget.rl_button.click()
    wait_done(qtbot, widget)
    said = widget.status.text()
    assert said.startswith("the image's plane Z=2 has 1 NaN/inf pixel(s)"), said
    assert "np.nan_to_num(viewer.layers['bad stack'].data, nan=0.0)" in said


def test_a_device_error_ends_the_request_says_so_and_frees_the_panel(setup, qtbot, monkeypatch):
    """A RuntimeError of the job (torch's errors are: a CUDA fault, out of memory) reaches napari's error report,
    the panel's buttons work again, and the status line says that the request failed."""
    import napari_deblurgan

    viewer, widget = setup
    widget.baseline_input.set_value(viewer.layers["blurred"])

    def device_error(*args, **kwargs):
        raise RuntimeError("CUDA error: simulated")

    monkeypatch.setattr(napari_deblurgan, "richardson_lucy", device_error)
    with qtbot.capture_exceptions() as raised:  # superqt re-raises a worker's error in the GUI thread: napari's report
        widget.rl_button.click()
        wait_done(qtbot, widget)
    assert [type(exc) for _, exc, _ in raised] == [RuntimeError]
    assert widget.status.text() == "Failed (RuntimeError: CUDA error: simulated)."
    assert widget.rl_button.isEnabled() and widget.compute_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["truth", "blurred"]


def test_a_job_that_ends_after_the_panel_was_deleted_touches_none_of_its_widgets(make_napari_viewer):
    """Closing napari's window deletes the panel without its closeEvent (so it is not marked closed), and the
    worker's `returned` lambda outlives it: a job that ends later (napari's quit cancels it) must not touch the
    deleted labels (RuntimeError: wrapped C/C++ object deleted; with PyQt6 and no excepthook, an abort)."""
    from qtpy import sip

    from napari_deblurgan.widgets.compare_widget import CompareWidget

    widget = CompareWidget(make_napari_viewer(strict_qt="raise"))
    sip.delete(widget)
    assert not widget._closed
    widget._on_returned(("cancelled", None), None, {})
    widget._on_returned(("error", "simulated"), None, {})
    widget._on_errored(RuntimeError("CUDA error: simulated"))
    widget._on_finished()
    assert widget.worker is None


def test_the_panel_scrolls_instead_of_being_taller_than_a_laptop_screen(setup):
    """~700 px at least, with napari's menu, status bar and the dock's title: taller than a 768 px screen."""
    _viewer, widget = setup
    assert widget.minimumSizeHint().height() < 500
    inner = widget.scroll_area.widget()
    for control in (widget.compute_button, widget.table, widget.status, widget.rl_button):
        assert inner.isAncestorOf(control)


def test_a_refused_request_says_so_on_the_status_line_not_the_last_ones_result(setup, qtbot, notifications):
    """The status line kept "Added '... Richardson-Lucy 3 it.'." after a baseline refused for want of a PSF: it
    read as this click's result."""
    viewer, widget = setup
    widget.baseline_input.set_value(viewer.layers["blurred"])
    widget.rl_iterations.setValue(2)
    widget.rl_button.click()
    wait_done(qtbot, widget)
    assert widget.status.text().startswith("Added ")
    widget.baseline_input.set_value(viewer.layers["truth"])  # no PSF in its metadata
    widget.rl_button.click()
    assert widget.worker is None
    assert "carries no PSF in its metadata" in widget.status.text(), widget.status.text()

    for layer in widget.checked_layers():
        widget.set_checked(layer, False)
    widget.compute_button.click()
    assert widget.status.text() == "Check at least one result layer in the list to compare."


def test_the_tables_columns_fit_a_narrow_dock(setup, qtbot):
    """A ~350 px panel showed the layer column (as wide as its longest name) and PSNR; SSIM was cut, NRMSE and
    sharpness needed sideways scrolling. The layer column takes what the numbers leave, its names elided."""
    viewer, widget = setup
    long_name = "cells blurred Richardson-Lucy 30 it. deblurred"
    viewer.layers["blurred"].name = long_name
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers[long_name])
    widget.compute_button.click()
    wait_done(qtbot, widget)
    viewer.window._qt_window.show()  # laid out as on screen
    widget.setFixedWidth(350)
    qtbot.wait(100)
    table = widget.table
    assert widget.isVisible() and table.isVisible()
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers == ["layer", "PSNR (dB)", "SSIM", "NRMSE", "sharpness"]
    shown = table.viewport().width()
    for column, header in enumerate(headers):
        right = table.columnViewportPosition(column) + table.columnWidth(column)
        assert right <= shown, (header, right, shown, [table.columnWidth(c) for c in range(len(headers))])
    assert table.item(0, 0).text() == long_name and table.item(0, 0).toolTip() == long_name
    assert table.columnWidth(0) >= min(table.NAME_MIN, table.sizeHintForColumn(0))


def test_long_layer_names_do_not_widen_the_panels(make_napari_viewer, qtbot):
    """Layer pickers sized to the longest layer name made every panel (and napari's dock) as wide as a microscope
    file name: 618-664 px with a 74-character name, opened after the image as users do. The closed box is as wide
    as a short name; the whole name is in its tooltip and the open list is wide enough for it."""
    from napari_deblurgan.widgets._common import LayerComboBox
    from napari_deblurgan.widgets.compare_widget import CompareWidget
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget
    from napari_deblurgan.widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer(strict_qt="raise")
    name = "2026-11-30_HeLa_H2B-GFP_60x_1.4NA_timelapse_position03_deconvolved.ome.tif"
    viewer.add_image(np.zeros((64, 64), np.float32), name=name)
    panels = [cls(viewer) for cls in (DeblurWidget, FinetuneWidget, CompareWidget)]
    for panel in panels:
        viewer.window.add_dock_widget(panel, name=type(panel).__name__)
    qtbot.wait(10)
    for panel in panels:
        assert panel.minimumSizeHint().width() < 450, type(panel).__name__
    box = panels[0].layer_combo
    assert isinstance(box, LayerComboBox)
    assert box.currentText() == name and box.toolTip() == name
    assert box.width() < box.fontMetrics().horizontalAdvance(name)  # elided in the closed box
    viewer.layers[name].name = "renamed"
    assert box.toolTip() == "renamed"  # a rename keeps the row: the tooltip follows it
    viewer.layers["renamed"].name = name
    box.showPopup()
    view = box.view()
    assert view.minimumWidth() >= view.fontMetrics().horizontalAdvance(name)
    box.hidePopup()


def test_a_3d_psf_layer_is_refused_with_its_in_focus_plane_named(setup, qtbot):
    """A measured PSF is often a Z stack; the baselines take a 2D PSF. The panel says which plane is in focus (the
    brightest peak) and how to add it, in the panel's words, not the API's psf[k]."""
    from napari_deblurgan.blur.psf import gaussian_psf
    from napari_deblurgan.widgets.compare_widget import PSF_FROM_LAYER

    viewer, widget = setup
    stack = np.stack([gaussian_psf(s, size=15) for s in (3.0, 2.0, 1.0, 2.0, 3.0)])  # in focus: plane 2
    viewer.add_image(stack, name="measured PSF")
    widget.baseline_input.set_value(viewer.layers["blurred"])
    widget.psf_source.setCurrentText(PSF_FROM_LAYER)
    widget.psf_layer.set_value(viewer.layers["measured PSF"])
    n_layers = len(viewer.layers)
    widget.rl_button.click()
    assert widget.worker is None and len(viewer.layers) == n_layers
    status = widget.status.text()
    assert "is 3D (5, 15, 15)" in status and "brightest peak is 2" in status and "data[2]" in status, status
    viewer.add_image(stack[2], name="PSF in focus")  # what it says to do
    widget.psf_layer.set_value(viewer.layers["PSF in focus"])
    widget.rl_button.click()
    wait_done(qtbot, widget)
    assert any("Richardson-Lucy" in layer.name for layer in viewer.layers)


def test_the_api_says_what_to_pass_for_a_3d_psf():
    import napari_deblurgan as ndg
    from napari_deblurgan.errors import InputError

    expected = r"got a 3D one of shape \(5, 9, 9\): pass its in-focus plane, such as psf\[2\]"
    with pytest.raises(InputError, match=expected):
        ndg.wiener(np.ones((32, 32), np.float32), np.ones((5, 9, 9)))


def test_an_rgb_psf_is_said_to_be_a_picture_not_a_z_stack(setup):
    """A (Y, X, 3) PSF is a colour picture of one; the 3D-stack advice (psf[k], a row) would be wrong for it."""
    import napari_deblurgan as ndg
    from napari_deblurgan.errors import InputError
    from napari_deblurgan.widgets.compare_widget import PSF_FROM_LAYER

    picture = np.repeat(np.ones((13, 13, 1)), 3, axis=-1)
    with pytest.raises(InputError, match=r"an RGB\(A\) picture; pass a grey one, such as psf\[\.\.\., :3\]"):
        ndg.wiener(np.ones((32, 32), np.float32), picture)
    viewer, widget = setup
    viewer.add_image((picture * 255).astype(np.uint8), name="PSF picture", rgb=True)
    widget.baseline_input.set_value(viewer.layers["blurred"])
    widget.psf_source.setCurrentText(PSF_FROM_LAYER)
    widget.psf_layer.set_value(viewer.layers["PSF picture"])
    widget.wiener_button.click()
    assert widget.worker is None and "is an RGB picture" in widget.status.text()


def test_to_csv_writes_into_the_home_folder_for_a_tilde(tmp_path, monkeypatch):
    import napari_deblurgan as ndg

    monkeypatch.setenv("HOME", str(tmp_path))
    ndg.compare({"a": np.ones((16, 16), np.float32)}).to_csv("~/table.csv")
    assert (tmp_path / "table.csv").read_text().startswith("name,")


def test_an_even_sized_psf_layer_is_said_once_per_baseline(setup, qtbot, notifications):
    """The API's half-pixel warning reaches the panel's user once per run, not once per plane."""
    from napari_deblurgan.widgets.compare_widget import PSF_FROM_LAYER

    viewer, widget = setup
    viewer.add_image(np.stack([viewer.layers["blurred"].data] * 3), name="stack")
    viewer.add_image(np.ones((6, 6), np.float32), name="even PSF")
    widget.baseline_input.set_value(viewer.layers["stack"])
    widget.psf_source.setCurrentText(PSF_FROM_LAYER)
    widget.psf_layer.set_value(viewer.layers["even PSF"])
    widget.rl_iterations.setValue(2)
    widget.rl_button.click()
    wait_done(qtbot, widget)
    said = [msg for sev, msg in notifications if "half a pixel" in msg]
    assert len(said) == 1 and said[0].startswith("Compare: The PSF is 6x6 px"), said
    assert any("Richardson-Lucy" in layer.name for layer in viewer.layers)

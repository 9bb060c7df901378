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
    return [
        {h: widget.table.item(r, c).text() for c, h in enumerate(headers)} for r in range(widget.table.rowCount())
    ]


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
    widget.baseline_input.set_value(viewer.layers["blurred"])
    widget.psf_source.setCurrentText("Gaussian of sigma")
    widget.psf_sigma.setValue(1.5)
    widget.wiener_button.click()
    wait_done(qtbot, widget)
    wiener = next(layer for layer in viewer.layers if "Wiener" in layer.name)
    assert wiener.data.shape == (64, 64)

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


def test_side_by_side_grid_and_matched_contrast(setup):
    viewer, widget = setup
    widget.reference_combo.set_value(viewer.layers["truth"])
    widget.set_checked(viewer.layers["blurred"])
    widget.side_button.click()
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled
    layers = list(viewer.layers)
    assert grid.actual_shape(layers) == (1, 2)  # truth and blurred, nothing else
    assert tuple(viewer.layers["blurred"].contrast_limits) == tuple(viewer.layers["truth"].contrast_limits)
    # three images: one row, not a 2 x 2 grid with an empty corner
    viewer.add_image(viewer.layers["blurred"].data * 0.5, name="half")
    widget.set_checked(viewer.layers["half"])
    widget.side_button.click()
    assert grid.actual_shape(list(viewer.layers)) == (1, 3)


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

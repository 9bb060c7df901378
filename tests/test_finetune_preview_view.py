"""The Finetune panel's synthetic blur preview in a view that displays Z (and X or Y): only the band of rows
(columns) around the shown one that the PSF reaches is read and blurred, not the whole volume."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer


def _stack(planes: int = 4, rows: int = 200, cols: int = 48) -> np.ndarray:
    """A float32 ZYX stack with edges along both axes (so a blur changes every row and column)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:planes, :rows, :cols]
    return (500 + 3000 * ((xx // 7 + yy // 9 + zz) % 2) + rng.normal(0, 30, zz.shape)).astype(np.float32)


@pytest.mark.parametrize(
    ("key", "context"),
    [
        ((slice(None), slice(120, 121), slice(None)), 64),  # Z and X displayed: the row at Y = 120
        ((slice(None), slice(3, 4), slice(None)), 64),  # near the top edge: the band starts at row 0
        ((slice(None), slice(None), slice(30, 31)), 64),  # Z and Y displayed: the column at X = 30
        ((slice(None), slice(120, 121), slice(None)), 6),  # a band narrower than the PSF: blurred again
    ],
)
def test_a_shown_row_is_blurred_as_the_whole_volume_blurs_it(monkeypatch, key, context):
    from napari_deblurgan import synthesize_blur
    from napari_deblurgan.widgets import finetune_widget

    monkeypatch.setattr(finetune_widget, "PREVIEW_CONTEXT", context)
    stack = _stack()
    settings = {"kind": "gaussian", "strength": 3.0, "noise": None}
    blurred, psf = finetune_widget.blur_shown_part(stack, "ZYX", key, settings, 5)
    whole, whole_psf = synthesize_blur(stack, **settings, seed=5, axes="ZYX")
    np.testing.assert_array_equal(psf, whole_psf)
    assert (psf.shape[0] // 2 > context) == (context < 64)  # 25 px: 12 rows each side
    assert blurred.shape == whole[key].shape
    # the same blur up to the FFT's rounding (the band's transform has another size than the plane's)
    np.testing.assert_allclose(blurred, whole[key], rtol=0, atol=1e-3)
    assert np.abs(blurred - stack[key]).max() > 100  # blurred, not the input


def test_an_xz_views_preview_reads_a_band_of_rows_and_shows_the_row_on_view(make_napari_viewer, qtbot, monkeypatch):
    """Z and X displayed, Y on a slider: the preview blurs the band of rows around the slider's row in every
    plane (the whole volume was read and blurred) and is that row, placed where it is in the world."""
    import napari_deblurgan
    from napari_deblurgan.widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer(strict_qt="raise")
    panel = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Finetune")
    stack = _stack().astype(np.uint16)
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.25), translate=(100.0, 10.0, -3.0))
    viewer.dims.order = (1, 0, 2)  # Y on the slider, Z and X displayed
    assert tuple(viewer.dims.displayed) == (0, 2)
    viewer.dims.set_point(1, 10.0 + 0.5 * 150)  # row 150 of 200
    blurred_inputs: list[tuple[int, ...]] = []
    real = napari_deblurgan.synthesize_blur

    def recording(image, **kwargs):
        blurred_inputs.append(np.shape(image))
        return real(image, **kwargs)

    monkeypatch.setattr(napari_deblurgan, "synthesize_blur", recording)
    panel.sharp_combo.set_value(layer)
    panel.synth_radio.setChecked(True)
    panel.blur_kind.setCurrentText("gaussian")
    panel.blur_strength.setValue(2.0)
    panel.blur_noise.setValue(1e5)  # photons: little noise, to compare the blur with the whole volume's
    panel.preview_blur_button.click()
    qtbot.waitUntil(lambda: panel.preview_worker is None, timeout=60_000)
    assert blurred_inputs == [(4, 200 - (150 - 64), 48)]  # rows 86-199 of every plane, not all 200
    preview = viewer.layers["stack synthetic blur"]
    assert preview.data.shape == (4, 1, 48)
    assert preview.metadata["napari_deblurgan_start"] == (0, 150, 0)
    assert tuple(preview.translate) == (100.0, 10.0 + 0.5 * 150, -3.0) and tuple(preview.scale) == (2.0, 0.5, 0.25)
    settings, seed = panel._blur_settings(), panel.seed_spin.value()
    whole, psf = real(stack, **settings, seed=seed, axes="ZYX")
    np.testing.assert_array_equal(preview.metadata["psf"], psf)
    # the noise's gain is the band's and its draws are others: close to the whole volume's row, not equal
    difference = np.abs(preview.data.astype(float) - whole[:, 150:151].astype(float))
    assert np.median(difference) < 0.1 * np.median(np.abs(whole[:, 150:151].astype(float) - stack[:, 150:151]))

    # a 3D view displays Y too: the whole volume, as before
    viewer.dims.ndisplay = 3
    blurred_inputs.clear()
    panel.preview_blur_button.click()
    qtbot.waitUntil(lambda: panel.preview_worker is None, timeout=60_000)
    assert blurred_inputs == [(4, 200, 48)]

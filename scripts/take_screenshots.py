"""Take the screenshots of docs/quickstart-napari.md: each dock widget in use, in a real napari viewer.

Run under a display (on a headless machine: ``xvfb-run -a -s "-screen 0 1600x1000x24" python
scripts/take_screenshots.py``). It opens the plugin's sample pair (cropped to 256 x 256 so it runs in a few
minutes on a CPU), finetunes the shipped default model on it with the Finetune widget (``--finetune-base
untrained``: a small untrained unet_lite; ``--no-finetune``: no finetuning, deblur with the shipped default;
``--only-finetune``: take finetune.png alone), deblurs with the Deblur widget, adds Richardson-Lucy and
Wiener baselines and the metrics table with the Compare widget, and saves ``docs/images/*.png``.

Everything goes through the widgets' own buttons, so the pictures show what a user gets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_for(app, condition, timeout: float = 1800.0) -> None:
    """Process Qt events until ``condition()`` is true (workers report back through the event loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise TimeoutError("a widget job did not finish in time")
    for _ in range(20):  # let the last signals and repaints land
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "images",
        help="folder for the PNGs (default: docs/images, the tracked pictures; give a scratch folder to check)",
    )
    parser.add_argument("--steps", type=int, default=150, help="finetuning steps (default 150)")
    parser.add_argument("--crop", type=int, default=256, help="side of the sample crop in pixels")
    parser.add_argument("--no-finetune", action="store_true", help="deblur with the shipped default model")
    parser.add_argument(
        "--finetune-base",
        choices=("default", "untrained"),
        default="default",
        help="finetune the shipped default model (what a user does first; the default) or an untrained unet_lite",
    )
    parser.add_argument("--only-finetune", action="store_true", help="take finetune.png only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # the finetuned model file and its checkpoint folder: removed afterwards, whatever happens
    with tempfile.TemporaryDirectory(prefix="deblurgan-shots-") as workdir:
        return take(args, Path(workdir))


def take(args: argparse.Namespace, workdir: Path) -> int:
    """Drive the panels and write the PNGs into ``args.out``; scratch files go to ``workdir``."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_deblurgan.model_file import create_model
    from napari_deblurgan.widgets import sample_data
    from napari_deblurgan.widgets.compare_widget import CompareWidget
    from napari_deblurgan.widgets.deblur_widget import DeblurWidget
    from napari_deblurgan.widgets.finetune_widget import FinetuneWidget

    viewer = napari.Viewer(title="napari-deblurgan", show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()

    c = args.crop
    for data, meta, _kind in sample_data.blurred_sharp_pair():
        if meta["name"].endswith("PSF"):
            viewer.add_image(data, **meta)
        else:
            viewer.add_image(data[:c, :c], **meta)
    truth = viewer.layers["cells sharp (ground truth)"]
    blurred = viewer.layers["cells blurred"]
    truth.visible = False

    finetune = FinetuneWidget(viewer)
    deblur = DeblurWidget(viewer)
    compare = CompareWidget(viewer)

    # ---- Finetune: the shipped default (or, with --finetune-base untrained, a small unet_lite) on the pair
    ft_dock = viewer.window.add_dock_widget(finetune, name="Finetune", area="right")
    if not args.no_finetune:
        if args.finetune_base == "untrained":
            base = create_model("unet_lite", channels=1, seed=0).save(workdir / "untrained.pt")
            finetune.base_model.add_file(str(base))
        finetune.blurred_combo.set_value(blurred)
        finetune.sharp_combo.set_value(truth)
        finetune.device_combo.setCurrentIndex(max(finetune.device_combo.findData("cpu"), 0))
        finetune.preset_combo.setCurrentText("default")
        finetune.steps_spin.setValue(args.steps)
        finetune.patch_spin.setValue(64)
        finetune.batch_spin.setValue(4)
        finetune.validate_every_spin.setValue(max(args.steps // 10, 1))
        finetune.save_edit.setText(str(workdir / "cells-finetuned.pt"))
        finetune.start_button.click()
        wait_for(app, lambda: finetune.worker is None)
        viewer.reset_view()
        # the panel scrolls (it is taller than the window): show its bottom, the status line and the loss plot
        bar = finetune.scroll_area.verticalScrollBar()
        bar.setValue(bar.maximum())
        wait_for(app, lambda: True)
        viewer.screenshot(str(args.out / "finetune.png"), canvas_only=False)
        print("finetune.png", finetune.status.text())
    if args.only_finetune:
        viewer.close()
        return 0
    ft_dock.hide()

    # ---- Deblur: the finetuned model (or the default) on the blurred layer
    viewer.window.add_dock_widget(deblur, name="Deblur", area="right")
    if "finetune preview: blurred | restored | sharp" in viewer.layers:
        viewer.layers["finetune preview: blurred | restored | sharp"].visible = False
    deblur.layer_combo.set_value(blurred)
    if not args.no_finetune:
        deblur.model_combo.select(finetune.registry.entries[-1])
    deblur.run_button.click()
    wait_for(app, lambda: deblur.worker is None)
    result = viewer.layers["cells blurred deblurred"]
    viewer.layers.selection = {result}
    viewer.reset_view()
    viewer.screenshot(str(args.out / "deblur.png"), canvas_only=False)
    print("deblur.png", deblur.status.text())
    viewer.window.dock_widgets["Deblur"].parent().hide()

    # ---- Compare: baselines with the sample's PSF, metrics against the ground truth, side by side
    viewer.window.add_dock_widget(compare, name="Compare", area="right")
    compare.reference_combo.set_value(truth)
    compare.baseline_input.set_value(blurred)
    compare.rl_button.click()
    wait_for(app, lambda: compare.worker is None)
    compare.wiener_button.click()
    wait_for(app, lambda: compare.worker is None)
    compare.set_checked(blurred)
    compare.set_checked(result)
    compare.compute_button.click()
    wait_for(app, lambda: compare.worker is None)
    compare.side_by_side()
    for _ in range(20):
        app.processEvents()
    viewer.reset_view()
    viewer.screenshot(str(args.out / "compare.png"), canvas_only=False)
    print("compare.png", compare.status.text())
    for row in compare.table_result.rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The "Finetune" dock widget: teach a model the blur of the user's own images.

The widget collects the data (a blurred/sharp layer pair, or sharp images with synthetic blur) and the
training settings, then drives :func:`napari_deblurgan.iter_finetune` in a napari ``thread_worker``: every
training event is passed to the GUI thread, where it moves the progress bar, extends the live loss/PSNR plot
and refreshes the preview layer. When the run finishes or is stopped, the returned model is saved where the
user chose and joins the session's model list (so the Deblur widget offers it at once).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from ..model_file import default_model_dir
from ._common import (
    LayerComboBox,
    RoutedWarningsRun,
    avoid_triton_llvm_clash,
    axes_for_layer,
    create_relayed_worker,
    detached_from_dock,
    device_items,
    error_line,
    error_message,
    gone_note,
    layer_geometry,
    layer_pixels,
    normalize_axes_text,
    prefer_blurred,
    prefer_sharp,
    refuse,
    result_layer_kwargs,
    scrolling_layout,
    set_items,
    show_error,
    show_info,
    unique_name,
    user_error_types,
)
from .deblur_widget import ModelComboBox
from .loss_plot import LossPlot
from .model_list import ModelEntry, ModelRegistry

if TYPE_CHECKING:
    import napari

#: name of the layer that shows the current restoration of the fixed validation crop
PREVIEW_LAYER = "finetune preview: blurred | restored | sharp"
BLUR_KINDS = ("mixed", "motion", "defocus", "gaussian", "airy")
#: ``(label, precision=)`` of the precision box (devices.PRECISIONS; tests check that they agree)
PRECISION_ITEMS = (
    ("auto (bfloat16 on a GPU)", "auto"),
    ("float32", "float32"),
    ("bfloat16", "bfloat16"),
    ("float16 (GPU only)", "float16"),
)

#: The ``iter_finetune`` keywords that the API's notices and errors name, and the panel's label of the control
#: that sets each (the box's title first where the row's label alone is ambiguous): the panel says the API's
#: messages in these words (:func:`in_panel_words`). tests/test_widgets_finetune.py checks that every label is
#: the panel's and that every keyword the trainer's messages name and a control sets is here.
PANEL_LABELS: dict[str, str] = {
    "model": "base model",
    "preset": "preset",
    "steps": "steps",
    "patch_size": "patch size",
    "batch_size": "batch size",
    "learning_rate": "learning rate",
    "device": "device",
    "precision": "precision",
    "seed": "seed",
    "validate_every": "validate every",
    "validation": "validation fraction",
    "axes": "axes",
    "blur_kind": "blur kind",
    "blur_strength": "preview strength (px)",
    "noise": "preview noise",
    "perceptual_weights": "VGG-19 weights",
}

#: Advice of the API that a panel user cannot follow as worded (a keyword with no control of that name, a
#: Python value): (pattern, the panel's words, None), as the CLI's ``CLI_PHRASES``. Applied before the labels;
#: tests/test_widgets_finetune.py checks that the API still says the left side.
PANEL_PHRASES: list[tuple[str, str, str | None]] = [
    (
        r"\(set (\w+)=1 or pass perceptual_weights=<file>\)",
        r"(choose a VGG-19 weight file, e.g. torchvision's vgg19-dcbb9e9d.pth, under 'VGG-19 weights', or start "
        r"napari with \1=1 to let it download one)",
        None,
    ),
    (
        r"\(or another VGG-19 state dict\), or leave it out",
        "(or another VGG-19 state dict), or leave the field empty",
        None,
    ),
    (r"\(without resume\)", "(Start, not Resume)", None),
    (
        r"Pass resume= that folder to continue the earlier run instead\.",
        "The panel's Resume continues only its own last run; to keep that checkpoint, save to another file.",
        None,
    ),
    (
        r"Leave steps unset to finish the run's own (\S+) steps, or pass more than",
        r"Set steps to \1 to finish the run, or to more than",
        None,
    ),
    (r"pass a separate validation pair", "validate on a separate blurred/sharp pair", None),
    # the panel's validation layers take the axes field's axes: it has no control of their own
    (r", or pass its own as validation_axes\.", ".", None),
    (r"a separate validation pair", "a separate blurred/sharp pair for validation", None),
]


def in_panel_words(message: str) -> str:
    """A message of the API (a Notice, a warning, an error) with the keywords it names (``patch_size``,
    ``perceptual_weights=<file>``) said as the panel's controls (``patch size``, the ``VGG-19 weights`` field):
    the CLI's rules (:func:`napari_deblurgan.cli.with_flags`) with :data:`PANEL_LABELS` and
    :data:`PANEL_PHRASES`."""
    from ..cli import with_flags

    return with_flags(message, PANEL_LABELS, phrases=PANEL_PHRASES)


def default_model_path() -> Path:
    """A fresh, timestamped file name in :func:`default_model_dir` that no file has yet (nothing is created)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = default_model_dir() / f"finetuned-{stamp}.pt"
    count = 2
    while _taken(path):
        path = default_model_dir() / f"finetuned-{stamp}-{count}.pt"
        count += 1
    return path


def _taken(model_path: Path) -> bool:
    """Whether a run has written there: the model file, or a checkpoint in its checkpoint folder, exists (an
    empty folder holds no earlier run to keep)."""
    from ..training.checkpoint import checkpoint_path

    return model_path.exists() or checkpoint_path(checkpoint_dir_for(model_path)).exists()


def checkpoint_dir_for(model_path: Path) -> Path:
    """The resumable-checkpoint directory that belongs to a model file: ``<file stem>.checkpoint/``."""
    return model_path.with_name(model_path.stem + ".checkpoint")


class _RunControl:
    """Shared between the GUI thread and the worker: the live ``TrainingRun`` and a pending stop request.

    Stop can be clicked before the worker has created the run (model loading takes a moment); the request
    is remembered and applied as soon as the run exists.
    """

    def __init__(self) -> None:
        self.run: Any = None
        self.stop_requested = False
        self.quitting = False  # the stop came from the app quitting (napari closing), not from the panel

    def stop(self) -> None:
        self.stop_requested = True
        if self.run is not None:
            self.run.stop()


class FinetuneWidget(QWidget):
    """Dock widget that finetunes a model on layers of the viewer, with a live plot and preview."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.registry = ModelRegistry.for_viewer(viewer)
        self.worker: Any = None
        self.preview_worker: Any = None  # the synthetic blur preview being made
        self._closed = False  # the panel was closed: a preview still being made is not added
        self.control = _RunControl()
        self.last_checkpoint_dir: Path | None = None
        self._replace_confirmed: Path | None = None  # the existing file the save dialog agreed to replace
        self.last_saved: Path | None = None
        self.last_finished: Any = None
        self.preview_layer: Any = None
        self._last_run_data: dict[str, Any] | None = None  # data_kwargs() of the last run, for Resume
        self._preview_rgb = False  # the running job trains on RGB images: its 3-channel previews in colour
        self._last_saved_to: Path | None = None  # the last run's model file, for Resume
        self._pending_run: tuple[dict[str, Any], Any, Path, Path] | None = None  # the run being started
        # the layer the running job's validation crops come from: the preview is placed on its YX plane
        self._preview_source: Any = None
        self._preview_axes: str | None = None  # the running job's axes string, for the preview's YX axes
        self._last_run_source: Any = None  # the same for the last run, for Resume
        self._preview_placed = False  # the preview layer has the running job's geometry

        # ---- data
        self.pair_radio = QRadioButton("blurred + sharp pair")
        self.synth_radio = QRadioButton("sharp only — synthesise blur")
        self.pair_radio.setChecked(True)
        mode_group = QButtonGroup(self)
        mode_group.addButton(self.pair_radio)
        mode_group.addButton(self.synth_radio)
        self.blurred_combo = LayerComboBox(viewer, prefer=prefer_blurred)
        self.sharp_combo = LayerComboBox(viewer, prefer=prefer_sharp)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("Axis letters of the sharp layer (TZCYXS); pre-filled from the layer.")
        self.blur_kind = QComboBox()
        self.blur_kind.addItems(BLUR_KINDS)
        self.blur_strength = QDoubleSpinBox()
        self.blur_strength.setRange(0.0, 100.0)
        self.blur_strength.setSingleStep(0.5)
        self.blur_strength.setSpecialValueText("random")
        self.blur_strength.setToolTip(
            "Blur size in pixels (motion length, defocus radius or Gaussian sigma) for training and the "
            "preview; 'random' draws a fresh size per crop from each kind's default range."
        )
        self.blur_noise = QDoubleSpinBox()
        self.blur_noise.setRange(0.0, 1e6)
        self.blur_noise.setDecimals(0)
        self.blur_noise.setSingleStep(50)
        self.blur_noise.setSpecialValueText("realistic")
        self.blur_noise.setToolTip(
            "Poisson noise as expected photons at a bright pixel (fewer photons = noisier), for training and "
            "the preview; 'realistic' draws 30-1000 photons and 0.5-4 photons of read noise per crop."
        )
        self.preview_blur_button = QPushButton("preview synthetic blur")

        data_box = QGroupBox("training data")
        data_form = QFormLayout(data_box)
        data_form.addRow(self.pair_radio)
        data_form.addRow("blurred", self.blurred_combo)
        data_form.addRow("sharp", self.sharp_combo)
        data_form.addRow("axes", self.axes_edit)
        data_form.addRow(self.synth_radio)
        data_form.addRow("blur kind", self.blur_kind)
        data_form.addRow("preview strength (px)", self.blur_strength)
        data_form.addRow("preview noise", self.blur_noise)
        data_form.addRow(self.preview_blur_button)

        # ---- validation
        self.val_mode = QComboBox()
        self.val_mode.addItem("hold out a fraction of the crops", "fraction")
        self.val_mode.addItem("a separate blurred/sharp pair", "pair")
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.1)
        self.val_blurred_combo = LayerComboBox(viewer)
        self.val_sharp_combo = LayerComboBox(viewer)
        val_box = QGroupBox("validation")
        val_form = QFormLayout(val_box)
        val_form.addRow(self.val_mode)
        val_form.addRow("fraction", self.val_fraction)
        val_form.addRow("val. blurred", self.val_blurred_combo)
        val_form.addRow("val. sharp", self.val_sharp_combo)

        # ---- training settings
        self.base_model = ModelComboBox(self.registry)
        self.steps_spin = _spin(1, 1_000_000, 2000)
        self.patch_spin = _spin(16, 1024, 128, step=16)
        self.batch_spin = _spin(1, 256, 8)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setSpecialValueText("preset")
        self.lr_spin.setValue(0.0)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(_preset_names())
        self.device_combo = QComboBox()
        set_items(self.device_combo, device_items())
        self.precision_combo = QComboBox()
        set_items(self.precision_combo, PRECISION_ITEMS)
        self.precision_combo.setToolTip(
            "The arithmetic of the training steps (autocast). auto: bfloat16 on a GPU, float32 on the CPU (where "
            "bfloat16 is much slower). float32 on a GPU for high-SNR data that must be restored to 40 dB and more "
            "(docs/training.md, Precision); float16 needs a GPU. The saved weights are float32 either way."
        )
        self.seed_spin = _spin(0, 2**31 - 1, 0)
        self.validate_every_spin = _spin(1, 100_000, 100)
        self.validate_every_spin.setToolTip("Validation (PSNR point and preview update) every this many steps.")
        self.vgg_edit = QLineEdit()
        self.vgg_edit.setPlaceholderText("optional: torchvision's cache")
        self.vgg_edit.setToolTip(
            "A VGG-19 weight file for the perceptual loss of the default and deblurgan presets: torchvision's "
            "vgg19-dcbb9e9d.pth, or a state dict of VGG-19 or of its features. Empty: the file in torchvision's "
            "cache; without either, the critic's features stand in (a note says so). Other presets ignore it."
        )
        vgg_row = _file_row(self.vgg_edit, self._browse_vgg)
        self.save_edit = QLineEdit(str(default_model_path()))
        self._proposed_save_path = self.save_edit.text()  # replaced by a fresh name once a run has used it
        self.save_edit.setToolTip("Where the finetuned model is saved when the run finishes or is stopped.")
        save_row = _file_row(self.save_edit, self._browse_save)
        train_box = QGroupBox("training")
        train_form = QFormLayout(train_box)
        train_form.addRow("base model", self.base_model)
        train_form.addRow("preset", self.preset_combo)
        train_form.addRow("steps", self.steps_spin)
        train_form.addRow("patch size", self.patch_spin)
        train_form.addRow("batch size", self.batch_spin)
        train_form.addRow("learning rate", self.lr_spin)
        train_form.addRow("device", self.device_combo)
        train_form.addRow("precision", self.precision_combo)
        train_form.addRow("seed", self.seed_spin)
        train_form.addRow("validate every", self.validate_every_spin)
        train_form.addRow("VGG-19 weights", vgg_row)
        train_form.addRow("save model to", save_row)

        # ---- run controls
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.stop_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.resume_button.setToolTip(
            "Continue the last run from its checkpoint, on that run's layers, up to the steps above."
        )
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = LossPlot()

        layout = scrolling_layout(self)  # taller than a laptop's screen: it scrolls
        for box in (data_box, val_box, train_box):
            layout.addWidget(box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.pair_radio.toggled.connect(self._update_enabled)
        self.val_mode.currentIndexChanged.connect(self._update_enabled)
        self.sharp_combo.currentIndexChanged.connect(self._prefill_axes)
        self.preview_blur_button.clicked.connect(self.preview_synthetic_blur)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self._update_enabled()
        self._prefill_axes()

    # ---------------------------------------------------------------------------------------- UI state
    def _update_enabled(self, *_: Any) -> None:
        pair = self.pair_radio.isChecked()
        self.blurred_combo.setEnabled(pair)
        for w in (self.blur_kind, self.blur_strength, self.blur_noise, self.preview_blur_button):
            w.setEnabled(not pair)
        val_pair = self.val_mode.currentData() == "pair"
        self.val_fraction.setEnabled(not val_pair)
        self.val_blurred_combo.setEnabled(val_pair)
        self.val_sharp_combo.setEnabled(val_pair)

    def _prefill_axes(self, *_: Any) -> None:
        layer = self.sharp_combo.value()
        if layer is not None:
            try:
                self.axes_edit.setText(axes_for_layer(layer))
            except Exception:  # leave it to the user; the core says what is wrong on Start
                self.axes_edit.setText("")

    def _browse_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the finetuned model as", self.save_edit.text(), "*.pt")
        if path:
            # the dialog asked about replacing the file it returned, if that exists (not its checkpoint folder,
            # and not "old.pt" when it returned "old": that file it never looked at)
            asked = path.endswith(".pt") and Path(path).exists()
            path = path if path.endswith(".pt") else path + ".pt"
            self.save_edit.setText(path)
            self._replace_confirmed = Path(path).expanduser() if asked else None

    def _replace_agreed(self, save_to: Path) -> bool:
        """Whether a new run may replace what an earlier run saved at ``save_to``: the file dialog already asked
        about the file itself when there is no checkpoint folder beside it; else ask."""
        if self._replace_confirmed == save_to and not checkpoint_dir_for(save_to).exists():
            return True
        return self._confirm_replace(save_to)

    def _confirm_replace(self, save_to: Path) -> bool:
        """Ask before a new run replaces an earlier run's model file or checkpoint at ``save_to`` (typed by the
        user: the proposed name moves on to a fresh one by itself). Default: No."""
        from qtpy.QtWidgets import QMessageBox

        checkpoint = checkpoint_dir_for(save_to)
        what = [f"the model file {str(save_to)!r}"] if save_to.exists() else []
        if checkpoint.exists():
            what.append(f"the checkpoint folder {str(checkpoint)!r} (what Resume continues)")
        answer = QMessageBox.question(
            self,
            "Replace an earlier run?",
            f"An earlier run is saved at {' and '.join(what)}. Start a new run that replaces it?\n\n"
            "No: nothing is started; choose another file name to keep it.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _browse_vgg(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "VGG-19 weights for the perceptual loss",
            self.vgg_edit.text(),
            "PyTorch weights (*.pth *.pt);;All files (*)",
        )
        if path:
            self.vgg_edit.setText(path)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.resume_button.setEnabled(not running and self._can_resume())

    def _can_resume(self) -> bool:
        from ..training.checkpoint import checkpoint_path

        return self.last_checkpoint_dir is not None and checkpoint_path(self.last_checkpoint_dir).is_file()

    def _axes(self) -> str | None:
        return normalize_axes_text(self.axes_edit.text()) or None

    def _blur_settings(self) -> dict[str, Any]:
        """``synthesize_blur`` keyword arguments from the blur controls."""
        strength = self.blur_strength.value() or None
        noise = self.blur_noise.value() or "realistic"
        return {"kind": self.blur_kind.currentText(), "strength": strength, "noise": noise}

    # ------------------------------------------------------------------------------- synthetic preview
    def preview_synthetic_blur(self) -> None:
        """Blur what the viewer shows of the sharp layer once with the current settings and add it as a layer
        (for a visual check).

        Only the shown part is read and blurred (:func:`shown_part`): the YX plane at the sliders' position
        (every sample of an RGB image; a whole volume in a 3D view), a layer of the input's dimensions with
        length 1 along the other axes, placed on that plane. In a view that displays Z and X (or Z and Y), the
        shown part is a row (column) of every plane: only the band around it that the PSF reaches is read and
        blurred (:func:`blur_shown_part`). A large or lazy (dask, zarr) stack was read and blurred whole for one
        plane's preview. In a worker thread: a large plane takes a while, and napari must not freeze meanwhile.
        The layer is added when it is done (``self.preview_worker`` is None again then).
        """
        from ..errors import InputError

        layer = self.sharp_combo.value()
        if layer is None:
            show_error("Choose the sharp layer to blur first.")
            return
        if self.preview_worker is not None:
            show_error("The synthetic blur preview is still being made; wait for it.")
            return
        # every control is read here, in the GUI thread; the worker only computes
        settings, seed = self._blur_settings(), self.seed_spin.value()

        data = layer_pixels(layer)  # the layer is read here too; the worker only reads its array
        try:
            axes, key, offset = shown_part(self.viewer, layer, data, self._axes())
        except InputError as exc:
            show_error(in_panel_words(error_message(exc)))
            return

        def job() -> tuple[str, Any]:
            try:
                return "ok", blur_shown_part(data, axes, key, settings, seed)
            except user_error_types() as exc:
                return "error", error_message(exc)

        def done(outcome: tuple[str, Any]) -> None:
            kind, value = outcome
            if self._closed:  # the panel was closed meanwhile: add nothing behind the user's back
                return
            if kind == "error":
                show_error(in_panel_words(value))
                return
            blurred, psf = value
            name = unique_name(self.viewer, f"{layer.name} synthetic blur")
            gone = gone_note(self.viewer, layer, name)
            kwargs = result_layer_kwargs(layer, name=name)
            kwargs["translate"] = offset_translate(layer, offset)  # on the plane it comes from
            kwargs["metadata"] = {"psf": psf, "napari_deblurgan_blur": settings, "napari_deblurgan_start": offset}
            self.viewer.add_image(blurred, **kwargs)
            if gone:  # the status line belongs to training; a note says it
                show_info(f"Added {name!r}.{gone}")

        def finished() -> None:
            self.preview_worker = None
            with contextlib.suppress(RuntimeError):  # the panel's Qt objects are gone when napari closed
                self.preview_blur_button.setEnabled(not self.pair_radio.isChecked())

        self.preview_blur_button.setEnabled(False)
        self.preview_worker = create_relayed_worker(job, _in_words=in_panel_words, _warning_prefix="Finetune: ")
        self.preview_worker.returned.connect(done)
        self.preview_worker.finished.connect(finished)
        self.preview_worker.start()

    # ------------------------------------------------------------------------------------------- runs
    def training_kwargs(self) -> dict[str, Any]:
        """The ``iter_finetune`` arguments the controls describe: :meth:`data_kwargs` and the settings.

        Raises InputError when a layer is missing; everything else is checked by ``iter_finetune`` itself.
        """
        return {**self.data_kwargs(), **self.settings_kwargs()}

    def data_kwargs(self) -> dict[str, Any]:
        """What to train on, from the data and validation controls: the chosen layers' arrays (not copies;
        nothing writes to them), their axes, and the synthetic blur settings."""
        from ..errors import InputError

        sharp_layer = self.sharp_combo.value()
        if sharp_layer is None:
            raise InputError("Choose the sharp layer (add your sharp image(s) to the viewer first).")
        # the layers' arrays as they are (a dask or memory-mapped layer stays lazy: training reads crops)
        sharp = layer_pixels(sharp_layer)
        kwargs: dict[str, Any] = {"axes": self._axes()}
        if self.pair_radio.isChecked():
            blurred_layer = self.blurred_combo.value()
            if blurred_layer is None:
                raise InputError("Choose the blurred layer, or switch to 'sharp only — synthesise blur'.")
            if blurred_layer is sharp_layer:
                raise InputError("The blurred and the sharp layer are the same layer; choose two layers.")
            kwargs.update(blurred=layer_pixels(blurred_layer), sharp=sharp)
        else:
            # iter_finetune's convention: sharp images alone go in the first argument, with sharp=None
            blur = self._blur_settings()
            kwargs.update(
                blurred=sharp, sharp=None, blur_kind=blur["kind"], blur_strength=blur["strength"], noise=blur["noise"]
            )
        if self.val_mode.currentData() == "pair":
            vb, vs = self.val_blurred_combo.value(), self.val_sharp_combo.value()
            if vb is None or vs is None:
                raise InputError("Choose both validation layers, or validate on a fraction of the crops.")
            axes = kwargs["axes"]
            kwargs["validation"] = tuple(_with_axes(layer_pixels(layer), layer, axes) for layer in (vb, vs))
        else:
            kwargs["validation"] = float(self.val_fraction.value()) or None
        return kwargs

    def _validation_layer(self) -> Any:
        """The layer whose crops the run validates on, so the preview shows one of them: the validation pair's
        blurred layer, else the blurred layer of the pair, else the sharp layer (synthetic blur)."""
        if self.val_mode.currentData() == "pair":
            return self.val_blurred_combo.value()
        return self.blurred_combo.value() if self.pair_radio.isChecked() else self.sharp_combo.value()

    def settings_kwargs(self) -> dict[str, Any]:
        """How to train, from the training controls: base model, steps, crops, optimiser, device, seed."""
        from ..errors import InputError

        entry = self.base_model.value()
        if entry is None:
            raise InputError("Choose a base model to start from.")
        kwargs: dict[str, Any] = {}
        kwargs.update(
            # the source (name or file), not the loaded object: the run trains its own copy, so the
            # session's cached model of that entry stays what it was
            model=entry.source,
            steps=self.steps_spin.value(),
            patch_size=self.patch_spin.value(),
            batch_size=self.batch_spin.value(),
            learning_rate=self.lr_spin.value() or None,
            preset=self.preset_combo.currentText(),
            device=self.device_combo.currentData() or "auto",
            precision=self.precision_combo.currentData() or "auto",
            seed=self.seed_spin.value(),
            validate_every=self.validate_every_spin.value(),
            perceptual_weights=Path(vgg).expanduser() if (vgg := self.vgg_edit.text().strip()) else None,
        )
        return kwargs

    def start(self) -> None:
        """Start a new run (returns at once; training runs in a thread)."""
        self._launch(resume=False)

    def resume(self) -> None:
        """Continue the last run from its checkpoint directory."""
        if not self._can_resume():
            refuse(self.status, "There is no checkpoint of an earlier run to resume from; press Start.")
            return
        self._launch(resume=True)

    def stop(self) -> None:
        """Ask the run to stop after the current step; the model so far is saved."""
        self.control.stop()
        self.status.setText("Stopping after the current step...")

    def _launch(self, *, resume: bool) -> None:
        if self.worker is not None:
            show_error("A training run is already going; stop it first.")
            return
        try:
            # Resume continues the last run on that run's data and into that run's file, whatever the
            # controls show now (another layer would silently change what the run learns, another file
            # would part the model from its checkpoint); the training settings are read afresh
            if resume and self._last_run_data is not None:
                data, source = self._last_run_data, self._last_run_source
            else:
                data, source = self.data_kwargs(), self._validation_layer()
            self._preview_rgb = _trains_on_rgb(data)
            kwargs = {**data, **self.settings_kwargs()}
            save_to = (
                self._last_saved_to if resume and self._last_saved_to is not None else (self._save_path_for_run(resume))
            )
        except user_error_types() as exc:
            refuse(self.status, in_panel_words(error_message(exc)))
            return
        if not resume and _taken(save_to) and not self._replace_agreed(save_to):
            self.status.setText(f"Not started: {str(save_to)!r} holds an earlier run; choose another file name.")
            return
        if resume:
            assert self.last_checkpoint_dir is not None
            checkpoint_dir = self.last_checkpoint_dir
        else:
            checkpoint_dir = checkpoint_dir_for(save_to)
            self.plot.clear()
        kwargs["checkpoint_dir"] = checkpoint_dir
        kwargs["resume"] = checkpoint_dir if resume else None
        # what Resume will continue, once this run has written a checkpoint (a run that fails before its
        # first one must not replace the last good run)
        self._pending_run = (data, source, save_to, checkpoint_dir)
        self._preview_source, self._preview_placed = source, False
        self._preview_axes = data.get("axes")  # which of the layer's axes are Y and X (e.g. YXC)

        avoid_triton_llvm_clash()

        self.control = _RunControl()
        self.progress.setRange(0, 0)
        self.status.setText("Preparing the run (loading data and model)...")
        self._set_running(True)
        # the data checks' warnings (a misaligned or differently scaled pair), said as the Notices are
        self.worker = create_relayed_worker(
            _training_job,
            kwargs,
            save_to,
            self.control,
            _in_words=in_panel_words,
            _warning_prefix="Finetune: ",
            _worker_class=_training_worker_class(),
        )
        self.worker.control = self.control
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def _save_path_for_run(self, resume: bool) -> Path:
        """Where this run's model goes, checked before the training rather than after it.

        The proposed default name is replaced by a fresh one once an earlier run has written there, so a
        second Start never overwrites the first run's model (and its checkpoint); a name the user typed is
        theirs to reuse. Resume continues the last run, into its own file.
        """
        from ..atomic_files import check_writable
        from ..errors import InputError

        text = self.save_edit.text().strip()
        if not text:
            raise InputError("Enter where to save the finetuned model (a .pt file), or press ... to choose.")
        proposed = text == self._proposed_save_path
        if not resume and proposed and _taken(Path(text).expanduser()):
            text = self._proposed_save_path = str(default_model_path())
            self.save_edit.setText(text)
        save_to = Path(text).expanduser()
        if save_to.is_dir():  # before the suffix is added: "/tmp" would otherwise become "/tmp.pt"
            raise InputError(
                f"{str(save_to)!r} is a folder; give a file name inside it, e.g. {str(save_to / 'finetuned.pt')!r}."
            )
        if save_to.suffix != ".pt":
            save_to = save_to.with_name(save_to.name + ".pt")  # "cells.v2" -> "cells.v2.pt", as the dialog does
        try:
            save_to.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"Cannot create the folder {str(save_to.parent)!r}: {exc.strerror or exc}.") from None
        return check_writable(save_to)

    # -------------------------------------------------------------------------------- event handling
    def _on_event(self, event: Any) -> None:
        from ..training.events import CheckpointSaved, Finished, Notice, Preview, Started, Step, Validation

        if isinstance(event, Started):
            self.progress.setRange(0, max(event.total_steps, 1))
            self.progress.setValue(event.start_step)
            self.status.setText(
                f"Training {event.architecture} on {event.device} ({event.preset} preset, "
                f"{event.train_samples}; validation: {event.validation_samples})."
            )
        elif isinstance(event, Step):
            self.progress.setRange(0, max(event.total_steps, 1))
            self.progress.setValue(event.step)
            losses = event.losses
            # "total" is the generator's weighted loss; older/other presets may only list the terms
            generator = losses.get("total")
            if generator is None:
                generator = sum(v for k, v in losses.items() if k not in ("critic", "wasserstein", "gradient_penalty"))
            critic = losses.get("critic")  # absent for critic-free presets ("content"): a gap in the plot
            self.plot.add_step(event.step, generator, critic)
        elif isinstance(event, Validation):
            self.plot.add_validation(event.step, event.psnr)
            self.status.setText(
                f"step {event.step}: validation PSNR {event.psnr:.2f} dB (blurred input {event.psnr_input:.2f} dB)"
            )
        elif isinstance(event, Preview):
            self._show_preview(event)
        elif isinstance(event, CheckpointSaved):
            if self._pending_run is not None:  # this run has a checkpoint: Resume continues it from now on
                self._last_run_data, self._last_run_source, self._last_saved_to, self.last_checkpoint_dir = (
                    self._pending_run
                )
                self._pending_run = None
            self.last_checkpoint_dir = Path(event.path) if Path(event.path).is_dir() else Path(event.path).parent
        elif isinstance(event, Notice):
            show_info(f"Finetune: {in_panel_words(event.message)}")
        elif isinstance(event, Finished):
            self.last_finished = event

    def _show_preview(self, event: Any) -> None:
        """Blurred | restored | sharp crop side by side in one layer, replaced at every validation.

        Grey for a one-channel model; in colour for a 3-channel model trained on RGB images (axes ending in
        S), whose preview carries every channel as (C, Y, X); a stack with a channel slider otherwise. Contrast
        0..1 is each channel's percentile range of the blurred crop (the model's normalised units). The crop is
        a piece of one YX plane of the run's validation layer: the preview has that plane's scale and orientation
        (:func:`layer_geometry`), so it is drawn at its input's size and units, not at unit scale, and it sits
        just below the plane, where it hides none of the image.
        """
        parts = [np.asarray(part, dtype=np.float32) for part in (event.input, event.image, event.target)]
        tile = np.concatenate(parts, axis=-1)  # (Y, 3X), or (C, Y, 3X)
        # colour only for RGB images: three fluorescence channels are a stack with a slider, as the user's layer
        rgb = tile.ndim == 3 and tile.shape[0] == 3 and self._preview_rgb
        if rgb:
            tile = np.ascontiguousarray(np.moveaxis(tile, 0, -1))  # napari's RGB layout: (Y, 3X, 3)
        layer = self.preview_layer
        shown = layer is not None and layer in self.viewer.layers
        source = self._preview_source
        geometry = layer_geometry(source, tile.ndim - rgb, self._preview_axes, below=True) if source is not None else {}
        if shown and bool(layer.rgb) == rgb and layer.data.ndim == tile.ndim:
            layer.data = tile
            layer.name = PREVIEW_LAYER
            if not self._preview_placed:  # the layer of an earlier run, whose data may have had another geometry
                for key, value in geometry.items():
                    setattr(layer, key, value)
        else:
            if shown:  # an earlier run's model had another number of channels
                self.viewer.layers.remove(layer)
            look = {"rgb": True} if rgb else {"rgb": False, "colormap": "gray"}
            self.preview_layer = self.viewer.add_image(
                tile, name=PREVIEW_LAYER, contrast_limits=(0.0, 1.0), **look, **geometry
            )
        self._preview_placed = True
        self.preview_layer.metadata["step"] = event.step

    def _on_returned(self, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        if kind == "error":
            message = in_panel_words(value)
            self.status.setText(message)
            show_error(message)
            return
        if kind == "nothing":
            self.status.setText(value)
            show_info(f"Finetune: {value}")
            return
        if kind == "failed":  # the run failed after some steps: its model so far is saved and listed
            message, path, model = value
            message = in_panel_words(message)
            self.last_saved = path
            self._last_entry = self.registry.add_finetuned(path, model)
            self.status.setText(message)
            show_error(f"{message} It is in the Deblur widget's model list.")
            return
        path, model, finished, instead = value
        self.last_saved = path
        entry: ModelEntry = self.registry.add_finetuned(path, model)
        how = "stopped" if finished is not None and finished.stopped else "finished"
        best = f", best validation PSNR {finished.best_psnr:.2f} dB" if finished and finished.best_psnr else ""
        self.status.setText(f"Run {how} at step {finished.step if finished else '?'}{best}; saved to {path}{instead}.")
        show_info(f"Finetuned model saved to {path}{instead}; it is now in the Deblur widget's model list.")
        self._last_entry = entry

    def _on_errored(self, exc: BaseException) -> None:
        """An unexpected error that ended the run before a model could be saved (napari's error notification,
        from superqt's worker, shows it with its traceback): the status line must not go on saying "Training"."""
        with contextlib.suppress(RuntimeError):  # the panel's Qt objects are gone when napari closed
            self.status.setText(f"Training failed ({error_line(exc)}); no model was saved.")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def changeEvent(self, event: Any) -> None:
        """napari's close button takes the panel out of its dock (``setParent(None)``) without closing it, so
        that counts as closing: it stops a running training."""
        if detached_from_dock(self, event):  # also keeps self._closed
            self.control.stop()
        super().changeEvent(event)

    def closeEvent(self, event: Any) -> None:
        """Closing the dock stops a running training (the model so far is still saved)."""
        self.control.stop()
        self._closed = True
        super().closeEvent(event)


def _file_row(edit: QLineEdit, browse: Any) -> QHBoxLayout:
    """A file name box with its "..." button, which calls ``browse`` (a file dialog)."""
    button = QPushButton("...")
    button.setMaximumWidth(30)
    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(button)
    return row


def _with_axes(array: Any, layer: Any, axes: str | None) -> Any:
    """A validation layer's array as a view with the training ``axes`` (one axes box serves both): a YX pair
    that validates a ZYX or TZYX stack gets length-1 axes where its own axes lack the stack's (a 2-D validation
    pair for a 3-D stack was refused, its axes "wrong"). Anything else is left as it is, for the API to judge."""
    if axes is None or len(axes) == array.ndim:
        return array
    try:
        own = axes_for_layer(layer)
    except Exception:  # the API says what is wrong with it
        return array
    missing = [letter for letter in axes if letter not in own]
    if len(own) != array.ndim or [a for a in axes if a in own] != list(own) or set(missing) & set("YXCS"):
        return array
    try:
        return array[tuple(None if letter in missing else slice(None) for letter in axes)]
    except Exception:  # an array type that cannot add axes in a view (zarr): the API says what is wrong
        return array


def _training_worker_class() -> type:
    """A ``GeneratorWorker`` whose ``quit()`` stops the run after the current step and lets it save.

    When napari (or any Qt app) quits, ``WorkerBase.await_workers`` calls ``quit()`` on every worker and
    waits for their threads. A plain generator worker then abandons its generator at the next event, so the
    training's model would never be saved; here quitting is the same cooperative stop as the Stop button,
    and the wait lasts until the model is on disk (one step, then the save).
    """
    from napari.qt.threading import GeneratorWorker

    class TrainingWorker(RoutedWarningsRun, GeneratorWorker):
        control: _RunControl | None = None

        def quit(self) -> None:
            if self.control is None:  # not wired up yet: the plain abort is all there is to do
                super().quit()
                return
            self.control.quitting = True
            self.control.stop()

    return TrainingWorker


def _training_job(kwargs: dict[str, Any], save_to: Path, control: _RunControl):
    """Worker-thread body (a generator): yields every training event, then saves the model.

    Returns ``("ok", (path, model, finished_event, instead))``, ``("error", message)`` for errors the user can
    fix before any step trained, ``("nothing", message)`` for a run stopped before its first step, or
    ``("failed", (message, path, model))`` for a run that failed after training some steps (unreadable data in
    a later plane, a device error), whose model so far is saved as a stop would save it (its traceback, for an
    error that is not the user's, goes to stderr), or ``("error", message)`` where that model so far is still
    the starting model, which is not saved. An unexpected error that leaves no model saved (before any step
    trained, or a save that failed too) propagates to napari's error report. The save
    (:func:`~napari_deblurgan.training.saving.save_trained_model`, as the CLI's) goes where it can when
    ``save_to`` cannot take it (a full disk), and ``instead`` says why ("" where it went to ``save_to``).
    """
    from .. import iter_finetune
    from ..training.saving import save_trained_model, stopped_before_the_first_step

    kwargs = dict(kwargs)
    blurred = kwargs.pop("blurred")
    checkpoint_dir = kwargs.get("checkpoint_dir")
    finished = None
    run = None
    trained = False
    try:
        run = iter_finetune(blurred, **kwargs)
        # the panel shows every Notice itself: not again as a TrainingNoticeWarning in the terminal (and napari's
        # notifications); a warnings filter would be process-wide, and this is a worker thread
        run.notice_warnings = False
        control.run = run
        if control.stop_requested:
            run.stop()
        for event in run:
            name = type(event).__name__
            trained = trained or name == "Step"
            if name == "Finished":
                finished = event
            yield event
        if stopped_before_the_first_step(finished):
            return "nothing", "Stopped before the first step: nothing was trained, so no model was saved."
        final = finished.model if finished is not None else run.model
        # no mkdir of save_to's folder here: where it cannot be made (a drive unmounted during the run, a file
        # where the folder was), save_trained_model saves to its fallbacks instead and says why
        path, not_written = save_trained_model(final, save_to, checkpoint_dir)
    except Exception as exc:
        saved = _save_model_so_far(run, trained, save_to, checkpoint_dir)
        user = isinstance(exc, user_error_types())
        if not user and saved is None:
            # nothing trained, or the model so far could not be saved: napari's error report (with the
            # traceback), as for any bug; the panel's status line says the run failed
            raise
        if not user:
            # the panel shows one line; the whole traceback is for a bug report
            traceback.print_exception(exc, file=sys.stderr)
        message = error_message(exc) if user else f"Training failed ({error_line(exc)})."
        if isinstance(saved, tuple):
            # any error, a device's (a CUDA fault, out of memory) too: the run's work is saved and listed, and
            # the status line says what failed; a note on a raised error reached no one (napari shows none)
            return "failed", (f"{message} The model so far is saved to {saved[0]}.", *saved)
        if saved is not None:  # a reason no model was written (the model so far is the starting one)
            return "error", f"{message} {saved}"
        return "error", message
    if control.quitting:  # the app is closing: no panel will show where the model went
        print(f"napari-deblurgan: training stopped as napari closed; the model is saved to {path}", file=sys.stderr)
    instead = f" (could not write {str(save_to)!r}: {not_written})" if not_written else ""
    return "ok", (Path(path), final, finished, instead)


def _save_model_so_far(run: Any, trained: bool, save_to: Path, checkpoint_dir: Any) -> tuple[Path, Any] | str | None:
    """After a run failed: its model so far (the best validated weights, or the latest whole step's without
    validation) saved where :func:`_training_job` would have saved it, as ``(path, model)``; None where no step
    trained (the base model is already a file) or nothing could be saved (a checkpoint, if any, keeps the run);
    a sentence saying why no model was written where the model so far is the starting one
    (:func:`~napari_deblurgan.training.saving.why_not_saved_after_a_failure`), which under the chosen name would
    pass for a finetuned one."""
    if run is None or not trained:
        return None
    from ..training.saving import save_trained_model, why_not_saved_after_a_failure

    try:
        model = run.model
        unsaved = why_not_saved_after_a_failure(model)
        if unsaved is not None:
            return f"{unsaved[0].upper()}{unsaved[1:]}."
        # no mkdir of save_to's folder: save_trained_model falls back elsewhere where it cannot be made
        path, _ = save_trained_model(model, save_to, checkpoint_dir)
    except Exception:  # the failure being reported is the one the user must see
        return None
    return path, model


def _spin(low: int, high: int, value: int, *, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def _preset_names() -> list[str]:
    """Training presets from the core (``default`` first); torch-free."""
    from ..training.presets import list_presets

    names = list_presets()
    return sorted(names, key=lambda n: n != "default")


def _trains_on_rgb(data: dict[str, Any]) -> bool:
    """Whether a run's training images are RGB (their axes, given or inferred as deblur() infers them, end in
    S), so that its 3-channel previews are shown in colour."""
    from ..axes import resolve_axes

    try:
        return resolve_axes(np.shape(data["blurred"]), data.get("axes")).endswith("S")
    except Exception:  # axes the run itself will refuse, with its own message
        return False


def shown_part(
    viewer: napari.Viewer, layer: Any, data: Any, axes: str | None
) -> tuple[str, tuple[slice, ...], tuple[int, ...]]:
    """What the synthetic blur preview blurs of ``layer`` (its pixels ``data``): the part the viewer shows.

    Returns ``(axes, key, start)``: the axes string of ``data`` (``axes``, or inferred from its shape; an
    InputError when it does not fit), ``data[key]`` (every axis kept, with length 1 along the axes that a
    slider sets: the YX plane at the sliders' position, rounded as napari rounds it, with all of an RGB
    image's samples; an axis that the viewer displays, as Z in a 3D view, whole) and ``start``, the first
    index along each of the layer's dimensions (the data's, less an RGB layer's samples). Y and X are whole
    unless the view does not display them (Z and X displayed: the row at the Y slider), as any other axis."""
    from ..blur.synthesize import resolve_image_axes

    axes = resolve_image_axes(data, axes)
    shape = tuple(data.shape)
    ndim = layer.ndim  # the layer's dimensions: data axes without an RGB layer's trailing samples
    position = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    offset = viewer.dims.ndim - ndim  # napari aligns a layer's dimensions with the trailing world ones
    displayed = {w - offset for w in viewer.dims.displayed if w >= offset}
    key: list[slice] = []
    start: list[int] = []
    for i, letter in enumerate(axes):
        if letter == "S" or i >= ndim or i in displayed:
            key.append(slice(None))
            start.append(0)
        else:
            index = int(np.clip(np.round(position[i]), 0, shape[i] - 1))
            key.append(slice(index, index + 1))
            start.append(index)
    return axes, tuple(key), tuple(start[:ndim])


#: Rows (columns) of context read on each side of a shown row (column) for the blur preview: more than the
#: default PSFs reach (motion up to 25 px, Airy rings ~20 px); a larger PSF is blurred again with its reach.
PREVIEW_CONTEXT = 64


def blur_shown_part(
    data: Any, axes: str, key: tuple[slice, ...], settings: dict[str, Any], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``synthesize_blur(data[key])`` of the part :func:`shown_part` chose: ``(blurred, psf)``.

    A shown row or column (Y or X of length 1 in ``key``: a view that displays Z and X) is blurred from the
    band of rows or columns around it that the PSF reaches, not from the whole planes, and cut back to that
    row: the same blur as the whole planes' there (the band is reflect-padded only where it is cut, which the
    PSF does not reach; at the image's edge as the whole plane is). The PSF is drawn from ``seed`` before
    anything depends on the image, so it is the whole image's. The noise's gain is the band's (for a YX
    view it is the plane's), so the noise level may differ a little from the whole volume's, as may pixels
    next to "no data" ones (which blur as the band's low percentile, not the plane's)."""
    from .. import synthesize_blur

    banded = [i for i, letter in enumerate(axes) if letter in "YX" and key[i] != slice(None)]
    strength = settings.get("strength") or 0
    context = max(PREVIEW_CONTEXT, int(np.ceil(strength)))  # a band wider than the strength that is asked for
    while True:
        read, cut = list(key), [slice(None)] * len(key)
        for i in banded:
            index, size = key[i].start, int(data.shape[i])
            read[i] = slice(max(0, index - context), min(size, index + 1 + context))
            cut[i] = slice(index - read[i].start, index - read[i].start + 1)
        # data[read] of a dask array is lazy: np.asarray computes the blocks of the shown part only
        blurred, psf = synthesize_blur(np.asarray(data[tuple(read)]), **settings, seed=seed, axes=axes)
        whole = all(read[i] == slice(0, int(data.shape[i])) for i in banded)
        if whole or max(psf.shape) // 2 <= context:
            return blurred[tuple(cut)], psf
        context = max(psf.shape)  # a PSF reaching beyond the band: again, with a band it does not leave


def offset_translate(layer: Any, start: tuple[int, ...]) -> tuple[float, ...]:
    """The ``translate`` that puts a part of ``layer``'s data that starts at index ``start`` (one per layer
    dimension) where that part is in the world: the layer's own transform of ``start`` (scale, rotation and
    shear included)."""
    from napari.utils.transforms import CompositeAffine

    physical = CompositeAffine(
        scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear, ndim=layer.ndim
    )
    return tuple(float(v) for v in physical(np.asarray(start, dtype=float)))

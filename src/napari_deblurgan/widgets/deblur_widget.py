"""The "Deblur" dock widget: run a model on an image layer and add the result as a new layer.

Everything the widget does to the image goes through :func:`napari_deblurgan.deblur`; the widget only
collects its arguments, runs it in a napari ``thread_worker`` (so the viewer stays responsive), relays
``progress``/``cancel`` and adds the result layer. The input layer is only read.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..inputs import is_dask
from ._common import (
    LayerComboBox,
    ProgressRelay,
    avoid_triton_llvm_clash,
    axes_for_layer,
    create_cancellable_worker,
    create_relayed_worker,
    detached_from_dock,
    device_items,
    error_line,
    error_message,
    gone_note,
    layer_pixels,
    normalize_axes_text,
    prefer_blurred,
    qt_object_alive,
    refuse,
    result_layer_kwargs,
    set_items,
    show_error,
    show_info,
    unique_name,
    user_error_types,
)
from .model_list import ModelEntry, ModelRegistry

if TYPE_CHECKING:
    import napari

#: data of the "from file..." item of the model picker
_FROM_FILE = "__from_file__"


#: The ``deblur`` keywords its messages name, and the label of the panel's control that sets each: the panel says
#: the API's errors in these words (:func:`in_panel_words`, the rules of the CLI's ``with_flags``).
PANEL_LABELS: dict[str, str] = {
    "axes": "axes",
    "tile_size": "tile size",
    "overlap": "tile overlap",
    "context_padding": "border context",
    "self_ensemble": "flip/rotate ensemble",
    "normalize": "intensity scaling",
    "device": "device",
}

#: Advice of the API's errors and warnings that a panel user cannot follow as worded (Python on an array, a keyword to
#: leave unset or pass): (pattern, the panel's words, None). tests/test_widgets_deblur.py checks that the API still
#: says the left side.
_ACTIVE = "viewer.layers.selection.active.data"
PANEL_PHRASES: list[tuple[str, str, str | None]] = [
    (
        r"convert to an integer or float dtype \(e\.g\. image\.astype\('float32'\)\)",
        f"convert the layer to an integer or float type first (in napari's console, "
        f"viewer.add_image({_ACTIVE}.astype('float32')) adds a float copy of the selected layer)",
        None,
    ),
    (
        r"replace them first, e\.g\. np\.nan_to_num\(image, nan=0\.0\)",
        f"replace them first (in napari's console, import numpy as np; viewer.add_image(np.nan_to_num({_ACTIVE}, "
        "nan=0.0)) adds a copy of the selected layer with 0 for them)",
        None,
    ),
    (r"pass axes, e\.g\. axes='([A-Z]+)'", r"write them in the axes field, e.g. \1", None),
    (r"pass axes with the right channel axis", "write the axes with the right channel axis in the axes field", None),
    (r"check the axes argument", "check the axes field", None),
    (r"(tile_size >= \d+.*), or leave it unset", r"\1, or set it to auto", None),
    (r"or leave it unset for the model's own setting", "or set it to model's", None),
    # warnings: tiles that repeat work, an overlap below the seamless one, an RGBA alpha that looks like a channel
    (r"or leave tile_size unset", "or set tile size to auto", None),
    (r"leave overlap unset for seamless tiles", "set tile overlap to auto for seamless tiles", None),
    (r"pass axes='([A-Z]+)'", r"write \1 in the axes field", None),
]


def in_panel_words(message: str) -> str:
    """An error or warning of :func:`napari_deblurgan.deblur` in the panel's words: its controls' labels for the
    keywords it names (``tile_size`` -> ``tile size``), and its own advice where the API's is Python."""
    from ..cli import with_flags

    return with_flags(message, PANEL_LABELS, phrases=PANEL_PHRASES)


def for_layer(message: str, layer: Any) -> str:
    """A message in the panel's words (:func:`in_panel_words`) whose console advice names the layer the job ran
    on, at full resolution (level 0 of a pyramid), instead of the selected layer, which may be another one (or,
    for a pyramid, ``np.asarray`` of it its coarsest level)."""
    data = f"viewer.layers[{layer.name!r}].data" + ("[0]" if getattr(layer, "multiscale", False) else "")
    return message.replace(_ACTIVE, data).replace("of the selected layer", f"of {layer.name!r}")


class ModelComboBox(QComboBox):
    """Model picker: the session's models (see :class:`ModelRegistry`) and a "from file..." item.

    Choosing "from file..." opens a file dialog; the chosen file joins the registry (so the Finetune
    widget's base-model picker offers it too) and becomes the selection.
    """

    def __init__(self, registry: ModelRegistry, parent: QWidget | None = None, *, from_file: bool = True):
        super().__init__(parent)
        self._registry = registry
        self._from_file = from_file
        self._last_index = 0
        self.refresh()
        registry.changed.connect(self.refresh)
        self.destroyed.connect(lambda *_: registry.changed.disconnect(self.refresh))
        self.activated.connect(self._on_activated)

    def refresh(self) -> None:
        """Re-read the registry, keeping the selection."""
        items: list[tuple[str, Any]] = [(entry.label, entry) for entry in self._registry.entries]
        if self._from_file:
            items.append(("from file...", _FROM_FILE))
        set_items(self, items)

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) != _FROM_FILE:
            self._last_index = index
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a napari-deblurgan model", "", "Models (*.pt)")
        if path:
            self.add_file(path)
        else:
            self.setCurrentIndex(self._last_index)

    def add_file(self, path: str) -> ModelEntry:
        """Add a model file to the session's list and select it (what "from file..." does after its dialog)."""
        entry = self._registry.add_file(path)
        self.select(entry)
        return entry

    def select(self, entry: ModelEntry) -> None:
        """Select ``entry`` (it must be in the registry)."""
        for i in range(self.count()):
            if self.itemData(i) is entry:
                self.setCurrentIndex(i)
                self._last_index = i
                return
        raise ValueError(f"{entry.label!r} is not in the model list")

    def value(self) -> ModelEntry | None:
        """The selected model entry (None while "from file..." is showing)."""
        data = self.currentData()
        return data if isinstance(data, ModelEntry) else None


class TileSizeSpinBox(QSpinBox):
    """Tile edge in pixels: 0 ('auto') or at least :meth:`smallest` px, the smallest tile the chosen model can
    use (``inference.tiling.minimum_tile_size``; 0 while it is not known).

    A size below it can only fail, so it is not kept: a typed or set one is raised to the smallest (with
    ``raised(asked, given)`` emitted so the panel can say so), and a smallest that grows (another model, a
    larger overlap) raises the size with it. The up arrow from 'auto' goes to :meth:`first`, the smallest
    size whose seamless overlap costs at most 4x the work (twice the overlap): the smallest size that works
    computes every pixel 50-500x on large planes, no sensible first offer. Below it the arrows step down to
    the smallest, then to 'auto'.
    """

    raised = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._smallest = 0
        self._first = 0
        self.setRange(0, 8192)
        self.setSingleStep(64)
        self.setSpecialValueText("auto")
        # typed digits become the value when editing ends, not one by one ('1280' would pass through 1 and 12)
        self.setKeyboardTracking(False)
        self.valueChanged.connect(self._raise_to_smallest)

    def smallest(self) -> int:
        """The smallest tile size offered above 'auto' (0: no limit known)."""
        return self._smallest

    def first(self) -> int:
        """The size the up arrow goes to from 'auto' (0: no limit known)."""
        return self._first

    def set_smallest(self, size: int, first: int | None = None) -> None:
        """Offer no tile below ``size`` px (0: no limit); raises the current size when it is below. ``first``
        (default ``size``): where the up arrow goes from 'auto'."""
        self._smallest = max(0, min(int(size), self.maximum()))
        self._first = max(self._smallest, min(int(size if first is None else first), self.maximum()))
        self._raise_to_smallest(self.value())

    def _raise_to_smallest(self, value: int) -> None:
        if 0 < value < self._smallest:
            self.setValue(self._smallest)
            self.raised.emit(value, self._smallest)

    def stepBy(self, steps: int) -> None:
        value = self.value()
        target = value + steps * self.singleStep()
        if value == 0 and steps > 0:  # 'auto' -> the first sensible size
            target = max(self._first, target)
        elif 0 < target < self._smallest:  # below the smallest: to it, or from it down to 'auto'
            target = 0 if steps < 0 and value <= self._smallest else self._smallest
        self.setValue(max(self.minimum(), min(target, self.maximum())))


class DeblurWidget(QWidget):
    """Dock widget that deblurs an image layer with a chosen model (in a background thread)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.registry = ModelRegistry.for_viewer(viewer)
        self.worker: Any = None
        self._cancel = threading.Event()
        self._relay = ProgressRelay(self)
        self._relay.progressed.connect(self._on_progress)

        self.layer_combo = LayerComboBox(viewer, prefer=prefer_blurred)
        self.model_combo = ModelComboBox(self.registry)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip(
            "Axis letters of the layer's data, slowest first: T (time), Z, C (channel), Y, X, S (RGB samples). "
            "Pre-filled from the layer; edit when napari guessed wrong (e.g. 'CYX' for a 3-channel stack)."
        )
        self.tile_spin = TileSizeSpinBox()
        self._tile_tip = (
            "Tile edge in pixels; 'auto' picks by device. Smaller tiles use less memory but each keeps the "
            "model's seamless overlap, so small tiles repeat work (a warning says how much)."
        )
        self.tile_spin.setToolTip(self._tile_tip)
        self._model_loads: dict[int, Any] = {}  # id(entry) -> worker reading that model for its smallest tile
        self._tile_note = ""  # what the panel said when it last raised the tile size
        self._job_tile_note = ""  # that note, when it was said as the running job started
        self._closed = False  # the panel was closed: a job that ends anyway adds nothing
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(-1, 1024)
        self.overlap_spin.setSpecialValueText("auto")
        self.overlap_spin.setValue(-1)
        self.overlap_spin.setToolTip("Overlap between tiles in pixels; 'auto' uses the model's receptive field.")
        self.overlap_spin.setKeyboardTracking(False)  # the smallest tile follows the overlap typed, not its digits
        self.context_spin = QSpinBox()
        self.context_spin.setRange(-1, 512)
        self.context_spin.setSpecialValueText("model's")
        self.context_spin.setValue(-1)
        self.context_spin.setToolTip(
            "Pixels of mirrored image added around the border before deblurring; 'model's' uses the setting "
            "measured for the model's weights (0: none, as the model saw in training)."
        )
        self.ensemble_check = QCheckBox("8x slower, a little better")
        self.ensemble_check.setToolTip(
            "Deblur every tile in its 8 flipped/rotated versions and average them: averages out errors that "
            "depend on the image's orientation. Gains are in docs/model-card.md ('Self-ensemble')."
        )
        self.normalize_combo = QComboBox()
        self.normalize_combo.addItem("per plane", "plane")
        self.normalize_combo.addItem("local (robust to bright objects)", "local")
        self.normalize_combo.setToolTip(
            "How intensities are scaled for the model: by each plane's percentiles, or by those of 128 px "
            "blocks, interpolated, so that a bright object (debris, a saturated cell) sets the scale of its own "
            "neighbourhood only. See docs/model-card.md, 'Limitations'."
        )
        self.device_combo = QComboBox()
        set_items(self.device_combo, device_items())

        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.layer_combo)
        form.addRow("model", self.model_combo)
        form.addRow("axes", self.axes_edit)
        form.addRow("tile size", self.tile_spin)
        form.addRow("tile overlap", self.overlap_spin)
        form.addRow("border context", self.context_spin)
        form.addRow("flip/rotate ensemble", self.ensemble_check)
        form.addRow("intensity scaling", self.normalize_combo)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.layer_combo.currentIndexChanged.connect(self._prefill_axes)
        self.model_combo.currentIndexChanged.connect(self._update_smallest_tile)
        # a finetuned model re-saved to its file replaces the entry's model, which may be another architecture
        self.registry.changed.connect(self._update_smallest_tile)
        self.destroyed.connect(lambda *_: self.registry.changed.disconnect(self._update_smallest_tile))
        self.overlap_spin.valueChanged.connect(self._update_smallest_tile)
        self.tile_spin.raised.connect(self._on_tile_raised)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._prefill_axes()
        self._update_smallest_tile()

    # ------------------------------------------------------------------------------------------ helpers
    def _prefill_axes(self, *_: Any) -> None:
        layer = self.layer_combo.value()
        if layer is None:
            return
        try:
            self.axes_edit.setText(axes_for_layer(layer))
        except Exception:  # an odd layer: leave the box for the user, deblur() will say what is wrong
            self.axes_edit.setText("")

    def _overlap(self) -> int | None:
        return None if self.overlap_spin.value() < 0 else self.overlap_spin.value()

    def _update_smallest_tile(self, *_: Any) -> None:
        """Make the tile box offer only sizes the chosen model can use with the chosen overlap.

        The model's stride and receptive field come from the model itself: a model not read yet is read in a
        worker thread (the entry keeps it, so Run does not read it again), and until then any size is offered
        (deblur() still refuses one too small, saying the smallest that works). A model that cannot be read is
        left to Run to report.
        """
        if self._tile_note and self.status.text() == self._tile_note:
            self.status.setText("")  # said for the model and overlap before: no longer true (raised anew below)
        self._tile_note = ""
        entry = self.model_combo.value()
        if entry is None:
            return
        if entry.model is None:
            self._load_for_tiles(entry)
            return
        from ..inference.tiling import default_overlap, minimum_tile_size, round_up

        model = entry.model
        radius, stride = int(model.receptive_radius), int(model.stride)
        smallest = minimum_tile_size(radius, stride, self._overlap())
        overlap = default_overlap(radius, stride) if self._overlap() is None else round_up(self._overlap(), stride)
        first = max(smallest, 2 * overlap)  # the overlap's extra work at most 4x
        self.tile_spin.setToolTip(
            f"{self._tile_tip} The smallest tile {entry.label} can use here: {smallest} px; from {first} px "
            "the overlap costs at most 4x the work."
        )
        self.tile_spin.set_smallest(smallest, first)

    def _load_for_tiles(self, entry: ModelEntry) -> None:
        if id(entry) in self._model_loads:
            return
        avoid_triton_llvm_clash()  # the worker imports torch, as every job launcher of the panels does
        worker = create_relayed_worker(_load_quietly, entry, _in_words=in_panel_words, _warning_prefix="Deblur: ")
        self._model_loads[id(entry)] = worker
        worker.returned.connect(self._on_model_loaded)
        worker.finished.connect(functools.partial(self._model_loads.pop, id(entry), None))
        worker.start()

    def _on_model_loaded(self, entry: ModelEntry | None) -> None:
        if entry is not None and entry is self.model_combo.value():
            self._update_smallest_tile()

    def _on_tile_raised(self, asked: int, given: int) -> None:
        entry = self.model_combo.value()
        model = f"{entry.label}" if entry is not None else "this model"
        overlap = "its seamless overlap" if self._overlap() is None else f"an overlap of {self._overlap()} px"
        self._tile_note = (
            f"Tile size {asked} px is too small for {model} with {overlap}; set to {given} px, the smallest that "
            "works ('auto' is below it)."
        )
        if self.worker is None:  # a running job's line stays: the new size is for the next run, not this one
            self.status.setText(self._tile_note)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    # ------------------------------------------------------------------------------------------- actions
    def run(self) -> None:
        """Start deblurring the selected layer (returns at once; the work runs in a thread)."""
        if self.worker is not None:
            show_error("A deblur job is already running; cancel it or wait for it to finish.")
            return
        layer = self.layer_combo.value()
        if layer is None:
            refuse(self.status, "Choose an image layer to deblur (add one with File > Open or File > Open Sample).")
            return
        entry = self.model_combo.value()
        if entry is None:
            refuse(self.status, "Choose a model (or 'from file...' to open a .pt model file).")
            return
        axes = normalize_axes_text(self.axes_edit.text()) or None
        self._tile_note = ""
        for box in (self.overlap_spin, self.tile_spin):  # a size still being typed counts (and is checked)
            box.interpretText()
        tile = self.tile_spin.value() or None
        hint = f" {self._tile_note}" if self._tile_note else ""  # the size was raised just now: say so still
        self._job_tile_note = hint  # and again with the result, which replaces this line
        overlap = self._overlap()
        context = None if self.context_spin.value() < 0 else self.context_spin.value()
        device = self.device_combo.currentData() or "auto"

        avoid_triton_llvm_clash()

        self._cancel = threading.Event()
        self.progress.setRange(0, 0)  # busy until the first tile batch reports
        self.status.setText(f"Deblurring {layer.name!r} with {entry.label}...{hint}")
        self._set_running(True)
        hooks: dict[str, Any] = {"progress": self._relay, "cancel": self._cancel}
        pixels = layer_pixels(layer)
        if is_dask(pixels):
            # deblur() returns a lazy array at once; napari computes its blocks while the user browses,
            # long after this job ended, so there is nothing to report or cancel here (and the lazy graph
            # must not hold on to this widget's Qt objects).
            hooks = {}
            self.status.setText(f"Preparing a lazy (dask) deblur of {layer.name!r}...")
        self.worker = create_cancellable_worker(
            _deblur_job,
            pixels,
            entry,
            axes=axes,
            tile_size=tile,
            overlap=overlap,
            context_padding=context,
            self_ensemble=self.ensemble_check.isChecked(),
            normalize=self.normalize_combo.currentData(),
            device=device,
            _cancel=self._cancel,  # napari quitting sets it too
            _in_words=in_panel_words,  # its warnings too are said in the panel's words
            _warning_prefix="Deblur: ",
            **hooks,
        )
        self.worker.returned.connect(lambda outcome, layer=layer: self._on_returned(layer, outcome))
        self.worker.errored.connect(lambda exc, layer=layer: self._on_errored(layer, exc))
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop (deblur raises Cancelled within one tile batch)."""
        self._cancel.set()
        self.status.setText("Cancelling...")

    def _on_returned(self, layer: Any, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        if self._closed or not qt_object_alive(self):
            # the panel was closed (or taken out of its dock) while the job ran, which cancels it; a job that
            # ended anyway (a lazy dask result, which no cancel reaches, or its last tile batch) adds nothing
            # behind the user's back, as in the Compare and Finetune panels. Deleted with napari's window (no
            # closeEvent then), its widgets are gone: these lambda connections are not cut with it
            return
        if kind == "error":
            value = for_layer(value, layer)
            self.status.setText(value)
            show_error(value)
            return
        if kind == "cancelled":
            self.status.setText("Cancelled; no layer was added.")
            show_info("Deblur cancelled; no layer was added.")
            return
        name = unique_name(self.viewer, f"{layer.name} deblurred")
        gone = gone_note(self.viewer, layer, name)
        self.result_layer = self.viewer.add_image(value, **result_layer_kwargs(layer, name=name))
        self.status.setText(f"Added {name!r}.{gone}{self._job_tile_note}")

    def _on_errored(self, layer: Any, exc: BaseException) -> None:
        """An unexpected error (a device's: CUDA out of memory or a fault; a bug): napari's error notification,
        from superqt's worker, shows it with its traceback; the status line says the run is over."""
        if not self._closed and qt_object_alive(self):
            self.status.setText(f"Deblur of {layer.name!r} failed ({error_line(exc)}); no layer was added.")

    def _on_finished(self) -> None:
        self.worker = None
        if not qt_object_alive(self):  # deleted with napari's window while the job ran
            return
        self._set_running(False)
        if self.progress.maximum() == 0:  # lazy (dask) result or an error before any progress
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def changeEvent(self, event: Any) -> None:
        """napari's close button takes the panel out of its dock (``setParent(None)``) without closing it, so
        that counts as closing: it cancels a running job so no thread outlives the widget."""
        if detached_from_dock(self, event):
            self._cancel.set()
        super().changeEvent(event)

    def closeEvent(self, event: Any) -> None:
        """Closing the dock cancels a running job so no thread outlives the widget (and a result that comes
        anyway is not added)."""
        self._cancel.set()
        self._closed = True
        super().closeEvent(event)


def _load_quietly(entry: ModelEntry) -> ModelEntry | None:
    """Worker-thread body: read the entry's model (kept on the entry); None for a model that cannot be read,
    which Run then reports (one notification, when the user asks for the model's work, not on choosing it)."""
    try:
        entry.load()
    except user_error_types():
        return None
    return entry


def _deblur_job(data: Any, entry: ModelEntry, **kwargs: Any) -> tuple[str, Any]:
    """Worker-thread body: load the model and call :func:`napari_deblurgan.deblur`.

    Returns ``("ok", result)``, ``("cancelled", None)`` or ``("error", message)`` for errors the user can
    fix (bad axes, bad model file...), so those become one plain notification instead of a traceback;
    anything else (a bug) propagates to napari's error reporting.
    """
    from .. import Cancelled, deblur

    try:
        model = entry.load()
        return "ok", deblur(data, model, **kwargs)
    except Cancelled:
        return "cancelled", None
    except user_error_types() as exc:
        return "error", in_panel_words(error_message(exc))

"""The "Compare" dock widget: score results against a ground truth, add classical baselines, view side by side.

Metrics come from :func:`napari_deblurgan.compare`, baselines from :func:`napari_deblurgan.richardson_lucy`
and :func:`napari_deblurgan.wiener`; the widget only picks layers, runs those calls in a napari
``thread_worker`` and shows the :class:`~napari_deblurgan.comparison.ComparisonTable` in a ``QTableWidget``.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..inputs import is_dask
from ._common import (
    LayerComboBox,
    avoid_triton_llvm_clash,
    axes_for_layer,
    create_cancellable_worker,
    detached_from_dock,
    error_line,
    error_message,
    gone_note,
    layer_pixels,
    prefer_blurred,
    prefer_psf,
    prefer_sharp,
    qt_object_alive,
    refuse,
    result_layer_kwargs,
    scrolling_layout,
    show_error,
    show_info,
    unique_name,
    unwrap,
    user_error_types,
)

if TYPE_CHECKING:
    import napari

NO_REFERENCE = "(no ground truth)"
#: PSF sources offered for the classical baselines
PSF_FROM_METADATA = "sample's PSF (layer metadata)"
PSF_FROM_LAYER = "PSF layer"
PSF_GAUSSIAN = "Gaussian of sigma"


def _top_first_stride(grid: Any, layers: Any, shown: set[int]) -> int:
    """The grid stride (1 or -1) that puts the top shown layer of the layer list in the first cell, as the
    metrics table lists it first. napari 0.6.2 reversed what the sign means (napari PR #8053: before it, stride 1
    filled the cells top layer first; since, bottom layer first), so it is asked, not assumed: ``grid`` must be
    enabled with stride 1."""
    everything = list(layers)
    top = max((i for i, layer in enumerate(everything) if id(unwrap(layer)) in shown), default=None)
    if top is None:
        return -1
    try:
        try:
            cell = grid.position(top, everything)  # napari >= 0.6.2: the layers
        except TypeError:
            cell = grid.position(top, len(everything))  # before: their number
    except Exception:  # an API this does not know: the current napari's order
        return -1
    return 1 if tuple(cell) == (0, 0) else -1


def grid_shape(
    n_images: int, canvas_hw: tuple[float, float] = (1.0, 1.0), image_hw: tuple[float, float] = (1.0, 1.0)
) -> tuple[int, int]:
    """(rows, columns) of the side-by-side grid that shows ``n_images`` images of ``image_hw`` (height, width)
    largest on a canvas of ``canvas_hw``; among equally large layouts the one with the fewest empty cells, then
    the fewest rows. (napari's automatic grid is square-ish whatever the canvas: five images on a tall canvas
    came out 2 x 3, on a wide one a row is larger.)"""
    n = max(int(n_images), 1)
    (H, W), (h, w) = (max(float(v), 1e-9) for v in canvas_hw), (max(float(v), 1e-9) for v in image_hw)

    def rank(shape: tuple[int, int]) -> tuple[float, int, int]:
        rows, cols = shape
        scale = min(W / (cols * w), H / (rows * h))
        return (-round(scale, 9), rows * cols - n, rows)

    return min(((rows, -(-n // rows)) for rows in range(1, n + 1)), key=rank)


class MetricsTable(QTableWidget):
    """The metrics table, fitted to the dock's width: the numbers' columns as wide as their contents, the layer
    column what is left (its names elided in the middle, whole in their tooltips), but not narrower than
    :attr:`NAME_MIN` px, below which the table scrolls sideways. A column as wide as its longest name (a
    "cells blurred Richardson-Lucy 30 it." took ~220 px) left no room for SSIM in a ~350 px dock."""

    NAME_MIN = 90

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.name_column: int | None = None  # the column of the layers' names (:meth:`fit_columns`)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setWordWrap(False)  # one line a row, elided ("cells bl…deblurred"), not wrapped and then cut
        self.verticalHeader().setVisible(False)  # row numbers: the layer column names the rows

    def fit_columns(self) -> None:
        """Size the columns to the contents and the layer column to the width that is left."""
        self.resizeColumnsToContents()
        self._fit_name_column()

    def _fit_name_column(self) -> None:
        name = self.name_column
        if name is None or not 0 <= name < self.columnCount():
            return
        whole = max(self.sizeHintForColumn(name), self.horizontalHeader().sectionSizeHint(name))
        others = sum(self.columnWidth(c) for c in range(self.columnCount()) if c != name)
        left = self.viewport().width() - others
        self.setColumnWidth(name, max(min(whole, left), min(whole, self.NAME_MIN)))

    def resizeEvent(self, event: Any) -> None:
        """The viewport's size changed (the dock was resized, a scroll bar came or went): refit the layer column."""
        super().resizeEvent(event)
        self._fit_name_column()


class CompareWidget(QWidget):
    """Dock widget: metrics table, classical baselines, CSV export and a side-by-side grid view."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        self.viewer = viewer
        self.worker: Any = None
        self.table_result: Any = None
        # ticks belong to layers, not names: a renamed layer keeps its tick, and a new layer that takes a
        # removed one's name does not inherit it (keys are id(layer), pruned to the live layers on refresh)
        self._checked: dict[int, bool] = {}
        self._listed: list[Any] = []  # the layer behind each row of layer_list
        self._saved_view: dict[str, Any] | None = None  # what side_by_side changed, restored on leaving the grid
        self._closed = False  # the panel was closed (or taken out of its dock): a running job's result is dropped

        # ---- what to compare
        self.reference_combo = LayerComboBox(viewer, allow_none=NO_REFERENCE, prefer=prefer_sharp)
        self.layer_list = QListWidget()
        self.layer_list.setMinimumHeight(90)
        self.layer_list.itemChanged.connect(self._remember_check)
        self.per_slice = QCheckBox("per slice (stacks)")
        self.range_combo = QComboBox()
        # PSNR's peak: integer images default to their dtype's range in compare() (as in scikit-image), but a
        # uint16 image that spans 1,000 counts would then score ~36 dB more than its own signal warrants
        self.range_combo.addItem("ground truth's min-max", "reference")
        self.range_combo.addItem("dtype's full range", "dtype")
        self.range_combo.setToolTip(
            "The peak value in PSNR. The ground truth's own range (max - min) gives the same PSNR as "
            "`napari-deblurgan demo`; the dtype's full range (65535 for uint16) flatters every method."
        )
        self.compute_button = QPushButton("Compute metrics")
        what = QGroupBox("compare")
        what_form = QFormLayout(what)
        what_form.addRow("ground truth", self.reference_combo)
        what_form.addRow(QLabel("results (check the layers to score):"))
        what_form.addRow(self.layer_list)
        what_form.addRow(self.per_slice)
        what_form.addRow("PSNR range", self.range_combo)

        # ---- classical baselines
        self.baseline_input = LayerComboBox(viewer, prefer=prefer_blurred)
        self.psf_source = QComboBox()
        self.psf_source.addItems([PSF_FROM_METADATA, PSF_FROM_LAYER, PSF_GAUSSIAN])
        self.psf_layer = LayerComboBox(viewer, napari.layers.Image, prefer=prefer_psf)
        self.psf_sigma = QDoubleSpinBox()
        self.psf_sigma.setRange(0.1, 50.0)
        self.psf_sigma.setValue(2.0)
        self.rl_iterations = QSpinBox()
        self.rl_iterations.setRange(1, 1000)
        self.rl_iterations.setValue(30)
        self.wiener_balance = QDoubleSpinBox()
        self.wiener_balance.setDecimals(4)
        self.wiener_balance.setRange(0.0001, 100.0)
        self.wiener_balance.setSingleStep(0.005)
        self.wiener_balance.setValue(0.01)
        self.rl_button = QPushButton("Richardson-Lucy")
        self.wiener_button = QPushButton("Wiener")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the running baseline (between iterations); nothing is added.")
        self._cancel = threading.Event()
        baselines = QGroupBox("classical baselines")
        base_form = QFormLayout(baselines)
        base_form.addRow("blurred image", self.baseline_input)
        base_form.addRow("PSF from", self.psf_source)
        base_form.addRow("PSF layer", self.psf_layer)
        base_form.addRow("sigma (px)", self.psf_sigma)
        base_form.addRow("RL iterations", self.rl_iterations)
        base_form.addRow("Wiener balance", self.wiener_balance)
        row = QHBoxLayout()
        row.addWidget(self.rl_button)
        row.addWidget(self.wiener_button)
        row.addWidget(self.cancel_button)
        base_form.addRow(row)

        # ---- results
        self.table = MetricsTable(0, 0)
        self.table.setMinimumHeight(150)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setEnabled(False)
        self.side_button = QPushButton("Side by side")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        actions = QHBoxLayout()
        for button in (self.compute_button, self.export_button, self.side_button):
            actions.addWidget(button)

        layout = scrolling_layout(self)  # taller than a laptop's screen: it scrolls
        layout.addWidget(what)
        layout.addWidget(baselines)
        layout.addLayout(actions)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.compute_button.clicked.connect(self.compute)
        self.export_button.clicked.connect(self._export_dialog)
        self.side_button.clicked.connect(self.side_by_side)
        self.cancel_button.clicked.connect(self.cancel)
        self.rl_button.clicked.connect(lambda: self.add_baseline("richardson_lucy"))
        self.wiener_button.clicked.connect(lambda: self.add_baseline("wiener"))
        self.psf_source.currentIndexChanged.connect(self._update_enabled)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_list)
        viewer.layers.events.connect(self._on_any)
        self.destroyed.connect(self._disconnect)
        self._refresh_list()
        self._update_enabled()

    # ----------------------------------------------------------------------------------- layer list
    def _disconnect(self, *_: Any) -> None:
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.disconnect(self._refresh_list)
        events.disconnect(self._on_any)

    def _on_any(self, event: Any) -> None:
        if getattr(event, "type", None) == "name":
            self._refresh_list()

    def _image_layers(self) -> list[Any]:
        import napari.layers

        return [layer for layer in reversed(list(self.viewer.layers)) if isinstance(layer, napari.layers.Image)]

    def _refresh_list(self, *_: Any) -> None:
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        self._listed = self._image_layers()
        live = {id(unwrap(layer)) for layer in self._listed}
        self._checked = {key: value for key, value in self._checked.items() if key in live}
        for layer in self._listed:
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = self._checked.get(id(unwrap(layer)), False)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.layer_list.addItem(item)
        self.layer_list.blockSignals(False)

    def _remember_check(self, item: QListWidgetItem) -> None:
        row = self.layer_list.row(item)
        if 0 <= row < len(self._listed):
            self._checked[id(unwrap(self._listed[row]))] = item.checkState() == Qt.CheckState.Checked

    def set_checked(self, layer: Any, checked: bool = True) -> None:
        """Check (or uncheck) ``layer`` in the results list."""
        self._checked[id(unwrap(layer))] = checked  # a layer from viewer.add_image is a proxy
        self._refresh_list()

    def checked_layers(self) -> list[Any]:
        """The checked result layers, in layer-list order (the ground-truth layer is never a result)."""
        reference = self.reference_combo.value()
        return [
            layer
            for layer in self._image_layers()
            if self._checked.get(id(unwrap(layer)), False) and unwrap(layer) is not unwrap(reference)
        ]

    def _update_enabled(self, *_: Any) -> None:
        source = self.psf_source.currentText()
        self.psf_layer.setEnabled(source == PSF_FROM_LAYER)
        self.psf_sigma.setEnabled(source == PSF_GAUSSIAN)

    # ---------------------------------------------------------------------------------------- jobs
    def _busy(self) -> bool:
        if self.worker is not None:
            show_error("The Compare widget is still working on the last request; wait for it to finish.")
            return True
        return False

    def _start(self, func: Any, *args: Any, on_ok: Any, layers: dict[str, Any], **kwargs: Any) -> None:
        """Run ``func`` in a worker; ``layers``: the layers it reads, by what its errors call them ("reference",
        "result 'name'", "image"), so that a NaN/inf error's advice names the layer (:func:`_naming_the_layer`)."""
        avoid_triton_llvm_clash()

        # napari quitting sets the current cancel event, as Cancel does (read between planes and iterations)
        # its warnings as notifications (the API's words: the panel has no translation, and no warning of compare()
        # or the baselines names a keyword)
        self.worker = create_cancellable_worker(
            _guarded, func, *args, _cancel=self._cancel, _warning_prefix="Compare: ", **kwargs
        )
        self.worker.returned.connect(lambda outcome: self._on_returned(outcome, on_ok, layers))
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        for button in (self.compute_button, self.rl_button, self.wiener_button):
            button.setEnabled(False)
        self.worker.start()

    def _on_returned(self, outcome: tuple[str, Any], on_ok: Any, layers: dict[str, Any]) -> None:
        kind, value = outcome
        # the panel was closed while it worked: add nothing behind the user's back; deleted with napari's window
        # (no closeEvent then), its widgets are gone, and this lambda connection is not cut with it
        if self._closed or not qt_object_alive(self):
            return
        if kind == "cancelled":
            makes_table = getattr(on_ok, "func", None) == self._show_table
            nothing = "no table was made" if makes_table else "no layer was added"
            self.status.setText(f"Cancelled; {nothing}.")
            return
        if kind == "error":
            value = _naming_the_layer(value, layers)
            self.status.setText(value)
            show_error(value)
        else:
            on_ok(value)

    def _on_errored(self, exc: BaseException) -> None:
        """An unexpected error (a device's, a bug): napari's error notification, from superqt's worker, shows it
        with its traceback; the status line says that the request failed."""
        if not self._closed and qt_object_alive(self):
            self.status.setText(f"Failed ({error_line(exc)}).")

    def _on_finished(self) -> None:
        self.worker = None
        if not qt_object_alive(self):  # deleted with napari's window while the job ran
            return
        for button in (self.compute_button, self.rl_button, self.wiener_button):
            button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Ask the running job to stop (Richardson-Lucy between iterations, Wiener and the metrics between
        planes)."""
        self._cancel.set()
        self.status.setText("Cancelling...")

    # ------------------------------------------------------------------------------------- metrics
    def compute(self) -> None:
        """Score the checked layers (against the ground truth when one is chosen) in a worker thread."""
        if self._busy():
            return
        # the last table goes now: if this computation is refused or fails, old numbers must not stay on screen
        # (or be exported) as if they were the answer to the new question
        self.table_result = None
        self.table.setRowCount(0)
        self.export_button.setEnabled(False)
        self.status.setText("")
        layers = self.checked_layers()
        if not layers:
            refuse(self.status, "Check at least one result layer in the list to compare.")
            return
        reference = self.reference_combo.value()
        try:
            axes = axes_for_layer(reference if reference is not None else layers[0])
        except user_error_types() as exc:
            refuse(self.status, error_message(exc))
            return
        results = {layer.name: layer_pixels(layer) for layer in layers}
        ref_data = None if reference is None else layer_pixels(reference)
        self.status.setText("Computing metrics...")
        self._cancel = threading.Event()  # read between planes: a long lazy stack can be stopped
        self.cancel_button.setEnabled(True)
        self._start(
            _compare_with_range,
            results,
            ref_data,
            axes=axes,
            per_slice=self.per_slice.isChecked(),
            range_from=self.range_combo.currentData(),
            cancel=self._cancel,
            # the table names the ground truth it was computed against, whatever the box shows by then
            on_ok=functools.partial(self._show_table, reference_name=None if reference is None else reference.name),
            layers={
                **{f"result {layer.name!r}": layer for layer in layers},
                **({} if reference is None else {"reference": reference, "ground truth": reference}),
            },
        )

    def _show_table(self, table: Any, reference_name: str | None = None) -> None:
        self.table_result = table
        columns = list(getattr(table, "columns", None) or (table.rows[0].keys() if table.rows else []))
        if all(row.get("slice") is None for row in table.rows) and "slice" in columns:
            columns.remove("slice")
        if all(row.get("psnr") is None for row in table.rows):  # no reference: only sharpness is defined
            columns = [c for c in columns if c not in ("psnr", "ssim", "nrmse")]
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(table.rows))
        self.table.setHorizontalHeaderLabels([_HEADERS.get(c, c) for c in columns])
        for r, row in enumerate(table.rows):
            for c, key in enumerate(columns):
                item = QTableWidgetItem(_format(row.get(key)))
                if isinstance(row.get(key), float):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                elif key == "name":
                    item.setToolTip(item.text())  # the whole name where the column shows it elided
                self.table.setItem(r, c, item)
        self.table.name_column = columns.index("name") if "name" in columns else None
        self.table.fit_columns()
        self.export_button.setEnabled(True)
        against = f"ground truth: {reference_name!r}." if reference_name else "no ground truth: sharpness only."
        notes = list(getattr(table, "notes", []))
        self.status.setText(f"{len(table.rows)} rows; {against}" + "".join(f"\nNote: {n}" for n in notes))
        for note in notes:
            show_info(f"Compare: {note}")

    def export_csv(self, path: str) -> None:
        """Write the last table to ``path`` (CSV, via ``ComparisonTable.to_csv``)."""
        if self.table_result is None:
            refuse(self.status, "Compute the metrics first; there is no table to export yet.")
            return
        try:
            self.table_result.to_csv(path)
        except user_error_types() as exc:  # a folder, a missing folder, no permission (InputError)
            refuse(self.status, f"Could not write {path!r}: {error_message(exc)} Choose another file.")
            return
        except OSError as exc:
            refuse(self.status, f"Could not write {path!r}: {exc}. Choose another file.")
            return
        self.status.setText(f"Saved the table to {path}.")

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the metrics table", "comparison.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    # ------------------------------------------------------------------------------------- baselines
    def psf(self) -> np.ndarray:
        """The PSF the baselines use, from the chosen source; raises InputError when it is unavailable."""
        from ..errors import InputError

        source = self.psf_source.currentText()
        if source == PSF_GAUSSIAN:
            from ..blur.psf import gaussian_psf

            return gaussian_psf(self.psf_sigma.value())
        if source == PSF_FROM_LAYER:
            layer = self.psf_layer.value()
            if layer is None:
                raise InputError("Choose the PSF layer (an image layer holding the 2D PSF).")
            if getattr(layer, "rgb", False):
                raise InputError(
                    f"The PSF layer {layer.name!r} is an RGB picture; the baselines take a grey 2D PSF. Choose a "
                    "single-channel PSF layer (open the PSF as greyscale, or split its colours: right-click the "
                    "layer in the layer list > Split RGB)."
                )
            psf = np.asarray(layer_pixels(layer), dtype=np.float64)
            if psf.ndim == 3 and psf.size:
                # a measured 3D PSF: the API's message would say this in Python (psf[k])
                k = int(psf.max(axis=(1, 2)).argmax())
                raise InputError(
                    f"The PSF layer {layer.name!r} is 3D {psf.shape}; the baselines take a 2D PSF. Add its in-focus "
                    f"plane as a layer and choose that: the plane of its brightest peak is {k} (in napari's console: "
                    f"viewer.add_image(viewer.layers[{layer.name!r}].data[{k}], name='PSF in focus'))."
                )
            return psf
        layer = self.baseline_input.value()
        psf = None if layer is None else layer.metadata.get("psf")
        if psf is None:
            raise InputError(
                f"Layer {getattr(layer, 'name', None)!r} carries no PSF in its metadata (only the plugin's sample "
                "data and 'preview synthetic blur' layers do); choose 'PSF layer' or 'Gaussian of sigma'."
            )
        return np.asarray(psf, dtype=np.float64)

    def add_baseline(self, method: str) -> None:
        """Deconvolve the chosen blurred layer with ``"richardson_lucy"`` or ``"wiener"``; adds a layer."""
        if self._busy():
            return
        layer = self.baseline_input.value()
        if layer is None:
            refuse(self.status, "Choose the blurred image layer to deconvolve.")
            return
        try:
            psf = self.psf()
            axes = axes_for_layer(layer)
        except user_error_types() as exc:
            refuse(self.status, error_message(exc))
            return
        from .. import richardson_lucy, wiener

        if method == "richardson_lucy":
            func, kwargs = richardson_lucy, {"iterations": self.rl_iterations.value()}
            label = f"Richardson-Lucy {self.rl_iterations.value()} it."
        elif method == "wiener":
            func, kwargs = wiener, {"balance": self.wiener_balance.value()}
            label = f"Wiener {self.wiener_balance.value():g}"
        else:
            raise ValueError(f"unknown baseline {method!r}")
        self.status.setText(f"Running {label} on {layer.name!r}...")

        def add(result: np.ndarray, layer: Any = layer, label: str = label) -> None:
            name = unique_name(self.viewer, f"{layer.name} {label}")
            gone = gone_note(self.viewer, layer, name)
            kwargs = result_layer_kwargs(layer, name=name)
            kwargs["metadata"] = {**kwargs["metadata"], "napari_deblurgan_baseline": label}
            self.last_baseline = self.viewer.add_image(result, **kwargs)
            self.set_checked(self.last_baseline)
            self.status.setText(f"Added {name!r}.{gone}")

        self._cancel = threading.Event()
        # the layer's array as it is: np.asarray would read a dask (or zarr) layer whole into memory; the
        # baselines read it a plane at a time, and a dask layer gives a lazy result, as a deblurred one does
        pixels = layer_pixels(layer)
        hooks: dict[str, Any] = {"cancel": self._cancel}
        if is_dask(pixels):
            # the job only reads the layer's range; napari computes the result's planes as the user browses,
            # long after it ended, and a cancel event in the lazy graph would make a closed panel break them
            hooks = {}
            self.status.setText(f"Preparing a lazy (dask) {label} of {layer.name!r}...")
        self.cancel_button.setEnabled(bool(hooks))
        self._start(func, pixels, psf, axes=axes, on_ok=add, layers={"image": layer}, **hooks, **kwargs)

    # ---------------------------------------------------------------------------------- side by side
    def side_by_side(self) -> None:
        """Grid view of the ground truth and the checked layers, all with the same contrast limits.

        Other layers are hidden (not removed); the shared contrast limits are the ground truth's, or the
        widest range of the compared layers when there is none, so equal grey means equal intensity. The cells,
        read row by row, follow the layer list from the top (``grid.stride = -1``), which is the order of the
        checked layers and so of the metrics table; the ground truth is where it is in the layer list (nothing
        is moved there), and the notification names the layers in the cells' order.
        """
        reference = self.reference_combo.value()
        layers = ([reference] if reference is not None else []) + self.checked_layers()
        if not layers:
            show_error("Check the layers to show side by side (and optionally choose a ground truth).")
            return
        # RGB layers keep their own look (their contrast limits are not set below), so they do not widen the range
        # of the grey ones either: a uint8 RGB layer's 0..255 drew a 0..1 float result black
        grey = [lay for lay in layers if not lay.rgb] or layers
        if reference is not None and not reference.rgb:
            limits = tuple(reference.contrast_limits)
        else:  # no ground truth, or an RGB one (whose 0..255 would draw grey 0..1 results black too)
            limits = (min(lay.contrast_limits[0] for lay in grey), max(lay.contrast_limits[1] for lay in grey))
        # napari 0.9 moved the grid to viewer.canvas.grid (viewer.grid is deprecated there)
        canvas = getattr(self.viewer, "canvas", None)
        grid = getattr(canvas, "grid", None) or self.viewer.grid
        self._remember_view(grid)
        shown = {id(unwrap(layer)) for layer in layers}
        for layer in self.viewer.layers:
            layer.visible = id(unwrap(layer)) in shown
        for layer in layers:
            if not layer.rgb:
                layer.contrast_limits = limits
        canvas_hw = tuple(getattr(canvas, "size", None) or (1, 1))
        image_hw = tuple(np.ptp(np.asarray(layers[0].extent.world)[:, -2:], axis=0))
        grid.shape = grid_shape(len(layers), canvas_hw, image_hw)
        grid.stride = 1
        grid.enabled = True
        grid.stride = _top_first_stride(grid, self.viewer.layers, shown)
        self.viewer.reset_view()
        in_cells = [layer for layer in reversed(list(self.viewer.layers)) if id(unwrap(layer)) in shown]
        show_info(
            f"Side by side: {', '.join(layer.name for layer in in_cells)} (press Ctrl+G to leave grid mode; the "
            "layers' visibility and contrast come back as they were)."
        )

    def _remember_view(self, grid: Any) -> None:
        """Keep what side-by-side changes (each layer's visibility and contrast limits, the grid's settings),
        to put it back when grid mode is left (Ctrl+G), so that comparing leaves the viewer as it was. A second
        side-by-side while the first is shown keeps the first's record (that is the state to go back to) and
        adds the layers that appeared since. The restore is a closure, not a method: it works even after
        the panel is gone."""

        def state(layer: Any) -> tuple[Any, bool, Any]:
            return (unwrap(layer), layer.visible, None if layer.rgb else tuple(layer.contrast_limits))

        if self._saved_view is not None:  # layers added since the first side-by-side: their state now is theirs
            known = {id(entry[0]) for entry in self._saved_view["layers"]}
            self._saved_view["layers"] += [
                state(layer) for layer in self.viewer.layers if id(unwrap(layer)) not in known
            ]
            return
        saved = {"layers": [state(layer) for layer in self.viewer.layers], "grid": (grid.stride, tuple(grid.shape))}
        viewer = unwrap(self.viewer)

        def restore(*_: Any) -> None:
            if grid.enabled:
                return
            grid.events.enabled.disconnect(restore)
            live = {id(layer) for layer in viewer.layers}
            for layer, visible, limits in saved["layers"]:
                if id(layer) not in live:
                    continue  # removed meanwhile
                layer.visible = visible
                if limits is not None:
                    layer.contrast_limits = limits
            grid.stride, grid.shape = saved["grid"]
            if self_ref() is not None:
                self_ref()._saved_view = None

        self_ref = weakref.ref(self)
        self._saved_view = saved
        grid.events.enabled.connect(restore)

    def changeEvent(self, event: Any) -> None:
        """napari's close button takes the panel out of its dock without closing it: that counts as closing."""
        if detached_from_dock(self, event):  # also keeps self._closed
            self._cancel.set()
        super().changeEvent(event)

    def closeEvent(self, event: Any) -> None:
        """A job still running when the panel closes adds no layer when it ends."""
        self._closed = True
        self._cancel.set()
        super().closeEvent(event)


def _guarded(func: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """Worker-thread body: ``func(*args, **kwargs)``; errors the user can fix come back as a message."""
    from ..errors import Cancelled

    try:
        return "ok", func(*args, **kwargs)
    except Cancelled:
        return "cancelled", None
    except user_error_types() as exc:
        return "error", error_message(exc)


def _naming_the_layer(message: str, layers: dict[str, Any]) -> str:
    """A NaN/inf error of the API (``inputs.nonfinite_error``: "the reference's plane Z=2 has ...", "plane Z=2 of
    the result 'x' has ...") in the panel's words: its advice ``np.nan_to_num(image, ...)``, Python the user has no
    variable for, becomes the Deblur panel's console advice for the layer it is about (``for_layer``), found
    among ``layers`` by what the message calls it; the reference is called the ground truth, as in the panel.
    Any other message is returned as it is."""
    from .deblur_widget import PANEL_PHRASES, for_layer

    for what, layer in layers.items():
        name = re.escape(what)
        if not re.search(rf"(^the {name}(?:'s | has )|of the {name} has )", message):
            continue
        for pattern, words, _ in PANEL_PHRASES:
            if "nan_to_num" in pattern:
                message = re.sub(pattern, words, message)
        if what == "reference":
            message = re.sub(r"^the reference\b", "the ground truth", message)
        return for_layer(message, layer)
    return message


_HEADERS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nrmse": "NRMSE", "sharpness": "sharpness", "name": "layer"}


def _format(value: Any) -> str:
    """Table cell text: 4 significant digits for floats, '' for None, ∞ for a perfect PSNR."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _compare_with_range(results: dict[str, Any], reference: Any, *, range_from: str, **kwargs: Any) -> Any:
    """Worker-thread body: :func:`compare` with PSNR's peak taken from the ground truth's own range
    (``range_from="reference"``) or left to ``compare``'s dtype rule (``"dtype"``)."""
    from .. import compare
    from ..comparison import value_range

    data_range = None
    if reference is not None and range_from == "reference":
        # one pass over a lazy ground truth, not two; the axes name the plane of a NaN/inf error; an RGBA
        # ground truth's alpha is left out, as compare() leaves it out of its metrics
        lo, hi = value_range(reference, name="ground truth", axes=kwargs.get("axes"), colours_only=True)
        data_range = hi - lo if hi > lo else None
    return compare(results, reference, data_range=data_range, **kwargs)

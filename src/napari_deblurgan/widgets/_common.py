"""Small Qt pieces shared by the Deblur, Finetune and Compare dock widgets.

Nothing here does image processing: the widgets only collect parameters, call the public API of
``napari_deblurgan`` in a napari ``thread_worker`` and put the results into layers. This module must not
import torch (napari imports widget modules at startup when it builds its menus).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, QSize, Qt, Signal
from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

# re-exported for the widgets; devices.py is torch-free at import time
from ..devices import avoid_triton_llvm_clash as avoid_triton_llvm_clash
from .sample_data import SAMPLE_GROUP, SAMPLE_ROLE  # the sample layers' metadata keys (Qt-free there)

if TYPE_CHECKING:
    import napari
    import napari.layers

#: Axis letters understood by ``napari_deblurgan.axes`` (see docs/architecture.md).
AXIS_LETTERS = "TZCYXS"


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions a user can cause (bad input, bad model file, cancel); shown as plain notifications."""
    from ..errors import DeblurGANError

    return (DeblurGANError,)


def show_error(message: str) -> None:
    """Show ``message`` as a napari error notification (the viewer keeps working)."""
    from napari.utils.notifications import show_error as _show_error

    _show_error(message)


def show_info(message: str) -> None:
    """Show ``message`` as a napari info notification."""
    from napari.utils.notifications import show_info as _show_info

    _show_info(message)


def show_warning(message: str) -> None:
    """Show ``message`` as a napari warning notification."""
    from napari.utils.notifications import show_warning as _show_warning

    _show_warning(message)


#: Categories a panel does not show: Python's own defaults hide them from users (they are for developers), but
#: superqt's worker shows every warning ("always"), e.g. a library's deprecation raised while a job runs.
_DEVELOPER_WARNINGS: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning)


class _WarningRoutes:
    """Sends each warning to the worker job running in the thread that raised it.

    ``warnings.showwarning`` and the filters are process-wide, and superqt's ``WorkerBase.run`` swaps them inside
    ``warnings.catch_warnings()``, which is not thread-safe: with two jobs at once (a training and a Deblur run)
    one job's warning came out in the other panel's words, another reached only the terminal, and the last job
    to end left its hook installed, so that later main-thread warnings were shown as that panel's. Here one
    hook, installed while any job runs, picks the job by thread and passes other threads' warnings on to the
    hook it found; while it is installed, an "always" filter (superqt's too) shows every warning every time
    (Python's default shows one once per code location, so a second run's would be lost).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: dict[int, Callable[..., None]] = {}
        self.previous: Callable[..., None] | None = None
        self.filter: tuple[Any, ...] | None = None

    def show(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        route = self.routes.get(threading.get_ident())
        if route is None and threading.current_thread() is not threading.main_thread():
            # a thread that a job started itself (dask's pool computing in a Compare job): its job's, where
            # only one job runs (superqt's process-wide hook sent these to the job too)
            running = list(self.routes.values())
            route = running[0] if len(running) == 1 else None
        if route is not None:
            route(message, category, filename, lineno, file, line)
            return
        previous = self.previous
        if previous is None or previous == self.show:  # never itself: a RecursionError out of warnings.warn
            previous = warnings._showwarning_orig
        previous(message, category, filename, lineno, file, line)

    @contextlib.contextmanager
    def route(self, emit: Callable[..., None]) -> Iterator[None]:
        """While the ``with`` block runs, this thread's warnings go to ``emit(message, category, filename,
        lineno, file, line)``."""
        with self.lock:
            if not self.routes:
                # another thread's catch_warnings() that began while a job ran puts this hook back when it
                # ends, after the job has taken it off: then it is not "previous" (it would call itself)
                self.previous = None if warnings.showwarning == self.show else warnings.showwarning
                warnings.showwarning = self.show
                warnings.filterwarnings("always")  # as superqt's run: every warning of a job, every time
                self.filter = warnings.filters[0]
            self.routes[threading.get_ident()] = emit
        try:
            yield
        finally:
            with self.lock:
                self.routes.pop(threading.get_ident(), None)
                if not self.routes:
                    if warnings.showwarning == self.show:  # left alone where someone else has replaced it since
                        warnings.showwarning = self.previous
                    with contextlib.suppress(ValueError):
                        warnings.filters.remove(self.filter)
                        warnings._filters_mutated()
                    self.previous = self.filter = None


#: the one router of this process (``warnings.showwarning`` is one per process too)
WARNING_ROUTES = _WarningRoutes()


class RoutedWarningsRun:
    """Mixin for napari's worker classes: superqt's ``WorkerBase.run`` (the same signals in the same order),
    with the job's warnings routed to the worker's ``warned`` signal by :data:`WARNING_ROUTES` instead of a
    ``warnings.catch_warnings()`` that other threads' jobs undo (see :class:`_WarningRoutes`)."""

    def run(self) -> None:
        self._emit_if_alive("started")
        self._running = True
        try:
            with WARNING_ROUTES.route(lambda *w: self._emit_if_alive("warned", w)):
                result = self.work()
            if isinstance(result, Exception):
                if isinstance(result, RuntimeError) and not _worker_alive(self):
                    # as superqt: the worker's Qt objects were deleted, so no signal can be emitted; only say so
                    warnings.warn(f"RuntimeError in aborted thread: {result}", RuntimeWarning, stacklevel=2)
                    return
                # superqt's GeneratorWorker returns every RuntimeError of the job, assuming a deleted worker
                # (and its run() then emits neither errored nor finished); but torch's errors (CUDA faults, out
                # of memory) are RuntimeErrors too, and a panel left waiting for `finished` stayed "running"
                # with its buttons off for good
                raise result
            if not self.abort_requested:
                self._emit_if_alive("returned", result)
        except Exception as exc:
            self._emit_if_alive("errored", exc)
        self._running = False
        self._emit_if_alive("finished")
        self._emit_if_alive("_finished", self)

    def _emit_if_alive(self, name: str, *args: Any) -> None:
        """Emit the worker's signal ``name``, unless its signals object is gone: napari's window closed while the
        job ran (a panel's model still loading when napari quits) deletes it with the app's objects, and emitting
        on it raised in this pool thread, which PyQt6 answers by aborting the whole process."""
        try:
            getattr(self, name).emit(*args)
        except RuntimeError:
            if _worker_alive(self):  # a live signal's own RuntimeError is not this case
                raise


def qt_object_alive(obj: Any) -> bool:
    """Whether ``obj``'s C++ object still exists (sip's / shiboken's view); True where the binding cannot tell
    (not a wrapped Qt object). A panel deleted with napari's window (whose closeEvent never runs) is gone, and
    a job that ends later must not touch its widgets."""
    from qtpy.compat import isalive

    try:
        return isalive(obj) is not False
    except TypeError:  # not a wrapped Qt object (a plain Python class in a test)
        return True


def _worker_alive(worker: Any) -> bool:
    """Whether ``worker`` and its signals' QObject still exist on the C++ side, i.e. whether its signals can
    still be emitted. True where the binding cannot tell."""
    return all(qt_object_alive(obj) for obj in (worker, getattr(worker, "signals", None)) if obj is not None)


def create_relayed_worker(
    func: Callable[..., Any],
    *args: Any,
    _in_words: Callable[[str], str] | None = None,
    _warning_prefix: str = "",
    _worker_class: type | None = None,
    **kwargs: Any,
) -> Any:
    """napari's ``create_worker(func, *args, **kwargs)`` whose job's warnings reach the user as notifications
    in the panel's words (:func:`relay_warnings`), also when other jobs run at the same time
    (:class:`RoutedWarningsRun`). ``_worker_class`` must have :class:`RoutedWarningsRun` first in its bases."""
    from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker

    if _worker_class is None:
        import inspect

        base = GeneratorWorker if inspect.isgeneratorfunction(func) else FunctionWorker
        _worker_class = type(f"Relayed{base.__name__}", (RoutedWarningsRun, base), {})
    elif not issubclass(_worker_class, RoutedWarningsRun):
        raise TypeError(f"{_worker_class.__name__} must derive from RoutedWarningsRun")
    worker = create_worker(func, *args, _worker_class=_worker_class, **kwargs)
    relay_warnings(worker, _in_words, prefix=_warning_prefix)
    return worker


def relay_warnings(worker: Any, in_words: Callable[[str], str] | None = None, *, prefix: str = "") -> None:
    """Show each warning raised while ``worker``'s job runs once, as a napari warning notification: ``prefix``
    and the message in the panel's words (``in_words``, the panel's translation of the API's messages, the one
    its errors use: ``tile size`` for ``tile_size``, the axes field for ``axes='YXC'``).

    superqt's workers run their job with ``warnings.showwarning`` sending each warning to the worker's ``warned``
    signal (so nothing reaches the terminal), and napari's worker classes mean to relay that signal to its
    notifications, in the API's words; but their mixin's ``__init__`` never runs (napari 0.9, superqt 0.9: the Qt
    base class ends the ``__init__`` chain), so such warnings (a misaligned training pair, tiles that repeat
    work) reached the user nowhere. napari's relay, where a binding does run it, is taken off, so that each
    warning is said once, in the panel's words. The same message raised again in one job (a warning per plane)
    is shown once; a TrainingNoticeWarning is not shown (the Finetune panel shows the Notice it comes with), nor
    are deprecation warnings (:data:`_DEVELOPER_WARNINGS`).
    """
    seen: set[str] = set()

    def show(args: tuple[Any, ...]) -> None:
        message, category = args[0], args[1]
        from ..training.events import TrainingNoticeWarning  # torch-free

        if issubclass(category, (*_DEVELOPER_WARNINGS, TrainingNoticeWarning)):
            return
        text = str(message)
        text = prefix + (in_words(text) if in_words is not None else text)
        if text not in seen:
            seen.add(text)
            show_warning(text)

    with contextlib.suppress(AttributeError, TypeError, RuntimeError):  # not connected (napari 0.9 / PyQt6)
        worker.warned.disconnect(worker._relay_warning)
    worker.warned.connect(show)


def error_message(exc: BaseException) -> str:
    """One readable line for ``exc``: our own errors carry their message, others get their type name."""
    if isinstance(exc, user_error_types()):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def error_line(exc: BaseException) -> str:
    """``Type: first line of its message``, for a status line about an unexpected error (a CUDA error's message
    goes on for lines of advice; the error notification and the terminal have the whole of it)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class ProgressRelay(QObject):
    """Carries ``(done, total)`` from a worker thread to the GUI thread.

    ``deblur(progress=...)`` calls its callback in the worker thread; emitting a Qt signal there queues the
    call to the receiving widget in the GUI thread, which is the only thread allowed to touch widgets.
    """

    progressed = Signal(int, int)

    def __call__(self, done: int, total: int) -> None:
        # RuntimeError: the panel (and this relay's Qt object) was deleted, e.g. napari closed mid-job
        with contextlib.suppress(RuntimeError):
            self.progressed.emit(int(done), int(total))


class PanelScrollArea(QScrollArea):
    """The scroll area that holds a panel's controls (:func:`scrolling_layout`).

    At least as wide as the controls need, vertical scroll bar included, so that only a dock narrower than that
    scrolls sideways. At least :attr:`MIN_HEIGHT` px tall (or the controls' height, if less), not the controls'
    height: a dock cannot be shorter than its panel's minimum, so a panel taller than the screen (the Finetune
    panel's ~1170 px) made napari's window taller than the screen, with the panel's bottom off it; now the
    panel scrolls. Where there is room it asks for the controls' whole height (its size hint)."""

    MIN_HEIGHT = 200

    def showEvent(self, event: Any) -> None:
        self._quiet_fields()
        super().showEvent(event)

    def _quiet_fields(self) -> None:
        """Scrolling with the wheel must not change a setting that passes under the cursor: the fields take the
        wheel only once clicked or tabbed into (StrongFocus: by default the wheel also gives them focus), and
        pass it on to the panel otherwise (:meth:`eventFilter`). Done on show, when the panel's controls all
        exist, and again whenever the controls' layout changes (a field added later)."""
        content = self.widget()
        if content is None:
            return
        for field in content.findChildren((QAbstractSpinBox, QComboBox)):
            if field.focusPolicy() == Qt.FocusPolicy.WheelFocus:
                field.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            field.installEventFilter(self)  # once: Qt keeps one entry per filter object

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # only the fields: QScrollArea filters its content widget's events too, which say when the layout changed
        fields = (QAbstractSpinBox, QComboBox)
        if event.type() == QEvent.Type.Wheel and isinstance(watched, fields) and not watched.hasFocus():
            event.ignore()  # not for this field: Qt passes an ignored wheel on to its parents, the scroll area
            return True
        if event.type() == QEvent.Type.LayoutRequest and watched is self.widget():
            self._quiet_fields()
        return super().eventFilter(watched, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        content = self.widget()
        if content is None:
            return hint
        height = min(content.minimumSizeHint().height() + 2 * self.frameWidth(), self.MIN_HEIGHT)
        width = content.minimumSizeHint().width() + self._extra_width()
        return QSize(max(hint.width(), width), max(hint.height(), height))

    def sizeHint(self) -> QSize:
        content = self.widget()
        if content is None:
            return super().sizeHint()
        hint = content.sizeHint()
        return QSize(hint.width() + self._extra_width(), hint.height() + 2 * self.frameWidth())


def scrolling_layout(panel: QWidget) -> QVBoxLayout:
    """A new layout for ``panel``'s controls, on a widget inside a :class:`PanelScrollArea` that fills the panel
    (kept as ``panel.scroll_area``). The controls stay the panel's descendants (``findChildren`` finds them)."""
    content = QWidget()
    area = PanelScrollArea(panel)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    panel.scroll_area = area
    return QVBoxLayout(content)


def refuse(status: QLabel, message: str) -> None:
    """A request the panel refuses before any job starts: ``message`` as an error notification and on the panel's
    status line, which must not go on saying what the last request did (an "Added ..." that reads as this one's)."""
    status.setText(message)
    show_error(message)


def detached_from_dock(widget: QWidget, event: Any) -> bool:
    """True when ``event`` says napari's close button took ``widget`` out of its dock: that calls
    ``setParent(None)`` and never ``close()``, so the panel's ``closeEvent`` cannot see it. Call from the
    panel's ``changeEvent``; remembers (on the widget) whether it was ever docked, and keeps
    ``widget._closed`` (whether the panel is out of its dock) for work that ends after it was closed."""
    if event.type() != QEvent.Type.ParentChange:
        return False
    if widget.parent() is not None:
        widget._docked = True
        widget._closed = False  # docked (again)
        return False
    if getattr(widget, "_docked", False):
        widget._closed = True
        return True
    return False


def create_cancellable_worker(
    func: Callable[..., Any],
    *args: Any,
    _cancel: Any,
    _in_words: Callable[[str], str] | None = None,
    _warning_prefix: str = "",
    **kwargs: Any,
) -> Any:
    """napari's ``create_worker(func, *args, **kwargs)`` whose ``quit()`` also sets ``_cancel`` (the
    ``threading.Event`` that the job reads between planes, tiles or iterations; ``kwargs`` go to ``func``), and
    whose job's warnings are shown as notifications in the panel's words (:func:`relay_warnings` with
    ``_in_words`` and ``_warning_prefix``).

    When napari quits, ``WorkerBase.await_workers`` calls ``quit()`` on every worker and waits for its thread,
    and closing the window never reaches the panels' ``closeEvent``: a plain function worker cannot be
    interrupted, so quitting waited for a whole deblur or a 1000-iteration baseline to finish. Now it stops at
    the job's next check, as the panel's Cancel does.
    """
    from napari.qt.threading import FunctionWorker

    class CancellableWorker(RoutedWarningsRun, FunctionWorker):
        def quit(self) -> None:
            _cancel.set()
            super().quit()

    return create_relayed_worker(
        func, *args, _in_words=_in_words, _warning_prefix=_warning_prefix, _worker_class=CancellableWorker, **kwargs
    )


def layer_pixels(layer: napari.layers.Image) -> Any:
    """The layer's full-resolution data: level 0 of a multiscale (pyramid) layer, else ``layer.data``.

    ``np.asarray`` of napari's multiscale data gives the *coarsest* level, so a widget that used
    ``layer.data`` on a pyramid would deblur (or compare) a thumbnail and place it at the wrong scale.
    """
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def axes_for_layer(layer: napari.layers.Image) -> str:
    """The axes string a layer most likely has: its axis labels when they are axis letters, else from ndim.

    napari's default axis labels are ``'-3', '-2', '-1'``; labels such as ``('z', 'y', 'x')`` set by a reader
    are used when every label is one of ``TZCYX``. RGB(A) layers get a trailing ``S`` (samples) axis, which
    is the last data axis and not part of ``layer.ndim``. Otherwise the core's ndim inference decides.
    """
    labels = [str(label).strip().upper() for label in layer.axis_labels]
    rgb = bool(getattr(layer, "rgb", False))
    if (
        labels
        and all(len(lab) == 1 and lab in AXIS_LETTERS.replace("S", "") for lab in labels)
        and len(set(labels)) == len(labels)
    ):
        return "".join(labels) + ("S" if rgb else "")
    from ..axes import infer_axes

    return infer_axes(layer_pixels(layer).shape, rgb=rgb)


def normalize_axes_text(text: str) -> str:
    """What the user typed in an axes box, uppercased and without spaces (validation is the core's job)."""
    return re.sub(r"\s+", "", text).upper()


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy``. A plugin's dock widget gets the viewer wrapped in one,
    and ``viewer.add_image`` through it returns a wrapped layer, while iterating ``viewer.layers`` gives the
    layers themselves: identity (``is``, ``id()``, weak keys) must compare the objects behind the proxies."""
    return getattr(obj, "__wrapped__", obj)


def _role(layer: Any) -> str | None:
    get = getattr(getattr(layer, "metadata", None), "get", None)
    return get(SAMPLE_ROLE) if callable(get) else None


def _partnered(layer: Any, layers: Sequence[Any]) -> bool:
    """Whether the blurred layer of ``layer``'s sample is among ``layers``: a sample's ground truth or PSF is
    the right choice only while the image it belongs to is there (not after that was removed, or next to
    another sample's image)."""
    group = layer.metadata.get(SAMPLE_GROUP)
    return any(_role(other) == "blurred" and other.metadata.get(SAMPLE_GROUP) == group for other in layers)


def prefer_blurred(layer: Any, layers: Sequence[Any]) -> int:
    """``LayerComboBox(prefer=...)`` for boxes of an image to deblur: a sample's blurred layer first, then any
    layer but a sample's ground truth or PSF (among equals, the top one)."""
    role = _role(layer)
    return 0 if role == "blurred" else 2 if role in ("sharp", "psf") else 1


def prefer_sharp(layer: Any, layers: Sequence[Any]) -> int:
    """``prefer=`` for ground-truth boxes: a sample's sharp layer while its blurred one is there; then "none"
    where the box offers it (a ground truth is not guessed), then the other layers."""
    if layer is None:
        return 1
    return 0 if _role(layer) == "sharp" and _partnered(layer, layers) else 2


def prefer_psf(layer: Any, layers: Sequence[Any]) -> int:
    """``prefer=`` for PSF boxes: a sample's PSF layer while its blurred one is there."""
    return 0 if _role(layer) == "psf" and _partnered(layer, layers) else 1


class LayerComboBox(QComboBox):
    """A combo box of the viewer's layers of one type, kept in sync with the layer list.

    The box holds layer *names* and returns the live layer; it disconnects from the viewer's events when
    the widget is destroyed so that a closed dock widget leaves no callback behind.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_type: type | tuple[type, ...] | None = None,
        *,
        allow_none: str | None = None,
        parent: QWidget | None = None,
        predicate: Callable[[Any], bool] | None = None,
        prefer: Callable[[Any, Sequence[Any]], int] | None = None,
    ) -> None:
        super().__init__(parent)
        import napari.layers

        # As wide as a short name, not the longest: microscopy file names of 60 characters made every panel
        # (and so napari's dock) as wide as the longest layer name. A longer name is elided in the box and shown
        # whole in its tooltip and in the open list (:meth:`showPopup`).
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(self.NAME_CHARACTERS)
        self.currentIndexChanged.connect(self._show_name_in_tooltip)
        self._viewer = viewer
        self._layer_type = layer_type or napari.layers.Image
        self._allow_none = allow_none
        self._predicate = predicate
        # the box's own choice (until the user makes one): the lowest rank, the top layer among equals
        self._prefer = prefer
        self._chosen = False  # the user (or code, through set_value) chose the current layer
        self._offered: list[Any] = []  # the layer (or None for the "none" item) behind each row
        self.activated.connect(self._on_activated)  # the user's choices only, not programmatic changes
        self.refresh()
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh)
        # layer renames: napari emits `name` on the layer; listen through the list's generic event
        viewer.layers.events.connect(self._on_any)
        self.destroyed.connect(self._disconnect)

    #: how many characters of a layer name the closed box is wide enough for
    NAME_CHARACTERS = 16

    def _on_activated(self, *_: Any) -> None:
        self._chosen = True

    def _show_name_in_tooltip(self, *_: Any) -> None:
        self.setToolTip(self.currentText())

    def showPopup(self) -> None:
        """The open list is as wide as its longest name (up to the screen's width), not only as the box."""
        view = self.view()
        names = max((view.fontMetrics().horizontalAdvance(self.itemText(i)) for i in range(self.count())), default=0)
        # the item's text margins (a few px each side in every style) and a scroll bar that a long list shows
        width = names + 24 + view.verticalScrollBar().sizeHint().width() + 2 * view.frameWidth()
        screen = self.screen()
        if screen is not None:
            width = min(width, screen.availableGeometry().width())
        view.setMinimumWidth(max(width, self.width()))
        super().showPopup()

    def _rank(self, item: Any) -> int:
        """``prefer(item, the offered layers)``: the lower, the likelier the box's own choice."""
        return 0 if self._prefer is None else self._prefer(item, [i for i in self._offered if i is not None])

    def _own_choice(self) -> int:
        """The row the box chooses itself: the lowest rank, the first (top) among equals."""
        ranks = [self._rank(item) for item in self._offered]
        return ranks.index(min(ranks)) if ranks else -1

    def _on_any(self, event: Any) -> None:
        if getattr(event, "type", None) == "name":
            self.refresh()

    def _disconnect(self, *_: Any) -> None:
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.disconnect(self.refresh)
        events.disconnect(self._on_any)

    def layers(self) -> list[Any]:
        """The layers this box offers, in layer-list order (top first, like napari's layer list)."""
        out = [
            layer
            for layer in reversed(list(self._viewer.layers))
            if isinstance(layer, self._layer_type) and (self._predicate is None or self._predicate(layer))
        ]
        return out

    def refresh(self, *_: Any) -> None:
        """Re-read the layer list, keeping the selected layer (the layer itself, so a rename keeps it too).

        ``currentIndexChanged`` fires only when the selection really changes (its layer was removed): a new
        layer moves the selected one to another row, and a signal then would make the panels re-fill their
        axes boxes over what the user typed.
        """
        previous, had_selection = self.value(), bool(self._offered)
        self.blockSignals(True)
        self.clear()
        self._offered = []
        if self._allow_none is not None:
            self.addItem(self._allow_none)
            self._offered.append(None)
        for layer in self.layers():
            self.addItem(layer.name)
            self._offered.append(unwrap(layer))
        index = next((i for i, item in enumerate(self._offered) if item is unwrap(previous)), -1)
        if index < 0:
            self._chosen = False  # the chosen layer is gone: the box chooses again
        elif not self._chosen and self._rank(self._offered[self._own_choice()]) < self._rank(self._offered[index]):
            index = -1  # its own choice, and a better one arrived (a sample's blurred layer after its PSF), or
            # its own choice got worse (its sample's blurred layer was removed)
        if index >= 0:
            self.setCurrentIndex(index)
        self.blockSignals(False)
        self._show_name_in_tooltip()  # a rename keeps the row, and signals were blocked
        if index < 0 and self.count():
            own = self._own_choice()
            if self.currentIndex() == own:  # setCurrentIndex would not signal the (new) layer in this row
                self.currentIndexChanged.emit(own)
            else:
                self.setCurrentIndex(own)
        elif index < 0 and had_selection:
            self.currentIndexChanged.emit(-1)

    def value(self) -> Any | None:
        """The selected layer, or None ("none" item or empty list)."""
        index = self.currentIndex()
        return self._offered[index] if 0 <= index < len(self._offered) else None

    def set_value(self, layer: Any) -> None:
        """Select ``layer`` (or the "none" item for None)."""
        index = next((i for i, item in enumerate(self._offered) if item is unwrap(layer)), -1)
        if index < 0:
            raise ValueError(f"layer {getattr(layer, 'name', layer)!r} is not offered here")
        self._chosen = True
        self.setCurrentIndex(index)


def layer_geometry(
    layer: napari.layers.Image, ndim: int | None = None, axes: str | None = None, *, below: bool = False
) -> dict[str, Any]:
    """The keyword arguments that place a result layer where its part of ``layer`` is in the world: ``scale``,
    ``translate``, ``rotate``, ``shear``, ``affine``, ``axis_labels`` and ``units``. The one place every result
    layer of the widgets (a deblurred or blurred copy, a baseline, the Finetune preview) gets its geometry.

    ``ndim=None``: a result of the layer's own shape, every axis as the input's (rotate, shear and the extra
    affine too: without them a rotated or sheared input's result is drawn somewhere else).
    ``ndim=2`` (or more): a result whose last two axes are pixels of one YX plane of ``layer`` (a crop of a
    ZYX stack's plane, the Finetune preview), with any axes before them its own (a channel stack): the YX part of
    the layer's transforms, and the identity on the other axes. Such a result sits at the plane's scale and
    origin instead of the world origin at unit scale, so it is drawn at the size and in the units of its input.
    The YX axes are those of ``axes`` (the run's axes string for the layer's data, e.g. ``YXC`` for a
    channel-last stack) when given and it fits the layer, else those labelled Y and X when the layer's labels
    are axis letters, else its last two. ``below=True`` (with ``ndim``): the result starts just below the plane
    instead of at its origin, a gap of a few pixels under its last row (the Finetune preview, which would
    otherwise hide part of the image it comes from).
    """
    if ndim is None:
        return {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "rotate": layer.rotate,
            "shear": layer.shear,
            "affine": layer.affine,
            "axis_labels": tuple(layer.axis_labels),
            "units": tuple(layer.units),
        }
    import numpy as np
    from napari.utils.transforms import CompositeAffine

    labels = [str(label).strip().upper() for label in layer.axis_labels]
    spatial = None if axes is None else axes.upper().replace("S", "")  # an RGB layer's samples are no axis
    if spatial is not None and len(spatial) == layer.ndim and "Y" in spatial and "X" in spatial:
        yx = [spatial.index("Y"), spatial.index("X")]
    elif "Y" in labels and "X" in labels:
        yx = [labels.index("Y"), labels.index("X")]
    else:
        yx = [layer.ndim - 2, layer.ndim - 1]
    extra = list(range(ndim - 2))  # the result's own leading axes
    physical = CompositeAffine(
        scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear, ndim=layer.ndim
    )
    plane = physical.set_slice(yx).expand_dims(extra)
    affine = layer.affine.set_slice(yx).expand_dims(extra)
    translate = tuple(float(v) for v in plane.translate)
    if below:
        shape = layer.data.shape if not getattr(layer, "multiscale", False) else layer.data[0].shape
        height = int(shape[yx[0]])
        # the plane's own transform of a pixel offset, so a rotated or sheared plane gets it along its own Y
        offset = np.zeros(len(extra) + 2)
        offset[-2] = height + max(4, height // 32)
        translate = tuple(float(v) for v in plane(offset))
    return {
        "scale": tuple(plane.scale),
        "translate": translate,
        "rotate": plane.rotate,
        "shear": plane.shear,
        "affine": affine,
        "axis_labels": tuple(str(i - ndim) for i in extra) + tuple(layer.axis_labels[i] for i in yx),
        "units": ("pixel",) * len(extra) + tuple(layer.units[i] for i in yx),
    }


def result_layer_kwargs(layer: napari.layers.Image, *, name: str) -> dict[str, Any]:
    """Keyword arguments that give a result layer the same geometry and display as ``layer``.

    Scale, translate, rotate, shear, affine, axis labels and units place the result exactly on the input;
    colormap, contrast limits, gamma, opacity, blending and rgb make it look comparable at a glance. Passing
    contrast limits also stops napari from computing them on a lazy (dask) result, which would start the
    deblurring of a whole plane.
    """
    kwargs: dict[str, Any] = {
        "name": name,
        **layer_geometry(layer),
        "contrast_limits": tuple(layer.contrast_limits),
        "gamma": layer.gamma,
        "rgb": bool(layer.rgb),
        "blending": layer.blending,
        "opacity": float(layer.opacity),
        "metadata": {"napari_deblurgan_source": layer.name},
    }
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap
    return kwargs


def gone_note(viewer: napari.Viewer, layer: Any, result_name: str) -> str:
    """What to add to "Added <result>" when ``layer``, the input of a job that has just ended, was removed from
    the viewer while the job ran ('' while it is still there).

    The result is still added (it is valid, and the user may want it): the removed layer object keeps its
    geometry and display settings, which :func:`result_layer_kwargs` copies as for a live layer, so the result
    sits where the input was. Identity is compared behind napari's proxies.
    """
    if any(unwrap(other) is unwrap(layer) for other in viewer.layers):
        return ""
    return (
        f" Its input {layer.name!r} was removed from the viewer while it was made; {result_name!r} keeps that "
        "layer's scale, position and display."
    )


def unique_name(viewer: napari.Viewer, name: str) -> str:
    """``name`` itself, or ``name [2]``, ``name [3]``... when a layer already has that name."""
    existing = {layer.name for layer in viewer.layers}
    if name not in existing:
        return name
    i = 2
    while f"{name} [{i}]" in existing:
        i += 1
    return f"{name} [{i}]"


def set_items(combo: QComboBox, items: Iterable[tuple[str, Any]]) -> None:
    """Fill ``combo`` with ``(label, data)`` items, keeping the current data when it is still offered."""
    current = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for label, data in items:
        combo.addItem(label, data)
    combo.blockSignals(False)
    for i in range(combo.count()):
        if combo.itemData(i) == current:
            combo.setCurrentIndex(i)
            break


def device_items() -> list[tuple[str, str]]:
    """``(label, id)`` pairs for a device combo box: "auto" first, then every device the core finds.

    ``devices.list_devices()`` imports torch; this is called when a widget is built (the user opened it),
    not when napari imports this module.
    """
    items = [("auto (best available)", "auto")]
    try:
        from ..devices import list_devices

        items += [(label, dev_id) for dev_id, label in list_devices()]
    except Exception as exc:  # a broken CUDA install must not stop the widget from opening
        show_error(f"Could not list devices ({error_message(exc)}); only 'auto' and 'cpu' are offered.")
        items.append(("CPU", "cpu"))
    return items

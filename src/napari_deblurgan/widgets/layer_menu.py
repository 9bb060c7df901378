"""Layers > Filter > "Deblur (default model)": one click, no dock widget.

Deblurs every selected image layer with the shipped default model and the layer's own axes, in a napari
``thread_worker`` (the viewer stays usable, napari's activity dock shows the job), and adds
"<name> deblurred" layers. It calls :func:`napari_deblurgan.deblur` exactly like the Deblur widget does.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import napari.layers
import napari.viewer

from ..inputs import is_dask
from ._common import (
    avoid_triton_llvm_clash,
    axes_for_layer,
    create_cancellable_worker,
    error_message,
    gone_note,
    layer_pixels,
    result_layer_kwargs,
    show_error,
    show_info,
    unique_name,
)
from .deblur_widget import PANEL_LABELS, PANEL_PHRASES, for_layer

#: what "default model" means: the shipped model of that name (tests point this at a tiny model file)
MODEL = "default"

#: Where the menu command's settings can be changed: it has no controls, and deblurs with the layer's own axes
DEBLUR_PANEL = "Plugins > DeblurGAN > Deblur"

#: The API's advice about its ``axes`` argument as the menu command says it: the Deblur panel's words
#: (:data:`~.deblur_widget.PANEL_PHRASES`) name its axes field, which the menu command does not have, so this
#: advice sends the user to the Deblur panel. Applied before the panel's phrases. (The menu runs with the API's
#: default tile size and overlap, so the panel's advice about those never comes up.)
MENU_PHRASES: list[tuple[str, str, str | None]] = [
    (r"pass axes, e\.g\. axes='([A-Z]+)'", rf"open {DEBLUR_PANEL} and write them in its axes field, e.g. \1", None),
    (
        r"pass axes with the right channel axis",
        f"open {DEBLUR_PANEL} and write the axes with the right channel axis in its axes field",
        None,
    ),
    (r"check the axes argument", f"open {DEBLUR_PANEL} to set the axes", None),
    (r"pass axes='([A-Z]+)'", rf"deblur it in {DEBLUR_PANEL} with \1 in its axes field", None),
]


def in_menu_words(message: str) -> str:
    """An error or warning of :func:`napari_deblurgan.deblur` as the menu command says it: the Deblur panel's
    words (:func:`~.deblur_widget.in_panel_words`), except that advice about the axes sends the user to the
    Deblur panel, where they can be set (:data:`MENU_PHRASES`)."""
    from ..cli import with_flags

    return with_flags(message, PANEL_LABELS, phrases=[*MENU_PHRASES, *PANEL_PHRASES])


def deblur_selected_layers(viewer: napari.viewer.Viewer) -> list[Any]:
    """Deblur the selected image layers with the default model, one after the other; returns their workers
    (the first started, each next one started when the one before it has finished).

    One at a time: each job already uses every core (torch's threads) and a plane's buffers, so several at once
    would only compete for them. napari injects ``viewer`` (app-model provider) when the menu item is clicked.
    """
    avoid_triton_llvm_clash()

    layers = [layer for layer in viewer.layers.selection if isinstance(layer, napari.layers.Image)]
    if not layers:
        show_error("Select an image layer in the layer list, then choose Deblur (default model) again.")
        return []
    # shared by the chain: napari quitting stops the running job at its next tile batch (instead of waiting
    # for the whole layer) and starts no other; a dask layer's lazy result is not cancellable (napari computes
    # it later, as the user browses)
    cancel = threading.Event()
    workers = []
    for layer in layers:
        try:
            axes = axes_for_layer(layer)
        except Exception as exc:
            show_error(f"{layer.name!r}: cannot tell its axes ({error_message(exc)}); use {DEBLUR_PANEL}.")
            continue
        pixels = layer_pixels(layer)
        hooks = {} if is_dask(pixels) else {"cancel": cancel}
        worker = create_cancellable_worker(
            _job,
            pixels,
            MODEL,
            axes,
            _cancel=cancel,
            _progress={"desc": f"Deblurring {layer.name}"},
            # deblur()'s warnings in the menu's words (the Deblur panel's, which has the settings it lacks)
            _in_words=in_menu_words,
            _warning_prefix=f"Deblur of {layer.name!r}: ",
            **hooks,
        )
        worker.returned.connect(lambda outcome, layer=layer: _add_result(viewer, layer, outcome))
        workers.append(worker)
    for current, following in itertools.pairwise(workers):
        current.finished.connect(lambda following=following: None if cancel.is_set() else following.start())
    if workers:
        workers[0].start()
    return workers


def _job(data: Any, model: str, axes: str, cancel: threading.Event | None = None) -> tuple[str, Any]:
    """Worker-thread body: ``deblur(data, model)``; user errors come back as a message."""
    from .. import deblur
    from ..errors import Cancelled
    from ._common import user_error_types

    try:
        return "ok", deblur(data, model, axes=axes, cancel=cancel)
    except Cancelled:
        return "cancelled", None
    except user_error_types() as exc:
        return "error", in_menu_words(error_message(exc))  # as its warnings


def _add_result(viewer: napari.viewer.Viewer, layer: Any, outcome: tuple[str, Any]) -> None:
    kind, value = outcome
    if kind == "cancelled":  # napari is quitting
        return
    if kind != "ok":
        show_error(f"Deblur of {layer.name!r} failed: {for_layer(value, layer)}")
        return
    name = unique_name(viewer, f"{layer.name} deblurred")
    gone = gone_note(viewer, layer, name)
    viewer.add_image(value, **result_layer_kwargs(layer, name=name))
    if gone:
        show_info(f"Added {name!r}.{gone}")

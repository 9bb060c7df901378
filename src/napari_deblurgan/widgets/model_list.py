"""The session's list of models offered by the Deblur and Finetune widgets.

One :class:`ModelRegistry` exists per napari viewer (created on first use, dropped with the viewer). It
starts with the shipped models (``"default"`` and any other name in the shipped registry); models the user
opens from a file and every model finetuned in this session are added to it, and every widget that shows a
model picker listens to its ``changed`` signal, so a model finetuned in the Finetune widget appears in the
Deblur widget's picker at once.

Keeping the registry per viewer (instead of a module-level list) means two viewers, or two tests, never see
each other's models, and nothing outlives the viewer that created it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from psygnal import Signal

EntryKind = Literal["named", "file", "finetuned"]


@dataclass(eq=False)
class ModelEntry:
    """One model a widget can use.

    Attributes:
        label: what the picker shows.
        kind: ``"named"`` (shipped; ``source`` is its name), ``"file"`` (``source`` is a path) or
            ``"finetuned"`` (trained in this session; ``source`` is the saved file, ``model`` the object).
        source: shipped model name or path of the ``.pt`` file; what ``load_model`` is given.
        model: the in-memory ``DeblurModel`` when there is one (finetuned models), so using it right after
            training does not re-read the file.
    """

    label: str
    kind: EntryKind
    source: str
    model: Any = field(default=None, repr=False)

    def load(self) -> Any:
        """The ``DeblurModel`` (loads the file or shipped model the first time; imports torch)."""
        if self.model is None:
            from .. import load_model

            self.model = load_model(self.source)
        return self.model


class ModelRegistry:
    """The models of one napari session, in the order they were added (shipped models first)."""

    changed = Signal()
    #: one registry per viewer; weak keys so that closing a viewer frees its registry (and models)
    _per_viewer: ClassVar[weakref.WeakKeyDictionary[Any, ModelRegistry]] = weakref.WeakKeyDictionary()

    def __init__(self, *, include_shipped: bool = True) -> None:
        self._entries: list[ModelEntry] = []
        if include_shipped:
            self._entries.extend(_shipped_entries())

    @classmethod
    def for_viewer(cls, viewer: Any) -> ModelRegistry:
        """The registry of ``viewer`` (created on first use). Keyed by the viewer itself, not by the proxy a
        dock widget receives: each panel gets its own proxy, and a registry keyed (weakly) by one would be
        dropped with that panel, taking the session's finetuned models with it."""
        from ._common import unwrap

        viewer = unwrap(viewer)
        registry = cls._per_viewer.get(viewer)
        if registry is None:
            registry = cls._per_viewer[viewer] = cls()
        return registry

    @property
    def entries(self) -> list[ModelEntry]:
        """A copy of the entries (add through :meth:`add_file` / :meth:`add_finetuned`)."""
        return list(self._entries)

    def _add(self, entry: ModelEntry) -> ModelEntry:
        self._entries.append(entry)
        self.changed.emit()
        return entry

    def add_file(self, path: str | Path) -> ModelEntry:
        """Add a model file (or return the entry already there for the same file).

        The file is not read here; reading happens when the model is used, in a worker thread, so that a
        bad file gives one notification there instead of freezing the picker.
        """
        resolved = str(Path(path).expanduser().resolve())
        for entry in self._entries:
            if entry.kind in ("file", "finetuned") and entry.source == resolved:
                return entry
        return self._add(ModelEntry(label=f"file: {Path(resolved).name}", kind="file", source=resolved))

    def add_finetuned(self, path: str | Path, model: Any = None, *, label: str | None = None) -> ModelEntry:
        """Add a model finetuned in this session and saved at ``path``."""
        resolved = str(Path(path).expanduser().resolve())
        for entry in self._entries:  # a re-save to the same file replaces the old entry's model
            if entry.source == resolved:
                entry.model = model
                entry.kind = "finetuned"
                self.changed.emit()
                return entry
        return self._add(
            ModelEntry(
                label=label or f"finetuned: {Path(resolved).stem}", kind="finetuned", source=resolved, model=model
            )
        )


def _shipped_entries() -> list[ModelEntry]:
    """Entries for the shipped models; ``default`` first. Reads the JSON registry only (no torch)."""
    try:
        from ..model_file import list_named_models

        names = list(list_named_models())
    except Exception:  # a damaged registry is reported when a model is loaded, not when the widget opens
        names = []
    if "default" in names:
        names.remove("default")
    entries = [ModelEntry(label="default (shipped)", kind="named", source="default")]
    entries += [ModelEntry(label=f"shipped: {name}", kind="named", source=name) for name in names]
    return entries

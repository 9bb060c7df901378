"""Every control that docs/quickstart-napari.md names in bold is one a user can find: a label, button, box item,
group title or tab of the three panels as napari opens them, or a menu entry that the plugin's manifest puts
in napari's menus. A renamed control, or a guide written against a control that does not exist, fails here
instead of leaving a newcomer looking for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.viewer

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "quickstart-napari.md"
PANELS = ("Deblur", "Finetune", "Compare")


def bold_terms(markdown: str) -> list[str]:
    """The guide's bold spans, whitespace collapsed (a span may wrap over two lines)."""
    return sorted({" ".join(span.split()) for span in re.findall(r"\*\*([^*]+)\*\*", markdown)})


def manifest_menu_paths() -> set[str]:
    """The menu paths napari shows for this plugin, from its manifest (npe2): the panels under Plugins, the
    samples under File > Open Sample, and the commands it adds to a napari menu."""
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-deblurgan")
    plugin = manifest.display_name
    paths = {f"Plugins > {plugin}", f"File > Open Sample > {plugin}"}
    paths |= {f"Plugins > {plugin} > {w.display_name}" for w in manifest.contributions.widgets or []}
    paths |= {f"File > Open Sample > {plugin} > {s.display_name}" for s in manifest.contributions.sample_data or []}
    titles = {c.id: c.title for c in manifest.contributions.commands or []}
    menu_names = {"napari/layers/filter": "Layers > Filter"}  # the napari menus this plugin contributes to
    for menu_id, items in (manifest.contributions.menus or {}).items():
        for item in items:
            paths.add(f"{menu_names[menu_id]} > {titles[item.command]}")
    return paths


def panel_texts(viewer) -> set[str]:
    """What a user can read on the three panels, hidden controls included (a section shows them on demand)."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QGroupBox, QLabel, QTabWidget, QWidget

    texts: set[str] = set()
    for name in PANELS:
        _, panel = viewer.window.add_plugin_dock_widget("napari-deblurgan", name)
        for child in panel.findChildren(QWidget):
            if isinstance(child, QLabel | QAbstractButton):
                texts.add(child.text())
            elif isinstance(child, QComboBox):
                texts.update(child.itemText(i) for i in range(child.count()))
            elif isinstance(child, QGroupBox):
                texts.add(child.title())
            elif isinstance(child, QTabWidget):
                texts.update(child.tabText(i) for i in range(child.count()))
    return {" ".join(text.replace("&", "").split()) for text in texts if text}


def names_a_control(term: str, texts: set[str]) -> bool:
    """A control's text is the term, with at most a trailing colon or a note in brackets ("per slice (stacks)")."""
    term = term.lower()
    for text in texts:
        text = text.lower()
        if text.rstrip(":") == term or text.startswith(term + " ("):
            return True
    return False


def test_every_bold_control_in_the_napari_guide_exists(make_napari_viewer):
    terms = bold_terms(GUIDE.read_text(encoding="utf-8"))
    assert len(terms) > 30, "the guide's bold terms were not found: has its markup changed?"
    menus = manifest_menu_paths()
    texts = panel_texts(make_napari_viewer())
    missing = []
    for term in terms:
        if term in menus or term in PANELS:
            continue
        # "tile size / tile overlap": two controls named together
        if not all(names_a_control(part.strip(), texts) for part in term.split(" / ")):
            missing.append(term)
    assert not missing, f"docs/quickstart-napari.md names controls the panels do not have: {missing}"


def test_the_check_sees_a_renamed_control(make_napari_viewer):
    """The matching is strict enough to fail: a control name one word off, or a menu the plugin lacks."""
    texts = panel_texts(make_napari_viewer())
    assert names_a_control("border context", texts)
    assert not names_a_control("border contexts", texts)
    assert not names_a_control("border", texts)
    assert "Plugins > DeblurGAN > Deblur" in manifest_menu_paths()
    assert "Plugins > DeblurGAN > Denoise" not in manifest_menu_paths()

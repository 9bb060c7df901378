"""The user's home in paths: ``~`` and ``~user`` at the start of a path the public API takes.

Python's file functions take ``~`` literally (``open("~/m.pt")`` looks for a folder named ``~``), while
users of napari's console type ``~/...`` as they would in a shell. Every function of the package that takes
a file or folder path from the user (``load_model``, ``deblur``'s ``model``, ``DeblurModel.save``,
``finetune``'s ``model``/``checkpoint_dir``/``resume``/``perceptual_weights``/``teacher``, ``run_demo``'s
``output``, ``ComparisonTable.to_csv``) and the command line's path options pass it through
:func:`expand_user` once, where it comes in: the path is then the expanded one everywhere, in the messages as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def expand_user(value: Any) -> Any:
    """``value`` with a leading ``~`` or ``~user`` replaced by that home folder (``os.path.expanduser``).

    A ``str`` stays a ``str`` (so that a shipped model name is still recognised as one) and another
    ``os.PathLike`` becomes a ``Path``; anything else (None, a DeblurModel, a file object) is returned as it
    is. A home that cannot be found leaves the path as it was, as ``os.path.expanduser`` does.
    """
    if isinstance(value, str):
        return os.path.expanduser(value)
    if isinstance(value, os.PathLike):
        expanded = os.path.expanduser(value)
        return Path(expanded) if isinstance(expanded, str) else value
    return value


__all__ = ["expand_user"]

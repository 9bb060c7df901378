"""Objects that look like images to a user but are not pixel arrays: napari layers and multiscale data.

``np.asarray`` turns a napari layer into a 0-d object array (whose error would then talk about dtypes) and
napari's multiscale data into its *coarsest* level, so a deblurred "image" would silently be the smallest
pyramid level. The public functions call :func:`reject_viewer_objects` before converting their inputs, so
that both get one message that says what to pass instead. No napari import: recognised by their types'
modules and names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError


def is_dask(value: Any) -> bool:
    """True for dask arrays (checked by type, so that NumPy-only sessions never import dask)."""
    return type(value).__module__.split(".")[0] == "dask"


def is_lazy(image: Any) -> bool:
    """Whether ``image`` is read a region at a time rather than through ``np.asarray``, which would read it
    whole: a dask array or another array-like with a NumPy ``dtype``, a ``shape`` and ``__getitem__`` that is
    no ndarray (zarr, h5py, tifffile's zarr store). A memory map is an ndarray: its planes are views that the
    OS reads on demand. Torch tensors (a ``torch.dtype``) are not lazy: ``np.asarray`` takes them as they are."""
    return (
        not isinstance(image, np.ndarray)
        and isinstance(getattr(image, "dtype", None), np.dtype)
        and hasattr(image, "shape")
        and hasattr(image, "__getitem__")
    )


def _from_napari(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "napari"


def _is_multiscale_data(value: Any) -> bool:
    return _from_napari(value) and type(value).__name__ == "MultiScaleData"


def is_torch_tensor(value: Any) -> bool:
    """True for torch tensors (and their subclasses, such as parameters), told by type: no torch import."""
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(value).__mro__)


def reject_torch_tensor(value: Any, name: str = "image", *, cpu_ok: bool = False) -> None:
    """InputError for a torch tensor, saying to pass a NumPy array; with ``cpu_ok``, only for one that NumPy
    cannot read as it is (one that requires grad, or one on a GPU), since ``np.asarray`` reads a plain CPU
    tensor."""
    if not is_torch_tensor(value):
        return
    device = getattr(getattr(value, "device", None), "type", "cpu")
    grad = bool(getattr(value, "requires_grad", False))
    if cpu_ok and device == "cpu" and not grad:
        return
    where = f" on {value.device}" if device != "cpu" else ""
    why = f"{where}{' that requires grad' if grad else ''}"
    raise InputError(
        f"The {name} is a torch tensor{why}; pass a NumPy array: tensor.detach().cpu().numpy()."
    )


def reject_viewer_objects(value: Any, name: str = "image") -> None:
    """InputError for a napari layer, napari multiscale data or a list of arrays of different shapes (the
    levels of a pyramid), naming the array to pass instead; nothing for anything else. Seen through napari's
    ``PublicOnlyProxy`` too (what a plugin's ``viewer.layers[i].data`` is), which hides what it wraps. A torch
    tensor that NumPy cannot read as it is (on a GPU, or requiring grad) is one too."""
    reject_torch_tensor(value, name, cpu_ok=True)
    if _from_napari(value) and hasattr(value, "__wrapped__"):
        value = value.__wrapped__
    if _is_multiscale_data(value):
        shapes = ", ".join(str(tuple(level.shape)) for level in value)
        raise InputError(
            f"The {name} is multiscale data with {len(value)} levels ({shapes}); pass one level, e.g. "
            "layer.data[0] for full resolution (np.asarray would give the coarsest level)."
        )
    if _from_napari(value) and hasattr(value, "data") and hasattr(value, "name"):
        # a layer (unwrapped above when it came through napari's proxy)
        data = "layer.data[0] (full resolution)" if getattr(value, "multiscale", False) else "layer.data"
        raise InputError(
            f"The {name} is a napari {type(value).__name__} layer ({value.name!r}); pass its pixels instead: {data}."
        )
    if isinstance(value, list | tuple) and len(value) > 1 and all(hasattr(v, "shape") for v in value):
        shapes = [tuple(v.shape) for v in value]
        if len(set(shapes)) > 1 and all(len(s) == len(shapes[0]) for s in shapes):
            raise InputError(
                f"The {name} is a list of {len(value)} arrays of different shapes ({', '.join(map(str, shapes))}), "
                "like the levels of a multiscale image; pass one array, e.g. the first (full resolution)."
            )

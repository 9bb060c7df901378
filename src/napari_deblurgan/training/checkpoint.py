"""Atomic, resumable training checkpoints.

A checkpoint is one file, ``<checkpoint_dir>/checkpoint.pt``, holding everything needed to continue a run
*exactly* (same losses as an uninterrupted run on CPU): generator, critic and EMA weights, optimiser states,
the learning-rate schedule state, the step, all random-number-generator states (torch CPU, CUDA, NumPy,
Python, and the data sampler's own generators) and the run configuration.

Writes are atomic: the file is written next to its destination under a temporary name, flushed to disk and
renamed over the old one (``os.replace``), so a crash or Ctrl-C during a save leaves the previous checkpoint
intact. Files are read back with ``torch.load(weights_only=True)``: non-tensor state that the restricted
unpickler cannot hold (NumPy/Python RNG states with 128-bit integers, the config) is stored as JSON text. Before
that the zip CRC-32s are checked, streaming through the file; after it, every tensor is checked for NaN/inf.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..atomic_files import atomic_write
from ..errors import InputError, ModelFileError
from ..model_file import ZIP_MAGIC, WatchedReads, archive_damage, file_changed, file_state, first_non_finite

CHECKPOINT_FORMAT = "napari-deblurgan-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    """The checkpoint file of a run's folder: ``<directory>/checkpoint.pt``. An existing file is returned as
    it is, so that ``resume=`` may name the checkpoint file (the path ``CheckpointSaved`` reports) as well as
    its folder; a checkpoint folder is always a folder, whatever its name ends with."""
    path = Path(directory)
    if path.is_file():
        return path
    return path / CHECKPOINT_NAME


def checkpoint_folder(path: str | os.PathLike[str]) -> Path:
    """The folder a run checkpoints into, given that folder or a checkpoint file in it."""
    path = Path(path)
    return path.parent if path.is_file() else path


def capture_global_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), NumPy and Python, checkpoint-ready."""
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_json": json.dumps(_jsonable(np.random.get_state(legacy=False))),
        "python_json": json.dumps(_jsonable(random.getstate())),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_global_rng` captured."""
    import torch

    torch.set_rng_state(state["torch"].cpu())
    np_state = json.loads(state["numpy_json"])
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["state"]["key"], dtype=np.uint32),
            np_state["state"]["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py = json.loads(state["python_json"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda_states):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def save_checkpoint(directory: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically to ``<directory>/checkpoint.pt`` and return that path.

    ``payload`` must contain ``"step"`` and may contain tensors, state dicts and a ``"json"`` string; the
    format marker and version are added here.
    """
    import torch

    path = checkpoint_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic_write removes old temporary files of killed saves (atomic_files.remove_stale_parts)
    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        torch.save(full, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises :class:`InputError` when there is none at ``directory`` and :class:`ModelFileError` when the file
    is not a readable checkpoint of this package.
    """
    import torch

    path = checkpoint_path(directory)
    if not path.is_file():
        raise InputError(
            f"No training checkpoint at {path}. Pass the --checkpoint-dir / checkpoint_dir folder of an earlier "
            "run to resume, or leave resume out to start a new run."
        )
    not_a_checkpoint = (
        f"{path} is not a napari-deblurgan training checkpoint (the checkpoint.pt a run writes into its "
        "checkpoint_dir); pass the checkpoint_dir folder of an earlier run, or its checkpoint.pt."
    )

    size = 0  # the file's size in bytes, for the message of a damaged file

    def changed() -> ModelFileError:
        return ModelFileError(
            f"Cannot read the training checkpoint {path}: it changed while it was read (another program is writing "
            "or copying it), so nothing was loaded. Wait until that has finished, then resume again."
        )

    def damaged(detail: str) -> ModelFileError:
        """The error for a checkpoint cut short or changed on disk."""
        return ModelFileError(
            f"Cannot read the training checkpoint {path}: the file is damaged or incomplete ({size} bytes; "
            f"{detail}), e.g. a copy cut short or a disk that filled up. Resume from an intact copy of it, or "
            "leave resume out to start a new run."
        )

    def read(handle: BinaryIO) -> Any:
        """The checked payload of the open checkpoint file ``handle``; a failed read raises its OSError."""
        head = handle.read(len(ZIP_MAGIC))
        if not head.startswith(ZIP_MAGIC) and not (ZIP_MAGIC.startswith(head) and size == len(head)):
            raise ModelFileError(not_a_checkpoint)  # another kind of file (an image, text): torch.save writes zips
        handle.seek(0)
        # torch.load does not check the archive's CRC-32s: a flipped bit would resume from changed weights or
        # state. A failed read (EIO) is raised as an OSError, said as a read error, not called damage
        damage = archive_damage(handle)
        if damage is not None:
            raise damaged(damage)
        handle.seek(0)
        watched = WatchedReads(handle)  # torch.load reports a failed read as a SystemError
        try:
            return torch.load(watched, map_location="cpu", weights_only=True)  # type: ignore[arg-type]
        except pickle.UnpicklingError:
            # pickled objects other than tensors: torch's own text would advise weights_only=False, which runs
            # any code the file holds
            raise ModelFileError(not_a_checkpoint) from None
        except OSError:
            raise  # the disk failed while reading: said below, not called damage
        except Exception as exc:  # an intact archive that is not a torch.save file, EOFError, ...
            watched.raise_read_error()
            raise damaged(f"unreadable: {_first_line(exc)[:200]}") from None

    try:
        # the zip check and torch.load both read from this one open file, part by part: reading the file whole
        # into memory first would double the peak memory of a resume (a large model's checkpoint holds its
        # weights three times over, with the EMA and the best weights, plus the optimiser's moments)
        with open(path, "rb") as handle:
            # compared after the loading: a checkpoint rewritten in place meanwhile (a copy onto it; saves rename)
            # would load bytes whose CRCs were never checked
            before = file_state(handle)
            size = os.fstat(handle.fileno()).st_size
            try:
                payload = read(handle)
            except ModelFileError:
                if file_changed(before, handle):  # half rewritten, it reads as damaged: say what happened instead
                    raise changed() from None
                raise
            if file_changed(before, handle):
                raise changed()
    except ModelFileError:
        raise
    except OSError as exc:
        raise ModelFileError(f"Cannot read the training checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(not_a_checkpoint)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(
            f"{path} is a version {payload.get('version')} checkpoint; this napari-deblurgan reads version "
            f"{CHECKPOINT_VERSION}."
        )
    # the CRCs only say that the file is as it was written: weights that were already NaN then (a run that had
    # diverged, a device fault) would resume into a run whose every loss is NaN, rolled back to the same NaN
    # state until it gives up. The optimiser's moments are checked too (an inf there poisons the next update);
    # the float64 sum of model_file's check makes this cheap next to the reading of the file
    bad = first_non_finite(dict(_named_tensors(payload)))
    if bad is not None:
        raise ModelFileError(
            f"Cannot resume from the training checkpoint {path}: it holds values that are not finite (NaN or "
            f"infinite), first in {bad!r}, so the run had diverged or the file was changed before it was "
            "written. Resume from an earlier copy of the checkpoint folder, or leave resume out to start a new run."
        )
    return payload


def _named_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every tensor in a checkpoint's nested dicts and lists, named by its path of keys
    (``"state.opt_g.state.0.exp_avg"``)."""
    import torch

    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _named_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _jsonable(value: Any) -> Any:
    """Turn RNG states (nested tuples/dicts with NumPy arrays and big ints) into JSON-able lists/dicts."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = [
    "CHECKPOINT_NAME",
    "capture_global_rng",
    "checkpoint_folder",
    "checkpoint_path",
    "load_checkpoint",
    "restore_global_rng",
    "save_checkpoint",
]


def first_non_finite_tensor(payload: Mapping[str, Any]) -> str | None:
    """The key path of the first tensor of a checkpoint ``payload`` (weights, optimiser moments, best weights)
    holding a NaN or infinity, or None: refused on load, and never written over the last good checkpoint.

    The training loop checks its state this way after every snapshot and checkpoint step, where it is on the
    device: the common answer (all finite) takes one wait for each device, not one per tensor (hundreds for a
    generator, a critic and their optimisers); only a state that is not finite is searched tensor by tensor."""
    tensors = dict(_named_tensors(payload))
    if _all_finite(tensors.values()):
        return None
    return first_non_finite(tensors)


def _all_finite(tensors: Iterable[Any]) -> bool:
    """Whether every floating-point tensor of ``tensors`` holds finite values only, as :func:`first_non_finite`
    decides it (other dtypes are not checked), with one host-device sync per device: each tensor's verdict
    stays on its device, and they are reduced there into one."""
    import torch

    verdicts: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if not tensor.is_floating_point():
            continue
        if tensor.device.type == "cpu" and tensor.dtype != torch.float64:
            # as first_non_finite: a float64 sum of float32/16 values cannot overflow, so it is finite exactly
            # when they all are. Elsewhere isfinite(): a float64 tensor's sum may overflow, MPS has no float64;
            # never a norm, which large finite values overflow too
            verdict = torch.isfinite(tensor.sum(dtype=torch.float64))
        else:
            verdict = torch.isfinite(tensor).all()
        verdicts.setdefault(tensor.device, []).append(verdict)
    return all(bool(torch.stack(group).all()) for group in verdicts.values())

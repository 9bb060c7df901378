"""Compute devices: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | ``"mps"``.

torch is imported inside the functions: this module is imported by widgets at start-up.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import InputError


def resolve_device(device: Any = "auto"):
    """A ``torch.device`` for ``device``; "auto" prefers CUDA, then Apple's MPS, then the CPU.

    Raises InputError for unknown names or for a GPU that does not exist here.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device is None:
        device = "auto"
    if not isinstance(device, str):
        raise InputError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise InputError("device 'mps' asked for, but Apple's MPS is not available here; use device='cpu'")
        return dev
    raise InputError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast_dtype(device) -> Any | None:
    """The reduced precision to autocast to on ``device`` (bfloat16 where supported, else float16), or None
    on the CPU, where float32 is both faster and exact enough."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


#: ``precision`` values of training (:func:`training_autocast_dtype`).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def training_autocast_dtype(precision: str, device) -> Any | None:
    """The dtype training autocasts to for ``precision`` on ``device``, or None for plain float32.

    ``"auto"`` is :func:`autocast_dtype` on CUDA (bfloat16, or float16 where bfloat16 is unsupported) and
    float32 elsewhere (the CPU, and MPS, where training was never measured in reduced precision); ``"float32"`` never
    autocasts (what a model that must restore high-SNR images to 40 dB and more may need, docs/training.md);
    ``"bfloat16"`` and ``"float16"`` autocast on any device that supports them (bfloat16 on the CPU too, for
    comparing precisions where there is no GPU).
    """
    import torch

    from .errors import InputError

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision == "auto":
        return autocast_dtype(device) if device.type == "cuda" else None
    if precision == "float32":
        return None
    if precision == "float16" and device.type == "cpu":
        raise InputError("precision='float16' needs a GPU; use 'bfloat16' or 'float32' on the CPU.")
    return getattr(torch, precision)


def list_devices() -> list[tuple[str, str]]:
    """(device id, label) for every device that exists here, CPU first: for dropdowns."""
    import torch

    devices = [("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i}", f"cuda:{i} — {torch.cuda.get_device_name(i)}"))
    if _mps_available():
        devices.append(("mps", "Apple MPS"))
    return devices


def avoid_triton_llvm_clash() -> None:
    """Keep torch from importing triton inside napari on Linux (call before a job's first torch use).

    napari's OpenGL canvas on Mesa's software renderer (llvmpipe: VMs, remote desktops, Xvfb) loads Mesa's
    LLVM; importing triton afterwards loads triton's own LLVM into the same process and crashes it with a
    segmentation fault (seen with torch 2.14 + Mesa 22: torch.optim imports torch._dynamo, which probes for
    triton). napari-deblurgan never uses ``torch.compile``, the only user of triton, so inside napari
    triton is marked unavailable: torch then reports "no triton" instead of importing it. Nothing changes
    when triton was already imported (it was loaded before the OpenGL context, which is safe).
    """
    if sys.platform.startswith("linux") and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError


def guard_torch_inside_napari() -> None:
    """Apply :func:`avoid_triton_llvm_clash` when running inside napari (its canvas may hold Mesa's LLVM).

    Called by the trainer at the start of every run, so console users are protected as well as widgets.
    """
    if "napari" in sys.modules or "vispy" in sys.modules:
        avoid_triton_llvm_clash()

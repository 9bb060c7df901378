"""Model files: :class:`DeblurModel` (a generator plus everything needed to use it) and its file format.

A model file is one ``torch.save`` archive holding only tensors and strings::

    {"format": "napari-deblurgan-model", "format_version": 1,
     "metadata": "<JSON string>", "state_dict": {name: tensor, ...}}

The JSON string carries the architecture and its constructor arguments, the channel count and mode, the
intensity normalisation, the border context to use at inference (``context_padding``; absent in older files)
and free-form metadata (name, description, training provenance, package version,
creation time). Files are read with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler builds
tensors and plain containers only, so a file that tries to run code (a pickled ``__reduce__`` payload) is
refused before anything in it executes. Before that, the CRC-32 the zip archive stores for each of its parts is
checked (torch.load does not), so that a damaged file is refused rather than loaded with changed weights.

A bare generator state dict (what the original DeblurGAN code saves) is *not* accepted by
:func:`load_model`, because it says nothing about the architecture or normalisation; the error message says
how to wrap one (build a model with :func:`create_model` and ``model.generator.load_state_dict``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import io
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .atomic_files import atomic_write
from .errors import InputError, ModelFileError
from .user_paths import expand_user

if TYPE_CHECKING:  # torch is imported lazily: `import napari_deblurgan` must stay cheap
    import torch

FORMAT = "napari-deblurgan-model"
FORMAT_VERSION = 1
DEFAULT_NORMALIZATION: dict[str, Any] = {"method": "percentile", "low": 1.0, "high": 99.8}
CHANNEL_MODES = ("joint", "independent")
#: How :meth:`DeblurModel.save` may store the floating-point weights (torch dtype names).
WEIGHTS_DTYPES = ("float32", "float16")

#: JSON registry of the models shipped with the package: {"models": {name: {"file", "sha256", ...}}}.
#: Module-level so tests can point it at a temporary registry.
REGISTRY_PATH = Path(__file__).with_name("weights") / "registry.json"

_HOW_TO_GET_A_MODEL = (
    "Train one on your own blurred/sharp images with `napari-deblurgan finetune` (or "
    "napari_deblurgan.finetune in Python) and pass the saved .pt file, or list the shipped models with "
    "`napari-deblurgan info --list`."
)


# --------------------------------------------------------------------------------------------------- model
class DeblurModel:
    """A deblurring generator together with what is needed to apply and re-create it.

    Attributes:
        generator: the ``torch.nn.Module`` (always kept in eval mode here; training code switches modes itself).
        architecture: registry name of the architecture (``models.list_architectures()``).
        architecture_args: JSON-able keyword arguments of ``models.build_generator`` (without ``channels``).
        channels: number of image channels the generator takes.
        channel_mode: ``"joint"`` (all channels fed together to a C-channel model) or ``"independent"``
            (a 1-channel model applied to each channel separately).
        normalization: intensity normalisation applied before the generator, e.g.
            ``{"method": "percentile", "low": 1.0, "high": 99.8}``.
        context_padding: pixels of reflected context that :func:`~napari_deblurgan.deblur` adds around each
            plane before running the generator, or None for the default rule
            (``inference.tiling.context_padding``: the receptive radius, at most 32 px). A property of the
            weights, chosen by measurement: 0 lets border pixels see the generator's own zero padding, as
            they did in every training crop.
        metadata: free-form JSON-able information: name, description, training provenance, package version,
            ``created`` (ISO 8601 UTC) and, for a loaded model, the ``sha256`` of its file.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        architecture: str,
        architecture_args: Mapping[str, Any] | None = None,
        channels: int = 1,
        channel_mode: str | None = None,
        normalization: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        context_padding: int | None = None,
    ) -> None:
        channels = int(channels)
        if channels < 1:
            raise InputError(f"channels must be >= 1, got {channels}.")
        if channel_mode is None:
            # A single-channel model can only be run channel by channel; a C-channel one sees all at once.
            channel_mode = "independent" if channels == 1 else "joint"
        if channel_mode not in CHANNEL_MODES:
            raise InputError(f"channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}.")
        if channel_mode == "independent" and channels != 1:
            raise InputError(
                f"channel_mode 'independent' needs a 1-channel model (it is run on each channel), but the "
                f"model has {channels} channels; use channel_mode='joint'."
            )
        if architecture_args is None:
            architecture_args = _args_from_config(getattr(generator, "config", {}))
        self.generator = generator.eval()
        self.architecture = str(architecture)
        self.architecture_args = dict(architecture_args)
        self.channels = channels
        self.channel_mode = channel_mode
        self.normalization = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
        self.context_padding = check_context_padding(context_padding)
        self.metadata: dict[str, Any] = dict(metadata or {})
        # Fail now, not at save time, if something cannot be written as JSON.
        try:
            json.dumps(self._header())
        except (TypeError, ValueError) as exc:
            raise InputError(f"Model metadata, normalisation and architecture_args must be JSON-able: {exc}") from None

    # -- properties ------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this (the generator's total downsampling)."""
        return int(getattr(self.generator, "stride", 1))

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel that can influence it (the tile halo needed)."""
        return int(self.generator.receptive_radius)

    @property
    def name(self) -> str | None:
        """The model's name from its metadata, if any."""
        return self.metadata.get("name")

    @property
    def device(self) -> torch.device:
        """Device of the generator's parameters."""
        import torch

        for p in self.generator.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: Any) -> DeblurModel:
        """Move the generator to ``device`` ("cpu", "cuda:0", "auto", a ``torch.device``); returns self. None
        leaves it where it is, as ``torch.nn.Module.to(None)`` does."""
        if device is not None:
            self.generator.to(_resolve_device(device))
        return self

    def with_generator(
        self,
        generator: torch.nn.Module,
        *,
        architecture_args: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> DeblurModel:
        """A new model with this one's architecture name, channels and normalisation around ``generator``;
        ``architecture_args`` and ``metadata`` default to (a copy of) this model's."""
        return DeblurModel(
            generator,
            self.architecture,
            architecture_args=self.architecture_args if architecture_args is None else architecture_args,
            channels=self.channels,
            channel_mode=self.channel_mode,
            normalization=self.normalization,
            metadata=dict(self.metadata) if metadata is None else metadata,
            context_padding=self.context_padding,
        )

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<DeblurModel{name} {self.architecture} channels={self.channels} ({self.channel_mode}) "
            f"stride={self.stride} radius={self.receptive_radius}>"
        )

    # -- file I/O --------------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        """JSON part of the file: everything except the weights."""
        meta = {k: v for k, v in self.metadata.items() if k != "sha256"}  # sha256 describes the old file
        return {
            "architecture": self.architecture,
            "architecture_args": self.architecture_args,
            "channels": self.channels,
            "channel_mode": self.channel_mode,
            "normalization": self.normalization,
            "context_padding": self.context_padding,
            "metadata": meta,
        }

    def save(self, path: str | os.PathLike[str] | BinaryIO, *, weights_dtype: str = "float32") -> Any:
        """Write the model to ``path`` (conventionally ``*.pt``) atomically; returns the path.

        The file is written to a temporary file in the same directory, flushed to disk and renamed over
        ``path``, so an interrupted save leaves either the old file or none - never half a file.

        ``path`` may also be a binary file object open for writing (``io.BytesIO()``, ``open(p, "wb")``, as
        ``torch.save`` takes): the model is written into it at its position, and it is returned (not closed,
        and not written atomically: that is then the caller's business). :func:`load_model` reads it back.

        ``weights_dtype="float16"`` stores the floating-point weights at half the size (for shipping a large
        model; the generator still computes in float32 after loading, because loading copies the weights into
        float32 parameters). It rounds every weight to 11 significant bits, so measure the stored file.
        """
        import torch

        from . import __version__

        if weights_dtype not in WEIGHTS_DTYPES:
            raise InputError(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {weights_dtype!r}")
        stored = getattr(torch, weights_dtype)
        stream = _writable_stream(path)
        header = self._header()
        # like sha256, the path of the file this model was loaded from; a checkpoint's copy of the base model's
        # header (_header itself) keeps it, to say which model a run started from
        header["metadata"].pop("path", None)
        header["metadata"].setdefault("created", _utc_now())
        header["metadata"].setdefault("package_version", __version__)
        header["metadata"]["torch_version"] = torch.__version__
        header["metadata"]["weights_dtype"] = weights_dtype
        state = {
            k: (v.detach().cpu().to(stored) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in self.generator.state_dict().items()
        }
        bad = first_non_finite(state)
        if bad is not None:
            if first_non_finite(self.generator.state_dict()) is not None:  # already so before the conversion
                raise InputError(
                    f"The model's weights hold values that are not finite (NaN or infinite), first in {bad!r}: its "
                    "training diverged. Use an earlier model or checkpoint, or train again with a lower learning rate."
                )
            raise InputError(f"Some weights are not finite as {weights_dtype} (beyond its range); save as float32.")
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metadata": json.dumps(header, sort_keys=True),
            "state_dict": state,
        }
        if stream is not None:
            try:
                torch.save(payload, stream)
            except io.UnsupportedOperation as exc:  # a file object open for reading only
                raise InputError(
                    f"DeblurModel.save cannot write to this file object ({exc}); open the file with mode 'wb'."
                ) from None
        else:
            path = Path(expand_user(path))  # not a stream: a str or os.PathLike; "~/m.pt" is in the home folder
            with atomic_write(path) as tmp, open(tmp, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
        self.metadata.setdefault("created", header["metadata"]["created"])
        self.metadata.setdefault("package_version", header["metadata"]["package_version"])
        return path


def _writable_stream(target: Any) -> BinaryIO | None:
    """``target`` if it is a binary file object to write a model into, None for a path; InputError otherwise."""
    if isinstance(target, str | os.PathLike):
        return None
    if isinstance(target, io.TextIOBase):
        raise InputError("DeblurModel.save needs a binary file object; open the file with mode 'wb', not 'w'.")
    if callable(getattr(target, "write", None)):
        return target
    raise InputError(
        f"DeblurModel.save takes a file path (e.g. 'model.pt') or a binary file object open for writing "
        f"(io.BytesIO(), open(path, 'wb')); got {type(target).__name__}."
    )


def check_context_padding(value: Any) -> int | None:
    """``value`` as a border context in pixels (an integer >= 0), or None; InputError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):  # ints and NumPy integers, not floats
        raise InputError(f"context_padding must be a whole number of pixels >= 0 or None, got {value!r}")
    if int(value) < 0:
        raise InputError(f"context_padding must be >= 0 pixels, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------- creating
def create_model(
    architecture: str = "unet_lite",
    channels: int = 1,
    seed: int | None = None,
    *,
    normalization: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    context_padding: int | None = None,
    **arch_args: Any,
) -> DeblurModel:
    """Make an untrained :class:`DeblurModel`.

    Args:
        architecture: name from ``list_architectures()`` (e.g. ``"unet_lite"``, ``"resnet9"``).
        channels: image channels; 1 gives a channel-independent model, >1 a joint one.
        seed: makes the initial weights reproducible without touching the global RNG state.
        normalization: intensity normalisation (default percentile 1 / 99.8).
        metadata: extra metadata (name, description, ...).
        context_padding: border context at inference (:class:`DeblurModel`); None for the default rule.
        **arch_args: architecture-specific keyword arguments (e.g. widths), passed to ``build_generator``.
    """
    import torch

    from . import __version__
    from .models import build_generator

    if seed is None:
        generator = build_generator(architecture, channels, **arch_args)
    else:
        # fork_rng restores the global CPU RNG afterwards; devices=[] because no CUDA RNG is used here.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            generator = build_generator(architecture, channels, **arch_args)
    meta: dict[str, Any] = {
        "name": None,
        "description": "untrained",
        "created": _utc_now(),
        "package_version": __version__,
        "training": None,
    }
    if seed is not None:
        meta["init_seed"] = int(seed)
    meta.update(metadata or {})
    return DeblurModel(
        generator,
        architecture,
        architecture_args=_args_from_config(getattr(generator, "config", None), fallback=arch_args),
        channels=channels,
        normalization=normalization,
        metadata=meta,
        context_padding=context_padding,
    )


# ---------------------------------------------------------------------------------------------- loading
def load_model(
    path_or_name: str | os.PathLike[str] | BinaryIO | DeblurModel = "default", *, device: Any = None
) -> DeblurModel:
    """Load a :class:`DeblurModel` from a file path or a shipped model name.

    Args:
        path_or_name: a ``.pt`` file written by :meth:`DeblurModel.save`, a shipped model name
            (``"default"``, the default, or a name from :func:`list_named_models`), or a ``DeblurModel``
            (returned as is, not copied; moved to ``device`` only if one is given).
            A shipped name given as a ``str`` is always the shipped model, whatever the working directory holds
            (a file or folder called ``default`` there must not change what ``deblur(image)`` does); a file of
            that name is ``"./default"`` or a ``Path``. A binary file object open for reading (what
            ``DeblurModel.save(io.BytesIO())`` wrote, an ``open(path, "rb")``) is read from its position to
            its end, with the same checks as a file (``weights_only``, the format); its metadata gets the
            ``sha256`` of what was read and no ``path``.
        device: where to put the generator ("cpu", "cuda", "cuda:1", "mps", "auto" or a ``torch.device``).
            None (the default) is the CPU for a file, a name or a file object, and leaves a ``DeblurModel``
            where it is. The CPU, not ``deblur``'s and ``finetune``'s "auto", on purpose: neither needs the
            model anywhere beforehand (``deblur(image, model, device=...)`` moves the model's generator, in
            place, to its own ``device``, "auto" by default, and it stays there after the call; ``finetune``
            trains a copy on its ``device`` and returns a model on the CPU), and loading onto a GPU would start
            CUDA (a few hundred MB of GPU memory and seconds) for a model that is only inspected
            (``metadata``, ``napari-deblurgan info``) or saved. Pass ``device="cuda"`` to place it now.

    Raises:
        ModelFileError: the file is missing, truncated, corrupt (a zip CRC-32 of its parts does not match),
            contains pickled code, is not a napari-deblurgan model, names an unknown architecture, its weights
            do not fit the architecture or are not finite, or a shipped file fails its sha256 check.
    """
    return _load_model(path_or_name, device)


def load_base_model(model: str | os.PathLike[str] | DeblurModel, *, device: Any = None) -> DeblurModel:
    """:func:`load_model` for ``finetune(model=...)``: the same, but where no file or shipped model of that
    name exists the message also lists the architecture names finetune trains from scratch."""
    return _load_model(model, device, architectures=True)


def _architectures_clause() -> str:
    """What finetune takes besides files and shipped names (for its not-found messages)."""
    from .models import list_architectures

    return f"; finetune also takes an architecture name to train from scratch ({', '.join(list_architectures())})"


def _load_model(path_or_name: Any, device: Any, *, architectures: bool = False) -> DeblurModel:
    """:func:`load_model`; with ``architectures``, its not-found messages name the architectures too."""
    if isinstance(path_or_name, io.TextIOBase):
        raise InputError("load_model needs a binary file object; open the file with mode 'rb', not 'r'.")
    if not isinstance(path_or_name, DeblurModel | str | os.PathLike) and not callable(
        getattr(path_or_name, "read", None)
    ):
        raise InputError(
            f"load_model takes a model file path, a shipped model name (e.g. 'default'), a binary file object "
            f"open for reading or a DeblurModel; got {type(path_or_name).__name__}."
        )
    if isinstance(path_or_name, DeblurModel):
        # None, not "cpu", is the default: so that an explicit device="cpu" moves a model that is on a GPU
        if device is not None:
            path_or_name.to(device)
        return path_or_name
    if not isinstance(path_or_name, str | os.PathLike):
        return _load_stream(path_or_name, device)
    path_or_name = expand_user(path_or_name)  # "~/m.pt": the messages below name the expanded path

    expected_sha: str | None = None
    path = Path(path_or_name)
    if isinstance(path_or_name, str) and (
        _is_shipped_name(path_or_name) or (not path.exists() and _looks_like_name(path_or_name))
    ):
        path, expected_sha = _resolve_named(path_or_name, architectures=architectures)

    if path.is_dir():
        raise ModelFileError(_directory_advice(path))
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below, after the loading that reads from it)
    except FileNotFoundError:
        shipped = ", ".join(map(repr, sorted(list_named_models()))) or "none in this version"
        also = _architectures_clause() if architectures else ""
        raise ModelFileError(
            f"Model file {os.fspath(path_or_name)!r} not found. Pass the path of a .pt file saved by "
            f"napari-deblurgan, or a shipped model by its name alone, without a path ({shipped}){also}. "
            f"{_HOW_TO_GET_A_MODEL}"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read model file {str(path)!r}: {exc}") from exc

    with handle:
        if not handle.seekable():
            # a FIFO, /dev/stdin, bash's <(...): the zip check and torch.load seek, so the bytes are read once
            # into memory (and hashed there), as a file object's are
            try:
                data = handle.read()
            except OSError as exc:
                raise ModelFileError(f"Cannot read model file {str(path)!r}: {exc}") from exc
            model = _model_from_bytes(data, str(path), device, expected_sha)
        else:
            model = _model_from_open_file(handle, str(path), device, expected_sha)
    model.metadata["path"] = str(path)
    return model


def _model_from_open_file(handle: BinaryIO, where: str, device: Any, expected_sha: str | None) -> DeblurModel:
    """Hash, check and load a model from ``handle``, a seekable file open at its start, without reading it whole
    into memory (that copy doubled the peak memory of loading a large model).

    The sha256 (and the CRC check) are of the bytes torch.load reads only while the file stays as it is: a file
    replaced by a rename keeps this handle on the old one, but one rewritten in place (``cp new.pt model.pt``)
    changes under it. So the file's size, times and identity are compared before the hashing and after the
    loading, and a change refuses the model rather than give it a sha256 of other bytes.
    """
    watched = WatchedReads(handle)
    before: tuple[int, ...] | None = None
    try:
        before = file_state(handle)
        sha256 = hashlib.file_digest(watched, "sha256").hexdigest()  # type: ignore[arg-type]
        _check_shipped_sha256(sha256, expected_sha, where)
        model = _model_from_file(watched, where, device)  # type: ignore[arg-type]
        if file_changed(before, handle):
            raise _changed_while_read_error(where)
    except ModelFileError:
        # a file half rewritten reads as damaged: say what happened instead (where fstat itself now fails, the
        # error already raised is the one to say)
        changed = False
        with contextlib.suppress(OSError):
            changed = before is not None and file_changed(before, handle)
        if changed:
            raise _changed_while_read_error(where) from None
        raise
    except OSError as exc:  # a failed read or fstat (EIO, a stale network share's ESTALE), not damage
        raise ModelFileError(f"Cannot read model file {where!r}: {exc}") from exc
    model.metadata["sha256"] = sha256
    return model


def _model_from_bytes(data: bytes, where: str, device: Any, expected_sha: str | None = None) -> DeblurModel:
    """A model from the whole bytes of a file (a pipe's, a file object's), with their sha256."""
    sha256 = hashlib.sha256(data).hexdigest()
    _check_shipped_sha256(sha256, expected_sha, where)
    model = _model_from_file(io.BytesIO(data), where, device)
    model.metadata["sha256"] = sha256
    return model


def _check_shipped_sha256(sha256: str, expected_sha: str | None, where: str) -> None:
    """ModelFileError where a shipped model's bytes (``expected_sha`` registered for it; None for other files)
    hash otherwise: a file read whole (a pipe) and one streamed are checked alike."""
    if expected_sha is not None and sha256.lower() != expected_sha.lower():
        raise ModelFileError(
            f"Shipped model file {where!r} is damaged or was replaced: sha256 {sha256} does not match "
            f"the registered {expected_sha}. Reinstall napari-deblurgan."
        )


def file_state(handle: BinaryIO) -> tuple[int, ...]:
    """What changes when the open file ``handle`` is written: which file it is, its size and modification time,
    then its link count and change time (compared by :func:`file_changed`; also the checkpoint loader's check,
    training/checkpoint.py)."""
    st = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_ctime_ns)


def file_changed(before: tuple[int, ...], handle: BinaryIO) -> bool:
    """Whether the open file ``handle`` was written since :func:`file_state` gave ``before``. The change time
    also moves when the file loses or gains a name (a save renamed over it, which leaves this handle reading the
    old, intact bytes; a hard link made by a backup tool), so it counts only while the link count stays the same;
    a rewrite in place changes the size or the modification time anyway, unless a tool sets the time back."""
    after = file_state(handle)
    if after[:4] != before[:4]:
        return True
    return after[4] == before[4] and after[5] != before[5]


def _changed_while_read_error(where: str) -> ModelFileError:
    return ModelFileError(
        f"{where!r} changed while it was read (another program is writing or copying it): nothing was loaded. "
        "Wait until that has finished, then load it again."
    )


class WatchedReads:
    """A binary file whose failed reads are remembered in :attr:`error`: zipfile turns an OSError from a read
    into BadZipFile ("File is not a zip file") and torch.load into a SystemError, so without it a disk read error
    (EIO) would be said as a damaged file ("copy it again") instead of as the read error it is. Everything else is
    the wrapped file's."""

    _READS = frozenset({"read", "read1", "readinto", "readinto1", "readline", "readlines", "peek"})

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._raw, name)
        if name not in self._READS:
            return attr

        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except OSError as exc:
                if self.error is None:
                    self.error = exc
                raise

        return watched

    def raise_read_error(self) -> None:
        """Raise the first read error seen, if there was one (from an ``except`` of what it was turned into)."""
        if self.error is not None:
            raise self.error


def _load_stream(stream: Any, device: Any) -> DeblurModel:
    """:func:`load_model` of a binary file object: its bytes from its position on, as a file's are checked."""
    name = getattr(stream, "name", None)
    where = name if isinstance(name, str) else f"<{type(stream).__name__}>"
    try:
        data = stream.read()
    except OSError as exc:  # io.UnsupportedOperation (a file open for writing only) is an OSError
        raise ModelFileError(f"Cannot read a model from {where!r}: {exc}") from exc
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(
            f"load_model read {type(data).__name__}, not bytes, from {where!r}; open the file with mode 'rb'."
        )
    model = _model_from_bytes(bytes(data), where, device)
    model.metadata.pop("path", None)  # saved from a loaded model, it names the file that one came from
    return model


def as_model(value: Any, *, role: str = "model") -> DeblurModel:
    """``value`` as a :class:`DeblurModel`: itself, or :func:`load_model` of a file path or shipped name.

    Anything else is one :class:`InputError` naming ``role`` (the argument it came from, e.g. ``"teacher"``).
    """
    if isinstance(value, DeblurModel | str | os.PathLike):
        return load_model(value)
    raise InputError(
        f"{role} must be a DeblurModel, a model file path or a shipped model name; got {type(value).__name__}."
    )


def _checkpoint_advice(where: str, payload: dict[str, Any]) -> str:
    """What to do with a training checkpoint given where a model file was expected: resume it with its own step
    as the total, which trains nothing and returns the model it keeps (tests/test_training.py runs the advice)."""
    import shlex

    step = payload.get("step")
    try:
        synthetic = bool(json.loads(payload["json"]).get("synthetic"))
    except (KeyError, TypeError, ValueError):
        synthetic = False
    data, flags = ("sharp", "--sharp B.tif") if synthetic else ("blurred, sharp", "--blurred A.tif --sharp B.tif")
    return (
        f"{where!r} is a training checkpoint (at step {step}), not a model file. To get the model it keeps (the "
        f"best so far), resume it without training further, with the run's training data: "
        f"model = napari_deblurgan.finetune({data}, resume={where!r}, steps={step}); model.save('model.pt') "
        f"(or: napari-deblurgan finetune {flags} --resume {shlex.quote(where)} --steps {step} -o model.pt). Leave "
        "steps unset to finish the run instead."
    )


def _directory_advice(path: Path) -> str:
    """What to pass instead of the folder ``path`` where a model file was expected."""
    import shlex

    # training/checkpoint.py's CHECKPOINT_NAME: a run's checkpoint folder holds only that file, no model file
    if (path / "checkpoint.pt").is_file():
        return (
            f"{str(path)!r} is a training checkpoint folder, not a model file. To continue its run, resume it "
            f"(napari-deblurgan finetune ... --resume {shlex.quote(str(path))}, or finetune(..., resume=...)); to "
            "deblur, pass the model file that run saved (finetune's -o / --output)."
        )
    return f"{str(path)!r} is a directory; pass the model file (.pt) inside it."


#: The first bytes of every file ``torch.save`` writes (a zip archive's local file header).
ZIP_MAGIC = b"PK\x03\x04"


def archive_damage(data: bytes | BinaryIO) -> str | None:
    """Why ``data``, a ``torch.save`` file (its bytes, or a seekable binary file open at its start), is not an
    intact zip archive, or None if it is. A read that fails (an OSError such as EIO) is raised as it is: that is
    no damage of the file, and copying it again would not help.

    ``torch.load`` reads the archive without checking the CRC-32 stored for each part, so a flipped bit in a
    weight would load as a changed weight; ``testzip`` checks them all, reading each part in chunks (from a file,
    the file is never held whole in memory). An archive cut short lacks its end record, which ``ZipFile`` refuses.
    """
    import zipfile

    stream = WatchedReads(io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data)
    start = stream.tell()
    if stream.seek(0, os.SEEK_END) == start:
        return "empty"
    stream.seek(start)
    try:
        with zipfile.ZipFile(stream) as archive:  # type: ignore[arg-type]  # a file object, watched
            bad_part = archive.testzip()
        stream.raise_read_error()  # in case zipfile took a failed read for a bad part
    except zipfile.BadZipFile as exc:
        stream.raise_read_error()
        if str(exc) == "File is not a zip file":  # zipfile's words for an archive without its end record
            return "cut short: the end of its zip archive is missing"
        return f"its zip structure is broken: {_first_line(exc)}"
    except Exception as exc:  # zlib/struct errors, EOFError, ... of other damage
        stream.raise_read_error()
        return f"its zip structure is broken: {_first_line(exc)}"
    if bad_part is not None:
        return f"the checksum stored for its part {bad_part!r} does not match that part's bytes"
    return None


def _damaged_file_error(where: str, size: int, damage: str) -> ModelFileError:
    """The one message for a model file of ``size`` bytes that is damaged or cut short (the checkpoint loader's
    wording)."""
    return ModelFileError(
        f"{where!r} is damaged or incomplete ({size} bytes; {damage}), e.g. from an interrupted copy or "
        "download or a faulty disk: copy it again from an intact source, or save it again."
    )


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor of ``state_dict`` holding a NaN or infinity, or None (also the
    check of a training checkpoint's weights and optimiser state, training/checkpoint.py)."""
    import torch

    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        # a float64 sum of float32/16 values cannot overflow, so it is finite exactly when they all are: ~10x
        # faster than isfinite() on the CPU; isfinite() decides otherwise (a float64 tensor's sum may overflow,
        # and MPS has no float64)
        if tensor.device.type == "cpu" and bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
            continue
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _model_from_file(handle: BinaryIO, where: str, device: Any) -> DeblurModel:
    """Parse and validate a model file from ``handle``, a seekable binary file at its start (an open file, or a
    stream's bytes in a BytesIO). The zip check and torch.load both read from it, so a file is never held whole
    in memory besides the weights it holds."""
    import torch

    from .models import build_generator, list_architectures

    map_location = _resolve_device(device)
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    head = handle.read(len(ZIP_MAGIC))
    handle.seek(0)
    if not head.startswith(ZIP_MAGIC):  # every file torch.save writes is a zip archive
        if ZIP_MAGIC.startswith(head) and size == len(head):  # empty, or cut short within the first 4 bytes
            raise _damaged_file_error(where, size, "empty" if not size else "cut short")
        raise ModelFileError(
            f"{where!r} is not a napari-deblurgan model file (a .pt file written by DeblurModel.save or "
            "napari-deblurgan finetune); check the path."
        )
    # before torch.load, whose errors for a file cut short are a seek offset or paragraphs of zip-reader advice
    damage = archive_damage(handle)
    if damage is not None:
        raise _damaged_file_error(where, size, damage)
    handle.seek(0)
    watched = WatchedReads(handle)
    try:
        payload = torch.load(watched, map_location=map_location, weights_only=True)  # type: ignore[arg-type]
    except pickle.UnpicklingError as exc:
        # weights_only=True refuses any global that is not a tensor/container type before calling it.
        raise ModelFileError(
            f"Refusing to load {where!r}: it contains pickled Python objects other than tensors, which could "
            f"run code. napari-deblurgan model files hold only tensors and JSON. ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # an intact archive that is not a torch.save file, EOFError, ...
        watched.raise_read_error()  # a failed read, which torch reports as a SystemError: the caller says so
        raise _damaged_file_error(where, size, f"unreadable: {_first_line(exc)[:200]}") from None

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise ModelFileError(
                f"{where!r} is a bare PyTorch state dict, not a napari-deblurgan model file: it does not say "
                f"which architecture or normalisation it belongs to. Wrap it in Python: "
                f"m = create_model('resnet9', channels=3); m.generator.load_state_dict(torch.load(path)); "
                f"m.save('model.pt')."
            )
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        if found == "napari-deblurgan-checkpoint":  # training/checkpoint.py's CHECKPOINT_FORMAT
            raise ModelFileError(_checkpoint_advice(where, payload))
        raise ModelFileError(f"{where!r} is not a napari-deblurgan model file (format {found!r}, expected {FORMAT!r}).")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelFileError(
            f"{where!r} has model format version {version!r}; this napari-deblurgan reads version "
            f"{FORMAT_VERSION}. Upgrade napari-deblurgan to read it."
        )
    try:
        header = json.loads(payload["metadata"])
        architecture = header["architecture"]
        architecture_args = dict(header.get("architecture_args") or {})
        channels = int(header["channels"])
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where!r} has damaged metadata: {_first_line(exc)}") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelFileError(f"{where!r}: 'state_dict' must map parameter names to tensors.")
    bad_tensor = first_non_finite(state_dict)
    if bad_tensor is not None:  # save() refuses these; deblur would turn every image into NaN or zeros
        raise ModelFileError(
            f"{where!r} holds weights that are not finite (NaN or infinite), first in {bad_tensor!r}: a model "
            "whose training diverged, or a damaged file. Use another model file, or train this one again."
        )

    known = list(list_architectures())
    if architecture not in known:
        raise ModelFileError(
            f"{where!r} uses architecture {architecture!r}, which this napari-deblurgan does not know "
            f"(known: {', '.join(known)}). Upgrade napari-deblurgan."
        )
    # Files written before generators had a ``residual`` argument are tanh models, whatever the default is now.
    architecture_args.setdefault("residual", "tanh")
    try:
        # the random initialisation is overwritten at once: drawn from a forked RNG, so that loading a model
        # leaves the caller's global torch RNG as it was
        with torch.random.fork_rng(devices=[]):
            generator = build_generator(architecture, channels, **architecture_args)
    except Exception as exc:
        raise ModelFileError(
            f"{where!r}: cannot build architecture {architecture!r} with {architecture_args}: {_first_line(exc)}"
        ) from None
    try:
        generator.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{where!r}: the weights do not fit architecture {architecture!r} ({_first_line(exc)[:500]})"
        ) from None
    normalization, metadata = header.get("normalization"), header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{where!r} has damaged metadata: 'metadata' is a {type(metadata).__name__}, not a dict.")
    if normalization is not None and not _valid_normalization(normalization):
        raise ModelFileError(
            f"{where!r} has damaged metadata: normalization {normalization!r} is not "
            "{'method': 'percentile', 'low': L, 'high': H} with 0 <= L < H <= 100."
        )
    generator.to(map_location)
    try:
        return DeblurModel(
            generator,
            architecture,
            architecture_args=architecture_args,
            channels=channels,
            channel_mode=header.get("channel_mode"),
            normalization=normalization,
            metadata=metadata,
            context_padding=header.get("context_padding"),
        )
    except InputError as exc:
        raise ModelFileError(f"{where!r} has inconsistent metadata: {exc}") from None


def _valid_normalization(value: Any) -> bool:
    """A file's percentile normalisation: a dict whose low/high (when given) are percentiles, low < high."""
    if not isinstance(value, dict):
        return False
    low, high = value.get("low", 1.0), value.get("high", 99.8)
    numbers_ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    return numbers_ok and 0.0 <= low < high <= 100.0 and value.get("method", "percentile") == "percentile"


# ------------------------------------------------------------------------------------------ named models
def default_model_dir() -> Path:
    """Where finetuned models go unless the user picks another place: ``~/.napari-deblurgan/models`` (the
    Finetune panel's folder, and where ``napari-deblurgan finetune`` saves a model its ``-o`` cannot take)."""
    return Path.home() / ".napari-deblurgan" / "models"


def list_named_models() -> dict[str, dict[str, Any]]:
    """Shipped models from ``weights/registry.json``: ``{name: {"file", "sha256", "description", ...}}``."""
    try:
        text = Path(REGISTRY_PATH).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        models = json.loads(text).get("models", {})
    except (ValueError, AttributeError) as exc:
        raise ModelFileError(f"The model registry {str(REGISTRY_PATH)!r} is damaged: {exc}") from None
    return {str(k): dict(v) for k, v in models.items()}


def _is_shipped_name(text: str) -> bool:
    """``"default"`` or a name in the registry (``"default"`` even when the registry lacks it, so that the
    error says the default is not shipped rather than that a file is missing)."""
    return text == "default" or text in list_named_models()


def _looks_like_name(text: str) -> bool:
    """A bare word (no directory part, no suffix) is looked up as a shipped model name."""
    return text == "default" or text in list_named_models() or (os.sep not in text and "." not in text)


def _shipped_spelling(name: str, models: Mapping[str, Any]) -> str:
    """``name`` as the registry spells it when it matches a shipped name but for case ("Fast": "fast", as
    ``blur_kind="Motion"`` is "motion"); otherwise ``name`` itself. Only names that are no file get here."""
    if name in models:
        return name
    matches = [known for known in (*models, "default") if known.casefold() == name.casefold()]
    return matches[0] if matches else name


def _resolve_named(name: str, *, architectures: bool = False) -> tuple[Path, str]:
    """Path and expected sha256 of a shipped model; with ``architectures`` (finetune's ``model``), the message
    for an unknown name also lists the architecture names."""
    models = list_named_models()
    name = _shipped_spelling(name, models)
    if name not in models:
        if name == "default":
            raise ModelFileError(
                "The default model is not shipped in this version of napari-deblurgan. " + _HOW_TO_GET_A_MODEL
            )
        shipped = ", ".join(sorted(models)) or "none"
        from .models import list_architectures

        if name in list_architectures():
            raise ModelFileError(
                f"{name!r} is an architecture, not a trained model: its weights would be random. Train one from it "
                f"and pass the saved .pt file (`napari-deblurgan finetune --model {name} ...` on the command line; "
                f"finetune() or create_model({name!r}) in Python), or use a shipped model ({shipped})."
            )
        also = _architectures_clause() if architectures else ""
        raise ModelFileError(
            f"{name!r} is neither an existing model file nor a shipped model name (shipped: {shipped}){also}. "
            + _HOW_TO_GET_A_MODEL
        )
    entry = models[name]
    try:
        path = Path(REGISTRY_PATH).parent / entry["file"]
        sha = str(entry["sha256"])
    except KeyError as exc:
        raise ModelFileError(f"The registry entry of model {name!r} lacks {exc}; reinstall.") from None
    if not path.is_file():
        raise ModelFileError(
            f"Shipped model {name!r} is registered but its file {str(path)!r} is missing; reinstall napari-deblurgan."
        )
    return path, sha


# ------------------------------------------------------------------------------------------------ helpers
def _args_from_config(config: Mapping[str, Any] | None, fallback: Mapping[str, Any] | None = None) -> dict:
    """Constructor args from ``generator.config`` without the keys passed separately."""
    if not config:
        return dict(fallback or {})
    args = copy.deepcopy(dict(config))
    for key in ("architecture", "channels", "in_channels", "out_channels"):
        args.pop(key, None)
    return args


def _resolve_device(device: Any) -> torch.device:
    """``"auto" | "cpu" | "cuda[:N]" | "mps" | torch.device`` -> ``torch.device`` (via devices.py)."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device is None or device == "cpu":  # the common case needs no device probing
        return torch.device("cpu")
    from .devices import resolve_device

    return resolve_device(device)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

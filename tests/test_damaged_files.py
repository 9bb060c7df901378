"""Damaged model files and checkpoints are refused with one clear message, never loaded with changed contents.

torch.load does not check the CRC-32 that the zip archive stores for each part, so load_model and
load_checkpoint check them first; a truncated file is "damaged or incomplete" to both loaders alike.
"""

from __future__ import annotations

import hashlib
import io
import math
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

from napari_deblurgan import load_model, model_file
from napari_deblurgan.errors import ModelFileError
from napari_deblurgan.model_file import list_named_models
from napari_deblurgan.training.checkpoint import load_checkpoint, save_checkpoint


def _data_offset(archive_bytes: bytes, part_suffix: str) -> tuple[int, int]:
    """Offset and size of the stored bytes of the first part whose name ends with ``part_suffix``."""
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(part_suffix) and i.file_size >= 8)
    # the local header: 30 fixed bytes, then the file name and the extra field (torch pads to align the data)
    name_length = int.from_bytes(archive_bytes[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(archive_bytes[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _flip_bit(data: bytes, position: int, bit: int = 0) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 1 << bit
    return bytes(flipped)


def _weights_of(path_or_stream) -> dict[str, torch.Tensor]:
    return load_model(path_or_stream).generator.state_dict()


# ------------------------------------------------------------------------------------------- model files
def test_a_flipped_bit_in_a_weight_is_refused_not_loaded_as_a_changed_weight(tiny_model_file):
    data = tiny_model_file.read_bytes()
    offset, size = _data_offset(data, "data/0")
    tiny_model_file.write_bytes(_flip_bit(data, offset + size // 2, bit=3))
    with pytest.raises(ModelFileError, match=r"is damaged or incomplete \(\d+ bytes; the checksum .*data/0") as info:
        load_model(tiny_model_file)
    assert str(tiny_model_file) in str(info.value) and "copy it again" in str(info.value)
    with pytest.raises(ModelFileError, match="checksum"):  # a stream's bytes get the same check
        load_model(io.BytesIO(tiny_model_file.read_bytes()))


def test_single_bit_flips_anywhere_are_refused_or_change_nothing(tiny_model_file):
    """What the zip CRCs cannot see (padding, unused header fields) must not matter to what is loaded."""
    data = tiny_model_file.read_bytes()
    reference = _weights_of(io.BytesIO(data))
    refused = 0
    for position in range(0, len(data), max(1, len(data) // 150)):
        try:
            loaded = _weights_of(io.BytesIO(_flip_bit(data, position, bit=position % 8)))
        except ModelFileError:
            refused += 1
            continue
        assert all(torch.equal(loaded[name], reference[name]) for name in reference), position
    assert refused > 100


@pytest.mark.parametrize("cut", [0, 2, 10, "half", -1])
def test_an_empty_or_truncated_model_file_is_damaged_or_incomplete(tiny_model_file, cut):
    data = tiny_model_file.read_bytes()
    kept = data[: len(data) // 2] if cut == "half" else data[:cut]
    tiny_model_file.write_bytes(kept)
    with pytest.raises(ModelFileError, match=rf"is damaged or incomplete \({len(kept)} bytes; ") as info:
        load_model(tiny_model_file)
    message = str(info.value)
    assert "copy it again" in message and "\n" not in message
    assert "seek" not in message and "miniz" not in message and "not a napari-deblurgan" not in message


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tiny_model, tmp_path, bad_value):
    path = tiny_model.save(tmp_path / "diverged.pt")
    payload = torch.load(path, weights_only=True)
    name = sorted(payload["state_dict"])[3]
    payload["state_dict"][name] = payload["state_dict"][name].clone().fill_(bad_value)
    torch.save(payload, path)  # as a file written with such weights (save() itself refuses them)
    with pytest.raises(ModelFileError, match=r"not finite \(NaN or infinite\), first in") as info:
        load_model(path)
    assert str(path) in str(info.value) and repr(name) in str(info.value)


def test_a_checkpoint_folder_given_as_a_model_says_how_to_use_it(tmp_path):
    save_checkpoint(tmp_path / "ck1", {"step": 3})
    with pytest.raises(ModelFileError, match="is a training checkpoint folder, not a model file") as info:
        load_model(tmp_path / "ck1")
    assert f"--resume {tmp_path / 'ck1'}" in str(info.value) and "-o" in str(info.value)
    with pytest.raises(ModelFileError, match=r"is a directory; pass the model file \(\.pt\) inside it"):
        load_model(tmp_path)  # a folder that is not a checkpoint folder


def test_every_shipped_model_and_a_freshly_saved_one_pass_the_archive_check(tiny_model, tmp_path):
    from napari_deblurgan.model_file import archive_damage

    for name, entry in list_named_models().items():
        assert archive_damage((Path(model_file.REGISTRY_PATH).parent / entry["file"]).read_bytes()) is None, name
    assert archive_damage(tiny_model.save(tmp_path / "new.pt").read_bytes()) is None


# ------------------------------------------------------------------------------------------- checkpoints
def _checkpoint(directory: Path) -> Path:
    generator = torch.nn.Conv2d(1, 4, 3)
    return save_checkpoint(directory, {"step": 7, "generator": generator.state_dict(), "json": "{}"})


def test_a_flipped_bit_in_a_checkpoint_is_refused(tmp_path):
    path = _checkpoint(tmp_path / "run")
    intact = load_checkpoint(tmp_path / "run")
    assert intact["step"] == 7
    data = path.read_bytes()
    offset, size = _data_offset(data, "data/0")
    path.write_bytes(_flip_bit(data, offset + size // 2))
    with pytest.raises(ModelFileError, match=r"the file is damaged or incomplete \(\d+ bytes; the checksum") as info:
        load_checkpoint(tmp_path / "run")
    assert "leave resume out" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cut", [0, 3, "half"])
def test_an_empty_or_truncated_checkpoint_is_damaged_or_incomplete(tmp_path, cut):
    path = _checkpoint(tmp_path / "run")
    data = path.read_bytes()
    kept = data[: len(data) // 2] if cut == "half" else data[:cut]
    path.write_bytes(kept)
    with pytest.raises(ModelFileError, match=rf"the file is damaged or incomplete \({len(kept)} bytes; "):
        load_checkpoint(tmp_path / "run")


def _trainer_like_checkpoint(directory: Path) -> Path:
    """A checkpoint laid out as a run writes it: the step's weights and optimiser state under "state", the best
    weights under "best_state" (training/trainer.py's checkpoint_payload)."""
    generator, critic = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(1, 1, 3)
    ema = torch.nn.Conv2d(1, 4, 3)
    optimiser = torch.optim.Adam(generator.parameters())
    generator(torch.ones(1, 1, 5, 5)).sum().backward()
    optimiser.step()  # Adam's moments exist from the first step on
    state = {
        "generator": generator.state_dict(),
        "critic": critic.state_dict(),
        "ema": ema.state_dict(),
        "opt_g": optimiser.state_dict(),
        "opt_d": None,
        "gp_generator": torch.Generator().get_state(),
    }
    return save_checkpoint(directory, {"step": 7, "state": state, "best_state": generator.state_dict(), "json": "{}"})


@pytest.mark.parametrize(
    "where",
    [
        ("state", "generator", "weight"),
        ("state", "critic", "bias"),
        ("state", "ema", "weight"),
        ("state", "opt_g", "state", 0, "exp_avg_sq"),
        ("best_state", "bias"),
    ],
)
@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_a_checkpoint_with_non_finite_weights_or_moments_is_refused_naming_the_tensor(tmp_path, where, bad_value):
    """Intact by its CRCs, but written from a run that had diverged: resuming it would train on NaN."""
    path = _trainer_like_checkpoint(tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["step"] == 7  # finite: loads
    payload = torch.load(path, weights_only=True)
    *parents, last = where
    holder = payload
    for key in parents:
        holder = holder[key]
    holder[last] = holder[last].clone().fill_(bad_value)
    save_checkpoint(tmp_path / "run", {k: v for k, v in payload.items() if k not in ("format", "version")})
    name = ".".join(map(str, where))
    with pytest.raises(ModelFileError, match=r"holds values that are not finite \(NaN or infinite\), first in") as info:
        load_checkpoint(tmp_path / "run")
    message = str(info.value)
    assert repr(name) in message and str(path) in message and "\n" not in message
    assert "earlier copy" in message and "leave resume out" in message


def test_checking_and_loading_a_checkpoint_does_not_hold_a_second_copy_of_the_file(tmp_path):
    """The CRC check and torch.load read the file part by part: the file's bytes are never all in memory at
    once besides its tensors. What tracemalloc sees is the Python heap, where that copy (one bytes object of
    the whole file) lived; torch's storages are outside it, so the peak measured is the reading alone."""
    path = save_checkpoint(tmp_path / "run", {"step": 1, "state": {"w": torch.randn(2, 2**20)}, "json": "{}"})
    size = path.stat().st_size
    assert size > 8 * 2**20
    tracemalloc.start()
    try:
        load_checkpoint(tmp_path / "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"{peak} bytes at peak reading a {size}-byte checkpoint"


def test_checking_and_loading_a_model_file_does_not_hold_a_second_copy_of_the_file(tmp_path):
    """load_model hashes, checks and loads the file from one open file, never read whole (as for checkpoints)."""
    from napari_deblurgan.model_file import create_model

    path = create_model("unet_lite", 1, seed=0, width=24).save(tmp_path / "wide.pt")
    size = path.stat().st_size
    assert size > 8 * 2**20
    tracemalloc.start()
    try:
        model = load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"{peak} bytes at peak reading a {size}-byte model file"
    assert model.metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # still of what was loaded


# ------------------------------------------------------------------ pipes, files changing, failed reads
def test_a_model_file_that_cannot_seek_is_read_into_memory_and_loads(tiny_model, tmp_path):
    """A FIFO, /dev/stdin or bash's <(ssh host cat model.pt): the loader streams a file (the CRC check and
    torch.load seek), and a pipe, which cannot seek, is read whole first instead of failing."""
    import os
    import threading

    stream = io.BytesIO()
    tiny_model.save(stream)
    data = stream.getvalue()
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as writer:
            writer.write(data)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    model = load_model(fifo)
    feeder.join(10)
    assert model.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert model.metadata["path"] == str(fifo)
    for name, tensor in tiny_model.generator.state_dict().items():
        assert torch.equal(model.generator.state_dict()[name], tensor)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """What ``cp new.pt path`` does: the same file (inode) truncated and written again."""
    with open(path, "r+b") as handle:
        handle.truncate(0)
        handle.write(data)


def _make_old(path: Path) -> None:
    """Date ``path`` an hour back, as a file saved before it is loaded is: file times are kept in clock ticks of
    a few milliseconds, and a file written and rewritten within one tick would show no change."""
    import os
    import time

    old = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(old, old))


def _after_the_check(monkeypatch, module, action) -> None:
    """Run ``action`` (another program writing the file) between the loader's CRC check, made by ``module``'s
    ``archive_damage``, and its torch.load."""
    check = module.archive_damage

    def check_then_act(stream):
        damage = check(stream)
        action()
        return damage

    monkeypatch.setattr(module, "archive_damage", check_then_act)


@pytest.mark.parametrize("rewritten_with", ["another model", "half of another model"])
def test_a_model_file_rewritten_in_place_while_it_loads_is_refused(
    tiny_model_file, tmp_path, monkeypatch, rewritten_with
):
    """The sha256 and the CRCs are of the bytes read before torch.load reads them again: a file rewritten in place
    in between (cp onto it) would load other, unchecked weights under the old file's sha256 (and pass a shipped
    model's sha256 check). Its size, times and identity are compared before and after; half rewritten, it reads as
    damaged, which is said as the change it is."""
    from _helpers import tiny_unet

    other = io.BytesIO()
    tiny_unet(seed=1).save(other)
    new = other.getvalue() if rewritten_with == "another model" else other.getvalue()[: len(other.getvalue()) // 2]
    _make_old(tiny_model_file)
    _after_the_check(monkeypatch, model_file, lambda: _rewrite_in_place(tiny_model_file, new))
    with pytest.raises(ModelFileError, match="changed while it was read") as info:
        load_model(tiny_model_file)
    assert str(tiny_model_file) in str(info.value) and "load it again" in str(info.value)
    if rewritten_with == "another model":  # loaded again once the copy is done, it is the new model, its own sha256
        monkeypatch.undo()
        assert load_model(tiny_model_file).metadata["sha256"] == hashlib.sha256(new).hexdigest()


def test_a_checkpoint_rewritten_in_place_while_it_loads_is_refused(tmp_path, monkeypatch):
    from napari_deblurgan.training import checkpoint

    path = _checkpoint(tmp_path / "run")
    other = _checkpoint(tmp_path / "other").read_bytes()
    assert len(other) == path.stat().st_size  # the same size: only the file's times tell
    _make_old(path)
    _after_the_check(monkeypatch, checkpoint, lambda: _rewrite_in_place(path, other))
    with pytest.raises(ModelFileError, match="changed while it was read") as info:
        load_checkpoint(tmp_path / "run")
    assert str(path) in str(info.value) and "resume again" in str(info.value)


def test_a_model_file_saved_over_by_a_rename_while_it_loads_still_loads(tiny_model_file, monkeypatch):
    """A save renames a new file over the old one (atomic_write): the open handle goes on reading the old,
    intact bytes, so the load is right; only the old file's change time moves (it lost its name). That is no
    rewrite, and must not be refused as one (a panel or CLI saving while a model loads)."""
    from _helpers import tiny_unet

    _make_old(tiny_model_file)
    original = hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    _after_the_check(monkeypatch, model_file, lambda: tiny_unet(seed=1).save(tiny_model_file))  # rename over it
    assert load_model(tiny_model_file).metadata["sha256"] == original


def test_a_model_file_whose_fstat_fails_is_a_model_file_error(tiny_model_file, monkeypatch):
    """A network share gone stale (ESTALE) between open and load: one ModelFileError, not a raw OSError."""
    import errno
    import os

    real_fstat = os.fstat
    handles: list[int] = []

    def stale(fd):
        if handles and fd == handles[0]:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_fstat(fd)

    real_state = model_file.file_state

    def state_of_a_share_gone_stale(handle):
        handles.append(handle.fileno())  # from here on, fstat of this handle fails (pytest's own fstats do not)
        return real_state(handle)

    monkeypatch.setattr(os, "fstat", stale)
    monkeypatch.setattr(model_file, "file_state", state_of_a_share_gone_stale)
    with pytest.raises(ModelFileError, match=r"Cannot read model file .*Stale file handle"):
        load_model(tiny_model_file)
    monkeypatch.undo()


class _FailingReads(io.FileIO):
    """A file whose reads fail with EIO (a failing disk, a dropped network share) once ``failing`` is set."""

    failing = False

    def readinto(self, buffer):  # what BufferedReader's read and readinto call
        import errno
        import os

        if _FailingReads.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().readinto(buffer)


def _open_failing(path, mode="r", *args, **kwargs):
    assert mode == "rb"
    return io.BufferedReader(_FailingReads(path, "r"))


@pytest.mark.parametrize("failing_in", ["the CRC check", "torch.load"])
@pytest.mark.parametrize("kind", ["model file", "checkpoint"])
def test_a_read_error_while_checking_or_loading_is_said_as_one_not_as_damage(
    tiny_model_file, tmp_path, monkeypatch, kind, failing_in
):
    """zipfile turns a failed read into BadZipFile and torch.load into a SystemError: without care an EIO would
    be said as a damaged file ("copy it again") rather than as the read error it is."""
    from napari_deblurgan.training import checkpoint

    module, path = (
        (model_file, tiny_model_file) if kind == "model file" else (checkpoint, _checkpoint(tmp_path / "run"))
    )
    check = module.archive_damage

    def fail_around_check(stream):
        _FailingReads.failing = failing_in == "the CRC check"
        damage = check(stream)
        _FailingReads.failing = True
        return damage

    monkeypatch.setattr(_FailingReads, "failing", False)
    monkeypatch.setattr(module, "archive_damage", fail_around_check)
    monkeypatch.setattr(module, "open", _open_failing, raising=False)
    with pytest.raises(ModelFileError) as info:
        load_model(path) if kind == "model file" else load_checkpoint(tmp_path / "run")
    message = str(info.value)
    assert "[Errno 5] Input/output error" in message and str(path) in message
    assert message.startswith("Cannot read model file" if kind == "model file" else "Cannot read the training")
    assert "damaged" not in message


def test_the_archive_check_raises_a_failed_read_rather_than_calling_it_damage(tiny_model_file, monkeypatch):
    monkeypatch.setattr(_FailingReads, "failing", True)
    with io.BufferedReader(_FailingReads(tiny_model_file, "r")) as handle, pytest.raises(OSError) as info:
        model_file.archive_damage(handle)
    assert info.value.errno == 5

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

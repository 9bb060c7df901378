"""Model files: round trip, atomic save, every kind of bad file, shipped (named) models."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deblurgan import model_file
from napari_deblurgan.errors import InputError, ModelFileError
from napari_deblurgan.model_file import FORMAT, DeblurModel, list_named_models, load_model


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _rewrite(path: Path, payload: dict) -> None:
    torch.save(payload, path)


# ------------------------------------------------------------------------------------------- round trip
def test_round_trip_outputs_identical(tiny_model, tmp_path):
    tiny_model.metadata.update(name="tiny", description="for tests", training={"steps": 3})
    path = tiny_model.save(tmp_path / "m.pt")
    loaded = load_model(path)

    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tiny_model.generator(x), loaded.generator(x))
    assert loaded.architecture == "unet_lite"
    assert loaded.architecture_args == tiny_model.architecture_args
    assert loaded.channels == 1 and loaded.channel_mode == "independent"
    assert loaded.normalization == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert (loaded.stride, loaded.receptive_radius) == (tiny_model.stride, tiny_model.receptive_radius)
    assert loaded.metadata["name"] == "tiny"
    assert loaded.metadata["training"] == {"steps": 3}
    assert loaded.metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata["created"].endswith("+00:00")  # ISO 8601, UTC
    assert not loaded.generator.training
    assert "unet_lite" in repr(loaded) and "tiny" in repr(loaded)


def test_half_precision_file_is_smaller_and_loads_into_float32(make_tiny_model, tmp_path):
    model = make_tiny_model(width=8)
    full = model.save(tmp_path / "full.pt")
    half = model.save(tmp_path / "half.pt", weights_dtype="float16")
    assert half.stat().st_size < 0.7 * full.stat().st_size
    stored = _payload(half)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}

    loaded = load_model(half)
    assert loaded.metadata["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.generator.parameters())  # computes in float32
    for name, value in model.generator.state_dict().items():  # each weight rounded to half precision only
        assert torch.equal(loaded.generator.state_dict()[name], value.half().float())
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference, rounded = model.generator(x), loaded.generator(x)
    assert not torch.equal(reference, rounded)
    assert torch.allclose(reference, rounded, atol=1e-2)
    # saving the loaded model again at full size says so
    assert load_model(loaded.save(tmp_path / "again.pt")).metadata["weights_dtype"] == "float32"


def test_unknown_weights_dtype_and_out_of_range_weights_are_refused(tiny_model, tmp_path):
    with pytest.raises(InputError, match="weights_dtype must be one of"):
        tiny_model.save(tmp_path / "m.pt", weights_dtype="int8")
    with torch.no_grad():
        next(tiny_model.generator.parameters()).view(-1)[0] = 1e6  # beyond float16's 65504
    with pytest.raises(InputError, match="not finite as float16"):
        tiny_model.save(tmp_path / "m.pt", weights_dtype="float16")
    assert not (tmp_path / "m.pt").exists()
    tiny_model.save(tmp_path / "m.pt")  # float32 holds it


def test_file_holds_only_tensors_and_strings(tiny_model_file):
    payload = _payload(tiny_model_file)
    assert payload["format"] == FORMAT and payload["format_version"] == 1
    assert isinstance(payload["metadata"], str)
    json.loads(payload["metadata"])
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def test_round_trip_multichannel_resnet(make_tiny_model, tmp_path):
    model = make_tiny_model(channels=3, architecture="resnet9")
    assert model.channel_mode == "joint"
    loaded = load_model(model.save(tmp_path / "rgb.pt"))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.generator(x), loaded.generator(x))
    assert loaded.channels == 3 and loaded.channel_mode == "joint"


def test_load_model_passes_models_through(tiny_model):
    assert load_model(tiny_model) is tiny_model


def test_create_model_seed_is_reproducible_and_leaves_global_rng_alone(make_tiny_model):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = make_tiny_model(seed=0), make_tiny_model(seed=0), make_tiny_model(seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG did not advance
    sa, sb, sc = (m.generator.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_loading_a_model_file_leaves_the_global_rng_alone(tiny_model, tmp_path):
    # building the architecture draws a random initialisation that the file's weights then replace: a user's
    # seeded script must not see its torch.rand sequence change because a model was loaded
    path = tiny_model.save(tmp_path / "m.pt")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    loaded = load_model(path)
    assert torch.equal(torch.rand(3), expected_next)
    expected = tiny_model.generator.state_dict()  # the forked RNG must not leak into the weights: the file's
    assert all(torch.equal(value, expected[name]) for name, value in loaded.generator.state_dict().items())


def test_channel_mode_must_fit_channels(tiny_model):
    with pytest.raises(InputError, match="independent"):
        DeblurModel(tiny_model.generator, "unet_lite", channels=3, channel_mode="independent")
    with pytest.raises(InputError, match="channel_mode"):
        DeblurModel(tiny_model.generator, "unet_lite", channels=1, channel_mode="sideways")


# ------------------------------------------------------------------------------------------- atomic save
def test_crash_during_save_leaves_no_file_and_no_temp(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "m.pt"

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        tiny_model.save(target)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_save_keeps_the_old_file(tiny_model, tmp_path, monkeypatch):
    target = tiny_model.save(tmp_path / "m.pt")
    before = target.read_bytes()

    def crash_in_torch_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_in_torch_save)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_saved_files_get_the_usual_permissions_not_the_temp_files_0600(tiny_model, tmp_path):
    """mkstemp makes owner-only files; a model (or TIFF, checkpoint, CSV) must be readable as any new file is."""
    import stat

    old = os.umask(0o022)
    try:
        new_file = tiny_model.save(tmp_path / "new.pt")
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o644
        os.chmod(new_file, 0o640)  # a replaced file keeps its own mode
        tiny_model.save(new_file)
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_an_unwritable_location_is_one_input_error_before_any_work(tiny_model, tmp_path, monkeypatch):
    from napari_deblurgan import atomic_files
    from napari_deblurgan.errors import InputError

    monkeypatch.setattr(atomic_files.os, "access", lambda *a, **k: False)  # root may write anywhere: simulate
    with pytest.raises(InputError, match="no permission"):
        atomic_files.check_writable(tmp_path / "m.pt")
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", refuse)
    with pytest.raises(InputError, match=r"Cannot write .*permission denied"):
        tiny_model.save(tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("bad", [None, 3])
def test_load_model_of_something_that_is_no_path_is_one_input_error(bad):
    from napari_deblurgan.errors import InputError

    with pytest.raises(InputError, match="load_model takes a model file path"):
        load_model(bad)


def test_saving_onto_a_directory_is_refused_and_leaves_nothing(tiny_model, tmp_path):
    from napari_deblurgan.errors import InputError

    target = tmp_path / "models"
    target.mkdir()
    with pytest.raises(InputError, match="is a directory; give a file name inside it"):
        tiny_model.save(target)
    assert list(tmp_path.rglob("*")) == [target]


def test_truncated_file(tiny_model_file):
    data = tiny_model_file.read_bytes()
    tiny_model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="is damaged or incomplete"):
        load_model(tiny_model_file)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError):
        load_model(path)


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n" + b"0" * 64, b"hello", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}"]
)
def test_a_file_that_is_not_a_model_is_named_as_such(tmp_path, content):
    """Not a security refusal, and no advice to load with weights_only=False."""
    path = tmp_path / "picture.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a napari-deblurgan model file") as info:
        load_model(path)
    assert "weights_only" not in str(info.value) and "Refusing" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("normalization", {"low": "a"}),
        ("normalization", {"low": 99.0, "high": 1.0}),
        ("normalization", [1, 99]),
        ("metadata", "a string"),
        ("metadata", [1, 2]),
    ],
)
def test_damaged_header_fields_are_model_file_errors_at_load(tiny_model_file, key, value):
    """Found at load, not as a TypeError at load or a ValueError deep inside deblur() later."""
    import json

    payload = _payload(tiny_model_file)
    header = json.loads(payload["metadata"])
    header[key] = value
    payload["metadata"] = json.dumps(header)
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="damaged metadata"):
        load_model(tiny_model_file)


def test_wrong_format_key(tiny_model_file):
    payload = _payload(tiny_model_file)
    payload["format"] = "something-else"
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="not a napari-deblurgan model file"):
        load_model(tiny_model_file)


def test_newer_format_version(tiny_model_file):
    payload = _payload(tiny_model_file)
    payload["format_version"] = 99
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="Upgrade"):
        load_model(tiny_model_file)


def test_unknown_architecture(tiny_model_file):
    payload = _payload(tiny_model_file)
    header = json.loads(payload["metadata"])
    header["architecture"] = "transformer9000"
    payload["metadata"] = json.dumps(header)
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="transformer9000"):
        load_model(tiny_model_file)


def test_damaged_metadata_json(tiny_model_file):
    payload = _payload(tiny_model_file)
    payload["metadata"] = "{not json"
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="damaged metadata"):
        load_model(tiny_model_file)


@pytest.mark.parametrize("damage", ["drop_key", "wrong_shape", "wrong_width"])
def test_state_dict_mismatch(tiny_model_file, damage):
    payload = _payload(tiny_model_file)
    sd = payload["state_dict"]
    key = next(iter(sd))
    if damage == "drop_key":
        del sd[key]
    elif damage == "wrong_shape":
        sd[key] = torch.zeros(3, 3)
    else:  # metadata says a different width than the weights have
        header = json.loads(payload["metadata"])
        header["architecture_args"]["width"] = 8
        payload["metadata"] = json.dumps(header)
    _rewrite(tiny_model_file, payload)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(tiny_model_file)


def test_bare_state_dict_is_explained(tiny_model, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(tiny_model.generator.state_dict(), path)
    with pytest.raises(ModelFileError, match="bare PyTorch state dict"):
        load_model(path)


class _Payload:
    """Pickles to a call that writes a marker file: what a malicious model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_pickled_code_is_refused_and_never_runs(tiny_model_file, tmp_path, container):
    import pickle

    # The payload is real: an unrestricted unpickle of the same construction runs it.
    control_marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control_marker)))
    assert control_marker.exists()

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    if container == "torch_zip":
        payload = _payload(tiny_model_file)
        payload["state_dict"] = _Payload(marker)
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps({"format": FORMAT, "x": _Payload(marker)}))
    # a raw pickle is not even unpickled: model files are zip archives (torch.save)
    with pytest.raises(ModelFileError, match="Refusing" if container == "torch_zip" else "not a napari-deblurgan"):
        load_model(evil)
    assert not marker.exists()


# -------------------------------------------------------------------------------------- file objects
def test_save_to_and_load_from_binary_file_objects(tiny_model, tmp_path):
    """As torch.save and torch.load take file objects: save() writes into one (and returns it), load_model()
    reads one from its position, with a file's checks; the bytes are those a file gets."""
    import io

    tiny_model.metadata.update(name="in memory")
    buffer = io.BytesIO()
    buffer.write(b"header")  # written at the stream's position: what came before is left alone
    assert tiny_model.save(buffer) is buffer
    assert not buffer.closed
    buffer.seek(len(b"header"))
    loaded = load_model(buffer)
    data = buffer.getvalue()[len(b"header") :]
    assert loaded.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert loaded.metadata["name"] == "in memory" and "path" not in loaded.metadata
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(tiny_model.generator(x), loaded.generator(x))
    # an open file, both ways; a model loaded from a file and saved into a stream does not name that file
    path = tmp_path / "m.pt"
    with open(path, "wb") as fh:
        tiny_model.save(fh)
    with open(path, "rb") as fh:
        from_file = load_model(fh)
    assert from_file.metadata["sha256"] == load_model(path).metadata["sha256"]
    again = io.BytesIO()
    load_model(path).save(again)
    again.seek(0)
    assert "path" not in load_model(again).metadata


def test_file_objects_get_a_files_checks(tiny_model_file, tmp_path):
    """weights_only, the zip check and the format check apply to a stream's bytes as to a file's."""
    import io
    import pickle

    data = tiny_model_file.read_bytes()
    with pytest.raises(ModelFileError, match="is damaged or incomplete"):
        load_model(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(ModelFileError, match="not a napari-deblurgan model file"):
        load_model(io.BytesIO(b"hello"))
    marker = tmp_path / "marker"
    payload = _payload(tiny_model_file)
    payload["state_dict"] = _Payload(marker)
    evil = io.BytesIO()
    torch.save(payload, evil)
    evil.seek(0)
    with pytest.raises(ModelFileError, match="Refusing"):
        load_model(evil)
    assert not marker.exists()
    evil = io.BytesIO(pickle.dumps({"format": FORMAT, "x": _Payload(marker)}))
    with pytest.raises(ModelFileError, match="not a napari-deblurgan"):
        load_model(evil)
    assert not marker.exists()
    payload = _payload(tiny_model_file)
    payload["format"] = "something else"
    other = io.BytesIO()
    torch.save(payload, other)
    other.seek(0)
    with pytest.raises(ModelFileError, match="format 'something else'"):
        load_model(other)


def test_text_streams_and_other_objects_are_one_clear_error(tiny_model, tmp_path):
    import io

    with pytest.raises(InputError, match="mode 'wb'"):
        tiny_model.save(io.StringIO())
    with pytest.raises(InputError, match="binary file object open for writing"):
        tiny_model.save(42)
    with pytest.raises(InputError, match="mode 'rb'"):
        load_model(io.StringIO("x"))
    with pytest.raises(InputError, match="binary file object open for reading"):
        load_model(42)
    path = tiny_model.save(tmp_path / "m.pt")
    with open(path, "ab") as fh, pytest.raises(ModelFileError, match="Cannot read a model"):
        load_model(fh)  # open for writing only


# ---------------------------------------------------------------------------------------- named models
@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A temporary registry with one model; returns (registry path, model file path)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    reg = weights / "registry.json"
    monkeypatch.setattr(model_file, "REGISTRY_PATH", reg)
    return reg


def _register(reg: Path, model, name: str, sha: str | None = None) -> Path:
    path = model.save(reg.parent / f"{name}.pt")
    sha = sha or hashlib.sha256(path.read_bytes()).hexdigest()
    entries = json.loads(reg.read_text())["models"] if reg.exists() else {}
    entries[name] = {"file": path.name, "sha256": sha, "description": f"{name} model"}
    reg.write_text(json.dumps({"models": entries}))
    return path


def test_named_model_loads_and_is_listed(registry, tiny_model):
    _register(registry, tiny_model, "tiny")
    assert list_named_models()["tiny"]["description"] == "tiny model"
    loaded = load_model("tiny")
    assert loaded.architecture == "unet_lite"


def test_named_model_sha256_mismatch(registry, tiny_model):
    _register(registry, tiny_model, "tiny", sha="0" * 64)
    with pytest.raises(ModelFileError, match="sha256"):
        load_model("tiny")


def test_named_model_tampered_after_registration(registry, tiny_model):
    path = _register(registry, tiny_model, "tiny")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model("tiny")


def test_default_not_shipped_says_how_to_get_one(registry):
    registry.write_text('{"models": {}}')
    with pytest.raises(ModelFileError, match="not shipped") as info:
        load_model("default")
    assert "finetune" in str(info.value)


def test_default_when_registered(registry, tiny_model):
    _register(registry, tiny_model, "default")
    assert load_model("default").channels == 1


@pytest.mark.parametrize("clash", ["folder", "file"])
def test_a_shipped_name_is_not_shadowed_by_the_working_directory(registry, tiny_model, tmp_path, monkeypatch, clash):
    """``deblur(image)`` and ``load_model()`` mean the shipped default wherever Python was started; a file or
    folder called ``default`` in the working directory is reached as ``./default``."""
    from napari_deblurgan import deblur

    _register(registry, tiny_model, "default")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    if clash == "folder":
        (workdir / "default").mkdir()
    else:
        (workdir / "default").write_text("my notes")
    assert load_model("default").channels == 1
    assert load_model().metadata["path"] == str(registry.parent / "default.pt")
    assert deblur(np.random.default_rng(0).random((32, 32)).astype(np.float32)).shape == (32, 32)
    with pytest.raises(ModelFileError, match="directory" if clash == "folder" else "not a napari-deblurgan"):
        load_model("./default")


def test_unknown_name(registry):
    registry.write_text('{"models": {}}')
    with pytest.raises(ModelFileError, match="neither an existing model file nor a shipped model"):
        load_model("nonexistent_name")


def test_shipped_registry_is_valid():
    """The registry in the package parses and every entry's file exists with the registered sha256."""
    for name, entry in list_named_models().items():
        path = model_file.REGISTRY_PATH.parent / entry["file"]
        assert path.is_file(), name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name


def test_with_generator_keeps_the_wrapping_and_copies_the_metadata():
    model = model_file.create_model(
        "unet_lite",
        channels=1,
        width=4,
        depth=2,
        n_blocks=1,
        seed=0,
        normalization={"method": "percentile", "low": 2.0, "high": 99.0},
        metadata={"name": "orig"},
    )
    other = model_file.create_model("unet_lite", channels=1, width=4, depth=2, n_blocks=1, seed=1).generator
    derived = model.with_generator(other)
    assert derived.generator is other
    assert (derived.architecture, derived.architecture_args, derived.channel_mode, derived.normalization) == (
        model.architecture,
        model.architecture_args,
        model.channel_mode,
        model.normalization,
    )
    derived.metadata["name"] = "changed"
    assert model.metadata["name"] == "orig"  # a copy, not the same dict
    assert model.with_generator(other, metadata={"name": "x"}).metadata == {"name": "x"}


def test_files_written_before_the_residual_option_load_with_tanh(tmp_path):
    """Model files from before ``residual`` existed (the first shipped defaults) have no such key: tanh."""
    from napari_deblurgan.model_file import DeblurModel
    from napari_deblurgan.models import build_generator

    generator = build_generator("unet_fast", 1, width=4, depth=2, n_blocks=1)
    old_args = {"width": 4, "depth": 2, "n_blocks": 1, "stem": "unshuffle", "padding_mode": "zeros"}
    path = DeblurModel(generator, "unet_fast", architecture_args=old_args).save(tmp_path / "old.pt")
    loaded = load_model(path)
    assert loaded.generator.residual == "tanh"
    assert loaded.architecture_args["residual"] == "tanh"


# ------------------------------------------------------------------------------------------ border context
def test_border_context_is_saved_copied_and_defaults_to_none(tmp_path):
    model = model_file.create_model("unet_lite", channels=1, width=4, depth=2, n_blocks=1, seed=0, context_padding=0)
    assert load_model(model.save(tmp_path / "zero.pt")).context_padding == 0  # 0 is kept, not taken for "unset"
    model.context_padding = 24
    assert load_model(model.save(tmp_path / "m.pt")).context_padding == 24
    assert (
        model.with_generator(
            model_file.create_model("unet_lite", width=4, depth=2, n_blocks=1).generator
        ).context_padding
        == 24
    )
    # files written before the setting existed have no key: the default rule applies
    payload = _payload(tmp_path / "m.pt")
    header = json.loads(payload["metadata"])
    del header["context_padding"]
    payload["metadata"] = json.dumps(header)
    _rewrite(tmp_path / "old.pt", payload)
    assert load_model(tmp_path / "old.pt").context_padding is None


@pytest.mark.parametrize("bad", [-1, 2.5, "8", True])
def test_bad_border_context_is_refused(bad, tmp_path):
    with pytest.raises(InputError, match="context_padding"):
        model_file.create_model("unet_lite", width=4, depth=2, n_blocks=1, context_padding=bad)
    path = model_file.create_model("unet_lite", width=4, depth=2, n_blocks=1).save(tmp_path / "m.pt")
    payload = _payload(path)
    header = json.loads(payload["metadata"])
    header["context_padding"] = bad
    payload["metadata"] = json.dumps(header)
    _rewrite(path, payload)
    with pytest.raises(ModelFileError, match=r"inconsistent metadata.*context_padding"):
        load_model(path)


def test_a_killed_model_save_leaves_no_temporary_file_for_good(tiny_model, tmp_path):
    """kill -9 during DeblurModel.save leaves its .part file; the next save of that file removes it once it
    is old (a fresh one may be a save in progress elsewhere)."""
    import time

    from napari_deblurgan.atomic_files import STALE_PART_SECONDS

    target = tmp_path / "model.pt"
    old_part, fresh_part = tmp_path / ".model.pt.x1.part", tmp_path / ".model.pt.x2.part"
    other_file_part = tmp_path / ".other.pt.x3.part"
    for part in (old_part, fresh_part, other_file_part):
        part.write_bytes(b"half a model")
    long_ago = time.time() - STALE_PART_SECONDS - 60
    for part in (old_part, other_file_part):
        os.utime(part, (long_ago, long_ago))
    tiny_model.save(target)
    assert not old_part.exists() and fresh_part.exists() and other_file_part.exists()
    assert load_model(target).architecture == tiny_model.architecture


def test_an_architecture_name_is_said_to_be_untrained_not_missing():
    with pytest.raises(ModelFileError, match=r"'resnet9' is an architecture, not a trained model") as info:
        model_file.load_model("resnet9")
    assert "create_model('resnet9')" in str(info.value) and "finetune --model resnet9" in str(info.value)
    assert "neither" not in str(info.value)


def test_a_saved_file_does_not_name_the_file_its_model_was_loaded_from(tiny_model, tmp_path):
    first = tiny_model.save(tmp_path / "first.pt")
    loaded = load_model(first)
    assert loaded.metadata["path"] == str(first)
    second = loaded.save(tmp_path / "second.pt")
    header = json.loads(torch.load(second, weights_only=True)["metadata"])
    assert "path" not in header["metadata"] and "sha256" not in header["metadata"]
    assert load_model(second).metadata["path"] == str(second)


def test_saving_into_a_file_opened_for_reading_says_to_open_it_for_writing(tiny_model, tmp_path):
    path = tmp_path / "existing.pt"
    path.write_bytes(b"")
    with open(path, "rb") as fh, pytest.raises(InputError, match="mode 'wb'"):
        tiny_model.save(fh)


def test_saving_weights_that_are_already_nan_says_the_training_diverged_not_to_save_as_float32(tmp_path):
    """The float16 advice ("not finite as float16 ... save as float32") is for weights beyond float16's range; a
    float32 model whose weights are NaN already cannot be helped by it."""
    import torch

    from _helpers import tiny_unet
    from napari_deblurgan.errors import InputError

    model = tiny_unet()
    with torch.no_grad():
        next(model.generator.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(InputError, match="training diverged") as info:
        model.save(tmp_path / "m.pt")
    assert "save as float32" not in str(info.value)


# ------------------------------------------------------------------------------------------------ "~" and names
def test_paths_starting_with_a_tilde_are_in_the_home_folder(tiny_model, tmp_path, monkeypatch):
    """``~/...`` as typed in napari's console: saved, loaded and deblurred with from the home folder, never from
    a folder named '~' in the working directory; a missing file's message names the expanded path."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "models").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    saved = tiny_model.save("~/models/m.pt")
    assert Path(saved) == home / "models" / "m.pt" and Path(saved).is_file()
    for given in ("~/models/m.pt", Path("~/models/m.pt")):
        assert load_model(given).metadata["path"] == str(home / "models" / "m.pt")
    import napari_deblurgan as ndg

    assert ndg.deblur(np.zeros((16, 16), np.float32), "~/models/m.pt", device="cpu").shape == (16, 16)
    with pytest.raises(ModelFileError) as info:
        load_model("~/models/none.pt")
    assert str(info.value).startswith(f"Model file {str(home / 'models' / 'none.pt')!r} not found."), info.value
    assert not list(work.iterdir())


def test_shipped_names_are_matched_whatever_their_case_unless_a_file_has_that_name(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = load_model("fast").metadata["sha256"]
    for spelling in ("Fast", "FAST"):
        assert load_model(spelling).metadata["sha256"] == shipped
    with pytest.raises(ModelFileError, match=r"^'Fastest' is neither an existing model file nor a shipped model"):
        load_model("Fastest")
    tiny_model.save(tmp_path / "Fast")  # a file of that name (not the exact shipped name): the file
    assert load_model("Fast").architecture == tiny_model.architecture != load_model("fast").architecture

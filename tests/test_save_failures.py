"""A failed write says why in words and loses nothing: atomic_write's WriteFailed (disk full, read-only, the
folder gone), the finetune command's fallback save of a trained model that ``-o`` cannot take, the checkpoint
warning on a full disk, the message of a second Ctrl-C after a checkpoint, and ``deblur`` onto a full disk.

A full disk is simulated (monkeypatched writes raising ENOSPC, ``shutil.disk_usage`` reporting no free space),
not mounted."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_deblurgan import atomic_files, samples
from napari_deblurgan.atomic_files import WriteFailed, atomic_write, check_writable
from napari_deblurgan.cli import main
from napari_deblurgan.errors import InputError
from napari_deblurgan.model_file import create_model, load_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]

#: What torch says when the disk fills up during torch.save (its RuntimeError, no errno).
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def _no_free_space(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(".")
    monkeypatch.setattr(atomic_files.shutil, "disk_usage", lambda path: usage._replace(free=4096))


def _write_raising(exc: BaseException):
    """A body for atomic_write: writes a little of the temporary file, then fails with ``exc``."""

    def body(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise exc

    return body


# --------------------------------------------------------------------------------------------- atomic_write
@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failed_write_says_the_cause_in_words_and_keeps_the_old_file(tmp_path, code, words):
    target = tmp_path / "out.bin"
    target.write_bytes(b"the old file")
    with pytest.raises(WriteFailed) as raised, atomic_write(target) as tmp:
        _write_raising(OSError(code, os.strerror(code)))(tmp)
    error = raised.value
    assert isinstance(error, InputError) and isinstance(error, OSError)  # the CLI prints it without a traceback
    assert error.reason == words and error.errno == code and error.target == target
    assert str(target) in str(error) and words in str(error)
    assert target.read_bytes() == b"the old file" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_is_written_through_not_replaced_by_a_file(tmp_path, target_exists):
    """``-o link.pt`` where link.pt points at a model elsewhere: the model it points at gets the new contents
    (atomically, its temporary file next to it) and the link stays a link, as open(link, "w") would do."""
    (tmp_path / "models").mkdir()
    (tmp_path / "out").mkdir()
    real = tmp_path / "models" / "model.pt"
    if target_exists:
        real.write_bytes(b"the old model")
    link = tmp_path / "out" / "link.pt"
    link.symlink_to(real)
    with atomic_write(link) as tmp:
        assert tmp.parent == real.parent  # os.replace within the target's file system
        tmp.write_bytes(b"the new model")
    assert link.is_symlink() and link.readlink() == real
    assert real.read_bytes() == b"the new model"
    assert sorted(p.name for p in real.parent.iterdir()) == ["model.pt"]  # no temporary file left
    assert sorted(p.name for p in link.parent.iterdir()) == ["link.pt"]
    # the up-front check looks at the file written into, but returns the link: what the Finetune panel lists,
    # resumes and names its <stem>.checkpoint folder after is the name the user gave
    assert check_writable(link) == link


def test_check_writable_returns_the_link_given_not_the_file_it_leads_to(tmp_path):
    (tmp_path / "store").mkdir()
    os.symlink(Path("store") / "cells-v3.pt", tmp_path / "cells.pt")  # relative, dangling: the save creates it
    assert check_writable(tmp_path / "cells.pt") == tmp_path / "cells.pt"
    assert check_writable(str(tmp_path / "cells.pt")) == tmp_path / "cells.pt"


def _write_x(path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(b"x")


def test_a_symlink_loop_is_refused_not_replaced_by_a_file(tmp_path):
    """open(loop, "w") fails with ELOOP; a write must not turn one of the links into a plain file."""
    os.symlink("b.pt", tmp_path / "a.pt")
    os.symlink("a.pt", tmp_path / "b.pt")
    for attempt in (check_writable, _write_x):
        with pytest.raises(WriteFailed, match="too many levels of symbolic links") as raised:
            attempt(tmp_path / "a.pt")
        assert str(tmp_path / "a.pt") in str(raised.value) and raised.value.errno == errno.ELOOP
    assert os.path.islink(tmp_path / "a.pt") and os.path.islink(tmp_path / "b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_a_link_to_a_folder_or_into_a_missing_folder_is_said_naming_the_link_and_its_target(tmp_path):
    """The user gave the link: an error naming only the file it leads to would name a path they never typed."""
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store", tmp_path / "link.pt")
    with pytest.raises(WriteFailed) as raised:
        check_writable(tmp_path / "link.pt")
    assert f"{str(tmp_path / 'link.pt')!r} -> {str(tmp_path / 'store')!r} is a directory" in str(raised.value)
    os.symlink(Path("nowhere") / "new.pt", tmp_path / "dangling.pt")
    with pytest.raises(WriteFailed, match="does not exist") as raised:
        _write_x(tmp_path / "dangling.pt")
    message = str(raised.value)
    assert f"{str(tmp_path / 'dangling.pt')!r} -> {str(tmp_path / 'nowhere' / 'new.pt')!r}" in message
    assert str(tmp_path / "nowhere") in message and "create it first" in message


def test_a_failed_rename_or_fsync_is_said_in_words_too(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic_files.os, "replace", read_only)
    with pytest.raises(WriteFailed, match="read-only file system"), atomic_write(target) as tmp:
        tmp.write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_reported_without_errno_is_recognised_by_its_free_space(tmp_path, monkeypatch):
    # torch's RuntimeError and tifffile's short write say nothing of the disk
    _no_free_space(monkeypatch)
    for failure in (RuntimeError(TORCH_DISK_FULL), OSError("9216 requested and 6008 written")):
        with pytest.raises(WriteFailed, match="no space left on device"), atomic_write(tmp_path / "m.pt") as tmp:
            _write_raising(failure)(tmp)
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_or_a_bug_near_a_full_disk_is_not_called_a_failed_write(tmp_path, monkeypatch):
    """An input page that cannot be read (EACCES, naming the input) while the output is written was reported as
    "Cannot write the output: permission denied"; a CUDA error while the disk happened to be nearly full, as "no
    space left on device". Both are passed on as they are now."""
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input_2.ome.tif"))
    _no_free_space(monkeypatch)
    for failure in (unreadable, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        with pytest.raises(type(failure)) as raised, atomic_write(tmp_path / "out.tif") as tmp:
            _write_raising(failure)(tmp)
        assert raised.value is failure
    # the output's own temporary file refused, or a short write near a full disk: still said in words
    own = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.tif.abc123.part"))
    with pytest.raises(WriteFailed, match="permission denied"), atomic_write(tmp_path / "out.tif") as tmp:
        _write_raising(own)(tmp)
    assert list(tmp_path.iterdir()) == []


def test_errors_that_are_no_failed_write_pass_through_unchanged(tmp_path):
    # plenty of space: a RuntimeError is a bug, not a full disk; a missing input read inside the block is no write
    for failure in (RuntimeError("a bug"), FileNotFoundError(errno.ENOENT, "No such file", "input.tif")):
        with pytest.raises(type(failure)) as raised, atomic_write(tmp_path / "m.pt") as tmp:
            _write_raising(failure)(tmp)
        assert not isinstance(raised.value, WriteFailed)
    assert list(tmp_path.iterdir()) == []


def test_a_model_saved_onto_a_full_disk_is_one_clear_error(tiny_model, tmp_path, monkeypatch):
    import torch

    def full(*args, **kwargs):
        raise RuntimeError(TORCH_DISK_FULL)

    _no_free_space(monkeypatch)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteFailed, match=r"Cannot write .*m\.pt.*no space left on device") as raised:
        tiny_model.save(tmp_path / "m.pt")
    assert "enforce" not in str(raised.value) and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ finetune
@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the fallback folder ~/.napari-deblurgan/models
    sharp = (samples.cells((96, 96), seed=2) * 4000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 1.5).astype(np.uint16)
    tifffile.imwrite(tmp_path / "sharp.tif", sharp)
    tifffile.imwrite(tmp_path / "blurred.tif", blurred)
    create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1).save(tmp_path / "tiny.pt")
    return tmp_path


def _finetune(d: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(d / "tiny.pt"),
        "--blurred",
        str(d / "blurred.tif"),
        "--sharp",
        str(d / "sharp.tif"),
        "--patch-size",
        "32",
        "--batch-size",
        "2",
        "--preset",
        "content",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--validation",
        "0",
        "-q",
        *extra,
    ]


def _refuse_writing(monkeypatch: pytest.MonkeyPatch, refused: Path, fallbacks: bool = False) -> None:
    """Renames onto ``refused`` (and with ``fallbacks``, onto any fallback copy of it) fail with ENOSPC, as on a
    full disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if dst == refused or (fallbacks and dst.name.startswith(f"{refused.stem}-unsaved-")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic_files.os, "replace", replace)


def test_a_model_that_output_cannot_take_is_saved_in_the_checkpoint_folder(files, monkeypatch, capsys):
    out, checkpoints = files / "m.pt", files / "ck"
    _refuse_writing(monkeypatch, out)
    assert main([*_finetune(files, "--steps", "2", "--checkpoint-dir", str(checkpoints)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    (kept,) = checkpoints.glob("m-unsaved-*.pt")
    assert (
        f"Could not write {str(out)!r} (no space left on device); the trained model was saved to "
        f"{str(kept)!r} instead" in err
    )
    assert "Traceback" not in err and not out.exists()
    assert load_model(kept).metadata["training"]["steps_done"] == 2


def test_without_a_checkpoint_folder_the_model_goes_to_the_users_models_folder(files, monkeypatch, capsys):
    out = files / "m.pt"
    _refuse_writing(monkeypatch, out)
    assert main([*_finetune(files, "--steps", "1"), "-o", str(out)]) == 2
    (kept,) = (files / "home" / ".napari-deblurgan" / "models").glob("m-unsaved-*.pt")
    assert str(kept) in capsys.readouterr().err and load_model(kept) is not None


def test_when_nothing_can_be_saved_the_error_says_so_and_where_the_checkpoint_is(files, monkeypatch, capsys):
    out, checkpoints = files / "m.pt", files / "ck"
    _refuse_writing(monkeypatch, out, fallbacks=True)
    code = main(
        [
            *_finetune(files, "--steps", "2", "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "1"),
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "could not be saved anywhere" in err and err.count("no space left on device") == 4  # -o, 3 copies
    assert not list(files.rglob("m*.pt"))
    assert f"--resume {checkpoints} continues the run" in err


def test_an_output_folder_removed_during_the_run_does_not_lose_the_model(tiny_model, tmp_path, monkeypatch):
    from napari_deblurgan.training.saving import save_trained_model

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    saved, not_written = save_trained_model(tiny_model, tmp_path / "gone" / "m.pt", None)
    assert not_written == "its folder does not exist"
    assert saved.parent == tmp_path / "home" / ".napari-deblurgan" / "models" and saved.is_file()


def test_a_checkpoint_onto_a_full_disk_warns_in_words(files, monkeypatch, capsys):
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint.pt" in str(getattr(f, "name", "")):
            raise RuntimeError(TORCH_DISK_FULL)
        return real_save(obj, f, *args, **kwargs)

    _no_free_space(monkeypatch)
    monkeypatch.setattr(torch, "save", save)
    out = files / "m.pt"
    assert main([*_finetune(files, "--steps", "2", "--checkpoint-dir", str(files / "ck")), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Could not write the checkpoint at step 2" in err and "(no space left on device)" in err
    assert "enforce" not in err and out.is_file()


def test_a_second_ctrl_c_after_a_checkpoint_says_resume_continues(files, monkeypatch, capsys):
    from napari_deblurgan.training import trainer

    real = trainer.iter_finetune

    class SecondCtrlC:
        """The training run, interrupted (as by a second Ctrl-C) at the step after its first checkpoint."""

        def __init__(self, run):
            self.run, self.model, self.stop = run, None, run.stop

        def __iter__(self):
            checkpointed = False
            for event in self.run:
                if checkpointed and type(event).__name__ == "Step":
                    raise KeyboardInterrupt
                checkpointed = checkpointed or type(event).__name__ == "CheckpointSaved"
                yield event

    @functools.wraps(real)  # the trainer reads iter_finetune's signature
    def interrupted(*args, **kwargs):
        return SecondCtrlC(real(*args, **kwargs))

    monkeypatch.setattr(trainer, "iter_finetune", interrupted)
    checkpoints, out = files / "ck", files / "m.pt"
    code = main(
        [
            *_finetune(files, "--steps", "6", "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2"),
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 130 and not out.exists(), err
    assert "the model was not written" in err and "no output was written" not in err
    assert f"The checkpoint of step 2 in {str(checkpoints)!r} is kept: --resume {checkpoints} continues" in err


# -------------------------------------------------------------------------------------------------- deblur
def test_deblur_onto_a_full_disk_is_one_clear_error(tiny_model_file, tmp_path, monkeypatch, capsys):
    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(inp, (samples.cells((64, 64), seed=1) * 4000).astype(np.uint16))
    real_imwrite = tifffile.imwrite

    def short_write(file, *args, **kwargs):  # what tifffile raises when the disk fills up mid-write
        if ".part" in str(getattr(file, "name", file)):
            raise OSError("9216 requested and 6008 written")
        return real_imwrite(file, *args, **kwargs)

    _no_free_space(monkeypatch)
    monkeypatch.setattr(tifffile, "imwrite", short_write)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {str(out)!r}: no space left on device" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "tiny.pt"]


@pytest.mark.parametrize("compression", [None, "zlib"])  # a map of the output; a scratch map (joint CZYX) below
def test_a_mapped_output_reserves_its_space_before_any_work(
    tiny_model_file, tmp_path, monkeypatch, capsys, compression
):
    """A large output is filled through a memory map of a sparse file (the output itself, or a scratch file
    before a compressed one): on a full disk a write to one of its pages kills the process with SIGBUS, mid-run
    and without a message. Its blocks are allocated before the first plane is deblurred now: a full disk is one
    clear error, and neither file is left."""
    from napari_deblurgan.cli import deblur_command

    inp, out = tmp_path / "in.tif", tmp_path / "out.tif"
    stack = (np.random.default_rng(3).random((3, 40, 48)) * 4000).astype(np.uint16)
    tifffile.imwrite(inp, stack, compression=compression, photometric="minisblack")
    reserved: list[int] = []

    def full_disk(fd: int, offset: int, length: int) -> None:
        reserved.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(deblur_command, "LARGE_FILE_BYTES", 100)  # the lazy path, which maps its output
    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)
    if compression is not None:
        # a compressed stream needs no map unless its blocks come out of file order: force the scratch map
        monkeypatch.setattr(deblur_command, "_in_file_order", lambda numblocks, shape: False)
    assert main(["deblur", str(inp), "-o", str(out), "--model", str(tiny_model_file), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {str(out)!r}: no space left on device" in err and "Traceback" not in err
    assert reserved and reserved[0] >= stack.nbytes  # the whole output (or scratch map) at once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "tiny.pt"]

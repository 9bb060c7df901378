"""``napari-deblurgan finetune``: pairs, synthetic blur, errors, progress line, Ctrl-C keeps the best model."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from _helpers import raise_on_call
from napari_deblurgan import samples
from napari_deblurgan.cli import main
from napari_deblurgan.model_file import create_model, load_model
from napari_deblurgan.training.checkpoint import checkpoint_path

pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]


@pytest.fixture
def files(tmp_path):
    sharp = (samples.cells((96, 96), seed=2) * 4000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 1.5).astype(np.uint16)
    tifffile.imwrite(tmp_path / "sharp.tif", sharp)
    tifffile.imwrite(tmp_path / "blurred.tif", blurred)
    model = create_model("unet_lite", 1, seed=0, width=4, depth=2, n_blocks=1)
    model.save(tmp_path / "tiny.pt")
    return tmp_path


def _common(d, *extra):
    return [
        "finetune",
        "--model",
        str(d / "tiny.pt"),
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
        "--validate-every",
        "2",
        *extra,
    ]


def test_finetune_pair_writes_a_model_and_prints_progress(files, capsys):
    out = files / "out.pt"
    argv = _common(files, "--blurred", str(files / "blurred.tif"), "--sharp", str(files / "sharp.tif"))
    code = main([*argv, "--steps", "4", "-o", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 4/4" in err and "val@2 PSNR" in err and "dB" in err and f"wrote {out}" in err
    model = load_model(out)
    assert model.metadata["training"]["steps_done"] == 4
    assert model.metadata["training"]["data_shapes"] == [[96, 96]]


def test_finetune_sharp_only_synthesises_blur(files):
    out = files / "syn.pt"
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "--steps", "2", "-o", str(out), "-q"])
    assert code == 0
    assert load_model(out).metadata["training"]["synthetic_blur"] == {
        "kinds": ["motion", "defocus", "gaussian"],
        "kind_weights": None,
        "strength_px": None,
        "noise": {"photons": [30.0, 1000.0], "read_noise": [0.5, 4.0]},
        "psf_block": 1,  # one batch's PSFs at a time on a CPU
    }
    weighted = files / "weighted.pt"
    argv = [*_common(files, "--sharp", str(files / "sharp.tif")), "--blur-kind", "motion:2,gaussian"]
    assert main([*argv, "--steps", "2", "-o", str(weighted), "-q"]) == 0
    blur = load_model(weighted).metadata["training"]["synthetic_blur"]
    assert blur["kinds"] == ["motion", "gaussian"] and blur["kind_weights"] == [2.0, 1.0]


def test_finetune_blur_strength_and_noise_options(files):
    out = files / "syn2.pt"
    code = main(
        [
            *_common(files, "--sharp", str(files / "sharp.tif")),
            "--steps",
            "2",
            "-o",
            str(out),
            "-q",
            "--blur-kind",
            "gaussian",
            "--blur-strength",
            "1",
            "2",
            "--noise-photons",
            "0",
        ]
    )
    assert code == 0
    recorded = load_model(out).metadata["training"]["synthetic_blur"]
    assert recorded == {
        "kinds": ["gaussian"],
        "kind_weights": None,
        "strength_px": [1.0, 2.0],
        "noise": None,
        "psf_block": 1,
    }
    bad = main(
        [
            *_common(files, "--sharp", str(files / "sharp.tif")),
            "--steps",
            "2",
            "-o",
            str(files / "b.pt"),
            "-q",
            "--blur-strength",
            "1",
            "2",
            "3",
        ]
    )
    assert bad == 2


def test_finetune_with_a_teacher(files, capsys):
    out = files / "taught.pt"
    argv = [*_common(files, "--sharp", str(files / "sharp.tif")), "--steps", "2", "-o", str(out), "-q"]
    assert main([*argv, "--teacher", str(files / "tiny.pt"), "--teacher-weight", "0.3"]) == 0
    teacher = load_model(out).metadata["training"]["teacher"]
    assert teacher["weight"] == 0.3 and teacher["file_sha256"] == load_model(files / "tiny.pt").metadata["sha256"]
    assert main([*argv, "--force", "--teacher", str(files / "tiny.pt"), "--teacher-weight", "2"]) == 2
    assert "--teacher-weight must be a number in (0, 1]" in capsys.readouterr().err
    assert main([*argv, "--force", "--teacher-weight", "3"]) == 2  # without --teacher: refused, not ignored
    assert "--teacher-weight must be a number in (0, 1]" in capsys.readouterr().err
    assert main([*argv, "--force", "--teacher-weight", "0.3"]) == 0
    assert "note: --teacher-weight 0.3 is ignored: no teacher was given" in capsys.readouterr().err


def test_blurred_without_sharp_is_a_usage_error(files, capsys):
    code = main([*_common(files, "--blurred", str(files / "blurred.tif")), "-o", str(files / "x.pt")])
    assert code == 2 and "--sharp" in capsys.readouterr().err
    assert not (files / "x.pt").exists()


def test_existing_output_needs_force(files, capsys):
    (files / "exists.pt").write_bytes(b"")
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "-o", str(files / "exists.pt")])
    assert code == 2 and "--force" in capsys.readouterr().err


def no_training_batches(monkeypatch) -> list[int]:
    """Make every training batch drawn a recorded failure (the list it returns): a refusal that comes before
    the training draws none, and one that came after would fail at the first step instead of after all."""
    from napari_deblurgan.data.pairs import BatchSource

    drawn: list[int] = []

    def next_batch(self, size):
        drawn.append(size)
        raise AssertionError("a training batch was drawn before the refusal")

    monkeypatch.setattr(BatchSource, "next_batch", next_batch)
    return drawn


def test_an_output_that_cannot_be_written_is_said_before_training(files, capsys, monkeypatch):
    drawn = no_training_batches(monkeypatch)
    (files / "folder.pt").mkdir()
    code = main(
        [
            *_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "100000"),
            "-o",
            str(files / "folder.pt"),
            "--force",
        ]
    )
    assert drawn == []  # said before the first step, not after 100,000 steps
    assert code == 2 and "is a directory" in capsys.readouterr().err
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "-o", str(files / "sharp.tif"), "--force"])
    assert code == 2 and "ends in '.tif', but finetune writes a model file" in capsys.readouterr().err
    assert tifffile.imread(files / "sharp.tif").ndim == 2  # still the image
    tifffile.imwrite(files / "image.pt", tifffile.imread(files / "sharp.tif"))  # a TIFF, oddly named
    code = main([*_common(files, "--sharp", str(files / "image.pt")), "-o", str(files / "image.pt"), "--force"])
    assert code == 2 and "is a training image" in capsys.readouterr().err
    assert tifffile.imread(files / "image.pt").ndim == 2
    assert drawn == []


@pytest.mark.parametrize("how", ["dotdot", "symlink", "hardlink"])
def test_a_training_image_named_another_way_is_never_the_output(files, capsys, monkeypatch, how):
    """-o spelled differently from the training image it is (``sub/../image.pt``, a link to it) is still
    refused, with --force too: the input is never overwritten by the model."""
    drawn = no_training_batches(monkeypatch)
    image = files / "image.pt"
    tifffile.imwrite(image, tifffile.imread(files / "sharp.tif"))  # a TIFF, oddly named
    before = image.read_bytes()
    (files / "sub").mkdir()
    if how == "dotdot":
        out = files / "sub" / ".." / "image.pt"
    elif how == "symlink":
        out = files / "sub" / "link.pt"
        out.symlink_to(image)
    else:
        out = files / "sub" / "hard.pt"
        os.link(image, out)
    code = main([*_common(files, "--sharp", str(image)), "-o", str(out), "--force"])
    assert code == 2 and "is a training image" in capsys.readouterr().err
    assert image.read_bytes() == before
    assert drawn == []


def test_a_used_checkpoint_dir_needs_resume_or_force(files, capsys):
    args = [*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2"), "--checkpoint-dir", str(files / "ck")]
    assert main([*args, "-o", str(files / "a.pt")]) == 0
    before = (files / "ck" / "checkpoint.pt").read_bytes()
    assert main([*args, "-o", str(files / "b.pt")]) == 2
    assert "holds an earlier run's checkpoint" in capsys.readouterr().err
    assert (files / "ck" / "checkpoint.pt").read_bytes() == before and not (files / "b.pt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI prints the notice once ("note: ..."), not also as a warning
        assert main([*args, "-o", str(files / "b.pt"), "--force"]) == 0
    assert capsys.readouterr().err.count("holds the checkpoint of an earlier run") == 1


def test_a_checkpoint_given_as_the_model_gets_advice_whose_python_call_is_not_rewritten(files, capsys):
    """The message of a checkpoint passed where a model file goes quotes a Python call and a CLI line: the CLI
    writes its own options as flags, but rewriting the call (``finetune(sharp, --resume ...)``) breaks it."""
    args = [*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2"), "--checkpoint-dir", str(files / "ck")]
    assert main([*args, "-o", str(files / "a.pt"), "-q"]) == 0
    checkpoint = str(files / "ck" / "checkpoint.pt")
    argv = ["finetune", "--model", checkpoint, "--sharp", str(files / "sharp.tif"), "-o", str(files / "b.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"napari_deblurgan.finetune(sharp, resume='{checkpoint}', steps=2)" in err, err
    assert "--resume" in err and "--steps 2" in err  # the CLI line of the advice


def test_mismatched_pair_is_a_usage_error(files, capsys):
    tifffile.imwrite(files / "small.tif", np.zeros((64, 64), np.uint16))
    argv = _common(files, "--blurred", str(files / "small.tif"), "--sharp", str(files / "sharp.tif"))
    code = main([*argv, "-o", str(files / "x.pt")])
    assert code == 2 and "differ in shape" in capsys.readouterr().err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_ctrl_c_or_sigterm_stops_and_still_writes_the_model(files, signum, status, capsys):
    """Ctrl-C, SIGTERM (a cluster's time limit, kill) and SIGHUP (the terminal or SSH session closed): stop after
    the step, save, exit 128 + signal; saying so at once (from the writer thread, not the handler)."""
    from napari_deblurgan.signal_safe_stderr import stderr_from_signal_handlers

    out = files / "stopped.pt"
    ckpt = files / "ckpt"
    argv = _common(files, "--blurred", str(files / "blurred.tif"), "--sharp", str(files / "sharp.tif"))
    argv += ["--steps", "100000", "-o", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "-q"]

    def interrupt_when_training():
        deadline = time.monotonic() + 120
        while not checkpoint_path(ckpt).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    code = main(argv)
    assert code == status
    meta = load_model(out).metadata["training"]
    assert meta["stopped"] is True and 1 <= meta["steps_done"] < 100000
    assert stderr_from_signal_handlers.flush()
    again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
    assert f"stopping after this step{again}..." in capsys.readouterr().err


def test_a_stop_before_the_first_step_writes_no_copy_of_the_starting_model(files, capsys, monkeypatch):
    """Ctrl-C while the run is being set up: nothing was trained, so nothing is written under -o (a copy of the
    starting model there would pass for a finetuned one); the exit status is still Ctrl-C's."""
    from napari_deblurgan.training.trainer import TrainingRun

    real_emit = TrainingRun._emit

    def interrupted_at_the_start(self, event):
        if type(event).__name__ == "Started":
            os.kill(os.getpid(), signal.SIGINT)
        return real_emit(self, event)

    monkeypatch.setattr(TrainingRun, "_emit", interrupted_at_the_start)
    out = files / "never.pt"
    argv = _common(files, "--blurred", str(files / "blurred.tif"), "--sharp", str(files / "sharp.tif"))
    assert main([*argv, "--steps", "100", "-o", str(out), "-q"]) == 130
    assert not out.exists()
    assert "stopped before the first step: nothing was trained, no model written" in capsys.readouterr().err


def test_a_hangup_that_nohup_ignores_does_not_stop_the_run(files):
    """nohup ignores SIGHUP so that a run outlives its terminal: the CLI must not take that over and stop."""
    out, ckpt = files / "nohup.pt", files / "ck-nohup"
    argv = _common(files, "--sharp", str(files / "sharp.tif"))
    argv += ["--steps", "4", "-o", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "-q"]

    def hang_up_when_training():
        deadline = time.monotonic() + 120
        while not checkpoint_path(ckpt).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGHUP)

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        threading.Thread(target=hang_up_when_training, daemon=True).start()
        assert main(argv) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # left as nohup set it
    finally:
        signal.signal(signal.SIGHUP, previous)
    meta = load_model(out).metadata["training"]
    assert meta["stopped"] is False and meta["steps_done"] == 4


def test_after_a_hangup_the_streams_on_the_terminal_point_at_dev_null():
    """Writing to a hung-up terminal fails (EIO): the clean-up's messages would end the command with an error
    instead of the signal's exit status. Streams on a file or pipe (a log) are left alone."""
    import pty
    import tempfile

    from napari_deblurgan.cli.signals import detach_from_terminal

    class Stream:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

    master, terminal = pty.openpty()
    with tempfile.TemporaryFile() as log:
        try:
            detach_from_terminal([Stream(terminal), Stream(log.fileno()), object()])
            assert os.readlink(f"/proc/self/fd/{terminal}") == os.devnull
            assert os.readlink(f"/proc/self/fd/{log.fileno()}") != os.devnull
        finally:
            os.close(master)
            os.close(terminal)


def test_the_model_file_may_not_be_the_checkpoint(files, capsys, monkeypatch):
    args = [*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2"), "--checkpoint-dir", str(files / "ck")]
    with monkeypatch.context() as refusing:
        drawn = no_training_batches(refusing)
        for out in (files / "ck" / "checkpoint.pt", files / "ck"):
            code = main([*args, "-o", str(out)])
            assert drawn == []  # refused before the first step, not after the training
            assert code == 2 and "checkpoint folder or file" in capsys.readouterr().err
    assert main([*args, "-o", str(files / "m.pt")]) == 0
    assert (
        main(
            [
                *_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "3"),
                "--resume",
                str(files / "ck" / "checkpoint.pt"),
                "-o",
                str(files / "ck" / "checkpoint.pt"),
                "--force",
            ]
        )
        == 2
    )


def test_a_failure_mid_run_still_saves_the_model_so_far(files, capsys, monkeypatch):
    from napari_deblurgan.data.pairs import BatchSource

    raise_on_call(monkeypatch, BatchSource, "next_batch", 4, RuntimeError("the device fell off the bus"))
    out = files / "crashed.pt"
    code = main([*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "50"), "-o", str(out)])
    assert code == 1 and "training failed; the model so far is saved to" in capsys.readouterr().err
    assert load_model(out).metadata["training"]["base_model"]


def test_a_resume_into_another_runs_checkpoint_folder_needs_force(files, capsys):
    common = _common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2")
    assert main([*common, "--checkpoint-dir", str(files / "a"), "-o", str(files / "a.pt")]) == 0
    assert main([*common, "--checkpoint-dir", str(files / "b"), "-o", str(files / "b.pt")]) == 0
    before = (files / "b" / "checkpoint.pt").read_bytes()
    resume = _common(files, "--sharp", str(files / "sharp.tif"), "--steps", "3")
    assert (
        main([*resume, "--resume", str(files / "a"), "--checkpoint-dir", str(files / "b"), "-o", str(files / "c.pt")])
        == 2
    )
    assert "holds an earlier run's checkpoint" in capsys.readouterr().err
    assert (files / "b" / "checkpoint.pt").read_bytes() == before
    assert (
        main([*resume, "--resume", str(files / "a"), "--checkpoint-dir", str(files / "a"), "-o", str(files / "c.pt")])
        == 0
    )  # its own folder, named


# ------------------------------------------------------------------ the CLI bug hunt of session 14 (cli-hunt)
def _pair_files(d, name, shape, seed):
    sharp = (samples.cells(shape, seed=seed) * 4000).astype(np.uint16)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), 1.5).astype(np.uint16)
    tifffile.imwrite(d / f"{name}_s.tif", sharp)
    tifffile.imwrite(d / f"{name}_b.tif", blurred)
    return str(d / f"{name}_b.tif"), str(d / f"{name}_s.tif")


def test_several_blurred_and_sharp_files_are_paired_in_order(files, capsys):
    b1, s1 = _pair_files(files, "one", (96, 96), 3)
    b2, s2 = _pair_files(files, "two", (80, 112), 4)
    out = files / "two_pairs.pt"
    # several values after one flag, and the flag repeated, mixed
    assert (
        main([*_common(files, "--blurred", b1, b2, "--sharp", s1, "--sharp", s2), "--steps", "1", "-o", str(out), "-q"])
        == 0
    )
    assert load_model(out).metadata["training"]["data_shapes"] == [[96, 96], [80, 112]]
    capsys.readouterr()
    assert main([*_common(files, "--blurred", b1, "--sharp", s1, s2), "--steps", "1", "-o", str(files / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "Got 1 --blurred but 2 --sharp files" in err and "in order" in err and not (files / "x.pt").exists()
    sharp_only = files / "sharp_only.pt"
    assert main([*_common(files, "--sharp", s1, "--sharp", s2), "--steps", "1", "-o", str(sharp_only), "-q"]) == 0
    assert load_model(sharp_only).metadata["training"]["data_shapes"] == [[96, 96], [80, 112]]


def test_finetune_help_says_the_image_flags_take_several_files(capsys):
    assert main(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--blurred A.tif [A.tif ...]" in text and "--sharp B.tif [B.tif ...]" in text
    assert "(A1, B1) and (A2, B2)" in text and "image(s)" not in text
    assert "notes and warnings are still printed" in text  # what -q hides, and what it does not


def test_warnings_print_as_one_line_in_flags_also_with_q(files, capsys):
    blurred = tifffile.imread(files / "blurred.tif")
    tifffile.imwrite(files / "shifted.tif", np.roll(blurred, (7, -5), axis=(0, 1)))
    argv = _common(files, "--blurred", str(files / "shifted.tif"), "--sharp", str(files / "sharp.tif"))
    assert main([*argv, "--steps", "1", "-o", str(files / "m.pt"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: Training pair 1: blurred image is offset from its sharp image" in err
    assert "UserWarning" not in err and ".py:" not in err and "PairedData(" not in err  # no location, no source line
    # every subcommand: deblur's warnings too, with their keywords as the flags typed
    tifffile.imwrite(files / "in.tif", blurred)
    assert (
        main(
            [
                "deblur",
                str(files / "in.tif"),
                "-o",
                str(files / "out.tif"),
                "--model",
                str(files / "tiny.pt"),
                "--device",
                "cpu",
                "--overlap",
                "4",
                "--tile-size",
                "128",
                "-q",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: --overlap 4 px is below this model's seamless overlap" in err
    assert "leave --overlap unset" in err and "UserWarning" not in err


def test_q_keeps_the_notes(files, capsys):
    argv = _common(files, "--sharp", str(files / "sharp.tif"), "--validation", "0", "--patch-size", "130")
    assert main([*argv, "--steps", "1", "-o", str(files / "m.pt"), "-q"]) == 0
    err = capsys.readouterr().err
    # the note reports the user's number (not the stride multiple 128 it was first rounded to), in flags
    assert "note: --patch-size reduced from 130 to 96 px to fit the images" in err
    assert "step 1/1" not in err and "wrote" not in err  # the progress is what -q hides


def test_crops_too_small_for_the_critic_are_refused_in_flags(files, capsys):
    argv = _common(files, "--sharp", str(files / "sharp.tif"), "--validation", "0", "--preset", "default")
    assert main([*argv, "--patch-size", "16", "--steps", "1", "-o", str(files / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "--patch-size 16 is too small for the critic" in err and "Pass --patch-size 24 or more" in err
    assert "such as --preset content" in err and "patch_size" not in err
    assert not (files / "m.pt").exists()


def test_a_pair_of_identical_images_is_refused(files, capsys):
    sharp = str(files / "sharp.tif")
    assert main([*_common(files, "--blurred", sharp, "--sharp", sharp), "-o", str(files / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "--blurred and --sharp are the same file" in err and "learns to change nothing" in err
    assert "--sharp alone" in err
    tifffile.imwrite(files / "copy.tif", tifffile.imread(sharp))
    assert (
        main([*_common(files, "--blurred", str(files / "copy.tif"), "--sharp", sharp), "-o", str(files / "x.pt")]) == 2
    )
    assert "The blurred and sharp images are identical" in capsys.readouterr().err
    assert not (files / "x.pt").exists()


def test_messages_of_the_api_are_said_in_the_clis_words(files, capsys, tmp_path):
    sharp = str(files / "sharp.tif")
    assert (
        main([*_common(files, "--sharp", sharp), "--resume", str(tmp_path / "nosuchdir"), "-o", str(files / "x.pt")])
        == 2
    )
    err = capsys.readouterr().err
    assert "Pass the --checkpoint-dir folder of an earlier run" in err and "leave --resume out" in err
    assert "--checkpoint-dir / --checkpoint-dir" not in err
    assert main([*_common(files, "--sharp", sharp), "--axes", "ZYX", "-o", str(files / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "error: --axes 'ZYX' has 3 letters" in err and "--axes: --axes" not in err
    assert main([*_common(files, "--sharp", sharp), "--validation", "0.9", "-o", str(files / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert (
        "Use a smaller fraction (such as 0.1), --validation 0, or pass a separate validation image (--validation-sharp"
    ) in err
    assert "--validation 0.9 holds out so much of each 96 x 96 image plane" in err
    assert main([*_common(files, "--sharp", sharp), "--noise-photons", "-3", "-o", str(files / "x.pt")]) == 2
    assert "error: --noise-photons must be > 0 (fewer photons = noisier), got -3.0." in capsys.readouterr().err
    tifffile.imwrite(files / "nan.tif", np.full((96, 96), np.nan, np.float32))
    assert main([*_common(files, "--sharp", str(files / "nan.tif")), "-o", str(files / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite values" in err and "np.nan_to_num" not in err and "(e.g. with 0" in err


def test_with_flags_writes_keyword_values_as_flags():
    from napari_deblurgan.cli import with_flags

    flags = {
        "device": "--device",
        "validation": "--validation",
        "perceptual_weights": "--perceptual-weights",
        "axes": "--axes",
        "resume": "--resume",
        "sharp": "--sharp",
        "steps": "--steps",
    }
    assert with_flags("CUDA is not available here; use device='cpu'", flags).endswith("use --device cpu")
    assert with_flags("Use validation=0, or", flags) == "Use --validation 0, or"
    assert with_flags("or pass perceptual_weights=<file>)", flags) == "or pass --perceptual-weights FILE)"
    assert with_flags("pass axes with the right channel axis", flags) == "pass --axes with the right channel axis"
    assert with_flags("Leave steps unset to finish", flags) == "Leave --steps unset to finish"
    assert with_flags("Start a new run (without resume).", flags) == "Start a new run (without --resume)."
    assert with_flags("or pass sharp images alone", flags) == "or pass sharp images alone"  # prose
    assert with_flags("split; lower `validation`.", flags) == "split; lower --validation."  # in backticks


def test_the_api_still_says_what_the_cli_rewords():
    """CLI_PHRASES match the API's words: a message reworded in the API must be reworded for the CLI too."""
    import re

    from napari_deblurgan.blur.synthesize import not_finite_message
    from napari_deblurgan.cli import CLI_PHRASES
    from napari_deblurgan.errors import InputError

    said = []
    for call in (
        lambda: __import__("napari_deblurgan").deblur(np.full((32, 32), np.nan, np.float32), device="cpu"),
        lambda: __import__("napari_deblurgan.data.pairs", fromlist=["PairedData"]).PairedData(
            np.ones((64, 64), np.float32),
            np.ones((64, 64), np.float32) * 2,
            patch_size=32,
            validation=0.9,
            check_alignment=False,
        ),
        lambda: __import__("napari_deblurgan.data.pairs", fromlist=["resolve_noise"]).resolve_noise({"photons": -3}),
        lambda: __import__("napari_deblurgan").deblur(np.ones((1, 128), np.float32), device="cpu"),
        lambda: __import__("napari_deblurgan").deblur(np.ones((32, 32), bool), device="cpu"),
        lambda: __import__("napari_deblurgan").finetune(np.ones((64, 64), np.float32), ema=1.5, steps=1),
    ):
        with pytest.raises(InputError) as info:
            call()
        said.append(str(info.value))
    said.append(not_finite_message("image"))
    from _helpers import tiny_unet

    with pytest.warns(UserWarning, match="channels 3 is ignored") as notices:  # a notice, not an error
        __import__("napari_deblurgan").finetune(
            np.random.default_rng(0).random((64, 64), np.float32),
            model=tiny_unet(),
            channels=3,
            steps=1,
            patch_size=32,
            batch_size=2,
            validation=None,
            device="cpu",
            preset="content",
        )
    said += [str(w.message) for w in notices]
    for pattern, _, _ in CLI_PHRASES:
        assert any(re.search(pattern, text) for text in said), pattern


def test_resume_names_another_starting_model(files, capsys):
    from napari_deblurgan.model_file import create_model

    other = create_model("unet_lite", 1, seed=1, width=4, depth=2, n_blocks=1)
    other.save(files / "other.pt")
    argv = _common(files, "--sharp", str(files / "sharp.tif"))
    assert main([*argv, "--steps", "2", "--checkpoint-dir", str(files / "ck"), "-o", str(files / "a.pt"), "-q"]) == 0
    resume = [a for a in argv if a not in ("--model", str(files / "tiny.pt"))]
    assert (
        main(
            [
                *resume,
                "--model",
                str(files / "other.pt"),
                "--steps",
                "3",
                "--resume",
                str(files / "ck"),
                "-o",
                str(files / "b.pt"),
                "-q",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"note: Resuming keeps the checkpoint's recipe: --model {str(files / 'tiny.pt')!r} (not " in err
    assert main([*resume, "--steps", "4", "--resume", str(files / "ck"), "-o", str(files / "c.pt"), "-q"]) == 0
    assert "Resuming keeps" not in capsys.readouterr().err  # no --model: the run's own


def test_steps_below_one_and_a_model_file_not_ending_in_pt_are_refused(files, capsys):
    argv = _common(files, "--sharp", str(files / "sharp.tif"))
    for steps in ("0", "-3"):
        assert main([*argv, "--steps", steps, "-o", str(files / "x.pt")]) == 2
        assert f"--steps {steps} would train nothing" in capsys.readouterr().err
    for name in ("model.tif", "model"):
        assert main([*argv, "--steps", "1", "-o", str(files / name)]) == 2
        err = capsys.readouterr().err
        assert "finetune writes a model file, which ends in .pt" in err and "model.pt" in err
        assert not (files / name).exists()
    # resuming with --steps = the checkpoint's step is the documented way to get the model a checkpoint keeps
    assert main([*argv, "--steps", "2", "--checkpoint-dir", str(files / "ck"), "-o", str(files / "a.pt"), "-q"]) == 0
    assert main([*argv, "--steps", "2", "--resume", str(files / "ck"), "-o", str(files / "kept.pt"), "-q"]) == 0
    assert load_model(files / "kept.pt").metadata["training"]["steps_done"] == 2


def test_a_separate_validation_image_and_perceptual_weights(files, capsys):
    pair = ["--blurred", str(files / "blurred.tif"), "--sharp", str(files / "sharp.tif")]
    _, vs = _pair_files(files, "val", (64, 64), 5)
    vb = vs.replace("_s.tif", "_b.tif")
    out = files / "v.pt"
    assert (
        main(
            [
                *_common(files, *pair),
                "--validation-blurred",
                vb,
                "--validation-sharp",
                vs,
                "--steps",
                "1",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert load_model(out).metadata["training"]["validation"].endswith("from 1 planes")
    assert main([*_common(files, *pair), "--validation-sharp", vs, "-o", str(files / "x.pt")]) == 2
    assert "add --validation-blurred" in capsys.readouterr().err
    assert (
        main([*_common(files, *pair), "--validation-blurred", vs, "--validation-sharp", vs, "-o", str(files / "x.pt")])
        == 2
    )
    assert "validation pair's blurred and sharp images are identical" in capsys.readouterr().err
    assert (
        main(
            [
                *_common(files, "--sharp", str(files / "sharp.tif")),
                "--validation-sharp",
                vs,
                "--steps",
                "1",
                "-o",
                str(files / "syn.pt"),
                "-q",
            ]
        )
        == 0
    )  # sharp-only: blur synthesised on the validation image
    argv = [*_common(files, *pair), "--preset", "default", "--perceptual-weights", str(files / "vgg.pth")]
    assert main([*argv, "-o", str(files / "x.pt")]) == 2
    assert f"--perceptual-weights file {str(files / 'vgg.pth')!r} does not exist" in capsys.readouterr().err


def test_info_prints_the_training_provenance_readably(capsys):
    training = load_model("default").metadata["training"]
    assert main(["info", "default"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) < 200  # it was one line of 3,000 characters
    assert "training:" in lines and any(line.split() == ["preset:", training["preset"]] for line in lines)
    # the data's shapes once, summarised: not in the data description and again as a list
    shape = training["data_shapes"][0]
    assert out.count(f"{shape[0]} x {shape[1]}") == 1 and str(tuple(shape)) not in out and str(shape) not in out
    assert f"data_shapes:         {len(training['data_shapes'])} images: " in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_closed_and_called_again_starts_afresh(monkeypatch):
    """The demo's one bar follows two images: in a log the second one's lines show too (a one-tile image's only
    line is at 100 %, the decile the first ended on), timed from its own start."""
    from napari_deblurgan.cli import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    log = io.StringIO()
    bar = progress.ProgressBar("deblurring", stream=log)
    for total, seconds in ((2, 100.0), (1, 3.0)):  # two images, one bar
        now[0] += seconds
        for done in range(1, total + 1):
            bar(done, total)
        bar.close()
    lines = [line.split()[-4:-1] for line in log.getvalue().splitlines() if "100%" in line]
    assert lines == [["100%", "2/2", "1:40"], ["100%", "1/1", "0:03"]]


def test_a_warning_while_a_progress_line_is_drawn_starts_on_a_line_of_its_own():
    from napari_deblurgan.cli import show_warning
    from napari_deblurgan.cli.progress import ProgressBar

    term = _Terminal()
    bar = ProgressBar("deblur", stream=term, min_interval=0)
    bar(1, 4)
    show_warning(UserWarning("overlap 4 px is low"), UserWarning, "x.py", 1, file=term, flags={"overlap": "--overlap"})
    bar(2, 4)
    bar.close()
    text = term.getvalue()
    assert "elapsed\nwarning: --overlap 4 px is low\n\r" in text
    assert text.endswith("elapsed\n") and not text.endswith("\n\n")


def test_the_step_lines_say_which_step_the_validation_psnr_was_measured_at():
    """The last validation stays on every step line until the next one: it says its step, and "best" only of
    the validation that was the best when it was made."""
    from napari_deblurgan.cli.finetune_command import ProgressLine
    from napari_deblurgan.training import events as ev

    def step(n):
        return ev.Step(
            step=n, total_steps=10, losses={"total": 0.5, "content": 0.5}, learning_rate=1e-4, images_per_second=10.0
        )

    def validation(n, psnr, best):
        return ev.Validation(step=n, psnr=psnr, ssim=0.5, psnr_input=15.36, ssim_input=0.4, is_best=best)

    for stream in (io.StringIO(), _Terminal()):
        progress = ProgressLine(stream=stream, min_interval=0)
        progress(validation(0, 18.13, True))
        for n in range(1, 11):
            progress(step(n))
            if n == 5:
                progress(validation(5, 17.9, False))
        lines = stream.getvalue().replace("\r\033[K", "\n").splitlines()
        at = {int(line.split()[1].split("/")[0]): line for line in lines if line.startswith("step ")}
        assert at[1].endswith("| val@0 PSNR 18.13 dB (+2.77, best)") and "*" not in at[1]
        assert at[10].endswith("| val@5 PSNR 17.90 dB (+2.54)")
    quiet = io.StringIO()
    progress = ProgressLine(stream=quiet, enabled=False)
    for event in (validation(0, 18.13, True), step(1)):
        progress(event)
    assert quiet.getvalue() == ""  # -q: no progress


def test_precision_flag_reaches_the_training(files, capsys):
    argv = _common(files, "--sharp", str(files / "sharp.tif"), "--steps", "1", "-q")
    assert main([*argv, "--precision", "bfloat16", "-o", str(files / "b.pt")]) == 0
    assert load_model(files / "b.pt").metadata["training"]["precision"] == "bfloat16"
    assert main([*argv, "-o", str(files / "a.pt")]) == 0
    assert load_model(files / "a.pt").metadata["training"]["precision"] == "auto"
    capsys.readouterr()
    assert main([*argv, "--precision", "half", "-o", str(files / "h.pt")]) == 2
    assert "invalid choice: 'half'" in capsys.readouterr().err
    assert main(["finetune", "--help"]) == 0
    assert "--precision {auto,float32,bfloat16,float16}" in capsys.readouterr().out


def test_a_compressed_training_stack_is_read_a_page_at_a_time(files, capsys, monkeypatch, refuse_whole_tiff_reads):
    """A compressed stack above the lazy threshold was loaded whole for training (tifffile cannot memory-map
    it), whatever its size: training now reads its crops through a reader that decodes one page at a time."""
    from napari_deblurgan.cli import finetune_command

    sharp = np.stack([(samples.cells((96, 96), seed=s) * 4000).astype(np.uint16) for s in (2, 3, 4)])
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.5, 1.5)).astype(np.uint16)
    for name, data in (("sharp_z.tif", sharp), ("blurred_z.tif", blurred)):
        tifffile.imwrite(files / name, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    monkeypatch.setattr(finetune_command, "TRAINING_IN_MEMORY_BYTES", 100)  # far below these stacks
    keys = refuse_whole_tiff_reads()
    out = files / "z.pt"
    argv = _common(files, "--blurred", str(files / "blurred_z.tif"), "--sharp", str(files / "sharp_z.tif"))
    assert main([*argv, "--steps", "2", "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    monkeypatch.undo()
    assert keys and set(keys) <= {0, 1, 2}
    assert load_model(out).metadata["training"]["data_shapes"] == [[3, 96, 96]]


def _open_tiffs() -> list[str]:
    """The TIFF files this process holds open (file descriptors, Linux)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(".tif"):
                names.append(os.path.basename(target))
    return sorted(names)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads the process's open files (Linux)")
def test_large_training_files_read_lazily_are_closed_when_the_run_ends_or_fails(files, monkeypatch, capsys):
    """Training files above TRAINING_IN_MEMORY_BYTES are read through lazy readers that keep them open: closed
    when the run returns, and when it fails after some were opened (here: a --blurred and a --sharp file of
    different axes)."""
    from napari_deblurgan.cli import finetune_command

    sharp = np.stack([(samples.cells((96, 96), seed=s) * 4000).astype(np.uint16) for s in (2, 3, 4)])
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.5, 1.5)).astype(np.uint16)
    for name, image, axes in (("s.tif", sharp, "ZYX"), ("b.tif", blurred, "ZYX"), ("t.tif", sharp, "TYX")):
        tifffile.imwrite(files / name, image, imagej=True, metadata={"axes": axes}, compression="zlib")
    monkeypatch.setattr(finetune_command, "TRAINING_IN_MEMORY_BYTES", 100)
    opened = []
    real = finetune_command.read_image
    monkeypatch.setattr(finetune_command, "read_image", lambda *a, **k: opened.append(_open_tiffs()) or real(*a, **k))
    before = _open_tiffs()
    argv = _common(
        files,
        "--sharp",
        str(files / "s.tif"),
        "--blurred",
        str(files / "b.tif"),
        "--validation-sharp",
        str(files / "s.tif"),
        "--validation-blurred",
        str(files / "b.tif"),
    )
    assert main([*argv, "--steps", "2", "-o", str(files / "ok.pt"), "-q"]) == 0
    assert opened[-1], "the files were not read lazily"  # the earlier ones open while the last was read
    assert _open_tiffs() == before
    argv = _common(files, "--sharp", str(files / "s.tif"), str(files / "t.tif"), "--blurred", str(files / "b.tif"))
    argv += [str(files / "b.tif")]  # pair 2: a ZYX blurred file for a TYX sharp one
    assert main([*argv, "--steps", "2", "-o", str(files / "bad.pt"), "-q"]) == 2
    assert (
        "The files of pair 2 have different axes (--blurred b.tif: ZYX, --sharp t.tif: TYX)" in capsys.readouterr().err
    )
    assert _open_tiffs() == before


def test_without_validation_a_failure_before_any_trained_weights_were_kept_says_so(files, capsys, monkeypatch):
    """Without validation the model so far is the latest weights kept: a failure inside a generator update
    before the first snapshot (every 50 steps) falls back to the start, so no model is written, and the reason
    given is that one, not a validation that never ran."""
    from napari_deblurgan.training.trainer import GanStep

    raise_on_call(monkeypatch, GanStep, "_update_ema", 3, RuntimeError("CUDA error: simulated"))
    out = files / "crashed.pt"
    argv = _common(files, "--sharp", str(files / "sharp.tif"), "--steps", "20", "--validation", "0")
    assert main([*argv, "--validate-every", "100", "-o", str(out), "-q"]) == 1  # snapshots every 50 steps
    err = capsys.readouterr().err
    assert "training failed; the failure came before any trained weights were kept, so no model was written" in err
    assert "validation" not in err.split("training failed;")[1].splitlines()[0]
    assert not out.exists()


def test_a_failure_before_any_validation_scored_better_writes_no_copy_of_the_starting_model(files, capsys, monkeypatch):
    """With validation on, the model so far is the best validated one: still the starting model's weights (step
    0's) until a later validation scores better. A failure then writes no model (under the output's name it would
    pass for a finetuned one) and says where the checkpoint keeps the run."""
    from napari_deblurgan.data.pairs import BatchSource

    raise_on_call(monkeypatch, BatchSource, "next_batch", 4, RuntimeError("CUDA error: simulated"))
    out = files / "crashed.pt"
    argv = _common(files, "--sharp", str(files / "sharp.tif"), "--steps", "50", "--validate-every", "100")
    code = main([*argv, "--checkpoint-every", "2", "--checkpoint-dir", str(files / "ck"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no validation had scored better than the starting model yet, so no model was written" in err
    assert f"--resume {files / 'ck'}" in err
    assert "the model so far is saved" not in err
    assert not out.exists()


def test_files_of_different_axes_train_together_each_with_its_own(files, monkeypatch):
    """--sharp files of different axes (a 2D image and a Z stack): each is read with its own axes, as is a
    validation file; --axes still applies to every file."""
    import functools

    from napari_deblurgan.training import trainer

    stack = np.stack([(samples.cells((96, 96), seed=s) * 4000).astype(np.uint16) for s in (3, 4)])
    tifffile.imwrite(files / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    given = {}
    real = trainer.iter_finetune
    spy = functools.wraps(real)(lambda *a, **k: given.update(k) or real(*a, **k))  # keeps its signature
    monkeypatch.setattr(trainer, "iter_finetune", spy)
    argv = _common(files, "--sharp", str(files / "sharp.tif"), str(files / "stack.tif"), "--validation-sharp")
    assert main([*argv, str(files / "stack.tif"), "--steps", "1", "-o", str(files / "out.pt"), "-q"]) == 0
    assert given["axes"] == ["YX", "ZYX"] and given["validation_axes"] == "ZYX"
    argv = _common(files, "--sharp", str(files / "stack.tif"), str(files / "stack.tif"), "--axes", "TYX")
    assert main([*argv, "--steps", "1", "-o", str(files / "out2.pt"), "-q"]) == 0
    assert given["axes"] == "TYX" and given["validation_axes"] is None


def test_finetune_messages_are_said_in_the_commands_words(files, capsys):
    from PIL import Image

    photo = files / "photo.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(photo)
    out = str(files / "out.pt")
    assert main(["finetune", "--sharp", str(photo), "-o", out, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "is not a TIFF file: finetune reads TIFF only" in err and "header=" not in err, err
    sharp = ["--sharp", str(files / "sharp.tif"), "-o", out, "--steps", "2"]
    assert main([*_common(files, "--ema", "1.5"), *sharp]) == 2
    err = capsys.readouterr().err
    assert "--ema must be a decay in (0, 1) such as 0.999, or leave --ema out" in err and "None" not in err, err
    assert main([*_common(files, "--channels", "3"), *sharp]) == 0  # a file's model: --channels is ignored, said
    err = capsys.readouterr().err
    assert "--channels 3 is ignored" in err and "--channels sets the channels of a new model only (--model an" in err
    assert "model=" not in err, err


def test_the_last_line_names_the_step_of_the_best_validation(files, capsys):
    """The validation after the last step comes after that step's line, so no step line shows it: the last
    line says which step the best validation (whose weights are saved) was made at."""
    out = files / "out.pt"
    argv = [*_common(files), "--sharp", str(files / "sharp.tif"), "--blurred", str(files / "blurred.tif")]
    assert main([*argv, "-o", str(out), "--steps", "4"]) == 0
    err = capsys.readouterr().err
    best_step = load_model(out).metadata["training"]["best_step"]
    last = [line for line in err.splitlines() if line.startswith("finished at step 4")]
    assert len(last) == 1 and f"at step {best_step} (" in last[0] and "over the blurred input" in last[0], err


def test_info_summarises_the_axes_of_every_image():
    from napari_deblurgan.cli.info_command import _training_lines

    lines = _training_lines({"data_axes": ["ZYX"] * 298 + ["YX", "YXS"], "preset": "content"})
    (line,) = [line for line in lines if "data_axes" in line]
    assert line.split(":", 1)[1].strip() == "298 ZYX, 1 YX, 1 YXS" and len(line) < 100
    (single,) = [line for line in _training_lines({"data_axes": ["ZYX"]}) if "data_axes" in line]
    assert single.split(":", 1)[1].strip() == "ZYX"
    for odd in ("ZYX", []):  # hand-edited metadata: printed as it is, not dropped
        lines = _training_lines({"data_axes": odd, "data_shapes": odd})
        assert [line.split(":")[0].strip() for line in lines] == ["data_axes", "data_shapes"], lines

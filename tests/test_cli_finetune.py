"""``napari-deblurgan finetune``: pairs, synthetic blur, errors, progress line, Ctrl-C keeps the best model."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

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
    assert "step 4/4" in err and "val PSNR" in err and "dB" in err and f"wrote {out}" in err
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
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "--steps", "2", "-o", str(out), "-q",
                 "--blur-kind", "gaussian", "--blur-strength", "1", "2", "--noise-photons", "0"])
    assert code == 0
    recorded = load_model(out).metadata["training"]["synthetic_blur"]
    assert recorded == {"kinds": ["gaussian"], "kind_weights": None, "strength_px": [1.0, 2.0], "noise": None,
                        "psf_block": 1}
    bad = main([*_common(files, "--sharp", str(files / "sharp.tif")), "--steps", "2", "-o", str(files / "b.pt"),
                "-q", "--blur-strength", "1", "2", "3"])
    assert bad == 2


def test_finetune_with_a_teacher(files, capsys):
    out = files / "taught.pt"
    argv = [*_common(files, "--sharp", str(files / "sharp.tif")), "--steps", "2", "-o", str(out), "-q"]
    assert main([*argv, "--teacher", str(files / "tiny.pt"), "--teacher-weight", "0.3"]) == 0
    teacher = load_model(out).metadata["training"]["teacher"]
    assert teacher["weight"] == 0.3 and teacher["file_sha256"] == load_model(files / "tiny.pt").metadata["sha256"]
    assert main([*argv, "--force", "--teacher", str(files / "tiny.pt"), "--teacher-weight", "2"]) == 2
    assert "--teacher-weight must be a number in (0, 1]" in capsys.readouterr().err


def test_blurred_without_sharp_is_a_usage_error(files, capsys):
    code = main([*_common(files, "--blurred", str(files / "blurred.tif")), "-o", str(files / "x.pt")])
    assert code == 2 and "--sharp" in capsys.readouterr().err
    assert not (files / "x.pt").exists()


def test_existing_output_needs_force(files, capsys):
    (files / "exists.pt").write_bytes(b"")
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "-o", str(files / "exists.pt")])
    assert code == 2 and "--force" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_said_before_training(files, capsys):
    (files / "folder.pt").mkdir()
    start = time.monotonic()
    code = main([*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "100000"), "-o",
                 str(files / "folder.pt"), "--force"])
    assert code == 2 and "is a directory" in capsys.readouterr().err
    assert time.monotonic() - start < 30  # not after 100,000 steps
    code = main([*_common(files, "--sharp", str(files / "sharp.tif")), "-o", str(files / "sharp.tif"), "--force"])
    assert code == 2 and "is a training image" in capsys.readouterr().err
    assert tifffile.imread(files / "sharp.tif").ndim == 2  # still the image


def test_a_used_checkpoint_dir_needs_resume_or_force(files, capsys):
    args = [*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2"), "--checkpoint-dir",
            str(files / "ck")]
    assert main([*args, "-o", str(files / "a.pt")]) == 0
    before = (files / "ck" / "checkpoint.pt").read_bytes()
    assert main([*args, "-o", str(files / "b.pt")]) == 2
    assert "holds an earlier run's checkpoint" in capsys.readouterr().err
    assert (files / "ck" / "checkpoint.pt").read_bytes() == before and not (files / "b.pt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI prints the notice once ("note: ..."), not also as a warning
        assert main([*args, "-o", str(files / "b.pt"), "--force"]) == 0
    assert capsys.readouterr().err.count("holds the checkpoint of an earlier run") == 1


def test_mismatched_pair_is_a_usage_error(files, capsys):
    tifffile.imwrite(files / "small.tif", np.zeros((64, 64), np.uint16))
    argv = _common(files, "--blurred", str(files / "small.tif"), "--sharp", str(files / "sharp.tif"))
    code = main([*argv, "-o", str(files / "x.pt")])
    assert code == 2 and "differ in shape" in capsys.readouterr().err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_and_still_writes_the_model(files, signum, status):
    """Ctrl-C, and SIGTERM (a cluster's time limit, kill): stop after the step, save, exit 128 + signal."""
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


def test_the_model_file_may_not_be_the_checkpoint(files, capsys):
    args = [*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "2"), "--checkpoint-dir",
            str(files / "ck")]
    for out in (files / "ck" / "checkpoint.pt", files / "ck"):
        start = time.monotonic()
        assert main([*args, "-o", str(out)]) == 2
        assert "checkpoint folder or file" in capsys.readouterr().err and time.monotonic() - start < 30
    assert main([*args, "-o", str(files / "m.pt")]) == 0
    assert main([*_common(files, "--sharp", str(files / "sharp.tif"), "--steps", "3"), "--resume",
                 str(files / "ck" / "checkpoint.pt"), "-o", str(files / "ck" / "checkpoint.pt"), "--force"]) == 2


def test_a_failure_mid_run_still_saves_the_model_so_far(files, capsys, monkeypatch):
    from napari_deblurgan.data.pairs import BatchSource

    real, calls = BatchSource.next_batch, []

    def failing(self, size):
        calls.append(size)
        if len(calls) == 4:
            raise RuntimeError("the device fell off the bus")
        return real(self, size)

    monkeypatch.setattr(BatchSource, "next_batch", failing)
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
    assert main([*resume, "--resume", str(files / "a"), "--checkpoint-dir", str(files / "b"), "-o",
                 str(files / "c.pt")]) == 2
    assert "holds an earlier run's checkpoint" in capsys.readouterr().err
    assert (files / "b" / "checkpoint.pt").read_bytes() == before
    assert main([*resume, "--resume", str(files / "a"), "--checkpoint-dir", str(files / "a"), "-o",
                 str(files / "c.pt")]) == 0  # its own folder, named

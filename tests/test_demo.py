"""`napari-deblurgan demo`: the README's main job, end to end, with the shipped default model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from napari_deblurgan.cli import main


def test_demo_runs_and_writes_its_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # a log (not a terminal): each image's deblurring has its own bar, reaching 100 %
    assert [line.split("]")[1].split()[0] for line in captured.err.splitlines() if "100%" in line] == ["100%"] * 2
    assert "Richardson-Lucy" in printed and "napari-deblurgan" in printed and "clock" in printed
    results = json.loads((out / "results.json").read_text())
    pair = results["pair"]
    assert pair["napari-deblurgan"]["psnr"] > pair["blurred input"]["psnr"]
    assert pair["napari-deblurgan"]["ssim"] > pair["blurred input"]["ssim"]
    for name in ("pair_blurred.tif", "pair_deblurred.tif", "pair_richardson_lucy.tif", "clock_deblurred.tif",
                 "pair_side_by_side.png", "clock_side_by_side.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_demo_with_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["demo", "-o", str(tmp_path / "demo"), "--model", "nosuch"]) == 2
    assert main(["demo", "-o", str(tmp_path / "demo"), "--device", "nosuch"]) == 2
    assert not (tmp_path / "demo").exists()  # the inputs are checked before the folder is made


def test_demo_into_a_folder_that_holds_files_needs_force(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["demo", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_demo_self_ensemble_option(tmp_path):
    import numpy as np
    import tifffile

    from napari_deblurgan import deblur, load_model

    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")  # --force writes into a folder that holds files, and keeps them
    assert main(["demo", "-o", str(out), "--device", "cpu", "--model", "fast", "--self-ensemble", "--force"]) == 0
    assert (out / "mine.txt").read_text() == "keep me"
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["name"] == "fast" and results["model"]["self_ensemble"] is True
    blurred = tifffile.imread(out / "pair_blurred.tif")
    expected = deblur(blurred, load_model("fast"), device="cpu", self_ensemble=True)
    np.testing.assert_array_equal(tifffile.imread(out / "pair_deblurred.tif"), expected)
    assert results["pair"]["napari-deblurgan"]["psnr"] > results["pair"]["blurred input"]["psnr"]


def test_demo_into_an_existing_file_is_a_clear_error(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    assert main(["demo", "-o", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file; choose a folder name" in err and "Traceback" not in err
    assert afile.read_text() == "keep me"


def test_demo_into_a_closed_pipe_still_writes_its_results(tiny_model_file, tmp_path, monkeypatch):
    """`napari-deblurgan demo | head -3`: the reader closes the pipe after the first lines; the results folder
    is still written in full, and the exit status is 141 (the pipe closed), as for the other subcommands."""
    import io
    import sys

    class ClosedAfterFirstLine(io.StringIO):
        def write(self, text):
            if self.getvalue():
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    out = tmp_path / "demo"
    monkeypatch.setattr(sys, "stdout", ClosedAfterFirstLine())
    assert main(["demo", "-o", str(out), "--device", "cpu", "--model", str(tiny_model_file), "-q"]) == 141
    monkeypatch.undo()
    assert json.loads((out / "results.json").read_text())["pair"]
    for name in ("pair_deblurred.tif", "clock_deblurred.tif", "pair_side_by_side.png", "clock_side_by_side.png"):
        assert (out / name).stat().st_size > 0, name

"""`napari-deblurgan demo`: the README's main job, end to end, with the shipped default model."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from napari_deblurgan.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    """One run of `napari-deblurgan demo` with the default model, shared by the tests that read its results:
    (output folder, stdout, stderr)."""
    out = tmp_path_factory.mktemp("default_demo") / "demo"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "-o", str(out), "--device", "cpu"])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def test_demo_runs_and_writes_its_results(default_demo):
    out, printed, err = default_demo
    # a log (not a terminal): each image's deblurring has its own bar, reaching 100 %
    assert [line.split("]")[1].split()[0] for line in err.splitlines() if "100%" in line] == ["100%"] * 2
    assert "Richardson-Lucy" in printed and "napari-deblurgan" in printed and "clock" in printed
    results = json.loads((out / "results.json").read_text())
    pair = results["pair"]
    assert pair["napari-deblurgan"]["psnr"] > pair["blurred input"]["psnr"]
    assert pair["napari-deblurgan"]["ssim"] > pair["blurred input"]["ssim"]
    clock = results["clock"]
    said = "(lower: the model smoothed this photo's noise and texture more than it sharpened it" in printed
    assert said == (clock["sharpness after"] < clock["sharpness before"])  # a lower score is explained
    for name in (
        "pair_blurred.tif",
        "pair_deblurred.tif",
        "pair_richardson_lucy.tif",
        "clock_deblurred.tif",
        "pair_side_by_side.png",
        "clock_side_by_side.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def _numbers(pattern: str, path: str) -> tuple[float, ...]:
    """The numbers that ``pattern``'s groups capture in the doc at ``path`` (any whitespace, line breaks
    included, matches a single space in ``pattern``)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    found = re.search(re.escape(pattern).replace(r"\ ", r"\s+").replace("NUM", r"([-+]?\d+\.\d+)"), text)
    assert found, f"{path} no longer says: {pattern!r} (update this test with the doc)"
    return tuple(float(g) for g in found.groups())


def test_the_docs_quote_what_the_demo_measures(default_demo):
    """The demo numbers quoted in README.md, docs/quickstart-napari.md and docs/model-card.md are what the demo
    computes now: PSNR within 0.02 dB, the rest within half a unit of their last quoted digit (plus rounding)."""
    out, _, _ = default_demo
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["name"] == "default"
    pair, clock = results["pair"], results["clock"]
    blurred, model = pair["blurred input"], pair["napari-deblurgan"]
    rl = pair["Richardson-Lucy (30 it., true PSF)"]
    db, ssim2, ssim3 = 0.02, 0.0051, 0.00051  # PSNR; SSIM quoted with 2 / 3 decimals
    quoted = [  # (doc, pattern, [(measured, tolerance) or None for a number the demo does not compute])
        (
            "README.md",
            "the demo pair goes from NUM to NUM dB PSNR with the model, while Richardson-Lucy *given the "
            "true PSF* reaches NUM dB",
            [(blurred["psnr"], db), (model["psnr"], db), (rl["psnr"], db)],
        ),
        (
            "README.md",
            "its sharpness score goes down, NUM -> NUM)",
            [(clock["sharpness before"], 0.000051), (clock["sharpness after"], 0.000051)],
        ),
        (
            "docs/quickstart-napari.md",
            "on the whole sample Richardson-Lucy (30 iterations) NUM dB and Wiener "
            "(balance 0.01) NUM dB against the model's NUM dB (the blurred input: NUM dB)",
            [(rl["psnr"], db), None, (model["psnr"], db), (blurred["psnr"], db)],
        ),  # Wiener: not in the demo
        (
            "docs/quickstart-napari.md",
            "while the model leads in SSIM (NUM against NUM and",
            [(model["ssim"], ssim2), (rl["ssim"], ssim2)],
        ),
        ("docs/model-card.md", "| demo pair (README) | NUM -> NUM dB |", [(blurred["psnr"], db), (model["psnr"], db)]),
        (
            "docs/model-card.md",
            "it gains **+NUM dB** PSNR (NUM -> NUM dB) and +NUM SSIM (NUM -> NUM;",
            [
                (model["psnr"] - blurred["psnr"], db),
                (blurred["psnr"], db),
                (model["psnr"], db),
                (model["ssim"] - blurred["ssim"], ssim2),
                (blurred["ssim"], ssim3),
                (model["ssim"], ssim3),
            ],
        ),
        (
            "docs/model-card.md",
            "Richardson-Lucy with 30 iterations *and the true PSF* gains +NUM dB (NUM dB, SSIM NUM;",
            [(rl["psnr"] - blurred["psnr"], 0.051), (rl["psnr"], db), (rl["ssim"], ssim3)],
        ),
    ]
    for doc, pattern, measured in quoted:
        numbers = _numbers(pattern, doc)
        assert len(numbers) == len(measured), (doc, pattern)
        for number, m in zip(numbers, measured, strict=True):
            if m is not None:
                assert number == pytest.approx(m[0], abs=m[1]), (doc, pattern, numbers, m)


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
    # the model card quotes this run's PSNR (`fast` column of the self_ensemble row)
    quoted = _numbers(
        "| with `self_ensemble=True` (8x slower: NUM / NUM MP/s) | -NUM dB vs the oracle, SSIM NUM, "
        "demo NUM dB | -NUM dB, SSIM NUM, demo NUM dB |",
        "docs/model-card.md",
    )
    assert quoted[-1] == pytest.approx(results["pair"]["napari-deblurgan"]["psnr"], abs=0.02), quoted


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

"""The Python examples of docs/scripting.md and docs/training.md run as written, as the README's does
(tests/test_readme.py), so the documented API cannot drift from the real one unnoticed.

Only sizes are cut (training steps, crop and batch sizes), each by an exact string replacement asserted to occur
exactly once, so an edit of the docs makes these tests fail loudly instead of silently running long or testing
something else. Files land in ``tmp_path`` (the home folder, the working folder and the torch cache are moved
there). Each test then checks that its example did what its text says, not only that it ran.

* scripting.md: its five blocks are napari-console code; they run in order in one namespace (later blocks use
  ``model``, ``Path``, ``runs`` ... of earlier ones) with a real viewer in ``viewer`` and the plugin's sample
  data opened as a user does (File > Open Sample > DeblurGAN).
* training.md: the quick start reads the user's TIFFs: it runs on sample TIFFs written under the names it reads.
  The preset comparison script (the one behind the table; minutes on a CPU) runs with its steps cut, its result
  file redirected to ``tmp_path``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

# one torch thread: several times faster on a shared 2-core machine (conftest); the examples' results are the same
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCRIPTING = DOCS / "scripting.md"
TRAINING = DOCS / "training.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def cut(code: str, *replacements: tuple[str, str]) -> str:
    """``code`` with each ``old`` replaced by ``new``; each ``old`` must occur exactly once."""
    for old, new in replacements:
        assert code.count(old) == 1, (
            f"{old!r} occurs {code.count(old)} times in the example, not once: update this test"
        )
        code = code.replace(old, new)
    return code


def run_block(code: str, path: Path, namespace: dict) -> None:
    exec(compile(code, str(path), "exec"), namespace)


def move_home(tmp_path: Path, monkeypatch) -> Path:
    """``tmp_path`` as the home folder (``~/.napari-deblurgan/...``), the working folder and the torch cache (as
    on a fresh machine: no VGG-19 weights, the documented fallback)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: cls(tmp_path)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("NAPARI_DEBLURGAN_ALLOW_DOWNLOAD", raising=False)
    return tmp_path


@pytest.mark.viewer
def test_scripting_examples_run_in_naparis_console(make_napari_viewer, qtbot, tmp_path, monkeypatch, capsys):
    import napari_deblurgan as ndg

    blocks = python_blocks(SCRIPTING)
    assert len(blocks) == 6, "scripting.md has six Python examples; update this test if that changes"
    stack_block, cancel_block, finetune_block, worker_block, compare_block, save_block = blocks

    viewer = make_napari_viewer(strict_qt="raise")  # first: napari keeps its themed icons under the home folder
    home = move_home(tmp_path, monkeypatch)
    viewer.open_sample("napari-deblurgan", "blurred_sharp_pair")  # File > Open Sample > DeblurGAN
    viewer.open_sample("napari-deblurgan", "blurred_stack_3d")
    namespace: dict = {"viewer": viewer}  # what napari's console has
    stack = viewer.layers["stack blurred"]
    cells = viewer.layers["cells blurred"]
    truth = viewer.layers["cells sharp (ground truth)"].data
    capsys.readouterr()

    # "Deblur a stack": a layer with the input's shape, dtype and placement, and the progress printed
    run_block(stack_block, SCRIPTING, namespace)
    out = capsys.readouterr().out
    added = viewer.layers["stack deblurred"]
    assert added.data.shape == stack.data.shape and added.data.dtype == stack.data.dtype
    np.testing.assert_array_equal(added.scale, stack.scale)
    np.testing.assert_array_equal(added.translate, stack.translate)
    assert tuple(added.contrast_limits) == tuple(stack.contrast_limits)
    progress = re.findall(r"(\d+)/(\d+)", out)
    assert progress and progress[-1][0] == progress[-1][1], out

    # the cancellable deblur in a worker: stopped at once, it returns None and adds nothing ...
    before, start, after = cancel_block.partition("worker.start()\n")
    assert start and after.strip().endswith("stop.set()"), "the cancel example changed: update this test"
    run_block(before, SCRIPTING, namespace)
    with qtbot.waitSignal(namespace["worker"].returned, timeout=120_000) as returned:
        run_block(start + after, SCRIPTING, namespace)
    qtbot.wait(50)
    assert returned.args == [None] and "stack deblurred (worker)" not in viewer.layers
    # ... and left to run, it adds the result
    run_block(before, SCRIPTING, namespace)
    with qtbot.waitSignal(namespace["worker"].returned, timeout=120_000):
        run_block(start, SCRIPTING, namespace)
    qtbot.wait(50)
    np.testing.assert_array_equal(viewer.layers["stack deblurred (worker)"].data, added.data)
    capsys.readouterr()

    # "Finetune on a pair, watching the events": only the step count is cut (the crops, and so the documented
    # validation PSNR of the blurred input, are the example's)
    code = cut(finetune_block, ("steps=500,", "steps=1,"))
    with pytest.warns(UserWarning, match="Perceptual loss"):  # no VGG-19 weights offline: the documented fallback
        run_block(code, SCRIPTING, namespace)
    out = capsys.readouterr().out
    printed = re.findall(r"^step (\d+): PSNR (-?\d+\.\d\d) dB \(input (-?\d+\.\d\d) dB\)$", out, flags=re.MULTILINE)
    assert [step for step, _, _ in printed] == ["0", "1"], out  # the starting model's validation, the last step's
    documented = re.search(
        r"blurred input scores (\d+\.\d\d) dB here and (\d+\.\d\d) dB in compare\(\)", finetune_block
    )
    assert documented, "the comment on the validation PSNR's scale changed: update this test"
    assert {psnr_input for _, _, psnr_input in printed} == {documented[1]}, out
    model = namespace["model"]
    assert isinstance(model, ndg.DeblurModel) and model.metadata["training"]["steps_done"] == 1
    assert (home / ".napari-deblurgan" / "runs" / "cells").is_dir()  # its checkpoint_dir, under the home folder
    assert (home / ".napari-deblurgan" / "runs" / "cells" / "checkpoint.pt").is_file()

    # the worker: Qt's event loop delivers its signals; the block ends with run.stop() (run at once here)
    code = cut(worker_block, ("steps=500,", "steps=2,"))
    before, start, after = code.partition("worker.start()\n")
    assert start, "the worker example no longer calls worker.start(): update this test"
    run_block(before, SCRIPTING, namespace)
    worker = namespace["worker"]
    with (
        qtbot.waitSignal(worker.finished, timeout=120_000),
        qtbot.waitSignal(worker.returned, timeout=120_000) as returned,
    ):
        run_block(start + after, SCRIPTING, namespace)
    qtbot.wait(50)  # any event still queued for the doc's own slots
    out = capsys.readouterr().out
    worker_model = returned.args[0]
    assert isinstance(worker_model, ndg.DeblurModel) and worker_model is not model
    assert worker_model is namespace["run"].model  # "return run.model  # the best model"
    done = worker_model.metadata["training"]["steps_done"]
    assert 0 <= done <= 2 and namespace["run"].finished is not None  # stopped early: "returned gets the model"
    assert f"done: {done} steps" in out, out
    assert "Started" in out.splitlines()[0] and "Finished" in out, out  # the yielded events, printed
    assert (home / ".napari-deblurgan" / "runs" / "cells-worker" / "checkpoint.pt").is_file()  # "checkpoints"

    # "Compare with classical deconvolution": the model of the finetuning block; the table, its CSV, three layers
    run_block(compare_block, SCRIPTING, namespace)
    out = capsys.readouterr().out
    table = namespace["table"]
    names = ["blurred", "Richardson-Lucy", "Wiener", "model"]
    assert [row["name"] for row in table.rows] == names
    assert all(row["psnr"] is not None and row["ssim"] is not None for row in table.rows)
    assert str(table) in out  # print(table)
    csv = (home / "comparison.csv").read_text().splitlines()
    assert len(csv) == 1 + len(names) and [line.split(",")[0] for line in csv[1:]] == names
    for name in names[1:]:
        layer = viewer.layers[f"cells {name}"]
        assert layer.data.shape == cells.data.shape
        assert tuple(layer.contrast_limits) == tuple(cells.contrast_limits)
    assert namespace["restored"].dtype == cells.data.dtype
    # the comment's figures for the blurred input: with the ground truth's range, and with the dtype's (default)
    blurred_row = table.rows[0]
    figures = re.search(
        r"the blurred input: PSNR (\d+\.\d\d) vs (\d+\.\d\d) dB, SSIM (\d\.\d+) vs (\d\.\d+)", compare_block
    )
    assert figures, "the comment on data_range changed: update this test"
    assert documented[2] == figures[2]  # the finetuning block's compare() figure is this one
    assert f"{blurred_row['psnr']:.2f}" == figures[2] and f"{blurred_row['ssim']:.3f}" == figures[4]
    dtype_range = ndg.compare({"blurred": cells.data}, truth).rows[0]
    assert f"{dtype_range['psnr']:.2f}" == figures[1] and f"{dtype_range['ssim']:.3f}" == figures[3]

    # "Save and reload the model": the file, a model equal to the saved one, the same restoration
    run_block(save_block, SCRIPTING, namespace)
    saved = home / ".napari-deblurgan" / "models" / "cells.pt"
    assert namespace["path"] == saved and saved.is_file()
    again = namespace["again"]
    assert isinstance(again, ndg.DeblurModel)
    assert again.metadata["training"]["steps_done"] == model.metadata["training"]["steps_done"]
    reloaded = viewer.layers["with the saved model"].data
    np.testing.assert_array_equal(reloaded, namespace["restored"])  # same weights, same result


SMALL = "patch_size=32, batch_size=2"  # the quick start's crops and batches, cut (its defaults: 128 and 8)


def test_training_quick_start_runs_on_tiffs(tmp_path, monkeypatch, capsys):
    import tifffile

    import napari_deblurgan as nd
    from napari_deblurgan import samples

    blocks = python_blocks(TRAINING)
    assert len(blocks) == 2, "training.md has two Python examples; update this test if that changes"
    home = move_home(tmp_path, monkeypatch)
    pair, stack = samples.blurred_sharp_pair(seed=0), samples.blurred_stack_3d(seed=0)
    tifffile.imwrite(home / "blurred.tif", pair["blurred"])  # the files the example reads
    tifffile.imwrite(home / "sharp.tif", pair["sharp"])
    tifffile.imwrite(home / "sharp_stack.tif", stack["sharp"][:4], photometric="minisblack")
    code = cut(
        blocks[0],
        ("steps=1000,", f"steps=1, {SMALL},"),
        ('blur_kind="mixed", steps=2000)', f'blur_kind="mixed", steps=1, {SMALL})'),
        (
            'blur_kind="motion:2,defocus,gaussian", steps=2000)',
            f'blur_kind="motion:2,defocus,gaussian", steps=1, {SMALL})',
        ),
        ('steps=5000, checkpoint_dir="runs/a"', f'steps=3, {SMALL}, checkpoint_dir="runs/a"'),
        ("event.step == 1000:", "event.step == 1:"),
        ('steps=5000, resume="runs/a"', f'steps=3, {SMALL}, resume="runs/a"'),
    )
    namespace: dict = {}
    with pytest.warns(UserWarning, match="Perceptual loss"):  # no VGG-19 weights offline: the documented fallback
        run_block(code, TRAINING, namespace)
    out = capsys.readouterr().out

    saved = nd.load_model(home / "my-model.pt")  # the first model, trained on the pair, saved
    assert saved.metadata["training"]["steps_done"] == 1 and saved.metadata["training"]["synthetic_blur"] is None
    # the events printed, the run stopped after step 1 of 3 with its checkpoint, the best model on the CPU
    events = re.findall(r"^(\w+)\(", out, flags=re.MULTILINE)
    assert (
        events[0] == "Started" and events[-1] == "Finished" and {"Step", "Validation", "CheckpointSaved"} <= set(events)
    )
    run = namespace["run"]
    assert run.finished.stopped and run.finished.step == 1, run.finished
    assert (home / "runs" / "a" / "checkpoint.pt").is_file()
    best = namespace["best"]
    assert isinstance(best, nd.DeblurModel) and not best.generator.training
    assert {p.device.type for p in best.generator.parameters()} == {"cpu"}
    # resumed: it went on from step 1 to the end, the run's own settings kept (its EMA)
    model = namespace["model"]
    assert model.metadata["training"]["steps_done"] == 3 and model.metadata["training"]["ema"] == 0.999


@pytest.fixture
def one_torch_thread_kept():
    """The preset script sets torch's threads to 1 for the process: give the old number back afterwards."""
    import torch

    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_training_preset_comparison_script_runs(tmp_path, monkeypatch, capsys, one_torch_thread_kept):
    """The script behind training.md's preset table (minutes on a CPU): its API calls, the events it reads and the
    file it writes, with every training cut to 2 steps. Its figures are not checked, only what the table's columns
    assume (all presets start from one base model and are validated on the same crops)."""
    import json
    import warnings

    move_home(tmp_path, monkeypatch)
    out_file = tmp_path / "presets_cmp.json"
    code = cut(
        python_blocks(TRAINING)[1],
        ("steps=300,", "steps=2,"),
        ("steps=100,", "steps=2,"),
        ('"/tmp/presets_cmp.json"', repr(str(out_file))),
    )
    with warnings.catch_warnings():  # the script sets warnings.simplefilter("ignore") for the process
        run_block(code, TRAINING, {"__name__": "__main__"})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["base", "content", "default", "deblurgan"], lines
    res = json.loads(out_file.read_text())
    assert list(res) == ["content", "default", "deblurgan"]
    for preset in res.values():
        assert len(preset["curve"]) == 2  # validated at step 0 and at the last step
        assert preset["psnr_best"] == max(preset["curve"]) and preset["psnr_start"] == preset["curve"][0]
    assert len({preset["psnr_input"] for preset in res.values()}) == 1  # the same validation crops
    assert len({preset["psnr_start"] for preset in res.values()}) == 1  # the same base model

"""The scripts that make and measure the shipped models: they run end to end at a tiny scale.

``scripts/train_default_model.py`` is how the shipped weights are reproduced and ``scripts/evaluate_default_model.py``
is where the model card's numbers come from; a change that broke either would otherwise only show in a
session that needs them for hours. Both are driven through their ``main(argv)`` with tiny models and
steps, and their outputs are checked against what they claim (checksums, resume, the summary's arithmetic).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan.model_file import REGISTRY_PATH  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def scripts_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the scripts import each other from their folder
    yield
    for name in ("train_default_model", "evaluate_default_model", "gpu_sweep"):
        sys.modules.pop(name, None)


@pytest.fixture
def train_script(scripts_on_path, tmp_path, monkeypatch):
    """``train_default_model`` with its weights folder redirected to a copy in ``tmp_path``."""
    import train_default_model

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(train_default_model.WEIGHTS / "registry.json", weights / "registry.json")
    monkeypatch.setattr(train_default_model, "WEIGHTS", weights)
    return train_default_model


TINY_TRAINING = [
    "--steps", "4", "--validate-every", "2", "--batch-size", "2", "--patch-size", "32", "--extra-scenes", "1",
    "--arch-args", '{"width": 4, "depth": 2, "n_blocks": 1}', "--seed", "3",
]  # fmt: skip


def test_train_script_writes_installs_and_resumes(train_script, tmp_path, capsys):
    from napari_deblurgan import load_model

    checkpoints = tmp_path / "run"
    argv = [*TINY_TRAINING, "--checkpoint-dir", str(checkpoints), "--keep", "last", "--context-padding", "0",
            "--name", "tiny", "--install"]  # fmt: skip
    assert train_script.main(argv) == 0
    out = capsys.readouterr().out
    assert "validation @ 4" in out and "installed" in out

    model = load_model(checkpoints / "model.pt")
    assert model.name == "tiny" and model.context_padding == 0
    assert model.architecture_args["width"] == 4
    training = model.metadata["training"]
    assert training["steps_done"] == 4 and training["kept"] == "live weights of the last step (4)"
    assert set(training["best_validation"]) == {"step", "source", "psnr"}
    assert training["script"] == "scripts/train_default_model.py" and "cores" in training["hardware"]

    # --install: the file in the weights folder is the run's file, and the registry holds its checksum
    installed = (train_script.WEIGHTS / "tiny.pt").read_bytes()
    assert installed == (checkpoints / "model.pt").read_bytes()
    entry = json.loads((train_script.WEIGHTS / "registry.json").read_text())["models"]["tiny"]
    assert entry["file"] == "tiny.pt" and entry["sha256"] == hashlib.sha256(installed).hexdigest()
    assert "width 4" in entry["description"]
    # the package's own registry is untouched
    assert "tiny" not in json.loads(REGISTRY_PATH.read_text())["models"]

    # Running the same command again resumes the finished run: no new steps, the same weights.
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    assert train_script.main([*argv[:-1]]) == 0  # without --install this time
    assert "validation @ 2" not in capsys.readouterr().out  # no step was trained again
    again = load_model(checkpoints / "model.pt")
    assert again.metadata["training"]["steps_done"] == 4
    for key, value in again.generator.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_train_script_distils_from_a_teacher(train_script, tmp_path):
    """``--init M --teacher M`` (how stage 9 was made): the teacher is recorded, and it changes the training."""
    from napari_deblurgan import create_model, load_model

    start = create_model("unet_fast", channels=1, seed=5, width=4, depth=2, n_blocks=1)
    start.save(tmp_path / "start.pt")
    common = [*TINY_TRAINING, "--init", str(tmp_path / "start.pt"), "--keep", "last"]
    assert train_script.main([*common, "--teacher", str(tmp_path / "start.pt"), "--teacher-weight", "0.5",
                              "--checkpoint-dir", str(tmp_path / "taught")]) == 0  # fmt: skip
    assert train_script.main([*common, "--checkpoint-dir", str(tmp_path / "plain")]) == 0
    taught, plain = load_model(tmp_path / "taught" / "model.pt"), load_model(tmp_path / "plain" / "model.pt")
    teacher = taught.metadata["training"]["teacher"]
    assert teacher["file_sha256"] == load_model(tmp_path / "start.pt").metadata["sha256"] and teacher["weight"] == 0.5
    assert plain.metadata["training"]["teacher"] is None
    assert any(
        not torch.equal(a, b)
        for a, b in zip(taught.generator.state_dict().values(), plain.generator.state_dict().values(), strict=True)
    )


def test_train_script_grows_a_context_window_and_resumes_it(train_script, tmp_path, capsys):
    """``--init M --grow '{"context_window": 3}'`` (the prepared GPU sweep's jobs): the grown architecture is
    written, and re-running the command resumes the grown model from its checkpoint instead of failing."""
    from napari_deblurgan import create_model, load_model

    start = create_model("unet_fast", channels=1, seed=5, width=4, depth=2, n_blocks=1)
    start.save(tmp_path / "start.pt")
    argv = [*TINY_TRAINING, "--init", str(tmp_path / "start.pt"), "--grow", '{"context_window": 3}', "--keep",
            "last", "--checkpoint-dir", str(tmp_path / "run")]  # fmt: skip
    assert train_script.main(argv) == 0
    grown = load_model(tmp_path / "run" / "model.pt")
    assert grown.architecture_args["context_window"] == 3
    assert grown.metadata["grown_from"]["sha256"] == load_model(tmp_path / "start.pt").metadata["sha256"]
    capsys.readouterr()
    longer = [*argv, "--steps", "6"]  # the later --steps wins: two more steps from the checkpoint
    assert train_script.main(longer) == 0
    assert "validation @ 2" not in capsys.readouterr().out  # resumed at step 4, not retrained
    resumed = load_model(tmp_path / "run" / "model.pt")
    assert resumed.architecture_args["context_window"] == 3
    assert resumed.metadata["training"]["steps_done"] == 6


@pytest.mark.parametrize("bad", [["--name", "../evil"], ["--context-padding", "-1"]])
def test_train_script_refuses_bad_options_before_training(train_script, tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        train_script.main([*TINY_TRAINING, "--checkpoint-dir", str(tmp_path / "run"), *bad])
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err
    assert not any((tmp_path / "run").glob("checkpoint*"))


def test_evaluate_script_rows_and_summaries_agree(scripts_on_path, tiny_model_file, tmp_path, capsys):
    import evaluate_default_model as script

    out_json = tmp_path / "eval.json"
    argv = ["--model", str(tiny_model_file), "--kernels", "1", "--json", str(out_json), "--pictures", str(tmp_path),
            "--bands"]  # fmt: skip
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    images = ["camera", "cell", "synthetic_cells"]
    assert [(r["image"], r["kind"]) for r in rows] == [(i, k) for i in images for k in script.KINDS]
    assert len(list(tmp_path.glob("model-card-*.png"))) == 9

    for row in rows:  # the oracle is the better classical method at its best parameter, on the same case
        assert script.oracle_psnr(row) == max(row["wiener"]["psnr"], row["richardson_lucy"]["psnr"])
        assert 2 <= row["richardson_lucy"]["iterations"] <= 30
        assert row["wiener"]["psnr"] > row["input"]["psnr"]  # given the true PSF it must help here
    overall = result["summary"]["all"]
    gaps = [r["model"]["psnr"] - script.oracle_psnr(r) for r in rows]
    assert overall["cases"] == 9
    assert overall["gain_over_oracle_db"] == pytest.approx(np.mean(gaps))
    per_image = result["per_image"]
    assert list(per_image) == images
    for name, s in per_image.items():
        mine = [g for g, r in zip(gaps, rows, strict=True) if r["image"] == name]
        assert s["cases"] == 3 and s["gain_over_oracle_db"] == pytest.approx(np.mean(mine))
        assert s["cases_beating_oracle"] == sum(g > 0 for g in mine)
        assert f"| {name} | 3 | " in printed
    # the per-image means average back to the overall one (three cases each)
    assert np.mean([s["gain_over_oracle_db"] for s in per_image.values()]) == pytest.approx(
        overall["gain_over_oracle_db"]
    )
    # one setting per method for all cases: the setting with the best mean, never better than the per-case best
    one = result["one_setting"]
    assert list(one) == [*script.KINDS, "all"] and one["all"]["cases"] == 9
    for method, setting in (("wiener", "balance"), ("richardson_lucy", "iterations")):
        scans = np.array([r[method]["scan"]["psnr"] for r in rows])
        assert one["all"][method]["psnr"] == pytest.approx(scans.mean(0).max())
        assert rows[0][method]["scan"][setting][int(scans.mean(0).argmax())] == one["all"][method][setting]
        assert [max(r[method]["scan"]["psnr"]) for r in rows] == [r[method]["psnr"] for r in rows]
        assert one["all"][method]["psnr"] <= np.mean([r[method]["psnr"] for r in rows])
    better = max(one["all"]["wiener"]["psnr"], one["all"]["richardson_lucy"]["psnr"])
    assert one["all"]["gain_over_better_method_db"] == pytest.approx(overall["model"]["psnr"] - better)
    assert one["all"]["gain_over_better_per_case_db"] >= overall["gain_over_oracle_db"]
    assert "One setting per method" in printed and "| all | 9 | " in printed
    # ... and its SSIMs: each method's result at that one setting, computed again here from the cases' seeds
    from train_default_model import evaluation_crops

    from napari_deblurgan.blur.synthesize import synthesize_blur_with_params
    from napari_deblurgan.comparison import richardson_lucy, ssim, wiener

    crops = evaluation_crops()
    for kind, entry in one.items():
        mine = [r for r in rows if kind in ("all", r["kind"])]
        scores = {"wiener": [], "richardson_lucy": []}
        for row in mine:
            blurred, psf, _ = synthesize_blur_with_params(
                crops[row["image"]], row["kind"], noise="realistic", seed=row["seed"]
            )
            blurred = blurred.astype(np.float32)
            sharp = crops[row["image"]]
            scores["wiener"].append(ssim(sharp, wiener(blurred, psf, balance=entry["wiener"]["balance"]), 1.0))
            rl = richardson_lucy(blurred, psf, iterations=entry["richardson_lucy"]["iterations"])
            scores["richardson_lucy"].append(ssim(sharp, rl, 1.0))
        for method in scores:
            assert entry[method]["ssim"] == pytest.approx(np.mean(scores[method]), abs=1e-6), (kind, method)
        assert entry["better_method_ssim"] == entry[entry["better_method"]]["ssim"]
        assert entry["model_ssim"] == pytest.approx(np.mean([r["model"]["ssim"] for r in mine]))
        settings = (("wiener", "balance"), ("richardson_lucy", "iterations"))
        index = {m: mine[0][m]["scan"][s].index(entry[m][s]) for m, s in settings}
        wiener_wins = [
            r_["wiener"]["scan"]["psnr"][index["wiener"]]
            >= r_["richardson_lucy"]["scan"]["psnr"][index["richardson_lucy"]]
            for r_ in mine
        ]
        per_case = np.where(wiener_wins, scores["wiener"], scores["richardson_lucy"])
        assert entry["better_per_case_ssim"] == pytest.approx(np.mean(per_case), abs=1e-6), kind
    assert f"| {one['all']['model_ssim']:.3f} / {one['all']['better_method_ssim']:.3f} / " in printed

    # --bands: each error split by frequency adds up to the MSE behind its PSNR (Parseval), the oracle's is the
    # better method's, and the bands' excesses add up to the model's error over the oracle's, case by case
    for row in rows:
        for which, method_psnr in (("input", row["input"]["psnr"]), ("model", row["model"]["psnr"]),
                                   ("oracle", script.oracle_psnr(row))):  # fmt: skip
            assert len(row["bands"][which]) == len(script.BAND_EDGES) - 1
            assert sum(row["bands"][which]) == pytest.approx(10 ** (-method_psnr / 10), rel=1e-4), which
    for name, selected in (("all", rows), ("motion", [r for r in rows if r["kind"] == "motion"]),
                           ("cell", [r for r in rows if r["image"] == "cell"])):  # fmt: skip
        summary = result["bands"][name]
        ratios = [10 ** ((script.oracle_psnr(r) - r["model"]["psnr"]) / 10) - 1 for r in selected]
        assert summary["cases"] == len(selected)
        assert summary["total"] == pytest.approx(np.mean(ratios), rel=1e-3, abs=1e-6)
        assert sum(summary["excess"]) == pytest.approx(summary["total"])
        assert sum(summary["model_share"]) == pytest.approx(1.0)
    assert "| 0.04-0.08 |" in printed and f"| all | 9 | {100 * result['bands']['all']['excess'][0]:+.0f} % (" in printed


def test_evaluate_script_error_bands_put_a_wave_in_its_band(scripts_on_path):
    import evaluate_default_model as script

    sharp = np.zeros((64, 64))
    y, x = np.mgrid[:64, :64]
    for cycles in (1, 5, 12):  # 1/64, 5/64 and 12/64 cycles per pixel along a diagonal-free axis
        wave = np.cos(2 * np.pi * cycles * x / 64)
        bands = script.error_by_band(sharp, wave)
        expected = int(np.digitize(cycles / 64, script.BAND_EDGES[1:-1]))
        assert bands[expected] == pytest.approx(np.mean(wave**2)) and sum(bands) == pytest.approx(np.mean(wave**2))
    diagonal = np.cos(2 * np.pi * 8 * (x + y) / 64)  # radius 8 * sqrt(2) / 64 = 0.177: the 0.16-0.32 band
    assert script.error_by_band(sharp, diagonal)[5] == pytest.approx(0.5)


def test_train_script_can_store_half_precision_weights(train_script, tmp_path):
    from napari_deblurgan import load_model

    out = tmp_path / "half.pt"
    argv = [*TINY_TRAINING, "--steps", "2", "--checkpoint-dir", str(tmp_path / "run"), "--output", str(out),
            "--weights-dtype", "float16"]  # fmt: skip
    assert train_script.main(argv) == 0
    half = load_model(out)
    assert half.metadata["weights_dtype"] == "float16"
    for name, value in half.generator.state_dict().items():  # loaded as float32, each value a float16 one
        if value.is_floating_point():
            assert torch.equal(value, value.half().float()), name


@pytest.mark.parametrize("jobs_file", sorted((SCRIPTS / "gpu_sweeps").glob("*.json")), ids=lambda p: p.stem)
def test_prepared_gpu_sweeps_parse(scripts_on_path, jobs_file):
    """A typo in a prepared job would cost a lent GPU's few minutes: every job's arguments must parse, what
    it grows must be growable, and a prepared job's crops must fit the training images."""
    import gpu_sweep
    import train_default_model

    from napari_deblurgan.models.growth import GROWABLE

    jobs = gpu_sweep.load_jobs(str(jobs_file))
    assert jobs
    parser = train_default_model.build_parser()
    for job in jobs:
        args = parser.parse_args([*job["args"], "--minutes", "1", "--checkpoint-dir", "unused"])
        assert set(args.grow or {}) <= set(GROWABLE), job["name"]
        assert args.grow is None or args.init is not None, job["name"]
        if jobs_file.name.startswith("next-"):  # dated files record runs as they were made
            # the training data's smallest image would silently cut a larger crop (data/pairs.py)
            assert args.patch_size <= _smallest_training_side(train_default_model), job["name"]


_SMALLEST_SIDE: list[int] = []


def _smallest_training_side(train_default_model) -> int:
    """The shorter side of the smallest bundled training image (the generated scenes are larger)."""
    if not _SMALLEST_SIDE:
        images = train_default_model.training_images(extra_scenes=0)
        _SMALLEST_SIDE.append(min(min(image.shape[-2:]) for image in images))
    return _SMALLEST_SIDE[0]


def test_train_script_does_not_install_a_run_stopped_early(train_script, tmp_path, capsys):
    """A run stopped by --minutes (or Ctrl-C) writes its model, but --install must not replace the shipped
    weights with it: only a run that finished all its steps is installed."""
    registry = (train_script.WEIGHTS / "registry.json").read_text()
    argv = [*TINY_TRAINING, "--steps", "100000", "--minutes", "0.0001", "--checkpoint-dir", str(tmp_path / "run"),
            "--name", "tiny", "--install"]  # fmt: skip
    assert train_script.main(argv) == 0  # a --minutes stop is cooperative
    out = capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").exists() and "stopped early" in out
    assert "not installed" in out and "rerun the same command" in out
    assert not (train_script.WEIGHTS / "tiny.pt").exists()
    assert (train_script.WEIGHTS / "registry.json").read_text() == registry


def test_train_script_resumes_a_fitted_run_with_its_own_total(train_script, tmp_path, capsys):
    """--fit-steps sets the total once; re-running the same command resumes with that total, not --steps."""
    from napari_deblurgan import load_model

    argv = [*TINY_TRAINING, "--minutes", "0.01", "--fit-steps", "--checkpoint-dir", str(tmp_path / "run")]
    assert train_script.main(argv) == 0
    fitted = load_model(tmp_path / "run" / "model.pt").metadata["training"]["steps"]
    assert fitted != 4 and "steps fit the" in capsys.readouterr().out
    assert train_script.main(argv) == 0  # the re-run: no probe, the fitted total kept
    assert load_model(tmp_path / "run" / "model.pt").metadata["training"]["steps"] == fitted
    assert "resuming the fitted run" in capsys.readouterr().out


def test_gpu_sweep_log_keeps_dotted_exception_lines(scripts_on_path):
    import gpu_sweep

    log = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\n'
    for last in ("napari_deblurgan.errors.InputError: bad", "torch.OutOfMemoryError: CUDA out of memory",
                 "ValueError: x", "KeyboardInterrupt"):  # fmt: skip
        assert last in gpu_sweep.summarize(log + last), last
    assert "    boom()" not in gpu_sweep.summarize(log)


def test_gpu_sweep_without_cuda_says_so_before_any_job(scripts_on_path, tmp_path, capsys):
    import gpu_sweep

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    jobs = '[{"name": "a", "args": []}]'
    assert gpu_sweep.main(["--jobs", jobs, "--minutes", "1", "--out", str(tmp_path)]) != 0
    assert "no CUDA device" in (tmp_path / "sweep.log").read_text()
    assert "started a" not in capsys.readouterr().out


_FAKE_JOB = """
import signal, sys, time
def stop(*_):
    print("saved fake.pt", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN if "--stubborn" in sys.argv else stop)
print("step 1/9", flush=True)
time.sleep(60)
"""


def test_gpu_sweep_stops_an_overrunning_job_with_sigint_before_killing_it(scripts_on_path, tmp_path, monkeypatch):
    """Past budget + grace a job first gets the cooperative stop (SIGINT: the training script saves its model);
    only one that still runs is killed, and sweep.log says which."""
    import gpu_sweep

    fake = tmp_path / "fake.py"
    fake.write_text(_FAKE_JOB)
    monkeypatch.setattr(gpu_sweep, "SCRIPT", fake)
    jobs = '[{"name": "polite", "args": []}, {"name": "stubborn", "args": ["--stubborn"]}]'
    out = tmp_path / "out"
    argv = ["--jobs", jobs, "--minutes", "0.001", "--grace", "1.5", "--device", "cpu", "--out", str(out)]
    code = gpu_sweep.main(argv)
    assert code == 1  # the killed one
    log = (out / "sweep.log").read_text()
    polite, stubborn = log.split("## polite")[1].split("## stubborn")
    assert "(exit 0)" in polite and "stopped (SIGINT)" in polite and "saved fake.pt" in polite
    assert "killed (SIGKILL)" in stubborn


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (["--part-mib", "0"], "--part-mib"),
        (["--part-mib", "-2"], "--part-mib"),
        (["--jobs", "[]"], "non-empty"),
        (["--jobs", '[{"args": []}]'], '"name"'),
        (["--jobs", "no/such/jobs.json"], "does not exist"),
        (["--jobs", "[" + " " * 300 + "{oops}]"], "not valid JSON"),
    ],
)
def test_gpu_sweep_refuses_bad_arguments_before_any_job(scripts_on_path, tmp_path, bad, says, capsys):
    import gpu_sweep

    argv = ["--jobs", '[{"name": "a"}]', "--minutes", "1", "--device", "cpu", "--out", str(tmp_path / "o"), *bad]
    with pytest.raises(SystemExit) as exc:
        gpu_sweep.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_gpu_sweep_reads_long_inline_jobs(scripts_on_path):
    import gpu_sweep

    jobs = [{"name": f"job{i}", "args": ["--batch-size", "2", "--patch-size", "32"]} for i in range(8)]
    assert gpu_sweep.load_jobs(json.dumps(jobs)) == jobs  # longer than a file name may be


def test_gpu_sweep_parts_join_in_order_with_the_documented_glob(scripts_on_path, tmp_path):
    import gpu_sweep

    data = bytes(range(256)) * 5
    model = tmp_path / "m.pt"
    model.write_bytes(data)
    parts = gpu_sweep.split_file(model, 100)  # 13 parts: part10 would sort before part2 without padding
    assert len(parts) == 13 and not model.exists()
    assert b"".join(p.read_bytes() for p in sorted(tmp_path.glob("m.pt.part*"))) == data  # cat m.pt.part*

"""The benchmark scripts run end to end (tiny sizes): their numbers are measured elsewhere, but they must not rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_inference_times_a_shipped_model_with_and_without_self_ensemble(tmp_path, capsys):
    bench = _load("bench_inference")
    out = tmp_path / "speed.json"
    assert (
        bench.main(
            ["--model", "fast", "--self-ensemble", "--size", "96", "--repeats", "1", "--no-cuda", "--json", str(out)]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["architecture"], r["self_ensemble"]) for r in rows] == [("fast", False), ("fast +self-ensemble", True)]
    assert rows[1]["gmac_per_mp"] == pytest.approx(8 * rows[0]["gmac_per_mp"])
    assert all(r["seconds"] > 0 and r["mp_per_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "fast +self-ensemble" in printed and "x RL" in printed
    for r in rows:  # each case against the Richardson-Lucy runs alternated with it
        assert len(r["rl_seconds"]) == 1 and r["ratio_to_rl"] == pytest.approx(r["rl_seconds"][0] / r["seconds"])


def test_the_anchor_alternates_with_the_case_it_is_compared_with():
    bench = _load("bench_inference")
    calls: list[str] = []
    first, second = bench.time_alternately(lambda: calls.append("rl"), lambda: calls.append("model"), 3)
    assert calls == ["rl", "model"] * 4  # a warm-up of each, then alternating
    assert len(first) == len(second) == 3


def test_bench_memory_shows_why_a_case_failed(tmp_path, capsys):
    bench = _load("bench_memory")
    assert bench.main(["--model", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert "failed (exit" in err and "missing.pt" in err  # the child's error, not only its exit status


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        ("bench_inference", ["--repeats", "0"], "--repeats"),
        ("bench_inference", ["--size", "0"], "--size"),
        ("bench_inference", ["--model", "fast", "--model", "no_such_model"], "no_such_model"),
        ("bench_data", ["--repeats", "0"], "--repeats"),
        ("bench_data", ["--rounds", "-1"], "--rounds"),
        ("bench_train", ["--repeats", "0"], "--repeats"),
        ("bench_train", ["--size", "0"], "--size"),
        ("bench_train", ["--batch-size", "0"], "--batch-size"),
        ("bench_tiff_reads", ["--side", "0"], "--side"),
        ("bench_tiff_reads", ["--side", "64", "--crop", "65"], "--crop"),
        ("bench_training_reads", ["--pages", "0"], "--pages"),
        ("bench_training_reads", ["--margin", "-1"], "--margin"),
        ("bench_training_reads", ["--side", "64", "--patch", "64", "--margin", "1"], "--side"),
    ],
)
def test_benchmarks_refuse_bad_arguments_before_any_work(name, bad, says, monkeypatch, capsys):
    bench = _load(name)
    monkeypatch.setattr("sys.argv", [name, *bad])  # bench_train reads sys.argv
    with pytest.raises(SystemExit) as exc:
        bench.main(bad) if name != "bench_train" else bench.main()
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert says in captured.err and not captured.out  # nothing timed first


def test_bench_data_without_cuda_says_so_first(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    with pytest.raises(SystemExit):
        _load("bench_data").main(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("kernels", ["0", "-2"])
def test_evaluate_script_refuses_no_kernels(kernels, capsys):
    spec = importlib.util.spec_from_file_location(
        "evaluate_default_model", BENCHMARKS.parent / "scripts" / "evaluate_default_model.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exc:
        script.main(["--kernels", kernels])
    assert exc.value.code == 2 and "--kernels" in capsys.readouterr().err


def test_bench_tiff_reads_compares_whole_page_and_strip_reads(tmp_path, capsys):
    bench = _load("bench_tiff_reads")
    out = tmp_path / "reads.json"
    argv = ["--side", "512", "--crop", "40", "--crops", "3", "--rounds", "2", "--strip-repeats", "1"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["strips_per_page"] == 2  # tifffile's default strips: ~256 KiB, 256 rows of 512 uint16
    assert [len(v) for v in report["crops_per_s"].values()] == [2, 2]
    assert report["ratio"] == pytest.approx(
        report["median_crops_per_s"]["strips"] / report["median_crops_per_s"]["whole page"]
    )
    assert "ratio" in capsys.readouterr().out


def test_bench_training_reads_compares_the_two_cache_rules(tmp_path, capsys):
    bench = _load("bench_training_reads")
    out = tmp_path / "training_reads.json"
    argv = ["--side", "256", "--pages", "3", "--patch", "32", "--margin", "4", "--batches", "1", "--rounds", "2"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["batches"] == {"one batch": 1, "read ahead": 32}  # BatchSource's: 32 at most
    for mode in ("one batch", "read ahead"):
        assert [len(v) for v in report["crops_per_s"][mode].values()] == [2, 2]
        medians = report["median_crops_per_s"][mode]
        assert report["ratio"][mode] == pytest.approx(medians["expected cost"] / medians["keep what fits"])
    assert "ratio" in capsys.readouterr().out

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
    assert bench.main(["--model", "fast", "--self-ensemble", "--size", "96", "--repeats", "1", "--no-cuda",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["architecture"], r["self_ensemble"]) for r in rows] == [("fast", False), ("fast +self-ensemble", True)]
    assert rows[1]["gmac_per_mp"] == pytest.approx(8 * rows[0]["gmac_per_mp"])
    assert all(r["seconds"] > 0 and r["mp_per_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "fast +self-ensemble" in printed and "x RL" in printed


def test_bench_memory_shows_why_a_case_failed(tmp_path, capsys):
    bench = _load("bench_memory")
    assert bench.main(["--model", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert "failed (exit" in err and "missing.pt" in err  # the child's error, not only its exit status

"""Several training runs of ``train_default_model.py`` at once on one lent GPU, in one call of the device tool.

A lent GPU comes for about 15 minutes a session, one command of at most 10 minutes, and our small generators
leave most of an H100 idle (their steps are bound by Python and by reading crops on the CPU, and the machine has
16 cores): running a few candidate recipes side by side costs little more than running one. Each job gets its
share of the CPU threads, fits its learning-rate schedule into the same wall-time budget (``--fit-steps``),
and writes its kept model to ``--out``.

Only small files come back from the device tool (at most 8 files of at most 16 MiB each, 64 MiB together), so
a model file larger than ``--part-mib`` is written in numbered parts (``name.pt.part00``, ``.part01``...): join
them with ``cat name.pt.part* > name.pt``. One log, ``sweep.log``, holds the machine, each job's command and
the lines of its log that matter (fitted steps, validations, notices, every 20th progress line, the result).

    python3 scripts/gpu_sweep.py --minutes 8 --out "$OUT" --jobs scripts/gpu_sweeps/2026-11-26-h100-capacity.json

``--jobs`` is a JSON list (a file, or the text itself) of ``{"name": ..., "args": [...]}``: extra arguments
of ``train_default_model.py`` for that job, e.g. ``["--init", "default", "--grow", "{\\"width\\": 48}"]``.
A job that starts from a model file under ``runs/`` (ignored by git) needs that file carried along (the
device tool's ``carry``); a split file is joined first (``cat runs/x.pt.part* > runs/x.pt``).
``--run-tests`` first runs the tests of the GPU code paths there (the lent machine has pytest but no napari)
and puts their summary at the top of ``sweep.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "train_default_model.py"
#: Log lines kept in ``sweep.log`` besides every 20th progress line.
_KEPT = re.compile(
    r"^(fit-steps|validation|notice|saved|installed|not installed|stopped|Traceback|\s+File "
    r"|[\w.]*(Error|Exception|Interrupt)\b)"  # also dotted names: torch.OutOfMemoryError, ...errors.InputError
)


def machine_description() -> str:
    lines = []
    try:
        lines.append(
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError) as exc:
        lines.append(f"no nvidia-smi ({exc})")
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    lines.append(f"torch {torch.__version__}, {name}, {os.cpu_count()} CPU cores, python {sys.version.split()[0]}")
    return "\n".join(lines)


#: Tests whose code paths differ on a GPU (device-side noise, autocast precision, the data pipeline).
GPU_TESTS = (
    "tests/test_cuda_paths.py",
    "tests/test_torch_blur.py",
    "tests/test_data_pairs.py",
    "tests/test_training.py",
)


def run_gpu_tests(env: dict[str, str], timeout: float = 180.0) -> str:
    """Run :data:`GPU_TESTS` here; the last lines of pytest's report."""
    root = SCRIPT.parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TESTS]
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return f"tests (exit {done.returncode}):\n" + "\n".join(lines[-12:])
    except subprocess.TimeoutExpired:
        return f"tests: stopped after {timeout:.0f} s"


def load_jobs(text: str) -> list[dict]:
    """The jobs of ``--jobs``: JSON text (starting with ``[`` or ``{``) or the path of a file holding it.
    Raises ValueError with a one-line reason."""
    if text.lstrip().startswith(("[", "{")):
        source, raw = "the --jobs text", text
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"the jobs file {text} does not exist (or give the JSON list itself)")
        source, raw = str(path), path.read_text()
    try:
        jobs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(jobs, list) or not jobs:
        raise ValueError(f'{source} must be a non-empty JSON list of {{"name": ..., "args": [...]}}')
    for i, job in enumerate(jobs):
        if not isinstance(job, dict) or "name" not in job:
            raise ValueError(f'job {i} in {source} has no "name" key: {job!r}')
        if not isinstance(job.get("args", []), list) or not all(isinstance(a, str) for a in job.get("args", [])):
            raise ValueError(f'job {job["name"]!r}: "args" must be a list of strings')
    names = [job["name"] for job in jobs]
    if len(set(names)) != len(names) or not all(
        isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names
    ):
        raise ValueError(f"job names must be unique and plain (letters, digits, . _ -): {names}")
    return jobs


def _positive_float(text: str) -> float:
    value = float(text)
    if not value * 2**20 >= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, not {text}")
    return value


def split_file(path: Path, part_bytes: int) -> list[Path]:
    """Replace ``path`` by numbered parts of at most ``part_bytes`` (unchanged when it is small enough), numbered
    with leading zeros so that the shell's sorted ``name.pt.part*`` joins them in order."""
    data = path.read_bytes()
    if len(data) <= part_bytes:
        return [path]
    parts = []
    digits = max(2, len(str((len(data) - 1) // part_bytes)))  # zero-padded: `cat name.pt.part*` sorts them right
    for i in range(0, len(data), part_bytes):
        part = path.with_name(f"{path.name}.part{i // part_bytes:0{digits}d}")
        part.write_bytes(data[i : i + part_bytes])
        parts.append(part)
    path.unlink()
    return parts


def summarize(log_text: str) -> list[str]:
    lines = log_text.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    every = max(1, len(progress) // 20)
    kept_progress = set(progress[::every] + progress[-1:])
    return [line for line in lines if _KEPT.match(line) or line in kept_progress]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", required=True, help="JSON list of {name, args}, or a file holding it")
    parser.add_argument("--minutes", type=float, required=True, help="each job's budget (its schedule is fitted)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--part-mib", type=_positive_float, default=15.0, help="split model files above this size")
    parser.add_argument(
        "--grace",
        type=float,
        default=90.0,
        help="seconds past the budget before a job is stopped (SIGINT: it saves its model; killed if it still runs "
        "a third of this later, at most 30 s)",
    )
    parser.add_argument("--run-tests", action="store_true", help="run the GPU code paths' tests first")
    args = parser.parse_args(argv)

    try:
        jobs = load_jobs(args.jobs)
    except ValueError as exc:
        parser.error(f"--jobs: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    header = machine_description()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # before the jobs, not after each has failed on its own
            text = (
                f"{header}\nno CUDA device here for --device {args.device}: no job started "
                "(--device cpu runs them on the CPU)\n"
            )
            (args.out / "sweep.log").write_text(text)
            print(text, end="", flush=True)
            return 1
    threads = max(1, (os.cpu_count() or 1) // len(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    src = str(SCRIPT.parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.run_tests:
        header += "\n" + run_gpu_tests(env)
        print(header, flush=True)

    running = []
    for job in jobs:
        log = Path(f"/tmp/gpu-sweep-{job['name']}.log")
        command = [
            sys.executable, str(SCRIPT), "--device", args.device, "--minutes", str(args.minutes), "--fit-steps",
            "--checkpoint-dir", f"/tmp/gpu-sweep-{job['name']}-{os.getpid()}",  # fresh: never resume an old run
            "--output", str(args.out / f"{job['name']}.pt"), *job.get("args", []),
        ]  # fmt: skip
        handle = log.open("w")
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        running.append((job, command, log, handle, process))
        print(f"started {job['name']}: {' '.join(command[1:])}", flush=True)

    deadline = time.monotonic() + 60 * args.minutes + args.grace
    overrun = []
    for job, _command, _log, _handle, process in running:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            overrun.append((job, process))
    # Past the budget and grace: first the training script's cooperative stop (SIGINT, as Ctrl-C: it saves its
    # model), and only a job that still runs a short while later is killed (its work then only in its checkpoints).
    stop_grace = min(30.0, args.grace / 3)
    notes: dict[str, str] = {}
    for _job, process in overrun:
        process.send_signal(signal.SIGINT)
    stop_deadline = time.monotonic() + stop_grace
    for job, process in overrun:
        try:
            process.wait(timeout=max(0.1, stop_deadline - time.monotonic()))
            notes[job["name"]] = f"stopped (SIGINT) after the budget and {args.grace:.0f} s of grace"
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            notes[job["name"]] = (
                f"killed (SIGKILL) after the budget, {args.grace:.0f} s of grace and {stop_grace:.0f} s more after a "
                "SIGINT: no model written; its last checkpoint stayed on the machine"
            )
        print(f"{job['name']}: {notes[job['name']]}", flush=True)
    for *_, handle, _process in running:
        handle.close()

    report = [header, ""]
    for job, command, log, _handle, process in running:
        report.append(f"## {job['name']} (exit {process.returncode}): {' '.join(command[1:])}")
        if job["name"] in notes:
            report.append(notes[job["name"]])
        report.extend(summarize(log.read_text(errors="replace")))
        model = args.out / f"{job['name']}.pt"
        if model.exists():
            parts = split_file(model, int(args.part_mib * 2**20))
            report.append("files: " + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in parts))
        report.append("")
    text = "\n".join(report)
    (args.out / "sweep.log").write_text(text)
    print(text, flush=True)
    return 0 if all(p.returncode == 0 for *_, p in running) else 1


if __name__ == "__main__":
    sys.exit(main())

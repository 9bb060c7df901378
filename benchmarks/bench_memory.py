"""Inference memory: the peak resident memory ``deblur()`` adds, against the size of the image.

Why: whole-image inference that runs out of memory is one of the reference code's traps. ``deblur()`` works
plane by plane and tile by tile, so its extra memory should follow the size of one YX plane and one tile
batch, not the size of the stack. Each case runs in a fresh Python process (peak RSS is a high-water mark
that never goes down): the model is loaded and warmed up on a small image first, then the case runs, and
the increase of the peak over that baseline is reported with the ratios that matter - to the input array and
to one plane in float32.

    python benchmarks/bench_memory.py [--model default] [--json results.json]

Numbers depend on the machine's allocator and torch build; the ratios are the portable part.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

#: name -> (shape, axes, dask): a plane that fits one tile, a plane that needs several, a stack of planes,
#: and the same stack as a dask array (one plane per chunk) computed into a NumPy array
CASES = {
    "2D 1024x1024": ((1024, 1024), "YX", False),
    "2D 4096x4096": ((4096, 4096), "YX", False),
    "ZYX 32x1024x1024": ((32, 1024, 1024), "ZYX", False),
    "dask ZYX 32x1024^2": ((32, 1024, 1024), "ZYX", True),
}


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def child(case: str, model_name: str) -> dict:
    """Run one case in this process and return its measurements."""
    import numpy as np
    import torch

    from napari_deblurgan import deblur, load_model

    shape, axes, lazy = CASES[case]
    model = load_model(model_name)
    rng = np.random.default_rng(0)
    deblur(rng.integers(0, 4000, (64, 64), dtype=np.uint16), model, device="cpu")  # warm-up: kernels, allocator
    image = rng.integers(0, 4000, shape, dtype=np.uint16)
    baseline = _peak_rss_bytes()
    t0 = time.perf_counter()
    if lazy:
        import dask.array as da

        out = np.asarray(deblur(da.from_array(image, chunks=(1, *shape[1:])), model, axes=axes, device="cpu"))
    else:
        out = deblur(image, model, axes=axes, device="cpu")
    seconds = time.perf_counter() - t0
    peak = _peak_rss_bytes()
    plane_f32 = 4 * shape[-1] * shape[-2]
    return {
        "case": case,
        "shape": list(shape),
        "input_mb": image.nbytes / 1e6,
        "output_mb": out.nbytes / 1e6,
        "plane_float32_mb": plane_f32 / 1e6,
        "peak_increase_mb": (peak - baseline) / 1e6,
        "increase_over_input": (peak - baseline) / image.nbytes,
        "increase_over_plane_float32": (peak - baseline) / plane_f32,
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model file or shipped name")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.model)))
        return 0

    rows = []
    for case in CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--child", case, "--model", args.model],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # the child's own reason, not only its exit status
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            print(f"case {case} failed (exit {done.returncode}):\n{tail}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.platform()}, python {platform.python_version()}; model {args.model!r}, CPU")
    header = ("input MB", "plane f32 MB", "peak +MB", "x input", "x plane", "s")
    widths = (9, 12, 9, 8, 8, 6)
    print(f"{'case':18s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print(
            f"{r['case']:18s} {r['input_mb']:9.1f} {r['plane_float32_mb']:12.1f} {r['peak_increase_mb']:9.1f} "
            f"{r['increase_over_input']:8.2f} {r['increase_over_plane_float32']:8.2f} {r['seconds']:6.1f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": platform.platform(), "model": args.model, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

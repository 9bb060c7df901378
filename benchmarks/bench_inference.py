"""Inference speed: megapixels per second of ``deblur()`` per architecture, against Richardson-Lucy.

For every architecture (untrained weights: speed does not depend on the weight values) this times
``napari_deblurgan.deblur`` on one 1024 x 1024 float32 image on the CPU (and on CUDA when available), and in
the same run scikit-image's ``restoration.richardson_lucy`` with 30 iterations and a Gaussian PSF on the same
image, as an anchor that is comparable across machines: its runs alternate with each CPU case's runs, so that
both are timed under the same load. It prints the machine, a table with parameters,
MACs per megapixel (models/complexity.py), seconds, MP/s and the ratio model MP/s / RL MP/s.

    python benchmarks/bench_inference.py                 # all architectures, CPU (+ CUDA if present)
    python benchmarks/bench_inference.py --arch unet_lite --repeats 5 --json results.json
    python benchmarks/bench_inference.py --model default --model runs/candidate/model.pt   # model files
    python benchmarks/bench_inference.py --model default --self-ensemble   # also deblur(self_ensemble=True)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

from napari_deblurgan.cli import positive_int


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def test_image(size: int) -> np.ndarray:
    """A natural ``size`` x ``size`` float32 image in 0..1 (skimage's bundled camera, upscaled), slightly blurred."""
    from scipy import ndimage
    from skimage import data, transform

    img = transform.resize(data.camera().astype(np.float32) / 255.0, (size, size), order=1)
    return ndimage.gaussian_filter(img, 2.0).astype(np.float32)


def gaussian_psf(sigma: float = 2.0, radius: int = 7) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    psf = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return (psf / psf.sum()).astype(np.float32)


def time_call(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_alternately(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of ``repeats`` calls each of ``first`` and ``second``, alternated (after one untimed
    warm-up call of each): both then run under the same load, so their ratio stays meaningful on a busy
    machine, where timing one before the other compared them under different loads."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=positive_int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--arch", action="append", help="architecture(s) to time (default: all)")
    parser.add_argument(
        "--model",
        action="append",
        help="model file(s) or shipped name(s) to time with their own architecture arguments (with --model "
        "alone, no untrained architectures are timed)",
    )
    parser.add_argument("--rl-iterations", type=positive_int, default=30)
    parser.add_argument("--no-cuda", action="store_true", help="time the CPU only")
    parser.add_argument(
        "--self-ensemble", action="store_true", help="also time every case with deblur(self_ensemble=True)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    import torch
    from skimage import restoration

    import napari_deblurgan as ndg
    from napari_deblurgan.models.complexity import count_parameters, macs_per_megapixel

    models = {}
    for name in args.model or []:  # every one before any timing: a mistyped second one fails at once
        try:
            models[name] = ndg.load_model(name)
        except Exception as exc:  # any reason, reported in one line
            parser.error(f"--model {name}: {exc}")
    info = machine_info()
    image = test_image(args.size)
    mp = image.size / 1e6
    psf = gaussian_psf()

    def richardson_lucy():
        return restoration.richardson_lucy(image, psf, num_iter=args.rl_iterations, clip=False)

    rl_times: list[float] = []  # every case's anchor runs, for the summary line

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    rows = []
    archs = args.arch or ([] if args.model else ndg.list_architectures())
    cases = [(arch, lambda arch=arch: ndg.create_model(arch, channels=1, seed=0)) for arch in archs]
    cases += [(str(name), lambda name=name: models.pop(name)) for name in args.model or []]
    for label, make_model in cases:
        model = make_model()
        params = count_parameters(model.generator)
        macs = macs_per_megapixel(model.generator, 1)
        for device in devices:
            model.to(device)
            for ensemble in (False, True) if args.self_ensemble else (False,):

                def run(model=model, device=device, ensemble=ensemble):
                    out = ndg.deblur(image, model, axes="YX", device=device, self_ensemble=ensemble)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    return out

                if device == "cpu":  # the anchor alternated with this case's runs: the ratio is side by side
                    anchor, times = time_alternately(richardson_lucy, run, args.repeats)
                    rl_times += anchor
                else:  # a GPU does not compete with the CPU's Richardson-Lucy: time it alone
                    anchor, times = [], time_call(run, args.repeats)
                sec = statistics.median(times)
                case_rl = statistics.median(anchor) if anchor else None
                rows.append(
                    {
                        "architecture": label + (" +self-ensemble" if ensemble else ""),
                        "device": device,
                        "self_ensemble": ensemble,
                        "parameters": params,
                        "gmac_per_mp": macs / 1e9 * (8 if ensemble else 1),
                        "seconds": sec,
                        "seconds_all": times,
                        "mp_per_s": mp / sec,
                        "rl_seconds": anchor,
                        "ratio_to_rl": None if case_rl is None else case_rl / sec,
                    }
                )
            model.to("cpu")
    if not rl_times:  # only GPU cases (there are none without a CPU row, but keep the anchor defined)
        rl_times = time_call(richardson_lucy, args.repeats)
    rl_mps = mp / statistics.median(rl_times)
    for r in rows:  # GPU rows: against the CPU anchor of the whole run
        if r["ratio_to_rl"] is None:
            r["ratio_to_rl"] = (mp / r["seconds"]) / rl_mps
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    print("machine:", json.dumps(info))
    print(f"image: {args.size} x {args.size} float32 ({mp:.3f} MP), median of {args.repeats} runs after a warm-up")
    print(
        f"anchor: skimage richardson_lucy, {args.rl_iterations} iterations, 15x15 Gaussian PSF (sigma 2), CPU: "
        f"{statistics.median(rl_times):.2f} s = {rl_mps:.3f} MP/s (median of all its runs); each CPU case's x RL "
        "uses the RL runs alternated with it"
    )
    width = max([12] + [len(r["architecture"]) for r in rows])
    header = (
        f"{'architecture':<{width}} {'device':<6} {'params':>10} {'GMAC/MP':>8} {'s/image':>8} {'MP/s':>8} {'x RL':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['architecture']:<{width}} {r['device']:<6} {r['parameters']:>10,} {r['gmac_per_mp']:>8.2f} "
            f"{r['seconds']:>8.2f} {r['mp_per_s']:>8.3f} {r['ratio_to_rl']:>7.2f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"machine": info, "size": args.size, "rl_seconds": rl_times, "rl_mp_per_s": rl_mps, "rows": rows},
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

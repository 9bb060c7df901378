"""Training-data speed: crops per second that the data pipeline delivers, side by side in one run.

On a lent H100 our training steps ran at 1,370-1,770 crops/s per process with the GPU mostly idle
(docs/training.md): the CPU side of the data pipeline was the limit. This prints, for the default model's
training images (scripts/train_default_model.py) and batches of ``--batch-size`` crops of 128 px plus the
synthetic-blur margin:

* ``sample``: ``PairedData.sample`` (crop positions, reading, normalising, flips) with the plane cache
  (the default) and without it (``cache_bytes=0``, every crop read and normalised lazily), and their ratio;
* ``next_batch``: ``BatchSource.next_batch`` on ``--device`` (crops, then PSFs, blur and noise synthesised
  on that device), synchronised, so it is the whole pipeline's rate there. On a CPU the FFT blur dominates;
  on a GPU it shows what is left on the CPU.
* ``--phases``: one batch's time split into its parts, each synchronised and timed alone for every batch
  size in ``--phase-batches``: reading the crops (``sample``), the copy to the device, the random PSFs
  (the motion walk is sequential: 255 small steps), the FFT blur, noise plus re-normalisation, and one
  ``content`` training step of the default architecture on a ready batch (forward, backward, fused Adam,
  EMA; under the precision the trainer would use); then what replaces the first three on CUDA: crops cut
  on the device (``device_crops``: the same draws, one gather) and one batch's share of PSFs made 16
  batches at once (``psfs_block``). A step costs the sum of its parts (nothing overlaps in the trainer).

    python benchmarks/bench_data.py                      # CPU
    python benchmarks/bench_data.py --device cuda --json data.json
    python benchmarks/bench_data.py --device cuda --phases --phase-batches 32 128 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from napari_deblurgan.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]


def rates(fn, batch: int, repeats: int, rounds: int) -> list[float]:
    """Crops per second of ``fn()`` (one batch) in each of ``rounds`` rounds of ``repeats`` calls."""
    fn()  # warm-up: first reads, caches, kernels
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append(batch * repeats / (time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--phases", action="store_true", help="also time a batch's parts (see above)")
    parser.add_argument("--phase-batches", type=positive_int, nargs="+", default=[32, 128])
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():  # before the work, not after it
        parser.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")

    sys.path.insert(0, str(ROOT / "scripts"))
    from train_default_model import selection_stack, smoothed_copies, training_images

    from napari_deblurgan.blur.torch_synthesis import default_psf_size
    from napari_deblurgan.data.pairs import BLUR_KINDS, GPU_PSF_BLOCK, BatchSource, PairedData

    images = training_images()
    images += smoothed_copies(images, 16)
    margin = default_psf_size(BLUR_KINDS["mixed"]) // 2
    data = {
        name: PairedData(None, images, patch_size=128, validation=(None, selection_stack()), cache_bytes=cache)
        for name, cache in (("cached", 512 * 2**20), ("lazy", 0))
    }
    results: dict[str, list[float]] = {"cached": [], "lazy": []}
    for _ in range(args.rounds):  # interleaved, so that a shared machine's drift hits both alike
        for name, d in data.items():
            rng = np.random.default_rng(0)
            results[name] += rates(lambda d=d, rng=rng: d.sample(args.batch_size, rng, margin), args.batch_size,
                                   args.repeats, 1)  # fmt: skip
    device = torch.device(args.device)
    source = BatchSource(data["cached"], device, seed=0)

    def one_batch() -> None:
        source.next_batch(args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results["next_batch"] = rates(one_batch, args.batch_size, args.repeats, args.rounds)
    medians = {k: statistics.median(v) for k, v in results.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}"
          f" crops of 128 + 2 x {margin} px")  # fmt: skip
    print(f"sample, plane cache : {medians['cached']:8.0f} crops/s")
    print(f"sample, lazy reads  : {medians['lazy']:8.0f} crops/s")
    print(f"ratio cache / lazy  : {medians['cached'] / medians['lazy']:8.2f}")
    print(f"next_batch on {args.device:5s} : {medians['next_batch']:8.0f} crops/s (crops + blur + noise there)")
    report = {"device": name, "batch": args.batch_size, "crops_per_s": results}
    if args.phases:
        report["phases_ms"] = {}
        columns = (*PHASES, *NEW_PHASES)
        print(f"{'batch':>6s} " + " ".join(f"{p:>12s}" for p in columns) + f" {'crops/s':>9s} {'new':>9s}")
        for batch in args.phase_batches:
            ms = phase_times(data["cached"], device, batch, margin, args.rounds)
            report["phases_ms"][batch] = ms
            before = sum(ms[p] for p in PHASES)
            now = before - ms["sample"] - ms["to_device"] - ms["psfs"] + sum(ms[p] for p in NEW_PHASES)
            print(f"{batch:6d} " + " ".join(f"{ms[p]:12.2f}" for p in columns) + f" {batch / before * 1e3:9.0f} "
                  f"{batch / now * 1e3:9.0f}  (ms, median of {args.rounds})")  # fmt: skip
        print(f"crops/s: one step with the parts as the trainer ran them before (CPU crops, one walk per batch);\n"
              f"new: with crops cut on {args.device} (device_crops) and PSFs made {GPU_PSF_BLOCK} batches at once "
              "(psfs_block, one batch's share), BatchSource's default on CUDA")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    return 0


PHASES = ("sample", "to_device", "psfs", "blur", "noise_norm", "train_step")
#: What replaces sample + to_device and psfs on CUDA (BatchSource's defaults there).
NEW_PHASES = ("device_crops", "psfs_block")


def phase_times(data, device, batch: int, margin: int, rounds: int) -> dict[str, float]:
    """Median milliseconds of each part of one training step's batch (:data:`PHASES`), each synchronised."""
    import torch

    from napari_deblurgan import create_model
    from napari_deblurgan.blur.torch_synthesis import add_poisson_gaussian_noise, blur_batch, random_psf_batch
    from napari_deblurgan.data.device_crops import DeviceCrops
    from napari_deblurgan.data.pairs import BLUR_KINDS, GPU_PSF_BLOCK, renormalize_like_inference
    from napari_deblurgan.training.presets import get_preset
    from napari_deblurgan.training.trainer import GanStep

    sys.path.insert(0, str(ROOT / "scripts"))
    from train_default_model import ARCH_ARGS, ARCHITECTURE

    rng = np.random.default_rng(0)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0)
    net = create_model(ARCHITECTURE, channels=1, seed=0, **ARCH_ARGS).generator.to(device)
    channels_last = device.type == "cuda"  # as the trainer runs on a GPU
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    step = GanStep(net, None, get_preset("content"), device, perceptual=None, feature_matching=False,
                   ema_decay=0.999, seed=0)  # fmt: skip

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    state: dict[str, object] = {}

    def sample() -> None:
        state["sharp_np"] = data.sample(batch, rng, margin)[1]

    def to_device() -> None:
        t = torch.from_numpy(state["sharp_np"])
        state["sharp"] = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

    def psfs() -> None:
        state["psfs"] = random_psf_batch(batch, None, BLUR_KINDS["mixed"], generator=gen, device=device)

    cropper = DeviceCrops.build(data, device, margin)
    crop_rng = np.random.default_rng(1)

    def device_crops() -> None:
        cropper.gather(*data.draw_crops(batch, crop_rng))

    def psfs_block() -> None:
        random_psf_batch(batch * GPU_PSF_BLOCK, None, BLUR_KINDS["mixed"], generator=gen, device=device)

    def blur() -> None:
        state["blurred"] = blur_batch(state["sharp"], state["psfs"])

    def noise_norm() -> None:
        photons = torch.full((batch,), 200.0)
        read = torch.full((batch,), 2.0)
        noisy = add_poisson_gaussian_noise(state["blurred"], photons, read, gen)
        m = margin
        b, s = renormalize_like_inference(noisy[..., m:-m, m:-m].contiguous(), state["sharp"][..., m:-m, m:-m])
        if channels_last:
            b, s = b.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
        state["batch"] = (b, s)

    def train_step() -> None:
        step.run(lambda _n: state["batch"], batch)

    parts = {"sample": sample, "to_device": to_device, "psfs": psfs, "blur": blur, "noise_norm": noise_norm,
             "train_step": train_step, "device_crops": device_crops, "psfs_block": psfs_block}  # fmt: skip
    times: dict[str, list[float]] = {p: [] for p in parts}
    for r in range(rounds + 1):  # the first round warms up (cuDNN autotuning, allocations)
        for name in parts:
            sync()
            t0 = time.perf_counter()
            parts[name]()
            sync()
            if r:
                times[name].append(1e3 * (time.perf_counter() - t0))
    out = {p: statistics.median(v) for p, v in times.items()}
    out["psfs_block"] /= GPU_PSF_BLOCK
    return out


if __name__ == "__main__":
    sys.exit(main())

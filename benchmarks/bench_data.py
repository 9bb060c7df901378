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

    python benchmarks/bench_data.py                      # CPU
    python benchmarks/bench_data.py --device cuda --json data.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

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
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from train_default_model import selection_stack, smoothed_copies, training_images

    from napari_deblurgan.blur.torch_synthesis import default_psf_size
    from napari_deblurgan.data.pairs import BLUR_KINDS, BatchSource, PairedData

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
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "batch": args.batch_size, "crops_per_s": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the shipped default model with the project's own engine (``napari_deblurgan.iter_finetune``).

Reproduces ``src/napari_deblurgan/weights/default.pt``: a single-channel ``unet_fast`` trained from scratch on
synthetic blur (motion, defocus and Gaussian kernels drawn fresh for every crop, mixed as ``--blur-kind`` says,
Poisson-Gaussian noise) of sharp images available offline - scikit-image's bundled images and generated
microscopy scenes - never on the held-out evaluation images (``samples.VALIDATION_IMAGES``).

``--selection unseen-scenes`` (the default) picks the kept step on eight generated scenes that nothing else
uses, so the evaluation images stay blind; ``--selection evaluation-images`` is how stages 1 and 2 ran.

Resumable: run it again with the same ``--checkpoint-dir`` and it continues where it stopped (on the GPU or
the CPU); ``--minutes`` stops it cooperatively after a wall-time budget, keeping the last good weights.

    python scripts/train_default_model.py --steps 6000 --minutes 40 --checkpoint-dir runs/default
    python scripts/train_default_model.py --steps 6000 --checkpoint-dir runs/default --install

The shipped default (stage 9) is the last of seven stages (1, 2, 3, 6, 7, 8, 9; the others were rejected
candidates), each a run of this script from the one before; docs/model-card.md ("Recipe", "Reproduce") has
every command: 24,000 steps from scratch, 6,000 steps with smoothed copies of 16 training images added
(``--init ... --smooth-copies 16``), 16,000 steps with half of the crops motion-blurred (``--blur-kind
motion:2,defocus,gaussian``), 15,000 steps with a linear residual, 4,000 with the ``content-psnr`` preset, a
network grown to width 32 and trained on a GPU (through scripts/gpu_sweep.py) then 3,000 CPU steps, and 3,000
CPU steps distilled from the previous stage's self-ensemble (``--teacher``).

``--install`` writes the kept model to the package's weights folder as ``--name`` (``default`` unless told) and
records its sha256 in ``weights/registry.json`` (atomically).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_deblurgan import iter_finetune, samples
from napari_deblurgan.atomic_files import atomic_write
from napari_deblurgan.errors import InputError
from napari_deblurgan.model_file import check_context_padding
from napari_deblurgan.training.events import Finished, Notice, Step, Validation

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_deblurgan" / "weights"

#: Architecture of the default model: chosen by measurement (docs/model-card.md).
ARCHITECTURE = "unet_fast"
ARCH_ARGS = {"width": 24, "depth": 3, "n_blocks": 2}


def training_images(extra_scenes: int = 24, brightfield_scenes: int = 0) -> list[np.ndarray]:
    """Sharp training images: bundled photos plus generated microscopy scenes - fluorescence (beads, filaments,
    nuclei, cells) and transmitted light (``samples.brightfield``) - with seeds disjoint from the validation
    and selection scenes."""
    images = list(samples.sharp_training_images("train").values())
    makers = (samples.beads, samples.filaments, samples.nuclei, samples.cells)
    for i in range(extra_scenes):
        images.append(makers[i % len(makers)]((384, 384), seed=5000 + i).astype(np.float32))
    for i in range(brightfield_scenes):
        images.append(samples.brightfield((384, 384), seed=6000 + i))
    return images


def smoothed_copies(images: list[np.ndarray], count: int, seed: int = 7) -> list[np.ndarray]:
    """Gaussian-smoothed copies (sigma 1.5-4 px) of the first ``count`` training images: sharp targets without
    fine texture, so that the model learns not to invent structure on smooth specimens (brightfield, phase)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return [ndimage.gaussian_filter(im.astype(np.float32), float(rng.uniform(1.5, 4.0))) for im in images[:count]]


def evaluation_crops(side: int = 256) -> dict[str, np.ndarray]:
    """Centre crops (float32) of the held-out evaluation images ``samples.VALIDATION_IMAGES``, by name: what
    ``evaluate_default_model.py`` scores, and what stages 1-2 picked their step on."""
    crops = {}
    for name, image in samples.sharp_training_images("validation").items():
        y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crops[name] = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side], dtype=np.float32)
    return crops


def validation_stack(side: int = 256) -> np.ndarray:
    """:func:`evaluation_crops` as a ZYX stack (blur is synthesised on it)."""
    return np.stack(list(evaluation_crops(side).values()))


#: Seeds of the generated scenes that only pick the kept step ("unseen-scenes" selection): disjoint from the
#: training scenes (5000 + i) and from the evaluation image synthetic_cells (1004).
SELECTION_SEEDS = range(9000, 9008)
#: Seeds of the generated transmitted-light scenes that join them in the "unseen-scenes-with-brightfield"
#: selection (disjoint from the brightfield training scenes, 6000 + i). Added in the seventh session, before
#: that session's GPU candidates were scored: the fluorescence scenes alone could not see a candidate lose on
#: smooth, bright specimens (docs/model-history.md, the GPU candidates).
BRIGHTFIELD_SELECTION_SEEDS = range(9100, 9104)


def selection_stack(side: int = 256, brightfield: bool = False) -> np.ndarray:
    """Generated microscopy scenes used only to choose which step's weights to keep, never trained on and
    not part of the evaluation: selecting on the evaluation images would make the evaluation less blind.
    Fluorescence scenes (beads, filaments, nuclei, cells), plus transmitted-light ones with ``brightfield``."""
    makers = (samples.beads, samples.filaments, samples.nuclei, samples.cells)
    crops = [makers[i % len(makers)]((side, side), seed=seed) for i, seed in enumerate(SELECTION_SEEDS)]
    if brightfield:
        crops += [samples.brightfield((side, side), seed=seed) for seed in BRIGHTFIELD_SELECTION_SEEDS]
    return np.stack(crops).astype(np.float32)


def validation_for(selection: str) -> np.ndarray:
    """The sharp stack that picks the kept step, for ``--selection``."""
    if selection == "evaluation-images":
        return validation_stack()
    return selection_stack(brightfield=selection == "unseen-scenes-with-brightfield")


def install(model_path: Path, name: str = "default") -> None:
    from napari_deblurgan import load_model

    model = load_model(model_path)  # from the file: --init may start from any architecture
    parameters = sum(p.numel() for p in model.generator.parameters())
    width = model.architecture_args.get("width")
    data = model_path.read_bytes()
    target = WEIGHTS / f"{name}.pt"
    with atomic_write(target) as tmp:
        tmp.write_bytes(data)
    registry_path = WEIGHTS / "registry.json"
    registry = json.loads(registry_path.read_text())
    registry.setdefault("models", {})[name] = {
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "description": f"single-channel {model.architecture}"
        + (f" width {width}" if width else "")
        + f" ({parameters / 1e6:.1f} M parameters) trained on synthetic motion/defocus/Gaussian blur with noise",
    }
    with atomic_write(registry_path) as tmp:
        tmp.write_text(json.dumps(registry, indent=2) + "\n")
    print(f"installed {target} ({len(data) / 1e6:.2f} MB), sha256 {registry['models'][name]['sha256']}")


#: Share of the measured time budget given to training steps when fitting the schedule (--fit-steps): the rest
#: covers validation passes, checkpoints and the speed's drift.
FIT_MARGIN = 0.85


def probe_steps_per_second(make_probe: Any, seconds: float = 20.0, warmup_steps: int = 10) -> float:
    """Training steps per second of a throwaway run (``make_probe()``: same data, model and device, no
    checkpoints), timed after ``warmup_steps`` (cuDNN's autotuning, first allocations) for about ``seconds``."""
    run = make_probe()
    t0 = None
    first = 0
    rate = 0.0
    for event in run:
        if not isinstance(event, Step):
            continue
        if event.step == warmup_steps:
            t0, first = time.perf_counter(), event.step
        elif t0 is not None and time.perf_counter() - t0 >= seconds:
            rate = (event.step - first) / (time.perf_counter() - t0)
            run.stop()
    del run
    gc.collect()  # the probe's model, optimizer and batches, before the real run allocates its own
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rate


def hardware(device: str) -> str:
    """The machine that trained, for the model's metadata: the GPU's name when one was used."""
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    used = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    if used.type == "cuda":
        return f"{torch.cuda.get_device_name(used)} (torch {torch.__version__}), {cpu}"
    return f"{cpu} (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the tests to check the prepared GPU sweeps' arguments)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--minutes", type=float, default=None, help="stop cooperatively after this wall time")
    parser.add_argument(
        "--fit-steps",
        action="store_true",
        help="with --minutes: time a short probe on this machine and set --steps so that the learning-rate "
        "schedule ends inside the budget (a GPU's speed is not known in advance; a schedule cut off halfway "
        "never decays)",
    )
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="content")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="the weights written: the best validation (default), or the live weights of the last step (stages "
        "7 and 8 kept the last: their runs' validation pooled the selection crops' errors, which disagreed with "
        "the rule's mean PSNR per case; it is now the mean PSNR over crops, closer to the rule, though on 16 "
        "crops, not the rule's 72 cases)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="training arithmetic: auto (bfloat16 autocast on a GPU), float32, bfloat16 (also on the CPU) or float16",
    )
    parser.add_argument("--validate-every", type=int, default=250)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("runs/default-model"))
    parser.add_argument("--output", type=Path, default=None, help="model file (default: <checkpoint-dir>/model.pt)")
    parser.add_argument(
        "--install",
        action="store_true",
        help="copy the result into the package's weights as --name, and record its sha256 in registry.json",
    )
    parser.add_argument(
        "--weights-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="how the model file stores its weights: float16 halves the file (what a lent GPU can send back in "
        "one call is limited; docs/training.md), at a rounding the evaluation then includes",
    )
    parser.add_argument(
        "--name",
        default="default",
        help="the model's name, written into the file and, with --install, its registry entry (default: "
        "default; the shipped 'fast' model is stage 7's recipe with --name fast)",
    )
    parser.add_argument(
        "--context-padding",
        type=int,
        default=None,
        help="border context written into the model file for deblur() (pixels; default: the model's own). "
        "Choose it with evaluate_default_model.py --context-padding on the selection scenes",
    )
    parser.add_argument("--architecture", default=ARCHITECTURE)
    parser.add_argument("--arch-args", type=json.loads, default=ARCH_ARGS)
    parser.add_argument("--extra-scenes", type=int, default=24, help="generated microscopy scenes to train on")
    parser.add_argument(
        "--brightfield-scenes", type=int, default=0, help="generated transmitted-light scenes to train on"
    )
    parser.add_argument("--smooth-copies", type=int, default=0, help="add smoothed copies of the first N images")
    parser.add_argument("--init", default=None, help="start from this model file or name instead of from scratch")
    parser.add_argument(
        "--grow",
        type=json.loads,
        default=None,
        help="with --init: first grow the model, e.g. '{\"n_blocks\": 4}' (same output, more capacity; "
        "models/growth.py)",
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="self-ensemble distillation: mix this model's mean output over the 8 flips/rotations of each crop "
        "into the targets (file or shipped name; stage 9 used stage 8's file, also its --init)",
    )
    parser.add_argument(
        "--teacher-weight", type=float, default=0.5, help="the teacher's share of the targets (default 0.5)"
    )
    parser.add_argument(
        "--blur-kind",
        default="mixed",
        help="synthetic blur mix, e.g. mixed or motion:2,defocus,gaussian (a kind's relative weight after ':')",
    )
    parser.add_argument(
        "--residual",
        choices=("tanh", "linear"),
        default=None,
        help="the generator's global residual; with --init the model's is switched (same weights, a warm start; "
        "models/growth.switch_residual)",
    )
    parser.add_argument(
        "--selection",
        choices=("unseen-scenes", "unseen-scenes-with-brightfield", "evaluation-images"),
        default="unseen-scenes",
        help="what picks the kept step: generated fluorescence scenes seen by nothing else (default; how stages "
        "3 and 6 were run), the same plus generated transmitted-light scenes, or the evaluation images (how "
        "stages 1 and 2 of the shipped model were run)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before hours of training, not at the end
        check_context_padding(args.context_padding)
    except InputError as exc:
        parser.error(f"--context-padding: {exc}")
    if not args.name.isidentifier():  # it becomes a file name in the package and a name users type
        parser.error(f"--name must be a plain identifier such as default or fast, not {args.name!r}")

    from napari_deblurgan import create_model, load_model

    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = args.checkpoint_dir if any(args.checkpoint_dir.glob("checkpoint*")) else None
    if args.init is not None:
        model = load_model(args.init)
        if args.grow and resume is None:  # a resumed run restores the grown weights from its checkpoint
            from napari_deblurgan.models.growth import grow_model

            model = grow_model(model, seed=args.seed, **args.grow)
        if args.residual and resume is None:
            from napari_deblurgan.models.growth import switch_residual

            model = switch_residual(model, args.residual)
    elif args.grow:
        parser.error("--grow needs --init (the model to grow)")
    else:
        arch_args = {**args.arch_args, **({"residual": args.residual} if args.residual else {})}
        model = create_model(args.architecture, channels=1, seed=args.seed, **arch_args)
    images = training_images(args.extra_scenes, args.brightfield_scenes)
    images += smoothed_copies(images, args.smooth_copies)
    budget_start = time.monotonic()

    def make_run(model: Any, steps: int | None, checkpoint_dir: Path | None, validate_every: int) -> Any:
        return iter_finetune(
            images,
            None,
            model=model,
            steps=steps,
            patch_size=args.patch_size,
            batch_size=args.batch_size,
            preset=args.preset,
            learning_rate=args.learning_rate,
            device=args.device,
            seed=args.seed,
            validation=(None, validation_for(args.selection)),
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=validate_every,
            validate_every=validate_every,
            ema=args.ema,
            blur_kind=args.blur_kind,
            precision=args.precision,
            teacher=args.teacher,
            teacher_weight=args.teacher_weight,
            resume=resume if checkpoint_dir is not None else None,
            preview=False,
        )

    validate_every = args.validate_every
    if args.fit_steps:
        if args.minutes is None:
            parser.error("--fit-steps needs --minutes (the budget the schedule must fit)")
        if resume is None:  # a resumed run keeps the schedule it started with
            probe_seconds = min(20.0, 6.0 * args.minutes)  # 10 % of the budget (6 s a minute), at most 20 s
            rate = probe_steps_per_second(lambda: make_run(model, 10**7, None, 10**7), probe_seconds)
            remaining = 60 * args.minutes - (time.monotonic() - budget_start)
            args.steps = max(int(rate * remaining * FIT_MARGIN), 100)
            validate_every = max(args.validate_every, args.steps // 12)
            print(
                f"fit-steps: {rate:.2f} steps/s measured; {args.steps} steps fit the {remaining:.0f} s left "
                f"(x{FIT_MARGIN}); validating every {validate_every}",
                flush=True,
            )
        else:  # the checkpoint's own total (None), not --steps: a different total would change the schedule
            args.steps = None
            print("fit-steps: resuming the fitted run with its checkpoint's own total of steps", flush=True)
    run = make_run(model, args.steps, args.checkpoint_dir, validate_every)
    start = time.monotonic()
    try:
        report(run, budget_start, args.minutes)
    finally:  # a crash or Ctrl-C still writes the best weights so far (the checkpoint folder has them too)
        save_result(run, args, time.monotonic() - start)
    return 0


def report(run: Any, budget_start: float, minutes: float | None) -> Finished | None:
    """Print the run's events; stop it cooperatively once ``minutes`` have passed since ``budget_start``."""
    final = None
    for event in run:
        if isinstance(event, Step) and event.step % 50 == 0:
            losses = " ".join(f"{k}={v:.4f}" for k, v in event.losses.items())
            print(f"step {event.step}/{event.total_steps} {losses} {event.images_per_second:.1f} img/s", flush=True)
        elif isinstance(event, Validation):
            print(
                f"validation @ {event.step}: {event.psnr:.2f} dB (input {event.psnr_input:.2f} dB)"
                f"{' best' if event.is_best else ''}",
                flush=True,
            )
        elif isinstance(event, Notice):
            print(f"notice: {event.message}", flush=True)
        elif isinstance(event, Finished):
            final = event
        if minutes is not None and time.monotonic() - budget_start > 60 * minutes:
            run.stop()
    return final


def save_result(run: Any, args: argparse.Namespace, wall: float) -> None:
    """Write the run's kept model with the hardware and wall time, and install it if asked."""
    model = run.model
    if args.keep == "last":
        if run.finished is None:
            print("notice: the run did not finish; writing its best weights, not the last", flush=True)
        else:  # a finished or stopped run checkpoints its last step: its live weights are there
            from napari_deblurgan.training.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(args.checkpoint_dir)
            model.generator.load_state_dict(checkpoint["state"]["generator"])
            training = model.metadata.get("training")
            if isinstance(training, dict):  # the best-validation fields describe other weights: say so
                training["kept"] = f"live weights of the last step ({checkpoint['step']})"
                training["best_validation"] = {
                    "step": training.pop("best_step", None),
                    "source": training.pop("best_source", None),
                    "psnr": training.pop("val_psnr", None),
                }
    if args.context_padding is not None:
        model.context_padding = args.context_padding
    model.metadata.update(
        name=args.name,
        description=f"napari-deblurgan {args.name} model: single-channel {model.architecture}, synthetic blur + noise",
    )
    model.metadata.setdefault("training", {})
    if isinstance(model.metadata["training"], dict):
        model.metadata["training"]["script"] = "scripts/train_default_model.py"
        model.metadata["training"]["hardware"] = hardware(args.device)
        model.metadata["training"]["this_session_wall_s"] = round(wall, 1)
    output = args.output or args.checkpoint_dir / "model.pt"
    model.save(output, weights_dtype=args.weights_dtype)
    print(f"saved {output}; wall={wall:.0f}s")
    finished = run.finished is not None and not run.finished.stopped
    if not finished:
        training = model.metadata.get("training")
        training = training if isinstance(training, dict) else {}
        done, total = training.get("steps_done", "?"), training.get("steps", args.steps)
        print(
            f"stopped early ({done} of {total} steps done): rerun the same command to resume from "
            f"{args.checkpoint_dir}",
            flush=True,
        )
    if args.install:
        if finished:
            install(Path(output), args.name)
        else:  # an unfinished run must not replace the shipped weights and their checksum
            print(
                f"not installed: the run did not finish all its steps; rerun the same command (with --install) "
                f"to resume it from {args.checkpoint_dir} and install it when it finishes",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())

"""The one training loop of napari-deblurgan: :func:`iter_finetune` and :func:`finetune`.

Everything that trains a model - the napari Finetune widget, ``napari-deblurgan finetune``, a script or the
napari console - goes through :class:`TrainingRun`. It is built from three separable parts:

* the **data source** (:class:`~napari_deblurgan.data.pairs.BatchSource`): ``next_batch(n)`` gives
  ``(blurred, sharp)`` tensors on the device;
* the **step function** (:class:`GanStep`): one generator update (plus the preset's critic updates), given a
  ``next_batch`` callable - it knows nothing about files, events or checkpoints;
* the **run** (:class:`TrainingRun`): schedule, validation, best-model keeping, EMA, checkpoints, NaN
  rollback, out-of-memory batch halving, cooperative stop, events.

There is no global state: several runs can live in one process, and a distributed launcher could drive
``GanStep`` with its own sampler. Iterating a ``TrainingRun`` yields typed events
(:mod:`~napari_deblurgan.training.events`); ``run.stop()`` may be called from any thread and is honoured
after the current step (a whole step, so that the checkpoint resumes exactly); ``run.model`` is the best model
so far. Iterated in the main thread (a console, Jupyter, ``finetune()``), the first Ctrl-C that lands while the
run's own code works is such a stop, and a second one aborts at once (:class:`_StopOnCtrlC`).

Models are in train mode while they are trained and in eval mode whenever they are evaluated (validation,
previews, the returned model) - the reference DeblurGAN code ran inference in train mode.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import math
import numbers
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.pairs import (
    BatchSource,
    PairedData,
    format_blur_mix,
    resolve_blur_mix,
    resolve_blur_strength,
    resolve_noise,
)
from ..devices import resolve_device, training_autocast_dtype
from ..errors import DeblurGANError, InputError, user_stacklevel
from ..model_file import DeblurModel, as_model, create_model, load_base_model
from ..models import list_architectures
from ..models.critic import PatchCritic
from ..signal_safe_stderr import stderr_from_signal_handlers
from ..user_paths import expand_user
from . import losses
from .checkpoint import (
    CHECKPOINT_NAME,
    capture_global_rng,
    checkpoint_folder,
    checkpoint_path,
    first_non_finite_tensor,
    load_checkpoint,
    save_checkpoint,
)
from .distillation import SelfEnsembleTeacher, check_teacher_weight, weights_digest
from .events import (
    CheckpointSaved,
    Finished,
    Notice,
    Preview,
    Started,
    Step,
    TrainingEvent,
    TrainingNoticeWarning,
    Validation,
)
from .presets import Preset, get_preset

#: Rollbacks (non-finite losses) tolerated before a run gives up as diverged.
MAX_ROLLBACKS = 5
#: In-memory rollback snapshots are taken at least this often (steps).
SNAPSHOT_EVERY = 50


def _whole_number(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (Python or NumPy integers, or floats with no fraction such as 1e4);
    one InputError otherwise - never a silent truncation of 2.5 to 2."""
    whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()
    if whole and int(value) >= minimum:
        return int(value)
    raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}.")


def _check_seed(seed: Any) -> int | None:
    """finetune's ``seed``: None or an integer 0 <= seed < 2**63; one InputError otherwise. No numpy Generator
    (synthesize_blur takes one): a run records its seed, so that it can be repeated and resumed, and a
    Generator's state is no seed to record; the message says how to draw one from it."""
    if seed is None:
        return None
    if isinstance(seed, np.random.Generator):
        raise InputError(
            "seed must be an integer >= 0 or None, not a numpy Generator: a training run records its seed so that "
            "it can be repeated and resumed. Draw one from the Generator: seed=int(rng.integers(2**31))."
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer >= 0 (below 2**63) or None (a random one, recorded); got {seed!r}.")
    return int(seed)


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite during a step (handled by rolling back)."""


@dataclass
class RunConfig:
    """The arguments of one run that a checkpoint must reproduce (JSON-able)."""

    steps: int
    patch_size: int
    batch_size: int
    preset: str
    learning_rate: float | None
    seed: int
    validation: float | str
    checkpoint_every: int
    validate_every: int
    ema: float | None
    blur_kind: str
    blur_strength: list[float] | None = None  # [low, high] px for every kind, None = each kind's default range
    noise: dict[str, list[float]] | None = None  # {"photons": [lo, hi], "read_noise": [lo, hi]} or None
    precision: str = "auto"  # devices.PRECISIONS: autocast dtype of the steps ("auto": bfloat16 on a GPU)
    teacher_weight: float | None = None  # self-ensemble distillation (distillation.py); None = no teacher
    teacher_weights_sha256: str | None = None  # which teacher: a resumed run must be given the same one


# ---------------------------------------------------------------------------------------- step function
class GanStep:
    """One training step of the generator (and the critic, when the preset has one).

    ``run(next_batch, batch_size, lr, critic_lr)`` performs ``preset.critic_steps`` critic updates, each on a
    fresh batch with freshly computed, detached fakes, then one generator update on another fresh batch,
    and returns the loss terms as floats. Raises :class:`NonFiniteLoss` (before any parameter is changed by
    the offending loss) when a loss is NaN/inf. ``precision`` (devices.PRECISIONS) picks the autocast dtype:
    ``"auto"`` runs under bfloat16 autocast on CUDA (float16 with gradient scaling where bfloat16 is
    unsupported) and float32 on the CPU; on CUDA it uses fused Adam (and the run channels-last tensors).
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module | None,
        preset: Preset,
        device: torch.device,
        *,
        perceptual: nn.Module | None,
        feature_matching: bool,
        ema_decay: float | None,
        seed: int,
        precision: str = "auto",
    ) -> None:
        self.generator = generator
        self.critic = critic
        self.preset = preset
        self.device = device
        self.perceptual = perceptual
        self.feature_matching = feature_matching
        self.amp_dtype = training_autocast_dtype(precision, device)
        fused = device.type == "cuda"
        self.opt_g = torch.optim.Adam(
            generator.parameters(), lr=preset.learning_rate, betas=preset.betas, fused=fused or None
        )
        self.opt_d = (
            torch.optim.Adam(
                critic.parameters(), lr=preset.critic_learning_rate, betas=preset.betas, fused=fused or None
            )
            if critic is not None
            else None
        )
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        # Per-sample interpolation factors of the gradient penalty come from this run's own generator.
        self.gp_generator = torch.Generator(device=device)
        self.gp_generator.manual_seed(int(seed) + 3)
        self.ema_decay = ema_decay
        self.gp_reseeded = False  # load_state_dict had to reseed gp_generator (a checkpoint of another device)
        # Set by the run for self-ensemble distillation: mixes the generator's content targets (distillation.py)
        self.teacher: SelfEnsembleTeacher | None = None
        self.ema: nn.Module | None = None
        self.ema_updates = 0
        self.updating_generator = False  # see run(): an update applied but not yet counted as a step
        if ema_decay is not None:
            self.ema = copy.deepcopy(generator).eval()
            self.ema.requires_grad_(False)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def set_learning_rates(self, lr: float, critic_lr: float) -> None:
        """Set the learning rate of both optimisers (the schedule lives in the run)."""
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = critic_lr

    @property
    def batches_per_step(self) -> int:
        """How many batches :meth:`run` takes: one per critic update, and one for the generator's."""
        p = self.preset
        critic = self.critic is not None and self.opt_d is not None and p.critic_steps > 0
        return (p.critic_steps if critic else 0) + 1

    def run(
        self,
        next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        batch_size: int,
    ) -> dict[str, float]:
        """One whole step (a stop is honoured between steps, never inside one: a checkpoint written after a
        step's critic updates but before its generator update could not be resumed exactly); returns the
        loss terms."""
        p = self.preset
        G, D = self.generator, self.critic
        G.train()
        values: dict[str, torch.Tensor] = {}
        if D is not None and self.opt_d is not None and p.critic_steps > 0:
            D.train()
            D.requires_grad_(True)
            for _ in range(p.critic_steps):
                blurred, sharp = next_batch(batch_size)
                with torch.no_grad(), self._autocast():
                    fake = G(blurred)
                with self._autocast():
                    loss_d, parts = losses.critic_loss(
                        D, sharp, fake.detach(), gp_weight=p.gradient_penalty, generator=self.gp_generator
                    )
                if not torch.isfinite(loss_d):
                    raise NonFiniteLoss(f"critic loss is {loss_d.item()}")
                self.opt_d.zero_grad(set_to_none=True)
                self.scaler_d.scale(loss_d).backward()
                self.scaler_d.step(self.opt_d)
                self.scaler_d.update()
            values["critic"] = loss_d.detach()
            values["wasserstein"] = parts["wasserstein"]
            values["gradient_penalty"] = parts["gradient_penalty"]
        if D is not None:
            D.requires_grad_(False)  # the generator update needs gradients through D, not of D
        blurred, sharp = next_batch(batch_size)
        target = sharp if self.teacher is None else self.teacher.targets(blurred, sharp)
        with self._autocast():
            fake = G(blurred)
            total = fake.new_zeros((), dtype=torch.float32)
            if p.content_loss != "none" and p.content_weight > 0:
                values["content"] = p.content_weight * losses.content_loss(fake, target, p.content_loss)
                total = total + values["content"]
            if p.perceptual_weight > 0:
                if self.perceptual is not None:
                    values["perceptual"] = p.perceptual_weight * self.perceptual(fake, target)
                elif self.feature_matching and D is not None:
                    values["feature_matching"] = p.perceptual_weight * losses.feature_matching_loss(D, fake, target)
                if "perceptual" in values or "feature_matching" in values:
                    total = total + values.get("perceptual", values.get("feature_matching"))
            if D is not None and p.adversarial_weight > 0:
                values["adversarial"] = p.adversarial_weight * losses.adversarial_loss(D, fake)
                total = total + values["adversarial"]
        if not torch.isfinite(total):
            raise NonFiniteLoss(f"generator loss is {total.item()}")
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(total).backward()
        # set from before the generator's and the EMA's weights change until the caller has counted the step
        # (TrainingRun clears it after its step += 1): an abort in between leaves weights that are no longer the
        # last counted step's (half updated, or this step's not yet counted), and TrainingRun then keeps an
        # earlier snapshot's
        self.updating_generator = True
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self._update_ema()
        values["total"] = total.detach()
        names = list(values)
        floats = torch.stack([values[k].detach().float() for k in names]).cpu().tolist()
        return dict(zip(names, floats, strict=True))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None or self.ema_decay is None:
            return
        self.ema_updates += 1
        # Warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): a short run's EMA is not
        # dominated by the initial weights.
        decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        ema_params = list(self.ema.parameters())
        params = [p.detach() for p in self.generator.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        # BatchNorm's running statistics averaged as the weights are (as timm's ModelEmaV2), so that they belong
        # to the averaged weights; counters (num_batches_tracked) copied
        for b_ema, b in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            if b_ema.is_floating_point():
                b_ema.lerp_(b.detach(), 1.0 - decay)
            else:
                b_ema.copy_(b)

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything of the step that a checkpoint holds (tensors are the live ones: copy before keeping)."""
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "gp_generator": self.gp_generator.get_state(),
            "ema_updates": self.ema_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors are copied onto this step's device)."""
        self.updating_generator = False  # a state dict is always a whole step's
        self.generator.load_state_dict(state["generator"])
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(state["critic"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None and state.get("opt_d") is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
        if state.get("scaler_d"):
            self.scaler_d.load_state_dict(state["scaler_d"])
        gp_state = state["gp_generator"].cpu()
        try:
            self.gp_generator.set_state(gp_state)
            self.gp_reseeded = False
        except RuntimeError:
            # A checkpoint from another kind of device: CPU and CUDA generators keep states of different
            # formats. Seeded from the saved state instead (deterministic, but not the same numbers).
            digest = hashlib.sha256(gp_state.numpy().tobytes()).digest()
            self.gp_generator.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
            self.gp_reseeded = True
        self.ema_updates = int(state.get("ema_updates", 0))


@dataclass(frozen=True)
class _BestWeights:
    """The best weights so far and what scored them, in one object: a new best replaces it by one assignment,
    so an interrupt (a second Ctrl-C) at any bytecode leaves either the old record or the new one, and a
    checkpoint or ``run.model`` never describes weights it does not hold."""

    state: dict[str, torch.Tensor] | None
    psnr: float | None = None  # the validation PSNR of ``state``; None before a validation scored it
    step: int = 0
    source: str = "initial"  # "generator" or "ema" once trained weights are kept


def _cpu_clone(tree: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor cloned to the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return type(tree)((k, _cpu_clone(v)) for k, v in tree.items())
    if isinstance(tree, list):
        return [_cpu_clone(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_cpu_clone(v) for v in tree)
    return copy.deepcopy(tree)


# ------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def evaluate(
    generator: nn.Module, blurred: torch.Tensor, sharp: torch.Tensor, batch_size: int, amp_dtype: Any = None
) -> tuple[float, float, np.ndarray]:
    """PSNR/SSIM of ``generator(blurred)`` against ``sharp`` (normalised units, data range 1) in eval mode.

    Returns ``(psnr, ssim, restored)`` with ``restored`` as a float32 ``(V, C, P, P)`` array. The generator
    is switched to eval mode for the evaluation and back to its previous mode afterwards.
    """
    was_training = generator.training
    generator.eval()
    try:
        outs = []
        for i in range(0, blurred.shape[0], max(batch_size, 1)):
            chunk = blurred[i : i + batch_size]
            if amp_dtype is not None:
                with torch.autocast(device_type=chunk.device.type, dtype=amp_dtype):
                    out = generator(chunk)
            else:
                out = generator(chunk)
            outs.append(out.float().cpu())
        restored = torch.cat(outs).numpy()
    finally:
        generator.train(was_training)
    target = sharp.float().cpu().numpy()
    psnr, ssim = image_metrics(target, restored)
    return psnr, ssim, restored


def _preview_crop(batch: np.ndarray) -> np.ndarray:
    """The first crop of a ``(V, C, P, P)`` batch as a :class:`Preview` carries it: ``(P, P)`` for one channel,
    ``(C, P, P)`` with every channel for more (an RGB model's preview is in colour), a float32 copy."""
    first = np.asarray(batch[0], dtype=np.float32)
    return np.array(first[0] if first.shape[0] == 1 else first, copy=True)


#: What the validation PSNR is, recorded in checkpoints: a resumed run whose checkpoint scored its best weights
#: another way re-scores them, so that "best" compares like with like.
VALIDATION_METRIC = "mean PSNR over crops"
#: Floor of a crop's MSE in the validation PSNR (100 dB): a perfectly restored crop must not make the mean inf.
_MSE_FLOOR = 1e-10


def image_metrics(target: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of ``image`` against ``target``, both ``(V, C, P, P)`` float in normalised units.

    Data range 1 (the 1-99.8 percentile span of the blurred plane). Both are means over the crops (and
    channels) of each crop's own value: the PSNR of every crop counts alike, as in the model card's protocol,
    instead of the PSNR of all crops pooled, which the crops with the largest errors dominate.
    """
    from ..comparison import ssim

    planes_t = np.ascontiguousarray(target.reshape(-1, *target.shape[-2:]), dtype=np.float32)
    planes_i = np.nan_to_num(image.reshape(-1, *image.shape[-2:]).astype(np.float32), nan=0.0, posinf=0.0)
    error = planes_t.astype(np.float64) - planes_i  # float64: a crop's MSE can be far below float32's resolution
    mse = np.maximum(np.mean(error**2, axis=(-2, -1)), _MSE_FLOOR)
    return (
        float(np.mean(-10.0 * np.log10(mse))),
        float(ssim(planes_t, planes_i, data_range=1.0, axes="ZYX")),
    )


# ------------------------------------------------------------------------------------------------- Ctrl-C
class _StopOnCtrlC(Generator):
    """The events of a run, with Ctrl-C (SIGINT) turned into :meth:`TrainingRun.stop` while the run's own code
    works.

    A console's or Jupyter's Ctrl-C lands where the main thread happens to be, nearly always inside a training
    step: as a KeyboardInterrupt it would end the run's generator there, with no checkpoint, no final model and a
    step half done. So around each advance of the run's generator (and only there: the consumer's code between
    two events keeps its own Ctrl-C), when iterated in the main thread and Python's own SIGINT handler is in
    place, a handler is installed whose first interrupt asks the run to stop after the step in progress (which
    then validates, checkpoints, emits an ``"interrupted"`` Notice and Finished) and whose second raises
    KeyboardInterrupt at once. The first one says so at once, in one line on stderr (:mod:`..signal_safe_stderr`): a GAN
    step on a CPU can take many seconds, and a user who saw nothing happen would press Ctrl-C again. A caller with
    a SIGINT handler of its own (the CLI's stops the run itself, says so and sets its exit status) keeps it;
    outside the main thread (napari's thread_worker, the Finetune panel) no handler can be installed and none is
    tried. ``send``, ``throw`` and ``close`` go to the run's generator.
    """

    def __init__(self, run: TrainingRun, events: Generator[TrainingEvent, Any, None]) -> None:
        self._run = run
        self._events = events
        folder = run._kwargs.get("checkpoint_dir")
        saved = (
            "keeps its best model (no checkpoint_dir: nothing is written)"
            if folder is None
            else f"writes its checkpoint to {str(folder)!r}"
        )
        kept = "" if folder is None else ", keeping the last checkpoint written"
        # made here, not in the handler
        self._first_ctrl_c = (
            f"napari-deblurgan: Ctrl-C: training stops after the step in progress and {saved}. "
            f"Press Ctrl-C again to abort at once{kept}."
        )
        self._pending: list[TrainingEvent] = []  # an event whose handover a Ctrl-C interrupted
        self.ended = False  # the run's generator finished, was closed or raised: it has no events left

    def __next__(self) -> TrainingEvent:
        if self._pending:
            return self._pending.pop()
        return self._advance(self._events.send, None)  # as deep as send(): _notice's stacklevel counts on it

    def send(self, value: Any) -> TrainingEvent:
        if self._pending:
            return self._pending.pop()
        return self._advance(self._events.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> TrainingEvent:
        self._pending.clear()
        return self._advance(self._events.throw, typ, *(() if val is None else (val,)), *(() if tb is None else (tb,)))

    def close(self) -> None:
        self._pending.clear()
        self.ended = True
        self._events.close()

    def _advance(self, how: Callable[..., TrainingEvent], *args: Any) -> TrainingEvent:
        with self._ctrl_c_stops():
            try:
                self._pending.append(how(*args))
            except BaseException as exc:
                # StopIteration (finished) or the exception that ended it; a Ctrl-C turned into a stop does not
                # end it, and one that aborts it ends it inside the generator (then this is that exception)
                if not isinstance(exc, KeyboardInterrupt) or getattr(self._events, "gi_frame", None) is None:
                    self.ended = True
                raise
        # a Ctrl-C just as the handler is put back raises here: the event stays pending for the next call
        return self._pending.pop()

    @contextlib.contextmanager
    def _ctrl_c_stops(self) -> Iterator[None]:
        previous = None
        if threading.current_thread() is threading.main_thread():
            try:
                # only in place of Python's own handler: one of the caller's own, or SIGINT ignored, is left as is
                if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    stderr_from_signal_handlers.ready()
                    previous = signal.signal(signal.SIGINT, self._on_ctrl_c)
            except ValueError:  # not the main interpreter
                previous = None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        run = self._run
        run._interrupts += 1
        if run._interrupts > 1:
            raise KeyboardInterrupt
        run.stop()
        stderr_from_signal_handlers.say(self._first_ctrl_c)  # no stream touched here: see SignalSafeStderr


# ----------------------------------------------------------------------------------------------- the run
class TrainingRun:
    """One finetuning run: iterate it for events; ``stop()`` from any thread; ``model`` = best so far.

    Create it with :func:`iter_finetune`. Iterating a second time continues where the first iteration
    stopped (the events come from one generator).

    ``notice_warnings`` (default True): the :class:`Notice` events a user must not miss are also raised as a
    :class:`~napari_deblurgan.training.events.TrainingNoticeWarning`. A consumer that shows the Notice events
    itself sets it to False before iterating, so they are not said twice; unlike a warnings filter, it is safe
    in a worker thread (the Finetune panel's). A notice that can no longer be yielded (the run closed between
    two events) is still a warning.
    """

    notice_warnings: bool = True

    def __init__(self, **kwargs: Any) -> None:
        from ..devices import guard_torch_inside_napari

        # Before the optimiser is built (torch.optim probes triton, which crashes next to Mesa's LLVM in napari)
        guard_torch_inside_napari()
        self._kwargs = kwargs
        self._stop_event = threading.Event()
        self._events: _StopOnCtrlC | None = None
        self._interrupts = 0  # Ctrl-Cs caught while the run's code worked (_StopOnCtrlC)
        self._best = _BestWeights(state=None)
        # run.model's last model and the records it was built from (the best weights, the provenance): one
        # tuple, replaced by one assignment. No lock guards it: a Ctrl-C raised on a `with lock:` line, before
        # the block's try is entered, leaves the lock held (CPython, bpo-29988), and every later run.model
        # would hang. The records are only ever replaced whole (never changed in place), by the training
        # thread alone, so a model built from the records it read is right for them, whatever another thread does
        self._model_cache: tuple[_BestWeights, dict[str, Any] | None, DeblurModel] | None = None
        self.finished: Finished | None = None
        self._setup_inputs()

    # -- public API ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to stop after the step in progress (never inside one); it then validates the weights
        trained since the last validation, writes its checkpoint (with ``checkpoint_dir``) and emits
        ``Finished``. Resumed, the run trains on exactly as the uninterrupted run would, but this off-schedule
        validation may have made the newest weights the best, and then they stay its returned model."""
        self._stop_event.set()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop_event.is_set()

    @property
    def model(self) -> DeblurModel:
        """The best model so far (by validation PSNR; the last/EMA weights without validation), on the CPU."""
        # no lock (see __init__): two threads asking at once may both build it, which costs only time
        best, provenance = self._best, getattr(self, "provenance", None)
        cache = self._model_cache
        if cache is not None and cache[0] is best and cache[1] is provenance:
            return cache[2]
        model = self._build_model(best, provenance)
        self._model_cache = (best, provenance, model)
        return model

    def __iter__(self) -> Iterator[TrainingEvent]:
        if self._events is None:
            self._events = _StopOnCtrlC(self, self._run())
        elif self._events.ended:
            # a generator would just yield nothing: a loop over an ended run would do nothing, silently
            how = (
                f"finished at step {self.finished.step}"
                if self.finished is not None
                else "was closed or ended by an exception"
            )
            raise RuntimeError(
                f"This training run {how}: it has no events left, and run.model holds its best model. To train "
                "more, start a new run (iter_finetune(..., resume=<its checkpoint_dir>) continues a checkpointed one)."
            )
        return self._events

    def run_to_end(self) -> DeblurModel:
        """Consume every event (those left, where some were consumed already) and return the final model."""
        if self._events is None or not self._events.ended:
            for _ in self:
                pass
        return self.model

    # -- setup -----------------------------------------------------------------------------------------
    def _setup_inputs(self) -> None:
        """Check the arguments and the data (eagerly, so errors surface at iter_finetune time)."""
        k = self._kwargs
        self.on_event: Callable[[TrainingEvent], Any] | None = k["on_event"]
        self.resume_payload: dict[str, Any] | None = None
        self.resume_json: dict[str, Any] = {}
        if k["resume"] is not None:
            self.resume_payload = load_checkpoint(k["resume"])
            self.resume_json = json.loads(self.resume_payload["json"])
            if k["checkpoint_dir"] is None:  # a resumed run keeps checkpointing where it came from
                k["checkpoint_dir"] = checkpoint_folder(k["resume"])
        saved = self.resume_json.get("config", {})

        if self.on_event is not None and not callable(self.on_event):
            raise InputError(f"on_event must be a function called with each event, or None; got {self.on_event!r}.")
        # None: 1000 for a new run, the checkpoint's own total when resuming (its schedule depends on it)
        self.resume_ignored = self._ignored_on_resume(saved) if self.resume_payload is not None else []
        steps = _whole_number("steps", saved.get("steps", 1000) if k["steps"] is None else k["steps"], 0)
        resumed_at = int(self.resume_payload["step"]) if self.resume_payload is not None else 0
        if steps < resumed_at:
            raise InputError(
                f"steps {steps} is below the checkpoint's step {resumed_at}: nothing would be trained. Leave steps "
                f"unset to finish the run's own {saved.get('steps', '?')} steps, or pass more than {resumed_at}."
            )
        batch_size = _whole_number("batch_size", saved.get("batch_size", k["batch_size"]), 1)
        _whole_number("patch_size", k["patch_size"], 8)
        if k["checkpoint_dir"] is not None:
            _check_checkpoint_folder(Path(k["checkpoint_dir"]))
        if "preset_fields" in self.resume_json:  # the exact recipe, also for a custom Preset object
            fields = dict(self.resume_json["preset_fields"])
            fields["betas"] = tuple(fields["betas"])
            self.preset = Preset(**fields)
        else:  # checkpoints of older versions: the preset by name
            preset_name = saved.get("preset", k["preset"] if isinstance(k["preset"], str) else None)
            self.preset = get_preset(preset_name if preset_name is not None else k["preset"])
        lr = saved.get("learning_rate", k["learning_rate"])
        if lr is not None:
            if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
                raise InputError(f"learning_rate must be a positive number, got {lr!r}.")
            scale = float(lr) / self.preset.learning_rate
            self.preset = self.preset.replace(
                learning_rate=float(lr), critic_learning_rate=self.preset.critic_learning_rate * scale
            )
        ema = saved.get("ema", k["ema"])
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, numbers.Real) or not 0.0 < ema < 1.0):
            raise InputError(f"ema must be a decay in (0, 1) such as 0.999, or None; got {ema!r}.")
        seed = saved.get("seed", k["seed"])
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))  # recorded, so the run can be repeated
        self.blur_kinds, self.blur_weights = resolve_blur_mix(saved.get("blur_kind", k["blur_kind"]))
        self.strength_ranges = resolve_blur_strength(saved.get("blur_strength", k["blur_strength"]), self.blur_kinds)
        self.noise = resolve_noise(saved["noise"] if "noise" in saved else k["noise"])
        for name in ("checkpoint_every", "validate_every"):
            _whole_number(name, k[name], 1)
        validation = k["validation"]
        self.config = RunConfig(
            steps=steps,
            patch_size=int(saved.get("patch_size", k["patch_size"])),
            batch_size=batch_size,
            preset=self.preset.name,
            learning_rate=None if lr is None else float(lr),
            seed=int(seed),
            validation=validation if isinstance(validation, (int, float)) or validation is None else "explicit",
            checkpoint_every=int(k["checkpoint_every"]),
            validate_every=int(k["validate_every"]),
            ema=None if ema is None else float(ema),
            blur_kind=format_blur_mix(self.blur_kinds, self.blur_weights),
            blur_strength=list(next(iter(self.strength_ranges.values()))) if self.strength_ranges else None,
            noise={key: list(v) for key, v in self.noise.items()} if self.noise else None,
            precision=str(saved.get("precision", k["precision"])),
        )
        self.device = resolve_device(k["device"])
        training_autocast_dtype(self.config.precision, self.device)  # refuse a bad precision now, not mid-run

        # model: resume > DeblurModel > architecture name > path / shipped name
        self.base = self._resolve_model(k["model"])
        if self.base.channel_mode == "independent" and self.base.channels != 1:  # pragma: no cover - guarded
            raise InputError("independent channel mode needs a 1-channel model")

        blurred, sharp = k["blurred"], k["sharp"]
        if sharp is None:
            blurred, sharp = None, blurred  # sharp-only data: blur is synthesised on the fly
        self.data = PairedData(
            blurred,
            sharp,
            axes=k["axes"],
            validation_axes=k["validation_axes"],
            channels=self.base.channels,
            patch_size=self.config.patch_size,
            stride=self.base.stride,
            validation=0.0 if validation is None else validation,
            seed=self.config.seed,
        )
        self._asked_patch = self.config.patch_size  # for a critic's refusal of the crops (also in _run)
        if self.preset.uses_critic:
            self._refuse_an_untrained_critic("an adversarial term (adversarial_weight > 0)")
            self._refuse_crops_too_small_for_the_critic(self._asked_patch, self.data.patch_size)
        self.config.patch_size = self.data.patch_size
        self._setup_teacher(saved)
        self.setup_notices.extend(self._unused_settings())
        self._best = _BestWeights(state=_cpu_clone(self.base.generator.state_dict()))

    def _refuse_an_untrained_critic(self, needs: str) -> None:
        """A preset whose generator loss would use the critic (``needs`` says how) but never trains it
        (``critic_steps=0``) would pull towards a random network's scores or features: refused."""
        if self.preset.critic_steps > 0:
            return
        raise InputError(
            f"Preset {self.preset.name!r} has {needs} but critic_steps=0: its critic would never be trained, and "
            "the generator would follow a random network. Give the preset critic_steps >= 1, or leave the critic "
            "out (a preset without one, such as preset='content')."
        )

    def _refuse_crops_too_small_for_the_critic(self, asked: int, patch: int) -> None:
        """Refuse, before any training, crops smaller than the critic can score (worked out from its layers:
        :meth:`PatchCritic.smallest_input`); torch would otherwise fail inside the first critic update with an
        InstanceNorm's "Expected more than 1 spatial element". ``asked`` is the patch_size given, ``patch`` the
        crops' side (a multiple of the model's stride, reduced to fit the images)."""
        smallest = PatchCritic.smallest_input()
        if patch >= smallest:
            return
        stride = max(int(self.base.stride), 1)
        need = -(-smallest // stride) * stride  # the crops are multiples of the model's stride
        images_too_small = asked >= need  # the crops were reduced to fit the images
        crops = ""
        if patch != asked:
            why = "reduced to fit the images" if images_too_small else f"a multiple of the model's stride {stride}"
            crops = f" ({patch}-px crops, {why})"
        at_stride = f"; {need} px with this model's stride {stride}" if need != smallest else ""
        advice = (
            f"Give images of at least {need} px on their shorter side"
            if images_too_small
            else f"Pass patch_size={need} or more"
        )
        raise InputError(
            f"patch_size {asked}{crops} is too small for the critic that preset {self.preset.name!r} trains: it "
            f"needs crops of at least {smallest} px{at_stride}. {advice}, or use a preset without a critic, such "
            "as preset='content'."
        )

    def _rgb_data(self) -> bool:
        """Whether the model's 3 channels are RGB samples (every training image's axes end in ``S``), which
        VGG-19 sees as the colour image it was trained on; other channels (fluorescence ``C``) it sees one by
        one as grey."""
        return self.base.channels == 3 and all(axes.endswith("S") for axes in self.data.axes())

    def _unused_settings(self) -> list[str]:
        """Notices for settings given that this run cannot use, which were dropped silently: the synthetic
        blur's settings with blurred/sharp pairs (their blur is the images' own), and ``channels`` with a model
        that has its channels already (a file, a shipped name, a DeblurModel). A resumed run names what it
        ignored in its own notice."""
        k = self._kwargs
        defaults = inspect.signature(iter_finetune).parameters
        named_on_resume = {note.split(" ", 1)[0] for note in self.resume_ignored}
        notices = []
        if not self.data.synthetic:
            given = [
                name
                for name in ("blur_kind", "blur_strength", "noise")
                if name not in named_on_resume and not _is_default(k[name], defaults[name].default)
            ]
            if given:
                verb, them = ("is", "it") if len(given) == 1 else ("are", "them")
                notices.append(
                    f"{' and '.join(given)} {verb} ignored: blurred/sharp pairs were given, whose blur is their own "
                    f"(synthetic blur is made only for sharp images given alone). Pass only sharp images to train on "
                    f"synthetic blur, or leave {them} out."
                )
        channels, model = k["channels"], k["model"]
        from_architecture = isinstance(model, str) and model in list_architectures()
        if (
            channels is not None
            and not from_architecture
            and "channels" not in named_on_resume
            and channels != self.base.channels
        ):
            notices.append(
                f"channels {channels!r} is ignored: the model takes {self.base.channels} channel(s) "
                f"({self.base.channel_mode}). channels sets the channels of a new model only (model= an "
                f"architecture name: {', '.join(list_architectures())})."
            )
        return notices

    def _setup_teacher(self, saved: dict[str, Any]) -> None:
        """Resolve ``teacher`` (self-ensemble distillation); a resumed run must get the teacher it started with."""
        k = self._kwargs
        teacher = k["teacher"]
        self.teacher_model: DeblurModel | None = None
        self.setup_notices: list[str] = []  # said (and warned) after Started
        given_weight = check_teacher_weight(k["teacher_weight"])  # with or without a teacher: a typo is a typo
        default_weight = inspect.signature(iter_finetune).parameters["teacher_weight"].default
        named_on_resume = any(note.startswith("teacher_weight ") for note in self.resume_ignored)
        if teacher is None and given_weight != default_weight and not named_on_resume:
            self.setup_notices.append(
                f"teacher_weight {k['teacher_weight']!r} is ignored: no teacher was given (teacher_weight is the "
                "teacher's share of the training targets). Give a teacher to distil from, or leave teacher_weight out."
            )
        if teacher is not None:
            self.teacher_model = as_model(teacher, role="teacher")
            if (self.teacher_model.channels, self.teacher_model.channel_mode) != (
                self.base.channels,
                self.base.channel_mode,
            ):
                raise InputError(
                    f"the teacher takes {self.teacher_model.channels} channel(s) "
                    f"({self.teacher_model.channel_mode}) but the model being trained takes {self.base.channels} "
                    f"({self.base.channel_mode}); give a teacher with the same channels."
                )
            self.config.teacher_weights_sha256 = weights_digest(self.teacher_model)
        if self.resume_payload is not None:
            had = saved.get("teacher_weights_sha256")
            if had != self.config.teacher_weights_sha256:
                if had is None:
                    why = "this run was started without a teacher; resume it without one"
                elif self.teacher_model is None:
                    why = "this run was started with a teacher; pass the same teacher to resume it"
                else:
                    why = "this run was started with another teacher; pass the same teacher to resume it"
                raise InputError(f"Cannot resume {k['resume']}: {why}.")
        if self.teacher_model is not None:
            weight = saved.get("teacher_weight") if self.resume_payload is not None else None
            self.config.teacher_weight = check_teacher_weight(k["teacher_weight"] if weight is None else weight)

    def _ignored_on_resume(self, saved: dict[str, Any]) -> list[str]:
        """The recipe arguments given (other than their defaults) that a resume replaces with the checkpoint's."""
        defaults = {name: p.default for name, p in inspect.signature(iter_finetune).parameters.items()}
        ignored = []
        names = ("preset", "learning_rate", "batch_size", "patch_size", "ema", "seed", "precision", "blur_kind")
        for name in (*names, "blur_strength", "noise", "teacher_weight"):
            given, had = self._kwargs[name], saved.get(name)
            if name == "preset" and not isinstance(given, str):
                continue  # a Preset object: its fields are compared nowhere; the checkpoint's are used
            unset = given is None and name != "noise"  # noise=None is a choice: no noise
            if name not in saved or unset or given == defaults[name] or given == had:
                continue
            if name in ("blur_strength", "noise") and _same_setting(name, given, had):
                continue  # the same setting, written another way (3.0 vs [3.0, 3.0])
            if had is None and name == "blur_strength":
                shown = "each kind's default range"
            elif had is None and name == "learning_rate":
                shown = "the preset's"
            else:  # None for noise, ema and teacher_weight: the run had none (presets have no EMA)
                shown = repr(had)
            ignored.append(f"{name} {shown} (not {given!r})")
        header = self.resume_json.get("model", {})
        given_model = self._kwargs["model"]
        if given_model is not None and not self._resumes_model(given_model, header):
            shown = (
                f"{given_model.metadata.get('name') or given_model.architecture!r} (a DeblurModel)"
                if isinstance(given_model, DeblurModel)
                else repr(str(given_model))
            )
            ignored.append(f"model {_checkpoint_base(header, self.resume_json)} (not {shown})")
        channels = self._kwargs["channels"]
        if channels is not None and channels != header.get("channels"):
            ignored.append(f"channels {header.get('channels')!r} (not {channels!r})")
        return ignored

    def _resumes_model(self, given: Any, header: dict[str, Any]) -> bool:
        """Whether ``model=given`` is the model the checkpoint's run started from (or cannot be told apart
        from it): an architecture name for a run started from scratch, else the same file (sha256)."""
        if "base_model_sha256" not in self.resume_json:  # checkpoints of older versions: the architecture only
            return not (
                isinstance(given, str) and given in list_architectures() and given != header.get("architecture")
            )
        started = self.resume_json["base_model_sha256"]  # None: from scratch (or from an unsaved model)
        if isinstance(given, DeblurModel):
            sha = given.metadata.get("sha256")
            return sha is None or sha == started  # an unsaved model cannot be identified
        if isinstance(given, str) and given in list_architectures():
            return started is None and given == header.get("architecture")
        return started is not None and _model_file_sha256(given) == started

    def _resolve_model(self, model: Any) -> DeblurModel:
        if self.resume_payload is not None:
            header = self.resume_json["model"]
            return create_model(  # seeded: its weights are replaced by the checkpoint's, and the global RNG stays
                header["architecture"],
                seed=0,
                channels=header["channels"],
                normalization=header["normalization"],
                metadata=header["metadata"],
                context_padding=header.get("context_padding"),  # absent in checkpoints before session 8
                **header["architecture_args"],
            )
        if model is None:
            model = "default"
        if isinstance(model, DeblurModel):
            return _copy_model(model)
        if isinstance(model, str) and model in list_architectures():
            channels = self._kwargs["channels"]
            return create_model(
                model, channels=1 if channels is None else _whole_number("channels", channels, 1), seed=self.config.seed
            )
        if isinstance(model, (str, os.PathLike)):
            return load_base_model(model, device="cpu")  # its not-found message names the architectures too
        raise InputError(
            f"model must be 'default', a DeblurModel, a model file path or an architecture name "
            f"({', '.join(list_architectures())}); got {type(model).__name__}."
        )

    def _build_model(self, best: _BestWeights, provenance: dict[str, Any] | None) -> DeblurModel:
        generator = copy.deepcopy(self.base.generator).cpu()
        if best.state is not None:
            generator.load_state_dict(best.state)
        meta = dict(self.base.metadata)
        # the base file's identity, date, name and description are not this model's: save() stamps its own
        # date and version, and `info` must not call a finetuned model "default" (its lineage is in training)
        base_name = meta.get("name") or self.base.architecture
        for key in ("sha256", "path", "created", "package_version", "name", "description"):
            meta.pop(key, None)
        meta["description"] = f"finetuned from {base_name} ({self.base.architecture})"
        # the score and step of these weights come from their own record, never from a provenance update
        # that an interrupt may have kept from running
        meta["training"] = (
            None
            if provenance is None
            else {**provenance, "val_psnr": best.psnr, "best_step": best.step, "best_source": best.source}
        )
        return DeblurModel(
            generator.eval(),
            self.base.architecture,
            architecture_args=self.base.architecture_args,
            channels=self.base.channels,
            channel_mode=self.base.channel_mode,
            normalization=self.base.normalization,
            metadata=meta,
            context_padding=self.base.context_padding,
        )

    def _set_best(self, best: _BestWeights) -> None:
        self._best = best  # one assignment: the weights and their numbers change together

    # -- the loop --------------------------------------------------------------------------------------
    def _emit(self, event: TrainingEvent) -> TrainingEvent:
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _notice(self, step: int, message: str, kind: str, warn: bool = False) -> TrainingEvent:
        if warn and self.notice_warnings:
            # the consumer's line, however deep the run's frames (a generator behind its Ctrl-C wrapper)
            warnings.warn(message, TrainingNoticeWarning, stacklevel=user_stacklevel())
        return self._emit(Notice(step=step, message=message, kind=kind))

    def _run(self) -> Iterator[TrainingEvent]:
        cfg, preset, device = self.config, self.preset, self.device
        t_start = time.perf_counter()
        k = self._kwargs
        channels_last = device.type == "cuda"

        generator = self.base.generator
        generator.to(device)
        if channels_last:
            generator.to(memory_format=torch.channels_last)
        critic: nn.Module | None = None
        if preset.uses_critic or (preset.perceptual_weight > 0):
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the user's global RNG
                torch.manual_seed(cfg.seed + 4)
                critic = PatchCritic(self.base.channels, width=preset.critic_width)
            critic.to(device)
            if channels_last:
                critic.to(memory_format=torch.channels_last)

        # perceptual loss: VGG-19 if weights are at hand, else critic feature matching (with a warning)
        perceptual_module: nn.Module | None = None
        feature_matching = False
        perceptual_kind = "none"
        pending: list[tuple[str, str]] = []  # notices to emit after Started
        # another run's checkpoint in the folder this run writes to (a resume writes where it came from
        # unless told otherwise): said, as the CLI refuses it without --force
        into = k["checkpoint_dir"]
        came_from = None if k["resume"] is None else checkpoint_path(k["resume"])
        into_file = None if into is None else checkpoint_path(into)
        into_used = into_file is not None and into_file.is_file()
        in_place = into_used and came_from is not None and os.path.samefile(into_file, came_from)
        if into_used and not in_place:
            pending.append(
                (
                    f"{str(into)!r} holds the checkpoint of an earlier run; this run replaces it at its first "
                    "checkpoint. Pass resume= that folder to continue the earlier run instead.",
                    "info",
                )
            )
        if preset.perceptual_weight > 0:
            from .perceptual import VGGPerceptualLoss, load_vgg_features

            features, reason = load_vgg_features(k["perceptual_weights"], allow_download=k["allow_download"])
            if features is not None:
                perceptual_module = VGGPerceptualLoss(features, rgb=self._rgb_data()).to(device)
                perceptual_kind = "vgg19"
            else:
                self._refuse_an_untrained_critic(
                    f"a perceptual term and no VGG-19 weights ({reason}), whose fallback is feature matching on "
                    "the critic's activations,"
                )
                self._refuse_crops_too_small_for_the_critic(self._asked_patch, cfg.patch_size)
                feature_matching = True
                perceptual_kind = "critic-features"
                pending.append(
                    (
                        f"Perceptual loss: {reason}. Using feature matching on the critic's activations "
                        "(pix2pixHD) instead of VGG-19 conv3_3 features.",
                        "perceptual-fallback",
                    )
                )
        if critic is not None and not preset.uses_critic and not feature_matching:
            critic = None  # VGG available and no adversarial term: no critic needed

        step_fn = GanStep(
            generator,
            critic,
            preset,
            device,
            perceptual=perceptual_module,
            feature_matching=feature_matching,
            ema_decay=cfg.ema,
            seed=cfg.seed,
            precision=cfg.precision,
        )
        if self.teacher_model is not None:
            step_fn.teacher = SelfEnsembleTeacher(
                self.teacher_model, cfg.teacher_weight, device, step_fn.amp_dtype, digest=cfg.teacher_weights_sha256
            )
        source = BatchSource(
            self.data,
            device,
            seed=cfg.seed,
            blur_kinds=self.blur_kinds,
            blur_weights=self.blur_weights,
            channels_last=channels_last,
            noise=self.noise,
            strength_ranges=self.strength_ranges,
        )

        step = 0
        lr_scale = 1.0
        batch_size = cfg.batch_size
        rollbacks = 0
        rescore_best = False  # a checkpoint that scored its best weights with another validation metric
        saved_validation: str | None = None  # the checkpoint's validation_fingerprint
        # False: the checkpoint's weights were not validated (a second Ctrl-C aborted their validation)
        checkpoint_validated = True
        if self.resume_payload is not None:
            payload = self.resume_payload
            step_fn.load_state_dict(payload["state"])
            if step_fn.gp_reseeded:
                pending.append(
                    (
                        "The checkpoint was written on another kind of device: the gradient penalty's random "
                        "numbers restart from a seed, so the run continues, but not bit for bit as it would "
                        "have on its own device.",
                        "info",
                    )
                )
            source.load_state_dict(payload["sampler"])
            # the global RNG states in the checkpoint are not restored: training draws only from its own
            # seeded generators (a fresh run leaves the caller's global RNG as it was; tested), and restoring
            # them would overwrite the caller's
            saved = self.resume_json
            step = int(payload["step"])
            lr_scale = float(saved["lr_scale"])
            batch_size = int(saved["batch_size"])
            best_psnr = saved.get("best_psnr")
            rescore_best = best_psnr is not None and saved.get("validation_metric") != VALIDATION_METRIC
            checkpoint_validated = bool(saved.get("validated", True))  # absent in older versions: as before
            saved_validation = saved.get("validation_fingerprint")  # absent in checkpoints of older versions
            saved_shapes = saved.get("data_shapes")  # absent in checkpoints of older versions
            shapes_now = [list(s) for s in self.data.shapes()]
            # the same shapes read with other axes (a ZYX stack resumed as ZXY) are other crops too; T or Z (or
            # C or S) for one axis is not: training takes every plane alike, and every channel alike
            saved_axes, axes_now = saved.get("data_axes"), self.data.axes()
            kind_changed = saved.get("synthetic", self.data.synthetic) != self.data.synthetic
            other_shapes = saved_shapes is not None and saved_shapes != shapes_now
            other_axes = saved_axes is not None and list(map(_crop_axes, saved_axes)) != list(map(_crop_axes, axes_now))
            if kind_changed or other_shapes or other_axes:
                pending.append(
                    (
                        "Resuming with other training data than the checkpoint's ("
                        + (
                            "sharp images with synthetic blur now, blurred/sharp pairs then"
                            if self.data.synthetic and kind_changed
                            else "blurred/sharp pairs now, sharp images with synthetic blur then"
                            if kind_changed
                            else f"{len(shapes_now)} images now, {len(saved_shapes or [])} then, or other shapes"
                            if other_shapes
                            else f"axes {axes_now} now, {saved_axes} then"
                        )
                        + "): the run continues, but it is no longer the same run. Pass the same data to resume "
                        "exactly.",
                        "resume-data",
                    )
                )
            kept = payload.get("best_state")
            self._set_best(
                _BestWeights(
                    state=self._best.state if kept is None else kept,
                    psnr=best_psnr,
                    step=int(saved.get("best_step", 0)),
                    source=saved.get("best_source", "generator"),
                )
            )
            self.resume_payload = None  # free the memory

        total = cfg.steps
        validation = source.validation_batch()
        input_metrics: tuple[float, float] | None = None
        if validation is not None:
            vb, vs = validation
            input_metrics = image_metrics(vs.float().cpu().numpy(), vb.float().cpu().numpy())
        resume_notes: list[str] = []
        # The checkpoint's best was scored on its own validation crops: with other crops now (other data or
        # validation given on resume), new scores would be compared with a number from another test
        other_validation = (
            self._best.psnr is not None
            and validation is not None
            and saved_validation is not None
            and saved_validation != source.validation_fingerprint()
        )
        if rescore_best or other_validation:
            old_psnr, best_step = self._best.psnr, self._best.step
            rescored_psnr = None  # without kept weights or validation data, the next validation sets it afresh
            if validation is not None and self._best.state is not None:
                scratch = copy.deepcopy(generator)
                scratch.load_state_dict(self._best.state)
                rescored_psnr = evaluate(scratch, vb, vs, batch_size, step_fn.amp_dtype)[0]
                del scratch
            self._set_best(replace(self._best, psnr=rescored_psnr))
            rescored = "no kept weights to score." if rescored_psnr is None else f"{rescored_psnr:.2f} dB."
            if other_validation:
                resume_notes.append(
                    f"The validation crops differ from the checkpoint's, where its best weights (step {best_step}) "
                    f"scored {old_psnr:.2f} dB; re-scored on the crops of this run, so that later validations are "
                    f"compared with the same test: {rescored}"
                )
            else:
                resume_notes.append(
                    f"The checkpoint scored its best weights (step {best_step}) with an older validation PSNR "
                    f"({old_psnr:.2f} dB); re-scored as the {VALIDATION_METRIC}: {rescored}"
                )

        self.provenance = {
            "preset": preset.name,
            "steps": total,
            "steps_done": step,
            "batch_size": batch_size,
            "patch_size": cfg.patch_size,
            "learning_rate": preset.learning_rate,
            "ema": cfg.ema,
            "seed": cfg.seed,
            "device": str(device),
            "precision": cfg.precision,
            "autocast_dtype": None if step_fn.amp_dtype is None else str(step_fn.amp_dtype).removeprefix("torch."),
            "data": self.data.describe(),
            "data_shapes": [list(s) for s in self.data.shapes()],
            "data_axes": self.data.axes(),  # as given or inferred, one per image
            "synthetic_blur": (
                {
                    "kinds": list(self.blur_kinds),
                    "kind_weights": None if self.blur_weights is None else list(self.blur_weights),
                    "strength_px": cfg.blur_strength,
                    "noise": cfg.noise,
                    "psf_block": source.psf_block,  # batches whose PSFs were made at once (GPU: 16)
                }
                if self.data.synthetic
                else None
            ),
            "validation": self.data.describe_validation(),
            "perceptual": perceptual_kind,
            "base_model": self.base.metadata.get("name") or self.base.architecture,
            # a resumed run rebuilds its base from the checkpoint, which records the original file's sha256
            "base_model_sha256": self.resume_json.get("base_model_sha256", self.base.metadata.get("sha256")),
            "wall_time_s": 0.0,
            "val_psnr": self._best.psnr,
            "val_psnr_input": None if input_metrics is None else input_metrics[0],
            "validation_metric": VALIDATION_METRIC,
            "teacher": None if step_fn.teacher is None else step_fn.teacher.describe(),
        }

        yield self._emit(
            Started(
                total_steps=total,
                start_step=step,
                preset=preset.name,
                device=str(device),
                architecture=self.base.architecture,
                batch_size=batch_size,
                patch_size=cfg.patch_size,
                train_samples=self.data.describe(),
                validation_samples=self.data.describe_validation(),
                perceptual=perceptual_kind,
            )
        )
        for note in self.data.notes:
            yield self._notice(step, note, "info")
        for message, kind in pending:
            yield self._notice(step, message, kind, warn=True)
        for message in self.setup_notices:
            yield self._notice(step, message, "info", warn=True)
        for message in resume_notes:
            yield self._notice(step, message, "info")
        if self.resume_ignored:
            yield self._notice(
                step,
                "Resuming keeps the checkpoint's recipe: " + ", ".join(self.resume_ignored) + ". Start a new run "
                "(without resume) to change it.",
                "info",
            )

        def checkpoint_payload() -> dict[str, Any]:
            best = self._best  # read once: the weights and the numbers that describe them, from one record
            return {
                "step": step,
                "state": step_fn.state_dict(),
                "sampler": source.state_dict(),
                "global_rng": capture_global_rng(),
                "best_state": best.state,
                "json": json.dumps(
                    {
                        "config": asdict(cfg),
                        "lr_scale": lr_scale,
                        "batch_size": batch_size,
                        "best_psnr": best.psnr,
                        "best_step": best.step,
                        "best_source": best.source,
                        # False when a second Ctrl-C aborted this step's validation: the resumed run does it
                        "validated": validated_step == step,
                        "validation_metric": VALIDATION_METRIC,
                        "validation_fingerprint": source.validation_fingerprint(),
                        "data_shapes": [list(s) for s in self.data.shapes()],
                        "data_axes": self.data.axes(),
                        "synthetic": self.data.synthetic,
                        "preset_fields": asdict(preset),
                        "model": self.base._header(),
                        "base_model_sha256": self.provenance["base_model_sha256"],
                    }
                ),
            }

        # the step of the last checkpoint written, so that a stop right after one writes no twin; reset to -1
        # whenever the state changes without the step moving (a new best, a rollback, a halved batch). A resume
        # into its own folder starts from what is written there: one that trains nothing (to get the kept model,
        # as load_model's message of a checkpoint advises) leaves the checkpoint, and its total, as they were
        saved_step = step if in_place and not (rescore_best or other_validation) else -1
        # False while the state is that of a step begun but not finished (inside a step, or after an OOM in one)
        whole_steps = True

        def write_checkpoint() -> TrainingEvent | None:
            """Write the checkpoint; a failed write (disk full, folder removed) is a Notice, not the end of
            the run: the run goes on and returns its model, and the previous checkpoint is left intact. Nothing
            is written twice for one state, nor for a step begun but not finished (the last good one stays)."""
            nonlocal saved_step
            if k["checkpoint_dir"] is None or saved_step == step or not whole_steps:
                return None
            payload = checkpoint_payload()
            # a state that is no longer finite (an update that overflowed with a finite loss, a device fault)
            # would replace the last good checkpoint with one that cannot be resumed (load_checkpoint refuses it)
            bad = first_non_finite_tensor(payload)
            if bad is not None:
                return self._notice(
                    step,
                    f"Not writing the checkpoint at step {step} to {str(k['checkpoint_dir'])!r}: the training state "
                    f"holds values that are not finite (NaN or infinite), first in {bad!r}. The previous checkpoint, "
                    "if any, is kept and stays resumable; the run goes on.",
                    "checkpoint-failed",
                    warn=True,
                )
            try:
                path = save_checkpoint(k["checkpoint_dir"], payload)
            except (OSError, RuntimeError, InputError) as exc:
                # a WriteFailed says its cause in words ("no space left on device"), not torch's internals
                cause = getattr(exc, "reason", None) or exc
                return self._notice(
                    step,
                    f"Could not write the checkpoint at step {step} to {str(k['checkpoint_dir'])!r} ({cause}); "
                    "training goes on, and the run still returns its model. The previous checkpoint, if any, "
                    "is intact.",
                    "checkpoint-failed",
                    warn=True,
                )
            saved_step = step
            return self._emit(CheckpointSaved(step=step, path=str(path)))

        validated_step = -1

        def validate() -> Iterator[TrainingEvent]:
            nonlocal validated_step, saved_step
            if validation is None or input_metrics is None:
                return
            vb, vs = validation
            candidates: list[tuple[str, nn.Module]] = [("generator", generator)]
            if step_fn.ema is not None and step > 0:
                candidates.append(("ema", step_fn.ema))
            preview = None
            for name, net in candidates:
                psnr, ssim, restored = evaluate(net, vb, vs, batch_size, step_fn.amp_dtype)
                best = self._best
                is_best = math.isfinite(psnr) and (best.psnr is None or psnr > best.psnr)
                if is_best:
                    # built whole first: a Ctrl-C during the copy changes nothing
                    best = _BestWeights(state=_cpu_clone(net.state_dict()), psnr=psnr, step=step, source=name)
                    saved_step = -1  # the checkpoint's best is out of date
                    self._set_best(best)
                if preview is None:
                    preview = restored
                # run.model's metadata describes the run so far, not its start; a new dict, never one changed in
                # place, so that run.model (in another thread, without a lock) sees the old one or the new one
                self.provenance = self.provenance | {
                    "steps_done": step,
                    "val_psnr": best.psnr,
                    "best_step": best.step,
                    "best_source": best.source,
                }
                yield self._emit(
                    Validation(
                        step=step,
                        psnr=psnr,
                        ssim=ssim,
                        psnr_input=input_metrics[0],
                        ssim_input=input_metrics[1],
                        is_best=is_best,
                        source=name,
                    )
                )
            # only once every candidate is scored: a validation aborted halfway (a second Ctrl-C) leaves the
            # step unvalidated in the checkpoint, and the resumed run validates it
            validated_step = step
            if k["preview"] and preview is not None:
                yield self._emit(
                    Preview(
                        step=step,
                        image=_preview_crop(preview),
                        input=_preview_crop(vb[:1].float().cpu().numpy()),
                        target=_preview_crop(vs[:1].float().cpu().numpy()),
                    )
                )

        # Validate the starting model: if finetuning never beats it, the run returns it unchanged. A resumed
        # run whose checkpoint was written while the validation of its step was aborted (a second Ctrl-C)
        # validates the restored weights first, as the uninterrupted run did at that step; a checkpoint of a
        # step off the validation schedule is not validated, as the uninterrupted run did not validate it.
        if step == 0 or (not checkpoint_validated and (step % cfg.validate_every == 0 or step == total)):
            yield from validate()

        def keep_latest_weights() -> None:
            """Without validation, the result is the latest weights (the EMA when kept): those of the last whole
            step, which a failure inside the next step leaves as they were (its data error, or any error before
            the generator's update), or the last snapshot's where an abort came during that update or where they
            are not finite (an overflow in a step whose state was not checked, then stopped)."""
            weights = None
            if not step_fn.updating_generator:
                at, use_ema = step, step_fn.ema is not None and step > 0
                weights = _cpu_clone((step_fn.ema if use_ema else generator).state_dict())
                if first_non_finite_tensor(weights) is not None:  # an update that overflowed, unchecked (a stop)
                    weights = None
            if weights is None:
                state, at = snapshot["state"], int(snapshot["step"])
                use_ema = state.get("ema") is not None and at > 0
                weights = state["ema"] if use_ema else state["generator"]  # already CPU clones, never changed
            # the returned weights are those of step ``at``: the model's best_step; its steps_done stays the
            # steps the run trained, as with validation (where the best step is often an earlier one)
            self._set_best(replace(self._best, state=weights, step=at, source="ema" if use_ema else "generator"))

        snapshot = {"step": step, "state": _cpu_clone(step_fn.state_dict())}
        snapshot_every = min(SNAPSHOT_EVERY, cfg.checkpoint_every, cfg.validate_every)

        def restore_snapshot() -> None:
            """Back to the snapshot's state (a rollback): a copy of it, because loading shares tensors (torch's
            optimiser keeps Adam's step counters, and on the CPU its moments, as given): training on would change
            the snapshot itself, and a second rollback would restore that, not the snapshot's step."""
            step_fn.load_state_dict(_cpu_clone(snapshot["state"]))

        def state_checked_after(n: int) -> bool:
            """Whether the state after step ``n`` is checked for NaN/inf: where a snapshot or checkpoint takes it,
            and at the last step (the model returned)."""
            return n % snapshot_every == 0 or n % cfg.checkpoint_every == 0 or n == total

        stopped = False
        diverged = False
        last_time = time.perf_counter()
        try:
            while step < total:
                if self._stop_event.is_set():
                    stopped = True
                    break
                lr_factor = preset.lr_factor(step, total) * lr_scale
                step_fn.set_learning_rates(preset.learning_rate * lr_factor, preset.critic_learning_rate * lr_factor)
                whole_steps = False  # until the step is counted: a Ctrl-C inside it must not save its state
                # read-ahead (a compressed lazy stack) reads no batch that the run will not take
                source.batches_needed = (total - step) * step_fn.batches_per_step
                try:
                    # only the step is under the out-of-memory handler below: it runs the step again, from the
                    # last snapshot where the error came once the generator's update had begun (see there)
                    try:
                        result = step_fn.run(source.next_batch, batch_size)
                    except torch.cuda.OutOfMemoryError:
                        out_of_memory = True
                    else:
                        out_of_memory = False
                    if not out_of_memory and state_checked_after(step + 1):
                        # an update can overflow while its loss is finite (an inf in Adam's moments leaves the
                        # weights finite, its steps 0): such a state must be neither the snapshot a rollback
                        # restores, nor a checkpoint, nor the final model; it is rolled back as a NaN loss is.
                        # The check's own errors (an out-of-memory one too) end the run as any error does: the
                        # update is applied but not counted (updating_generator, whole_steps), so the run keeps the
                        # last snapshot's weights and writes no checkpoint of this state
                        bad = first_non_finite_tensor(step_fn.state_dict())
                        if bad is not None:
                            raise NonFiniteLoss(
                                f"the training state holds values that are not finite, first in {bad!r}"
                            )
                except NonFiniteLoss as exc:
                    rollbacks += 1
                    saved_step = -1  # the state goes back to the snapshot: the checkpoint no longer matches
                    if rollbacks > MAX_ROLLBACKS:
                        diverged = True
                        restore_snapshot()  # before the notice: a consumer may stop there
                        step = int(snapshot["step"])
                        whole_steps = True
                        yield self._notice(
                            step,
                            f"Training diverged: {rollbacks - 1} rollbacks did not help ({exc}). Stopping with the "
                            "best model so far; try a lower learning_rate or the 'content' preset.",
                            "diverged",
                        )
                        break
                    lr_scale *= 0.5
                    restore_snapshot()
                    whole_steps = True
                    failed_at = step + 1
                    step = int(snapshot["step"])
                    yield self._notice(
                        step,
                        f"Non-finite values at step {failed_at} ({exc}): rolled back to step {step} and halved the "
                        f"learning rate (now x{lr_scale:g} of the schedule).",
                        "rollback",
                    )
                    last_time = time.perf_counter()
                    continue
                if out_of_memory:
                    for opt in (step_fn.opt_g, step_fn.opt_d):
                        if opt is not None:
                            opt.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if batch_size <= 1:
                        raise InputError(
                            f"Out of GPU memory even with batch size 1 at patch size {cfg.patch_size}. Use a smaller "
                            "patch_size, a lighter architecture (unet_fast, unet_lite) or device='cpu'."
                        ) from None
                    batch_size = max(1, batch_size // 2)
                    saved_step = -1  # the state is no longer the checkpoint's
                    if step_fn.updating_generator:
                        # the generator's update was applied, at least in part (the error came in its optimiser's
                        # step, the EMA's update or after): the step run again would apply it twice. Back to the
                        # last snapshot, a whole step's state, as a rollback goes
                        restore_snapshot()
                        step, whole_steps = int(snapshot["step"]), True
                        message = (
                            f"Out of GPU memory in the generator's update: back to step {step}, batch size halved "
                            f"to {batch_size}; continuing."
                        )
                    else:
                        # the failed step may have applied some of its critic updates: not a whole-step state
                        whole_steps = False
                        message = f"Out of GPU memory: batch size halved to {batch_size}; continuing."
                    yield self._notice(step, message, "oom")
                    last_time = time.perf_counter()
                    continue
                step += 1
                whole_steps = True
                step_fn.updating_generator = False  # the update is this counted step's (see GanStep.run)
                now = time.perf_counter()
                yield self._emit(
                    Step(
                        step=step,
                        total_steps=total,
                        losses=result,
                        learning_rate=preset.learning_rate * lr_factor,
                        images_per_second=batch_size / max(now - last_time, 1e-9),
                    )
                )
                if step % cfg.validate_every == 0 or step == total:
                    yield from validate()
                # also at every checkpoint: an abort inside a later generator update falls back to the snapshot
                # (keep_latest_weights), which must not be older than the checkpoint on disk. The state was found
                # finite after this step's update (state_checked_after)
                if step % snapshot_every == 0 or step % cfg.checkpoint_every == 0:
                    snapshot = {"step": step, "state": _cpu_clone(step_fn.state_dict())}
                if step % cfg.checkpoint_every == 0 and step != total:
                    event = write_checkpoint()
                    if event is not None:
                        yield event
                last_time = time.perf_counter()
            if stopped and self._interrupts:
                folder = k["checkpoint_dir"]
                written, again = (
                    (" and nothing is written (no checkpoint_dir)", "")
                    if folder is None
                    else (
                        f", its checkpoint is written to {str(folder)!r}",
                        f" (the checkpoint of step {step} is still written)",
                    )
                )
                yield self._notice(
                    step,
                    f"Interrupted (Ctrl-C): stopped after step {step}, as run.stop() does. The newest weights are "
                    f"validated, the best model is returned (run.model){written}. Press Ctrl-C again to abort at "
                    f"once with KeyboardInterrupt{again}.",
                    "interrupted",
                    warn=True,
                )
            if stopped and step > 0 and validated_step != step:
                # the weights trained since the last validation are scored too: a stopped run returns the best of
                # all its weights, not of those that happened to fall on the validation schedule
                yield from validate()
            if validation is None:
                keep_latest_weights()
            self.provenance = self.provenance | {  # replaced, not changed in place: see validate()
                "steps_done": step,
                "batch_size": batch_size,
                "wall_time_s": round(time.perf_counter() - t_start, 2),
                "val_psnr": self._best.psnr,
                "best_step": self._best.step,
                "best_source": self._best.source,
                "stopped": stopped or diverged,
                "rollbacks": rollbacks,
            }
            event = write_checkpoint()
            if event is not None:
                yield event
        except BaseException:
            # The consumer closed the run between two events (left its loop, or dropped the run), a Ctrl-C
            # aborted it (the second one, or one that was not turned into a stop), or an exception ended it (an
            # on_event callback that raised, a progress line on a closed pipe, a device error): keep the state
            # of the last whole step, as a stop would; a step begun but not finished is never written
            # (write_checkpoint skips it, and the checkpoint before it stays). Nothing can be yielded any more,
            # so the notice of a failed write goes only to on_event and the warnings (also where the consumer
            # turned them off: it will not see the event). Whatever the write does, the exception that ended
            # the run is the one raised.
            self.notice_warnings = True
            with contextlib.suppress(BaseException):
                if validation is None:
                    # the model so far (the CLI saves it when a run fails) is the latest whole step's weights, as
                    # a stop returns them, not the untrained base; with validation it is the best validated
                    keep_latest_weights()
                self.provenance = self.provenance | {
                    # the steps the run trained, as a stop says them; the model's own step is its best_step (the
                    # snapshot's, where keep_latest_weights fell back to it)
                    "steps_done": step,
                    "wall_time_s": round(time.perf_counter() - t_start, 2),
                    "stopped": True,
                }
            with contextlib.suppress(BaseException):
                write_checkpoint()
            generator.eval()
            raise
        generator.eval()
        self.finished = Finished(model=self.model, step=step, stopped=stopped or diverged, best_psnr=self._best.psnr)
        yield self._emit(self.finished)


def _crop_axes(axes: str) -> str:
    """What of an image's axes its training crops depend on: where Y, X and the channels are (any other
    letter, T or Z, is one more axis of planes; S and C are both channels)."""
    return "".join(a if a in "YX" else "C" if a in "CS" else "-" for a in str(axes))


def _check_checkpoint_folder(folder: Path) -> None:
    """Check that the checkpoint folder can be created and written, before any training: a run that learns
    only at its first checkpoint that it cannot save one has already spent that time. The folders this check
    creates are removed again (the first checkpoint creates them for good): a run that fails before its first
    step, e.g. on its data, leaves nothing behind, not an empty folder that the next run takes for an earlier
    run's."""
    from ..atomic_files import check_writable

    for attempt in range(3):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"checkpoint_dir {str(folder)!r} is a file; give a folder (it is created if missing).")
        missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]  # deepest first
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"Cannot create the checkpoint folder {str(folder)!r}: {exc.strerror or exc}; "
                "give another checkpoint_dir."
            ) from None
        try:
            check_writable(folder / CHECKPOINT_NAME)
            return
        except InputError:
            # Another run checking the same new folder at the same moment removes it again when its own check
            # ends: found gone, the folder is created and checked once more rather than refused.
            if folder.is_dir() or attempt == 2:
                raise
        finally:
            for created in missing:
                with contextlib.suppress(OSError):  # not empty (another process wrote there meanwhile): kept
                    created.rmdir()


def _same_setting(name: str, given: Any, had: Any) -> bool:
    """Whether a ``blur_strength`` or ``noise`` argument is the checkpoint's setting (``had``, as stored)."""
    try:
        if name == "blur_strength":
            resolved = resolve_blur_strength(given, ("motion",))
            return [list(v) for v in (resolved or {}).values()][:1] == ([had] if had is not None else [])
        resolved = resolve_noise(given)
        return ({key: list(v) for key, v in resolved.items()} if resolved else None) == had
    except InputError:
        return False


def _copy_model(model: DeblurModel) -> DeblurModel:
    """An independent copy (training must not change the caller's model in place)."""
    return model.with_generator(copy.deepcopy(model.generator).cpu())


def _model_file_sha256(model: str | os.PathLike[str]) -> str | None:
    """The sha256 of the file ``load_model(model)`` would read (a shipped name: its registry entry), or None when
    there is no such file; nothing is loaded."""
    from ..model_file import _is_shipped_name, _looks_like_name, _resolve_named

    try:
        path = Path(model)
        if isinstance(model, str) and (_is_shipped_name(model) or (not path.exists() and _looks_like_name(model))):
            return _resolve_named(model)[1].lower()
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, DeblurGANError):
        return None


def _is_default(value: Any, default: Any) -> bool:
    """Whether a setting is its default (False where the comparison cannot tell, e.g. for an array)."""
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def _checkpoint_base(header: dict[str, Any], saved: dict[str, Any]) -> str:
    """The model a checkpointed run started from, in words (its name, its file, or its architecture)."""
    meta = header.get("metadata") or {}
    if meta.get("name"):
        return repr(meta["name"])
    if meta.get("path"):
        return repr(meta["path"])
    if saved.get("base_model_sha256") is None and meta.get("training") is None:
        return f"{header.get('architecture')!r} (from scratch)"
    return f"a {header.get('architecture')} model"


# --------------------------------------------------------------------------------------------- public API
def iter_finetune(
    blurred: Any,
    sharp: Any = None,
    *,
    model: str | os.PathLike[str] | DeblurModel | None = None,
    steps: int | None = None,
    patch_size: int = 128,
    batch_size: int = 8,
    preset: str | Preset = "default",
    learning_rate: float | None = None,
    device: str | None = "auto",
    seed: int | None = None,
    validation: float | tuple[Any, Any] | None = 0.1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    validate_every: int = 100,
    ema: float | None = None,
    blur_kind: str | Mapping[str, float] = "mixed",
    blur_strength: float | tuple[float, float] | None = None,
    noise: Any = "realistic",
    on_event: Callable[[TrainingEvent], Any] | None = None,
    resume: str | os.PathLike[str] | None = None,
    axes: str | Sequence[str | None] | None = None,
    validation_axes: str | None = None,
    channels: int | None = None,
    perceptual_weights: str | os.PathLike[str] | None = None,
    allow_download: bool | None = None,
    preview: bool = True,
    precision: str = "auto",
    teacher: str | os.PathLike[str] | DeblurModel | None = None,
    teacher_weight: float = 0.5,
) -> TrainingRun:
    """Set up a finetuning run and return it (nothing is trained until it is iterated).

    Args:
        blurred: blurred image(s) (array or list of arrays, any axes) paired with ``sharp``; when ``sharp``
            is None these are taken as **sharp** images and blur is synthesised on the fly (a fresh random
            PSF and noise level per crop, of kinds ``blur_kind``).
        sharp: the sharp images, same shape(s) as ``blurred``.
        model: ``"default"`` (the shipped model), a :class:`DeblurModel`, a model file path, or an
            architecture name (``"unet_lite"``, ``"resnet9"``) to train from scratch (``channels`` sets its
            channel count, default 1). None (the default): ``"default"`` for a new run; a resumed run continues
            the checkpoint's model, and a model given that is not the one the run started from is named in
            the resume notice.
        steps: total generator updates (default 1000). A resumed run continues up to this number; left
            unset, up to the checkpoint's own total (its learning-rate schedule depends on the total). 0 trains
            nothing: the starting model is validated on the data (a Validation event) and returned.
        patch_size: side of the square training crops (a multiple of the model's stride; reduced to fit).
            Presets that train a critic need crops of at least ``PatchCritic.smallest_input()`` (24) px.
        batch_size: crops per update (halved automatically on CUDA out-of-memory).
        preset: ``"default"``, ``"deblurgan"`` (paper recipe), ``"content"`` (L1 only), ``"content-mse"``
            (MSE only) or ``"content-psnr"`` (mean over crops of log MSE); see presets.py.
        learning_rate: overrides the preset's generator learning rate (the critic's scales with it).
        device: ``"auto"`` (CUDA > MPS > CPU; None means the same), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.
            Training runs on a copy of ``model`` (a given :class:`DeblurModel` is never moved or changed), and
            the model returned is on the CPU, as :func:`load_model` returns one: ``deblur`` moves it to its own
            ``device``.
        seed: makes the run reproducible (on the CPU exactly); None picks one and records it. An integer >= 0,
            not a numpy Generator (``seed=int(rng.integers(2**31))`` draws one from it).
        validation: held-out fraction, 0/None for none, or an explicit ``(blurred, sharp)`` pair.
        checkpoint_dir: folder for the resumable checkpoint (written every ``checkpoint_every`` steps, on
            stop and at the end); created and checked before training. A write that fails during the run is
            a ``checkpoint-failed`` notice, and the run goes on.
        validate_every: validation interval in steps (also at the start and the end).
        ema: keep an exponential moving average of the generator with this decay (e.g. 0.999); it
            competes with the live weights at validation.
        blur_kind: ``"mixed"``, ``"motion"``, ``"defocus"``, ``"gaussian"``, ``"airy"`` or a comma list, in
            which a kind may carry a relative weight (``"motion:2,defocus,gaussian"``: half of the crops get
            motion blur); a ``{kind: weight}`` mapping works too.
        blur_strength: synthetic blur size in pixels (motion extent, disk/Airy radius, Gaussian sigma) for
            every kind: a number, a ``(low, high)`` range drawn per crop, or None for each kind's default
            range (motion 5-25, defocus 1.5-6, Gaussian 0.8-3.5).
        noise: synthetic noise: ``"realistic"`` (default: 30-1000 photons at the bright end, read noise
            0.5-4 photons, drawn per crop; ``synthesize_blur``'s "realistic" draws read noise from 1-4: training
            covers lower read noise too), None for none, a photon count, or
            ``{"photons": P or (lo, hi), "read_noise": R or (lo, hi)}``.
        on_event: called with every event (also when iterating).
        resume: a ``checkpoint_dir`` of an earlier run, or its ``checkpoint.pt``: continues its step count,
            optimisers, schedule, random streams and recipe (its preset, even a custom one) exactly (pass the
            same data: other data is a ``resume-data`` notice): every step's losses and weights are those of
            the uninterrupted run, bit for bit on the CPU. The weights returned as best can differ: a stop
            validates the newest weights off the validation schedule, and if they score best they stay the
            best. Checkpoints go on into that folder unless ``checkpoint_dir`` is given.
        axes: axes of the images (letters over ``TZCYXS``): one string for every image, or a list of one
            string per image, in the images' order, for a list of images of different axes (``["YX", "ZYX"]``;
            a None entry infers that image's). None infers them from each image's shape by :func:`deblur`'s
            rules: a last axis of 3 or 4 is RGB(A) samples (``S``). A grey stack whose last axis happens to be
            3 or 4 long needs ``axes`` (``"ZYX"``), which is what ``deblur``'s ``rgb=False`` spells; there is
            no ``rgb`` argument here, as ``axes`` says it (the Finetune panel passes each layer's axes, ``S``
            for an RGB layer). A blurred image has its sharp image's axes.
        validation_axes: axes of an explicit ``validation=(blurred, sharp)`` pair. None (the default): ``axes``
            when that is one string (or None), as before; with a list of ``axes`` (one per image) the pair's
            are inferred from its shape, since no entry of the list is the pair's. Not for a held-out
            fraction, whose planes keep their images' axes.
        perceptual_weights: a VGG-19 weight file for the perceptual loss (otherwise torchvision's cache).
        allow_download: allow downloading VGG-19 weights (default: env ``NAPARI_DEBLURGAN_ALLOW_DOWNLOAD``).
        preview: emit :class:`Preview` events (restoration of a fixed validation crop) at each validation.
        precision: ``"auto"`` (bfloat16 autocast on a GPU, float32 on the CPU), ``"float32"``, ``"bfloat16"``
            or ``"float16"``: the arithmetic of the training steps (docs/training.md measures what it costs).
        teacher: self-ensemble distillation (training/distillation.py): a model (file, shipped name or
            :class:`DeblurModel`, often the one being finetuned) whose mean output over the 8 flips/rotations
            of each crop is mixed into the generator's content targets: ``(1 - teacher_weight) * sharp +
            teacher_weight * teacher``. Costs 8 teacher passes per step. None: plain targets.
        teacher_weight: the teacher's share of the targets, in (0, 1] (checked also without a teacher, where
            a weight other than the default is ignored with a notice).
    """
    # "~/..." paths are in the home folder (the messages name the expanded paths); a DeblurModel passes as is
    model, teacher, resume, perceptual_weights = map(expand_user, (model, teacher, resume, perceptual_weights))
    return TrainingRun(
        blurred=blurred,
        sharp=sharp,
        model=model,
        steps=steps,
        patch_size=patch_size,
        batch_size=batch_size,
        preset=preset,
        learning_rate=learning_rate,
        device=device,
        seed=_check_seed(seed),
        validation=validation,
        checkpoint_dir=None if checkpoint_dir is None else Path(expand_user(checkpoint_dir)),
        checkpoint_every=checkpoint_every,
        validate_every=validate_every,
        ema=ema,
        blur_kind=blur_kind,
        blur_strength=blur_strength,
        noise=noise,
        on_event=on_event,
        resume=resume,
        axes=axes,
        validation_axes=validation_axes,
        channels=channels,
        perceptual_weights=perceptual_weights,
        allow_download=allow_download,
        preview=preview,
        precision=precision,
        teacher=teacher,
        teacher_weight=teacher_weight,
    )


def finetune(
    blurred: Any,
    sharp: Any = None,
    *,
    model: str | os.PathLike[str] | DeblurModel | None = None,
    steps: int | None = None,
    patch_size: int = 128,
    batch_size: int = 8,
    preset: str | Preset = "default",
    learning_rate: float | None = None,
    device: str | None = "auto",
    seed: int | None = None,
    validation: float | tuple[Any, Any] | None = 0.1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    validate_every: int = 100,
    ema: float | None = None,
    blur_kind: str | Mapping[str, float] = "mixed",
    blur_strength: float | tuple[float, float] | None = None,
    noise: Any = "realistic",
    on_event: Callable[[TrainingEvent], Any] | None = None,
    resume: str | os.PathLike[str] | None = None,
    axes: str | Sequence[str | None] | None = None,
    validation_axes: str | None = None,
    channels: int | None = None,
    perceptual_weights: str | os.PathLike[str] | None = None,
    allow_download: bool | None = None,
    preview: bool = True,
    precision: str = "auto",
    teacher: str | os.PathLike[str] | DeblurModel | None = None,
    teacher_weight: float = 0.5,
) -> DeblurModel:
    """Finetune (or train) a deblurring model and return the best one; see :func:`iter_finetune`.

    Drives :func:`iter_finetune` to the end, calling ``on_event`` with every event. The returned model's
    ``metadata["training"]`` records the provenance (preset, steps, data shapes, seed, device, wall time,
    validation PSNR).
    """
    run = iter_finetune(
        blurred,
        sharp,
        model=model,
        steps=steps,
        patch_size=patch_size,
        batch_size=batch_size,
        preset=preset,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        validation=validation,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        validate_every=validate_every,
        ema=ema,
        blur_kind=blur_kind,
        blur_strength=blur_strength,
        noise=noise,
        on_event=on_event,
        resume=resume,
        axes=axes,
        validation_axes=validation_axes,
        channels=channels,
        perceptual_weights=perceptual_weights,
        allow_download=allow_download,
        preview=preview,
        precision=precision,
        teacher=teacher,
        teacher_weight=teacher_weight,
    )
    return run.run_to_end()


__all__ = ["GanStep", "NonFiniteLoss", "TrainingRun", "evaluate", "finetune", "image_metrics", "iter_finetune"]

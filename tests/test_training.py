"""The training engine: determinism, exact resume, stop, NaN rollback, OOM halving, fallbacks, events."""

from __future__ import annotations

import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import TINY_RUN_ARGS, tiny_run, tiny_unet
from napari_deblurgan.errors import InputError
from napari_deblurgan.signal_safe_stderr import stderr_from_signal_handlers
from napari_deblurgan.training import events as ev
from napari_deblurgan.training import losses
from napari_deblurgan.training.checkpoint import checkpoint_path, load_checkpoint
from napari_deblurgan.training.presets import get_preset
from napari_deblurgan.training.trainer import GanStep, evaluate, finetune, iter_finetune

# No VGG-19 weights offline: presets with a perceptual term warn about the fallback (tested explicitly below).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]


@pytest.fixture(scope="module")
def pair(training_pair) -> tuple[np.ndarray, np.ndarray]:
    return training_pair  # conftest.py


def _losses(run_events) -> list[dict[str, float]]:
    return [e.losses for e in run_events if isinstance(e, ev.Step)]


def _losses_until_stop(run, at_step: int) -> list[dict[str, float]]:
    """Iterate ``run``, stopping it at ``at_step``; the losses of the steps taken."""
    got = []
    for e in run:
        if isinstance(e, ev.Step):
            got.append(e.losses)
            if e.step == at_step:
                run.stop()
    return got


# this file's runs train with L1 content loss ("content"), not the shared runs' MSE
_RUN_ARGS = {**TINY_RUN_ARGS, "preset": "content"}


def _run(pair, **kw) -> list[ev.TrainingEvent]:
    """The events of a whole tiny run (:func:`tiny_run` with this file's preset)."""
    return list(tiny_run(pair, **{**_RUN_ARGS, **kw}))


def test_same_seed_same_losses_on_cpu(pair):
    a = _losses(_run(pair, preset="default", steps=2))
    b = _losses(_run(pair, preset="default", steps=2))
    assert len(a) == 2 and a == b  # exactly equal, critic and gradient penalty included
    c = _losses(_run(pair, preset="default", steps=2, seed=1))
    assert a != c


def test_resume_continues_exactly(pair, tmp_path):
    straight = _losses(_run(pair, preset="default", steps=4, checkpoint_every=2))

    first = iter_finetune(
        *pair,
        model=tiny_unet(),
        steps=4,
        patch_size=32,
        batch_size=2,
        preset="default",
        device="cpu",
        seed=0,
        validate_every=100,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
    )
    got = _losses_until_stop(first, at_step=2)
    assert len(got) == 2 and first.finished.stopped and first.finished.step == 2
    assert checkpoint_path(tmp_path).is_file()

    resumed = iter_finetune(
        *pair,
        model=tiny_unet(),
        steps=4,
        patch_size=32,
        batch_size=2,
        preset="default",
        device="cpu",
        seed=0,
        validate_every=100,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        resume=tmp_path,
    )
    events = list(resumed)
    assert isinstance(events[0], ev.Started) and events[0].start_step == 2
    rest = _losses(events)
    assert got + rest == straight


def test_a_stop_requested_inside_a_step_still_resumes_exactly(pair, tmp_path, monkeypatch):
    """Stop asked for while a GAN step is between its critic updates (here from inside the step's second
    batch): the step completes, so the checkpoint holds whole steps and the resumed run matches a straight
    one. (Abandoning the step kept its critic updates and drawn batches but not its step number.)"""
    from napari_deblurgan.data.pairs import BatchSource

    kwargs = dict(_RUN_ARGS, preset="deblurgan", steps=3, checkpoint_every=2)  # 5 critic updates per step
    straight = _losses(_run(pair, **kwargs))
    run = iter_finetune(*pair, model=tiny_unet(), **{**kwargs, "checkpoint_dir": tmp_path})
    real, calls = BatchSource.next_batch, []

    def next_batch(self, size):
        calls.append(size)
        if len(calls) == 2:  # the first step's second critic batch
            run.stop()
        return real(self, size)

    monkeypatch.setattr(BatchSource, "next_batch", next_batch)
    got = _losses(list(run))
    monkeypatch.undo()
    assert run.finished.stopped and run.finished.step == 1 and len(got) == 1
    rest = _losses(
        list(iter_finetune(*pair, model=tiny_unet(), **{**kwargs, "checkpoint_dir": tmp_path, "resume": tmp_path}))
    )
    assert got + rest == straight


def test_checkpoint_contents(pair, tmp_path):
    _run(pair, preset="default", steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    payload = load_checkpoint(tmp_path)  # weights_only=True inside
    assert payload["step"] == 2
    for key in ("generator", "critic", "opt_g", "opt_d", "gp_generator"):
        assert payload["state"][key] is not None
    assert {"torch", "numpy_json", "python_json"} <= set(payload["global_rng"])
    assert {"numpy_json", "torch"} <= set(payload["sampler"])
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary files left behind


def test_a_data_warning_of_a_run_names_the_users_line(pair):
    """A pair's check warns from deep inside the run (the data are read when the run is set up): the warning
    must point at the line that started the run, not at a line of the package."""
    blurred, sharp = pair
    with pytest.warns(UserWarning, match="is offset from its sharp image") as record:
        shifted = np.roll(blurred, (6, -4), axis=(0, 1))
        list(iter_finetune(shifted, sharp, model=tiny_unet(), steps=1, patch_size=32, validation=0, device="cpu"))
    assert {w.filename for w in record if "is offset" in str(w.message)} == {__file__}


def test_resuming_with_other_data_says_so(pair, tmp_path):
    """The docs say "pass the same data" to resume: other data is a notice and a warning, not silence."""
    _run(pair, steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    same = _run(pair, steps=3, checkpoint_dir=tmp_path, resume=tmp_path)
    assert not [e for e in same if isinstance(e, ev.Notice) and e.kind == "resume-data"]
    blurred, sharp = pair
    with pytest.warns(UserWarning, match="Resuming with other training data") as record:
        other = _run((blurred[:, :-8], sharp[:, :-8]), steps=4, checkpoint_dir=tmp_path, resume=tmp_path)
    # the consumer's line (here _run's loop), however deep the notice is raised behind the run's generator
    assert {w.filename for w in record if "Resuming with other" in str(w.message)} == {__file__}
    assert [e for e in other if isinstance(e, ev.Notice) and e.kind == "resume-data"]


def test_resume_keeps_the_runs_total_its_folder_and_its_exact_preset(pair, tmp_path):
    """Resumed without steps: the checkpoint's own total, not the default 1000; checkpoints go on into the
    resumed folder; a custom Preset object comes back field for field, not by its (stock) name."""
    from napari_deblurgan.training.presets import get_preset

    custom = get_preset("content").replace(name="mine", content_loss="mse", learning_rate=3e-4)
    straight = _losses(_run(pair, preset=custom, steps=6))
    first = iter_finetune(
        *pair,
        **{
            **_RUN_ARGS,
            "model": tiny_unet(),
            "preset": custom,
            "steps": 6,
            "checkpoint_dir": tmp_path,
            "checkpoint_every": 1,
        },
    )
    got = _losses_until_stop(first, at_step=2)
    resumed = list(iter_finetune(*pair, **{**_RUN_ARGS, "model": tiny_unet(), "steps": None, "resume": tmp_path}))
    assert resumed[0].total_steps == 6 and resumed[0].start_step == 2
    assert got + _losses(resumed) == straight  # the mse recipe, not stock content (L1)
    assert load_checkpoint(tmp_path)["step"] == 6  # written into the resumed folder
    with pytest.raises(InputError, match="below the checkpoint's step 6"):
        iter_finetune(*pair, **{**_RUN_ARGS, "model": tiny_unet(), "steps": 3, "resume": tmp_path})


def test_resuming_pairs_as_synthetic_blur_says_so(pair, tmp_path):
    _run(pair, steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    _blurred, sharp = pair
    with pytest.warns(UserWarning, match="sharp images with synthetic blur now, blurred/sharp pairs then"):
        events = list(iter_finetune(sharp, None, **{**_RUN_ARGS, "model": tiny_unet(), "steps": 3, "resume": tmp_path}))
    assert [e for e in events if isinstance(e, ev.Notice) and e.kind == "resume-data"]


def test_a_killed_save_leaves_no_temporary_files_for_good(pair, tmp_path):
    """kill -9 during a save leaves its .part file; a later save removes such leftovers once they are old
    (a fresh one may be another process's save in progress: two runs given one folder must both finish)."""
    import os

    from napari_deblurgan.atomic_files import STALE_PART_SECONDS

    _run(pair, steps=1, checkpoint_dir=tmp_path, checkpoint_every=1)
    leftover, in_progress = tmp_path / ".checkpoint.pt.abc123.part", tmp_path / ".checkpoint.pt.def456.part"
    leftover.write_bytes(b"half a checkpoint")
    in_progress.write_bytes(b"another run's save")
    old = time.time() - STALE_PART_SECONDS - 60
    os.utime(leftover, (old, old))
    _run(pair, steps=2, checkpoint_dir=tmp_path, resume=tmp_path)
    assert not leftover.exists() and in_progress.exists() and load_checkpoint(tmp_path)["step"] == 2


def test_neither_a_run_nor_its_resume_touches_the_callers_global_rng(pair, tmp_path):
    import random

    def states():
        return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()

    def same(a, b):
        return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = states()
    _run(pair, preset="default", steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert same(before, states())
    torch.rand(3), np.random.rand(3), random.random()  # the caller's own draws between the two runs
    before = states()
    run = iter_finetune(
        *pair, **{**_RUN_ARGS, "model": tiny_unet(), "preset": "default", "steps": 4, "resume": tmp_path}
    )
    assert same(before, states())
    list(run)
    assert same(before, states())


def test_recipe_arguments_that_a_resume_replaces_are_named(pair, tmp_path):
    _run(pair, steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    events = list(
        iter_finetune(
            *pair,
            **{
                **_RUN_ARGS,
                "model": tiny_unet(),
                "steps": 3,
                "resume": tmp_path,
                "batch_size": 4,
                "learning_rate": 1e-5,
            },
        )
    )
    notes = [e.message for e in events if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message]
    assert len(notes) == 1 and "batch_size 2 (not 4)" in notes[0]
    assert "learning_rate the preset's (not 1e-05)" in notes[0]
    assert "ema" not in notes[0]  # not given


def test_resuming_a_run_without_ema_with_one_says_the_checkpoint_had_none(pair, tmp_path):
    _run(pair, steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    events = list(
        iter_finetune(*pair, **{**_RUN_ARGS, "model": tiny_unet(), "steps": 3, "resume": tmp_path, "ema": 0.99})
    )
    notes = [e.message for e in events if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message]
    assert len(notes) == 1 and "ema None (not 0.99)" in notes[0] and "preset's" not in notes[0], notes
    same = list(iter_finetune(*pair, **{**_RUN_ARGS, "model": tiny_unet(), "steps": 4, "resume": tmp_path}))
    assert not [e for e in same if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message]


def test_a_new_run_into_a_used_checkpoint_dir_says_it_replaces_it(pair, tmp_path):
    _run(pair, steps=1, checkpoint_dir=tmp_path, checkpoint_every=1)
    with pytest.warns(UserWarning, match="holds the checkpoint of an earlier run"):
        events = _run(pair, steps=1, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert [e for e in events if isinstance(e, ev.Notice) and "holds the checkpoint of an earlier run" in e.message]


def test_resume_from_missing_dir_is_input_error(pair, tmp_path):
    with pytest.raises(InputError, match="No training checkpoint"):
        iter_finetune(*pair, model=tiny_unet(), resume=tmp_path / "nope", device="cpu")


def test_stop_from_another_thread_ends_the_run_after_the_step_in_progress(pair):
    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        steps=100_000,
        patch_size=32,
        batch_size=2,
        preset="content",
        device="cpu",
        seed=0,
        validate_every=1000,
    )
    seen: list = []
    first_step = threading.Event()

    def consume():
        for e in run:
            seen.append(e)
            if isinstance(e, ev.Step):
                first_step.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert first_step.wait(120)
    steps_seen = [e.step for e in list(seen) if isinstance(e, ev.Step)]
    run.stop()
    worker.join(60)
    assert not worker.is_alive()
    assert isinstance(seen[-1], ev.Finished) and seen[-1].stopped
    # honoured after the step in progress: at most one step past the last one the consumer had seen
    assert seen[-1].step <= steps_seen[-1] + 1
    assert run.model.generator.training is False


def test_nan_loss_rolls_back_and_halves_the_learning_rate(pair, monkeypatch):
    calls = {"n": 0}
    real = losses.content_loss

    def flaky(fake, sharp, kind="l1"):
        calls["n"] += 1
        value = real(fake, sharp, kind)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(losses, "content_loss", flaky)
    events = _run(pair, steps=4, preset="content")
    notices = [e for e in events if isinstance(e, ev.Notice) and e.kind == "rollback"]
    assert len(notices) == 1 and "halved" in notices[0].message
    steps = [e for e in events if isinstance(e, ev.Step)]
    # the schedule continues from the snapshot (step 0 here) with half the rate
    assert [s.step for s in steps] == [1, 2, 1, 2, 3, 4]
    assert steps[2].learning_rate == pytest.approx(steps[0].learning_rate / 2)
    assert all(np.isfinite(v) for s in steps for v in s.losses.values())
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4 and not events[-1].stopped


def test_cuda_oom_halves_the_batch(pair, monkeypatch):
    real_run = GanStep.run
    state = {"raised": False}

    def oom_once(self, next_batch, batch_size, **kw):
        if not state["raised"]:
            state["raised"] = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_run(self, next_batch, batch_size, **kw)

    monkeypatch.setattr(GanStep, "run", oom_once)
    events = _run(pair, steps=2, batch_size=4)
    notices = [e for e in events if isinstance(e, ev.Notice) and e.kind == "oom"]
    assert len(notices) == 1 and "halved to 2" in notices[0].message
    assert len([e for e in events if isinstance(e, ev.Step)]) == 2
    assert events[-1].model.metadata["training"]["batch_size"] == 2


def test_oom_at_batch_one_is_an_input_error(pair, monkeypatch):
    def always_oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("injected")

    monkeypatch.setattr(GanStep, "run", always_oom)
    with pytest.raises(InputError, match="batch size 1"):
        _run(pair, steps=2, batch_size=1)


def test_perceptual_fallback_warns_and_uses_critic_features(pair, monkeypatch, tmp_path):
    from napari_deblurgan.training import perceptual

    monkeypatch.setattr(perceptual, "cached_vgg19_path", lambda: tmp_path / "no-vgg.pth")
    monkeypatch.delenv(perceptual.ALLOW_DOWNLOAD_ENV, raising=False)
    received = []
    with pytest.warns(UserWarning, match="feature matching"):
        events = _run(pair, steps=1, preset="deblurgan", batch_size=1, on_event=received.append)
    assert received == events  # on_event sees the same events, in the same order
    started = events[0]
    assert isinstance(started, ev.Started) and started.perceptual == "critic-features"
    assert any(isinstance(e, ev.Notice) and e.kind == "perceptual-fallback" for e in events)
    step = next(e for e in events if isinstance(e, ev.Step))
    assert "feature_matching" in step.losses and "perceptual" not in step.losses
    assert {"critic", "gradient_penalty", "adversarial"} <= set(step.losses)


def test_missing_perceptual_weight_file_is_input_error(tmp_path):
    from napari_deblurgan.training.perceptual import load_vgg_features

    with pytest.raises(InputError, match="does not exist"):
        load_vgg_features(tmp_path / "vgg.pth")


def test_event_sequence_and_result(pair, tmp_path):
    model = tiny_unet()
    model.metadata.update(name="mybase", description="the base model")
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    seen = []
    result = finetune(
        *pair,
        model=model,
        steps=4,
        patch_size=32,
        batch_size=2,
        preset="content",
        device="cpu",
        seed=0,
        validate_every=2,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        on_event=seen.append,
        ema=0.9,
    )
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Started" and kinds[-1] == "Finished"
    assert kinds.count("Step") == 4
    vals = [e for e in seen if isinstance(e, ev.Validation)]
    assert [v.step for v in vals if v.source == "generator"] == [0, 2, 4]
    assert {v.source for v in vals if v.step > 0} == {"generator", "ema"}
    assert vals[0].is_best  # the starting model is the first candidate
    previews = [e for e in seen if isinstance(e, ev.Preview)]
    assert len(previews) == 3 and previews[0].image.shape == previews[0].target.shape == (32, 32)
    assert [e.step for e in seen if isinstance(e, ev.CheckpointSaved)] == [2, 4]
    # provenance
    meta = result.metadata["training"]
    assert meta["preset"] == "content" and meta["steps_done"] == 4 and meta["seed"] == 0
    # a finetuned model is not its base: no inherited name, a description that says where it came from
    assert result.metadata.get("name") is None
    assert result.metadata["description"] == "finetuned from mybase (unet_lite)"
    assert meta["base_model"] == "mybase"
    assert meta["data_shapes"] == [[96, 96]] and meta["device"] == "cpu" and meta["wall_time_s"] > 0
    assert meta["val_psnr"] == pytest.approx(max(v.psnr for v in vals))
    assert result.generator.training is False
    # the caller's model is not trained in place
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, before[k])


def test_content_mse_preset_uses_the_squared_error(pair):
    """Same model, seed and first batch: content-mse reports the MSE of the prediction that content's L1 sees."""
    l1 = _losses(_run(pair, steps=1, preset="content"))[0]["content"]
    mse = _losses(_run(pair, steps=1, preset="content-mse"))[0]["content"]
    # mean(e^2) >= mean(|e|)^2 (Jensen), and the two differ unless every |e| is equal
    assert l1**2 <= mse and mse != pytest.approx(l1, rel=0.05)


def test_content_psnr_preset_averages_each_crops_log_mse(pair):
    """content-psnr reports the mean over crops of log(MSE + floor), which is below log of the pooled MSE."""
    mse = _losses(_run(pair, steps=1, preset="content-mse"))[0]["content"]
    log_mse = _losses(_run(pair, steps=1, preset="content-psnr"))[0]["content"]
    assert log_mse < 0 and log_mse <= np.log(mse + 1e-6) + 1e-6  # Jensen: mean of logs <= log of the mean


def test_log_mse_weighs_every_crops_relative_error_alike():
    """Under the pooled MSE a crop with 10x smaller errors gets a 10x smaller gradient; under log-mse each
    crop's gradient is its error relative to its own MSE (10x larger for that crop), and scaling a crop's
    intensities shifts the loss by a constant (issue 4: smooth, nearly restored crops must not drown next
    to motion-blurred beads)."""
    import torch

    from napari_deblurgan.training.losses import content_loss

    real = torch.zeros(2, 1, 8, 8)
    pattern = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    grads = {}
    for kind in ("mse", "log-mse"):
        fake = torch.stack([0.1 * pattern, 0.01 * pattern]).requires_grad_(True)
        content_loss(fake, real, kind).backward()
        norms = fake.grad.flatten(1).norm(dim=1)
        grads[kind] = (norms[0] / norms[1]).item()
    assert grads["mse"] == pytest.approx(10.0, rel=1e-3)
    assert grads["log-mse"] == pytest.approx(0.1, rel=0.05)  # (the floor, 1e-6, is 3 % of the small MSE)
    # scaling one crop (target and restoration alike) shifts the loss by a constant: no crop outweighs another
    fake = torch.stack([0.1 * pattern, 0.01 * pattern])
    scaled = fake * torch.tensor([10.0, 1.0]).view(2, 1, 1, 1)
    shift = content_loss(scaled, real, "log-mse") - content_loss(fake, real, "log-mse")
    assert shift.item() == pytest.approx(np.log(100.0) / 2, rel=1e-3)


def test_sharp_only_data_trains_with_synthetic_blur(pair):
    _, sharp = pair
    events = list(
        iter_finetune(
            sharp,
            model=tiny_unet(),
            steps=2,
            patch_size=32,
            batch_size=2,
            preset="content",
            device="cpu",
            seed=0,
            blur_kind="gaussian",
            validation=0.3,
        )
    )
    assert "synthetic" in events[0].train_samples
    val = next(e for e in events if isinstance(e, ev.Validation))
    assert val.psnr_input < 60  # the validation inputs really are blurred


def test_train_from_architecture_name(pair):
    events = _run(pair, model="unet_lite", steps=1, patch_size=32)
    assert isinstance(events[-1], ev.Finished) and events[-1].model.architecture == "unet_lite"


def test_bad_arguments_raise_input_errors(pair):
    with pytest.raises(InputError, match="preset"):
        iter_finetune(*pair, model=tiny_unet(), preset="magic", device="cpu")
    with pytest.raises(InputError, match="steps"):
        iter_finetune(*pair, model=tiny_unet(), steps=-1, device="cpu")
    with pytest.raises(InputError, match="ema"):
        iter_finetune(*pair, model=tiny_unet(), ema=1.5, device="cpu")
    with pytest.raises(InputError, match="architecture"):
        iter_finetune(*pair, model=3, device="cpu")
    for kwargs, match in [
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ({"ema": "a"}, "ema"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"on_event": 3}, "on_event must be a function"),
        ({"model": "unet_lite", "channels": 0}, "channels must be a whole number >= 1"),
    ]:
        with pytest.raises(InputError, match=match):
            iter_finetune(*pair, **{"model": tiny_unet(), "device": "cpu", **kwargs})


def test_a_checkpoint_dir_that_is_a_file_is_refused(pair, tmp_path):
    afile = tmp_path / "not_a_folder"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file; give a folder"):
        iter_finetune(*pair, model=tiny_unet(), device="cpu", checkpoint_dir=afile)
    assert afile.read_text() == "x"


def test_numpy_scalars_are_accepted_as_options(pair):
    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        device="cpu",
        steps=np.int64(2),
        batch_size=np.int64(2),
        patch_size=np.int64(32),
        learning_rate=np.float32(1e-4),
    )
    list(run)
    assert run.model is not None


def test_auto_precision_reduces_only_on_cuda():
    from napari_deblurgan.devices import training_autocast_dtype

    assert training_autocast_dtype("auto", torch.device("cpu")) is None
    assert training_autocast_dtype("auto", torch.device("mps")) is None  # never measured there: float32
    assert training_autocast_dtype("float32", torch.device("cuda")) is None
    assert training_autocast_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


def test_precision_is_checked_up_front(pair):
    with pytest.raises(InputError, match="precision must be one of"):
        iter_finetune(*pair, model=tiny_unet(), precision="int8", device="cpu")
    with pytest.raises(InputError, match="float16' needs a GPU"):
        iter_finetune(*pair, model=tiny_unet(), precision="float16", device="cpu")


def test_bfloat16_precision_autocasts_on_the_cpu_and_is_recorded_and_resumed(pair, tmp_path):
    autocast_dtypes = []

    class Spy(torch.nn.Module):  # records the dtype the generator computes in during the training step
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            autocast_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.inner(x)

    events = _run(pair, precision="bfloat16", steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    result = next(e for e in events if isinstance(e, ev.Finished)).model
    assert result.metadata["training"]["precision"] == "bfloat16"
    assert result.metadata["training"]["autocast_dtype"] == "bfloat16"
    assert all(np.isfinite(v) for losses_ in _losses(events) for v in losses_.values())
    # the default on the CPU stays float32
    plain = next(e for e in _run(pair, steps=1) if isinstance(e, ev.Finished)).model
    assert plain.metadata["training"]["precision"] == "auto"
    assert plain.metadata["training"]["autocast_dtype"] is None
    # a resumed run keeps the checkpoint's precision whatever it is given
    resumed = iter_finetune(
        *pair, model=tiny_unet(), steps=3, patch_size=32, batch_size=2, preset="content", device="cpu", seed=0,
        validate_every=100, checkpoint_dir=tmp_path, resume=tmp_path, precision="float32",
    )  # fmt: skip
    assert resumed.config.precision == "bfloat16"

    step = GanStep(
        Spy(tiny_unet().generator),
        None,
        get_preset("content"),
        torch.device("cpu"),
        perceptual=None,
        feature_matching=False,
        ema_decay=None,
        seed=0,
        precision="bfloat16",
    )
    batch = (torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    assert step.run(lambda n: batch, 2) is not None
    assert autocast_dtypes == [torch.bfloat16]


def test_evaluate_runs_in_eval_mode_and_restores_train_mode():
    modes = []
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.BatchNorm2d(1))
    net.register_forward_hook(lambda m, i, o: modes.append(m.training))
    net.train()
    x = torch.rand(2, 1, 16, 16)
    evaluate(net, x, x, batch_size=2)
    assert modes == [False] and net.training


def test_gradient_penalty_is_per_sample():
    """A critic that is linear with slope 1 per sample has zero penalty only if the norm is per sample."""

    class Linear(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1, keepdim=True) / np.sqrt(x[0].numel())

    real, fake = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    gp = losses.gradient_penalty(Linear(), real, fake)
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_synthetic_blur_settings_are_used_recorded_and_resumed(pair, tmp_path):
    """blur_strength/noise change the training data, land in the provenance, and survive a resume."""
    sharp = pair[1]

    def synthetic_run(**kw):
        return _run((sharp, None), blur_kind="gaussian", validation=0.0, **kw)

    quiet = synthetic_run(blur_strength=1.0, noise=None)
    noisy = synthetic_run(blur_strength=3.0, noise={"photons": 5, "read_noise": 1})
    assert _losses(quiet) != _losses(noisy)
    provenance = quiet[-1].model.metadata["training"]["synthetic_blur"]
    assert provenance == {
        "kinds": ["gaussian"],
        "kind_weights": None,
        "strength_px": [1.0, 1.0],
        "noise": None,
        "psf_block": 1,
    }  # one batch's PSFs at a time on a CPU

    first = iter_finetune(
        sharp,
        None,
        model=tiny_unet(),
        steps=4,
        patch_size=32,
        batch_size=2,
        preset="content",
        device="cpu",
        seed=0,
        validation=0.0,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        blur_kind="gaussian:3,defocus",
        blur_strength=2.0,
        noise=None,
    )
    for e in first:
        if isinstance(e, ev.Step) and e.step == 2:
            first.stop()
    # resumed without repeating the settings: the checkpoint's recipe wins
    resumed = list(iter_finetune(sharp, None, model=tiny_unet(), steps=4, device="cpu", resume=tmp_path))
    meta = resumed[-1].model.metadata["training"]["synthetic_blur"]
    assert meta == {
        "kinds": ["gaussian", "defocus"],
        "kind_weights": [3.0, 1.0],
        "strength_px": [2.0, 2.0],
        "noise": None,
        "psf_block": 1,
    }


def test_a_finetuned_model_gets_its_own_date_not_its_bases(pair, tmp_path):
    """The shipped stage-6 file said it was created on stage 1's date: the base's metadata was copied whole."""
    base = tiny_unet()
    base.metadata["created"] = "2001-01-01T00:00:00+00:00"
    base.metadata["package_version"] = "0.0.1"
    events = _run(pair, model=base, steps=2)
    model = events[-1].model
    assert "created" not in model.metadata and "package_version" not in model.metadata
    from napari_deblurgan import load_model

    saved = load_model(model.save(tmp_path / "tuned.pt"))
    assert saved.metadata["created"] > "2026"  # stamped when saved
    assert saved.metadata["package_version"] != "0.0.1"
    assert saved.metadata["training"]["base_model"] is not None


def test_a_finetuned_model_keeps_its_bases_border_context_also_when_resumed(pair, tmp_path):
    """``context_padding`` is a property measured for the base's weights: finetuning starts from them."""
    base = tiny_unet()
    base.context_padding = 0
    assert _run(pair, model=base, steps=2)[-1].model.context_padding == 0

    first = iter_finetune(
        *pair, **{**_RUN_ARGS, "model": base, "steps": 4, "checkpoint_dir": tmp_path, "checkpoint_every": 2}
    )
    for e in first:
        if isinstance(e, ev.Step) and e.step == 2:
            first.stop()
    resumed = list(
        iter_finetune(
            *pair, **{**_RUN_ARGS, "model": tiny_unet(), "steps": 4, "checkpoint_dir": tmp_path, "resume": tmp_path}
        )
    )
    assert resumed[-1].model.context_padding == 0  # from the checkpoint, not from the model passed in
    assert _run(pair, steps=2)[-1].model.context_padding is None


def test_validation_psnr_is_the_mean_over_crops_not_the_pooled_psnr():
    """Every validation crop counts alike, as in the model card's protocol: a crop restored perfectly and one
    at 20 dB average to 60 dB (a perfect crop's MSE is floored at 1e-10, 100 dB), where pooling the two crops'
    errors would give 23 dB, dominated by the bad one."""
    from napari_deblurgan.training.trainer import VALIDATION_METRIC, image_metrics

    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 0.8, (2, 1, 16, 16)).astype(np.float32)
    image = target.copy()
    image[1] += np.where(rng.random((1, 16, 16)) < 0.5, 0.1, -0.1).astype(np.float32)  # MSE 0.01: 20 dB
    psnr, ssim = image_metrics(target, image)
    assert psnr == pytest.approx(60.0, abs=1e-3)
    assert 0 < ssim < 1
    assert VALIDATION_METRIC == "mean PSNR over crops"


def test_resuming_a_checkpoint_scored_another_way_rescores_its_best_weights(pair, tmp_path):
    """A checkpoint written before the validation PSNR became the mean over crops carries a best PSNR of the
    old kind; comparing new scores with it could keep the wrong weights for the rest of the run."""
    import json

    from napari_deblurgan.training.checkpoint import save_checkpoint

    kwargs = dict(_RUN_ARGS, steps=4, validate_every=2, checkpoint_dir=tmp_path, checkpoint_every=2, ema=None)
    first = iter_finetune(*pair, model=tiny_unet(), **kwargs)
    for e in first:
        if isinstance(e, ev.Step) and e.step == 2:
            first.stop()
    payload = load_checkpoint(tmp_path)
    saved = json.loads(payload["json"])
    assert saved["validation_metric"] == "mean PSNR over crops"
    honest_best = saved["best_psnr"]
    # pretend an older version wrote it: no metric name, and a best score that nothing can beat
    del saved["validation_metric"]
    saved["best_psnr"] = 999.0
    payload["json"] = json.dumps(saved)
    payload = {k: v for k, v in payload.items() if k not in ("format", "version")}
    save_checkpoint(tmp_path, payload)

    events = list(iter_finetune(*pair, model=tiny_unet(), resume=tmp_path, **kwargs))
    notes = [e.message for e in events if isinstance(e, ev.Notice) and "re-scored" in e.message]
    assert len(notes) == 1 and "999.00" in notes[0]
    finished = events[-1]
    assert isinstance(finished, ev.Finished) and finished.best_psnr < 999
    assert finished.best_psnr >= honest_best - 1e-6  # the re-scored best weights are those of the first run
    # the same checkpoint with the current metric name is trusted as it is: no re-scoring
    saved["validation_metric"] = "mean PSNR over crops"
    payload["json"] = json.dumps(saved)
    save_checkpoint(tmp_path, payload)
    events = list(iter_finetune(*pair, model=tiny_unet(), resume=tmp_path, **kwargs))
    assert not [e for e in events if isinstance(e, ev.Notice) and "re-scored" in e.message]
    assert events[-1].best_psnr == 999.0


def test_resuming_with_other_validation_crops_rescores_the_kept_best_on_them(pair, tmp_path):
    """The checkpoint's best PSNR was measured on its own validation crops; a resume given other ones (here
    an explicit validation pair) re-scores the kept best weights on the new crops, so that the run keeps the
    best of one test. Resuming with the same data trusts the checkpoint's score."""
    import json

    blurred, sharp = pair
    kwargs = dict(_RUN_ARGS, steps=4, validate_every=2, checkpoint_dir=tmp_path, checkpoint_every=2, ema=None)
    first = iter_finetune(blurred, sharp, model=tiny_unet(), **kwargs)
    for e in first:
        if isinstance(e, ev.Step) and e.step == 2:
            first.stop()
    saved = json.loads(load_checkpoint(tmp_path)["json"])
    assert len(saved["validation_fingerprint"]) == 16
    same = list(iter_finetune(blurred, sharp, model=tiny_unet(), resume=tmp_path, **{**kwargs, "steps": 2}))
    assert not [e for e in same if isinstance(e, ev.Notice) and "re-scored" in e.message]
    assert same[-1].best_psnr == saved["best_psnr"]

    other = (np.ascontiguousarray(blurred[::-1, :64]), np.ascontiguousarray(sharp[::-1, :64]))
    events = list(iter_finetune(blurred, sharp, model=tiny_unet(), resume=tmp_path, validation=other, **kwargs))
    notes = [e.message for e in events if isinstance(e, ev.Notice) and "re-scored" in e.message]
    assert len(notes) == 1 and "validation crops differ" in notes[0] and f"{saved['best_psnr']:.2f}" in notes[0]
    rescored = float(notes[0].rsplit(": ", 1)[1].rstrip(" dB."))
    validations = [e.psnr for e in events if isinstance(e, ev.Validation)]
    assert validations and abs(rescored - saved["best_psnr"]) > 0.01  # another test, another score
    assert events[-1].best_psnr == pytest.approx(max([rescored, *validations]), abs=0.006)


def test_resume_accepts_the_checkpoint_file_a_run_reports_and_folders_may_end_in_pt(pair, tmp_path):
    events = _run(pair, steps=2, checkpoint_dir=tmp_path / "run.pt", checkpoint_every=1)
    saved = [e for e in events if isinstance(e, ev.CheckpointSaved)]
    assert (tmp_path / "run.pt").is_dir() and saved and Path(saved[-1].path) == tmp_path / "run.pt" / "checkpoint.pt"
    resumed = _run(pair, steps=3, resume=saved[-1].path)  # the file, as reported
    assert resumed[0].start_step == 2 and resumed[-1].step == 3
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 3  # went on checkpointing into the same folder


def test_a_checkpoint_folder_that_cannot_be_written_is_said_before_training(pair, tmp_path):
    (tmp_path / "a_file.tif").write_bytes(b"not a folder")
    started = []
    with pytest.raises(InputError, match="checkpoint folder"):
        _run(pair, steps=2, checkpoint_dir=tmp_path / "a_file.tif" / "ck", on_event=started.append)
    assert not started


def test_a_new_checkpoint_folder_removed_by_another_runs_check_is_created_again(pair, tmp_path, monkeypatch):
    """Two runs checking the same new checkpoint folder at once: one's check ends by removing the folder it
    created, which the other had found there. The other creates it again rather than refusing to start."""
    from napari_deblurgan import atomic_files

    real, calls = atomic_files.check_writable, []

    def other_run_cleans_up_first(path):
        calls.append(path)
        if len(calls) == 1:
            Path(path).parent.rmdir()  # what the other run's check does as it ends
        return real(path)

    monkeypatch.setattr(atomic_files, "check_writable", other_run_cleans_up_first)
    events = _run(pair, steps=1, checkpoint_dir=tmp_path / "new" / "run", checkpoint_every=1)
    assert calls[0] == calls[1] and isinstance(events[-1], ev.Finished)  # checked twice, then trained
    assert (tmp_path / "new" / "run" / "checkpoint.pt").is_file()


def test_a_failed_checkpoint_write_is_a_notice_and_the_run_goes_on(pair, tmp_path, monkeypatch):
    """Disk full at a checkpoint: the run finishes and returns its model; the last good checkpoint stays."""
    import errno

    from napari_deblurgan.training import trainer

    real, calls = trainer.save_checkpoint, []

    def failing_second_save(directory, payload):
        calls.append(payload["step"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, payload)

    monkeypatch.setattr(trainer, "save_checkpoint", failing_second_save)
    with pytest.warns(UserWarning, match="Could not write the checkpoint at step 2"):
        events = _run(pair, steps=3, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 3 and not events[-1].stopped
    assert [e.kind for e in events if isinstance(e, ev.Notice) and e.kind != "info"] == ["checkpoint-failed"]
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [1, 3]


def test_a_stop_right_after_a_checkpoint_writes_it_once(pair, tmp_path):
    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        **{**_RUN_ARGS, "steps": 6, "checkpoint_dir": tmp_path, "checkpoint_every": 2, "validate_every": 2},
    )
    events = []
    for e in run:
        events.append(e)
        if isinstance(e, ev.CheckpointSaved):
            run.stop()
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [2]


def test_closing_the_event_stream_early_keeps_a_checkpoint_of_the_last_step(pair, tmp_path):
    run = iter_finetune(
        *pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 50, "checkpoint_dir": tmp_path, "checkpoint_every": 100}
    )
    stream = iter(run)
    for e in stream:
        if isinstance(e, ev.Step) and e.step == 3:
            break
    stream.close()  # as when a consumer leaves its loop and drops the run
    assert load_checkpoint(tmp_path)["step"] == 3


def test_resume_names_every_recipe_argument_it_replaces_and_keeps_the_base_models_sha256(
    pair, tmp_path, tiny_model_file
):
    from napari_deblurgan import load_model

    with pytest.warns(UserWarning, match="blur_strength is ignored: blurred/sharp pairs were given"):
        first = _run(
            pair, model=str(tiny_model_file), steps=2, checkpoint_dir=tmp_path, checkpoint_every=1, blur_strength=2.0
        )
    sha = first[-1].model.metadata["training"]["base_model_sha256"]
    assert sha == load_model(tiny_model_file).metadata["sha256"]
    with pytest.warns(UserWarning):  # other data: sharp-only now
        events = _run(
            (pair[1], None),
            model="unet_fast",
            channels=2,
            steps=3,
            resume=tmp_path,
            blur_strength=(5.0, 6.0),
            noise=None,
        )
    note = next(e.message for e in events if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message)
    for name in (f"model {str(tiny_model_file)!r} (not 'unet_fast')", "channels 1", "blur_strength", "noise"):
        assert name in note, (name, note)
    assert events[-1].model.metadata["training"]["base_model_sha256"] == sha
    with (
        pytest.warns(UserWarning, match="other training data"),  # pairs now, synthetic blur then
        pytest.warns(UserWarning, match="blur_strength is ignored: blurred/sharp pairs were given"),
    ):
        same = _run(pair, steps=3, resume=tmp_path, blur_strength=2.0)  # the same setting, written another way
    assert not [e for e in same if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message]


def test_resume_names_a_model_given_that_is_not_the_one_the_run_started_from(pair, tmp_path, tiny_model_file):
    """Not only another architecture: another file or shipped model of the same one (a run started from `fast`
    resumed with model="default" had continued from `fast` without a word)."""

    def notes(events):
        return [e.message for e in events if isinstance(e, ev.Notice) and "keeps the checkpoint's recipe" in e.message]

    _run(pair, model=str(tiny_model_file), steps=1, checkpoint_dir=tmp_path, checkpoint_every=1)
    other = tiny_unet(seed=1).save(tmp_path / "other.pt")
    for given, shown in ((str(other), repr(str(other))), ("unet_lite", "'unet_lite'"), ("default", "'default'")):
        note = notes(_run(pair, model=given, steps=1, resume=tmp_path))
        assert note == [
            f"Resuming keeps the checkpoint's recipe: model {str(tiny_model_file)!r} (not {shown}). Start "
            "a new run (without resume) to change it."
        ], given
    for same in (str(tiny_model_file), None):  # the file it started from, or no model: the run's own
        assert not notes(_run(pair, model=same, steps=1, resume=tmp_path))
    scratch = tmp_path / "scratch"
    _run(pair, model="unet_lite", steps=1, checkpoint_dir=scratch, checkpoint_every=1)
    assert not notes(_run(pair, model="unet_lite", steps=1, resume=scratch))
    assert notes(_run(pair, model=str(tiny_model_file), steps=1, resume=scratch)) == [
        f"Resuming keeps the checkpoint's recipe: model 'unet_lite' (from scratch) (not {str(tiny_model_file)!r}). "
        "Start a new run (without resume) to change it."
    ]


def test_run_model_metadata_describes_the_run_so_far(pair):
    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 6, "validate_every": 2})
    at_step_4 = []  # the metadata as it was when step 4's validation came (asserted after the loop: it must come)
    for e in run:
        if isinstance(e, ev.Validation) and e.step == 4:
            at_step_4.append(dict(run.model.metadata["training"]))
            run.stop()
    assert len(at_step_4) == 1
    assert at_step_4[0]["steps_done"] == 4 and at_step_4[0]["val_psnr"] is not None


def test_a_checkpoint_from_another_kind_of_device_resumes_with_a_notice(pair, tmp_path):
    """CPU and CUDA random generators keep states of different formats: a CUDA checkpoint's gradient-penalty
    generator state (16 bytes, faked here) cannot be set on a CPU generator. The run reseeds it and says so."""
    from napari_deblurgan.training.checkpoint import save_checkpoint

    kwargs = dict(_RUN_ARGS, preset="default", steps=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    _run(pair, **kwargs)
    payload = load_checkpoint(tmp_path)
    payload["state"]["gp_generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    save_checkpoint(tmp_path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.warns(UserWarning, match="another kind of device"):
        events = _run(pair, **{**kwargs, "steps": 3, "resume": tmp_path})
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 3
    assert all(np.isfinite(v) for loss in _losses(events) for v in loss.values())


def test_a_resume_told_to_checkpoint_into_another_runs_folder_says_so(pair, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(pair, steps=2, checkpoint_dir=a, checkpoint_every=1)
    _run(pair, steps=2, checkpoint_dir=b, checkpoint_every=1)
    with pytest.warns(UserWarning, match="holds the checkpoint of an earlier run"):
        _run(pair, steps=3, resume=a, checkpoint_dir=b)
    events = _run(pair, steps=4, resume=a)  # its own folder: nothing to say
    assert not any(isinstance(e, ev.Notice) and "holds the checkpoint" in e.message for e in events)


def test_a_stopped_run_validates_its_last_weights_before_choosing(pair):
    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 50, "validate_every": 4})
    events = []
    for e in run:
        events.append(e)
        if isinstance(e, ev.Step) and e.step == 6:
            run.stop()
    validated = [e.step for e in events if isinstance(e, ev.Validation)]
    assert validated == [0, 4, 6]  # step 6's weights were scored before the run chose its model
    assert events[-1].stopped and events[-1].best_psnr == max(e.psnr for e in events if isinstance(e, ev.Validation))


def test_the_final_checkpoint_is_rewritten_when_the_stop_finds_a_new_best(pair, tmp_path):
    """A stop right after a checkpoint validates the newest weights; if they are the best, the checkpoint
    must say so (it kept the older best: a resume would never score the newer weights again)."""
    import json

    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        **{
            **_RUN_ARGS,
            "steps": 20,
            "validate_every": 3,
            "checkpoint_every": 4,
            "checkpoint_dir": tmp_path,
            "learning_rate": 1e-2,
        },
    )
    for e in run:
        if isinstance(e, ev.CheckpointSaved) and e.step == 4:
            run.stop()
    saved = json.loads(load_checkpoint(tmp_path)["json"])
    assert run.finished.step == 4
    assert saved["best_step"] == run.provenance["best_step"]
    assert saved["best_psnr"] == pytest.approx(run.finished.best_psnr)


def test_a_rollback_after_a_checkpoint_is_saved_at_the_stop(pair, tmp_path, monkeypatch):
    """A non-finite loss rolls the run back to its snapshot (a checkpoint's step) and halves the learning rate;
    a stop then must write that state, not keep the checkpoint from before the rollback."""
    import json

    calls = {"n": 0}
    real = losses.content_loss

    def nan_at_step_6(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] == 6 else value

    monkeypatch.setattr(losses, "content_loss", nan_at_step_6)
    run = iter_finetune(
        *pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 20, "checkpoint_every": 4, "checkpoint_dir": tmp_path}
    )
    for e in run:
        if isinstance(e, ev.Notice) and e.kind == "rollback":
            run.stop()
    payload = load_checkpoint(tmp_path)
    assert payload["step"] == run.finished.step
    assert json.loads(payload["json"])["lr_scale"] == 0.5


def test_a_multichannel_models_preview_carries_every_channel(pair):
    """Preview images are (Y, X) for a one-channel model and (C, Y, X) for a C-channel one (an RGB model's
    preview was its red channel alone): the channels of the first validation crop, in the model's units."""

    blurred, sharp = (np.stack([image, image[::-1], image.T], axis=-1) for image in pair)  # three different channels
    events = _run(
        (blurred, sharp),
        model=tiny_unet(3),
        axes="YXS",
        steps=1,
        validate_every=1,
        validation=0.25,
    )
    preview = next(e for e in events if isinstance(e, ev.Preview))
    assert preview.image.shape == preview.input.shape == preview.target.shape == (3, 32, 32)
    assert preview.image.dtype == preview.input.dtype == preview.target.dtype == np.float32
    target = preview.target
    assert not np.allclose(target[0], target[1]) and not np.allclose(target[1], target[2])


# ------------------------------------------------------------------------------------- Ctrl-C (SIGINT)
# The interrupts are raised in the main thread, from inside the trainer's code, as a console's or Jupyter's Ctrl-C
# lands: signal.raise_signal runs the Python handler at once, so each test is deterministic. A KeyboardInterrupt
# that escapes where the run should have stopped is turned into a failure (pytest would end the session).


def _ctrl_c() -> None:
    import signal

    signal.raise_signal(signal.SIGINT)


def _interrupt_at_batches(monkeypatch, at: set[int]) -> list[int]:
    """Ctrl-C from inside BatchSource.next_batch at these call numbers (1-based); returns the calls so far."""
    from napari_deblurgan.data.pairs import BatchSource

    real, calls = BatchSource.next_batch, []

    def next_batch(self, size):
        calls.append(size)
        if len(calls) in at:
            _ctrl_c()
        return real(self, size)

    monkeypatch.setattr(BatchSource, "next_batch", next_batch)
    return calls


def test_ctrl_c_inside_a_step_stops_after_it_as_stop_does(pair, tmp_path, monkeypatch):
    """The first Ctrl-C while the trainer runs (here between the critic updates of a WGAN step) is run.stop():
    the step completes, the stop path validates, checkpoints and says how to abort, and finetune() returns the
    model; the checkpoint holds whole steps, so its resume matches a straight run."""
    import signal

    kwargs = dict(_RUN_ARGS, preset="deblurgan", steps=4, checkpoint_every=100)  # 5 critic updates + 1 per step
    straight = _losses(_run(pair, **kwargs))
    events = []
    _interrupt_at_batches(monkeypatch, {6 + 2})  # the second step's second critic batch
    try:
        with pytest.warns(UserWarning, match="Ctrl-C"):
            model = finetune(*pair, model=tiny_unet(), **kwargs, checkpoint_dir=tmp_path, on_event=events.append)
    except KeyboardInterrupt:
        pytest.fail("the first Ctrl-C inside a step escaped instead of stopping the run")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    training = model.metadata["training"]
    assert training["stopped"] is True and training["steps_done"] == 2
    assert isinstance(events[-1], ev.Finished) and events[-1].stopped and events[-1].step == 2
    notice = next(e for e in events if isinstance(e, ev.Notice) and e.kind == "interrupted")
    assert "Ctrl-C again" in notice.message
    assert [e.step for e in events if isinstance(e, ev.Validation)] == [0, 2]  # the newest weights were scored
    assert load_checkpoint(tmp_path)["step"] == 2
    got = _losses(events)
    rest = _losses(_run(pair, **kwargs, checkpoint_dir=tmp_path, resume=tmp_path))
    assert got + rest == straight


def test_the_first_ctrl_c_says_at_once_that_the_run_stops_after_the_step_and_how_to_abort(
    pair, tmp_path, monkeypatch, capsys
):
    """A GAN step on a CPU can take many seconds: the first Ctrl-C says in one line on stderr, while the step is
    still in progress (not when it ends), that training stops after it and saves, and that a second Ctrl-C aborts
    at once keeping the last checkpoint. Said once; the second Ctrl-C aborts without another line."""
    from napari_deblurgan.data.pairs import BatchSource

    real, calls, said_mid_step = BatchSource.next_batch, [], []

    def next_batch(self, size):
        calls.append(size)
        if len(calls) in (6 + 2, 6 + 4):  # twice inside the second WGAN step
            try:
                _ctrl_c()  # the second one raises KeyboardInterrupt here
            finally:
                assert stderr_from_signal_handlers.flush()
                said_mid_step.append(capsys.readouterr().err)
        return real(self, size)

    monkeypatch.setattr(BatchSource, "next_batch", next_batch)
    kwargs = dict(_RUN_ARGS, preset="deblurgan", steps=50, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        finetune(*pair, model=tiny_unet(), **kwargs, checkpoint_dir=tmp_path)
    first, second = said_mid_step
    assert first.count("\n") == 1 and first.startswith("napari-deblurgan: Ctrl-C")
    assert "stops after the step in progress" in first and str(tmp_path) in first
    assert "Ctrl-C again to abort at once, keeping the last checkpoint" in first
    assert second == ""  # the second Ctrl-C aborts; nothing more is said
    assert load_checkpoint(tmp_path)["step"] == 1


def test_the_first_ctrl_c_line_is_not_written_from_the_signal_handler(pair, monkeypatch):
    """A Ctrl-C that lands while the run's code is writing to stderr (an on_event progress line) must not write
    to the stream from inside that write (a re-entrant write raises in a terminal, or waits forever for a lock the
    interrupted code holds): the line comes after the interrupted write, from the announcing thread."""
    import io
    import sys

    class LockedStream(io.StringIO):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()
            self.reentered = False

        def write(self, text):
            if not self.lock.acquire(timeout=2):
                self.reentered = True
                return 0
            try:
                written = super().write(text[:5])
                if text.startswith("progress"):
                    _ctrl_c()  # lands in the middle of this write
                return written + super().write(text[5:])
            finally:
                self.lock.release()

    stream = LockedStream()

    def hook(e):
        if isinstance(e, ev.Step) and e.step == 2:
            sys.stderr.write("progress: step 2\n")

    monkeypatch.setattr(sys, "stderr", stream)
    with pytest.warns(UserWarning, match="Ctrl-C"):
        model = finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 50}, on_event=hook)
    assert stderr_from_signal_handlers.flush()
    monkeypatch.undo()
    assert model.metadata["training"]["steps_done"] == 2
    assert not stream.reentered
    lines = stream.getvalue().splitlines()
    assert lines[0] == "progress: step 2" and lines[1].startswith("napari-deblurgan: Ctrl-C: training stops")
    assert "no checkpoint_dir: nothing is written" in lines[1] and lines[1].endswith("abort at once.")


@pytest.mark.parametrize("writer_running", [True, False])
def test_the_ctrl_c_writer_does_not_hang_on_a_start_lock_an_interrupt_left_held(writer_running, capsys):
    """The trainer readies the Ctrl-C line writer before every event, with Python's own SIGINT handler in place:
    a Ctrl-C on a `with lock:` line can leave the lock held (bpo-29988), and then every later event waited."""
    from napari_deblurgan.signal_safe_stderr import SignalSafeStderr

    writer = SignalSafeStderr()
    if writer_running:
        writer.ready()
    writer._start_lock.acquire()  # as such an interrupt leaves it
    readying = threading.Thread(target=writer.ready, daemon=True)  # a hung one dies with pytest
    readying.start()
    readying.join(10)
    assert not readying.is_alive(), "ready() waits for a lock left held"
    if writer_running:
        writer.say("napari-deblurgan: still said")
        assert writer.flush()
        assert "still said" in capsys.readouterr().err


def test_ctrl_c_in_an_event_hook_with_no_checkpoint_dir_still_returns_the_best_model(pair):
    """on_event runs inside the trainer: a Ctrl-C there stops the run too, and with nothing written to disk the
    training is not lost - finetune() returns it, and run.model is the best model of the stopped run."""

    def hook(e):
        if isinstance(e, ev.Step) and e.step == 3:
            _ctrl_c()

    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 50, "validate_every": 2}, on_event=hook)
    try:
        with pytest.warns(UserWarning, match="Ctrl-C"):
            events = list(run)
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C inside on_event escaped instead of stopping the run")
    assert run.finished.stopped and run.finished.step == 3
    assert [e.step for e in events if isinstance(e, ev.Validation)] == [0, 2, 3]
    assert run.model.metadata["training"]["best_step"] == run.provenance["best_step"]
    assert run.finished.best_psnr == max(e.psnr for e in events if isinstance(e, ev.Validation))
    with pytest.raises(RuntimeError, match="finished at step 3: it has no events left"):
        list(run)  # the run ended: nothing more to iterate, and a loop over it says so


def test_a_second_ctrl_c_mid_step_aborts_and_keeps_the_last_whole_steps_checkpoint(pair, tmp_path, monkeypatch):
    """The escape hatch: a second Ctrl-C raises KeyboardInterrupt at once. Inside a WGAN step (critic updates
    applied, generator update not) the state is no step's: nothing is written, and the checkpoint stays the last
    one written (step 2 here; step 3's state is gone with the step begun after it)."""
    import signal

    kwargs = dict(_RUN_ARGS, preset="deblurgan", steps=50, checkpoint_every=2)
    calls = _interrupt_at_batches(monkeypatch, {6 * 3 + 2, 6 * 3 + 4})  # twice inside the fourth step
    run = iter_finetune(*pair, model=tiny_unet(), **kwargs, checkpoint_dir=tmp_path)
    events = []
    with pytest.raises(KeyboardInterrupt):  # before the step ended, so before the run could say it would stop
        for e in run:
            events.append(e)
    assert len(calls) == 6 * 3 + 4  # both interrupts were raised: the first did not end the run
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [e.step for e in events if isinstance(e, ev.Step)] == [1, 2, 3]
    assert load_checkpoint(tmp_path)["step"] == 2  # not the half-done fourth step's state as step 3
    assert run.finished is None  # aborted: it cannot be resumed in memory, and a loop over it says so
    with pytest.raises(RuntimeError, match="ended by an exception: it has no events left"):
        list(run)


def test_a_second_ctrl_c_during_the_stops_validation_still_writes_the_checkpoint(pair, tmp_path, monkeypatch):
    """After the first Ctrl-C the step finished: a second one while the stop scores the newest weights aborts, and
    the checkpoint of that whole step, not yet written, is written on the way out."""
    from napari_deblurgan.training import trainer

    real, calls = trainer.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the stop's validation (the first one scored the starting model)
            _ctrl_c()
        return real(*a, **k)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    kwargs = dict(_RUN_ARGS, steps=50, checkpoint_every=100)
    _interrupt_at_batches(monkeypatch, {3})  # inside the third step
    with pytest.warns(UserWarning, match="Ctrl-C"), pytest.raises(KeyboardInterrupt):
        finetune(*pair, model=tiny_unet(), **kwargs, checkpoint_dir=tmp_path)
    assert len(calls) == 2
    assert load_checkpoint(tmp_path)["step"] == 3


def test_ctrl_c_in_the_consumers_own_code_is_a_plain_keyboard_interrupt(pair):
    """Between events the consumer's code runs with its own Ctrl-C: a KeyboardInterrupt there, as always; the
    run is not stopped and goes on when iterated again."""
    import signal

    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 4})
    stream = iter(run)
    with pytest.raises(KeyboardInterrupt):
        for e in stream:
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            if isinstance(e, ev.Step) and e.step == 2:
                _ctrl_c()
    assert not run.stop_requested
    rest = list(stream)
    assert [e.step for e in rest if isinstance(e, ev.Step)] == [3, 4] and not rest[-1].stopped


def test_ctrl_c_is_left_to_a_handler_of_the_callers_own_and_no_handler_is_set_off_the_main_thread(pair, capsys):
    """A program with its own SIGINT handler (the CLI's stops the run and sets its exit status) keeps it; in a
    worker thread (napari's thread_worker, the Finetune panel) no handler can be installed, and none is tried."""
    import signal

    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 50})
    caught = []

    def own(signum, frame):
        caught.append(signum)
        run.stop()

    def hook(e):
        if isinstance(e, ev.Step) and e.step == 2:
            _ctrl_c()

    run.on_event = hook
    previous = signal.signal(signal.SIGINT, own)
    try:
        events = list(run)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert caught == [signal.SIGINT] and run.finished.stopped and run.finished.step == 2
    assert not any(isinstance(e, ev.Notice) and e.kind == "interrupted" for e in events)
    assert stderr_from_signal_handlers.flush()
    assert "napari-deblurgan: Ctrl-C" not in capsys.readouterr().err  # the caller's handler says what it does

    threaded = iter_finetune(*pair, model=tiny_unet(), **_RUN_ARGS)
    result = []
    worker = threading.Thread(target=lambda: result.append(threaded.run_to_end()))
    worker.start()
    worker.join(120)
    assert result and result[0].metadata["training"]["steps_done"] == 3


def test_a_ctrl_c_just_as_the_handler_is_put_back_loses_no_event(pair, monkeypatch):
    """A Ctrl-C that arrives while the run's handler is being swapped back runs Python's own handler: a
    KeyboardInterrupt in the consumer, as between events; the event the run had produced is delivered next."""
    import signal

    real = signal.signal
    restores = []

    def signal_with_a_ctrl_c_pending(signum, handler):
        previous = real(signum, handler)
        if handler is signal.default_int_handler:
            restores.append(1)
            if len(restores) == 3:
                raise KeyboardInterrupt  # what the default handler does with a Ctrl-C pending at that moment
        return previous

    straight = [(type(e).__name__, getattr(e, "step", None)) for e in _run(pair, steps=2)]
    run = iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 2})
    stream = iter(run)
    got = []
    monkeypatch.setattr(signal, "signal", signal_with_a_ctrl_c_pending)
    with pytest.raises(KeyboardInterrupt):
        for e in stream:
            got.append(e)
    monkeypatch.undo()
    got += list(stream)
    assert [(type(e).__name__, getattr(e, "step", None)) for e in got] == straight


def test_load_model_of_a_checkpoint_says_how_to_get_its_model_and_the_advice_works(pair, tmp_path):
    """load_model (and so deblur, finetune(model=...)) of a checkpoint says it is one and how to get its model: the
    Python call and the CLI line it gives, run as written, return the kept model and leave the checkpoint as it
    was (its total included, so that a later resume without steps still finishes the run)."""
    import re
    import shlex

    import tifffile

    import napari_deblurgan
    from napari_deblurgan.cli import main
    from napari_deblurgan.errors import ModelFileError
    from napari_deblurgan.model_file import load_model

    folder = tmp_path / "run"
    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        **{**_RUN_ARGS, "steps": 6, "validate_every": 1, "checkpoint_dir": folder, "checkpoint_every": 100},
    )
    _losses_until_stop(run, at_step=2)
    path = checkpoint_path(folder)
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="is a training checkpoint") as info:
        load_model(path)
    message = str(info.value)

    call = re.search(r"model = (napari_deblurgan\.finetune\(.*?\));", message).group(1)
    assert call == f"napari_deblurgan.finetune(blurred, sharp, resume={str(path)!r}, steps=2)"
    blurred, sharp = pair
    model = eval(call, {"napari_deblurgan": napari_deblurgan, "blurred": blurred, "sharp": sharp})
    kept = load_checkpoint(folder)["best_state"]
    assert all(torch.equal(v, kept[k]) for k, v in model.generator.state_dict().items())
    assert model.metadata["training"]["steps_done"] == 2
    assert path.read_bytes() == before

    line = re.search(r"\(or: napari-deblurgan (finetune .*?)\)\.", message).group(1)
    tifffile.imwrite(tmp_path / "A.tif", blurred)
    tifffile.imwrite(tmp_path / "B.tif", sharp)
    argv = [str(tmp_path / a) if a.endswith(".tif") or a == "model.pt" else a for a in shlex.split(line)]
    assert main([*argv, "--device", "cpu", "-q"]) == 0
    from_cli = load_model(tmp_path / "model.pt")
    assert all(torch.equal(v, kept[k]) for k, v in from_cli.generator.state_dict().items())
    assert path.read_bytes() == before
    resumed = list(iter_finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": None, "resume": folder}))
    assert resumed[0].total_steps == 6 and resumed[-1].step == 6


def test_notice_warnings_off_keeps_the_notice_and_drops_its_warning(pair, tmp_path):
    """A consumer that shows Notice events itself (the Finetune panel, in a worker thread where a warnings filter is
    not safe) turns the accompanying TrainingNoticeWarning off on the run; the Notice stays."""
    import warnings

    folder = tmp_path / "ck"
    _run(pair, steps=1, checkpoint_dir=folder)
    for say in (True, False):
        run = iter_finetune(*pair, **{**dict(model=tiny_unet(), **_RUN_ARGS), "steps": 1, "checkpoint_dir": folder})
        if not say:
            run.notice_warnings = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            notices = [e for e in run if isinstance(e, ev.Notice) and "holds the checkpoint" in e.message]
        warned = [w for w in caught if issubclass(w.category, ev.TrainingNoticeWarning)]
        assert len(notices) == 1 and len(warned) == (1 if say else 0), (say, warned)


def test_an_exception_from_on_event_keeps_a_checkpoint_of_the_last_whole_step(pair, tmp_path):
    def boom(event):
        if isinstance(event, ev.Step) and event.step == 5:
            raise RuntimeError("consumer failed")

    run = iter_finetune(
        *pair,
        model=tiny_unet(),
        **{**_RUN_ARGS, "steps": 8, "checkpoint_dir": tmp_path, "checkpoint_every": 3, "on_event": boom},
    )
    with pytest.raises(RuntimeError, match="consumer failed"):  # the consumer's own exception, not masked
        list(run)
    assert load_checkpoint(tmp_path)["step"] == 5  # not 3, the last checkpoint_every step


def test_an_exception_inside_a_step_writes_no_checkpoint_of_the_half_done_step(pair, tmp_path, monkeypatch):
    from napari_deblurgan.training import trainer

    original = trainer.GanStep.run
    calls = []

    def failing(self, next_batch, batch_size):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("device lost")
        return original(self, next_batch, batch_size)

    monkeypatch.setattr(trainer.GanStep, "run", failing)
    run = iter_finetune(
        *pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 8, "checkpoint_dir": tmp_path, "checkpoint_every": 2}
    )
    with pytest.raises(RuntimeError, match="device lost"):
        list(run)
    # the fourth step was begun: its state may be half updated, so the checkpoint stays the last one written
    assert load_checkpoint(tmp_path)["step"] == 2


def test_without_validation_the_provenance_names_the_last_step_as_the_returned_ones(pair):
    model = finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "steps": 4, "validation": 0})
    training = model.metadata["training"]
    assert training["steps_done"] == 4 and training["best_step"] == 4 and training["best_source"] == "generator"


def test_blank_validation_crops_are_left_out_of_validation_and_stay_out_on_resume(pair, tmp_path):
    """An empty held-out frame scores ~100 dB for the input whatever the model does; with its crops in, the mean
    validation PSNR would be decided there. They are left out (one notice), also by the resumed run."""
    blurred, sharp = (np.stack([image] * 5) for image in pair)
    blurred[3] = sharp[3] = 0  # seed 3 holds out planes 0 and 3
    args = {
        **_RUN_ARGS,
        "seed": 3,
        "validation": 0.4,
        "axes": "ZYX",
        "checkpoint_dir": tmp_path,
        "steps": 2,
        "validate_every": 1,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the blank pair's alignment cannot be measured
        first = list(iter_finetune(blurred, sharp, model=tiny_unet(), **args))
        blank = [e for e in first if isinstance(e, ev.Notice) and "blank (constant)" in e.message]
        assert len(blank) == 1 and re.match(r"\d+ blank \(constant\) validation crops were left out", blank[0].message)
        scores = [e for e in first if isinstance(e, ev.Validation)]
        assert scores and all(e.psnr_input < 50 and e.psnr < 50 for e in scores)  # not ~100 dB crops averaged in
        resumed = list(iter_finetune(blurred, sharp, model=tiny_unet(), **{**args, "steps": 3, "resume": tmp_path}))
    assert not [e for e in resumed if isinstance(e, ev.Notice) and "validation crops differ" in e.message]
    assert next(e.psnr_input for e in resumed if isinstance(e, ev.Validation)) == scores[0].psnr_input


def test_a_damaged_checkpoint_or_another_file_given_to_resume_says_what_it_is_not_torchs_advice(pair, tmp_path):
    from napari_deblurgan.errors import ModelFileError

    _run(pair, steps=1, checkpoint_dir=tmp_path / "run", checkpoint_every=1)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "checkpoint.pt").write_bytes((tmp_path / "run" / "checkpoint.pt").read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"the file is damaged or incomplete .* leave resume out") as damaged:
        iter_finetune(*pair, model=tiny_unet(), device="cpu", resume=cut)
    image = tmp_path / "image.tif"
    import tifffile

    tifffile.imwrite(image, pair[0])
    with pytest.raises(ModelFileError, match="is not a napari-deblurgan training checkpoint") as other:
        iter_finetune(*pair, model=tiny_unet(), device="cpu", resume=image)
    for error in (damaged, other):  # torch's text advises weights_only=False, which would run the file's code
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_training_on_images_with_no_data_sentinels_still_learns(pair):
    """A few pixels at float32's largest value ("no data") are missing to training, as to deblur(): at the
    normalisation's limit (1e30) they overflowed Adam's second moment, every update became 0, and the run
    returned its base model without a word."""
    blurred, sharp = (image.astype(np.float32) for image in pair)
    for image in (blurred, sharp):
        image[5::24, 5::24] = np.finfo(np.float32).max
    model = tiny_unet()
    before = [p.detach().clone() for p in model.generator.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the alignment check on the sentinels
        events = list(iter_finetune(blurred, sharp, model=model, **{**_RUN_ARGS, "steps": 4, "validation": 0}))
    trained = next(e for e in events if isinstance(e, ev.Finished)).model.generator
    assert all(bool(torch.isfinite(p).all()) for p in trained.parameters())
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(trained.parameters(), before, strict=True)) > 1e-6
    losses = [e.losses["total"] for e in events if isinstance(e, ev.Step)]
    assert all(loss < 10 for loss in losses), losses  # crops in normalised units, not 1e30


def test_a_list_of_images_of_different_axes_trains_with_one_axes_string_per_image(pair):
    """A 2D image and a grey stack of 3 planes kept last (inferred as RGB): axes=["YX", "YXZ"] trains on the
    stack's 3 planes, and validation_axes gives an explicit validation pair's."""
    _blurred, sharp = pair
    stack = np.stack([sharp[:48], sharp[48:], sharp[:48, ::-1]], axis=-1)  # (48, 96, 3)
    run = tiny_run(([sharp, stack],), axes=["YX", "YXZ"], validation=(None, stack), validation_axes="YXZ")
    assert [src.axes for src in run.data.sources] == ["YX", "YXZ"]
    assert sorted((p.source, p.index, p.channel) for p in run.data.train_planes) == [
        (0, (), 0),
        (1, (0,), 0),
        (1, (1,), 0),
        (1, (2,), 0),
    ]
    assert run.data.validation_sources[0].axes == "YXZ"
    events = list(run)
    assert sum(isinstance(e, ev.Step) for e in events) == 3 and isinstance(events[-1], ev.Finished)
    with pytest.raises(InputError, match=r"^axes lists 1 axes string but there are 2 training images"):
        tiny_run(([sharp, stack],), axes=["YX"])
    model = finetune([sharp, stack], model=tiny_unet(), axes=[None, "YXZ"], **{**TINY_RUN_ARGS, "steps": 1})
    assert model.metadata["training"]["steps"] == 1


def test_resuming_the_same_shapes_read_with_other_axes_says_so(tmp_path):
    """A stack resumed with its Y and X axes read the other way round has the same shape but other crops: the
    checkpoint records each image's axes (and so does the model's provenance), and a resume compares them."""
    rng = np.random.default_rng(0)
    stack = rng.random((2, 64, 64), np.float32)
    common = dict(model=tiny_unet(), patch_size=32, batch_size=2, validation=None, device="cpu", preset="content")
    run = iter_finetune(stack, axes="ZYX", steps=2, checkpoint_dir=tmp_path, checkpoint_every=1, **common)
    list(run)
    assert run.model.metadata["training"]["data_axes"] == ["ZYX"]
    same = list(iter_finetune(stack, axes="ZYX", steps=3, resume=tmp_path, **common))
    assert not [e for e in same if isinstance(e, ev.Notice) and e.kind == "resume-data"]
    # T for Z is the same crops: training takes every plane alike
    as_time = list(iter_finetune(stack, axes="TYX", steps=4, resume=tmp_path, **common))
    assert not [e for e in as_time if isinstance(e, ev.Notice) and e.kind == "resume-data"]
    with pytest.warns(UserWarning, match=r"Resuming with other training data than the checkpoint's \(axes"):
        other = list(iter_finetune(stack, axes="ZXY", steps=5, resume=tmp_path, **common))
    (notice,) = [e for e in other if isinstance(e, ev.Notice) and e.kind == "resume-data"]
    assert "['ZXY'] now, ['TYX'] then" in notice.message


def test_checkpoint_dir_resume_and_model_paths_starting_with_a_tilde_are_in_the_home_folder(
    pair, tiny_model_file, tmp_path, monkeypatch
):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (home / "m.pt").write_bytes(tiny_model_file.read_bytes())
    events = _run(pair, model="~/m.pt", steps=1, checkpoint_dir="~/run", checkpoint_every=1)
    saved = [e.path for e in events if isinstance(e, ev.CheckpointSaved)]
    assert saved and Path(saved[-1]) == home / "run" / "checkpoint.pt" and (home / "run" / "checkpoint.pt").is_file()
    assert not list(work.iterdir())  # no folder named '~' here
    resumed = _run(pair, steps=2, resume="~/run")
    assert [e.step for e in resumed if isinstance(e, ev.Step)] == [2]


@pytest.mark.parametrize(
    ("seed", "said"),
    [
        (np.random.default_rng(0), r"not a numpy Generator: .* seed=int\(rng.integers\(2\*\*31\)\)\.$"),
        (-1, r"^seed must be an integer >= 0 \(below 2\*\*63\) or None .*; got -1\.$"),
        (2.5, r"^seed must be an integer >= 0 .*; got 2\.5\.$"),
        (True, r"^seed must be an integer >= 0 .*; got True\.$"),
        (2**63, r"^seed must be an integer >= 0 \(below 2\*\*63\)"),
    ],
)
def test_a_bad_seed_is_one_input_error_that_says_what_a_seed_is(pair, seed, said):
    with pytest.raises(InputError, match=said):
        finetune(*pair, model=tiny_unet(), steps=1, device="cpu", preview=False, seed=seed)


def test_an_unknown_noise_preset_names_the_choices_as_synthesize_blurs_message_does(pair):
    from napari_deblurgan import synthesize_blur

    with pytest.raises(InputError) as trained:
        iter_finetune(pair[1], None, model=tiny_unet(), steps=1, device="cpu", noise="high")
    with pytest.raises(InputError) as synthesized:
        synthesize_blur(pair[1], noise="high")
    for error in (trained, synthesized):
        assert str(error.value).startswith("Unknown noise preset 'high'; use 'realistic', a number of photons")
    assert str(trained.value).endswith(", a dict or None.") and str(synthesized.value).endswith(", a dict or None.")


def test_crops_smaller_than_the_critic_can_score_are_refused_before_training(pair):
    """The critic's smallest input comes from its layers (its InstanceNorms need more than one value per plane);
    a preset that trains a critic refuses smaller crops at iter_finetune time, with the minimum and the ways out,
    rather than failing in torch at the first critic update. Presets without a critic take small crops."""
    from napari_deblurgan.models.critic import PatchCritic

    smallest = PatchCritic.smallest_input()
    critic = PatchCritic(1, width=4).train()
    assert critic(torch.rand(2, 1, smallest, smallest)).shape[-1] >= 1
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        critic(torch.rand(2, 1, smallest - 1, smallest - 1))

    stride = tiny_unet().stride
    need = -(-smallest // stride) * stride
    small = need - stride  # a multiple of the stride, below the critic's minimum
    with pytest.raises(InputError) as info:
        tiny_run(pair, preset="default", patch_size=small)  # nothing iterated: refused when the run is made
    text = str(info.value)
    assert f"patch_size {small} is too small" in text and f"at least {smallest} px" in text
    assert f"patch_size={need} or more" in text and "preset='content'" in text
    # not a multiple of the stride: the crops it gives are named
    with pytest.raises(InputError, match=rf"patch_size {small + 1} \({small}-px crops, a multiple of"):
        tiny_run(pair, preset="deblurgan", patch_size=small + 1)
    # the images too small for the critic's crops: larger images, not a larger patch_size
    with pytest.raises(InputError, match=f"reduced to fit the images.*images of at least {need} px"):
        tiny_run((pair[0][:small, :small], pair[1][:small, :small]), preset="default", validation=0, patch_size=64)
    assert len(_losses(_run(pair, preset="content", patch_size=small, steps=1))) == 1


def test_a_critic_that_is_never_trained_is_refused(pair, monkeypatch, tmp_path):
    """critic_steps=0 with a loss term on the critic (its scores, or its features when VGG-19 is missing): the
    generator would follow a random network's. Refused, before any step; with VGG-19 at hand there is no critic."""
    from napari_deblurgan.training import perceptual

    with pytest.raises(InputError, match=r"adversarial term .* but critic_steps=0"):
        tiny_run(pair, preset=get_preset("default").replace(name="frozen-critic", critic_steps=0))

    monkeypatch.setattr(perceptual, "cached_vgg19_path", lambda: tmp_path / "no-vgg.pth")
    monkeypatch.delenv(perceptual.ALLOW_DOWNLOAD_ENV, raising=False)
    matching = get_preset("content").replace(name="matching", perceptual_weight=0.1)
    run = tiny_run(pair, preset=matching)
    with pytest.raises(InputError, match="feature matching on the critic's activations, but critic_steps=0"):
        next(iter(run))


def test_the_critic_collects_no_gradients_in_the_generators_update_also_without_critic_steps():
    """A critic kept for feature matching only (critic_steps=0) is frozen before the generator's update as a
    trained one is: no requires_grad, no .grad accumulated step after step."""
    from napari_deblurgan.models.critic import PatchCritic

    critic = PatchCritic(1, width=4)
    preset = get_preset("content").replace(name="matching", perceptual_weight=0.1)
    step = GanStep(
        tiny_unet().generator, critic, preset, torch.device("cpu"), perceptual=None, feature_matching=True,
        ema_decay=None, seed=0, precision="float32",
    )  # fmt: skip
    batch = (torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    for _ in range(2):
        assert "feature_matching" in step.run(lambda n: batch, 2)
    assert not any(p.requires_grad for p in critic.parameters())
    assert all(p.grad is None for p in critic.parameters())


def test_the_ema_averages_batchnorm_statistics_as_its_weights_and_resumes_exactly():
    """The EMA's BatchNorm running statistics are averaged with the weights' decay (they belong to the averaged
    weights, not to the live generator's); the step counter is copied; a step from a restored state matches."""

    def generator() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1)
        )

    def gan_step() -> GanStep:
        return GanStep(
            generator(), None, get_preset("content"), torch.device("cpu"), perceptual=None, feature_matching=False,
            ema_decay=0.9, seed=0, precision="float32",
        )  # fmt: skip

    torch.manual_seed(1)
    batches = [(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)) for _ in range(3)]
    step = gan_step()
    for i, batch in enumerate(batches[:2]):
        before = {k: v.clone() for k, v in step.ema.state_dict().items()}
        step.run(lambda n, batch=batch: batch, 2)
        decay = min(0.9, (2 + i) / (11 + i))
        live, ema = step.generator[1], step.ema[1]
        for name in ("running_mean", "running_var"):
            expected = before[f"1.{name}"].lerp(getattr(live, name), 1.0 - decay)
            assert torch.allclose(getattr(ema, name), expected)
            assert not torch.allclose(getattr(ema, name), getattr(live, name))
        assert int(ema.num_batches_tracked) == int(live.num_batches_tracked) == i + 1

    import copy

    restored = gan_step()
    restored.load_state_dict(copy.deepcopy(step.state_dict()))
    for s in (step, restored):
        s.run(lambda n: batches[2], 2)
    a, b = step.ema.state_dict(), restored.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vgg_sees_rgb_samples_as_colour_and_other_channels_one_by_one_as_grey(pair, monkeypatch):
    """Three fluorescence channels (C) are not an RGB image: VGG-19 gets each as grey, as it gets 1, 2 or 4
    channels; RGB samples (S) go in as the colour image. The run decides by the data's axes, not the count."""
    from napari_deblurgan.training import perceptual

    loss = perceptual.VGGPerceptualLoss(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)))
    x = torch.rand(2, 3, 8, 8)
    grey = loss._prepare(x)
    assert grey.shape == (6, 3, 8, 8) and torch.equal(grey[1], loss._prepare(x[:, 1:2])[0])
    colour = perceptual.VGGPerceptualLoss(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)), rgb=True)._prepare(x)
    assert colour.shape == (2, 3, 8, 8) and torch.equal(colour, (x - loss.mean) / loss.std)

    said: list[bool] = []

    class Spy(perceptual.VGGPerceptualLoss):
        def __init__(self, features, *, rgb=False):
            said.append(rgb)
            super().__init__(features, rgb=rgb)

    monkeypatch.setattr(perceptual, "VGGPerceptualLoss", Spy)
    monkeypatch.setattr(perceptual, "load_vgg_features", lambda *a, **k: (torch.nn.Conv2d(3, 2, 3), "a test's"))
    preset = get_preset("content").replace(name="vgg", perceptual_weight=0.01)
    blurred, sharp = pair
    for axis, rgb in ((0, False), (-1, True)):
        data = [np.stack([image] * 3, axis=axis) for image in (blurred, sharp)]
        run = tiny_run(data, model=tiny_unet(3), preset=preset, axes="CYX" if axis == 0 else "YXS")
        assert isinstance(next(iter(run)), ev.Started)
        assert said[-1] is rgb


def test_the_deblurgan_recipe_trains_its_critic_five_times_a_step_on_fresh_batches_and_fresh_fakes(monkeypatch):
    """The paper's WGAN-GP step: 5 critic updates, each on a batch of its own with fakes the current generator
    made of that batch (never one batch's fakes reused, nor the fakes of an earlier step's generator update),
    loss D(fake) - D(real) + 10 x penalty; then the generator's update, 100 x perceptual; Adam 1e-4, (0.5, 0.999)."""
    import copy

    from napari_deblurgan.models.critic import PatchCritic

    preset = get_preset("deblurgan")
    generator = tiny_unet().generator  # no BatchNorm: its output depends on its weights and input alone

    class SquaredError(torch.nn.Module):  # stands in for VGG: the weight it gets is what is checked
        def forward(self, fake, real):
            self.last = (fake - real).pow(2).mean()
            return self.last

    perceptual = SquaredError()
    step = GanStep(
        generator, PatchCritic(1, width=4), preset, torch.device("cpu"), perceptual=perceptual,
        feature_matching=False, ema_decay=None, seed=0, precision="float32",
    )  # fmt: skip
    for opt in (step.opt_g, step.opt_d):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4) and opt.param_groups[0]["betas"] == (0.5, 0.999)

    batches = []  # (blurred, sharp, the generator's weights when the batch was taken)
    rng = torch.Generator().manual_seed(1)

    def next_batch(n):
        blurred, sharp = torch.rand(n, 1, 32, 32, generator=rng), torch.rand(n, 1, 32, 32, generator=rng)
        batches.append((blurred, sharp, copy.deepcopy(generator.state_dict())))
        return blurred, sharp

    critic_updates = []
    real_critic_loss = losses.critic_loss

    def recording_critic_loss(critic, real, fake, **kw):
        loss, parts = real_critic_loss(critic, real, fake, **kw)
        critic_updates.append((real, fake.detach().clone(), loss.detach(), parts))
        return loss, parts

    monkeypatch.setattr(losses, "critic_loss", recording_critic_loss)
    probe = copy.deepcopy(generator)
    for n_step in (1, 2):  # the second step's generator differs from the first's fakes' one
        values = step.run(next_batch, 2)
        assert len(batches) == 6 * n_step and len(critic_updates) == 5 * n_step
        assert values["perceptual"] == pytest.approx(100.0 * perceptual.last.item(), rel=1e-5)
    for real, fake, loss, parts in critic_updates:
        index = next(i for i, (_, sharp, _) in enumerate(batches) if torch.equal(sharp, real))
        blurred, _, weights = batches[index]
        probe.load_state_dict(weights)
        with torch.no_grad():
            torch.testing.assert_close(fake, probe(blurred))  # this batch's fakes by the generator of the moment
        expected = -parts["wasserstein"].item() + 10.0 * parts["gradient_penalty"].item()
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    used = [next(i for i, b in enumerate(batches) if torch.equal(b[1], real)) for real, *_ in critic_updates]
    assert used == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # a fresh batch for every update; 5 and 11 are the generator's


def test_the_gradient_penalty_is_taken_at_random_points_between_real_and_fake():
    """x_hat = eps * real + (1 - eps) * fake with eps ~ U(0, 1) per sample: neither the real nor the fake
    images themselves, and the penalty is that of the gradient at x_hat."""
    seen = []

    class HalfSquare(torch.nn.Module):  # D(x) = |x|^2 / 2 per sample: its gradient at x is x itself
        def forward(self, x):
            seen.append(x.detach().clone())
            return 0.5 * x.pow(2).flatten(1).sum(1)

    real, fake = torch.ones(64, 1, 4, 4), torch.zeros(64, 1, 4, 4)
    gp = losses.gradient_penalty(HalfSquare(), real, fake, generator=torch.Generator().manual_seed(0))
    (x_hat,) = seen
    eps = x_hat.flatten(1)[:, 0]
    assert torch.equal(x_hat, eps.view(-1, 1, 1, 1).expand_as(x_hat))  # one factor per sample
    assert eps.min() > 0 and eps.max() < 1
    assert eps.min() < 0.2 and eps.max() > 0.8  # spread over (0, 1), not one fixed point
    expected = ((eps * 4.0 - 1.0) ** 2).mean()  # |grad| = eps * sqrt(16)
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_ema_weights_move_toward_the_live_ones_by_one_minus_the_decay():
    """Each update moves the EMA's weights (1 - decay) of the way to the live generator's, with the warm-up decay
    min(ema, (1 + n) / (10 + n)) at update n: the average stays close to its past, not to the newest weights."""
    torch.manual_seed(0)
    step = GanStep(
        torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 1)), None,
        get_preset("content"), torch.device("cpu"), perceptual=None, feature_matching=False,
        ema_decay=0.2, seed=0, precision="float32",
    )  # fmt: skip
    torch.manual_seed(1)
    for n in (1, 2, 3):
        before = [p.detach().clone() for p in step.ema.parameters()]
        batch = (torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
        step.run(lambda size, batch=batch: batch, 2)
        decay = min(0.2, (1 + n) / (10 + n))
        for old, live, ema in zip(before, step.generator.parameters(), step.ema.parameters(), strict=True):
            torch.testing.assert_close(ema, old.lerp(live.detach(), 1.0 - decay))
            assert not torch.allclose(ema, live)


def test_without_validation_the_ema_weights_are_the_ones_returned(pair):
    """The live weights train alike with or without an EMA (same seed); without validation the run returns the
    EMA's weights where it keeps one, and says so."""
    plain = finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "validation": 0})
    averaged = finetune(*pair, model=tiny_unet(), **{**_RUN_ARGS, "validation": 0, "ema": 0.9})
    assert plain.metadata["training"]["best_source"] == "generator"
    assert averaged.metadata["training"]["best_source"] == "ema"
    a, b = plain.generator.state_dict(), averaged.generator.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_learning_rate_warms_up_from_a_tenth_and_decays_to_five_percent(pair):
    """The cosine presets start at 10 % of the rate and reach it linearly over the warm-up, then decay to 5 %
    (not 0: the last steps still do something); the run's steps use exactly that schedule."""
    preset = get_preset("content")
    assert preset.warmup_steps == 20
    assert preset.lr_factor(0, 1000) == pytest.approx((0.1 + 0.9 * 1 / 20) * 1.0)  # cosine's start: 1
    assert preset.lr_factor(19, 1000) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 0.019)))
    assert preset.lr_factor(500, 1000) == pytest.approx(0.05 + 0.95 * 0.5)
    assert preset.lr_factor(1000, 1000) == pytest.approx(0.05)
    steps = [e for e in tiny_run(pair, preset="content", validation=0) if isinstance(e, ev.Step)]
    expected = [preset.learning_rate * (0.1 + 0.9 * (n + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * n / 3)))
                for n in range(3)]  # fmt: skip
    assert [e.learning_rate for e in steps] == pytest.approx(expected)


def test_a_run_on_synthetic_blur_resumes_exactly(pair, tmp_path):
    """Sharp-only data: the resumed run draws the same PSFs and noise as the uninterrupted one (the synthesis
    generator's state is in the checkpoint), so its losses are the same."""
    data = (pair[1], None)
    args = dict(_RUN_ARGS, steps=4, validation=0.0, blur_kind="motion,gaussian", checkpoint_every=2)
    straight = _losses(tiny_run(data, **args))
    first = tiny_run(data, **args, checkpoint_dir=tmp_path)
    got = _losses_until_stop(first, at_step=2)
    assert len(got) == 2 and first.finished.stopped
    rest = _losses(tiny_run(data, **args, checkpoint_dir=tmp_path, resume=tmp_path))
    assert got + rest == straight


def test_a_loss_that_stays_nan_stops_the_run_after_five_rollbacks(pair, monkeypatch):
    """Five rollbacks (each halving the rate) that do not help: the sixth failure ends the run as diverged, with
    the best model so far (here the starting one), instead of rolling back for ever."""
    real = losses.content_loss
    monkeypatch.setattr(losses, "content_loss", lambda fake, sharp, kind="l1": real(fake, sharp, kind) * float("nan"))
    events = _run(pair, steps=4, preset="content")
    kinds = [e.kind for e in events if isinstance(e, ev.Notice)]
    assert kinds.count("rollback") == 5 and kinds.count("diverged") == 1
    assert not [e for e in events if isinstance(e, ev.Step)]
    finished = events[-1]
    assert isinstance(finished, ev.Finished) and finished.stopped and finished.step == 0
    start, got = tiny_unet().generator.state_dict(), finished.model.generator.state_dict()
    assert all(torch.equal(start[k], got[k]) for k in start)

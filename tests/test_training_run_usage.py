"""How a finetuning run answers what a user asks of it: settings it cannot use are said in a notice, not
dropped silently (the synthetic blur's settings with blurred/sharp pairs, ``channels`` with a model whose
channels are fixed), iterating a run that has ended says so instead of doing nothing, and a run without
validation that fails still holds its latest whole step's weights (not the untrained base, nor weights older
than its checkpoint), a state that is not finite is never written over the last good checkpoint (and is found
with one wait for the device), its metadata says the steps trained and the step of its weights alike on a stop
and an abort, and a failed run whose model is still the starting one says truly why it is not saved."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from _helpers import raise_on_call, tiny_run, tiny_unet
from napari_deblurgan.errors import InputError
from napari_deblurgan.training import events as ev

pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]


def _model():
    # unet_lite's default 2 bottom blocks, as this file's runs always had (the shared tiny model has 1)
    return tiny_unet(n_blocks=2)


def _notices(blurred, sharp, **kw) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each notice is a warning too; the events are what is checked
        run = tiny_run((blurred, sharp), **{"model": _model(), "steps": 1, **kw})
        return [e.message for e in run if isinstance(e, ev.Notice)]


def test_synthetic_blur_settings_with_pairs_are_said_to_be_ignored(training_pair):
    said = _notices(*training_pair, blur_kind="motion", noise={"photons": [50, 100], "read_noise": [1, 2]})
    assert [m for m in said if m.startswith("blur_kind and noise are ignored: blurred/sharp pairs were given")]
    said = _notices(*training_pair, blur_strength=3)
    assert [m for m in said if m.startswith("blur_strength is ignored")]
    assert not [m for m in _notices(*training_pair) if " ignored" in m]  # the defaults: nothing to say


def test_synthetic_blur_settings_with_sharp_images_alone_are_used(training_pair):
    said = _notices(training_pair[1], None, blur_kind="motion", blur_strength=3)
    assert not [m for m in said if " ignored" in m]


def test_channels_with_a_model_of_fixed_channels_is_said_to_be_ignored(training_pair):
    said = _notices(*training_pair, channels=3)
    assert [m for m in said if m.startswith("channels 3 is ignored: the model takes 1 channel(s)")]
    assert not [m for m in _notices(*training_pair, channels=1) if " ignored" in m]  # what it has: nothing to say
    # an architecture name: channels sets the new model's channels (a grey pair on a 3-channel model is refused)
    said = _notices(*training_pair, model="unet_lite", channels=1)
    assert not [m for m in said if " ignored" in m]


# ------------------------------------------------------------------------------------- an ended run, again
def test_iterating_an_ended_run_again_says_so(training_pair):
    """A loop over a run that had ended did nothing, silently (a generator yields nothing once it is done)."""
    run = tiny_run(training_pair, model=_model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(list(run)[-1], ev.Finished)
    with pytest.raises(RuntimeError, match=r"finished at step 3: it has no events left, and run\.model holds"):
        list(run)
    assert run.run_to_end() is run.model  # nothing left to consume: still the result

    closed = tiny_run(training_pair, model=_model())
    next(iter(closed))
    closed._events.close()
    with pytest.raises(RuntimeError, match="was closed or ended by an exception"):
        next(iter(closed))


def test_a_run_left_with_break_goes_on_where_it_was(training_pair):
    run = tiny_run(training_pair, model=_model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event in run:
            if isinstance(event, ev.Step):
                break
        rest = list(run)  # not ended: the remaining events
    assert [e.step for e in rest if isinstance(e, ev.Step)] == [2, 3] and isinstance(rest[-1], ev.Finished)


def test_an_unknown_model_name_lists_the_architectures_finetune_also_takes(training_pair):
    from napari_deblurgan.errors import ModelFileError

    with pytest.raises(ModelFileError, match=r"finetune also takes an architecture name to train from scratch \("):
        tiny_run(training_pair, model="nope")


def test_training_notices_can_be_filtered_by_their_top_level_warning_class(training_pair):
    """A script whose on_event prints every event saw each notice twice (the event and its warning); the warning's
    class was reachable only from napari_deblurgan.training.events."""
    import napari_deblurgan

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", napari_deblurgan.TrainingNoticeWarning)
        events = list(tiny_run(training_pair, model=_model(), steps=1, teacher_weight=0.3))
    assert [e for e in events if isinstance(e, ev.Notice) and "teacher_weight 0.3 is ignored" in e.message]
    assert not [w for w in seen if "teacher_weight" in str(w.message)]


def test_synthetic_blur_kinds_are_taken_in_any_case_as_finetune_takes_them():
    import numpy as np

    from napari_deblurgan import samples, synthesize_blur

    sharp = (samples.cells((64, 64), seed=2) * 1000).astype(np.float32)
    blurred, psf = synthesize_blur(sharp, kind="Motion", seed=4)
    same, same_psf = synthesize_blur(sharp, kind="motion", seed=4)
    np.testing.assert_array_equal(blurred, same)
    np.testing.assert_array_equal(psf, same_psf)


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.generator.state_dict().items()}


def _stopped_after(pair, step: int, **kw):
    """The model a run of ``kw`` returns when stopped after ``step`` (the reference for a failure there)."""
    run = tiny_run(pair, **{"model": _model(), **kw})
    for event in run:
        if isinstance(event, ev.Step) and event.step == step:
            run.stop()
    return run.model


def test_a_run_without_validation_that_fails_keeps_the_last_whole_steps_weights(training_pair, monkeypatch):
    """Without validation the result is the latest weights; a run that fails (unreadable data in step 5) must
    still hold those of step 4, which the CLI then saves as "the model so far", not the untrained base model."""
    from napari_deblurgan.data.pairs import BatchSource

    kw = {"steps": 8, "validation": 0}
    expected = _stopped_after(training_pair, 4, **kw)
    base = _weights(_model())
    raise_on_call(monkeypatch, BatchSource, "next_batch", 5, OSError("the disk went away"))  # one batch a step
    run = tiny_run(training_pair, **{"model": _model(), **kw})
    with pytest.raises(OSError, match="disk went away"):
        for _ in run:
            pass
    model = run.model
    got, want = _weights(model), _weights(expected)
    assert any(not torch.equal(got[k], base[k]) for k in got), "the untrained base model was kept"
    assert all(torch.equal(got[k], want[k]) for k in got)
    training = model.metadata["training"]
    assert (training["steps_done"], training["best_step"], training["stopped"]) == (4, 4, True)


def test_an_abort_inside_the_generator_update_keeps_a_whole_steps_weights(training_pair, monkeypatch):
    """An abort between the generator's optimiser step and its EMA update leaves neither step's weights: the
    run keeps its last snapshot's (here the start's), never a half-updated mix."""
    from napari_deblurgan.training.trainer import GanStep

    kw = {"steps": 8, "validation": 0}
    raise_on_call(monkeypatch, GanStep, "_update_ema", 3, KeyboardInterrupt())
    start = _model()
    run = tiny_run(training_pair, **{"model": start, **kw})
    with pytest.raises(KeyboardInterrupt):
        for _ in run:
            pass
    got, base = _weights(run.model), _weights(start)
    assert all(torch.equal(got[k], base[k]) for k in got)  # the snapshot of step 0: the starting weights
    training = run.model.metadata["training"]
    assert (training["steps_done"], training["best_step"]) == (2, 0)  # the run trained 2; its model is step 0's


def test_an_abort_inside_an_update_falls_back_no_further_than_the_last_checkpoint(training_pair, tmp_path, monkeypatch):
    """The in-memory snapshot that an abort inside a generator update falls back to is also taken at every
    checkpoint: here checkpoints every 3 steps and snapshots every 2 (validate_every), an abort in step 4 keeps
    step 3's weights (the checkpoint's), not step 2's."""
    from napari_deblurgan.training.checkpoint import load_checkpoint
    from napari_deblurgan.training.trainer import GanStep

    raise_on_call(monkeypatch, GanStep, "_update_ema", 4, KeyboardInterrupt())
    kw = {"steps": 8, "validation": 0, "validate_every": 2, "checkpoint_every": 3, "checkpoint_dir": tmp_path}
    run = tiny_run(training_pair, **{"model": _model(), **kw})
    with pytest.raises(KeyboardInterrupt):
        for _ in run:
            pass
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 3
    got = _weights(run.model)
    assert all(torch.equal(got[k], checkpoint["state"]["generator"][k]) for k in got)
    assert run.model.metadata["training"]["steps_done"] == 3


@pytest.mark.parametrize("ending", ["stop", "abort"])
def test_a_fallback_to_the_snapshot_records_the_same_steps_on_a_stop_and_on_an_abort(
    training_pair, monkeypatch, ending
):
    """Without validation, a stop after an unchecked overflow in step 3 and an abort inside step 4's update both
    return the snapshot's weights (the start's here). The model's metadata says so alike: ``best_step`` is the
    step of its weights, ``steps_done`` the steps the run trained (3), as with validation; an abort recorded
    the snapshot's step as ``steps_done``, a stop the run's."""
    from napari_deblurgan.training.trainer import GanStep

    if ending == "stop":
        _overflow_in_step(monkeypatch, 3, "weights")
    else:
        raise_on_call(monkeypatch, GanStep, "_update_ema", 4, KeyboardInterrupt())
    start = _model()
    run = tiny_run(training_pair, **{"model": start, "steps": 100, "validation": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt) if ending == "abort" else contextlib.nullcontext():
            for event in run:
                if ending == "stop" and isinstance(event, ev.Step) and event.step == 3:
                    run.stop()
    got, base = _weights(run.model), _weights(start)
    assert all(torch.equal(got[k], base[k]) for k in got)  # the snapshot of step 0
    training = run.model.metadata["training"]
    assert (training["steps_done"], training["best_step"], training["stopped"]) == (3, 0, True)


def _overflow_in_step(monkeypatch, n: int, where: str) -> None:
    """Make step ``n``'s update overflow while its loss stays finite: an infinity in Adam's moments (the weights
    stay finite, that element's steps become 0) or a NaN in a generator weight."""
    from napari_deblurgan.training.trainer import GanStep

    calls = []
    original = GanStep.run

    def overflowing(self, next_batch, batch_size):
        result = original(self, next_batch, batch_size)
        calls.append(1)
        if len(calls) == n:
            with torch.no_grad():
                if where == "moments":
                    next(iter(self.opt_g.state.values()))["exp_avg_sq"].view(-1)[0] = float("inf")
                else:
                    next(self.generator.parameters()).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(GanStep, "run", overflowing)


def test_a_state_gone_non_finite_with_a_finite_loss_is_rolled_back_as_a_nan_loss_is(
    training_pair, tmp_path, monkeypatch
):
    """An infinity in the optimiser's moments leaves the weights and the losses finite, so no loss would ever
    say it: checkpoints and snapshots would stop for the rest of the run. The state is checked where a snapshot
    or checkpoint takes it, and rolled back as a NaN loss is; the run goes on and checkpoints again."""
    from napari_deblurgan.training.checkpoint import load_checkpoint

    _overflow_in_step(monkeypatch, 3, "moments")
    kw = {"steps": 5, "checkpoint_every": 1, "checkpoint_dir": tmp_path}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = list(tiny_run(training_pair, **{"model": _model(), **kw}))
    notices = [e for e in events if isinstance(e, ev.Notice) and e.kind != "info"]
    assert [e.kind for e in notices] == ["rollback"]
    assert notices[0].message.startswith("Non-finite values at step 3") and "opt_g" in notices[0].message
    assert events[-1].step == 5  # the run went on
    assert load_checkpoint(tmp_path)["step"] == 5  # and its checkpoints with it


def test_a_stop_after_an_unchecked_overflow_writes_no_checkpoint_of_it_and_returns_finite_weights(
    training_pair, tmp_path, monkeypatch
):
    """Between checked steps an overflow goes unseen until a stop ends the run there: the final checkpoint is not
    written (load_checkpoint would refuse it; a checkpoint-failed notice says so), and without validation the
    model returned is the last snapshot's, not NaN weights that cannot be saved."""
    _overflow_in_step(monkeypatch, 3, "weights")
    kw = {"steps": 100, "validation": 0, "checkpoint_every": 50, "checkpoint_dir": tmp_path}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = tiny_run(training_pair, **{"model": _model(), **kw})
        events = []
        for event in run:
            events.append(event)
            if isinstance(event, ev.Step) and event.step == 3:
                run.stop()
    skipped = [e.message for e in events if isinstance(e, ev.Notice) and e.kind == "checkpoint-failed"]
    assert skipped and skipped[0].startswith("Not writing the checkpoint at step 3")
    assert not list(tmp_path.glob("*.pt"))
    assert all(torch.isfinite(v).all() for v in run.model.generator.state_dict().values())
    assert run.model.metadata["training"]["best_step"] == 0  # the snapshot: the start
    run.model.save(tmp_path / "saved.pt")


def test_a_state_gone_non_finite_is_no_snapshot_to_roll_back_to(training_pair, tmp_path, monkeypatch):
    """A weight that turns NaN in step 3's update (its loss still finite) at a checkpoint step: the snapshot must
    not take it, or step 4's NaN loss would roll back into the same NaN state until the run gave up (and
    without validation returned NaN weights). The run rolls back to step 2 once and finishes."""
    _overflow_in_step(monkeypatch, 3, "weights")
    kw = {"steps": 8, "validation": 0, "validate_every": 2, "checkpoint_every": 3, "checkpoint_dir": tmp_path}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = tiny_run(training_pair, **{"model": _model(), **kw})
        events = list(run)
    kinds = [e.kind for e in events if isinstance(e, ev.Notice)]
    assert kinds.count("rollback") == 1 and "diverged" not in kinds
    assert run.finished.step == 8 and not run.finished.stopped
    assert all(torch.isfinite(v).all() for v in run.model.generator.state_dict().values())


def test_an_abort_after_an_update_but_before_its_step_is_counted_keeps_the_last_counted_steps_weights(
    training_pair, monkeypatch
):
    """Between a step's update and the loop's counting of it (the state check of a snapshot step runs there) the
    live weights are the next step's, not yet counted: an abort then must keep the snapshot's (step 1 here),
    not the live weights labelled as step 1's."""
    import napari_deblurgan.training.trainer as trainer

    kw = {"steps": 6, "validation": 0, "validate_every": 1}
    expected = _stopped_after(training_pair, 1, **kw)
    raise_on_call(monkeypatch, trainer, "first_non_finite_tensor", 2, KeyboardInterrupt())
    run = tiny_run(training_pair, **{"model": _model(), **kw})
    with pytest.raises(KeyboardInterrupt):
        for _ in run:
            pass
    got, want = _weights(run.model), _weights(expected)
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert run.model.metadata["training"]["best_step"] == 1


def test_an_out_of_memory_error_in_the_state_check_does_not_run_the_step_again(training_pair, monkeypatch):
    """The state check runs after the step's update: an out-of-memory error there, handled as one inside the step
    (batch halved, the step run again), applied the step's update twice. It ends the run as any error does, with
    the weights of the last counted step (the snapshot of step 1, as a stop after it returns)."""
    import napari_deblurgan.training.trainer as trainer
    from napari_deblurgan.training.trainer import GanStep

    kw = {"steps": 6, "validation": 0, "validate_every": 1}
    expected = _stopped_after(training_pair, 1, **kw)
    raise_on_call(monkeypatch, trainer, "first_non_finite_tensor", 2, torch.cuda.OutOfMemoryError("check"))
    steps = []
    original = GanStep.run
    monkeypatch.setattr(GanStep, "run", lambda self, *a: steps.append(1) or original(self, *a))
    run = tiny_run(training_pair, **{"model": _model(), **kw})
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(torch.cuda.OutOfMemoryError, match="check"):
            for event in run:
                events.append(event)
    assert len(steps) == 2  # steps 1 and 2, each run once
    assert not [e for e in events if isinstance(e, ev.Notice) and e.kind == "oom"]
    got, want = _weights(run.model), _weights(expected)
    assert all(torch.equal(got[k], want[k]) for k in got)
    training = run.model.metadata["training"]
    assert (training["best_step"], training["steps_done"], training["stopped"]) == (1, 1, True)


# ------------------------------------------------------------------------------------- the state check
def _state_payload() -> dict:
    """A training state's shape: weights, an optimiser's nested state (with a float step counter) and groups,
    an integer counter, and float16/float64 tensors."""
    torch.manual_seed(0)
    return {
        "generator": {"conv.weight": torch.randn(4, 3), "conv.bias": torch.randn(4)},
        "opt_g": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3), "exp_avg_sq": torch.rand(4, 3)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "ema_updates": torch.tensor(7),  # an integer: never checked
        "half": torch.randn(5).half(),
        "double": torch.full((3,), 1e308, dtype=torch.float64),  # finite; its sum overflows
    }


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({}, None),
        ({("opt_g", "state", 0, "exp_avg_sq"): float("inf")}, "opt_g.state.0.exp_avg_sq"),
        ({("opt_g", "state", 0, "step"): float("nan")}, "opt_g.state.0.step"),
        ({("half",): float("-inf")}, "half"),
        ({("double",): float("inf")}, "double"),
        # two: the first in the payload's order is named
        (
            {("opt_g", "state", 0, "exp_avg"): float("nan"), ("generator", "conv.bias"): float("inf")},
            "generator.conv.bias",
        ),
    ],
)
def test_the_state_check_names_the_first_tensor_that_is_not_finite(bad, expected):
    from napari_deblurgan.model_file import first_non_finite
    from napari_deblurgan.training.checkpoint import _named_tensors, first_non_finite_tensor

    payload = _state_payload()
    for where, value in bad.items():
        tree = payload
        for key in where[:-1]:
            tree = tree[key]
        tree[where[-1]].view(-1)[-1] = value
    assert first_non_finite_tensor(payload) == expected
    assert first_non_finite(dict(_named_tensors(payload))) == expected  # the tensor-by-tensor search agrees


def test_the_state_check_of_a_finite_state_waits_for_its_device_once(monkeypatch):
    """The loop checks its state after every snapshot and checkpoint step; on a GPU each bool() or item() of a
    device tensor waits for the device, so one per tensor was hundreds of waits per check."""
    from napari_deblurgan.training.checkpoint import first_non_finite_tensor

    payload = _state_payload()
    payload["more"] = [torch.randn(8) for _ in range(20)]
    waits = []
    for name in ("__bool__", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            waits.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    assert first_non_finite_tensor(payload) is None
    assert len(waits) == 1


# ------------------------------------------------------------------------------------- why nothing was saved
def _nan_scores(monkeypatch) -> None:
    """Every validation scores NaN (a model whose output on the validation crops is not finite)."""
    import napari_deblurgan.training.trainer as trainer

    original = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: (float("nan"), *original(*a, **k)[1:]))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no validation", "the failure came before any trained weights were kept"),
        ("validations scored NaN", "no validation had given a finite score yet"),
        ("the first validation aborted", "no validation had given a finite score yet"),
        ("the start scored best", "no validation had scored better than the starting model yet"),
    ],
)
def test_why_a_failed_runs_model_is_not_saved_is_said_for_the_run_it_was(training_pair, monkeypatch, case, reason):
    """A failed run whose model so far is the starting one says why no model was written: a run with validation
    whose validations gave no finite score (or none finished) has no val_psnr, as a run without validation, but
    was told that the failure came before any trained weights were kept."""
    import napari_deblurgan.training.trainer as trainer
    from napari_deblurgan.data.pairs import BatchSource
    from napari_deblurgan.training.saving import why_not_saved_after_a_failure
    from napari_deblurgan.training.trainer import GanStep

    kw = {"steps": 8, "validate_every": 2}
    if case == "no validation":  # an abort in step 3's update falls back to the start's snapshot
        kw.update(validation=0, validate_every=100)  # snapshots every 50 steps
        raise_on_call(monkeypatch, GanStep, "_update_ema", 3, KeyboardInterrupt())
    elif case == "the first validation aborted":
        raise_on_call(monkeypatch, trainer, "evaluate", 1, KeyboardInterrupt())
    else:
        if case == "validations scored NaN":
            _nan_scores(monkeypatch)
        else:  # the start scores best: every later validation scores lower than it
            original = trainer.evaluate
            scores = iter(range(100, 0, -1))
            monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: (float(next(scores)), *original(*a, **k)[1:]))
        raise_on_call(monkeypatch, BatchSource, "next_batch", 5, OSError("the disk went away"))
    run = tiny_run(training_pair, **{"model": _model(), **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((KeyboardInterrupt, OSError)):
            for _ in run:
                pass
    assert why_not_saved_after_a_failure(run.model) == f"{reason}, so no model was written"


def test_an_out_of_memory_error_after_the_generators_update_goes_back_to_the_snapshot(training_pair, monkeypatch):
    """An out-of-memory error in the generator's update (here its EMA's, after the optimiser's step) left that
    update applied, and the step, run again at half the batch, applied it a second time. The run now goes back
    to the last snapshot (of step 2, with a snapshot every step) and says so."""
    from napari_deblurgan.training.trainer import GanStep

    kw = {"steps": 5, "validation": 0, "validate_every": 1}
    expected = _weights(_stopped_after(training_pair, 2, **kw))
    raise_on_call(monkeypatch, GanStep, "_update_ema", 3, torch.cuda.OutOfMemoryError("ema"))  # in step 3
    live: list[GanStep] = []
    original = GanStep.run
    monkeypatch.setattr(GanStep, "run", lambda self, *a: live.append(self) or original(self, *a))
    run = tiny_run(training_pair, **{"model": _model(), "batch_size": 2, **kw})
    at_notice = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event in run:
            if isinstance(event, ev.Notice) and event.kind == "oom":
                at_notice = (event.message, {k: v.clone() for k, v in live[-1].generator.state_dict().items()})
    assert at_notice is not None
    message, weights = at_notice
    assert all(torch.equal(weights[k], expected[k]) for k in expected)  # step 3's update is not kept
    assert "back to step 2, batch size halved to 1" in message, message
    assert run.finished is not None and run.finished.step == 5


def test_a_run_refused_before_its_first_step_leaves_no_checkpoint_folder(training_pair, tmp_path):
    """The folder was created to check that it can be written, before the data were checked: a run refused
    for its data left an empty folder, which the Finetune panel then took for an earlier run to keep."""
    from napari_deblurgan.widgets.finetune_widget import _taken

    blurred, sharp = training_pair
    folder = tmp_path / "deep" / "mine.checkpoint"
    with pytest.raises(InputError, match="differ in shape"):
        tiny_run((blurred[:, :-8], sharp), steps=2, checkpoint_dir=folder)
    assert not (tmp_path / "deep").exists()
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(InputError, match="is a file"):  # the checks themselves still run
        tiny_run(training_pair, steps=2, checkpoint_dir=tmp_path / "file.txt")
    folder.mkdir(parents=True)  # an empty folder (an older version's, or made by hand) holds no run to keep
    assert not _taken(tmp_path / "deep" / "mine.pt")
    list(tiny_run(training_pair, steps=1, checkpoint_dir=folder))
    assert _taken(tmp_path / "deep" / "mine.pt")


def test_every_rollback_restores_the_snapshot_itself(training_pair, monkeypatch):
    """Loading a state into torch's optimiser shares its tensors (Adam's step counters; on the CPU its moments
    too), so training after a rollback changed the snapshot, and a second rollback to it restored a later state
    (Adam at step 5 for a snapshot of step 3). Each rollback now restores a copy."""
    from napari_deblurgan.training.trainer import GanStep

    calls: list[int] = []
    update_ema = GanStep._update_ema

    def failing_in_steps_4_and_5_again(self: GanStep) -> None:
        calls.append(1)
        if len(calls) in (4, 6):  # in step 4, then (back at step 3) in the next step 4 again
            raise torch.cuda.OutOfMemoryError("injected")
        update_ema(self)

    monkeypatch.setattr(GanStep, "_update_ema", failing_in_steps_4_and_5_again)
    live: list[GanStep] = []
    run_step = GanStep.run
    monkeypatch.setattr(GanStep, "run", lambda self, *a: live.append(self) or run_step(self, *a))
    run = tiny_run(training_pair, model=_model(), batch_size=4, steps=8, validation=0, validate_every=3)
    restored = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event in run:
            if isinstance(event, ev.Notice) and event.kind == "oom":
                assert "back to step 3" in event.message, event.message
                restored.append(float(live[-1].opt_g.state_dict()["state"][0]["step"]))
    assert restored == [3.0, 3.0]

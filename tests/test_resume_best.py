"""What a checkpoint says about its best weights, and what a resumed run makes of it.

* A new best is recorded atomically: a KeyboardInterrupt (a second Ctrl-C) at any line of validate() leaves a
  checkpoint whose best_psnr / best_step / best_source describe the best weights it holds.
* A checkpoint written while the validation of its step was aborted says so ("validated": false), and the
  resumed run validates those weights first, as the uninterrupted run did; a checkpoint of a step off the
  validation schedule is not validated on resume (the uninterrupted run did not validate it either).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from _helpers import raise_on_call, tiny_unet
from napari_deblurgan.training import events as ev
from napari_deblurgan.training import trainer
from napari_deblurgan.training.checkpoint import load_checkpoint, save_checkpoint
from napari_deblurgan.training.trainer import iter_finetune

pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the Ctrl-C and checkpoint notices are warnings too
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]

RUN_ARGS: dict[str, Any] = dict(
    patch_size=32, batch_size=2, preset="content", device="cpu", seed=0, ema=0.9, checkpoint_every=100
)


def _validations(events) -> list[tuple[int, str, float]]:
    return [(e.step, e.source, e.psnr) for e in events if isinstance(e, ev.Validation)]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _best_weights_by_validation(pair, **kw) -> dict[tuple[int, str], tuple[float, dict[str, torch.Tensor]]]:
    """An uninterrupted run: (step, source) of every new best -> its PSNR and its weights (run.model then)."""
    bests: dict[tuple[int, str], tuple[float, dict[str, torch.Tensor]]] = {}
    run = iter_finetune(*pair, model=tiny_unet(), **RUN_ARGS, **kw)
    for event in run:
        if isinstance(event, ev.Validation) and event.is_best:
            state = {key: value.clone() for key, value in run.model.generator.state_dict().items()}
            bests[(event.step, event.source)] = (event.psnr, state)
    return bests


def _tracer_of_validate(at_step: int, on_line: Callable[[int], None]) -> Callable[..., Any]:
    """A sys.settrace function that calls ``on_line(line number)`` before each line validate() and _set_best()
    run at ``at_step`` (where it may raise, as a signal handler would)."""
    code = trainer.__file__

    def tracer(frame, event, arg):
        if frame.f_code.co_filename == code and frame.f_code.co_name in ("validate", "_set_best"):

            def local(frame, event, arg):
                validating = frame if frame.f_code.co_name == "validate" else frame.f_back  # _set_best's caller
                if (
                    event == "line"
                    and validating is not None
                    and validating.f_code.co_name == "validate"
                    and validating.f_locals.get("step") == at_step
                    # every line, a with statement's too: an exception on one (as its block ends, before __exit__)
                    # would leave a lock held (CPython, bpo-29988), so run.model takes no lock
                ):
                    on_line(frame.f_lineno)
                return local

            return local
        return None

    return tracer


def test_an_interrupt_at_any_line_of_a_new_best_leaves_a_checkpoint_that_describes_its_weights(
    training_pair, tmp_path: Path
):
    kw = dict(steps=10, validate_every=5, learning_rate=0.02)
    reference = _best_weights_by_validation(training_pair, **kw)
    assert any(step == 10 for step, _ in reference), "step 10 must be a new best for this test to mean anything"

    # every line validate() (and _set_best) runs at step 10
    lines: list[int] = []
    sys.settrace(_tracer_of_validate(10, lines.append))
    try:
        list(iter_finetune(*training_pair, model=tiny_unet(), **RUN_ARGS, **kw))
    finally:
        sys.settrace(None)
    assert lines

    for stop_at in range(len(lines)):
        seen = iter(range(len(lines)))

        def interrupt_at_line(line: int, seen=seen, stop_at=stop_at) -> None:
            if next(seen) == stop_at:
                raise KeyboardInterrupt("a second Ctrl-C, simulated")

        folder = tmp_path / f"at_{stop_at}"
        run = iter_finetune(*training_pair, model=tiny_unet(), checkpoint_dir=folder, **RUN_ARGS, **kw)
        sys.settrace(_tracer_of_validate(10, interrupt_at_line))
        try:
            with pytest.raises(KeyboardInterrupt):
                for _ in run:
                    pass
        finally:
            sys.settrace(None)
        checkpoint = load_checkpoint(folder)
        said = json.loads(checkpoint["json"])
        where = f"interrupted before line {lines[stop_at]} of trainer.py"
        psnr, weights = reference[(said["best_step"], said["best_source"])]
        assert said["best_psnr"] == psnr, where
        assert _same_weights(checkpoint["best_state"], weights), where
        # and run.model, after the abort, is the model its metadata describes (and does not hang)
        model = _model_within_a_minute(run)
        assert model is not None, f"run.model hangs after an abort {where}"
        training = model.metadata["training"]
        psnr, weights = reference[(training["best_step"], training["best_source"])]
        assert training["val_psnr"] == psnr, where
        assert _same_weights(model.generator.state_dict(), weights), where


def _model_within_a_minute(run) -> Any:
    """``run.model``, or None when it does not return within a minute (a lock left held by an interrupt)."""
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(run.model), daemon=True)  # a hung one dies with pytest
    thread.start()
    thread.join(60)
    return got[0] if got else None


def test_a_validation_aborted_by_a_second_ctrl_c_is_done_by_the_resumed_run(training_pair, tmp_path, monkeypatch):
    kw = dict(steps=20, validate_every=10, learning_rate=0.02)
    straight_run = iter_finetune(*training_pair, model=tiny_unet(), **RUN_ARGS, **kw)
    straight = _validations(straight_run)

    real_evaluate = trainer.evaluate
    # a second Ctrl-C in validation 2 (1: the starting model; 2: step 10's generator)
    raise_on_call(monkeypatch, trainer, "evaluate", 2, KeyboardInterrupt("a second Ctrl-C during the validation"))
    first = iter_finetune(*training_pair, model=tiny_unet(), checkpoint_dir=tmp_path, **RUN_ARGS, **kw)
    with pytest.raises(KeyboardInterrupt):
        for _ in first:
            pass
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 10
    assert json.loads(checkpoint["json"])["validated"] is False

    resumed_run = iter_finetune(*training_pair, resume=tmp_path, **RUN_ARGS, **kw)
    resumed = _validations(resumed_run)
    assert resumed == [v for v in straight if v[0] >= 10]  # step 10's weights validated, as straight
    assert _same_weights(resumed_run.model.generator.state_dict(), straight_run.model.generator.state_dict())
    assert resumed_run.model.metadata["training"]["best_step"] == straight_run.model.metadata["training"]["best_step"]


def test_a_checkpoint_off_the_validation_schedule_is_not_validated_on_resume(training_pair, tmp_path):
    kw = dict(steps=10, validate_every=5)
    straight = _validations(iter_finetune(*training_pair, model=tiny_unet(), **RUN_ARGS, **kw))

    first = iter(iter_finetune(*training_pair, model=tiny_unet(), checkpoint_dir=tmp_path, **RUN_ARGS, **kw))
    for event in first:
        if isinstance(event, ev.Step) and event.step == 3:
            break
    first.close()  # the consumer leaves: the checkpoint of step 3 is written, never validated
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 3 and json.loads(checkpoint["json"])["validated"] is False

    resumed = _validations(iter_finetune(*training_pair, resume=tmp_path, **RUN_ARGS, **kw))
    assert resumed == [v for v in straight if v[0] > 3]


def test_a_checkpoint_without_the_validated_field_resumes_as_validated(training_pair, tmp_path, monkeypatch):
    """Checkpoints of older versions have no "validated": their step counts as validated, as it did."""
    kw = dict(steps=20, validate_every=10, learning_rate=0.02)
    real_evaluate = trainer.evaluate
    raise_on_call(monkeypatch, trainer, "evaluate", 2, KeyboardInterrupt())
    first = iter_finetune(*training_pair, model=tiny_unet(), checkpoint_dir=tmp_path, **RUN_ARGS, **kw)
    with pytest.raises(KeyboardInterrupt):
        for _ in first:
            pass
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    checkpoint = load_checkpoint(tmp_path)
    said = json.loads(checkpoint["json"])
    del said["validated"]
    checkpoint["json"] = json.dumps(said)
    save_checkpoint(tmp_path, checkpoint)

    resumed = _validations(iter_finetune(*training_pair, resume=tmp_path, **RUN_ARGS, **kw))
    assert [step for step, _, _ in resumed] == [20, 20]  # generator and EMA at the end, not step 10
    assert np.isfinite([psnr for _, _, psnr in resumed]).all()


def test_resuming_a_checkpoint_whose_weights_are_nan_is_refused_before_training(training_pair, tmp_path):
    from napari_deblurgan.errors import ModelFileError

    kw = dict(steps=4, validate_every=2)
    list(iter_finetune(*training_pair, model=tiny_unet(), checkpoint_dir=tmp_path, **RUN_ARGS, **kw))
    payload = load_checkpoint(tmp_path)
    name = next(key for key, value in payload["state"]["ema"].items() if value.is_floating_point())
    payload["state"]["ema"][name] = torch.full_like(payload["state"]["ema"][name], float("nan"))
    save_checkpoint(tmp_path, {key: value for key, value in payload.items() if key not in ("format", "version")})
    with pytest.raises(ModelFileError, match=rf"not finite \(NaN or infinite\), first in 'state\.ema\.{name}'"):
        iter_finetune(*training_pair, resume=tmp_path, **RUN_ARGS, steps=6)

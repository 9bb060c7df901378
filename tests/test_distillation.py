"""Self-ensemble distillation (training/distillation.py): the mixed targets, their use in a run, the
provenance, resume with the same teacher only, and one clear error per bad argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import tiny_run, tiny_unet
from napari_deblurgan.errors import InputError, ModelFileError
from napari_deblurgan.training import events as ev
from napari_deblurgan.training import losses
from napari_deblurgan.training.distillation import SelfEnsembleTeacher, weights_digest

pytestmark = [
    pytest.mark.filterwarnings("ignore:Perceptual loss:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # conftest.py
]


def test_targets_mix_sharp_with_the_teachers_mean_over_the_eight_symmetries():
    teacher = tiny_unet(seed=3)
    g = torch.Generator().manual_seed(0)
    blurred, sharp = torch.rand(2, 1, 32, 24, generator=g), torch.rand(2, 1, 32, 24, generator=g)  # not square
    got = SelfEnsembleTeacher(teacher, 0.25, torch.device("cpu")).targets(blurred, sharp)
    outputs = []
    with torch.no_grad():
        for flip in (False, True):
            for turns in range(4):
                x = blurred.numpy()[..., ::-1] if flip else blurred.numpy()
                x = np.ascontiguousarray(np.rot90(x, turns, axes=(-2, -1)))
                y = np.rot90(teacher.generator.eval()(torch.from_numpy(x)).numpy(), -turns, axes=(-2, -1))
                outputs.append(y[..., ::-1] if flip else y)
    expected = 0.75 * sharp.numpy() + 0.25 * np.mean(outputs, axis=0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    plain = teacher.generator(blurred).detach().numpy()
    assert np.abs(got.numpy() - (0.75 * sharp.numpy() + 0.25 * plain)).max() > 1e-4  # the ensemble, not one pass


def test_a_run_trains_toward_the_teacher(training_pair):
    """With the whole target from the teacher, a student moves toward the teacher's ensemble output."""
    teacher = tiny_unet(seed=7)
    probe = torch.from_numpy(training_pair[0][None, None, :64, :64].astype(np.float32) / 4000)
    reference = SelfEnsembleTeacher(teacher, 1.0, torch.device("cpu")).ensemble(probe)

    def distance(model):
        with torch.no_grad():
            return float(torch.mean((model.generator.eval()(probe) - reference) ** 2))

    kw = dict(steps=40, learning_rate=2e-3, validation=None)
    taught = tiny_run(training_pair, teacher=teacher, teacher_weight=1.0, **kw).run_to_end()
    plain = tiny_run(training_pair, **kw).run_to_end()
    start = distance(tiny_unet())
    assert distance(taught) < 0.5 * start
    assert distance(taught) < 0.5 * distance(plain)


def test_teacher_is_recorded_and_left_untouched(training_pair):
    teacher = tiny_unet(seed=5)
    before = {k: v.clone() for k, v in teacher.generator.state_dict().items()}
    model = tiny_run(training_pair, teacher=teacher, teacher_weight=0.5).run_to_end()
    recorded = model.metadata["training"]["teacher"]
    assert recorded["weights_sha256"] == weights_digest(teacher) and recorded["weight"] == 0.5
    assert recorded["self_ensemble"] == 8
    for k, v in teacher.generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert tiny_run(training_pair).run_to_end().metadata["training"]["teacher"] is None


def test_the_critic_sees_the_true_sharp_crops(training_pair, monkeypatch):
    seen = []
    real_critic_loss = losses.critic_loss

    def recording(critic, real, fake, **kw):
        seen.append(real.detach().clone())
        return real_critic_loss(critic, real, fake, **kw)

    monkeypatch.setattr(losses, "critic_loss", recording)
    teacher = tiny_unet(seed=5)
    run = tiny_run(training_pair, preset="default", steps=1, teacher=teacher, teacher_weight=1.0)
    step_fn_batches = []
    from napari_deblurgan.data import pairs as data_pairs

    original = data_pairs.BatchSource.next_batch

    def spy(self, n):
        batch = original(self, n)
        step_fn_batches.append(batch[1].detach().clone())
        return batch

    monkeypatch.setattr(data_pairs.BatchSource, "next_batch", spy)
    list(run)
    assert seen and all(any(torch.equal(s, b) for b in step_fn_batches) for s in seen)


@pytest.mark.parametrize("weight", [0, 1.5, -0.1, True, "half"])
def test_bad_teacher_weight(training_pair, weight):
    with pytest.raises(InputError, match=r"teacher_weight must be a number in \(0, 1\]"):
        tiny_run(training_pair, teacher=tiny_unet(seed=1), teacher_weight=weight)


@pytest.mark.parametrize("weight", [3, 0, "half"])
def test_a_bad_teacher_weight_is_refused_without_a_teacher_too(training_pair, weight):
    with pytest.raises(InputError, match=r"teacher_weight must be a number in \(0, 1\]"):
        tiny_run(training_pair, teacher_weight=weight)


def test_a_teacher_weight_without_a_teacher_is_said_to_be_ignored(training_pair):
    with pytest.warns(UserWarning, match="teacher_weight 0.3 is ignored: no teacher was given"):
        events = list(tiny_run(training_pair, steps=1, teacher_weight=0.3))
    assert [e for e in events if isinstance(e, ev.Notice) and "teacher_weight 0.3 is ignored" in e.message]
    quiet = list(tiny_run(training_pair, steps=1))  # the default weight, no teacher: nothing to say
    assert not [e for e in quiet if isinstance(e, ev.Notice) and "teacher_weight" in e.message]


def test_bad_teacher(training_pair, tmp_path):
    with pytest.raises(InputError, match="teacher must be"):
        tiny_run(training_pair, teacher=3)
    with pytest.raises(InputError, match="the teacher takes 3 channel"):
        tiny_run(training_pair, teacher=tiny_unet(3, seed=1))
    with pytest.raises(ModelFileError, match="missing"):
        tiny_run(training_pair, teacher=tmp_path / "missing.pt")


def test_resume_needs_the_same_teacher(training_pair, tmp_path):
    teacher = tiny_unet(seed=5)
    first = tiny_run(training_pair, steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, teacher=teacher)
    for e in first:
        if isinstance(e, ev.Step) and e.step == 2:
            first.stop()
    assert first.finished.stopped
    with pytest.raises(InputError, match="started with a teacher; pass the same teacher"):
        tiny_run(training_pair, steps=4, checkpoint_dir=tmp_path, resume=tmp_path)
    with pytest.raises(InputError, match="started with another teacher"):
        tiny_run(training_pair, steps=4, checkpoint_dir=tmp_path, resume=tmp_path, teacher=tiny_unet(seed=6))
    resumed = tiny_run(
        training_pair, steps=4, checkpoint_dir=tmp_path, resume=tmp_path, teacher=teacher, teacher_weight=0.9
    )
    assert resumed.config.teacher_weight == 0.5  # the checkpoint's recipe wins, as for every other setting
    assert resumed.run_to_end().metadata["training"]["steps_done"] == 4
    plain_dir = tmp_path / "plain"
    plain = tiny_run(training_pair, steps=4, checkpoint_dir=plain_dir, checkpoint_every=2)
    for e in plain:
        if isinstance(e, ev.Step) and e.step == 2:
            plain.stop()
    with pytest.raises(InputError, match="started without a teacher"):
        tiny_run(training_pair, steps=4, checkpoint_dir=plain_dir, resume=plain_dir, teacher=teacher)

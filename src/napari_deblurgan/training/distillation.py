"""Self-ensemble distillation: training targets mixed with a frozen teacher's 8-fold self-ensemble output.

With a teacher, every generator update trains toward ``(1 - w) * sharp + w * T(blurred)``, where ``T`` is
the teacher's geometric self-ensemble (inference/self_ensemble.py: the mean of its outputs on the 8
flips/rotations of the crop) and ``w`` the teacher weight. The ensemble is a lower-variance estimate of
the sharp image than one network pass; pulling a student (typically the teacher itself) toward it might move
part of the ensemble's gain into a single pass, at no cost at inference time. Measured so far (docs/model-card.md,
stage 9): at 3,000 CPU steps a control without the teacher did as well.
Only the generator's content terms (content loss, perceptual / feature matching) use the mixed targets: the
critic, when the preset has one, still sees the true sharp crops, and validation always scores against them.
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..inference.self_ensemble import ensemble_forward

if TYPE_CHECKING:
    from ..model_file import DeblurModel


def weights_digest(model: DeblurModel) -> str:
    """sha256 over a model's generator tensors (names, shapes, dtypes and values): identifies the weights
    whether they came from a file or live in memory."""
    digest = hashlib.sha256()
    for name, tensor in model.generator.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def check_teacher_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < float(weight) <= 1.0:
        raise InputError(f"teacher_weight must be a number in (0, 1], such as 0.5; got {weight!r}.")
    return float(weight)


class SelfEnsembleTeacher:
    """A frozen copy of ``model`` on ``device`` that turns (blurred, sharp) batches into mixed targets."""

    def __init__(
        self,
        model: DeblurModel,
        weight: float,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        *,
        digest: str | None = None,
    ) -> None:
        self.model = model
        self.weight = check_teacher_weight(weight)
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.digest = weights_digest(model) if digest is None else digest  # the run passes the one it checked
        self.generator = copy.deepcopy(model.generator).to(device).eval().requires_grad_(False)
        self.channels_last = device.type in ("cpu", "cuda")  # as deblur() runs it
        if device.type == "cuda":
            self.generator.to(memory_format=torch.channels_last)

    def ensemble(self, blurred: torch.Tensor) -> torch.Tensor:
        """The teacher's self-ensemble output for a batch (float32, no gradient)."""
        autocast = torch.autocast(
            device_type=self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )
        with torch.inference_mode(), autocast:
            return ensemble_forward(self.generator, blurred, channels_last=self.channels_last)

    def targets(self, blurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return (1 - w) * sharp + w * self.ensemble(blurred).to(sharp.dtype)

    def describe(self) -> dict[str, Any]:
        """Provenance: which teacher, how strongly."""
        meta = self.model.metadata
        return {
            "name": meta.get("name") or self.model.architecture,
            "file_sha256": meta.get("sha256"),
            "weights_sha256": self.digest,
            "weight": self.weight,
            "self_ensemble": 8,
        }

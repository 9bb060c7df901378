"""napari-deblurgan: DeblurGAN-style deblurring for napari, Python and the command line.

The public API is re-exported here lazily: ``import napari_deblurgan`` must stay cheap (no torch, no napari,
no Qt) so that napari starts fast with the plugin installed. Each name is imported from its home module on
first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_LAZY_EXPORTS: dict[str, str] = {
    # inference
    "deblur": ".inference.deblur",
    # models and model files
    "create_model": ".model_file",
    "list_architectures": ".models",
    "load_model": ".model_file",
    "DeblurModel": ".model_file",
    "list_named_models": ".model_file",
    # blur synthesis
    "synthesize_blur": ".blur.synthesize",
    # training
    "finetune": ".training.trainer",
    "iter_finetune": ".training.trainer",
    # the events a training run yields (iter_finetune, on_event=): isinstance(event, napari_deblurgan.Validation)
    "Started": ".training.events",
    "Step": ".training.events",
    "Validation": ".training.events",
    "Preview": ".training.events",
    "CheckpointSaved": ".training.events",
    "Notice": ".training.events",
    "Finished": ".training.events",
    "TrainingEvent": ".training.events",
    # comparison and metrics
    "compare": ".comparison",
    "richardson_lucy": ".comparison",
    "wiener": ".comparison",
    # errors
    "DeblurGANError": ".errors",
    "InputError": ".errors",
    "ModelFileError": ".errors",
    "Cancelled": ".errors",
    # said once per call of synthesize_blur, wiener, richardson_lucy, best_classical for a PSF with an even side
    "EvenPSFWarning": ".errors",
    # the warning every training notice is also raised as (to filter it where on_event already shows them)
    "TrainingNoticeWarning": ".training.events",
}

__all__ = [  # noqa: RUF022 - kept in the order of _LAZY_EXPORTS (a test checks they agree)
    "__version__",
    "deblur",
    "create_model",
    "list_architectures",
    "load_model",
    "DeblurModel",
    "list_named_models",
    "synthesize_blur",
    "finetune",
    "iter_finetune",
    "Started",
    "Step",
    "Validation",
    "Preview",
    "CheckpointSaved",
    "Notice",
    "Finished",
    "TrainingEvent",
    "compare",
    "richardson_lucy",
    "wiener",
    "DeblurGANError",
    "InputError",
    "ModelFileError",
    "Cancelled",
    "EvenPSFWarning",
    "TrainingNoticeWarning",
]


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY_EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'napari_deblurgan' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # cache: the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))


if TYPE_CHECKING:  # static type checkers and IDEs see the real objects
    from .blur.synthesize import synthesize_blur
    from .comparison import compare, richardson_lucy, wiener
    from .errors import Cancelled, DeblurGANError, EvenPSFWarning, InputError, ModelFileError
    from .inference.deblur import deblur
    from .model_file import DeblurModel, create_model, list_named_models, load_model
    from .models import list_architectures
    from .training.events import (
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
    from .training.trainer import finetune, iter_finetune

"""File > Open Sample > DeblurGAN: offline sample data as napari layer-data tuples.

The images themselves come from :mod:`napari_deblurgan.samples` (generated or bundled with scikit-image,
nothing is downloaded). Blurred layers carry their PSF in ``metadata["psf"]`` and the synthesis parameters in
``metadata["blur_params"]``, so the Compare widget's classical baselines can use the true PSF.
"""

from __future__ import annotations

import uuid
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


#: ``layer.metadata`` key of a sample layer's role ("blurred", "sharp", "psf"): the panels' layer boxes choose
#: by it (``_common.LayerComboBox``'s ``prefer``), so a sample works with every panel's defaults
SAMPLE_ROLE = "napari_deblurgan_sample"
#: ``layer.metadata`` key of the id that one opened sample's layers share
SAMPLE_GROUP = "napari_deblurgan_sample_group"


def _pair_layers(sample: dict[str, Any], prefix: str, axis_labels: tuple[str, ...]) -> list[LayerData]:
    """PSF, sharp (ground truth) and blurred layers of one ``samples`` dict, in that order: napari puts the
    last on top, so the blurred image, the one to deblur, is the top layer (and the selected one)."""
    sharp = sample["sharp"]
    limits = (float(sharp.min()), float(sharp.max()))  # same grey scale for both, so they compare by eye
    group = uuid.uuid4().hex  # each opening of a sample is its own group
    meta = {"psf": sample["psf"], "blur_params": sample.get("params", {}), SAMPLE_ROLE: "blurred", SAMPLE_GROUP: group}
    return [
        (
            sample["psf"],
            {
                "name": f"{prefix} PSF",
                "colormap": "magma",
                "visible": False,
                "metadata": {SAMPLE_ROLE: "psf", SAMPLE_GROUP: group},
            },
            "image",
        ),
        (
            sample["sharp"],
            {
                "name": f"{prefix} sharp (ground truth)",
                "contrast_limits": limits,
                "axis_labels": axis_labels,
                "visible": False,
                "metadata": {SAMPLE_ROLE: "sharp", SAMPLE_GROUP: group},
            },
            "image",
        ),
        (
            sample["blurred"],
            {"name": f"{prefix} blurred", "contrast_limits": limits, "axis_labels": axis_labels, "metadata": meta},
            "image",
        ),
    ]


def blurred_sharp_pair() -> list[LayerData]:
    """A motion-blurred, noisy cell scene with its sharp ground truth and PSF (2D, uint16)."""
    from ..samples import blurred_sharp_pair as make

    return _pair_layers(make(seed=0), "cells", ("y", "x"))


def blurred_stack_3d() -> list[LayerData]:
    """A defocus-blurred, noisy ZYX stack of nuclei and beads with its sharp ground truth and PSF."""
    from ..samples import blurred_stack_3d as make

    return _pair_layers(make(seed=0), "stack", ("z", "y", "x"))


def clock() -> list[LayerData]:
    """scikit-image's clock photo: a real motion-blurred photograph without ground truth."""
    from ..samples import clock as make

    return [(make(), {"name": "clock (motion-blurred photo)", "axis_labels": ("y", "x")}, "image")]

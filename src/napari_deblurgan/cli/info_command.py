"""``napari-deblurgan info MODEL`` (what is in a model file) and ``info --list`` (what is available)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from ..errors import InputError
from ..user_paths import expand_user


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``info`` subcommand."""
    p = subparsers.add_parser(
        "info",
        help="show a model file's metadata, or list architectures and shipped models",
        description="Print what a model is (architecture, size, cost, receptive field, normalisation, "
        "training provenance, sha256), or with --list the available architectures and shipped models.",
    )
    p.add_argument("model", type=expand_user, nargs="?", metavar="MODEL", help="model file (.pt) or shipped model name")
    p.add_argument("--list", action="store_true", help="list architectures and shipped models")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def model_summary(model: Any) -> dict[str, Any]:
    """Everything ``info`` reports about a :class:`DeblurModel`, as a JSON-able dict."""
    from ..models.complexity import count_parameters, macs_per_megapixel

    gen = model.generator
    meta = dict(model.metadata)
    return {
        "name": meta.get("name"),
        "description": meta.get("description"),
        "path": meta.get("path"),
        "architecture": model.architecture,
        "architecture_args": model.architecture_args,
        "channels": model.channels,
        "channel_mode": model.channel_mode,
        "parameters": count_parameters(gen),
        # a small probe keeps `info` quick on a CPU; MACs scale exactly with area for these conv nets
        "macs_per_megapixel": macs_per_megapixel(gen, model.channels, side=max(64, 2 * model.stride)),
        "stride": model.stride,
        "receptive_radius": model.receptive_radius,
        "receptive_field": 2 * model.receptive_radius + 1,
        "normalization": model.normalization,
        "context_padding": model.context_padding,
        "training": meta.get("training"),
        "created": meta.get("created"),
        "package_version": meta.get("package_version"),
        "sha256": meta.get("sha256"),
        "other_metadata": {
            k: v
            for k, v in meta.items()
            if k not in ("name", "description", "path", "training", "created", "package_version", "sha256")
        },
    }


def _fmt_norm(norm: dict[str, Any]) -> str:
    if norm.get("method") == "percentile":
        return f"percentile {norm.get('low')} .. {norm.get('high')} -> 0 .. 1"
    return json.dumps(norm)


def _fmt_context(pixels: int | None) -> str:
    if pixels is None:
        return "default (receptive radius, at most 32 px of reflected context)"
    return f"{pixels} px of reflected context" if pixels else "none (the generator's own zero padding)"


def _fmt_value(value: Any) -> str:
    """A metadata value on one line: floats to 6 significant digits, lists and dicts compact."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return "-" if value is None else str(value)


def _commonest(items: list[Any]) -> list[tuple[Any, int]]:
    """The distinct ``items`` with their counts, commonest first (ties sorted by item)."""
    counts: dict[Any, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _shapes(shapes: list[list[int]]) -> str:
    """``[[512, 512], [512, 512], [384, 384]]`` as ``3 images: 2 of 512 x 512, 1 of 384 x 384`` (commonest first)."""
    order = _commonest([tuple(shape) for shape in shapes])
    listed = ", ".join(f"{n} of {' x '.join(map(str, shape))}" for shape, n in order[:6])
    more = f", and {len(order) - 6} other shapes" if len(order) > 6 else ""
    return f"{len(shapes)} image{'s' if len(shapes) != 1 else ''}: {listed}{more}"


def _block(value: Any, indent: int) -> list[str]:
    """A dict as indented ``key: value`` lines (nested dicts one level further in), anything else on one line."""
    if not isinstance(value, dict):
        return [" " * indent + _fmt_value(value)]
    width = max((len(k) for k in value), default=0) + 1
    lines = []
    for key in sorted(value):
        item = value[key]
        if isinstance(item, dict) and item:
            lines.append(" " * indent + f"{key}:")
            lines += _block(item, indent + 2)
        else:
            lines.append(" " * indent + f"{key + ':':<{width}} {_fmt_value(item)}")
    return lines


def _training_lines(training: dict[str, Any]) -> list[str]:
    """The training provenance, one item a line; the data's shapes once, summarised (``data`` repeats them in
    its description, ``data_shapes`` lists them), and their axes summarised (``data_axes``: one per image)."""
    training = dict(training)
    shapes = training.get("data_shapes")
    if isinstance(shapes, list) and shapes:  # else (hand-edited metadata) printed as it is
        data = training.get("data")
        if isinstance(data, str):
            training["data"] = re.sub(r" \(\(.*\)\)$", "", data)  # "... pairs ((512, 512), ...)" -> "... pairs"
        training["data_shapes"] = _shapes(shapes)
    axes = training.get("data_axes")
    if isinstance(axes, list) and axes:
        training["data_axes"] = _axes(axes)
    return _block(training, 2)


def _axes(axes: list[Any]) -> str:
    """``["ZYX", "ZYX", "YX"]`` as ``2 ZYX, 1 YX`` (commonest first; one image: its axes alone)."""
    order = _commonest([str(item) for item in axes])
    if len(axes) == 1:
        return order[0][0]
    more = f", and {len(order) - 6} others" if len(order) > 6 else ""
    return ", ".join(f"{n} {name}" for name, n in order[:6]) + more


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`model_summary` (the training provenance and other metadata as indented
    blocks; ``--json`` prints everything as it is)."""
    args = ", ".join(f"{k}={v}" for k, v in s["architecture_args"].items())
    lines = [
        ("model", s["path"] or "(in memory)"),
        ("name", s["name"] or "-"),
        ("description", s["description"] or "-"),
        ("architecture", f"{s['architecture']} ({args})" if args else s["architecture"]),
        ("channels", f"{s['channels']} ({s['channel_mode']})"),
        ("parameters", f"{s['parameters']:,}"),
        ("cost", f"{s['macs_per_megapixel'] / 1e9:.2f} GMAC per megapixel"),
        ("receptive field", f"{s['receptive_field']} px (radius {s['receptive_radius']}), stride {s['stride']}"),
        ("normalisation", _fmt_norm(s["normalization"])),
        ("border context", _fmt_context(s["context_padding"])),
        ("created", s["created"] or "-"),
        ("package version", s["package_version"] or "-"),
        ("sha256", s["sha256"] or "-"),
    ]
    width = max(len(k) for k, _ in lines) + 1
    text = [f"{k + ':':<{width}} {v}" for k, v in lines]
    if s["training"]:
        text += ["training:", *_training_lines(s["training"])]
    else:
        text.append(f"{'training:':<{width}} none (untrained)")
    if s["other_metadata"]:
        text += ["other metadata:", *_block(s["other_metadata"], 2)]
    return "\n".join(text)


def run(args: argparse.Namespace) -> int:
    """Print the model summary or the lists; returns the exit status."""
    from ..model_file import list_named_models, load_model

    if args.list and args.model is not None:
        raise InputError(f"Pass either a model ({args.model}) or --list, not both.")
    if args.list:
        from ..models import ARCHITECTURES

        named = list_named_models()
        if args.json:
            archs = {k: {"defaults": d, "description": t} for k, (_, d, t) in ARCHITECTURES.items()}
            print(json.dumps({"architectures": archs, "models": named}, indent=2))
            return 0
        print("architectures:")
        for name, (_, defaults, text) in ARCHITECTURES.items():
            print(f"  {name:<12} {text}  (defaults: {', '.join(f'{k}={v}' for k, v in defaults.items())})")
        print("shipped models:")
        if not named:
            print("  none in this version (train one with `napari-deblurgan finetune`)")
        for name, entry in named.items():
            print(f"  {name:<12} {entry.get('description', '')}")
        return 0
    if args.model is None:
        raise InputError("Give a model file or name (napari-deblurgan info MODEL), or pass --list.")
    summary = model_summary(load_model(args.model))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0

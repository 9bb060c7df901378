"""Tiling a plane so that tiled inference equals whole-image inference.

Three rules make the tiles invisible:

1. Tiles start on multiples of the generator's ``stride`` and have sides that are multiples of it, so every
   tile sees the same down-sampling grid as the whole image would.
2. Only the part of a tile further than the generator's receptive radius (the *halo*) from a tile edge that
   borders another tile is trusted: there the output does not depend on the padding at the tile edge.
3. Neighbouring tiles overlap by at least twice the halo plus a ramp; across the ramp the trusted parts are
   cross-faded with raised-cosine weights, and the weighted sum is divided by the summed weights.

With the default overlap the tiled result matches the whole-image result to float rounding (the tests check
this for every architecture). No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Weight of untrusted pixels (inside the halo): tiny but positive so that a pixel covered by no trusted
# region (only possible with a user-chosen overlap below twice the halo) still gets the plain average.
_HALO_WEIGHT = 1e-8


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def halo_for(receptive_radius: int, stride: int) -> int:
    """The untrusted margin of a tile: the receptive radius rounded up to the stride."""
    return round_up(receptive_radius, stride)


def default_overlap(receptive_radius: int, stride: int) -> int:
    """Two halos plus a ramp of two strides: enough for seamless tiles."""
    return 2 * halo_for(receptive_radius, stride) + 2 * stride


def default_tile_size(receptive_radius: int, stride: int) -> int:
    """Large enough that the overlap costs little (<= 1/4 of a side) and a 1-megapixel image with its context
    padding fits one tile: 1280 px (activations of a 1280 px tile: ~100 MB per 16 channels in float32)."""
    return round_up(max(1280, 4 * default_overlap(receptive_radius, stride)), stride)


def balanced_tile_length(length: int, tile: int, overlap: int, stride: int) -> int:
    """The shortest tile (<= ``tile``) that covers ``length`` with as few tiles as ``tile`` would need.

    Without this, 1088 px covered by 1024 px tiles would take two full tiles (1.9x the work); balanced, it
    takes two tiles of 632 px (1.16x).
    """
    if length <= tile:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    balanced = round_up(math.ceil((length + (count - 1) * overlap) / count), stride)
    return min(tile, max(balanced, overlap + stride))


def context_padding(receptive_radius: int, stride: int) -> int:
    """Default reflected context added around the whole plane before tiling, for a model that does not
    declare its own (``DeblurModel.context_padding``): gives border pixels plausible neighbours instead of the
    network's own padding. Whether that helps depends on the weights: generators trained on crops only ever
    saw their own zero padding at the border, and measured on the selection scenes the shipped unet_fast
    lost 0.07 dB with it while an older unet_lite gained 0.09 dB (docs/model-history.md)."""
    return round_up(min(halo_for(receptive_radius, stride), 32), stride)


def minimum_tile_size(receptive_radius: int, stride: int, overlap: int | None = None) -> int:
    """The smallest tile :func:`check_tiling` accepts for this model and overlap (a multiple of ``stride``).

    With ``overlap=None`` (the seamless :func:`default_overlap`) a tile must be one stride longer than the
    overlap; with a given overlap it must hold two halos and a stride, and be longer than the overlap rounded
    up to the stride. Every smaller ``tile_size`` is refused or rounded up to at least this size, so front
    ends can offer this as the smallest size that works.
    """
    if overlap is None:
        return default_overlap(receptive_radius, stride) + stride
    return max(2 * halo_for(receptive_radius, stride) + stride, round_up(max(int(overlap), 0), stride) + stride)


def as_given(name: str, given: int, used: int, stride: int) -> str:
    """How a message names a tile setting: ``"overlap 16 px"``, or, where it was rounded up to the stride,
    ``"overlap 4 px (rounded up to 16, a multiple of the model's stride 16)"`` (what the user passed first)."""
    if int(given) == int(used):
        return f"{name} {used} px"
    return f"{name} {given} px (rounded up to {used}, a multiple of the model's stride {stride})"


def check_tiling(tile_size: int, overlap: int | None, receptive_radius: int, stride: int) -> tuple[int, int]:
    """Validated (tile_size, overlap), both rounded up to multiples of ``stride``; ``overlap=None`` takes the
    seamless :func:`default_overlap`. Small tiles with a large overlap compute every pixel many times, and an
    overlap below the seamless one may show seams where tiles meet; both depend on the plane (one tile has no
    seams; :attr:`TileGrid.work_factor`), so the caller, who knows the planes, warns
    (:func:`overlap_warning`)."""
    for name, value in (("tile_size", tile_size), ("overlap", overlap)):
        if value is None and name == "overlap":
            continue
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise InputError(f"{name} must be an integer number of pixels, got {value!r}")
    if overlap is not None and overlap < 0:
        raise InputError(f"overlap must be >= 0 pixels, got {overlap}")
    halo = halo_for(receptive_radius, stride)
    seamless = default_overlap(receptive_radius, stride)
    # with the default overlap a tile must be longer than it; with a user's overlap, at least two halos long
    # (a tile that holds them but not the overlap itself is the overlap >= tile_size error below)
    minimum = minimum_tile_size(receptive_radius, stride) if overlap is None else 2 * halo + stride
    if tile_size < minimum:
        why = (
            f"with this model's seamless overlap of {seamless} px each tile needs at least {minimum} px"
            if overlap is None
            else f"each tile needs at least {minimum} px (2 x {halo} px of context + {stride})"
        )
        raise InputError(
            f"tile_size {tile_size} is too small: {why}; use tile_size >= {minimum} "
            f"(>= {2 * seamless} keeps the overlap's extra work below 4x), or leave it unset"
        )
    given_tile, given_overlap = int(tile_size), overlap
    tile_size = round_up(int(tile_size), stride)
    overlap = seamless if overlap is None else round_up(int(overlap), stride)
    if overlap >= tile_size:  # only a user's overlap can be: the seamless one is below the smallest tile

        def said(given: int, used: int) -> str:
            return f"{given} px" if given == used else f"{given} px, rounded up to a multiple of {stride} px: {used} px"

        raise InputError(
            f"overlap ({said(int(given_overlap), overlap)}) must be smaller than tile_size "
            f"({said(given_tile, tile_size)}); the default overlap for this model is {seamless} px"
        )
    return tile_size, overlap


def overlap_warning(given_overlap: int | None, overlap: int, receptive_radius: int, stride: int) -> str | None:
    """What to warn when a user's ``overlap`` (``given_overlap``, rounded up to ``overlap``) is below the
    model's seamless one: tile borders may show. None otherwise. Only said where a plane takes more than one
    tile (the caller checks): a single tile has no borders with another."""
    seamless = default_overlap(receptive_radius, stride)
    if given_overlap is None or overlap >= seamless:
        return None
    return (
        f"{as_given('overlap', given_overlap, overlap, stride)} is below this model's seamless overlap of "
        f"{seamless} px: tile borders may show as faint seams; leave overlap unset for seamless tiles"
    )


def tile_starts(length: int, tile: int, overlap: int, stride: int) -> list[int]:
    """Start offsets along one axis of ``length`` (a multiple of ``stride``); the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - overlap) / step)
    starts = [min(i * step, length - tile) for i in range(count)]
    assert all(s % stride == 0 for s in starts)
    return sorted(set(starts))


def blend_window(length: int, halo: int, overlap: int, *, left: bool, right: bool) -> np.ndarray:
    """1D weights of one tile: tiny inside the halo at sides that border another tile, a raised-cosine ramp
    across the rest of the overlap, 1 elsewhere."""
    h = min(halo, max((overlap - 1) // 2, 0))
    ramp_len = max(overlap - 2 * h, 1)
    ramp = np.sin(0.5 * np.pi * (np.arange(ramp_len) + 0.5) / ramp_len) ** 2
    edge = np.ones(length, dtype=np.float64)  # profile rising from the left edge
    edge[:h] = _HALO_WEIGHT
    rising = ramp[: max(0, length - h)]
    edge[h : h + rising.size] = rising
    w = np.ones(length, dtype=np.float64)
    if left:
        w *= edge
    if right:
        w *= edge[::-1]
    return np.maximum(w, _HALO_WEIGHT).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a (padded) plane of ``shape``: every tile has the same ``tile_shape``."""

    shape: tuple[int, int]
    tile_shape: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    halo: int
    overlap: int

    def __len__(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def work_factor(self) -> float:
        """Pixels computed over pixels of the (padded) plane: 1.0 for one tile. Overlapping tiles compute
        their overlap more than once: tiles of 384 px with an overlap of 352 px take 25 tiles (14x) for a
        512 px plane, and tend to (384 / 32)^2 = 144x only on planes far larger than a tile."""
        return len(self) * self.tile_shape[0] * self.tile_shape[1] / (self.shape[0] * self.shape[1])

    def windows(self) -> list[tuple[slice, slice, np.ndarray, np.ndarray]]:
        """(y slice, x slice, 1D weights along y, 1D weights along x) of every tile, row by row: a tile's 2D
        weights are their outer product (kept 1D: 2D weights of every tile would take as much memory as the
        plane itself)."""
        th, tw = self.tile_shape
        last_y, last_x = len(self.starts_y) - 1, len(self.starts_x) - 1
        wxs = [blend_window(tw, self.halo, self.overlap, left=ix > 0, right=ix < last_x) for ix in range(last_x + 1)]
        out = []
        for iy, y0 in enumerate(self.starts_y):
            wy = blend_window(th, self.halo, self.overlap, left=iy > 0, right=iy < last_y)
            for ix, x0 in enumerate(self.starts_x):
                out.append((slice(y0, y0 + th), slice(x0, x0 + tw), wy, wxs[ix]))
        return out

    def tiles(self) -> list[tuple[slice, slice, np.ndarray]]:
        """(y slice, x slice, 2D weights) of every tile, row by row."""
        return [(ys, xs, wy[:, None] * wx[None, :]) for ys, xs, wy, wx in self.windows()]

    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The sum of all tiles' weights over the plane, as two 1D factors ``(along y, along x)``: the tiles
        form a full grid (every tile of a row shares its y weights, of a column its x weights), so the 2D
        sum is their outer product and needs no plane-sized buffer."""
        th, tw = self.tile_shape
        sum_y = np.zeros(self.shape[0], dtype=np.float64)
        sum_x = np.zeros(self.shape[1], dtype=np.float64)
        last_y, last_x = len(self.starts_y) - 1, len(self.starts_x) - 1
        for iy, y0 in enumerate(self.starts_y):
            sum_y[y0 : y0 + th] += blend_window(th, self.halo, self.overlap, left=iy > 0, right=iy < last_y)
        for ix, x0 in enumerate(self.starts_x):
            sum_x[x0 : x0 + tw] += blend_window(tw, self.halo, self.overlap, left=ix > 0, right=ix < last_x)
        return sum_y, sum_x


def plan_tiles(shape: tuple[int, int], *, tile_size: int, overlap: int, halo: int, stride: int) -> TileGrid:
    """Tile grid for a padded plane of ``shape`` (both sides multiples of ``stride``)."""
    height, width = shape
    th = balanced_tile_length(height, tile_size, overlap, stride)
    tw = balanced_tile_length(width, tile_size, overlap, stride)
    return TileGrid(
        shape=(height, width),
        tile_shape=(th, tw),
        starts_y=tuple(tile_starts(height, th, overlap, stride)),
        starts_x=tuple(tile_starts(width, tw, overlap, stride)),
        halo=halo,
        overlap=overlap,
    )

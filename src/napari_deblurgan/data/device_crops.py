"""Training crops cut on the training device: every plane uploaded once, a whole batch cut in one gather.

On a lent H100 reading 128 crops on the CPU (``PairedData.sample``: a Python loop that slices, pads and turns
each crop, then a copy to the GPU) took 9 ms, and 42 ms for 512 crops - more than the training step itself
(9-16 ms; ``benchmarks/bench_data.py --phases``). Here the normalised training regions of the planes,
reflect-padded by the synthetic blur's margin, live on the device as one flat tensor, and a batch is one
``torch.take`` with index grids that already hold each crop's position and flip/turn. Positions and turns are drawn by
``PairedData.draw_crops`` - the very draws ``PairedData.sample`` makes, in the same order - so both paths give
the same crops bit for bit (tested): the choice of path changes speed only. ``BatchSource`` uses it on CUDA
only: on the 2-core CPU dev machine the gather's index arithmetic was ~5x slower than ``sample`` (106 vs 20
ms for 128 crops, one run on a busy machine); its GPU speed is still to be measured (``bench_data --phases``).

Only in-memory NumPy data whose padded planes fit ``budget_bytes`` (and a tenth of a GPU's memory) is
uploaded (no whole-stack copies of large or lazy data: those keep the CPU path), and only when the patch is
larger than the margin (then padding a whole region reflects exactly as padding a crop does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .pairs import PairedData

#: Device memory the uploaded planes may take by default (float32, padded); on a GPU also at most
#: :data:`GPU_MEMORY_SHARE` of its memory, so that a small card keeps its memory for the model.
DEFAULT_DEVICE_CROPS_BYTES = 2 * 2**30
GPU_MEMORY_SHARE = 0.1


def _dihedral_grids(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(8, size, size)`` source rows and columns of each output pixel for the 8 flips/turns of
    ``pairs._dihedral`` (applied to coordinate grids, so the two can never disagree)."""
    from .pairs import _dihedral

    rows = np.broadcast_to(np.arange(size)[:, None], (size, size))
    cols = np.broadcast_to(np.arange(size)[None, :], (size, size))
    dy = np.stack([np.ascontiguousarray(_dihedral(rows, k)) for k in range(8)])
    dx = np.stack([np.ascontiguousarray(_dihedral(cols, k)) for k in range(8)])
    return torch.from_numpy(dy), torch.from_numpy(dx)


class DeviceCrops:
    """The training planes of ``data`` on ``device``, normalised and reflect-padded by ``margin``.

    :meth:`build` returns None when the data does not qualify (see the module docstring); then use
    ``PairedData.sample``.
    """

    def __init__(self, data: PairedData, device: torch.device, margin: int, flat: dict, layout: dict) -> None:
        self.device = device
        self._flat = flat  # "sharp" (and "blurred"): one flat float32 tensor of all padded planes
        # per training plane (indexed like data.train_planes): flat offset, padded width, channel stride
        self._base = layout["base"].to(device)
        self._row_stride = layout["row_stride"].to(device)
        self._channel_stride = layout["channel_stride"].to(device)
        side = data.patch_size + 2 * margin
        dy, dx = _dihedral_grids(side)
        self._dy, self._dx = dy.to(device), dx.to(device)
        self._channels = torch.arange(data.channels, device=device)

    @classmethod
    def build(
        cls, data: PairedData, device: torch.device, margin: int, budget_bytes: int = DEFAULT_DEVICE_CROPS_BYTES
    ) -> DeviceCrops | None:
        if data.patch_size <= margin:
            return None
        if device.type == "cuda":
            total_memory = torch.cuda.get_device_properties(device).total_memory
            budget_bytes = min(budget_bytes, int(GPU_MEMORY_SHARE * total_memory))
        for s in {p.source for p in data.train_planes}:
            arrays = (data.sources[s].sharp, data.sources[s].blurred)
            if not all(a is None or type(a) is np.ndarray for a in arrays):
                return None  # memmaps, dask, zarr...: read lazily on the CPU, never copied whole
        kinds = ("sharp",) if data.synthetic else ("sharp", "blurred")
        # one padded region per training plane (a plane's training region stops where a held-out band
        # starts, and its margin is reflected there, as PairedData.sample does)
        keys = list(dict.fromkeys((p.source, p.index, p.channel, p.rows, p.cols) for p in data.train_planes))
        channels = data.channels
        total = sum(
            len(kinds) * channels * (rows[1] - rows[0] + 2 * margin) * (cols[1] - cols[0] + 2 * margin) * 4
            for _, _, _, rows, cols in keys
        )
        if total > budget_bytes:
            return None
        offsets: dict[tuple, tuple[int, int, int]] = {}
        # filled region by region: the host holds one region at a time, never the whole set twice
        flat = {k: torch.empty(total // (4 * len(kinds)), dtype=torch.float32, device=device) for k in kinds}
        position = 0
        for key in keys:
            s, index, channel, rows, cols = key
            blurred, sharp = data.sources[s].padded_region(index, channel, rows, cols, margin)
            c, hp, wp = sharp.shape
            # crops are drawn in plane coordinates: the region's origin (rows[0], cols[0]) goes into the base
            offsets[key] = (position - rows[0] * wp - cols[0], wp, hp * wp)
            for kind, region in (("sharp", sharp), ("blurred", blurred)):
                if kind in flat:
                    # a copy of one region (it may be a read-only view of the plane cache)
                    values = torch.from_numpy(np.array(region, dtype=np.float32).ravel())
                    flat[kind][position : position + region.size].copy_(values)
            position += c * hp * wp
        rows = [offsets[(p.source, p.index, p.channel, p.rows, p.cols)] for p in data.train_planes]
        layout = {
            "base": torch.tensor([r[0] for r in rows], dtype=torch.int64),
            "row_stride": torch.tensor([r[1] for r in rows], dtype=torch.int64),
            "channel_stride": torch.tensor([r[2] for r in rows], dtype=torch.int64),
        }
        return cls(data, device, margin, flat, layout)

    def gather(self, plane_ids: np.ndarray, positions: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(blurred or None, sharp)`` float32 ``(B, C, P + 2m, P + 2m)`` on the device for the crops that
        ``PairedData.draw_crops`` drew (``positions``: rows of ``(y0, x0, turn)``)."""
        pid = torch.from_numpy(np.asarray(plane_ids, dtype=np.int64)).to(self.device)
        pos = torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(self.device)
        y0, x0, turn = pos[:, 0], pos[:, 1], pos[:, 2]
        # a crop's top-left in its padded region is (y0 - r0 - m) + m = y0 - r0; base holds the -r0 (and -c0)
        rows = y0[:, None, None] + self._dy[turn]
        cols = x0[:, None, None] + self._dx[turn]
        index = self._base[pid][:, None, None] + rows * self._row_stride[pid][:, None, None] + cols  # (B, S, S)
        index = index[:, None] + (self._channels[None, :] * self._channel_stride[pid][:, None])[..., None, None]
        sharp = torch.take(self._flat["sharp"], index)
        blurred = torch.take(self._flat["blurred"], index) if "blurred" in self._flat else None
        return blurred, sharp


__all__ = ["DEFAULT_DEVICE_CROPS_BYTES", "GPU_MEMORY_SHARE", "DeviceCrops"]

"""A 2D parallel-beam projector (Joseph's method) stored as sparse CSR matrices.

Each slice is projected independently, so a whole volume (or a batch of
volumes) is one sparse-times-dense product: the matrix has one row per
sinogram bin ``(angle, radial bin)`` and one column per pixel, and slices
are the columns of the dense operand. On this kind of machine that measured
faster than rotate-and-sum (grid_sample, ~2.5x slower) and scikit-image's
radon (~7x), and it has an exact adjoint: the backprojector is the stored
transpose. Building it takes about a second at 128 x 128 (3.6 M non-zeros),
so matrices are cached per grid size and device.

Geometry, in array coordinates (pixel centres ``c_i = i - (n-1)/2``, x along
columns, y along rows): angle ``phi_a = a pi / n_angles``, radial coordinate
``t = x cos phi + y sin phi`` with ``n`` bins of one pixel. Joseph's method
steps along the ray's main axis one row (or column) at a time and
interpolates linearly between the two nearest pixels on the other axis;
weights are path lengths in mm, so a projection of Bq/mL is in Bq/mL x mm.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Subset:
    """One ordered subset of angles: its sinogram rows and the matrices restricted to them."""

    rows: torch.Tensor  # row indices into the full sinogram (angle-major), on the device
    matrix: torch.Tensor  # CSR (len(rows), n_pixels)
    matrix_t: torch.Tensor  # CSR (n_pixels, len(rows))


def _joseph_entries(n: int, n_angles: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column and weight (pixel units) of every non-zero, in row order."""
    c = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    rows, cols, weights = [], [], []
    for a in range(n_angles):
        phi = a * math.pi / n_angles
        sin, cos = math.sin(phi), math.cos(phi)
        bins = torch.arange(n).view(-1, 1).expand(n, n)
        step = torch.arange(n).view(1, -1).expand(n, n)
        if abs(sin) >= abs(cos):  # ray runs mostly along x: step over columns, interpolate rows
            frac = (c.view(-1, 1) - c.view(1, -1) * cos) / sin + (n - 1) / 2
            per_step = 1.0 / abs(sin)
        else:  # step over rows, interpolate columns
            frac = (c.view(-1, 1) - c.view(1, -1) * sin) / cos + (n - 1) / 2
            per_step = 1.0 / abs(cos)
        low = torch.floor(frac)
        for index, w in ((low, 1.0 - (frac - low)), (low + 1, frac - low)):
            ok = (index >= 0) & (index < n) & (w > 0)
            other = index[ok].long()
            pixel = other * n + step[ok] if abs(sin) >= abs(cos) else step[ok] * n + other
            rows.append(a * n + bins[ok])
            cols.append(pixel)
            weights.append(w[ok] * per_step)
    return torch.cat(rows), torch.cat(cols), torch.cat(weights).float()


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], device) -> torch.Tensor:
    """A CSR matrix with sorted column indices and int32 indices (fastest measured on CPU)."""
    order = torch.argsort(rows * shape[1] + cols)
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            crow.to(torch.int32),
            cols.to(torch.int32),
            values,
            shape,
            check_invariants=False,
        ).to(device)


class Projector:
    """Forward and back projection of ``size x size`` slices, batched over slices."""

    def __init__(self, size: int, pixel_mm: float, n_angles: int | None = None, device: torch.device | str = "cpu"):
        self.size = size
        self.n_angles = n_angles or size
        self.n_bins = size
        self.pixel_mm = pixel_mm
        self.device = torch.device(device)
        rows, cols, w = _joseph_entries(size, self.n_angles)
        w = w * pixel_mm
        shape = (self.n_angles * self.n_bins, size * size)
        self.matrix = _csr(rows, cols, w, shape, self.device)
        self.matrix_t = _csr(cols, rows, w, shape[::-1], self.device)
        self._entries = (rows.int(), cols.int(), w)  # kept (compactly) to cut OSEM subsets from
        self._subsets: dict[int, list[Subset]] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals (value x mm) of ``(..., ny, nx)`` images: sinograms ``(..., n_angles, n_bins)``."""
        lead = image.shape[:-2]
        cols = image.reshape(-1, self.size * self.size).T
        sino = (self.matrix @ cols.contiguous()).T
        return sino.reshape(*lead, self.n_angles, self.n_bins)

    def back(self, sinogram: torch.Tensor) -> torch.Tensor:
        """The exact adjoint of :meth:`forward`."""
        lead = sinogram.shape[:-2]
        cols = sinogram.reshape(-1, self.n_angles * self.n_bins).T
        image = (self.matrix_t @ cols.contiguous()).T
        return image.reshape(*lead, self.size, self.size)

    def subsets(self, n_subsets: int) -> list[Subset]:
        """Interleaved angle subsets (angles k, k+n, k+2n, ...) for OSEM; built once per ``n_subsets``."""
        if n_subsets not in self._subsets:
            rows, cols, w = self._entries
            rows, cols = rows.long(), cols.long()
            angle = rows // self.n_bins
            parts = []
            for k in range(n_subsets):
                angles = torch.arange(k, self.n_angles, n_subsets)
                keep = angle % n_subsets == k
                local = (angle[keep] // n_subsets) * self.n_bins + rows[keep] % self.n_bins
                shape = (angles.numel() * self.n_bins, self.size * self.size)
                sino_rows = (angles.view(-1, 1) * self.n_bins + torch.arange(self.n_bins)).reshape(-1)
                parts.append(
                    Subset(
                        rows=sino_rows.to(self.device),
                        matrix=_csr(local, cols[keep], w[keep], shape, self.device),
                        matrix_t=_csr(cols[keep], local, w[keep], shape[::-1], self.device),
                    )
                )
            self._subsets[n_subsets] = parts
        return self._subsets[n_subsets]


@functools.lru_cache(maxsize=2)
def projector_for(size: int, pixel_mm: float, device: str = "cpu") -> Projector:
    """The cached projector of one grid size on one device (building one takes ~1 s at 128^2)."""
    return Projector(size, pixel_mm, device=device)

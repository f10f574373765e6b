"""The voxel grid a study is simulated and reconstructed on.

The grid always spans the same body region, neck to pelvis: a transaxial
field of view of 512 mm and an axial extent of 576 mm. ``size`` and
``slices`` only choose how finely that region is sampled (128 x 128 x 144
gives 4 mm voxels), so a small test grid shows the same anatomy and the
same count level as the full-size one, only coarser.

Orientation follows DICOM's standard axial display: column 0 is the
patient's right, row 0 is anterior, slice 0 is the most inferior. The
NIfTI-style affine maps voxel index ``(x, y, z, 1)`` to RAS+ millimetres
with the grid centred on the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Transaxial field of view (mm): fits the high-BMI body (up to ~460 mm wide) inside the scanner's circle.
TRANSAXIAL_FOV_MM = 512.0
#: Axial extent (mm), neck to pelvis.
AXIAL_FOV_MM = 576.0


@dataclass(frozen=True)
class Grid:
    """A ``slices x size x size`` grid over the fixed neck-to-pelvis field of view."""

    size: int = 128
    slices: int = 144

    @property
    def pixel_mm(self) -> float:
        """Transaxial voxel size (mm); also the sinogram's radial bin width."""
        return TRANSAXIAL_FOV_MM / self.size

    @property
    def slice_mm(self) -> float:
        """Axial voxel size (mm)."""
        return AXIAL_FOV_MM / self.slices

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """Voxel size in array order ``(z, y, x)``."""
        return (self.slice_mm, self.pixel_mm, self.pixel_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.size, self.size)

    @property
    def voxel_ml(self) -> float:
        return self.slice_mm * self.pixel_mm**2 / 1000.0

    def affine(self) -> np.ndarray:
        """NIfTI-style 4x4: voxel index ``(x, y, z, 1)`` to RAS+ mm (columns run to the patient's left)."""
        p, s = self.pixel_mm, self.slice_mm
        c, cz = (self.size - 1) / 2, (self.slices - 1) / 2
        return np.array(
            [[-p, 0.0, 0.0, c * p], [0.0, -p, 0.0, c * p], [0.0, 0.0, s, -cz * s], [0.0, 0.0, 0.0, 1.0]]
        )

    def ras_axes(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Voxel-centre coordinates in RAS+ mm, shaped to broadcast over ``(z, y, x)``.

        Returns ``(X, Y, Z)`` of shapes ``(1, 1, nx)``, ``(1, ny, 1)``, ``(nz, 1, 1)``:
        X grows to the patient's right, Y anteriorly, Z superiorly.
        """
        c, cz = (self.size - 1) / 2, (self.slices - 1) / 2
        idx = torch.arange(self.size, dtype=torch.float32, device=device)
        x = -(idx - c) * self.pixel_mm
        y = -(idx - c) * self.pixel_mm
        z = (torch.arange(self.slices, dtype=torch.float32, device=device) - cz) * self.slice_mm
        return x.view(1, 1, -1), y.view(1, -1, 1), z.view(-1, 1, 1)

    def depth_mm(self) -> np.ndarray:
        """Distance of each slice centre below the top of the field of view (neck = 0, pelvis = 576)."""
        cz = (self.slices - 1) / 2
        z = (np.arange(self.slices) - cz) * self.slice_mm
        return AXIAL_FOV_MM / 2 - z

    def fov_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Pixels inside the scanner's circular field of view, ``(ny, nx)`` bool."""
        c = (self.size - 1) / 2
        i = torch.arange(self.size, dtype=torch.float32, device=device) - c
        return (i.view(-1, 1) ** 2 + i.view(1, -1) ** 2) <= (self.size / 2) ** 2

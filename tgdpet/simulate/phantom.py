"""A procedural neck-to-pelvis FDG phantom built from ellipsoids and tubes.

Every structure is painted with its partial-volume occupancy (an
anti-aliased edge about one voxel wide), so organ boundaries do not
staircase on coarse grids. Structures are painted in a fixed order and a
later structure replaces what lies under it; the label map is written by
the same painting, so it always agrees with the activity and a region mask
taken from it is exactly what the images show (masks taken before later
organs were painted over them gave wrong CoVs in a prototype). The paint
order is the label priority: body < lung < heart < aorta < liver < spleen
< kidney < bowel < bladder < bone < other lesions < the inserted tumour <
catheter.

Body size: ``body_scale`` scales the body outline; the lean core and the
organs grow only with its square root, so a bigger body is mostly a thicker
fat layer (0.85 / 1.0 / 1.3 give BMI about 16.5 / 23.7 / 42). Bigger bodies
attenuate more and give fewer counts, as in real scans.

Activity is painted in SUV and stored in Bq/mL: every patient gets the same
370 MBq and is scanned 60 min later, so a heavier patient has lower
concentrations and, with more attenuation, far fewer counts (as in the
prototype's figures: trues per liver slice about 84 k / 55 k / 25 k for
low / normal / high BMI). Attenuation is in 1/mm at 511 keV. Random anatomy (sizes, positions, uptakes, bowel, lesions,
texture) is drawn from numpy's generator seeded with ``spec.seed``, so a
seed gives the same phantom on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..io.acquisition import F18_HALF_LIFE_S
from .filters import exact_sum
from .grid import AXIAL_FOV_MM, TRANSAXIAL_FOV_MM, Grid

#: Label codes of the phantom's label map (0 is air).
LABEL_CODES: dict[str, int] = {
    "body": 1,
    "liver": 2,
    "lesion": 3,  # the inserted liver tumour (the paper's lesion)
    "bladder": 4,
    "catheter": 5,
    "lung": 6,
    "heart": 7,
    "spleen": 8,
    "kidney": 9,
    "aorta": 10,
    "bone": 11,
    "bowel": 12,
    "other_lesion": 13,  # random hot lesions of training studies
}

#: Body-size classes: scale of the body outline.
BODY_SCALES: dict[str, float] = {"low": 0.85, "normal": 1.0, "high": 1.3}

#: FDG injection and uptake time of every simulated study (recorded in its DICOM series, so
#: its images convert back to the SUVs painted here).
INJECTED_DOSE_BQ = 370e6
UPTAKE_S = 3600.0

#: Linear attenuation at 511 keV, 1/mm (soft tissue 0.096/cm, fat 0.090, lung 0.028, bone 0.150).
MU_SOFT, MU_FAT, MU_LUNG, MU_BONE = 0.0096, 0.0090, 0.0028, 0.0150

#: At 511 keV attenuation is almost all Compton scattering, so mass = mu / (mu/rho), with
#: mu/rho about 0.095 cm^2/g for every tissue: the phantom's weight follows from its mu-map.
MASS_ATTENUATION_CM2_PER_G = 0.095
#: Share of the whole-body mass in the neck-to-pelvis torso (head, arms and legs are the rest),
#: chosen so the reference body (scale 1) has BMI 23.7.
TORSO_MASS_FRACTION = 0.37
HEIGHT_M = 1.75

#: Mean SUV of each tissue; each study varies organ uptakes by +-15 %.
SUV = {
    "fat": 0.35,
    "lean": 0.8,
    "lung": 0.35,
    "blood": 1.8,
    "myocardium": 4.0,
    "liver": 2.4,
    "spleen": 2.0,
    "kidney": 4.0,
    "bone": 1.6,
    "bladder": 12.0,
    "hot_bladder": 60.0,
    "catheter": 25.0,
}

TUMOUR_DIAMETER_MM = 20.0
TUMOUR_TO_LIVER = 4.0
TEXTURE_AMPLITUDE = 0.08
FAT_LAYER_MM = 15.0

# Body outline semi-axes (mm, scale 1) against depth below the neck: neck, shoulders, chest,
# upper abdomen, waist, hips.
_PROFILE_DEPTH = [0.0, 40.0, 75.0, 110.0, 250.0, 330.0, 420.0, 480.0, 540.0, 576.0]
_PROFILE_LR = [62.0, 70.0, 165.0, 170.0, 165.0, 158.0, 150.0, 165.0, 170.0, 168.0]
_PROFILE_AP = [58.0, 62.0, 95.0, 110.0, 110.0, 108.0, 105.0, 108.0, 105.0, 100.0]


@dataclass(frozen=True)
class PhantomSpec:
    """What to put in one phantom. Features default off; a seed fixes all random anatomy."""

    body_scale: float = 1.0
    seed: int = 0
    texture: bool = True
    lesions: bool = False
    dense_lesions: bool = False  # with lesions: DENSE_LESION_COUNT of them
    tumour: bool = False
    catheter: bool = False
    hot_bladder: bool = False


@dataclass
class Phantom:
    """Ground truth of one study on a grid: activity (Bq/mL), attenuation (1/mm), labels."""

    activity: torch.Tensor
    mu: torch.Tensor
    labels: torch.Tensor
    grid: Grid
    spec: PhantomSpec
    weight_kg: float
    bqml_per_suv: float

    @property
    def bmi(self) -> float:
        return self.weight_kg / HEIGHT_M**2

    def mask(self, name: str) -> torch.Tensor:
        """Boolean mask of one labelled structure (see :data:`LABEL_CODES`)."""
        return self.labels == LABEL_CODES[name]


class _Canvas:
    """SUV, mu and label volumes that shapes are painted onto in priority order."""

    def __init__(self, grid: Grid, device: torch.device):
        self.grid = grid
        self.X, self.Y, self.Z = grid.ras_axes(device)
        self.h = grid.voxel_mm  # (z, y, x)
        self.suv = torch.zeros(grid.shape, device=device)
        self.mu = torch.zeros(grid.shape, device=device)
        self.labels = torch.zeros(grid.shape, dtype=torch.uint8, device=device)

    def paint(self, occupancy: torch.Tensor, suv: float | torch.Tensor, mu: float, label: str) -> None:
        """Replace what lies under ``occupancy`` (partial volumes mix); label where it is >= 1/2."""
        keep = 1.0 - occupancy
        self.suv.mul_(keep).add_(occupancy * suv)
        self.mu.mul_(keep).add_(occupancy * mu)
        self.labels[occupancy >= 0.5] = LABEL_CODES[label]

    def ellipsoid(self, centre, semi, angle_deg: float = 0.0) -> torch.Tensor:
        """Occupancy of an ellipsoid ``centre=(X, Y, depth)``, ``semi=(a_x, a_y, a_z)``, turned about z."""
        cx, cy, depth = centre
        u, v = _rotate(self.X - cx, self.Y - cy, angle_deg)
        w = self.Z - (_depth_to_z(depth))
        return _edge(
            [(u, semi[0], self.h[2]), (v, semi[1], self.h[1]), (w, semi[2], self.h[0])]
        )

    def elliptic_tube(self, cx, cy, semi_x, semi_y, depth_top: float, depth_bottom: float) -> torch.Tensor:
        """A z-aligned tube; centre and semi-axes may vary per slice (tensors shaped ``(nz, 1, 1)``)."""
        across = _edge([(self.X - cx, semi_x, self.h[2]), (self.Y - cy, semi_y, self.h[1])])
        z_top, z_bottom = _depth_to_z(depth_top), _depth_to_z(depth_bottom)
        half, mid = (z_top - z_bottom) / 2, (z_top + z_bottom) / 2
        along = torch.clamp(0.5 - ((self.Z - mid).abs() - half) / self.h[0], 0.0, 1.0)
        return across * along

    def polyline_tube(self, points: list[tuple[float, float, float]], radius: float) -> torch.Tensor:
        """A thin tube of ``radius`` mm along straight segments between ``(X, Y, depth)`` points."""
        ends = [np.array([x, y, _depth_to_z(d)]) for x, y, d in points]
        dist = None
        for a, b in zip(ends[:-1], ends[1:]):
            sx, sy, sz = b - a
            px, py, pz = self.X - a[0], self.Y - a[1], self.Z - a[2]
            t = ((px * sx + py * sy + pz * sz) / (sx * sx + sy * sy + sz * sz)).clamp(0.0, 1.0)
            d = torch.sqrt((px - t * sx) ** 2 + (py - t * sy) ** 2 + (pz - t * sz) ** 2)
            dist = d if dist is None else torch.minimum(dist, d)
        return torch.clamp(0.5 - (dist - radius) / self.h[2], 0.0, 1.0)


def _depth_to_z(depth: float) -> float:
    """RAS z (mm) of a depth below the top of the field of view."""
    return AXIAL_FOV_MM / 2 - depth


def _rotate(dx: torch.Tensor, dy: torch.Tensor, angle_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    if angle_deg == 0.0:
        return dx, dy
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return c * dx + s * dy, -s * dx + c * dy


def _edge(axes: list[tuple[torch.Tensor, float | torch.Tensor, float]]) -> torch.Tensor:
    """Partial-volume occupancy of ``sum (offset / semi)^2 <= 1`` with a one-voxel linear edge.

    ``axes`` holds ``(offset_mm, semi_axis_mm, voxel_mm)`` per axis. The signed distance to the
    surface in voxels is approximated by ``(r - 1) / |grad_voxel r|``, exact on a sphere and close
    near the surface of any ellipsoid, which is all an anti-aliased edge needs.
    """
    r2 = sum((off / semi) ** 2 for off, semi, _ in axes)
    r = torch.sqrt(r2)
    r_safe = r.clamp_min(1e-6)
    grad = torch.sqrt(sum((off / r_safe * h / semi**2) ** 2 for off, semi, h in axes))
    return torch.clamp(0.5 - (r - 1.0) / grad, 0.0, 1.0)


def _profile(depth: np.ndarray, values: list[float]) -> np.ndarray:
    return np.interp(depth, _PROFILE_DEPTH, values)


def _slice_tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def _texture(grid: Grid, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """A smooth random field within +-8 %: uniform noise on a ~30 mm lattice, trilinearly upsampled."""
    cells = (round(AXIAL_FOV_MM / 30), round(TRANSAXIAL_FOV_MM / 30), round(TRANSAXIAL_FOV_MM / 30))
    coarse = torch.as_tensor(rng.uniform(-1.0, 1.0, size=cells), dtype=torch.float32, device=device)
    field = F.interpolate(coarse[None, None], size=grid.shape, mode="trilinear", align_corners=True)[0, 0]
    return TEXTURE_AMPLITUDE * field


def build_phantom(spec: PhantomSpec, grid: Grid, device: torch.device | str = "cpu") -> Phantom:
    """Paint one neck-to-pelvis phantom on ``grid``; see the module docstring for the design."""
    device = torch.device(device)
    rng = np.random.default_rng(spec.seed)
    canvas = _Canvas(grid, device)
    s = spec.body_scale
    so = float(np.sqrt(s))  # organs and lean core grow with the square root of the body scale

    def jitter(value: float, rel: float = 0.08) -> float:
        return value * rng.uniform(1 - rel, 1 + rel)

    def uptake(name: str) -> float:
        return SUV[name] * rng.uniform(0.85, 1.15)

    def shift(mm: float = 5.0) -> float:
        return rng.uniform(-mm, mm)

    def lean_semi(outline_semi: np.ndarray) -> np.ndarray:
        # the fat layer thins to 1.5 mm in a slim body and thickens in a big one
        return np.minimum((outline_semi - FAT_LAYER_MM) * so, outline_semi * s - 1.5)

    def spine_y(depth_mm: np.ndarray) -> np.ndarray:
        # vertebral bodies sit in the posterior half of the lean core
        return -0.55 * lean_semi(_profile(depth_mm, _PROFILE_AP))

    depth = grid.depth_mm()
    lr, ap = _profile(depth, _PROFILE_LR), _profile(depth, _PROFILE_AP)

    top, bottom = -20.0, 600.0  # the body continues beyond the field of view
    t = lambda a: _slice_tensor(a, device)  # noqa: E731
    outline = canvas.elliptic_tube(0.0, 0.0, t(lr * s), t(ap * s), top, bottom)
    canvas.paint(outline, uptake("fat"), MU_FAT, "body")
    lean = canvas.elliptic_tube(0.0, 0.0, t(lean_semi(lr)), t(lean_semi(ap)), top, bottom)
    canvas.paint(lean, uptake("lean"), MU_SOFT, "body")

    def organ(centre, semi, angle: float = 0.0) -> torch.Tensor:
        # centre and semi-axes are those of the reference body; X, Y and in-plane sizes scale with it
        cx, cy, d = centre
        occupancy = canvas.ellipsoid(
            (cx * so + shift(), cy * so + shift(), d + shift()),
            (jitter(semi[0]) * so, jitter(semi[1]) * so, jitter(semi[2])),
            angle,
        )
        return occupancy * lean  # organs never reach into the fat layer

    lung_suv = uptake("lung")
    canvas.paint(organ((-75.0, -5.0, 180.0), (58.0, 78.0, 115.0)), lung_suv, MU_LUNG, "lung")
    canvas.paint(organ((75.0, -5.0, 175.0), (60.0, 78.0, 105.0)), lung_suv, MU_LUNG, "lung")

    heart_centre = (-25.0, 25.0, 220.0)
    canvas.paint(organ(heart_centre, (58.0, 48.0, 55.0), 30.0), rng.uniform(2.0, 8.0), MU_SOFT, "heart")
    canvas.paint(organ(heart_centre, (34.0, 26.0, 34.0), 30.0), uptake("blood"), MU_SOFT, "heart")
    blood_suv = uptake("blood")
    aorta = canvas.elliptic_tube(-18.0 * so, t(spine_y(depth) + 32.0 * so), 11.0 * so, 11.0 * so, 110.0, 430.0)
    canvas.paint(aorta * lean, blood_suv, MU_SOFT, "aorta")

    liver_suv = uptake("liver")
    liver_centre = (55.0, 5.0, 310.0)
    canvas.paint(organ(liver_centre, (85.0, 85.0, 70.0)), liver_suv, MU_SOFT, "liver")
    canvas.paint(organ((-15.0, 40.0, 290.0), (55.0, 40.0, 40.0)), liver_suv, MU_SOFT, "liver")
    canvas.paint(organ((-85.0, -35.0, 305.0), (32.0, 50.0, 55.0), -30.0), uptake("spleen"), MU_SOFT, "spleen")
    kidney_suv = uptake("kidney")
    for side, d, angle in ((-1.0, 380.0, -20.0), (1.0, 390.0, 20.0)):
        y = float(spine_y(np.array(d))) / so + 8.0  # beside the spine; organ() applies the scale
        canvas.paint(organ((62.0 * side, y, d), (28.0, 30.0, 55.0), angle), kidney_suv, MU_SOFT, "kidney")
    for _ in range(int(rng.integers(6, 11))):
        centre = (rng.uniform(-90, 90), rng.uniform(-20, 55), rng.uniform(400, 500))
        semi = tuple(rng.uniform(14, 28, size=3))
        canvas.paint(organ(centre, semi), rng.uniform(1.5, 3.5), MU_SOFT, "bowel")
    bladder_semi = (42.0, 35.0, 32.0) if not spec.hot_bladder else (52.0, 44.0, 40.0)
    bladder_suv = uptake("hot_bladder" if spec.hot_bladder else "bladder")
    canvas.paint(organ((0.0, 45.0, 530.0), bladder_semi), bladder_suv, MU_SOFT, "bladder")

    bone_suv = uptake("bone")
    spine = canvas.elliptic_tube(0.0, t(spine_y(depth)), 17.0 * so, 15.0 * so, top, 510.0)
    canvas.paint(spine, bone_suv, MU_BONE, "bone")
    for side in (1.0, -1.0):
        canvas.paint(organ((95.0 * side, -25.0, 470.0), (22.0, 55.0, 50.0), 35.0 * side), bone_suv, MU_BONE, "bone")
        canvas.paint(organ((88.0 * side, 5.0, 555.0), (24.0, 24.0, 24.0)), bone_suv, MU_BONE, "bone")

    if spec.texture:
        canvas.suv.mul_(1.0 + _texture(grid, rng, device))

    if spec.lesions:
        _paint_random_lesions(canvas, rng, so, liver_centre, liver_suv, dense=spec.dense_lesions)
    if spec.tumour:
        r = TUMOUR_DIAMETER_MM / 2
        centre = (liver_centre[0] * so + 20.0 * so, liver_centre[1] * so - 10.0 * so, liver_centre[2] + 10.0)
        canvas.paint(canvas.ellipsoid(centre, (r, r, r)), TUMOUR_TO_LIVER * liver_suv, MU_SOFT, "lesion")
    if spec.catheter:
        path = [(95.0, 35.0, 55.0), (45.0, 25.0, 75.0), (22.0, 15.0, 110.0), (20.0, 10.0, 200.0)]
        tube = canvas.polyline_tube([(x * so, y * so, d) for x, y, d in path], radius=3.0)
        canvas.paint(tube * outline, SUV["catheter"], MU_SOFT, "catheter")

    torso_kg = exact_sum(canvas.mu) * 10.0 * grid.voxel_ml / MASS_ATTENUATION_CM2_PER_G / 1000.0
    weight_kg = torso_kg / TORSO_MASS_FRACTION
    bqml_per_suv = INJECTED_DOSE_BQ * 2.0 ** (-UPTAKE_S / F18_HALF_LIFE_S) / (weight_kg * 1000.0)
    return Phantom(
        activity=canvas.suv * bqml_per_suv,
        mu=canvas.mu,
        labels=canvas.labels,
        grid=grid,
        spec=spec,
        weight_kg=weight_kg,
        bqml_per_suv=bqml_per_suv,
    )


#: Random lesions of training phantoms: how many, how big (diameter, mm), how hot (lesion-to-background).
#: A denoiser sees a lesion only where a patch falls on one; a handful of similar
#: spheres per study taught tgdpet 0.1's built-in model to flatten lesions (18 % of a
#: 20 mm lesion's contrast lost), so training phantoms carry many, of every size
#: and contrast a PET reader meets.
LESION_COUNT = (4, 10)
LESION_DIAMETER_MM = (6.0, 30.0)
LESION_CONTRAST = (2.0, 10.0)
#: Dense lesions (``tgdpet simulate --dense-lesions``): 40-60 a study at the same sites. Why: with 4-10
#: a network meets about one liver lesion per study, and at high BMI it flattened a 20 mm liver tumour by
#: 12-14 %; trained on dense lesions (about seven in the liver), by 1.5-2 % (README). Overlapping
#: spheres merge into irregular hot regions, which a denoiser should keep too.
DENSE_LESION_COUNT = (40, 60)


def _paint_random_lesions(
    canvas: _Canvas, rng: np.random.Generator, so: float, liver_centre, liver_suv: float, dense: bool = False
) -> None:
    """Hot spheres in the liver, the lungs, the mediastinum, the abdomen and the pelvic bones.

    Count, diameter and contrast are drawn from :data:`LESION_COUNT`,
    :data:`LESION_DIAMETER_MM` and :data:`LESION_CONTRAST` (contrast
    log-uniform, so faint lesions are as common as very hot ones), each
    lesion's SUV being the contrast times its site's background uptake; sites
    are equally likely. ``dense`` draws the count from :data:`DENSE_LESION_COUNT`.
    """
    sites = [  # (x, y, depth, spread in mm, background SUV)
        (liver_centre[0], liver_centre[1], liver_centre[2], 35.0, liver_suv),
        (-75.0, -5.0, 180.0, 30.0, SUV["lung"]),
        (75.0, -5.0, 170.0, 30.0, SUV["lung"]),
        (0.0, 30.0, 140.0, 15.0, SUV["blood"]),
        (0.0, 20.0, 420.0, 40.0, SUV["lean"]),
        (95.0, -25.0, 470.0, 15.0, SUV["bone"]),
        (-95.0, -25.0, 470.0, 15.0, SUV["bone"]),
    ]
    lo, hi = DENSE_LESION_COUNT if dense else LESION_COUNT
    equal = np.full(len(sites), 1.0 / len(sites))
    for _ in range(int(rng.integers(lo, hi + 1))):
        # Two ways to draw an equally likely site, each kept so that its datasets can be re-made: the
        # built-in model's training data was drawn the dense way.
        site = rng.choice(len(sites), p=equal) if dense else rng.integers(len(sites))
        x, y, d, spread, background = sites[int(site)]
        r = rng.uniform(*LESION_DIAMETER_MM) / 2
        contrast = float(np.exp(rng.uniform(*np.log(LESION_CONTRAST))))
        centre = (
            (x + rng.uniform(-spread, spread)) * so,
            (y + rng.uniform(-spread, spread)) * so,
            d + rng.uniform(-spread, spread),
        )
        canvas.paint(canvas.ellipsoid(centre, (r, r, r)), contrast * background, MU_SOFT, "other_lesion")

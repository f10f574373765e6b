"""Do lesions keep their uptake? A sphere phantom that is not tgdpet's anatomical phantom.

    python scripts/lesion_phantom.py [--model M.safetensors] [--protocol v1] [--realisations 10] [--tta]
                                     [--background 2500] [--voxel-mm 4.0] [--json out.json]

A NEMA-IEC-like body (a D-shaped water cylinder, 180 mm long, with a cold
lung insert) holds hot spheres of 10, 13, 17, 20, 28 and 37 mm at 4:1 and
8:1 to the background (``--background`` Bq/mL: 2500 by default, about an
FDG body's soft tissue; 5300 is NEMA NU 2's, twice the counts), in two rings
of one slab each. It goes through the
simulator's scanner (attenuation, PSF, scatter, randoms, Poisson counts) and
reconstruction protocol, like a phantom scan on a real scanner: a 600 s
reference and ``R`` disjoint 60 s realisations cut from it. Nothing about it
(shapes, sizes, contrasts, a uniform background without texture) comes from
the phantom the models are trained on.

Per sphere: the ensemble bias of its mean against the 600 s image (the
paper's lesion bias), for the input and the denoised realisations, with
the denoised bias's standard error paired with the inputs; for the
background: the ensemble CoV (the paper's liver CoV, on a background VOI)
and the ratio denoised / input. With ``--tta`` the same figures for the
8-fold flip/transpose test-time augmentation, and the median time of one
volume without and with it. Printed as a table; ``--json`` keeps it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _user_errors import (  # noqa: E402
    ArgumentParser,
    checked,
    output_file,
    positive_float,
    positive_int,
    run,
    seed_int,
)
from tgdpet import metrics  # noqa: E402
from tgdpet.files import atomic_file  # noqa: E402
from tgdpet.denoise import load_denoiser  # noqa: E402
from tgdpet.simulate import PROTOCOLS, Grid, Phantom, PhantomSpec, ScannerModel, projector_for, reconstruct  # noqa: E402
from tgdpet.simulate.grid import AXIAL_FOV_MM, TRANSAXIAL_FOV_MM  # noqa: E402
from tgdpet.simulate.scanner import acquire, count_rates, split  # noqa: E402

DIAMETERS_MM = (10.0, 13.0, 17.0, 20.0, 28.0, 37.0)
CONTRASTS = (4.0, 8.0)
MU_WATER, MU_LUNG = 0.0096, 0.0028
RING_RADIUS_MM = 57.2  # NEMA IEC sphere centres
SLAB_DEPTH_MM = (-40.0, 40.0)  # z of the 4:1 and 8:1 sphere rings
#: --voxel-mm: the simulator's finest grid (512 pixels across) up to voxels that still sample the smallest sphere
VOXEL_MM = checked(float, lambda v: 1.0 <= v <= min(DIAMETERS_MM), f"a voxel size from 1 to {min(DIAMETERS_MM):g} mm")


def _ellipse(X, Y, cx, cy, ax, ay) -> torch.Tensor:
    return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 <= 1.0


def sphere_phantom(grid: Grid, background_bqml: float) -> tuple[Phantom, dict[str, torch.Tensor], torch.Tensor]:
    """The phantom, one mask per sphere (named ``<d>mm_<c>to1``) and the background VOI."""
    X, Y, Z = grid.ras_axes()
    in_slab = (Z.abs() <= 90.0).expand(grid.shape)
    # D shape: a 300 x 230 mm outline, flat on the posterior side.
    body = (_ellipse(X, Y, 0.0, 0.0, 150.0, 115.0) & (Y <= 77.0)).expand(grid.shape) & in_slab
    lung = _ellipse(X, Y, 0.0, 0.0, 25.5, 25.5).expand(grid.shape) & in_slab
    activity = torch.where(body & ~lung, torch.tensor(background_bqml), torch.tensor(0.0))
    mu = torch.where(body, torch.tensor(MU_WATER), torch.tensor(0.0))
    mu = torch.where(lung, torch.tensor(MU_LUNG), mu)
    spheres: dict[str, torch.Tensor] = {}
    for depth, contrast in zip(SLAB_DEPTH_MM, CONTRASTS):
        for k, d in enumerate(DIAMETERS_MM):
            angle = np.radians(30.0 + 60.0 * k)
            cx, cy = RING_RADIUS_MM * np.cos(angle), RING_RADIUS_MM * np.sin(angle)
            inside = ((X - cx) ** 2 + (Y - cy) ** 2 + (Z - depth) ** 2) <= (d / 2) ** 2
            activity = torch.where(inside, torch.tensor(contrast * background_bqml), activity)
            spheres[f"{d:.0f}mm_{contrast:.0f}to1"] = inside
    hot = torch.zeros(grid.shape, dtype=torch.bool)
    for m in spheres.values():
        hot |= m
    # Background VOI: the body between the rings' slabs and the outline, away from spheres, lung and edges.
    inner = (_ellipse(X, Y, 0.0, 0.0, 120.0, 90.0) & (Y <= 50.0)).expand(grid.shape) & (Z.abs() <= 70.0)
    far = ~torch.nn.functional.max_pool3d(hot[None, None].float(), 7, 1, 3)[0, 0].bool()
    background = inner & far & ~_ellipse(X, Y, 0.0, 0.0, 45.0, 45.0).expand(grid.shape)
    labels = body.to(torch.uint8)
    phantom = Phantom(activity, mu, labels, grid, PhantomSpec(body_scale=1.0), weight_kg=0.0, bqml_per_suv=1.0)
    return phantom, spheres, background


def _scores(
    images: np.ndarray, reference: np.ndarray, spheres: dict, background: np.ndarray, inputs: np.ndarray | None = None
) -> dict:
    """Each sphere's bias (and, for denoised ``images`` made from ``inputs``, its paired standard error); the CoV."""
    masks = {n: m.numpy() for n, m in spheres.items()}
    scores = {
        "bias_pct": {n: metrics.lesion_ensemble_bias(images, reference, m) for n, m in masks.items()},
        "background_cov_pct": metrics.liver_cov(images, background),
    }
    if inputs is not None:
        se = metrics.paired_bias_standard_error
        scores["bias_se_pct"] = {n: se(images, inputs, reference, m) for n, m in masks.items()}
    return scores


def grid_for(voxel_mm: float) -> Grid:
    """The simulator's field of view (512 x 512 x 576 mm) in voxels of about ``voxel_mm``."""
    return Grid(round(TRANSAXIAL_FOV_MM / voxel_mm), round(AXIAL_FOV_MM / voxel_mm))


def measure(
    model: str | None,
    protocol: str,
    realisations: int,
    seed: int,
    device: str,
    tta: bool,
    background_bqml: float,
    voxel_mm: float = 4.0,
) -> dict:
    runs = (("denoised", False), ("denoised_tta", True))[: 2 if tta else 1]
    denoisers = {name: load_denoiser(model, device=device, precision="fp32", tta=augment) for name, augment in runs}
    grid = grid_for(voxel_mm)
    phantom, spheres, background = sphere_phantom(grid, background_bqml)
    projector = projector_for(grid.size, grid.pixel_mm, "cpu")
    rates = count_rates(phantom, projector, ScannerModel())
    gen = torch.Generator().manual_seed(seed)
    full = acquire(rates.prompts, 600.0, gen)
    parts = split(full, [60.0 / 600.0] * realisations, gen)
    images = reconstruct([full, *parts], [600.0] + [60.0] * realisations, rates, PROTOCOLS[protocol], projector, grid)
    reference = images[0].numpy()
    inputs = np.stack([im.numpy() for im in images[1:]])
    bg = background.numpy()
    result = {
        "model": model or "built-in",
        "protocol": protocol,
        "realisations": realisations,
        "seed": seed,
        "background_bqml": background_bqml,
        "voxel_mm": list(grid.voxel_mm),
        "input": _scores(inputs, reference, spheres, bg),
    }
    for name, denoiser in denoisers.items():
        seconds, outputs = [], []
        for x in inputs:
            start = time.perf_counter()
            outputs.append(denoiser(x, voxel_mm=grid.voxel_mm))  # finer voxels: on the model's grid
            seconds.append(time.perf_counter() - start)
        result[name] = _scores(np.stack(outputs), reference, spheres, bg, inputs)
        result[name]["median_seconds_per_volume"] = statistics.median(seconds)
        result[name]["background_cov_ratio"] = result[name]["background_cov_pct"] / result["input"]["background_cov_pct"]
    return result


def print_table(result: dict) -> None:
    runs = [k for k in ("input", "denoised", "denoised_tta") if k in result]
    print(
        f"Sphere phantom, background {result['background_bqml']:.0f} Bq/mL, {result['protocol']}, "
        f"voxels {' x '.join(f'{v:.3g}' for v in result['voxel_mm'])} mm, "
        f"{result['realisations']} x 60 s vs 600 s, model {result['model']}"
    )
    print(f"  {'sphere bias %':<16}" + "".join(f"{k + (' +- SE' if k != 'input' else ''):>18}" for k in runs))
    for name in result["input"]["bias_pct"]:
        cells = [f"{result['input']['bias_pct'][name]:.2f}"]
        cells += [f"{result[k]['bias_pct'][name]:.2f} +-{result[k]['bias_se_pct'][name]:.2f}" for k in runs[1:]]
        print(f"  {name:<16}" + "".join(f"{c:>18}" for c in cells))
    print(f"  {'background CoV %':<16}" + "".join(f"{result[k]['background_cov_pct']:>18.2f}" for k in runs))
    for label, key in (("CoV / input CoV", "background_cov_ratio"), ("s per volume", "median_seconds_per_volume")):
        print(f"  {label:<16}{'':>18}" + "".join(f"{result[k][key]:>18.2f}" for k in runs[1:]))


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a model file or a built-in model's name (default: the built-in model)")
    parser.add_argument("--protocol", default="v1", choices=sorted(PROTOCOLS))
    parser.add_argument("--realisations", type=positive_int, default=10)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="also measure 8-fold flip/transpose averaging")
    parser.add_argument("--background", type=positive_float, default=2500.0, help="background activity, Bq/mL")
    parser.add_argument("--voxel-mm", type=VOXEL_MM, default=4.0, help="voxel size (2.0: 256 x 256 x 288 voxels)")
    parser.add_argument("--json", type=output_file, help="also write the results here")
    args = parser.parse_args()
    result = measure(
        args.model, args.protocol, args.realisations, args.seed, args.device, args.tta, args.background, args.voxel_mm
    )
    print_table(result)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"Wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

"""The one-minute tour: simulate a study, denoise it with the built-in model, show the result.

Everything comes from tgdpet itself (no download): a normal-BMI whole-body
study with a 20 mm liver tumour is simulated and reconstructed with the v1
protocol, one 60 s realisation is denoised with the pretrained model, and the
input, the result and the 600 s reference are written as NIfTI with a
side-by-side PNG.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TgdpetError
from .files import atomic_dir, check_can_write, check_replaceable
from .denoise import load_denoiser
from .io import Volume, write_volume
from .simulate.dataset import SimulationConfig, StudySpec, simulate_study


#: What a demo folder holds; ``--overwrite`` replaces a folder holding nothing else.
DEMO_FILES = ("input_060s.nii.gz", "denoised_060s.nii.gz", "reference_600s.nii.gz", "demo.png")


@dataclass
class DemoResult:
    out: Path
    liver_cov_input: float
    liver_cov_denoised: float
    liver_cov_reference: float
    seconds_simulate: float
    seconds_denoise: float


def _region_cov(image: np.ndarray, mask: np.ndarray) -> float:
    """Spatial CoV (%) inside a region: a single-image noise figure for the liver."""
    values = image[mask]
    return float(values.std() / values.mean() * 100)


def _edge_labels(affine: np.ndarray) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
    """Patient directions at the low and high end of each array axis ``(x, y, z)``, from the NIfTI affine.

    Derived from the affine rather than assumed, so the labels stay right
    whatever orientation the volume is stored in.
    """
    import nibabel as nib

    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    return tuple((opposite[code], code) for code in nib.aff2axcodes(affine))  # type: ignore[return-value]


def _body_box(reference: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """The ``(y, x)`` rows and columns holding the body (above 5 % of the 99.5th percentile), plus a margin.

    The simulated field of view is mostly air; cropping to the body makes the
    anatomy fill the panels.
    """
    body = reference > 0.05 * np.percentile(reference, 99.5)
    ys, xs = np.nonzero(body.any(axis=0))
    if ys.size == 0:
        return slice(None), slice(None)
    ny, nx = reference.shape[1:]
    return (slice(max(0, ys.min() - margin), min(ny, ys.max() + margin + 1)),
            slice(max(0, xs.min() - margin), min(nx, xs.max() + margin + 1)))


def _figure(path: Path, images: dict[str, np.ndarray], lesion: np.ndarray, affine: np.ndarray) -> None:
    """Axial and coronal views through the tumour, one grey scale for all, with a colour bar and directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, y, _ = (int(round(c)) for c in np.argwhere(lesion).mean(axis=0))
    reference = images["600 s reference"]
    vmax = float(np.percentile(reference, 99.5))
    rows, cols = _body_box(reference)
    (x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi) = _edge_labels(affine)
    pixel_mm, row_mm, slice_mm = np.linalg.norm(affine[:3, :3], axis=0)
    z_mm = float((affine @ np.array([0.0, 0.0, z, 1.0]))[2])
    y_mm = float((affine @ np.array([0.0, y, 0.0, 1.0]))[1])
    fig, axes = plt.subplots(2, len(images), figsize=(3.4 * len(images) + 0.8, 8.2),
                             gridspec_kw={"height_ratios": [1, 1.9]}, layout="constrained")
    for col, (title, img) in enumerate(images.items()):
        axial, coronal = axes[0, col], axes[1, col]
        shown = axial.imshow(img[z, rows, cols], cmap="gray_r", vmin=0, vmax=vmax, aspect=row_mm / pixel_mm)
        coronal.imshow(img[:, y, cols], cmap="gray_r", vmin=0, vmax=vmax, origin="lower",
                       aspect=slice_mm / pixel_mm)
        axial.set_title(title)
        for ax, (bottom, top) in ((axial, (y_hi, y_lo)), (coronal, (z_lo, z_hi))):
            ax.set_xticks([])
            ax.set_yticks([])
            style = {"transform": ax.transAxes, "color": "tab:blue", "fontsize": 9, "fontweight": "bold"}
            ax.text(0.02, 0.5, x_lo, ha="left", va="center", **style)
            ax.text(0.98, 0.5, x_hi, ha="right", va="center", **style)
            ax.text(0.5, 0.98, top, ha="center", va="top", **style)
            ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    axes[0, 0].set_ylabel(f"axial slice {z} (z = {z_mm:.0f} mm)\nthrough the tumour")
    axes[1, 0].set_ylabel(f"coronal slice {y} (y = {y_mm:.0f} mm)")
    fig.colorbar(shown, ax=axes, shrink=0.6, label="activity concentration (Bq/mL)")
    fig.suptitle("tgdpet demo: simulated v1 study, 60 s input denoised by the built-in DnCNN")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def run_demo(
    out: str | Path = "tgdpet-demo",
    *,
    model: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Simulate, denoise and write the demo folder ``out`` (atomically).

    The model is checked before the output folder, so a bad ``model`` is
    reported as such even when ``out`` already exists. ``overwrite`` replaces
    an earlier demo folder, never one holding anything else.
    """
    denoiser = load_denoiser(model, device=device)
    if Path(out).suffix:  # the demo writes a folder of images; out.nii.gz would become a folder of that name
        raise TgdpetError(f"the demo writes a folder, so name it without an extension (not {Path(out).name}).")
    out = check_can_write(out, overwrite, folder=True)
    if overwrite:
        check_replaceable(out, lambda p: p.is_file() and p.name in DEMO_FILES, "the files of a tgdpet demo")
    t0 = time.perf_counter()
    config = SimulationConfig(
        studies=(StudySpec("test", "normal", tumour=True),),
        protocols=("v1",),
        realisations=2,
        seed=seed,
        device=device,
        progress=progress,
    )
    study = simulate_study(config.studies[0], config, index=0)
    images = [img.cpu().numpy() for img in study.images["v1"]]
    roles = [scan.role for scan in study.scans]
    reference = images[roles.index("target")]
    noisy = images[roles.index("realisation")]
    t1 = time.perf_counter()
    denoised = denoiser(noisy, progress=progress)
    t2 = time.perf_counter()

    affine = config.grid.affine()
    liver = study.phantom.mask("liver").cpu().numpy()
    lesion = study.phantom.mask("lesion").cpu().numpy()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, data, description in (
            ("input_060s", noisy, "tgdpet demo: simulated 60 s input"),
            ("denoised_060s", denoised, "tgdpet denoised"),
            ("reference_600s", reference, "tgdpet demo: simulated 600 s reference"),
        ):
            volume = Volume(data=data, affine=affine, units="BQML")
            write_volume(volume, tmp / f"{name}.nii.gz", description=description)
        _figure(tmp / "demo.png", {"60 s input": noisy, "denoised": denoised, "600 s reference": reference}, lesion,
                affine)
    return DemoResult(
        out=out,
        liver_cov_input=_region_cov(noisy, liver),
        liver_cov_denoised=_region_cov(denoised, liver),
        liver_cov_reference=_region_cov(reference, liver),
        seconds_simulate=t1 - t0,
        seconds_denoise=t2 - t1,
    )

"""Draw docs/simulator.png: a simulated study, its v1 and v2 images at 60 s, and the 600 s targets.

Simulates one test study (inserted 20 mm liver tumour, 600 s scan split into
ten disjoint 60 s realisations) and shows an axial slice through the tumour
and a coronal slice, in SUV. The panel titles carry the noise figures of
each protocol measured over the realisations: liver CoV (mean over liver
voxels of the ensemble standard deviation, over the liver mean) and the
lag-1 neighbour correlation of the noise along x inside the liver.

    python scripts/simulator_figure.py [--body normal] [--out docs/simulator.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tgdpet.simulate import SimulationConfig, StudySpec, simulate_study  # noqa: E402


def noise_figures(realisations: list[torch.Tensor], liver: torch.Tensor) -> tuple[float, float]:
    """Liver CoV (%) and lag-1 neighbour correlation along x of the noise inside the liver."""
    stack = torch.stack(realisations).double()
    mean, std = stack.mean(0), stack.std(0)
    cov = 100.0 * float(std[liver].mean() / mean[liver].mean())
    noise = stack - mean
    pair = liver[..., :-1] & liver[..., 1:]
    a, b = noise[..., :-1][:, pair], noise[..., 1:][:, pair]
    return cov, float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", default="normal", choices=("low", "normal", "high"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("docs/simulator.png"))
    args = parser.parse_args()

    spec = StudySpec("test", args.body, tumour=True)
    config = SimulationConfig(studies=(spec,), size=args.size, slices=args.slices, seed=args.seed, device=args.device)
    started = time.perf_counter()
    study = simulate_study(spec, config)
    print(f"simulated and reconstructed {len(study.scans)} scans x 2 protocols in {time.perf_counter() - started:.1f} s")

    phantom = study.phantom
    liver = phantom.mask("liver").cpu()
    tumour = phantom.mask("lesion").cpu().nonzero().float().mean(0).round().long().tolist()
    k, row = tumour[0], tumour[1]
    suv = 1.0 / phantom.bqml_per_suv

    panels = [("phantom (truth)", phantom.activity.cpu())]
    for p in ("v1", "v2"):
        images = [im.cpu() for im in study.images[p]]
        cov, corr = noise_figures(images[1:], liver)
        print(f"{p}: liver CoV {cov:.1f} %, lag-1 neighbour correlation {corr:.2f} (10 x 60 s, BMI {phantom.bmi:.1f})")
        panels.append((f"{p} 60 s\nliver CoV {cov:.0f} %, corr {corr:.2f}", images[1]))
    panels += [(f"{p} 600 s target", study.images[p][0].cpu()) for p in ("v1", "v2")]

    body = (phantom.labels > 0).cpu()
    rows = body.any(dim=(0, 2)).nonzero()[[0, -1], 0].tolist()  # crop the empty field of view
    cols = body.any(dim=(0, 1)).nonzero()[[0, -1], 0].tolist()
    crop_y, crop_x = slice(max(rows[0] - 3, 0), rows[1] + 4), slice(max(cols[0] - 3, 0), cols[1] + 4)
    aspect = config.grid.slice_mm / config.grid.pixel_mm
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 7.4), height_ratios=(1, 2))
    for col, (title, volume) in enumerate(panels):
        axial = volume[k, crop_y, crop_x] * suv
        coronal = volume[:, row, crop_x].flip(0) * suv
        axes[0, col].imshow(axial, cmap="gray_r", vmin=0, vmax=7)
        axes[1, col].imshow(coronal, cmap="gray_r", vmin=0, vmax=7, aspect=aspect)
        axes[0, col].set_title(title, fontsize=10)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("axial, through the tumour")
    axes[1, 0].set_ylabel("coronal")
    fig.suptitle(
        f"tgdpet simulator: {args.body} BMI ({phantom.bmi:.1f}), 20 mm liver tumour at 4x liver uptake, "
        "SUV 0-7 (patient's right on the left)",
        fontsize=11,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

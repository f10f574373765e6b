"""What a Gaussian filter gives on the same test studies: the noise/uptake trade-off a network must beat.

    python scripts/gaussian_baseline.py EVAL/v1 [--fwhm 4.7,7.1,9.4,11.8,14.1,18.8] [--study s003]

Each study's realisations are filtered with an isotropic 3D Gaussian of each
FWHM (mm, from the voxel size of the target's affine) and scored by
``tgdpet evaluate``'s own code (lesion ensemble bias against the target,
with its standard error paired with the unfiltered realisations, and liver
CoV across realisations). A denoiser is only useful where it keeps
more lesion uptake than a Gaussian filter at the same liver CoV; the
smallest filter that brings the CoV to a target shows what that noise
level costs a linear method.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _user_errors import ArgumentParser, run  # noqa: E402
from tgdpet.data import load_manifest  # noqa: E402
from tgdpet.errors import TgdpetError  # noqa: E402
from tgdpet.evaluate import load_study_images, score_images  # noqa: E402
from tgdpet.io import read_volume  # noqa: E402
from tgdpet.io.orientation import to_canonical  # noqa: E402

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))


def gaussian(volume: np.ndarray, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """``volume`` (z, y, x) filtered by a separable Gaussian cut at 3 sigma (whole voxels), edges replicated."""
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    for axis, sigma in enumerate(sigma_vox):
        r = max(1, int(math.ceil(3 * sigma)))
        taps = torch.arange(-r, r + 1, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0] * 6  # F.pad lists the last axis first
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), (kernel / kernel.sum()).view(shape))
    return x[0, 0].numpy()


def report(data: str, fwhms: list[float], only: list[str] | None) -> None:
    """Print, for each study with realisations, the input's lesion bias and liver CoV, then each filter's."""
    manifest = load_manifest(data)
    scored = [entry for entry in manifest.studies if entry.realisations]
    unknown = sorted(set(only or ()) - {entry.id for entry in scored})
    if unknown:
        raise TgdpetError(
            f"{data} has no study {', '.join(unknown)} with realisations; its studies with realisations are "
            f"{', '.join(entry.id for entry in scored) or 'none'}, pick from them."
        )
    for entry in scored:
        if only and entry.id not in only:
            continue
        study = load_study_images(entry, manifest.label_codes)
        affine = to_canonical(read_volume(entry.target)).affine  # the frame load_study_images reads in
        voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[::-1]  # columns are x, y, z; arrays (z, y, x)
        print(f"study {entry.id}: FWHM mm -> lesion bias %, its SE (paired with the input), liver CoV %")
        row = score_images(study.images, study)
        print(f"  input   {row['lesion_bias_pct']:7.2f}         {row['liver_cov_pct']:7.2f}")
        for fwhm in fwhms:
            sigma = tuple(float(fwhm / FWHM_PER_SIGMA / v) for v in voxel_mm)
            row = score_images((gaussian(img, sigma) for img in study.images), study, made_from=study.images)
            print(f"  {fwhm:5.1f}   {row['lesion_bias_pct']:7.2f} {row['lesion_bias_se_pct']:7.2f} "
                  f"{row['liver_cov_pct']:7.2f}")  # fmt: skip


def fwhm_list(text: str) -> list[float]:
    """``--fwhm``'s value: positive millimetres separated by commas."""
    try:
        values = [float(f) for f in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive FWHMs in mm, e.g. 4.7,9.4")
    return values


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="an evaluation dataset (tgdpet simulate ... writes one per protocol)")
    parser.add_argument("--fwhm", type=fwhm_list, default="4.7,7.1,9.4,11.8,14.1,18.8",
                        help="filter FWHMs in mm, comma-separated")
    parser.add_argument("--study", action="append", help="only these study ids (repeatable)")
    args = parser.parse_args()
    report(args.data, args.fwhm, args.study)


if __name__ == "__main__":
    run(main)

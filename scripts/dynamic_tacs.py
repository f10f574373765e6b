"""What denoising does to a dynamic study, frame by frame: noise, bias and time-activity curves against truth.

    python scripts/dynamic_tacs.py --work W [--model MODEL] [--size 128] [--slices 144] [--seed 0] [--json out.json]

Simulates a PET-BIDS dataset (``tgdpet simulate W/ds --bids --bmi normal``: a static 60 s study and a
dynamic 0-62 min one in 22 frames of 10 s to 10 min; kept and reused), denoises it as ``tgdpet denoise W/ds``
does (into ``W/ds/derivatives/tgdpet``), and compares, per frame of the dynamic study, in the liver and in the
20 mm liver tumour:

- the noise: RMS of (image - noise-free reconstruction) over the liver, in % of the noise-free liver mean,
  before and after denoising;
- the bias: region mean of the image against the noise-free reconstruction's, in %;
- the time-activity curves (region means) of the image, the denoised image, the noise-free reconstruction
  and the true activity.

The noise-free reconstruction (the frame's expected counts through the same OSEM) is the reference for the
denoiser's own bias; the truth shows what resolution loses besides. Printed as markdown (docs/dynamic.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from _user_errors import ArgumentParser, output_file, run, seed_int  # noqa: E402
from tgdpet.denoise import denoise_inputs, load_denoiser  # noqa: E402
from tgdpet.errors import TgdpetError  # noqa: E402
from tgdpet.files import atomic_file  # noqa: E402
from tgdpet.simulate import SimulationConfig, StudySpec  # noqa: E402
from tgdpet.simulate.bids_dataset import write_bids_dataset  # noqa: E402
from tgdpet.simulate.phantom import LABEL_CODES  # noqa: E402

NAME = "sub-02_trc-FDG_rec-v1"  # the dynamic subject of a one-BMI-class dataset


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def frame_rows(ds: Path) -> list[dict]:
    """Per frame: noise and bias in the liver and the tumour, before and after denoising."""
    sidecar = json.loads((ds / "sub-02" / "pet" / f"{NAME}_pet.json").read_text())
    phantom = ds / "derivatives" / "phantom" / "sub-02" / "pet"
    noisy = load(ds / "sub-02" / "pet" / f"{NAME}_pet.nii.gz")
    denoised = load(ds / "derivatives" / "tgdpet" / "sub-02" / "pet" / f"{NAME}_desc-denoised_pet.nii.gz")
    clean = load(phantom / f"{NAME}_desc-noisefree_pet.nii.gz")
    truth = load(phantom / f"{NAME}_desc-truth_pet.nii.gz")
    labels = load(phantom / "sub-02_desc-labels_dseg.nii.gz")
    regions = {"liver": labels == LABEL_CODES["liver"], "tumour": labels == LABEL_CODES["lesion"]}
    rows = []
    for k, (start, seconds) in enumerate(zip(sidecar["FrameTimesStart"], sidecar["FrameDuration"])):
        row: dict = {"frame": k, "start_s": start, "duration_s": seconds}
        for name, mask in regions.items():
            ref = clean[..., k][mask]
            row[name] = {
                "truth": truth[..., k][mask].mean(),
                "noise_free": ref.mean(),
                "noisy": noisy[..., k][mask].mean(),
                "denoised": denoised[..., k][mask].mean(),
                "noise_noisy_pct": 100 * np.sqrt(np.mean((noisy[..., k][mask] - ref) ** 2)) / ref.mean(),
                "noise_denoised_pct": 100 * np.sqrt(np.mean((denoised[..., k][mask] - ref) ** 2)) / ref.mean(),
            }
            r = row[name]
            r["bias_noisy_pct"] = 100 * (r["noisy"] / r["noise_free"] - 1)
            r["bias_denoised_pct"] = 100 * (r["denoised"] / r["noise_free"] - 1)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| frame | start s | length s | liver noise-free Bq/mL | liver noise % (in -> out) | liver bias % "
            "(in -> out) | tumour noise-free Bq/mL | tumour noise % (in -> out) | tumour bias % (in -> out) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        li, tu = r["liver"], r["tumour"]
        lines.append(
            f"| {r['frame']} | {r['start_s']:g} | {r['duration_s']:g} | {li['noise_free']:.0f} | "
            f"{li['noise_noisy_pct']:.1f} -> {li['noise_denoised_pct']:.1f} | {li['bias_noisy_pct']:+.1f} -> "
            f"{li['bias_denoised_pct']:+.1f} | {tu['noise_free']:.0f} | {tu['noise_noisy_pct']:.1f} -> "
            f"{tu['noise_denoised_pct']:.1f} | {tu['bias_noisy_pct']:+.1f} -> {tu['bias_denoised_pct']:+.1f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Over the frames: RMS of each TAC's error against the noise-free TAC, in % of the noise-free mean."""
    out = {}
    for name in ("liver", "tumour"):
        for kind in ("noisy", "denoised"):
            errors = [100 * (r[name][kind] / r[name]["noise_free"] - 1) for r in rows]
            out[f"{name} TAC RMS error, {kind} (%)"] = float(np.sqrt(np.mean(np.square(errors))))
        ratio = [r[name]["noise_denoised_pct"] / r[name]["noise_noisy_pct"] for r in rows]
        out[f"{name} noise after / before, median over frames"] = float(np.median(ratio))
    return out


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", help="a model file or a built-in model's name [default: the built-in model]")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=output_file)
    args = parser.parse_args()
    # everything a user can get wrong is refused before the study is simulated
    if args.work.exists() and not args.work.is_dir():
        raise TgdpetError(f"--work {args.work} is a file; name a folder for the dataset.")
    config = SimulationConfig(studies=(StudySpec("test", "normal", tumour=True),), size=args.size,
                              slices=args.slices, protocols=("v1",), seed=args.seed, device=args.device,
                              progress=False)  # fmt: skip
    load_denoiser(args.model, device=args.device)
    ds = args.work / "ds"
    args.work.mkdir(parents=True, exist_ok=True)
    if not ds.exists():
        write_bids_dataset(ds, config)
    denoise_inputs([str(ds)], model_path=args.model, overwrite=True, device=args.device,
                   echo=lambda m: print(m, file=sys.stderr), warn=lambda m: print(m, file=sys.stderr))  # fmt: skip
    rows = frame_rows(ds)
    print(markdown(rows))
    print()
    for key, value in summary(rows).items():
        print(f"- {key}: {value:.2f}")
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps({"rows": rows, "summary": summary(rows)}, indent=1, default=float))


if __name__ == "__main__":
    run(main)

"""What ``n2n-online`` does to a test study's tumour and liver, against ``denoise`` with the same model.

    python scripts/online_learning_check.py MANIFEST STUDY [--model NAME|FILE] [--pairs 5]
                                            [--config FILE] [--work DIR] [--amp/--no-amp]

Online learning needs two equal-count halves of one study. A test study of
``scripts/clinical_grid.py`` (or ``tgdpet simulate``) holds R disjoint 60 s
realisations of one scan, so realisations 2k and 2k+1 are the halves of a
120 s study: for each of ``--pairs`` pairs, ``n2n-online`` adapts the model to
that pair and denoises its mean (as ``tgdpet n2n-online`` does without
``--full``), and the model itself denoises the same mean. Both sets of images
are scored by ``tgdpet evaluate``'s own code against the study's 600 s image:
the tumour's ensemble bias (+- its standard error, paired with the pair means:
``tgdpet.metrics.paired_bias_standard_error``) and the liver CoV across the
pairs as a multiple of the pair means' own. Each adaptation starts from the
model afresh (about a minute at 4 mm on two cores, three at 2.7 mm).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _user_errors import ArgumentParser, checked, run  # noqa: E402
from tgdpet.builtin import resolve_model  # noqa: E402
from tgdpet.data import load_manifest  # noqa: E402
from tgdpet.errors import TgdpetError  # noqa: E402
from tgdpet.evaluate import StudyImages, load_study_images, prepare_denoisers, score_images, truth_path  # noqa: E402
from tgdpet.io import read_volume  # noqa: E402
from tgdpet.io.orientation import to_canonical  # noqa: E402
from tgdpet.train import N2NConfig, n2n_online, resolve_config  # noqa: E402

#: --pairs: the liver CoV is taken across the pairs, so one is not enough
PAIRS = checked(int, lambda v: v >= 2, "a number of pairs, 2 or more (the liver CoV is taken across them)")


def row(name: str, images: list[np.ndarray], means: list[np.ndarray], study: StudyImages, reference: dict) -> str:
    """One model's line: its tumour bias with its standard error paired with the pair ``means`` it was made from,
    its liver CoV against ``reference`` (the pair means'), its liver bias."""
    scores = score_images(images, study, made_from=means)
    cov = scores["liver_cov_pct"] / reference["liver_cov_pct"]
    return (f"{name}: tumour bias {scores['lesion_bias_pct']:+.1f} +- {scores['lesion_bias_se_pct']:.1f} %, "
            f"liver CoV {cov:.3f}x, liver bias {scores['liver_bias_pct']:+.1f} %")  # fmt: skip


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("study")
    parser.add_argument("--model", help="a model file or a built-in model's name (default: the built-in model)")
    parser.add_argument("--pairs", type=PAIRS, default=5, help="pairs of realisations (default: 5)")
    parser.add_argument("--config", help="n2n-online settings (YAML); default: n2n-online's own defaults")
    parser.add_argument("--work", type=Path, help="keep the adapted studies here (default: a temporary folder)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()

    model = resolve_model(args.model)
    cfg = resolve_config(N2NConfig, args.config, amp=args.amp, device="cpu")
    denoise = prepare_denoisers({"model": model}, device="cpu", precision="fp32")["model"]
    if args.work is not None and args.work.exists() and not args.work.is_dir():
        raise TgdpetError(f"--work {args.work} is a file; name a folder for the adapted studies.")
    manifest = load_manifest(args.manifest)
    entry = next((s for s in manifest.studies if s.id == args.study), None)
    if entry is None or len(entry.realisations) < 2 * args.pairs:
        raise TgdpetError(f"{args.manifest} has no study {args.study!r} with {2 * args.pairs} realisations; "
                          "name a study that has them, or ask for fewer --pairs.")  # fmt: skip
    study = load_study_images(entry, manifest.label_codes, truth_path(manifest, entry))
    pairs = [(entry.realisations[2 * k], entry.realisations[2 * k + 1]) for k in range(args.pairs)]
    means = [(study.images[2 * k] + study.images[2 * k + 1]) / 2 for k in range(args.pairs)]

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        adapted = []
        for k, (half1, half2) in enumerate(pairs):
            out = work / f"{args.study}_pair{k}.nii.gz"
            n2n_online(model, half1, half2, out, cfg, overwrite=True, progress_bar=False, echo=lambda _: None)
            adapted.append(to_canonical(read_volume(out)).data)
            print(f"pair {k + 1}/{args.pairs} adapted", file=sys.stderr, flush=True)

        reference = score_images(means, study)
        print(f"{args.study}, {args.pairs} pairs of 60 s realisations (their means: tumour bias "
              f"{reference['lesion_bias_pct']:+.1f} %, liver CoV {reference['liver_cov_pct']:.1f} %)")  # fmt: skip
        print(row("denoise", [denoise(x, voxel_mm=study.voxel_mm) for x in means], means, study, reference))
        print(row("n2n-online", adapted, means, study, reference))


if __name__ == "__main__":
    run(main)

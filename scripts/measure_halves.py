"""Measure what n2n-online's halves check decides on, for halves of one study and halves of two studies.

Simulates studies with Noise2Noise halves (v1 and v2 protocols; halves of a
120 s scan, i.e. 60 s each, and of a 30 s scan, 15 s each) and prints, as a
markdown table, the block-mean correlation and mean-uptake ratio that
``tgdpet.train.n2n.check_halves`` compares with its thresholds, plus the raw
voxel correlation, for (a) the two halves of each study and (b) half 1 of one
study against half 2 of another with the same count level and protocol.
docs/n2n-halves.md holds the output::

    python scripts/measure_halves.py            # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _user_errors import ArgumentParser  # noqa: E402
from tgdpet.inputs import body_mask  # noqa: E402
from tgdpet.simulate.dataset import SimulationConfig, StudySpec, simulate_study  # noqa: E402
from tgdpet.train.n2n import halves_agreement  # noqa: E402

BODIES = ("normal", "normal", "high", "high", "low")  # two of a body class: the most alike patients


def raw_correlation(h1: np.ndarray, h2: np.ndarray) -> float:
    body = body_mask((h1 + h2) / 2)
    return float(np.corrcoef(h1[body], h2[body])[0, 1])


def row(kind: str, scan_s: float, protocol: str, what: str, h1: np.ndarray, h2: np.ndarray) -> str:
    a = halves_agreement(h1, h2)
    return (f"| {kind} | {scan_s / 2:g} s | {protocol} | {what} | {raw_correlation(h1, h2):.3f} | "
            f"{a.correlation:.3f} | {a.mean_ratio:.3f} |")


def main() -> None:
    ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("| halves | each | protocol | studies | voxel corr. | block corr. | mean ratio |")
    print("|---|---|---|---|---|---|---|")
    for scan_s in (120.0, 30.0):
        specs = tuple(StudySpec("train", b, lesions=True, halves=True) for b in BODIES)
        cfg = SimulationConfig(studies=specs, protocols=("v1", "v2"), levels_s=(60.0,), halves_scan_s=scan_s,
                               seed=11, device="cpu", progress=False)
        halves = {}
        for i, spec in enumerate(specs):
            study = simulate_study(spec, cfg, index=i)
            roles = [s.role for s in study.scans]
            for p in cfg.protocols:
                h = [im.cpu().numpy() for im, r in zip(study.images[p], roles) if r == "half"]
                halves[(i, spec.body, p)] = h
                print(row("one study", scan_s, p, f"{i} ({spec.body})", *h), flush=True)
        for k1, k2 in itertools.combinations(halves, 2):
            if k1[2] == k2[2]:
                what = f"{k1[0]} ({k1[1]}) vs {k2[0]} ({k2[1]})"
                print(row("two studies", scan_s, k1[2], what, halves[k1][0], halves[k2][1]), flush=True)


if __name__ == "__main__":
    main()

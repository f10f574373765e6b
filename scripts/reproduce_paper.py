"""Reproduce Chen, Asma & Chan, "Targeted Gradient Descent" (MICCAI 2021) on simulated PET data.

    python scripts/reproduce_paper.py --scale medium --out results/ [--device auto] [--seed 0] [--overwrite]
                                      [--docs docs/reproduction/README.md]
    python scripts/reproduce_paper.py --resume --scale medium --out results/      # continue an interrupted run
    python scripts/reproduce_paper.py --report-only --out results/ [--docs ...]   # rebuild the markdown

What a run does, step by step, and how it resumes: :mod:`tgdpet.paper`.
"""

import sys

from tgdpet.paper.runner import main

if __name__ == "__main__":
    sys.exit(main())

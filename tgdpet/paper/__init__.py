"""The paper's reproduction: Chen, Asma & Chan, "Targeted Gradient Descent" (MICCAI 2021) on simulated PET data.

    python scripts/reproduce_paper.py --scale medium --out results/ [--device auto] [--seed 0] [--overwrite]
                                      [--docs docs/reproduction/README.md]
    python scripts/reproduce_paper.py --resume --scale medium --out results/      # continue an interrupted run
    python scripts/reproduce_paper.py --report-only --out results/ [--docs ...]   # rebuild the markdown

One path from nothing to the paper's Table 1, Fig. 4 and Figs 5-6, through the
library API (the equivalent ``tgdpet`` commands are written to the report):

1. Simulate three datasets (all images of a study come from one scan, so v1
   and v2 differ only in reconstruction):
   - ``main``: N training studies alternating low and high BMI, reconstructed
     with v1 and v2; a low-BMI and a high-BMI test study, each a 600 s scan
     with a liver tumour cut into R x 60 s realisations, ``test_studies`` of
     each (the tests are on v2 images; the low-BMI ones also in v1, for
     Fig. 4); an out-of-distribution
     (OOD) study with a catheter and a very hot bladder (v2), with R x 60 s
     realisations and two 60 s halves of a 120 s scan for Noise2Noise.
   - ``finetune``: low-BMI studies reconstructed with v2 only, *separate* from
     the N training studies, as the paper's 7 low-BMI fine-tuning studies.
   - ``third``: high-BMI v2 studies, a third task for TGD² (TGD-net
     TGD-fine-tuned again with masks from its own weights).
2. Train v1-net (main/v1) and v2-net (main/v2) from scratch, once, scoring
   v1-net's kernels by KSE after every epoch (flagged fraction against
   training length); then, with each of ``seeds`` fine-tuning seeds,
   fine-tune v1-net on ``finetune``: FT-net (last three conv blocks),
   TGD-net (phi = 0.3), EWC-net, the paper-literal TGD and TGD with
   ``--revive``; TGD²-net = that seed's TGD-net fine-tuned by TGD on
   ``third`` (TGD²-net with ``--revive`` likewise from TGD-net with it).
3. Online learning on the OOD study (phi = 0.4), per seed: TGD-N2N from
   v2-net (tgdpet's default, paper-literal, with ``--revive``) and TGD²-N2N
   from that seed's TGD-net.
4. BatchNorm after TGD: on fine-tuning patches, how far each frozen
   channel's batch statistics are from the running statistics TGD kept,
   and TGD-net (BN re-est.) with them re-estimated.
5. The kernel-drop study of Fig. 4 on v1-net at phi = 0.3 ... 0.6.
6. Evaluate every network on every v2 test study (lesion bias, liver CoV,
   hallucination score on the ensemble mean), derive Table 1 (mean +- sd,
   n) and the verdicts (:mod:`.table`, :mod:`.verdicts`), and write table1.md,
   fig4.md/png, fig5.png, fig6.png, results.json (with the git commit) and
   README.md into ``--out``.

Compute. An epoch is one random patch per input slice of the dataset
(studies x count levels x slices), and every network trains the same number of
epochs (the paper: 500 for all, 150 for N2N). Fine-tuning on 7 studies then
costs 7/20 of training on 20: the paper's "64 % of the training time saved".
Scales fix patches, not wall-clock time, so a run is reproducible.

Interruptions. A medium run takes hours, so every finished step is recorded in
``OUT/progress.json`` and ``--resume`` continues a killed run: it reuses the
datasets (if their ``simulation.json`` matches), continues each training run
from its last complete epoch (``tgdpet train --resume``), and skips the
online-learning runs and evaluations already recorded (a network added to the
run since is evaluated alone and its rows join the recorded ones). A resumed run gives the
numbers of an uninterrupted one (tests/test_paper.py kills one to check).

Modules, in the order a run uses them: :mod:`.scales` (sizes and fixed
settings), :mod:`.bookkeeping` (the run, its progress file, the equivalent
commands), :mod:`.steps` (steps 1-3), :mod:`.measure` (steps 4-7),
:mod:`.table`, :mod:`.verdicts`, :mod:`.analyses`, :mod:`.figures` and
:mod:`.report` (the numbers turned into Table 1, verdicts, answers, figures
and the written report), :mod:`.runner` (the command line). The paper's code
sits here, beside the library and above it: nothing in ``tgdpet`` imports it.
"""

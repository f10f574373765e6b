"""How big a reproduction is (tiny, small, medium, paper) and the paper's fixed settings: thresholds, networks,
table order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The paper's thresholds: TGD fine-tuning, online learning, and the kernel-drop study (Fig. 4).
PHI_FINETUNE = 0.3
PHI_N2N = 0.4
DROP_PHIS = (0.3, 0.4, 0.5, 0.6)
#: The paper's TGD taken literally, kept as its own rows beside tgdpet's default TGD: activation-gradient
#: masking, conv1's meaningless kernels retrained, frozen channels normalised by batch statistics while training.
PAPER_LITERAL = {"tgd_mode": "activation", "conv1": "retrain", "bn_stats": "batch", "read_kernels": "freeze",
                 "revive": False}
#: tgdpet's TGD with ``--revive`` (tgd-finetune's default since this reproduction; docs/tgd.md): retrained channels
#: that are silent on the new data re-initialised; and without it (n2n-online's default), the rows named TGD-net.
REVIVE, NO_REVIVE = {"revive": True}, {"revive": False}
#: The fine-tuned networks of Table 1, then the online-learning ones, in table order.
FINETUNED = ("FT-net", "TGD-net", "EWC-net", "TGD2-net", "TGD-paper-net", "TGD-revive-net", "TGD2-revive-net")
ONLINE = ("TGD-N2N", "TGD2-N2N", "TGD-paper-N2N", "TGD-revive-N2N")
#: TGD-net with its frozen channels' BN running statistics re-estimated on the fine-tuning data.
BN_REESTIMATED = "TGD-net-BN"
MODELS = ("v1-net", "v2-net", *FINETUNED, BN_REESTIMATED, *ONLINE)
#: results.json's format version (2: several seeds and test studies, instances, verdicts).
FORMAT_VERSION = 2
#: Patches of the fine-tuning data the BatchNorm study measures (at most an epoch's worth).
BN_PATCHES = 2048
#: The epoch line of a training run's echo (tgdpet.train.loop): v1-net's weights are kept after each one.
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+")
#: The run's finished steps and their results, what ``--resume`` reads (in ``--out``).
PROGRESS = "progress.json"


@dataclass(frozen=True)
class Scale:
    """How big the reproduction is; everything not set here is the paper's setting."""

    name: str
    summary: str
    size: int  # pixels per row over the 512 mm field of view
    slices: int  # slices over the 576 mm neck-to-pelvis extent
    levels_s: tuple[float, ...]  # count levels of the noisy training inputs (s of the 600 s scan)
    realisations: int  # 60 s realisations of each test study
    n_train: int  # v1 / v2 training studies (low and high BMI alternating)
    n_finetune: int  # separate low-BMI v2 studies for FT-net, TGD-net, EWC-net
    n_third: int  # high-BMI v2 studies for TGD²-net
    preset: str
    batch_size: int
    patch_size: int
    epochs: int  # for every network trained or fine-tuned
    n2n_epochs: int
    seeds: int  # fine-tuning seeds: every fine-tuned / online network is trained this many times
    test_studies: int  # low-BMI and high-BMI test studies each
    channel_penalty: float = 0.0  # v1-net's and v2-net's group-lasso weight (tgdpet train --channel-penalty)
    every_seed: tuple[str, ...] | None = None  # networks trained with every fine-tuning seed, the rest with the
    # first only (None: every network with every seed)

    def trains(self, name: str, seed: int, seeds: list[int]) -> bool:
        """Whether network ``name`` is fine-tuned (or adapted) with ``seed``."""
        return self.every_seed is None or name in self.every_seed or seed == seeds[0]


#: Epochs of the medium scale. Measured on 2 cores with bf16 units (2026-12-02, bf16 training and evaluation):
#: simulation 10 min, v1-net and v2-net 10 min each, one seed's four fine-tunes 13 min, online learning 3 min,
#: evaluation (25 networks x 7 studies) 31 min: 1 h 45 min in all (in fp32, 2026-12-01: 4 h 10 min).
MEDIUM_EPOCHS = 24
#: v1-net's and v2-net's channel penalty (``tgdpet train --channel-penalty``), chosen on the medium data's v1
#: training set before this run (``scripts/spare_capacity.py``, 5 epochs, docs/tgd.md): 1e-3 left 46 % of the
#: parameters droppable at phi 0.3 for a 0.01 % output change, at 0.7 dB of PSNR on a held-out study
#: (3e-4: 18 %, no PSNR cost; 0: 9 %, and dropping them changed the output by 14 %).
CHANNEL_PENALTY = 1e-3

SCALES = {
    "tiny": Scale(
        "tiny", "pipeline check for tests: a tiny grid and net, two epochs, two seeds (numbers are meaningless)",
        size=40, slices=45, levels_s=(60, 180), realisations=2, n_train=2, n_finetune=1, n_third=1,
        preset="tiny", batch_size=16, patch_size=16, epochs=2, n2n_epochs=1, seeds=2, test_studies=2,
        channel_penalty=CHANNEL_PENALTY,
    ),
    "small": Scale(
        "small", "2 CPU cores: the paper's 20 + 7 studies at 4 mm voxels, the 'small' net (7 x 32 channels), "
        "12 epochs (60 for N2N), one seed",
        size=128, slices=144, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=4, preset="small", batch_size=64, patch_size=32, epochs=12, n2n_epochs=60, seeds=1, test_studies=1,
        channel_penalty=CHANNEL_PENALTY,
    ),
    "medium": Scale(
        "medium", f"2 CPU cores: the small scale's data and net, {MEDIUM_EPOCHS} epochs (60 for N2N), "
        "3 fine-tuning seeds (EWC-net and TGD² with the first only) and 3 test studies per BMI class, for error bars",
        size=128, slices=144, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=4, preset="small", batch_size=64, patch_size=32, epochs=MEDIUM_EPOCHS, n2n_epochs=60, seeds=3,
        test_studies=3, channel_penalty=CHANNEL_PENALTY,
        every_seed=("FT-net", "TGD-net", "TGD-paper-net", "TGD-revive-net", "TGD-N2N", "TGD-paper-N2N",
                    "TGD-revive-N2N"),
    ),
    "paper": Scale(
        "paper", "a GPU: the paper's 20 + 7 studies, its network and 500 / 150 epochs, 2.7 mm voxels",
        size=192, slices=216, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=7, preset="paper", batch_size=64, patch_size=32, epochs=500, n2n_epochs=150, seeds=3,
        test_studies=3, channel_penalty=CHANNEL_PENALTY,
    ),
}  # fmt: skip

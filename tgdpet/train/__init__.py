"""Training: DnCNN from scratch, TGD fine-tuning and its baselines, Noise2Noise online learning.

- :func:`train` (``tgdpet train``): a DnCNN from scratch on a manifest.
- :func:`finetune` (``tgdpet tgd-finetune``): adapt a model by TGD, or by a
  baseline (all layers, the last three blocks, EWC).
- :func:`n2n_online` (``tgdpet n2n-online``): TGD with Noise2Noise pairs on one
  study, then denoise it.

All three share one loop (:mod:`.loop`), one config scheme (:mod:`.config`),
and the run-folder layout of :mod:`.outputs`; ``train`` and ``finetune`` also
run under ``torchrun`` (:mod:`.ddp`).
"""

from ..config import FinetuneConfig, LoopConfig, N2NConfig, TrainConfig, resolve_config
from .loop import FitResult, Progress, fit, validate
from .methods import EWC, TGD, AllLayers, LastBlocks, Method, empirical_fisher
from .n2n import N2NResult, n2n_online
from .workflows import build_method, finetune, train

__all__ = [
    "AllLayers",
    "EWC",
    "FinetuneConfig",
    "FitResult",
    "LastBlocks",
    "LoopConfig",
    "Method",
    "N2NConfig",
    "N2NResult",
    "Progress",
    "TGD",
    "TrainConfig",
    "build_method",
    "empirical_fisher",
    "finetune",
    "fit",
    "n2n_online",
    "resolve_config",
    "train",
    "validate",
]

"""A procedural whole-body PET simulator, in torch (CPU or CUDA).

No public whole-body PET studies ship with any package, so the toolkit
makes its own: a neck-to-pelvis FDG phantom, a 2D-per-slice scanner with
attenuation, 3D resolution, scatter and randoms, Poisson counts cut like
list-mode data, and ordinary-Poisson OSEM with two reconstruction protocols
(v1: coarse correlated noise; v2: finer noise) standing in for the paper's
two scanner software versions.

Modules, in the order data flows:

- :mod:`.grid`: the voxel grid over the fixed neck-to-pelvis field of view;
- :mod:`.phantom`: anatomy, labels, attenuation, BMI classes;
- :mod:`.projector`: the sparse Joseph projector (cached per grid);
- :mod:`.scanner`: expected count rates, Poisson prompts, thinning and splits;
- :mod:`.recon`: OSEM and the v1 / v2 protocols;
- :mod:`.dataset`: study kinds, :class:`SimulationConfig`, :func:`write_dataset`.

Typical use::

    from tgdpet.simulate import SimulationConfig, StudySpec, cohort, write_dataset
    write_dataset("data", SimulationConfig(studies=cohort(8)))
"""

from .dataset import (
    OOD_FEATURES,
    STUDY_KINDS,
    SimulatedStudy,
    SimulationConfig,
    StudySpec,
    cohort,
    simulate_study,
    study_seed,
    write_dataset,
)
from .grid import Grid
from .phantom import BODY_SCALES, LABEL_CODES, Phantom, PhantomSpec, build_phantom
from .projector import Projector, projector_for
from .recon import PROTOCOLS, Protocol, reconstruct
from .scanner import CountRates, ScannerModel, acquire, count_rates, scatter_fraction, split, thin

__all__ = [
    "BODY_SCALES",
    "LABEL_CODES",
    "OOD_FEATURES",
    "PROTOCOLS",
    "STUDY_KINDS",
    "CountRates",
    "Grid",
    "Phantom",
    "PhantomSpec",
    "Projector",
    "Protocol",
    "ScannerModel",
    "SimulatedStudy",
    "SimulationConfig",
    "StudySpec",
    "acquire",
    "build_phantom",
    "cohort",
    "count_rates",
    "projector_for",
    "reconstruct",
    "scatter_fraction",
    "simulate_study",
    "split",
    "study_seed",
    "thin",
    "write_dataset",
]

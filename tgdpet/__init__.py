"""tgdpet: Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021) for PET denoising.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it)
before torch is imported anywhere in tgdpet: on small CPU machines OpenMP's
default spin-wait stalls every parallel torch op by ~16 ms.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"

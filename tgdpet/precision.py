"""Precision, in one place: which reduced precision pays on a device, and what a user or a model file calls it.

Reduced precision (bf16 or fp16 through autocast) runs the network's convs on
the hardware's fast matrix units: bf16 on CPUs with AMX or AVX512-BF16 and
on CUDA, fp16 on GPUs without bf16. Denoising takes a name from
:data:`PRECISIONS` (``--precision``), training a switch (``--amp``); both are
turned into an autocast dtype here, and :func:`precision_name` is what
reports and model files record.

torch is imported by the functions that use it, not by this module, so the
command line can offer :data:`PRECISIONS` without loading torch for ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TgdpetError

if TYPE_CHECKING:
    import torch

    from .models import DnCNNConfig

#: What ``--precision`` accepts; ``auto`` is :func:`autocast_dtype`'s choice.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU has bf16 matrix units (AMX or AVX512-BF16) that oneDNN uses."""
    import torch

    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - very old torch
        return False
    if "AMX" in caps.upper():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision that pays on this device, or None for plain fp32."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16_matmul():
        return torch.bfloat16
    return None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto`` picks what pays on the hardware (:func:`autocast_dtype`).
    """
    import torch

    if precision not in PRECISIONS:
        raise TgdpetError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return autocast_dtype(device)
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise TgdpetError("fp16 is for CUDA GPUs; on the CPU use --precision bf16 or fp32.")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TgdpetError(f"the GPU {torch.cuda.get_device_name(device)} has no bf16 support; use --precision fp16.")
    return torch.bfloat16


#: On CPUs, bf16 is the default only for wide networks. tgdpet 0.2.0 measured the small preset slower in
#: bf16 (~310 vs ~180 patches/s on 2 cores); measured again with interleaved steps (docs/benchmarks.md) a
#: small-preset bf16 step took 2.8x (2 threads) to 4x (1 thread) less time than fp32, the tiny preset's 1.6x.
#: The default stays fp32 below this width until the two precisions are compared on image quality: the small
#: model of tests/test_end_to_end.py, trained in bf16 in one run, took the liver noise to 0.93x, not below 0.90x.
CPU_BF16_MIN_MACS_PER_VOXEL = 500_000


def amp_dtype(amp: bool | None, device: torch.device, config: DnCNNConfig) -> torch.dtype | None:
    """The autocast dtype to train in, or None for fp32.

    ``amp=None`` (the default) turns it on where it pays: on CUDA (bf16, or
    fp16 with loss scaling on GPUs without bf16), and on CPUs with bf16 units
    for networks of at least :data:`CPU_BF16_MIN_MACS_PER_VOXEL`. ``amp=True``
    forces it (bf16 on any CPU: correct, if slower); ``amp=False`` is fp32.
    """
    import torch

    if amp is False:
        return None
    best = autocast_dtype(device)
    if amp is None:
        wide = config.macs_per_voxel() >= CPU_BF16_MIN_MACS_PER_VOXEL
        return best if device.type == "cuda" or wide else None
    return best or torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what a model file or a report records for an autocast dtype (None: fp32)."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

"""Denoising a whole volume, fast and in bounded memory.

The result is defined by the plain network: output slice ``k`` is the centre
slice of ``model(stack_k / s) * s``, where ``stack_k`` holds the ``in_slices``
slices around ``k`` (edge slices replicated, :func:`tgdpet.inputs.stack_indices`)
and ``s`` is :func:`tgdpet.inputs.intensity_scale` of the input volume. The fast
path computes the same thing with:

- **BatchNorm folded** into the preceding conv (:func:`fold_batchnorm`): one
  op per layer instead of three, identical to eval-mode BN up to fp32 rounding;
- **channels-last** activations, the layout oneDNN (CPU) and cuDNN (tensor
  cores) run convolutions fastest in;
- **reduced precision** where the hardware has units for it (bf16 on CPUs
  with AVX512-BF16/AMX, bf16 or fp16 on CUDA) through autocast; the residual
  ``x - noise`` stays in fp32, since rounding the input image itself to bf16
  would add up to 0.2 % of every voxel's value to the network's own error;
- **a few slices per batch**, built on the fly from the numpy volume: memory
  is the input, the output and one batch of activations, whatever the volume
  size. On CPU small batches win (activations stay in cache); on CUDA larger
  ones keep the GPU busy. The last batch is padded to the batch size, so all
  forward calls on a volume see one shape (one cuDNN search, no torch.compile
  recompiles);
- optionally **torch.compile** with weight freezing.

Precision (asserted in ``tests/test_infer.py``, measured on the paper preset
by ``scripts/bench.py``): the fp32 fast path matches eager fp32 to ~1e-7
relative RMS. bf16 rounds every layer's inputs to 8 significant bits, which
moves the network's noise estimate by 0.5-1.5 % (relative RMS) and the
output image by 1e-3 to 3e-3 when the noise estimate is 30-70 % of the image;
:data:`BF16_TOLERANCE` bounds it. That is far below the noise of a PET image.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .inputs import intensity_scale, stack_indices
from .domain import Domain
from .errors import TgdpetError
from .models import DnCNN, DnCNNConfig, bn_after
from .resample import denoise_on_best_grid
from .precision import resolve_precision
from .runtime import resolve_device

def _transpose_xy(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 1)


def _flip(axes: tuple[int, ...]):
    return lambda a: np.flip(a, axes) if axes else a


def _dihedral() -> list[tuple]:
    """The 8 in-plane symmetries of a square as (forward, inverse) pairs on ``(z, y, x)`` arrays.

    ``flip`` then optional transpose; the inverse transposes back first. All
    are views, so they cost no copy until the network reads them.
    """
    ops = []
    for transpose in (False, True):
        for axes in ((), (1,), (2,), (1, 2)):
            flip = _flip(axes)
            if transpose:
                ops.append((lambda a, f=flip: _transpose_xy(f(a)), lambda a, f=flip: f(_transpose_xy(a))))
            else:
                ops.append((flip, flip))
    return ops


#: Test-time augmentation: the in-plane dihedral group, as (forward, inverse) pairs.
IN_PLANE_DIHEDRAL = _dihedral()

#: Relative RMS difference from the eager fp32 output that the reduced-precision
#: (bf16, fp16) paths stay within.
BF16_TOLERANCE = 5e-3

#: Bytes of the widest layer's activations per forward call. On CPU a batch
#: that stays near cache size runs up to 2x faster than 8-16 slices (measured
#: on a 2-core EPYC: 1 slice of the paper preset, 4 slices of 128x128 of the
#: small preset in bf16); on CUDA larger batches keep the GPU busy.
_ACTIVATION_BUDGET = {"cpu": 4 * 2**20, "cuda": 2**29}

_MAX_BATCH_SLICES = 64


class FoldedDnCNN(nn.Module):
    """An inference-only DnCNN whose BatchNorms are folded into the preceding convs.

    Same input and output as :class:`~tgdpet.models.DnCNN` in eval mode; it
    has no BatchNorm layers and no gradients, so it cannot be trained.
    """

    def __init__(self, config: DnCNNConfig, convs: nn.ModuleList) -> None:
        super().__init__()
        self.config = config
        self.convs = convs

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = torch.relu_(conv(x))  # in place: nothing keeps the conv output for a backward pass
        return self.convs[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.predict_noise(x)


def fold_batchnorm(model: DnCNN) -> FoldedDnCNN:
    """An inference-only copy of ``model`` with each eval-mode BatchNorm folded into its conv.

    BN computes ``gamma * (y - mean) / sqrt(var + eps) + beta`` with its
    running statistics; on ``y = W x + b`` that is a conv with weights
    ``W * g`` and bias ``(b - mean) * g + beta``, ``g = gamma / sqrt(var + eps)``.
    Folding happens in float64 so it adds no rounding of its own. The copy
    has fresh conv modules, so hooks on ``model`` (the TGD engine's) do not
    follow it; ``model`` itself is left untouched.
    """
    if not isinstance(model, DnCNN):
        raise TypeError(f"fold_batchnorm expects a tgdpet DnCNN, got {type(model).__name__}.")
    convs = nn.ModuleList()
    with torch.no_grad():
        for i, src in enumerate(model.convs):
            weight, bias = src.weight.double(), src.bias.double()
            bn = bn_after(model, i)
            if bn is not None:
                g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                weight = weight * g.view(-1, 1, 1, 1)
                bias = (bias - bn.running_mean.double()) * g + bn.bias.double()
            conv = nn.Conv2d(src.in_channels, src.out_channels, src.kernel_size, padding=src.padding)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            convs.append(conv.to(src.weight.device))
    folded = FoldedDnCNN(model.config, convs).eval()
    return folded.requires_grad_(False)


def default_batch_slices(
    device: torch.device, config: DnCNNConfig, height: int, width: int, dtype: torch.dtype | None
) -> int:
    """Slices per forward call: as many as fit the device's activation budget (at least 1, at most 64)."""
    bytes_per_slice = height * width * max(config.widths) * (2 if dtype is not None else 4)
    budget = _ACTIVATION_BUDGET["cuda" if device.type == "cuda" else "cpu"]
    return int(min(max(budget // bytes_per_slice, 1), _MAX_BATCH_SLICES))


def check_volume(volume_zyx: np.ndarray) -> None:
    """Refuse what the network cannot denoise: not 3-D, empty, not real numbers, or NaN/Inf voxels."""
    if volume_zyx.ndim != 3:
        raise TgdpetError(f"a volume to denoise must be 3-D (z, y, x); got an array of shape {volume_zyx.shape}.")
    if volume_zyx.size == 0:
        raise TgdpetError(f"the volume to denoise is empty (shape {volume_zyx.shape}).")
    if not (np.issubdtype(volume_zyx.dtype, np.floating) or np.issubdtype(volume_zyx.dtype, np.integer)):
        raise TgdpetError(f"a volume to denoise must hold real numbers, not {volume_zyx.dtype}.")
    for start in range(0, volume_zyx.shape[0], 64):  # slab by slab: no volume-sized mask
        finite = np.isfinite(volume_zyx[start : start + 64])
        if not finite.all():
            k = start + int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
            raise TgdpetError(
                f"the volume holds NaN or infinite voxels (first in slice {k}); fix or mask them before denoising."
            )


@contextlib.contextmanager
def _cuda_conv_settings(device: torch.device, exact_fp32: bool) -> Iterator[None]:
    """On CUDA, tune cuDNN for the run and restore its settings after.

    ``benchmark`` lets cuDNN time its conv algorithms once for the fixed batch
    shape; with ``exact_fp32`` TF32 is switched off, because PyTorch lets cuDNN
    run fp32 convs in TF32 by default (~1e-3 error), which is not what
    ``precision="fp32"`` promises.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = True
    if exact_fp32:
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved


class Denoiser:
    """A model prepared once (folded, channels-last, on its device, maybe compiled) to denoise many volumes.

    Args:
        model: a trained :class:`~tgdpet.models.DnCNN` (it is not modified).
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        precision: ``"auto"`` (bf16 where the CPU or GPU has units for it,
            else fp32), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        batch_slices: slices per forward call; None picks per device and slice size.
        normalize: divide by the input's intensity scale before the network and
            multiply back after (the convention every tgdpet model is trained with).
        compile: run the network through ``torch.compile`` with frozen weights;
            the first volume pays a compilation of several seconds.
        tta: average the results over the 8 in-plane flips and transposes of the
            volume (the dihedral group of the square), each turned back first;
            8x the compute, for a result that no longer depends on the network's
            own orientation preferences (gain measured in docs/benchmarks.md).
        domain: what the model was trained on (:mod:`tgdpet.domain`); volumes
            with finer voxels are denoised on the best of a few grids from theirs
            to the model's, and volumes at its voxel size on their own grid or
            one a step finer (:mod:`tgdpet.resample`), and
            :func:`tgdpet.denoise.domain_warnings` compares images with it.
        resample: choose the working grid that way (the default where the domain
            is known); False runs the network on the input's own grid only.
    """

    def __init__(
        self,
        model: DnCNN,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_slices: int | None = None,
        normalize: bool = True,
        compile: bool = False,
        tta: bool = False,
        domain: Domain | None = None,
        resample: bool = True,
    ) -> None:
        self.domain = domain
        self.resample = resample
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        if batch_slices is not None and batch_slices < 1:
            raise TgdpetError(f"batch_slices must be at least 1, got {batch_slices}.")
        self.batch_slices = batch_slices
        self.normalize = normalize
        self.tta = tta
        self.config = model.config
        self.net = fold_batchnorm(model).to(self.device, memory_format=torch.channels_last)
        predict = self.net.predict_noise
        self._predict_noise = torch.compile(predict, dynamic=False, options={"freezing": True}) if compile else predict

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        """The network's noise estimate for a batch of stacks, in fp32."""
        if self.dtype is None:
            return self._predict_noise(x)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self._predict_noise(x).float()

    def batch_for(self, shape_zyx: tuple[int, int, int]) -> int:
        """Slices per forward call for a volume of this shape: as asked or the device's default, at most the depth."""
        depth, height, width = shape_zyx
        batch = self.batch_slices or default_batch_slices(self.device, self.config, height, width, self.dtype)
        return min(batch, depth)

    def __call__(
        self, volume_zyx: np.ndarray, *, voxel_mm: tuple[float, float, float] | None = None, progress: bool = False
    ) -> np.ndarray:
        """Denoise a ``(z, y, x)`` array as it lies (no reorientation); a new float32 array of the same shape.

        The array must already be in the canonical frame the models are trained
        in (:mod:`tgdpet.io.orientation`); :func:`tgdpet.denoise.denoise_volume`
        takes care of that for a :class:`~tgdpet.io.Volume`. With its voxel size ``voxel_mm``
        ``(z, y, x)`` and a known domain, axes finer than the model's are
        denoised on the best of the grids between theirs and the model's, and a
        volume at the model's voxel size on its own grid or one a step finer
        (:func:`tgdpet.resample.denoise_on_best_grid`).
        """
        return self.denoise_with_grid(volume_zyx, voxel_mm=voxel_mm, progress=progress)[0]

    def denoise_with_grid(
        self, volume_zyx: np.ndarray, *, voxel_mm: tuple[float, float, float] | None = None, progress: bool = False
    ) -> tuple[np.ndarray, tuple[float, ...] | None]:
        """As calling the denoiser, and the voxel size ``(z, y, x)`` of the grid the network ran on: the one
        chosen, the input's own when none is chosen, ``None`` when ``voxel_mm`` is not given. The grid is what a
        user needs to judge the result: it sets the finest scale at which the network could change the image.
        """
        volume_zyx = np.asarray(volume_zyx)
        check_volume(volume_zyx)
        if voxel_mm is not None and self.domain is not None and self.resample:
            model_mm = self.domain.voxel_min_mm
            return denoise_on_best_grid(volume_zyx, voxel_mm, model_mm, lambda a: self._full(a, progress))
        return self._full(volume_zyx, progress), None if voxel_mm is None else tuple(float(v) for v in voxel_mm)

    def _full(self, volume_zyx: np.ndarray, progress: bool) -> np.ndarray:
        """The network (with TTA if asked) over a whole array on its own grid."""
        scale = intensity_scale(volume_zyx) if self.normalize else 1.0
        if not self.tta:
            return self._denoise(volume_zyx, scale, progress, "denoising")
        total = np.zeros(volume_zyx.shape, np.float64)
        for k, (forward, backward) in enumerate(IN_PLANE_DIHEDRAL):
            out = self._denoise(forward(volume_zyx), scale, progress, f"denoising {k + 1}/8")
            total += backward(out)
        return (total / len(IN_PLANE_DIHEDRAL)).astype(np.float32)

    def _denoise(self, volume_zyx: np.ndarray, scale: float, progress: bool, desc: str) -> np.ndarray:
        """The network over every slice stack of an array, batch by batch, with a known intensity scale."""
        from tqdm.auto import tqdm

        depth, height, width = volume_zyx.shape
        batch = self.batch_for(volume_zyx.shape)
        centre = self.config.in_slices // 2
        out = np.empty((depth, height, width), dtype=np.float32)
        with torch.inference_mode(), _cuda_conv_settings(self.device, self.dtype is None), tqdm(
            total=depth, unit="slice", desc=desc, disable=not progress
        ) as bar:
            for start in range(0, depth, batch):
                ks = np.arange(start, min(start + batch, depth))
                padded = np.concatenate([ks, np.full(batch - len(ks), ks[-1])])
                stacks = np.asarray(volume_zyx[stack_indices(padded, depth, self.config.in_slices)], dtype=np.float32)
                x = torch.from_numpy(stacks).to(self.device)
                if scale != 1.0:
                    x = x / scale
                x = x.contiguous(memory_format=torch.channels_last)
                denoised = x[:, centre] - self._noise(x)[:, centre]
                if scale != 1.0:
                    denoised = denoised * scale
                out[start : start + len(ks)] = denoised[: len(ks)].cpu().numpy()
                bar.update(len(ks))
        return out


def denoise_array(
    model: DnCNN,
    volume_zyx: np.ndarray,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_slices: int | None = None,
    normalize: bool = True,
    compile: bool = False,
    tta: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Denoise one ``(z, y, x)`` volume with ``model``; a float32 array of the same shape.

    A one-shot :class:`Denoiser` (see it for the arguments); to denoise many
    volumes with one model, build the :class:`Denoiser` once and call it.
    """
    denoiser = Denoiser(
        model,
        device=device,
        precision=precision,
        batch_slices=batch_slices,
        normalize=normalize,
        compile=compile,
        tta=tta,
    )
    return denoiser(volume_zyx, progress=progress)

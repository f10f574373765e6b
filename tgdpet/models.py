"""The 2.5D DnCNN denoiser of the TGD paper (Fig. 1) and its named presets.

The network sees ``in_slices`` adjacent axial slices as channels, predicts the
noise of each of them, and returns ``input - noise`` (residual learning).
Layer layout, for widths ``w1..wL`` (the last is the output width):

- conv1: Conv3x3 -> ReLU (no BatchNorm)
- conv2..conv(L-1): Conv3x3 -> BatchNorm -> ReLU
- convL: Conv3x3, linear (the "noise classifier")

The architecture is a small :class:`DnCNNConfig`; it travels with every saved
model (see :mod:`tgdpet.checkpoint`) so a model file alone rebuilds the
network. Presets are registered by name, timm-style, in :data:`PRESETS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DnCNNConfig:
    """Architecture of a 2.5D DnCNN.

    ``widths`` lists the output channels of every conv layer; the last entry
    must equal ``in_slices`` because the network predicts one noise slice per
    input slice. ``bn_momentum`` is PyTorch's convention (1 - Keras momentum).
    """

    in_slices: int = 3
    widths: tuple[int, ...] = (64, 64, 128, 128, 128, 256, 256, 3)
    kernel_size: int = 3
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.in_slices < 1 or self.in_slices % 2 == 0:
            raise ValueError(f"in_slices must be a positive odd number, got {self.in_slices}.")
        if len(self.widths) < 3:
            raise ValueError(f"a DnCNN needs at least 3 conv layers, got {len(self.widths)}.")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"every conv width must be positive, got {self.widths}.")
        if self.widths[-1] != self.in_slices:
            raise ValueError(
                f"the last width ({self.widths[-1]}) must equal in_slices ({self.in_slices}): "
                "the network predicts one noise slice per input slice."
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}.")

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DnCNNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        return cls(**d)

    def macs_per_voxel(self) -> int:
        """Multiply-adds per output voxel (all ``in_slices`` output slices counted once).

        One forward pass over an (H, W) slab produces ``in_slices`` slices but
        costs ``macs_per_pixel * H * W``; we report per output pixel of the slab.
        """
        k2 = self.kernel_size**2
        chans = (self.in_slices,) + self.widths
        return sum(k2 * cin * cout for cin, cout in zip(chans[:-1], chans[1:]))


PRESETS: dict[str, DnCNNConfig] = {
    # The paper's Fig. 1 widths.
    "paper": DnCNNConfig(widths=(64, 64, 128, 128, 128, 256, 256, 3)),
    # Uniform 64-wide DnCNN of the same depth (~0.22 M multiply-adds per pixel).
    "uniform64": DnCNNConfig(widths=(64,) * 7 + (3,)),
    # The original DnCNN's depth (Zhang et al. 2017): 17 layers of 64, a 35-pixel field of view against
    # uniform64's 17, for noise whose grain spans several voxels (smooth reconstructions, 2 mm voxels).
    "deep64": DnCNNConfig(widths=(64,) * 16 + (3,)),
    # Small uniform net for fast CPU experiments and the reproduction at small scale.
    "small": DnCNNConfig(widths=(32,) * 7 + (3,)),
    # Tiny net for tests.
    "tiny": DnCNNConfig(widths=(8,) * 7 + (3,)),
}


def get_config(preset: str = "paper", **overrides) -> DnCNNConfig:
    """Return a preset's config, optionally with fields overridden (e.g. ``in_slices``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    cfg = PRESETS[preset]
    if overrides:
        if "in_slices" in overrides and "widths" not in overrides:
            overrides["widths"] = cfg.widths[:-1] + (int(overrides["in_slices"]),)
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


class DnCNN(nn.Module):
    """2.5D residual DnCNN. Input and output: ``(batch, in_slices, H, W)``.

    ``convs[i]`` is conv layer i+1 of the paper; ``bns[i]`` is the BatchNorm
    after ``convs[i + 1]`` (conv2..conv(L-1)). The TGD engine attaches to these
    modules by hooks, so the forward path here stays the plain network.
    """

    def __init__(self, config: DnCNNConfig | None = None, *, init: bool = True) -> None:
        """``init=False`` skips the random initialisation, for a network whose weights are loaded next (drawing
        them costs time, and on the meta device it pulls in torch's compiler stack: 1.7 s per model file)."""
        super().__init__()
        self.config = config or DnCNNConfig()
        c = self.config
        chans = (c.in_slices,) + c.widths
        pad = c.kernel_size // 2
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, c.kernel_size, padding=pad, bias=True)
            for cin, cout in zip(chans[:-1], chans[1:])
        )
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(w, eps=c.bn_eps, momentum=c.bn_momentum) for w in c.widths[1:-1]
        )
        if init:
            self._init_weights()

    def _init_weights(self) -> None:
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # A small last layer starts the residual net near the identity map.
        nn.init.normal_(self.convs[-1].weight, std=1e-3)

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.convs[0](x))
        for conv, bn in zip(self.convs[1:-1], self.bns):
            h = torch.relu(bn(conv(h)))
        return self.convs[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.predict_noise(x)


def bn_after(model: DnCNN, conv_index: int) -> torch.nn.BatchNorm2d | None:
    """The BatchNorm that normalises the output of ``model.convs[conv_index]``, if any.

    In :class:`DnCNN`, ``bns[j]`` follows ``convs[j + 1]``;
    the first and the last conv have none.
    """
    j = conv_index - 1
    return model.bns[j] if 0 <= j < len(model.bns) else None


def build_model(preset: str = "paper", **overrides) -> DnCNN:
    """Build a freshly initialised DnCNN from a preset name."""
    return DnCNN(get_config(preset, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
